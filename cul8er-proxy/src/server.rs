//! The accept side: listener loops, the PROXY header and TLS handshake, serving HTTP
//! connections (HTTP/1.1 and HTTP/2 detected per connection) and forwarding TCP.
//!
//! Every task here is owned: connections live in their listener's `JoinSet`, upgraded
//! tunnels in their connection's, so stopping a listener ends all of them.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::ActiveGuard;
use crate::config::ListenerMode;
use crate::forward::{self, RequestContext};
use crate::io::{Activity, IdleIo, PrefixedIo, read_proxy_header};
use crate::runtime::{ListenerRuntime, Shared};
use crate::workers::WorkerPool;

const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// An upgraded connection's byte pump, run by the connection that upgraded.
pub(crate) type Tunnel = Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) async fn run_listener(
    shared: Arc<Shared>,
    name: Arc<str>,
    socket: TcpListener,
    stop: CancellationToken,
    grace: Duration,
    workers: Option<Arc<WorkerPool>>,
) {
    // Connections run here or on the workers; the tracker counts them either way, and
    // `kill` ends those still open when the grace period is over.
    let tracker = TaskTracker::new();
    let kill = CancellationToken::new();
    // Each worker watches its own child tokens: a token is a mutex, polled on every
    // wake of every connection, and one shared by all workers would bounce between
    // their cores.
    let children = |token: &CancellationToken| -> Vec<CancellationToken> {
        let count = workers.as_ref().map_or(0, |pool| pool.len());
        (0..count).map(|_| token.child_token()).collect()
    };
    let (worker_stop, worker_kill) = (children(&stop), children(&kill));
    let mut next_worker = 0_usize;
    let mut inline = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = socket.accept() => match accepted {
                Ok((stream, peer)) => {
                    let token = tracker.token();
                    let (shared, name, stop, kill) =
                        (shared.clone(), name.clone(), stop.clone(), kill.clone());
                    match &workers {
                        None => {
                            inline.spawn(async move {
                                let _token = token;
                                tokio::select! {
                                    () = serve_connection(shared, name, stream, peer, stop) => {}
                                    () = kill.cancelled() => {}
                                }
                            });
                        }
                        Some(pool) => {
                            let Ok(stream) = stream.into_std() else { continue };
                            let worker = next_worker % pool.len();
                            next_worker = next_worker.wrapping_add(1);
                            let stop = worker_stop[worker].clone();
                            let kill = worker_kill[worker].clone();
                            pool.dispatch_to(worker, Box::new(move || {
                                Box::pin(async move {
                                    let _token = token;
                                    let Ok(stream) = TcpStream::from_std(stream) else { return };
                                    tokio::select! {
                                        () = serve_connection(shared, name, stream, peer, stop) => {}
                                        () = kill.cancelled() => {}
                                    }
                                })
                            }));
                        }
                    }
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = inline.join_next(), if !inline.is_empty() => {}
        }
    }
    drop(socket);
    tracker.close();
    tracing::info!(listener = %name, open = tracker.len(), "listener stopped; draining");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(listener = %name, open = tracker.len(), "grace period over; closing");
    }
    kill.cancel();
}

async fn serve_connection(
    shared: Arc<Shared>,
    name: Arc<str>,
    stream: TcpStream,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    let Some(listener) = shared.snapshot.load().listeners.get(&*name).cloned() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let (io, client) = if listener.config.proxy_protocol {
        match Box::pin(read_proxy_header(stream, PROXY_HEADER_TIMEOUT)).await {
            Ok((io, source)) => (io, source.unwrap_or(peer)),
            Err(error) => {
                tracing::debug!(listener = %name, %peer, %error, "connection refused");
                return;
            }
        }
    } else {
        (PrefixedIo::new(stream), peer)
    };
    // Each kind of connection is boxed on its own: an async fn's state is as large as
    // its largest branch, and a plain HTTP connection would otherwise carry the room
    // for a TLS session and a TCP pump for as long as it stays open.
    match listener.config.mode {
        ListenerMode::Tcp => Box::pin(serve_tcp(&shared, &listener, io)).await,
        ListenerMode::Http => match &listener.tls {
            Some(acceptor) => {
                Box::pin(serve_https(
                    shared, name, &listener, acceptor, io, client, peer, stop,
                ))
                .await;
            }
            None => Box::pin(serve_http(shared, name, &listener, io, client, false, stop)).await,
        },
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "one connection's parts, passed on once"
)]
async fn serve_https(
    shared: Arc<Shared>,
    name: Arc<str>,
    listener: &ListenerRuntime,
    acceptor: &tokio_rustls::TlsAcceptor,
    io: PrefixedIo<TcpStream>,
    client: SocketAddr,
    peer: SocketAddr,
    stop: CancellationToken,
) {
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(tls)) => {
            serve_http(
                shared,
                name,
                listener,
                PrefixedIo::new(tls),
                client,
                true,
                stop,
            )
            .await;
        }
        Ok(Err(error)) => {
            tracing::debug!(listener = %name, %peer, %error, "TLS handshake failed");
        }
        Err(_) => tracing::debug!(listener = %name, %peer, "TLS handshake timed out"),
    }
}

