//! The HTTP/1.1 fast path: the common exchange without hyper's codec.
//!
//! A keep-alive HTTP/1.1 request in origin form, without a body or with a
//! `Content-Length` or chunked one, to a service with HTTP/1.1 backends, is parsed with
//! `httparse`, its head rewritten once (hop-by-hop headers out, forwarding headers in)
//! and written with its first body bytes in one write to a raw pooled backend
//! connection; the response head is parsed and rewritten the same way and the bodies
//! are relayed through bounded buffers, byte for byte, their framing checked as they
//! pass. Buffers come from a per-thread pool, and a connection waiting for its next
//! request holds none.
//!
//! Everything else goes to the general (hyper) path, which serves the rest of the
//! connection from the first byte of the request that needed it: upgrades, `Expect`,
//! HTTP/1.0, `CONNECT` and absolute-form targets, heads too large or with too many
//! fields for the fast buffers (hyper applies its own limits to them), heads
//! `httparse` refuses (hyper answers them), and requests without a route or an
//! available backend (hyper gives the answer that says why).
//!
//! Framing is never guessed: a request with both `Content-Length` and
//! `Transfer-Encoding`, conflicting lengths or a transfer coding other than a final
//! `chunked` is refused with 400 and the connection closed; a response is read as RFC
//! 9112 section 6.3 says (no body for HEAD, 1xx, 204 and 304; chunked; length; else to
//! the close), never past its end, and its connection is pooled only when it ended
//! cleanly with nothing extra behind it.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::backend::{ActiveGuard, Backend};
use crate::config::UpstreamProtocol;
use crate::forward::{DRAIN_CUT, Forwarding, refused};
use crate::runtime::{ServiceRuntime, Shared};
use crate::upstream;

/// The size of a pooled buffer: a request head must fit in one (larger ones go to hyper).
const BUFFER_SIZE: usize = 16 * 1024;
/// Buffers kept per thread for reuse.
const POOLED_BUFFERS: usize = 128;
/// Header fields of a request head the fast path parses (more go to hyper).
const MAX_REQUEST_HEADERS: usize = 64;
/// Header fields of a response head (hyper's limit too).
const MAX_RESPONSE_HEADERS: usize = 100;
/// How far a backend's response head may grow its buffer.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// The longest chunk-size line (with extensions), trailer line and trailer section
/// relayed. A line is checked whole before it is relayed, so it must fit a buffer.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILER_LINE: usize = 8 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// How often a request whose pooled connection turned out closed moves to another.
const MAX_STALE_MOVES: usize = 3;
/// How long a connection closed with an unread request body is drained first, so that
/// the client reads the answer instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// Write buffers kept per thread for reuse, and the largest kept.
const POOLED_OUTS: usize = 64;
const MAX_POOLED_OUT: usize = 32 * 1024;

thread_local! {
    static BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static OUTS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A write buffer (a head being built) from the thread's pool.
#[derive(Debug)]
struct Out(Vec<u8>);

impl Out {
    fn with_capacity(capacity: usize) -> Self {
        let mut out = OUTS
            .try_with(|pool| pool.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default();
        out.reserve(capacity);
        Self(out)
    }
}

impl std::ops::Deref for Out {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Out {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        if self.0.capacity() == 0 || self.0.capacity() > MAX_POOLED_OUT {
            return;
        }
        let mut out = std::mem::take(&mut self.0);
        out.clear();
        let _ = OUTS.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_OUTS {
                pool.push(out);
            }
        });
    }
}

/// A read buffer from the thread's pool: `data[start..end]` holds unread bytes.
struct Buffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl Buffer {
    fn take() -> Self {
        let data = BUFFERS
            .try_with(|pool| pool.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0; BUFFER_SIZE]);
        Self {
            data,
            start: 0,
            end: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn is_full(&self) -> bool {
        self.start == 0 && self.end == self.data.len()
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes the buffer larger, up to `max`; false when it is that large already.
    fn grow(&mut self, max: usize) -> bool {
        if self.data.len() >= max {
            return false;
        }
        self.data.resize((self.data.len() * 2).min(max), 0);
        true
    }

    /// Reads once into the free room (moving unread bytes to the front when the end is
    /// reached). Ready(Ok(0)) is the end of the stream, or a full buffer.
    fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.end == self.data.len() && self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut room = ReadBuf::new(&mut self.data[self.end..]);
        if room.remaining() == 0 {
            return Poll::Ready(Ok(0));
        }
        ready!(Pin::new(reader).poll_read(cx, &mut room))?;
        let n = room.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    async fn fill<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(reader, cx)).await
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        if self.data.len() != BUFFER_SIZE {
            return;
        }
        let data = std::mem::take(&mut self.data);
        let _ = BUFFERS.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_BUFFERS {
                pool.push(data);
            }
        });
    }
}

/// How the fast path left a client connection.
pub(crate) enum End {
    /// Closed (or to be closed): the client left, idled out, or the proxy stops.
    Closed,
    /// The rest is for the general path, starting with these bytes already read.
    Handover(Bytes),
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// What one client connection's requests share.
pub(crate) struct Client<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) listener: &'a str,
    pub(crate) address: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) idle: Duration,
    pub(crate) stop: &'a CancellationToken,
}

/// Serves a client connection's HTTP/1.1 requests until it closes or a request needs
/// the general path.
pub(crate) async fn serve<I>(client: Client<'_>, io: &mut I) -> End
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let forwarding = Forwarding::new(client.address.ip(), client.tls);
    // Deadlines are per connection: each request moves them later, which costs no
    // timer registration (tokio only re-registers a deadline moved earlier).
    let mut idle_timer = pin!(tokio::time::sleep(client.idle));
    let mut header_timer = pin!(tokio::time::sleep(client.idle));
    let mut stop = pin!(client.stop.cancelled());
    let mut pending: Option<Buffer> = None;
    loop {
        let mut buffer = match pending.take() {
            Some(buffer) => buffer,
            None => {
                let first = tokio::select! {
                    biased;
                    first = poll_fn(|cx| poll_first_bytes(io, cx)) => first,
                    () = idle_timer.as_mut() => return End::Closed,
                    () = stop.as_mut() => return End::Closed,
                };
                match first {
                    Ok(Some(buffer)) => buffer,
                    Ok(None) => return End::Closed,
                    Err(error) => {
                        tracing::debug!(client = %client.address, %error, "client connection failed");
                        return End::Closed;
                    }
                }
            }
        };
        // Set once a head turns out to take more than one read: the general path's
        // limit (hyper's `header_read_timeout`) then holds here too.
        let mut head_deadline = false;
        let head = loop {
            match parse_request(buffer.bytes(), &forwarding) {
                Parsed::Complete(head) => break head,
                Parsed::Handover => return End::Handover(Bytes::copy_from_slice(buffer.bytes())),
                Parsed::Bad(reason) => {
                    // Boxed, as every rare path here: an idle connection keeps room
                    // only for what it awaits.
                    Box::pin(refuse(io, reason)).await;
                    return End::Closed;
                }
                Parsed::Partial if buffer.is_full() => {
                    return End::Handover(Bytes::copy_from_slice(buffer.bytes()));
                }
                Parsed::Partial => {}
            }
            if !head_deadline {
                head_deadline = true;
                header_timer
                    .as_mut()
                    .reset(Instant::now() + crate::runtime::HEADER_READ_TIMEOUT);
            }
            let read = tokio::select! {
                biased;
                read = buffer.fill(io) => read,
                () = header_timer.as_mut() => return End::Closed,
                () = idle_timer.as_mut() => return End::Closed,
                () = stop.as_mut() => return End::Closed,
            };
            match read {
                Ok(0) | Err(_) => return End::Closed,
                Ok(_) => {}
            }
        };
        let routed = {
            let target = &buffer.bytes()[head.target.0..head.target.1];
            let target = std::str::from_utf8(target).unwrap_or("/");
            let path = target.split('?').next().unwrap_or(target);
            route(client.shared, client.listener, &head.host, path)
        };
        let Some((service, first)) = routed else {
            return End::Handover(Bytes::copy_from_slice(buffer.bytes()));
        };
        // The idle timer waits for nothing during the exchange: it bounds the request
        // body's stalls, and the header timer, once the response head is in, the
        // response body's.
        let after = Box::pin(exchange(
            io,
            &mut buffer,
            head,
            &service,
            first,
            header_timer.as_mut(),
            idle_timer.as_mut(),
        ))
        .await;
        match after {
            After::KeepAlive => {}
            After::Close => {
                let _ = io.shutdown().await;
                return End::Closed;
            }
            After::Linger => {
                Box::pin(linger(io)).await;
                return End::Closed;
            }
        }
        idle_timer.as_mut().reset(Instant::now() + client.idle);
        if client.stop.is_cancelled() {
            let _ = io.shutdown().await;
            return End::Closed;
        }
        if !buffer.is_empty() {
            pending = Some(buffer);
        }
    }
}

