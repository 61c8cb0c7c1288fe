//! Connection plumbing: the PROXY protocol header, replaying bytes read past it, and
//! idle tracking for client connections.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ppp::{HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// The longest PROXY header: v2's 16-byte preamble plus the largest address block with
/// room for TLVs. Anything longer is refused.
const MAX_PROXY_HEADER: usize = 16 + 536;

/// Why a PROXY protocol header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The connection failed or closed before a full header arrived.
    #[error("the connection ended before a complete PROXY protocol header")]
    Io(#[source] io::Error),
    /// The first bytes are not a PROXY protocol header.
    #[error("the connection does not start with a PROXY protocol v1 or v2 header: {0}")]
    Invalid(String),
    /// The header did not arrive in time.
    #[error("no PROXY protocol header within {0:?}")]
    Timeout(Duration),
}

/// Reads a PROXY v1 or v2 header. Returns the stream (replaying any bytes read past the
/// header) and the client address it carries (`None` for `LOCAL`/`UNKNOWN`).
///
/// # Errors
/// [`ProxyHeaderError`] when the header is missing, malformed or late.
pub async fn read_proxy_header<S: AsyncRead + Unpin>(
    mut stream: S,
    timeout: Duration,
) -> Result<(PrefixedIo<S>, Option<SocketAddr>), ProxyHeaderError> {
    let mut buf = BytesMut::with_capacity(256);
    let read = async {
        loop {
            if buf.len() >= MAX_PROXY_HEADER {
                return Err(ProxyHeaderError::Invalid("header too long".to_owned()));
            }
            let n = stream
                .read_buf(&mut buf)
                .await
                .map_err(ProxyHeaderError::Io)?;
            if n == 0 {
                return Err(ProxyHeaderError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            let parsed = HeaderResult::parse(&buf);
            if parsed.is_incomplete() {
                continue;
            }
            return match parsed {
                HeaderResult::V1(Ok(header)) => {
                    let source = match header.addresses {
                        ppp::v1::Addresses::Tcp4(a) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        ppp::v1::Addresses::Tcp6(a) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        ppp::v1::Addresses::Unknown => None,
                    };
                    Ok((header.header.len(), source))
                }
                HeaderResult::V2(Ok(header)) => {
                    let source = match (header.command, header.addresses) {
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv4(a)) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        (ppp::v2::Command::Proxy, ppp::v2::Addresses::IPv6(a)) => {
                            Some(SocketAddr::from((a.source_address, a.source_port)))
                        }
                        _ => None,
                    };
                    Ok((header.len(), source))
                }
                HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
                HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Invalid(e.to_string())),
            };
        }
    };
    let (length, source) = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyHeaderError::Timeout(timeout))??;
    buf.advance(length);
    Ok((
        PrefixedIo {
            prefix: buf.freeze(),
            inner: stream,
        },
        source,
    ))
}

/// A stream that first yields bytes already read from it.
#[derive(Debug)]
pub struct PrefixedIo<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> PrefixedIo<S> {
    /// Wraps a stream with nothing to replay.
    pub fn new(inner: S) -> Self {
        Self {
            prefix: Bytes::new(),
            inner,
        }
    }
}

impl<S> PrefixedIo<S> {
    /// Puts `bytes` back in front of what is still to be read.
    pub(crate) fn replay(&mut self, bytes: Bytes) {
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let mut joined = BytesMut::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.prefix);
            self.prefix = joined.freeze();
        }
    }
}

impl<S: AsyncRead + Unpin> PrefixedIo<S> {
    /// Reads until the first bytes tell HTTP/2's connection preface from anything
    /// else (HTTP/1.x): true for HTTP/2. The bytes read are replayed.
    ///
    /// # Errors
    /// The stream's error, or `UnexpectedEof` when it closes first.
    pub(crate) async fn sniff_http2(&mut self) -> io::Result<bool> {
        let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
        buf.extend_from_slice(&self.prefix);
        loop {
            let seen = buf.len().min(H2_PREFACE.len());
            if buf[..seen] != H2_PREFACE[..seen] {
                break;
            }
            if seen == H2_PREFACE.len() {
                break;
            }
            if self.inner.read_buf(&mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let http2 = buf.starts_with(H2_PREFACE);
        self.prefix = buf.freeze();
        Ok(http2)
    }
}

/// What an HTTP/2 client sends first (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl<S: AsyncRead + Unpin> AsyncRead for PrefixedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix.split_to(n));
        if self.prefix.is_empty() {
            // Let go of the buffer the prefix was read into.
            self.prefix = Bytes::new();
            // Whatever else has arrived comes in the same read, so that a request
            // head is parsed in one piece (and hyper's read buffer is not grown for
            // a second read). A pending or failed read shows again on the next call.
            if buf.remaining() > 0 {
                let _ = Pin::new(&mut self.inner).poll_read(cx, buf);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// When a connection last moved bytes, since when a write to it has been waiting, and
/// how many requests it has in flight.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    /// Milliseconds since `start`, plus one, at which a write to the client began to
    /// wait for room; 0 while no write waits.
    write_waiting_ms: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
}

impl Activity {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            write_waiting_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn touch(&self) {
        self.last_ms.store(self.elapsed_ms(), Relaxed);
    }

    /// A write moved bytes: nothing waits any more.
    fn wrote(&self) {
        self.touch();
        if self.write_waiting_ms.load(Relaxed) != 0 {
            self.write_waiting_ms.store(0, Relaxed);
        }
    }

    /// A write with bytes to send has to wait for room. Out of line: a client that
    /// reads what it is sent rarely makes a write wait.
    #[cold]
    #[inline(never)]
    fn write_waits(&self) {
        if self.write_waiting_ms.load(Relaxed) == 0 {
            self.write_waiting_ms.store(self.elapsed_ms() + 1, Relaxed);
        }
    }

    /// A flush completed: what waited in it has been written.
    fn flushed(&self) {
        if self.write_waiting_ms.load(Relaxed) != 0 {
            self.wrote();
        }
    }

    /// When a write that has been waiting since then will have waited `limit`; `None`
    /// while no write waits.
    pub(crate) fn write_deadline(&self, limit: Duration) -> Option<Instant> {
        match self.write_waiting_ms.load(Relaxed) {
            0 => None,
            ms => Some(self.start + Duration::from_millis(ms - 1) + limit),
        }
    }

    /// When the connection becomes idle-expired if nothing happens until then.
    pub(crate) fn deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Relaxed)) + idle
    }