async fn serve_http<I>(
    shared: Arc<Shared>,
    name: Arc<str>,
    listener: &ListenerRuntime,
    mut io: PrefixedIo<I>,
    client: SocketAddr,
    tls: bool,
    stop: CancellationToken,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let idle = listener.config.idle_timeout;
    // The protocol is told by the first bytes (HTTP/2 with prior knowledge or by ALPN
    // both start with its preface), and only that protocol's connection is built: it
    // is smaller than one able to become either.
    let http2 = tokio::select! {
        sniffed = tokio::time::timeout(idle, io.sniff_http2()) => match sniffed {
            Ok(Ok(http2)) => http2,
            Ok(Err(error)) => {
                tracing::debug!(%client, %error, "client connection ended before a request");
                return;
            }
            Err(_) => {
                tracing::debug!(%client, "client connection idle before a request; closing");
                return;
            }
        },
        () = stop.cancelled() => return,
    };
    if !http2 {
        let client = crate::fast::Client {
            shared: &shared,
            listener: &name,
            address: client,
            tls,
            idle,
            stop: &stop,
        };
        // Boxed: a connection served by the general path keeps no room for it.
        match Box::pin(crate::fast::serve(client, &mut io)).await {
            crate::fast::End::Closed => return,
            crate::fast::End::Handover(read) => io.replay(read),
        }
    }
    // Boxed as well: a connection on the fast path keeps no room for hyper's.
    Box::pin(serve_general(
        shared, name, io, client, tls, idle, stop, http2,
    ))
    .await;
}

/// Serves the rest of a connection with hyper: HTTP/2, or HTTP/1.1 from the first
/// request the fast path handed over.
#[expect(
    clippy::too_many_arguments,
    reason = "one connection's parts, passed on once"
)]
async fn serve_general<I>(
    shared: Arc<Shared>,
    name: Arc<str>,
    io: PrefixedIo<I>,
    client: SocketAddr,
    tls: bool,
    idle: Duration,
    stop: CancellationToken,
    http2: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(IdleIo::new(io, activity.clone()));
    let context = Arc::new(RequestContext {
        shared: shared.clone(),
        listener: name,
        forwarding: crate::forward::Forwarding::new(client.ip(), tls),
        tunnels: forward::Tunnels::default(),
        activity,
    });
    let watch = Watch {
        client,
        idle,
        stop,
        context: context.clone(),
    };
    let service = hyper::service::service_fn(move |request| {
        let context = context.clone();
        // Boxed, so that the connection keeps room for a request's state only while
        // it has one: hyper holds the service future inline for the connection's life.
        Box::pin(async move { Ok::<_, Infallible>(forward::handle(&context, request).await) })
    });
    if http2 {
        let connection = shared.http2.serve_connection(io, service);
        watch.drive(Box::pin(connection)).await;
    } else {
        let connection = shared.http1.serve_connection(io, service).with_upgrades();
        watch.drive(Box::pin(connection)).await;
    }
}

/// A served connection that can be asked to finish its current exchanges and close.
trait GracefulConnection: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// What a client connection is watched for besides its exchanges: the listener
/// stopping, idleness, and upgraded tunnels to run.
struct Watch {
    client: SocketAddr,
    idle: Duration,
    stop: CancellationToken,
    context: Arc<RequestContext>,
}