/// Answers a request whose framing is refused with 400, and closes.
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I, reason: &str) {
    let message = format!("400 Bad Request: {reason}");
    let _ = answer(io, StatusCode::BAD_REQUEST, message, true).await;
    linger(io).await;
}

/// Waits for a request's first bytes, taking a buffer only once they are there.
fn poll_first_bytes<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
) -> Poll<io::Result<Option<Buffer>>> {
    let mut buffer = Buffer::take();
    match ready!(buffer.poll_fill(io, cx)) {
        Ok(0) => Poll::Ready(Ok(None)),
        Ok(_) => Poll::Ready(Ok(Some(buffer))),
        Err(error) => Poll::Ready(Err(error)),
    }
}

/// The service a request goes to and its first backend; `None` when the general path
/// is to answer (no route, a service gone or on HTTP/2, nothing available).
fn route(
    shared: &Shared,
    listener: &str,
    host: &str,
    path: &str,
) -> Option<(Arc<ServiceRuntime>, usize)> {
    let snapshot = shared.snapshot.load();
    let name = snapshot.listeners.get(listener)?.route(host, path)?;
    let service = snapshot.services.get(name)?;
    if service.config.protocol != UpstreamProtocol::Http1 {
        return None;
    }
    let first = service.pick(&[])?;
    Some((service.clone(), first))
}

/// A parsed request head, with the head to send the backend.
#[derive(Debug)]
struct RequestHead {
    /// Bytes of the head in the client's buffer.
    length: usize,
    /// The request target's place in the head.
    target: (usize, usize),
    /// The host routed on: lower case, without port ("" when none).
    host: String,
    /// The rewritten head without its final CRLF.
    out: Out,
    framing: Framing,
    idempotent: bool,
    head_method: bool,
    /// The client asked for the connection to close after this exchange.
    close: bool,
}

