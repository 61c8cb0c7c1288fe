//! HTTP/1.1 connections to backends: a keep-alive pool per backend and worker thread.
//!
//! A general-purpose client pool (hyper-util's) locks a shared map, hashes the
//! authority and spawns a task per request to return the connection. Here each backend
//! has one idle list per worker, touched only by that worker's thread, and a
//! connection goes back to it when its response body has been forwarded to the end.
//! A pooled connection the backend closed is detected before the request is written
//! (hyper hands the request back), and the request goes on a fresh connection.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::runtime::UpstreamBody;

/// Idle connections kept per backend and worker; more are closed.
const MAX_IDLE: usize = 1024;

thread_local! {
    /// The tasks driving this thread's backend connections; they end with the thread.
    static CONNECTIONS: RefCell<JoinSet<()>> = RefCell::new(JoinSet::new());
}

/// Why a request got no response from a backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
    #[error("connecting to {0} failed")]
    Connect(SocketAddr, #[source] std::io::Error),
    #[error("connecting to {0} timed out")]
    ConnectTimeout(SocketAddr),
    #[error("the HTTP/1.1 handshake with {0} failed")]
    Handshake(SocketAddr, #[source] hyper::Error),
    #[error("the exchange with the backend failed")]
    Exchange(#[source] hyper::Error),
}

impl UpstreamError {
    /// Whether the request never reached the backend (so it may go elsewhere).
    pub(crate) fn is_connect(&self) -> bool {
        !matches!(self, Self::Exchange(_))
    }
}

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// An idle raw connection of the HTTP/1.1 fast path (`crate::fast`).
struct RawIdle {
    stream: TcpStream,
    since: Instant,
}

/// One worker's idle connections to one backend: hyper's (the general path) and raw
/// ones (the fast path), kept apart since each side frames its own messages.
#[derive(Default)]
pub(crate) struct IdleList {
    idle: Mutex<Vec<Idle>>,
    raw: Mutex<Vec<RawIdle>>,
}

impl std::fmt::Debug for IdleList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleList").finish_non_exhaustive()
    }
}

impl IdleList {
    fn checkout(&self, max_idle: Duration) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_empty() {
            return None;
        }
        let now = Instant::now();
        while let Some(i) = idle.iter().rposition(|c| {
            c.sender.is_ready() || c.sender.is_closed() || now.duration_since(c.since) > max_idle
        }) {
            let candidate = idle.swap_remove(i);
            if candidate.sender.is_ready() && now.duration_since(candidate.since) <= max_idle {
                return Some(candidate.sender);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete.
    pub(crate) fn checkin(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

impl IdleList {
    /// An idle raw connection that is still open and was idle for at most `max_idle`.
    pub(crate) fn checkout_raw(&self, max_idle: Duration) -> Option<TcpStream> {
        let mut idle = self.raw.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let expired = |c: &RawIdle| now.duration_since(c.since) > max_idle;
        // The oldest are at the front; close those past their time.
        while idle.first().is_some_and(expired) {
            idle.remove(0);
        }
        while let Some(candidate) = idle.pop() {
            if !expired(&candidate) && still_open(&candidate.stream) {
                return Some(candidate.stream);
            }
        }
        None
    }

    /// Returns a raw connection whose exchange is complete, with nothing unread.
    pub(crate) fn checkin_raw(&self, stream: TcpStream) {
        let mut idle = self.raw.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(RawIdle {
                stream,
                since: Instant::now(),
            });
        }
    }
}

/// Whether an idle connection is still usable: nothing arrived on it (neither the
/// backend closing it nor stray bytes). Costs no system call unless the reactor saw it
/// readable.
fn still_open(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0_u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}

/// Connects a raw (fast path) connection to a backend.
pub(crate) async fn connect_raw(
    address: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(UpstreamError::Connect(address, error)),
        Err(_) => return Err(UpstreamError::ConnectTimeout(address)),
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A connection for one request: an idle one from `idle`, or a new one.
pub(crate) async fn acquire(
    idle: &IdleList,
    address: SocketAddr,
    connect_timeout: Duration,
    max_idle: Duration,
) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
    match idle.checkout(max_idle) {
        Some(sender) => Ok(sender),
        // Boxed: connecting is the rare path, and its state (the connect and the
        // handshake) would otherwise make every request's future larger, and so
        // every move of it slower.
        None => Box::pin(connect(address, connect_timeout)).await,
    }
}

/// How many times a request refused unwritten (a stale connection) is moved to
/// another connection before giving up.
const MAX_UNWRITTEN_RETRIES: usize = 3;

/// Sends `request` on `sender`. A request the connection refused before writing a
/// byte (it had gone stale) moves to another one. Returns the response and the
/// connection, to be checked in once the body has been read.
pub(crate) async fn send(
    sender: SendRequest<UpstreamBody>,
    idle: &IdleList,
    address: SocketAddr,
    connect_timeout: Duration,
    max_idle: Duration,
    request: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, SendRequest<UpstreamBody>), UpstreamError> {
    let (mut sender, mut request) = (sender, request);
    let mut moves = 0;
    loop {
        match sender.try_send_request(request).await {
            Ok(response) => return Ok((response, sender)),
            Err(mut error) => match error.take_message() {
                Some(unsent) if moves < MAX_UNWRITTEN_RETRIES => {
                    moves += 1;
                    request = unsent;
                    sender = acquire(idle, address, connect_timeout, max_idle).await?;
                }
                _ => return Err(UpstreamError::Exchange(error.into_error())),
            },
        }
    }
}

async fn connect(
    address: SocketAddr,
    timeout: Duration,
) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(UpstreamError::Connect(address, error)),
        Err(_) => return Err(UpstreamError::ConnectTimeout(address)),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|error| UpstreamError::Handshake(address, error))?;
    CONNECTIONS.with(|set| {
        let mut set = set.borrow_mut();
        while set.try_join_next().is_some() {}
        set.spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%address, %error, "backend connection ended with an error");
            }
        });
    });
    Ok(sender)
}
