//! Kept-alive HTTP/1.1 connections to the unix socket, without ever dialling ahead.
//!
//! incusd 6.0's unix listener peeks at the first bytes of each new connection inside
//! its accept loop (`internal/server/endpoints/listeners/starttls.go`), so a connection
//! that is opened and never used stalls every client of the daemon. hyper-util's pooled
//! client dials speculatively (it races a new connection against an idle one and keeps
//! the loser idle), which is exactly that. This pool only dials when a request is about
//! to be written on the new connection at once, and otherwise hands out an idle
//! connection that has already carried a request.
//!
//! A connection goes back to the pool only after its response body has been read to
//! the end (the caller says so with [`Lease::release`]); one dropped half-way, one that
//! failed and one whose request body was streamed are closed instead. The pool keeps at
//! most `max_idle` idle connections, each for at most `idle_timeout`, which is kept well
//! below incusd's own idle timeout (30 s) so that the daemon never closes a connection
//! while a request is being written on it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Connector;
use crate::error::{Error, Result};
use crate::request::Body;

/// A pool of HTTP/1.1 connections made by one [`Connector`].
pub(crate) struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    connector: Connector,
    max_idle: usize,
    idle_timeout: Duration,
    state: Mutex<PoolState>,
}

#[derive(Default)]
struct PoolState {
    /// Most recently returned last.
    idle: Vec<Idle>,
    /// The tasks driving each open connection; dropping the pool closes them all.
    drivers: JoinSet<()>,
}

struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("endpoint", &self.inner.connector.endpoint())
            .field("max_idle", &self.inner.max_idle)
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish_non_exhaustive()
    }
}

/// A connection checked out for one request; give it back with [`Lease::release`]
/// once the response body has been read to its end, or drop it to close it.
pub(crate) struct Lease {
    sender: Option<SendRequest<Body>>,
    pool: Arc<PoolInner>,
}

impl Lease {
    /// Returns the connection to the pool. Call only when the response body has been
    /// read to its end.
    pub(crate) fn release(mut self) {
        if let Some(sender) = self.sender.take() {
            self.pool.put_back(sender);
        }
    }
}

impl Pool {
    pub(crate) fn new(connector: Connector, max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(PoolInner {
                connector,
                max_idle,
                idle_timeout,
                state: Mutex::new(PoolState::default()),
            }),
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) on an idle connection, or on a new one
    /// dialled for it. `reusable` is false when the request body is streamed: such a
    /// connection is closed after the response, whatever happens.
    ///
    /// # Errors
    /// A connect error, or [`Error::Transport`] when the exchange fails.
    pub(crate) async fn send(
        &self,
        mut req: http::Request<Body>,
        reusable: bool,
    ) -> Result<(http::Response<Incoming>, Lease)> {
        let method = req.method().clone();
        let path = req.uri().to_string();
        // An idle connection first. If the request could not even be written on it
        // (the connection closed meanwhile), hyper gives it back and it goes on a new
        // connection; a failure after writing is the caller's, as with any connection.
        while let Some(mut sender) = self.inner.checkout().await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, self.lease(sender, reusable))),
                Err(mut e) => match e.take_message() {
                    Some(back) => {
                        tracing::debug!(error = %e.error(), "idle connection closed; retrying");
                        req = back;
                    }
                    None => {
                        return Err(Error::Transport {
                            method,
                            path,
                            source: Box::new(e.into_error()),
                        });
                    }
                },
            }
        }
        let mut sender = self.inner.dial().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok((resp, self.lease(sender, reusable))),
            Err(e) => Err(Error::Transport {
                method,
                path,
                source: Box::new(e),
            }),
        }
    }

    fn lease(&self, sender: SendRequest<Body>, reusable: bool) -> Lease {
        Lease {
            sender: reusable.then_some(sender),
            pool: Arc::clone(&self.inner),
        }
    }
}

impl PoolInner {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // The state stays consistent across a panic (plain pushes and pops).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is still open and young enough,
    /// once it is ready for a request; `None` when there is none.
    async fn checkout(&self) -> Option<SendRequest<Body>> {
        loop {
            let mut sender = {
                let mut state = self.lock();
                let now = Instant::now();
                state
                    .idle
                    .retain(|i| !i.sender.is_closed() && now - i.since < self.idle_timeout);
                state.idle.pop()?.sender
            };
            // A connection returned a moment ago may not have noticed yet that its last
            // response ended; it is ready as soon as its driver task has run. A closed
            // one answers with an error and is dropped.
            if sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    /// Dials a connection for a request that is written on it right away.
    async fn dial(&self) -> Result<SendRequest<Body>> {
        let stream = self.connector.dial().await?;
        let (sender, conn) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| Error::Connect {
                    endpoint: self.connector.endpoint(),
                    source: Box::new(e),
                })?;
        let mut state = self.lock();
        while state.drivers.try_join_next().is_some() {}
        state.drivers.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection to incusd ended with an error");
            }
        });
        Ok(sender)
    }

    fn put_back(&self, sender: SendRequest<Body>) {
        if self.max_idle == 0 || self.idle_timeout.is_zero() || sender.is_closed() {
            return;
        }
        let mut state = self.lock();
        if state.idle.len() >= self.max_idle {
            // Keep the most recent ones: the oldest is the first to time out.
            state.idle.remove(0);
        }
        state.idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }
}