#[derive(Debug)]
enum Parsed {
    Complete(RequestHead),
    Partial,
    Handover,
    Bad(&'static str),
}

/// Whether a header value is what `http::HeaderValue::to_str` accepts.
fn visible(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// The comma-separated tokens of a header value, trimmed, empty ones skipped.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Fixed hop-by-hop fields (RFC 9110 7.6.1); `TE` is handled on its own.
fn is_hop_by_hop(name: &str) -> bool {
    const NAMES: [&str; 8] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ];
    NAMES.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Header names listed in `Connection` (besides `close` and `keep-alive`): up to 8
/// kept here; past them the `Connection` fields are searched again.
#[derive(Default)]
struct Named<'a> {
    names: [&'a [u8]; 8],
    len: usize,
    more: bool,
}

impl<'a> Named<'a> {
    /// False when the name is past the ones kept.
    fn push(&mut self, name: &'a [u8]) -> bool {
        if self.len == self.names.len() {
            self.more = true;
            return false;
        }
        self.names[self.len] = name;
        self.len += 1;
        true
    }

    /// Whether `name` is named, `fields` being the head's fields.
    fn contains(&self, name: &str, fields: &[httparse::Header<'_>]) -> bool {
        let name = name.as_bytes();
        self.names[..self.len]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
            || (self.more
                && fields
                    .iter()
                    .filter(|f| f.name.eq_ignore_ascii_case("connection"))
                    .any(|f| tokens(f.value).any(|t| t.eq_ignore_ascii_case(name))))
    }
}

/// Writes `n` in decimal, without allocating.
fn put_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0_u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A `Content-Length` value (a list of equal lengths is one length); `None` when it is
/// not one.
fn content_length(value: &[u8]) -> Option<u64> {
    let mut length = None;
    for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        if token.is_empty() || token.len() > 18 || !token.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = token
            .iter()
            .fold(0_u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// The framing a `Transfer-Encoding` list gives: chunked when `chunked` is last and
/// appears once.
fn chunked_last(codings: &[&[u8]]) -> bool {
    codings
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        && codings
            .iter()
            .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
            .count()
            == 1
}

fn parse_request(bytes: &[u8], forwarding: &Forwarding) -> Parsed {
    // Uninitialised: filling the array first would cost more than parsing.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_REQUEST_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let length = match request.parse_with_uninit_headers(bytes, &mut fields) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Handover,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version)
    else {
        return Parsed::Handover;
    };
    if method == "CONNECT" || !target.starts_with('/') {
        return Parsed::Handover;
    }
    let target_start = target.as_ptr() as usize - bytes.as_ptr() as usize;

    let mut host_value: Option<&[u8]> = None;
    let mut hosts = 0_usize;
    let mut lengths: Option<u64> = None;
    let mut has_length = false;
    let mut codings: Vec<&[u8]> = Vec::new();
    let mut has_coding = false;
    let mut close = false;
    let mut named = Named::default();
    // Whether the client sent forwarding fields, and whether all are visible ASCII
    // (else none is kept, as the general path does).
    let (mut xff, mut xff_visible) = (false, true);
    let (mut forwarded, mut forwarded_visible) = (false, true);
    let mut has_xfh = false;
    for field in request.headers.iter() {
        let (name, value) = (field.name, field.value);
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host_value.get_or_insert(value);
        } else if name.eq_ignore_ascii_case("content-length") {
            let Some(n) = content_length(value) else {
                return Parsed::Bad("invalid Content-Length");
            };
            if lengths.is_some_and(|l| l != n) {
                return Parsed::Bad("conflicting Content-Length fields");
            }
            lengths = Some(n);
            has_length = true;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_coding = true;
            codings.extend(tokens(value));
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                // An upgrade, or more named fields than kept here, is for the general path.
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"host") {
                    // Host is routed on and always forwarded.
                } else if token.eq_ignore_ascii_case(b"upgrade")
                    || (!token.eq_ignore_ascii_case(b"keep-alive") && !named.push(token))
                {
                    return Parsed::Handover;
                }
            }
        } else if name.eq_ignore_ascii_case("upgrade") || name.eq_ignore_ascii_case("expect") {
            return Parsed::Handover;
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            xff = true;
            xff_visible &= visible(value);
        } else if name.eq_ignore_ascii_case("forwarded") {
            forwarded = true;
            forwarded_visible &= visible(value);
        } else if name.eq_ignore_ascii_case("x-forwarded-host") {
            has_xfh = true;
        }
    }
    let framing = if has_coding {
        if has_length {
            return Parsed::Bad("both Content-Length and Transfer-Encoding");
        }
        if !chunked_last(&codings) {
            return Parsed::Bad("a transfer coding other than a final chunked");
        }
        Framing::Chunked
    } else {
        match lengths {
            None | Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };

    // RFC 9112 section 3.2; the general path checks the same.
    let host_value = match (hosts, host_value) {
        (1, Some(value)) if crate::forward::valid_host(value) => value,
        (0, _) => return Parsed::Bad("no Host field"),
        (1, _) => return Parsed::Bad("an invalid Host field"),
        _ => return Parsed::Bad("more than one Host field"),
    };
    // The host routed on and named in the forwarding headers, as `request_host` in
    // the general path finds it (a valid Host is ASCII).
    let host_text = std::str::from_utf8(host_value).unwrap_or_default();
    let host_text = match host_text.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_text.split(':').next().unwrap_or_default(),
    };
    let host = host_text.to_ascii_lowercase();

    let mut out = Out::with_capacity(length + 160);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for field in request.headers.iter() {
        let name = field.name;
        let drop = is_hop_by_hop(name)
            || named.contains(name, request.headers)
            || (name.eq_ignore_ascii_case("te") && field.value != b"trailers")
            || name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("x-forwarded-for")
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("forwarded");
        if !drop {
            put_field(&mut out, name.as_bytes(), field.value);
        }
    }
    match framing {
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        _ => {
            if let Some(n) = lengths {
                out.extend_from_slice(b"content-length: ");
                put_decimal(&mut out, n);
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if xff && xff_visible {
        put_values(&mut out, request.headers, "x-forwarded-for");
    }
    out.extend_from_slice(forwarding.client.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(if forwarding.tls {
        b"x-forwarded-proto: https\r\n"
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    if !host.is_empty() && !has_xfh {
        put_field(&mut out, b"x-forwarded-host", host_value);
    }
    out.extend_from_slice(b"forwarded: ");
    if forwarded && forwarded_visible {
        put_values(&mut out, request.headers, "forwarded");
    }
    out.extend_from_slice(forwarding.forwarded_for.as_bytes());
    if !host.is_empty() {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");

    Parsed::Complete(RequestHead {
        length,
        target: (target_start, target_start + target.len()),
        host,
        out,
        framing,
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        ),
        head_method: method == "HEAD",
        close,
    })
}

/// Writes the values of the `name` fields as one list, each followed by ", ".
fn put_values(out: &mut Vec<u8>, fields: &[httparse::Header<'_>], name: &str) {
    for field in fields.iter().filter(|f| f.name.eq_ignore_ascii_case(name)) {
        if !field.value.is_empty() {
            out.extend_from_slice(field.value);
            out.extend_from_slice(b", ");
        }
    }
}

fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head, rewritten for the client.
#[derive(Debug)]
struct ResponseHead {
    status: u16,
    /// Bytes of the head in the backend's buffer.
    length: usize,
    /// The head for the client, complete.
    out: Out,
    framing: Framing,
    /// The backend keeps the connection open after this response.
    reusable: bool,
}

#[derive(Debug)]
enum ParsedResponse {
    /// A 1xx before the final answer: skipped.
    Interim(usize),
    Final(ResponseHead),
}

fn parse_response(
    bytes: &[u8],
    head_method: bool,
    close_client: bool,
) -> Result<Option<ParsedResponse>, &'static str> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        bytes,
        &mut fields,
    );
    let length = match parsed {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many header fields"),
        Err(_) => return Err("a malformed response head"),
    };
    let (Some(version), Some(status)) = (response.version, response.code) else {
        return Err("a malformed response head");
    };
    if status == 101 {
        return Err("101 Switching Protocols to a request without Upgrade");
    }
    if (100..200).contains(&status) {
        return Ok(Some(ParsedResponse::Interim(length)));
    }
    let mut close = version == 0;
    let mut keep_alive = false;
    let mut named = Named::default();
    let mut lengths: Option<u64> = None;
    let mut has_coding = false;
    let mut codings: Vec<&[u8]> = Vec::new();
    for field in response.headers.iter() {
        let (name, value) = (field.name, field.value);
        if name.eq_ignore_ascii_case("connection") {
            for token in tokens(value) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                } else if !named.push(token) {
                    close = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(value).ok_or("an invalid Content-Length")?;
            if lengths.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length fields");
            }
            lengths = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_coding = true;
            codings.extend(tokens(value));
        }
    }
    if version == 0 && keep_alive && !close {
        // An HTTP/1.0 keep-alive answer is still not pooled: rare, and simpler so.
        close = true;
    }
    let bodiless = head_method || status == 204 || status == 304;
    let framing = if bodiless {
        Framing::None
    } else if has_coding {
        if chunked_last(&codings) {
            Framing::Chunked
        } else {
            Framing::UntilClose
        }
    } else {
        match lengths {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    // A response with both is read as chunked, and its connection not trusted again.
    if has_coding && lengths.is_some() {
        close = true;
    }

    let mut out = Out::with_capacity(length + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    // httparse reads exactly three digits.
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    match response.reason.filter(|r| !r.is_empty()) {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => {
            let canonical = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            out.extend_from_slice(canonical.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    for field in response.headers.iter() {
        let name = field.name;
        // The framing fields are written below, from the framing the body is read
        // with, whatever `Connection` names: the client must read it the same way.
        let drop = if name.eq_ignore_ascii_case("content-length") {
            true
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // A coding other than chunked stays named when the body goes as it came.
            framing != Framing::UntilClose
        } else {
            is_hop_by_hop(name)
                || named.contains(name, response.headers)
                || (name.eq_ignore_ascii_case("te") && field.value != b"trailers")
        };
        if !drop {
            put_field(&mut out, name.as_bytes(), field.value);
        }
    }
    match (framing, lengths) {
        (Framing::Chunked, _) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        (Framing::Length(n), _) => {
            out.extend_from_slice(b"content-length: ");
            put_decimal(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        // No body follows, but the length still says what it would be (HEAD, 304), or
        // that it is empty.
        (Framing::None, Some(n)) if !has_coding && status != 204 => {
            out.extend_from_slice(b"content-length: ");
            put_decimal(&mut out, n);
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    if close_client || framing == Framing::UntilClose {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Some(ParsedResponse::Final(ResponseHead {
        status,
        length,
        out,
        framing,
        reusable: !close && framing != Framing::UntilClose,
    })))
}

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    Size,
    Data(u64),
    /// The CRLF after a chunk's data; the count of its bytes seen.
    DataEnd(u8),
    /// The trailer section, with the count of its bytes so far.
    Trailers(usize),
    Done,
}

impl Chunk {
    /// Walks `bytes`; returns how many belong to the body (all up to its end). A line
    /// (chunk size or trailer field) is taken only whole, after it has been checked, so
    /// that what is relayed is exactly what was checked.
    fn advance(&mut self, bytes: &[u8]) -> Result<usize, &'static str> {
        let mut at = 0;
        while at < bytes.len() {
            match *self {
                Self::Size => {
                    let Some(line) = crlf_line(&bytes[at..], MAX_CHUNK_LINE)? else {
                        return Ok(at);
                    };
                    let size = chunk_size(line)?;
                    at += line.len() + 2;
                    *self = if size == 0 {
                        Self::Trailers(0)
                    } else {
                        Self::Data(size)
                    };
                }
                Self::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bytes.len() - at);
                    at += take;
                    let left = left - take as u64;
                    *self = if left == 0 {
                        Self::DataEnd(0)
                    } else {
                        Self::Data(left)
                    };
                }
                Self::DataEnd(seen) => {
                    let expected = if seen == 0 { b'\r' } else { b'\n' };
                    if bytes[at] != expected {
                        return Err("chunk data not followed by CRLF");
                    }
                    at += 1;
                    *self = if seen == 0 {
                        Self::DataEnd(1)
                    } else {
                        Self::Size
                    };
                }
                Self::Trailers(total) => {
                    let Some(line) = crlf_line(&bytes[at..], MAX_TRAILER_LINE)? else {
                        return Ok(at);
                    };
                    let total = total + line.len() + 2;
                    if total > MAX_TRAILERS {
                        return Err("a trailer section too large");
                    }
                    at += line.len() + 2;
                    *self = if line.is_empty() {
                        Self::Done
                    } else {
                        trailer_field(line)?;
                        Self::Trailers(total)
                    };
                }
                Self::Done => return Ok(at),
            }
        }
        Ok(at)
    }
}

/// The line at the start of `bytes` without its CRLF, once it is all there; `None`
/// while it is not. A bare LF ends nothing: it is an error, as is a line longer than
/// `max`.
fn crlf_line(bytes: &[u8], max: usize) -> Result<Option<&[u8]>, &'static str> {
    let window = &bytes[..bytes.len().min(max + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(end) if end > 0 && window[end - 1] == b'\r' => Ok(Some(&window[..end - 1])),
        Some(_) => Err("a line ended by a bare LF"),
        None if window.len() > max + 1 => Err("a line too long"),
        None => Ok(None),
    }
}

/// A chunk-size line (RFC 9112 section 7.1): 1 to 16 hex digits, then extensions.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("a chunk size without digits");
    }
    if digits > 16 {
        return Err("a chunk size too large");
    }
    let size = line[..digits].iter().fold(0_u64, |n, &d| {
        (n << 4) | u64::from(char::from(d).to_digit(16).unwrap_or(0))
    });
    chunk_extensions(&line[digits..])?;
    Ok(size)
}

/// `*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`, with white
/// space also allowed at the end, as most servers do.
fn chunk_extensions(mut rest: &[u8]) -> Result<(), &'static str> {
    const INVALID: &str = "an invalid chunk extension";
    loop {
        rest = skip_blanks(rest);
        let [b';', after @ ..] = rest else {
            return if rest.is_empty() {
                Ok(())
            } else {
                Err(INVALID)
            };
        };
        rest = skip_blanks(after);
        let name = token_length(rest);
        if name == 0 {
            return Err(INVALID);
        }
        rest = skip_blanks(&rest[name..]);
        if let [b'=', after @ ..] = rest {
            rest = skip_blanks(after);
            let value = match rest.first() {
                Some(b'"') => quoted_string_length(rest).ok_or(INVALID)?,
                _ => token_length(rest),
            };
            if value == 0 {
                return Err(INVALID);
            }
            rest = &rest[value..];
        }
    }
}

/// `bytes` after their leading spaces and tabs (and nothing else: CR is no blank).
fn skip_blanks(bytes: &[u8]) -> &[u8] {
    let blanks = bytes
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    &bytes[blanks..]
}

/// Whether `byte` is a `tchar` (RFC 9110 section 5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The length of the token at the start of `bytes`.
fn token_length(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|&&b| is_tchar(b)).count()
}

/// The length of the quoted-string at the start of `bytes` (RFC 9110 section
/// 5.6.4); `None` when it is unterminated or holds a control character.
fn quoted_string_length(bytes: &[u8]) -> Option<usize> {
    let mut at = 1;
    while let Some(&byte) = bytes.get(at) {
        match byte {
            b'"' => return Some(at + 1),
            b'\\' if bytes.get(at + 1).is_some_and(|&b| is_field_byte(b)) => at += 2,
            b'\\' => return None,
            _ if is_field_byte(byte) => at += 1,
            _ => return None,
        }
    }
    None
}

/// Whether `byte` may appear in a field value: HTAB, SP, VCHAR or obs-text.
fn is_field_byte(byte: u8) -> bool {
    byte == b'\t' || (byte >= 0x20 && byte != 0x7f)
}

/// A trailer field line: `token ":" OWS field-value OWS`, without control characters
/// (so no obs-fold either).
fn trailer_field(line: &[u8]) -> Result<(), &'static str> {
    let name = token_length(line);
    match line.get(name) {
        Some(b':') if name > 0 && line[name + 1..].iter().all(|&b| is_field_byte(b)) => Ok(()),
        _ => Err("an invalid trailer field"),
    }
}

/// Why relaying a body stopped early.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("reading the body failed")]
    Read(#[source] io::Error),
    #[error("the sender closed the connection before the end of the body")]
    Truncated,
    #[error("writing the body failed")]
    Write(#[source] io::Error),
    #[error("the body is malformed: {0}")]
    Framing(&'static str),
    #[error("{DRAIN_CUT}")]
    Cut,
    #[error(
        "no byte of the body moved for {}: the {side} stopped",
        crate::config::format_duration(*limit)
    )]
    Stalled { side: Waiting, limit: Duration },
}

/// Which side a relay waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Source,
    Sink,
}

impl std::fmt::Display for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Source => "sender",
            Self::Sink => "receiver",
        })
    }
}

/// A relay's stall deadline: `limit` after the last byte moved, on a timer the
/// connection already holds. The timer is reset only when a read or write has to wait
/// after bytes moved, so a relay that never waits reads no clock and touches no timer,
/// and a later deadline costs no timer registration (tokio re-registers only one
/// moved earlier).
struct Stall<'t> {
    timer: Pin<&'t mut Sleep>,
    limit: Duration,
    armed: bool,
}

impl<'t> Stall<'t> {
    fn new(timer: Pin<&'t mut Sleep>, limit: Duration) -> Self {
        Self {
            timer,
            limit,
            armed: false,
        }
    }

