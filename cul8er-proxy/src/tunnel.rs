//! An upgraded connection's byte pump (a WebSocket, or any `101 Switching Protocols`):
//! copied both ways until a side closes, its backend is cut at the end of a drain, or
//! no byte has moved in either direction for the service's `timeouts.tunnel_idle`.
//!
//! Without the idle limit a client and a backend that both go silent would hold two
//! sockets forever. The limit costs one timer per tunnel, reset only when the pump has
//! to wait after bytes moved (as a body's deadline is), never one per read.

use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a tunnel's pump ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TunnelEnd {
    /// Both sides closed, or one failed.
    Closed,
    /// No byte moved either way for the idle limit.
    Idle,
    /// The backend's drain ran out.
    Cut,
}

/// Copies `client` and `upstream` both ways until one of the ends in [`TunnelEnd`].
/// Both are dropped (closed) when it returns.
pub(crate) async fn pump<C, U>(
    client: C,
    mut upstream: U,
    idle: Duration,
    cut: &CancellationToken,
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let moved = AtomicBool::new(false);
    // Every byte is read from or written to the client, so watching it sees both ways.
    let mut client = Watched {
        io: client,
        moved: &moved,
    };
    let mut copy = pin!(tokio::io::copy_bidirectional(&mut client, &mut upstream));
    let mut cut = pin!(cut.cancelled());
    let mut timer = pin!(tokio::time::sleep(idle));
    std::future::poll_fn(|cx| {
        if copy.as_mut().poll(cx).is_ready() {
            return Poll::Ready(TunnelEnd::Closed);
        }
        if cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(TunnelEnd::Cut);
        }
        // The copy waits now: if bytes moved since the timer was last set, the silence
        // starts here.
        if moved.swap(false, Ordering::Relaxed) {
            timer.as_mut().reset(Instant::now() + idle);
        }
        if timer.as_mut().poll(cx).is_ready() {
            Poll::Ready(TunnelEnd::Idle)
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One side of a tunnel that records when a byte moves through it.
struct Watched<'m, T> {
    io: T,
    moved: &'m AtomicBool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