impl Watch {
    /// Serves `connection` to its end. The watched events are polled only when one
    /// of them woke the task: a connection is woken several times per request, and
    /// polling a timer and two notifications each time cost more than the wake itself.
    async fn drive<C: GracefulConnection>(self, mut connection: Pin<Box<C>>) {
        let context = &self.context;
        let side = Arc::new(SideWake {
            fired: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        let side_waker = Waker::from(side.clone());
        let mut tunnels = JoinSet::new();
        let mut closing = false;
        let mut stop = pin!(self.stop.cancelled());
        let mut idle = pin!(tokio::time::sleep_until(
            context.activity.deadline(self.idle)
        ));
        let mut added = pin!(context.tunnels.added.notified());
        let result = std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                return Poll::Ready(Some(result));
            }
            side.register(cx.waker());
            if !side.fired.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut side_cx = Context::from_waker(&side_waker);
            while added.as_mut().poll(&mut side_cx).is_ready() {
                for tunnel in context.tunnels.take() {
                    tunnels.spawn(tunnel);
                }
                added.set(context.tunnels.added.notified());
            }
            let mut shut = !closing && stop.as_mut().poll(&mut side_cx).is_ready();
            while !shut && idle.as_mut().poll(&mut side_cx).is_ready() {
                let now = Instant::now();
                let unwritten = context.activity.write_deadline(self.idle);
                if unwritten.is_some_and(|deadline| now >= deadline) {
                    // The client has taken no byte for the idle timeout: a graceful
                    // shutdown would wait for the very response it does not read.
                    return Poll::Ready(None);
                }
                if closing {
                    // Only a write that waits is watched any more.
                    idle.as_mut().reset(unwritten.unwrap_or(now + self.idle));
                } else if context.activity.expired(self.idle) {
                    shut = true;
                } else {
                    // Busy (a request in flight) or active since: wait again, never
                    // for a deadline already past, nor past a waiting write's.
                    let deadline = context.activity.deadline(self.idle);
                    let next = if deadline > now {
                        deadline
                    } else {
                        now + self.idle
                    };
                    idle.as_mut().reset(unwritten.map_or(next, |w| w.min(next)));
                }
            }
            if shut {
                connection.as_mut().graceful_shutdown();
                closing = true;
                // The connection acts on the shutdown when polled again.
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
        .await;
        match result {
            Some(Ok(())) => {}
            Some(Err(error)) => {
                tracing::debug!(client = %self.client, %error, "client connection ended with an error");
            }
            None => {
                // Dropping the connection drops its exchanges: their backend
                // connections are closed, and nothing is counted against a backend.
                drop(connection);
                tracing::debug!(
                    client = %self.client, stalled = "client", idle = ?self.idle,
                    "the client took no byte of its response for the idle timeout; closing"
                );
            }
        }
        for tunnel in context.tunnels.take() {
            tunnels.spawn(tunnel);
        }
        while tunnels.join_next().await.is_some() {}
    }
}

/// The waker of what a connection watches besides its exchanges: it records that one
/// of them woke, then wakes the connection's task.
struct SideWake {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl SideWake {
    fn register(&self, waker: &Waker) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if !task.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *task = Some(waker.clone());
        }
    }
}

impl Wake for SideWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        if let Some(task) = &*self.task.lock().unwrap_or_else(PoisonError::into_inner) {
            task.wake_by_ref();
        }
    }
}

async fn serve_tcp<I>(shared: &Shared, listener: &ListenerRuntime, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(service_name) = listener.config.service.as_deref() else {
        return;
    };
    let Some(service) = shared.snapshot.load().services.get(service_name).cloned() else {
        return;
    };
    let mut tried = Vec::new();
    let (mut upstream, guard) = loop {
        let Some(index) = service.pick(&tried) else {
            tracing::warn!(listener = %listener.config.name, reason = %service.unavailable_reason(), "closing a TCP connection");
            return;
        };
        let backend = service.backends[index].clone();
        let guard = ActiveGuard::new(backend.clone());
        let started = Instant::now();
        let connect = TcpStream::connect(backend.address);
        match tokio::time::timeout(service.config.timeouts.connect, connect).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                backend.record_outcome(true);
                backend.metrics.record_connected(started.elapsed());
                break (stream, guard);
            }
            Ok(Err(error)) => {
                tracing::debug!(backend = %backend.name, %error, "TCP connect failed");
            }
            Err(_) => tracing::debug!(backend = %backend.name, "TCP connect timed out"),
        }
        backend.record_outcome(false);
        backend.metrics.record_error(started.elapsed());
        tried.push(index);
        if tried.len() > service.config.retries as usize {
            return;
        }
    };
    let idle = listener.config.idle_timeout;
    let activity = Activity::new();
    let mut client = IdleIo::new(io, activity.clone());
    let watchdog = async {
        loop {
            tokio::time::sleep_until(activity.deadline(idle)).await;
            if activity.expired(idle) {
                return;
            }
        }
    };
    tokio::select! {
        result = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(error) = result {
                tracing::debug!(%error, "TCP connection ended with an error");
            }
        }
        () = guard.backend().cut.cancelled() => {}
        () = watchdog => tracing::debug!("TCP connection idle; closing"),
    }
}