    /// Passes on a read or write's poll; `Ready(None)` when it has waited past the
    /// deadline.
    fn poll<T>(&mut self, cx: &mut Context<'_>, polled: Poll<T>) -> Poll<Option<T>> {
        if let Poll::Ready(value) = polled {
            self.armed = false;
            return Poll::Ready(Some(value));
        }
        if self.waited_out(cx) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }

    /// Whether the deadline has passed, arming it first when bytes moved since it was
    /// last armed. Out of line: the common exchange never waits.
    #[cold]
    #[inline(never)]
    fn waited_out(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            self.timer.as_mut().reset(Instant::now() + self.limit);
        }
        self.timer.as_mut().poll(cx).is_ready()
    }

    fn stalled(&self, side: Waiting) -> RelayError {
        RelayError::Stalled {
            side,
            limit: self.limit,
        }
    }

    /// Writes all of `bytes`, each write within the deadline.
    async fn write_all<W: AsyncWrite + Unpin>(
        &mut self,
        sink: &mut W,
        mut bytes: &[u8],
    ) -> Result<(), RelayError> {
        poll_fn(|cx| {
            while !bytes.is_empty() {
                let written = Pin::new(&mut *sink).poll_write(cx, bytes);
                match ready!(self.poll(cx, written)) {
                    None => return Poll::Ready(Err(self.stalled(Waiting::Sink))),
                    Some(Ok(0)) => {
                        let error = io::Error::from(io::ErrorKind::WriteZero);
                        return Poll::Ready(Err(RelayError::Write(error)));
                    }
                    Some(Ok(n)) => bytes = &bytes[n..],
                    Some(Err(error)) => return Poll::Ready(Err(RelayError::Write(error))),
                }
            }
            Poll::Ready(Ok(()))
        })
        .await
    }