    /// Whether the connection has been idle for `idle` with nothing in flight.
    pub(crate) fn expired(&self, idle: Duration) -> bool {
        self.in_flight.load(Relaxed) == 0 && Instant::now() >= self.deadline(idle)
    }
}

/// Counts one request in flight on a connection.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(crate) fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Relaxed);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A stream that records when bytes last moved.
#[derive(Debug)]
pub(crate) struct IdleIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> IdleIo<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        match result {
            Poll::Ready(Ok(n)) if n > 0 => self.activity.wrote(),
            Poll::Pending if !buf.is_empty() => self.activity.write_waits(),
            _ => {}
        }
        result
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        match result {
            Poll::Ready(Ok(n)) if n > 0 => self.activity.wrote(),
            Poll::Pending if bufs.iter().any(|b| !b.is_empty()) => self.activity.write_waits(),
            _ => {}
        }
        result
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A TLS stream holds records it could not write yet until it is flushed, and
        // writes them in the flush: one that completes after waiting has moved them.
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        match result {
            Poll::Pending => self.activity.write_waits(),
            Poll::Ready(Ok(())) => self.activity.flushed(),
            Poll::Ready(Err(_)) => {}
        }
        result
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn parse(input: &[u8]) -> Result<(Option<SocketAddr>, Vec<u8>), ProxyHeaderError> {
        let (mut io, addr) = read_proxy_header(input, Duration::from_secs(1)).await?;
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        Ok((addr, rest))
    }

    #[tokio::test]
    async fn v1_header_gives_the_client_and_keeps_what_follows() {
        let (addr, rest) =
            parse(b"PROXY TCP4 10.1.2.3 10.0.0.1 40000 80\r\nGET / HTTP/1.1\r\n\r\n")
                .await
                .unwrap();
        assert_eq!(addr, Some("10.1.2.3:40000".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
        let (addr, rest) = parse(b"PROXY UNKNOWN\r\nx").await.unwrap();
        assert_eq!((addr, rest.as_slice()), (None, &b"x"[..]));
    }

    #[tokio::test]
    async fn v2_header_gives_the_client_and_keeps_what_follows() {
        let header = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::7]:5555".parse::<SocketAddr>().unwrap(),
                "[::1]:80".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        let mut input = header.clone();
        input.extend_from_slice(b"hello");
        let (addr, rest) = parse(&input).await.unwrap();
        assert_eq!(addr, Some("[2001:db8::7]:5555".parse().unwrap()));
        assert_eq!(rest, b"hello");
    }

    #[tokio::test]
    async fn sniffing_tells_http2_from_http1_and_replays_everything_in_one_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut io = PrefixedIo::new(server);
        assert!(!io.sniff_http2().await.unwrap());
        // The sniffed bytes and what followed them come back together, so a request
        // head is parsed from one read.
        let mut buf = [0_u8; 64];
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");

        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(H2_PREFACE).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let mut io = PrefixedIo::new(server);
        assert!(io.sniff_http2().await.unwrap());
        drop(client);
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, [H2_PREFACE, b"frames"].concat());

        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        let err = PrefixedIo::new(server).sniff_http2().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    /// A writer that takes every write at once and whose flush waits once, as a TLS
    /// stream's does while the socket has no room for the records it holds.
    struct FlushWaitsOnce {
        waited: bool,
    }

    impl AsyncWrite for FlushWaitsOnce {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.waited {
                return Poll::Ready(Ok(()));
            }
            self.waited = true;
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Regression: a flush that waited for room and then completed left its write
    /// marked as waiting until the next write, so a TLS connection that then had
    /// nothing to send for the idle timeout (an idle HTTP/2 connection, a long poll
    /// waiting for its answer) was dropped as a client that takes no byte.
    #[tokio::test(start_paused = true)]
    async fn a_flush_that_waited_and_completed_leaves_no_write_waiting() {
        const IDLE: Duration = Duration::from_secs(60);
        let activity = Activity::new();
        let mut io = IdleIo::new(FlushWaitsOnce { waited: false }, activity.clone());
        io.write_all(b"the end of a response").await.unwrap();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_pending());
        let waiting = activity.write_deadline(IDLE);
        assert_eq!(
            waiting,
            Some(Instant::now() + IDLE),
            "a waiting flush is watched"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(Pin::new(&mut io).poll_flush(&mut cx).is_ready());
        assert_eq!(activity.write_deadline(IDLE), None);
        // The bytes moved when the flush completed.
        assert_eq!(activity.deadline(IDLE), Instant::now() + IDLE);
    }

    #[tokio::test]
    async fn plain_traffic_is_refused() {
        let err = parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Invalid(_)), "{err}");
        let err = parse(b"PROXY TCP4 1.2.3.4").await.unwrap_err();
        assert!(matches!(err, ProxyHeaderError::Io(_)), "{err}");
    }
}