    async fn flush<W: AsyncWrite + Unpin>(&mut self, sink: &mut W) -> Result<(), RelayError> {
        poll_fn(|cx| {
            let flushed = Pin::new(&mut *sink).poll_flush(cx);
            match ready!(self.poll(cx, flushed)) {
                None => Poll::Ready(Err(self.stalled(Waiting::Sink))),
                Some(result) => Poll::Ready(result.map_err(RelayError::Write)),
            }
        })
        .await
    }

    /// Reads once into `buffer`, within the deadline.
    async fn fill<R: AsyncRead + Unpin>(
        &mut self,
        buffer: &mut Buffer,
        source: &mut R,
    ) -> Result<usize, RelayError> {
        poll_fn(|cx| {
            let read = buffer.poll_fill(source, cx);
            match ready!(self.poll(cx, read)) {
                None => Poll::Ready(Err(self.stalled(Waiting::Source))),
                Some(result) => Poll::Ready(result.map_err(RelayError::Read)),
            }
        })
        .await
    }
}

/// Relays a body from `source` (bytes already read in `buffer`) to `sink`, after the
/// bytes already in `out` (a head); leaves in `buffer` whatever follows the body.
/// `waiting` tells, when the relay is stopped from outside, which side held it up;
/// `stall` ends it when a side holds it up too long.
async fn relay<R, W>(
    source: &mut R,
    buffer: &mut Buffer,
    framing: Framing,
    sink: &mut W,
    out: &mut Vec<u8>,
    waiting: &mut Waiting,
    mut stall: Stall<'_>,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut left = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunk = Chunk::Size;
    loop {
        let available = buffer.bytes();
        *waiting = Waiting::Sink;
        let (take, done) = match framing {
            Framing::None => (0, true),
            Framing::Length(_) => {
                let take = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(available.len());
                left -= take as u64;
                (take, left == 0)
            }
            Framing::Chunked => {
                let take = chunk.advance(available).map_err(RelayError::Framing)?;
                (take, chunk == Chunk::Done)
            }
            Framing::UntilClose => (available.len(), false),
        };
        if out.is_empty() && take > 0 {
            stall.write_all(sink, &available[..take]).await?;
        } else {
            out.extend_from_slice(&available[..take]);
        }
        buffer.consume(take);
        if !out.is_empty() {
            stall.write_all(sink, out).await?;
            out.clear();
        }
        stall.flush(sink).await?;
        if done {
            return Ok(());
        }
        *waiting = Waiting::Source;
        match stall.fill(buffer, source).await? {
            0 if framing == Framing::UntilClose => return Ok(()),
            0 => return Err(RelayError::Truncated),
            _ => {}
        }
    }
}

/// What the client connection does after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum After {
    KeepAlive,
    Close,
    /// Close, after draining what the client still sends (an unread request body).
    Linger,
}

/// Why an exchange with a backend got no usable response head.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("writing the request failed")]
    Write(#[source] io::Error),
    #[error("sending the request body failed")]
    Body(#[source] RelayError),
    #[error("reading the response failed")]
    Read(#[source] io::Error),
    #[error("the backend closed the connection before a response")]
    Closed,
    #[error("the backend sent {0}")]
    Invalid(&'static str),
}

/// How sending a request and reading the response head went.
enum Sent {
    Response(ResponseHead),
    /// The backend answered before the request body was sent: the rest of it is
    /// unread, so the client connection closes after the answer.
    EarlyResponse(ResponseHead),
    Failed {
        error: ExchangeError,
        /// Nothing came back on a reused connection and the request can be sent
        /// again as it was: the backend had closed it.
        stale: bool,
    },
    /// The client's request body failed (it left, or its chunks are malformed): not
    /// the backend's fault.
    ClientFailed(RelayError),
    TimedOut,
    Cut,
}

async fn exchange<I>(
    io: &mut I,
    buffer: &mut Buffer,
    mut head: RequestHead,
    service: &ServiceRuntime,
    first: usize,
    mut header_timer: Pin<&mut Sleep>,
    mut body_timer: Pin<&mut Sleep>,
) -> After
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    buffer.consume(head.length);
    let retryable = head.framing == Framing::None && head.idempotent;
    let attempts = if retryable {
        service.config.retries as usize + 1
    } else {
        1
    };
    // Whether the client's request body has been read to its end (or had none).
    let mut body_read = head.framing == Framing::None;
    let base = head.out.len();
    let timeouts = &service.config.timeouts;
    let mut tried: Vec<usize> = Vec::new();
    let mut last_failure: Option<String> = None;
    for attempt in 0..attempts {
        let index = if attempt == 0 {
            first
        } else {
            match service.pick(&tried) {
                Some(index) => index,
                None => break,
            }
        };
        let backend = &service.backends[index];
        let guard = ActiveGuard::new(backend.clone());
        let started = Instant::now();
        let (mut stream, mut reused) = match acquire(backend, service).await {
            Ok(connection) => connection,
            Err(error) => {
                backend.metrics.record_error(started.elapsed());
                backend.record_outcome(false);
                tracing::debug!(
                    service = %service.config.name, backend = %backend.name,
                    error = %crate::admin::error_chain(&error), "backend connect failed"
                );
                last_failure = Some(refused(backend));
                tried.push(index);
                continue;
            }
        };
        head.out.truncate(base);
        head.out.extend_from_slice(b"\r\n");
        // A body that arrived whole with the head goes in the same write.
        if let Framing::Length(n) = head.framing
            && let Ok(n) = usize::try_from(n)
            && n <= buffer.bytes().len()
        {
            head.out.extend_from_slice(&buffer.bytes()[..n]);
            buffer.consume(n);
            body_read = true;
        }
        let resend = body_read && head.idempotent;
        let mut backend_buffer = Buffer::take();
        header_timer
            .as_mut()
            .reset(started + timeouts.response_headers);
        let mut cut = pin!(backend.worker_cut().cancelled());
        let mut moves = 0;
        let sent = loop {
            let sent = send(
                &mut stream,
                &mut head.out,
                io,
                buffer,
                head.framing,
                body_read,
                &mut backend_buffer,
                head.head_method,
                head.close,
                timeouts.response_headers,
                header_timer.as_mut(),
                Stall::new(body_timer.as_mut(), timeouts.body),
                cut.as_mut(),
            )
            .await;
            if let Sent::Failed { stale: true, .. } = &sent
                && reused
                && resend
                && moves < MAX_STALE_MOVES
            {
                moves += 1;
                match acquire(backend, service).await {
                    Ok((fresh, again)) => {
                        stream = fresh;
                        reused = again;
                        backend_buffer = Buffer::take();
                        continue;
                    }
                    Err(error) => {
                        break Sent::Failed {
                            error: ExchangeError::Read(io::Error::other(error)),
                            stale: false,
                        };
                    }
                }
            }
            break sent;
        };
        let elapsed = started.elapsed();
        let (response, early) = match sent {
            Sent::Response(response) => (response, false),
            Sent::EarlyResponse(response) => (response, true),
            Sent::Failed { error, .. } => {
                backend.metrics.record_error(elapsed);
                backend.record_outcome(false);
                if matches!(error, ExchangeError::Body(RelayError::Stalled { .. })) {
                    tracing::debug!(
                        service = %service.config.name, backend = %backend.name, stalled = "backend",
                        error = %crate::admin::error_chain(&error), "request body stalled"
                    );
                } else {
                    tracing::debug!(
                        service = %service.config.name, backend = %backend.name,
                        error = %crate::admin::error_chain(&error), "backend request failed"
                    );
                }
                last_failure = Some(format!(
                    "502 Bad Gateway: backend '{}' ({}) failed the exchange",
                    backend.name, backend.address
                ));
                break;
            }
            Sent::ClientFailed(error) => {
                // Counted as a request without an answer, but not against the backend.
                backend.metrics.record_error(elapsed);
                if matches!(error, RelayError::Stalled { .. }) {
                    tracing::debug!(
                        service = %service.config.name, backend = %backend.name, stalled = "client",
                        error = %crate::admin::error_chain(&error), "request body stalled"
                    );
                } else {
                    tracing::debug!(
                        service = %service.config.name, backend = %backend.name,
                        error = %crate::admin::error_chain(&error), "client request body failed"
                    );
                }
                if let RelayError::Framing(reason) = error {
                    let message =
                        format!("400 Bad Request: the request body is malformed: {reason}");
                    return local_answer(io, StatusCode::BAD_REQUEST, message, false, true).await;
                }
                if let RelayError::Stalled { limit, .. } = error {
                    let message = format!(
                        "408 Request Timeout: the request body stopped arriving for {}",
                        crate::config::format_duration(limit)
                    );
                    return local_answer(io, StatusCode::REQUEST_TIMEOUT, message, false, true)
                        .await;
                }
                return After::Close;
            }
            Sent::TimedOut => {
                backend.metrics.record_error(elapsed);
                backend.record_outcome(false);
                let message = format!(
                    "504 Gateway Timeout: backend '{}' sent no response headers within {}",
                    backend.name,
                    crate::config::format_duration(timeouts.response_headers)
                );
                return local_answer(
                    io,
                    StatusCode::GATEWAY_TIMEOUT,
                    message,
                    body_read,
                    head.close,
                )
                .await;
            }
            Sent::Cut => {
                backend.metrics.record_error(elapsed);
                let message = format!("502 Bad Gateway: {DRAIN_CUT}");
                return local_answer(io, StatusCode::BAD_GATEWAY, message, body_read, head.close)
                    .await;
            }
        };
        backend.metrics.record_response(response.status, elapsed);
        backend.record_outcome(response.status < 500);
        if !early {
            body_read = true;
        }
        backend_buffer.consume(response.length);
        let mut out = response.out;
        let mut waiting = Waiting::Sink;
        // The response body's stalls are bounded on the header timer: its deadline
        // has passed its use.
        let stall = Stall::new(header_timer.as_mut(), timeouts.body);
        let relayed = tokio::select! {
            biased;
            relayed = relay(&mut stream, &mut backend_buffer, response.framing, io, &mut out, &mut waiting, stall) => relayed,
            () = cut.as_mut() => Err(RelayError::Cut),
        };
        drop(guard);
        if let Err(error) = relayed {
            // The client connection closes, and the backend's is not reused. Once the
            // head is sent no status can be given any more; before (a body broken in
            // the bytes that came with its head), the client gets 502.
            let head_unsent = !out.is_empty();
            match error {
                RelayError::Stalled { side, .. } => {
                    let stalled = if side == Waiting::Source {
                        // The backend stopped sending: an error of the backend's.
                        backend.metrics.record_broken_body();
                        "backend"
                    } else {
                        "client"
                    };
                    tracing::debug!(
                        service = %service.config.name, backend = %backend.name, stalled,
                        error = %crate::admin::error_chain(&error), "response body stalled"
                    );
                }
                // The backend cut its body short, broke its framing or its
                // connection: an error of the backend's (a valid head was an answer,
                // so not one that feeds passive ejection).
                RelayError::Truncated | RelayError::Framing(_) | RelayError::Read(_) => {
                    backend.metrics.record_broken_body();
                    tracing::debug!(
                        service = %service.config.name, backend = %backend.name,
                        error = %crate::admin::error_chain(&error), "response body broken by the backend"
                    );
                    if head_unsent {
                        let message = format!(
                            "502 Bad Gateway: backend '{}' ({}) sent a broken response body",
                            backend.name, backend.address
                        );
                        return local_answer(io, StatusCode::BAD_GATEWAY, message, body_read, true)
                            .await;
                    }
                }
                error => tracing::debug!(
                    service = %service.config.name, backend = %backend.name,
                    error = %crate::admin::error_chain(&error), "response relay ended early"
                ),
            }
            return After::Close;
        }
        if response.reusable && body_read && backend_buffer.is_empty() {
            backend.pool().checkin_raw(stream);
        }
        return if !body_read {
            After::Linger
        } else if head.close || response.framing == Framing::UntilClose {
            After::Close
        } else {
            After::KeepAlive
        };
    }
    let message = match last_failure {
        Some(message) => message,
        None => format!("503 Service Unavailable: {}", service.unavailable_reason()),
    };
    let status = if message.starts_with("503") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_GATEWAY
    };
    local_answer(io, status, message, body_read, head.close).await
}

async fn acquire(
    backend: &Backend,
    service: &ServiceRuntime,
) -> Result<(TcpStream, bool), upstream::UpstreamError> {
    let timeouts = &service.config.timeouts;
    if let Some(stream) = backend.pool().checkout_raw(timeouts.idle) {
        return Ok((stream, true));
    }
    Box::pin(upstream::connect_raw(backend.address, timeouts.connect))
        .await
        .map(|stream| (stream, false))
}

/// Writes the request (head, then the body from the client) and reads the response
/// head, unless the backend is cut. While the client's body streams, only `stall`
/// bounds it (no byte moving for the body timeout, whichever side holds it up); the
/// response-headers deadline runs from the end of the request (for a request written
/// in one piece, from the start of the attempt, which `header_timer` holds).
#[expect(
    clippy::too_many_arguments,
    reason = "one exchange's parts, borrowed from its caller"
)]
async fn send<I>(
    stream: &mut TcpStream,
    out: &mut Vec<u8>,
    io: &mut I,
    buffer: &mut Buffer,
    framing: Framing,
    body_read: bool,
    backend_buffer: &mut Buffer,
    head_method: bool,
    close_client: bool,
    response_headers: Duration,
    mut header_timer: Pin<&mut Sleep>,
    stall: Stall<'_>,
    mut cut: Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> Sent
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut early = false;
    if !body_read {
        // The body streams from the client. A backend may answer before it has read
        // it all (and stop reading): a final response head stops the relay, an
        // interim (1xx) one is skipped and the relay goes on.
        let mut waiting = Waiting::Sink;
        let mut request_out = std::mem::take(out);
        let (mut reader, mut writer) = stream.split();
        let sent = {
            let mut body = pin!(relay(
                io,
                buffer,
                framing,
                &mut writer,
                &mut request_out,
                &mut waiting,
                stall,
            ));
            loop {
                tokio::select! {
                    biased;
                    sent = body.as_mut() => break Some(sent),
                    read = backend_buffer.fill(&mut reader) => {
                        if !matches!(read, Ok(n) if n > 0) || answered(backend_buffer) {
                            break None;
                        }
                    }
                    () = cut.as_mut() => return Sent::Cut,
                }
            }
        };
        *out = request_out;
        match sent {
            Some(Ok(())) => {}
            // The backend stopped taking the body: its doing.
            Some(Err(
                error @ (RelayError::Write(_)
                | RelayError::Stalled {
                    side: Waiting::Sink,
                    ..
                }),
            )) => {
                return Sent::Failed {
                    error: ExchangeError::Body(error),
                    stale: false,
                };
            }
            Some(Err(error)) => return Sent::ClientFailed(error),
            None => early = true,
        }
        // Out of the common exchange's way: only a streamed body reads the clock.
        header_timer
            .as_mut()
            .reset(Instant::now() + response_headers);
    }
    let exchange = async {
        if body_read && let Err(error) = stream.write_all(out).await {
            return Sent::Failed {
                error: ExchangeError::Write(error),
                stale: true,
            };
        }
        match read_response_head(stream, backend_buffer, head_method, close_client || early).await {
            Ok(head) if early => Sent::EarlyResponse(head),
            Ok(head) => Sent::Response(head),
            Err((error, nothing)) => Sent::Failed {
                error,
                stale: nothing,
            },
        }
    };
    tokio::select! {
        biased;
        sent = exchange => sent,
        () = header_timer => Sent::TimedOut,
        () = cut => Sent::Cut,
    }
}

/// Drops the complete 1xx heads at the start of `buffer`; true when what follows is
/// not one: a final head, or bytes that are no head.
fn answered(buffer: &mut Buffer) -> bool {
    loop {
        match parse_response(buffer.bytes(), false, true) {
            Ok(Some(ParsedResponse::Interim(length))) => buffer.consume(length),
            Ok(None) => return false,
            Ok(Some(ParsedResponse::Final(_))) | Err(_) => return true,
        }
    }
}

/// Reads a response head, skipping 1xx ones. The error says whether nothing at all
/// came back.
async fn read_response_head(
    stream: &mut TcpStream,
    buffer: &mut Buffer,
    head_method: bool,
    close_client: bool,
) -> Result<ResponseHead, (ExchangeError, bool)> {
    let mut received = false;
    loop {
        match parse_response(buffer.bytes(), head_method, close_client) {
            Ok(Some(ParsedResponse::Final(head))) => return Ok(head),
            Ok(Some(ParsedResponse::Interim(length))) => {
                buffer.consume(length);
                continue;
            }
            Ok(None) => {}
            Err(reason) => return Err((ExchangeError::Invalid(reason), false)),
        }
        if buffer.is_full() && !buffer.grow(MAX_RESPONSE_HEAD) {
            return Err((ExchangeError::Invalid("a response head too large"), false));
        }
        match buffer.fill(stream).await {
            Ok(0) => return Err((ExchangeError::Closed, !received)),
            Ok(_) => received = true,
            Err(error) => return Err((ExchangeError::Read(error), !received)),
        }
    }
}

/// The proxy's own answer, as the general path words it.
async fn answer<I: AsyncWrite + Unpin>(
    io: &mut I,
    status: StatusCode,
    message: String,
    close: bool,
) -> io::Result<()> {
    let body = message + "\n";
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n{}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    io.write_all(&out).await?;
    io.flush().await
}

async fn local_answer<I: AsyncWrite + Unpin>(
    io: &mut I,
    status: StatusCode,
    message: String,
    body_read: bool,
    close: bool,
) -> After {
    let close = close || !body_read;
    if answer(io, status, message, close).await.is_err() {
        return After::Close;
    }
    if !body_read {
        After::Linger
    } else if close {
        After::Close
    } else {
        After::KeepAlive
    }
}

/// Closes the sending side, then reads and drops what the client still sends (for a
/// while), so that it reads the answer rather than a reset.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I) {
    let _ = io.shutdown().await;
    let mut buffer = Buffer::take();
    let mut drained = 0;
    let drain = async {
        while drained < LINGER_BYTES {
            buffer.consume(buffer.bytes().len());
            match buffer.fill(io).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarding() -> Forwarding {
        Forwarding::new("10.0.0.9".parse().unwrap(), false)
    }

    fn complete(bytes: &[u8]) -> RequestHead {
        match parse_request(bytes, &forwarding()) {
            Parsed::Complete(head) => head,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn request_heads_are_rewritten_with_forwarding_and_without_hop_by_hop_fields() {
        let head = complete(
            b"GET /a?b=1 HTTP/1.1\r\nHost: App.Example:8080\r\nConnection: keep-alive, x-secret\r\n\
              X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: gzip\r\nX-Forwarded-For: 203.0.113.9\r\n\
              Forwarded: for=203.0.113.9\r\nAccept: */*\r\n\r\n",
        );
        let out = String::from_utf8(head.out.to_vec()).unwrap();
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: App.Example:8080\r\nAccept: */*\r\n\
             x-forwarded-for: 203.0.113.9, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: App.Example:8080\r\n\
             forwarded: for=203.0.113.9, for=10.0.0.9;proto=http;host=\"app.example\"\r\n"
        );
        assert_eq!(head.host, "app.example");
        assert_eq!(head.framing, Framing::None);
        assert!(head.idempotent && !head.close);
    }

    #[test]
    fn host_is_one_valid_field_and_forwarding_lists_end_with_the_client() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\", for=6.6.6.6;host=\"y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:8o\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [x]\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a%2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: \x80\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad, &forwarding()), Parsed::Bad(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let head = complete(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: host\r\n\r\n");
        assert_eq!(head.host, "::1");
        let out = String::from_utf8(head.out.to_vec()).unwrap();
        assert!(out.contains("Host: [::1]:8080\r\n"), "{out}");
        assert!(out.contains(";host=\"::1\"\r\n"), "{out}");
        let head = complete(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: \x80\r\nX-Forwarded-For: 10.0.0.1\r\n\
              Forwarded: for=1.2.3.4\r\nForwarded: for=\x80\r\n\r\n",
        );
        let out = String::from_utf8_lossy(&head.out).into_owned();
        assert!(out.contains("\r\nx-forwarded-for: 10.0.0.9\r\n"), "{out}");
        assert!(out.contains("\r\nforwarded: for=10.0.0.9;"), "{out}");
        assert!(
            !out.contains("10.0.0.1") && !out.contains("1.2.3.4"),
            "{out}"
        );
        let head = complete(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2, 3.3.3.3\r\n\r\n",
        );
        let out = String::from_utf8(head.out.to_vec()).unwrap();
        assert!(
            out.contains("\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9\r\n"),
            "{out}"
        );
    }

    #[test]
    fn request_framing_is_exact_or_refused() {
        let head = complete(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(head.framing, Framing::Length(5));
        assert!(!head.idempotent);
        let head =
            complete(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(head.framing, Framing::Chunked);
        for bad in [
            &b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse_request(bad, &forwarding()), Parsed::Bad(_)),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for general in [
            &b"GET / HTTP/1.0\r\n\r\n"[..],
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert!(matches!(
                parse_request(general, &forwarding()),
                Parsed::Handover
            ));
        }
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n", &forwarding()),
            Parsed::Partial
        ));
    }

    fn response(bytes: &[u8], head: bool) -> ResponseHead {
        match parse_response(bytes, head, false) {
            Ok(Some(ParsedResponse::Final(head))) => head,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn connection_never_removes_response_framing_and_all_its_names_go() {
        let r = response(
            b"HTTP/1.1 200 OK\r\nConnection: content-length, transfer-encoding\r\nContent-Length: 2\r\n\r\n",
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Length(2), true));
        let out = String::from_utf8(r.out.to_vec()).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n");
        let r = response(
            b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        let out = String::from_utf8(r.out.to_vec()).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
        assert_eq!(r.framing, Framing::None);
        let out = String::from_utf8(r.out.to_vec()).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let r = response(
            b"HTTP/1.1 200 OK\r\nConnection: a, b, c, d, e, f, g, h\r\nConnection: i, j\r\n\
              A: 1\r\nH: 1\r\nI: 1\r\nJ: 1\r\nK: 1\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        let out = String::from_utf8(r.out.to_vec()).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\nK: 1\r\ncontent-length: 1\r\n\r\n");
        let mut out = Vec::new();
        for n in [0, 7, 10, 1234, u64::MAX] {
            out.clear();
            put_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false);
        assert_eq!((r.framing, r.reusable), (Framing::Length(3), true));
        let r = response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true);
        assert_eq!(r.framing, Framing::None);
        assert!(
            String::from_utf8(r.out.to_vec())
                .unwrap()
                .contains("content-length: 3\r\n")
        );
        let r = response(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        assert_eq!(r.framing, Framing::None);
        let r = response(b"HTTP/1.1 204 No Content\r\n\r\n", false);
        assert_eq!((r.framing, r.reusable), (Framing::None, true));
        let r = response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, false));
        let out = String::from_utf8(r.out.to_vec()).unwrap();
        assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        let r = response(b"HTTP/1.1 200 OK\r\n\r\n", false);
        assert_eq!((r.framing, r.reusable), (Framing::UntilClose, false));
        assert!(
            String::from_utf8(r.out.to_vec())
                .unwrap()
                .ends_with("connection: close\r\n\r\n")
        );
        let r = response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
        assert!(!r.reusable);
        let r = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        );
        assert_eq!((r.framing, r.reusable), (Framing::Chunked, false));
        assert!(matches!(
            parse_response(
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
                false,
                false
            ),
            Ok(Some(ParsedResponse::Interim(_)))
        ));
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                false,
                false
            )
            .is_err()
        );
    }

    #[test]
    fn chunked_bodies_end_exactly_after_their_trailers() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nExpires: never\r\n\r\nGET / HTTP/1.1";
        let end = body.len() - b"GET / HTTP/1.1".len();
        // Whole, and byte by byte.
        let mut chunk = Chunk::Size;
        assert_eq!(chunk.advance(body), Ok(end));
        assert_eq!(chunk, Chunk::Done);
        let mut chunk = Chunk::Size;
        let mut taken = 0;
        let mut pending: Vec<u8> = Vec::new();
        for &byte in &body[..end] {
            pending.push(byte);
            let used = chunk.advance(&pending).unwrap();
            pending.drain(..used);
            taken += used;
        }
        assert_eq!((taken, chunk), (end, Chunk::Done));
        let mut chunk = Chunk::Size;
        assert!(chunk.advance(b"4\r\nWikiXX").is_err());
    }

    #[test]
    fn chunk_lines_are_read_strictly() {
        let refused: [&[u8]; 14] = [
            b"zz\r\n",
            b";x\r\n",
            b"\r\n",
            b"5;\nxxxxx\r\n",
            b"5\nxxxxx\r\n",
            b"5\rx\r\n",
            b"10000000000000000\r\n",
            b"5;\r\n",
            b"5;a=\r\n",
            b"5;a=\"b\r\n",
            b"5;a=\"b\x01\"\r\n",
            b"5;a\x7f\r\n",
            b"0\r\n\n",
            b"0\r\nx-sum 1\r\n\r\n",
        ];
        for bytes in refused {
            let mut chunk = Chunk::Size;
            assert!(
                chunk.advance(bytes).is_err(),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        for bytes in [
            &b"0\r\n x: 1\r\n\r\n"[..],
            b"0\r\nx:\x00\r\n\r\n",
            b"0\r\n: 1\r\n\r\n",
        ] {
            assert!(Chunk::Size.advance(bytes).is_err());
        }
        let accepted: [&[u8]; 5] = [
            b"0\r\n\r\n",
            b"000A\r\n0123456789\r\n0\r\n\r\n",
            b"1 ;a ; b = c;d=\"e \\\" f\"\r\nx\r\n0\r\n\r\n",
            b"1  \r\nx\r\n0\r\nx-sum:1\r\ny: a b \r\n\r\n",
            b"ffffffffffffffff\r\n",
        ];
        for bytes in accepted {
            let mut chunk = Chunk::Size;
            assert_eq!(
                chunk.advance(bytes),
                Ok(bytes.len()),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A line is taken only once it is whole, and a too long one is refused early.
        let mut chunk = Chunk::Size;
        assert_eq!(chunk.advance(b"5;a=b"), Ok(0));
        let long = vec![b'0'; MAX_CHUNK_LINE + 2];
        assert!(Chunk::Size.advance(&long).is_err());
    }
}
