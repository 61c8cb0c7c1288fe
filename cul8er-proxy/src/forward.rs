//! One HTTP request through the proxy: route, pick a backend, rewrite headers, send,
//! retry an idempotent request on connect failure, and stream the answer back.
//!
//! The proxy's own answers (404 no route, 502, 503 no healthy backend, 504) have a
//! plain-text body that says what happened, so a client never waits on nothing.

use std::future::Future;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::backend::{ActiveGuard, Backend};
use crate::config::UpstreamProtocol;
use crate::io::{Activity, InFlight};
use crate::runtime::{ServiceRuntime, Shared, UpstreamBody};
use crate::server::Tunnel;
use crate::tunnel;
use crate::upstream;
use hyper::client::conn::http1::SendRequest;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What every request on one client connection shares.
pub(crate) struct RequestContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) listener: Arc<str>,
    pub(crate) forwarding: Forwarding,
    pub(crate) tunnels: Tunnels,
    pub(crate) activity: Arc<Activity>,
}

/// Upgraded connections handed to their client connection, which runs them. Nothing
/// is allocated until the first one: most connections never upgrade.
#[derive(Default)]
pub(crate) struct Tunnels {
    pending: Mutex<Vec<Tunnel>>,
    pub(crate) added: Notify,
}

impl Tunnels {
    fn push(&self, tunnel: Tunnel) {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tunnel);
        // A permit is kept when nobody waits, so a tunnel is never left behind.
        self.added.notify_one();
    }

    /// The tunnels handed over since the last call.
    pub(crate) fn take(&self) -> Vec<Tunnel> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The body of a response the proxy sends to its client.
pub(crate) enum ProxyBody {
    /// The proxy's own answer.
    Local(Option<Bytes>),
    /// A backend's answer, counted as in flight until it ends.
    Upstream(Box<Tracked>),
}

pub(crate) struct Tracked {
    body: Incoming,
    cut: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Ends the body when the backend sends nothing for the service's body timeout.
    deadline: BodyDeadline,
    /// Whether the body was read to its end.
    finished: bool,
    /// The pooled HTTP/1.1 connection it came on, returned once the body is read.
    connection: Option<SendRequest<UpstreamBody>>,
    active: ActiveGuard,
    _in_flight: InFlight,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // hyper stops polling a body that reports its end, so the end is checked
        // here too.
        if let Some(connection) = self.connection.take()
            && (self.finished || self.body.is_end_stream())
        {
            self.active.backend().pool().checkin(connection);
        }
    }
}

/// A body no byte of which moved for its service's body timeout.
#[derive(Debug, thiserror::Error)]
#[error("no byte of the {what} moved for {}", crate::config::format_duration(*limit))]
pub(crate) struct BodyStalled {
    what: &'static str,
    limit: Duration,
}

/// A per-frame deadline on a body: `limit` after the last frame, checked while the
/// body waits. Its timer is made the first time the body waits and reset only when it
/// waits again after a frame, so a body that never waits costs nothing, and a later
/// deadline costs no timer registration.
struct BodyDeadline {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl BodyDeadline {
    fn new(limit: Duration) -> Self {
        Self {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// A frame came: the next wait starts a new deadline.
    fn progressed(&mut self) {
        self.armed = false;
    }

    /// Called while the body waits: whether the deadline has passed.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.armed {
            self.armed = true;
            let deadline = Instant::now() + self.limit;
            match &mut self.timer {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer
            .as_mut()
            .is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }

    fn stalled(&self, what: &'static str) -> BodyStalled {
        BodyStalled {
            what,
            limit: self.limit,
        }
    }
}

/// What the sender of a client's body learns from it: whether its last poll waited on
/// the client, whether it ended because the client sent nothing for the body timeout,
/// and when it last handed a frame on (and whether that was its end), so that the
/// response-headers deadline starts at the body's end and a backend that stops taking
/// the body is noticed.
#[derive(Default)]
pub(crate) struct ClientBodyWatch {
    waiting: AtomicBool,
    stalled: AtomicBool,
    progress: Mutex<BodyProgress>,
}

/// When a client's body last handed a frame to the backend connection.
#[derive(Debug, Clone, Copy, Default)]
struct BodyProgress {
    /// `None` before the first frame.
    last: Option<Instant>,
    ended: bool,
}

impl ClientBodyWatch {
    fn moved(&self, ended: bool) {
        let mut progress = self.progress.lock().unwrap_or_else(PoisonError::into_inner);
        progress.last = Some(Instant::now());
        progress.ended |= ended;
    }

    fn progress(&self) -> BodyProgress {
        *self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why an exchange ran out of time before its response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// No response head within `response_headers` of the request's end.
    ResponseHeaders,
    /// The backend took no byte of the request body for the body timeout.
    BodyNotTaken,
}

/// Runs `exchange` within its deadlines. Without a streamed body: `response_headers`
/// from `started`. With one, while it is sent only the body timeout applies: the
/// client's stalls end the body itself (its own deadline), and a backend that takes
/// no frame for the body timeout ends the exchange; `response_headers` runs from the
/// body's last frame. hyper polls a body only while it can write, so the body cannot
/// see the backend's stall itself: it is checked here, at least every
/// `min(response_headers, body)`, which is only ever waited out by a slow upload.
async fn within_deadlines<F: Future>(
    exchange: F,
    watch: Option<&ClientBodyWatch>,
    started: Instant,
    timeouts: &crate::config::TimeoutConfig,
) -> Result<F::Output, Expired> {
    let step = timeouts.response_headers.min(timeouts.body);
    let first = match watch {
        None => started + timeouts.response_headers,
        Some(_) => started + step,
    };
    let mut exchange = pin!(exchange);
    let mut timer = pin!(tokio::time::sleep_until(first));
    loop {
        tokio::select! {
            biased;
            output = exchange.as_mut() => return Ok(output),
            () = timer.as_mut() => {}
        }
        let Some(watch) = watch else {
            return Err(Expired::ResponseHeaders);
        };
        let now = Instant::now();
        let progress = watch.progress();
        let last = progress.last.unwrap_or(started);
        let next = if progress.ended {
            let deadline = last + timeouts.response_headers;
            if now >= deadline {
                return Err(Expired::ResponseHeaders);
            }
            deadline
        } else if watch.waiting.load(Ordering::Relaxed) {
            // Waiting on the client: the body's own deadline ends it.
            now + step
        } else {
            let deadline = last + timeouts.body;
            if now >= deadline {
                return Err(Expired::BodyNotTaken);
            }
            deadline.min(now + step)
        };
        timer.as_mut().reset(next);
    }
}

/// A client's request body on its way to a backend, ended when the client sends
/// nothing for the service's body timeout.
pub(crate) struct ClientBody {
    body: Incoming,
    /// `None` for an empty body: nothing to wait for.
    watch: Option<Arc<ClientBodyWatch>>,
    deadline: BodyDeadline,
}

impl ClientBody {
    fn new(body: Incoming, limit: Duration) -> Self {
        let watch = (!body.is_end_stream()).then(|| Arc::new(ClientBodyWatch::default()));
        Self {
            body,
            watch,
            deadline: BodyDeadline::new(limit),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(watch) = &this.watch {
            watch.waiting.store(polled.is_pending(), Ordering::Relaxed);
            match &polled {
                Poll::Pending => {
                    if this.deadline.poll_expired(cx) {
                        watch.stalled.store(true, Ordering::Relaxed);
                        let stalled = this.deadline.stalled("request body from the client");
                        return Poll::Ready(Some(Err(stalled.into())));
                    }
                }
                // hyper ends a body that says it has ended without polling it again.
                Poll::Ready(Some(Ok(_))) => {
                    this.deadline.progressed();
                    watch.moved(this.body.is_end_stream());
                }
                Poll::Ready(None) => watch.moved(true),
                Poll::Ready(Some(Err(_))) => {}
            }
        }
        polled.map(|frame| frame.map(|frame| frame.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

pub(crate) fn refused(backend: &Backend) -> String {
    format!(
        "502 Bad Gateway: backend '{}' ({}) refused or did not accept the connection",
        backend.name, backend.address
    )
}

/// How an exchange with a backend failed.
enum Failure {
    /// The request never reached the backend, so it may go to another.
    Connect(String),
    /// Reading the client's request body failed: not the backend's doing.
    ClientBody(String),
    /// The backend failed the exchange.
    Backend(String),
}

impl Failure {
    fn new(error: &(dyn std::error::Error + 'static), connect: bool) -> Self {
        let text = crate::admin::error_chain(error);
        if connect {
            Self::Connect(text)
        } else if client_body_failed(error) {
            Self::ClientBody(text)
        } else {
            Self::Backend(text)
        }
    }
}

/// Whether `error` comes from reading the client's request body: hyper reports it as
/// an error of the body it was given to send, caused by the client connection's own.
fn client_body_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_user()
            && error
                .source()
                .is_some_and(|cause| cause.is::<hyper::Error>())
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// Sends one request to one backend: HTTP/1.1 on the connection taken from the
/// worker's pool, HTTP/2 through the multiplexing client.
async fn exchange(
    service: &ServiceRuntime,
    backend: &Backend,
    connection: Option<SendRequest<UpstreamBody>>,
    request: Request<UpstreamBody>,
) -> Result<(Response<Incoming>, Option<SendRequest<UpstreamBody>>), Failure> {
    match connection {
        Some(connection) => {
            let timeouts = &service.config.timeouts;
            let pool = backend.pool();
            upstream::send(
                connection,
                pool,
                backend.address,
                timeouts.connect,
                timeouts.idle,
                request,
            )
            .await
            .map(|(response, connection)| (response, Some(connection)))
            .map_err(|error| Failure::new(&error, error.is_connect()))
        }
        None => service
            .client()
            .request(request)
            .await
            .map(|response| (response, None))
            .map_err(|error| Failure::new(&error, error.is_connect())),
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream(tracked) => {
                let backend = tracked.active.backend();
                if backend.is_cut() {
                    return Poll::Ready(Some(Err(DRAIN_CUT.into())));
                }
                match Pin::new(&mut tracked.body).poll_frame(cx) {
                    Poll::Ready(None) => {
                        tracked.finished = true;
                        Poll::Ready(None)
                    }
                    Poll::Ready(Some(Err(error))) => {
                        // The backend cut its body short, broke its framing or its
                        // connection: counted as on the fast path.
                        backend.metrics.record_broken_body();
                        tracing::debug!(
                            backend = %backend.name, %error, "response body broken by the backend"
                        );
                        Poll::Ready(Some(Err(error.into())))
                    }
                    Poll::Ready(frame) => {
                        tracked.deadline.progressed();
                        Poll::Ready(frame.map(|f| f.map_err(Into::into)))
                    }
                    Poll::Pending => {
                        // Only a waiting body needs waking when its backend is cut.
                        let cut = tracked
                            .cut
                            .get_or_insert_with(|| Box::pin(backend.cut.clone().cancelled_owned()));
                        if cut.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Some(Err(DRAIN_CUT.into())));
                        }
                        if tracked.deadline.poll_expired(cx) {
                            // The backend stopped sending: an error of the backend's.
                            // The client connection ends (HTTP/1.1) or the stream is
                            // reset (HTTP/2), and the backend's is not reused.
                            backend.metrics.record_broken_body();
                            let stalled =
                                tracked.deadline.stalled("response body from the backend");
                            tracing::debug!(
                                backend = %backend.name, stalled = "backend", error = %stalled,
                                "response body stalled"
                            );
                            return Poll::Ready(Some(Err(stalled.into())));
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Local(bytes) => bytes.is_none(),
            Self::Upstream(tracked) => tracked.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Self::Upstream(tracked) => tracked.body.size_hint(),
        }
    }
}

pub(crate) const DRAIN_CUT: &str = "the backend was removed and its drain timeout ran out";

fn local(status: StatusCode, message: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Local(Some(Bytes::from(message + "\n"))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `response` with `Connection: close`: after it the client's connection ends.
fn closing(mut response: Response<ProxyBody>) -> Response<ProxyBody> {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Handles one request from a client.
pub(crate) async fn handle(
    context: &RequestContext,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let in_flight = InFlight::new(context.activity.clone());
    if let Err(reason) = check_host(&request) {
        return closing(local(
            StatusCode::BAD_REQUEST,
            format!("400 Bad Request: {reason}"),
        ));
    }
    let host = request_host(&request)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let service = {
        let snapshot = context.shared.snapshot.load();
        let Some(listener) = snapshot.listeners.get(&*context.listener) else {
            return local(
                StatusCode::SERVICE_UNAVAILABLE,
                "this listener is shutting down".into(),
            );
        };
        let Some(name) = listener.route(&host, request.uri().path()) else {
            return local(
                StatusCode::NOT_FOUND,
                format!(
                    "404 Not Found: no route on listener '{}' for host '{host}' and path '{}'",
                    context.listener,
                    request.uri().path()
                ),
            );
        };
        match snapshot.services.get(name) {
            Some(service) => service.clone(),
            None => {
                return local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("service '{name}' is gone"),
                );
            }
        }
    };
    forward(context, &service, request, host, in_flight).await
}

async fn forward(
    context: &RequestContext,
    service: &ServiceRuntime,
    mut request: Request<Incoming>,
    host: String,
    in_flight: InFlight,
) -> Response<ProxyBody> {
    let upgrade = request.version() == Version::HTTP_11
        && request.headers().get(header::UPGRADE).is_some()
        && connection_has(request.headers(), "upgrade");
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let upgrade_protocol = upgrade
        .then(|| request.headers().get(header::UPGRADE).cloned())
        .flatten();

    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(protocol) = upgrade_protocol {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
    if !headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(value) = HeaderValue::from_str(authority.as_str())
    {
        headers.insert(header::HOST, value);
    }
    add_forwarding(&mut headers, &context.forwarding, &host);

    let retryable = !upgrade && is_idempotent(&parts.method) && body.is_end_stream();
    let attempts = if retryable {
        service.config.retries as usize + 1
    } else {
        1
    };
    let path_and_query = parts.uri.path_and_query().cloned();
    let version = match service.config.protocol {
        UpstreamProtocol::Http1 => Version::HTTP_11,
        UpstreamProtocol::Http2 => Version::HTTP_2,
    };
    let mut body = Some(body);
    // Set while the client's body is sent: whether it waits on the client.
    let mut watch: Option<Arc<ClientBodyWatch>> = None;
    let mut tried: Vec<usize> = Vec::new();
    let mut last_failure = None;
    for attempt in 0..attempts {
        let Some(index) = service.pick(&tried) else {
            break;
        };
        let backend = service.backends[index].clone();
        // HTTP/1.1 is written in origin form; the HTTP/2 client needs the authority.
        let mut uri = match service.config.protocol {
            UpstreamProtocol::Http1 => Uri::builder(),
            UpstreamProtocol::Http2 => Uri::builder()
                .scheme("http")
                .authority(backend.authority.clone()),
        };
        uri = match &path_and_query {
            Some(pq) => uri.path_and_query(pq.clone()),
            None => uri.path_and_query("/"),
        };
        let Ok(uri) = uri.build() else {
            return local(
                StatusCode::BAD_REQUEST,
                "400 Bad Request: unusable request target".into(),
            );
        };
        let guard = ActiveGuard::new(backend.clone());
        let started = Instant::now();
        // HTTP/1.1 takes its connection first: a connect failure leaves the request
        // whole for the next backend, and once connected no copy is needed.
        let connection = match service.config.protocol {
            UpstreamProtocol::Http1 => {
                let timeouts = &service.config.timeouts;
                match upstream::acquire(
                    backend.pool(),
                    backend.address,
                    timeouts.connect,
                    timeouts.idle,
                )
                .await
                {
                    Ok(connection) => Some(connection),
                    Err(error) => {
                        backend.metrics.record_error(started.elapsed());
                        backend.record_outcome(false);
                        tracing::debug!(
                            service = %service.config.name, backend = %backend.name,
                            error = %crate::admin::error_chain(&error), "backend connect failed"
                        );
                        last_failure = Some(refused(&backend));
                        tried.push(index);
                        continue;
                    }
                }
            }
            UpstreamProtocol::Http2 => None,
        };
        // The headers are copied only while another attempt could follow.
        let last = connection.is_some()
            || attempt + 1 == attempts
            || tried.len() + 1 >= service.backends.len();
        // A retryable request has no body, so every attempt can send an empty one.
        let upstream_body = if retryable {
            Either::Right(Empty::new())
        } else {
            match body.take() {
                Some(b) => {
                    let b = ClientBody::new(b, service.config.timeouts.body);
                    watch.clone_from(&b.watch);
                    Either::Left(b)
                }
                None => break,
            }
        };
        let mut outbound = Request::new(upstream_body);
        *outbound.method_mut() = parts.method.clone();
        *outbound.uri_mut() = uri;
        *outbound.version_mut() = version;
        *outbound.headers_mut() = if last {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };

        if !outbound.headers().contains_key(header::HOST)
            && let Ok(value) = HeaderValue::from_str(backend.authority.as_str())
        {
            outbound.headers_mut().insert(header::HOST, value);
        }

        let sent = tokio::select! {
            sent = within_deadlines(
                exchange(service, &backend, connection, outbound),
                watch.as_deref(),
                started,
                &service.config.timeouts,
            ) => sent,
            () = backend.cut.cancelled() => {
                backend.metrics.record_error(started.elapsed());
                return local(StatusCode::BAD_GATEWAY, format!("502 Bad Gateway: {DRAIN_CUT}"));
            }
        };
        let elapsed = started.elapsed();
        match sent {
            Ok(Ok((mut response, connection))) => {
                let status = response.status();
                backend.metrics.record_response(status.as_u16(), elapsed);
                backend.record_outcome(!status.is_server_error());
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if let Some(client_upgrade) = client_upgrade {
                        let backend_upgrade = hyper::upgrade::on(&mut response);
                        let idle = service.config.timeouts.tunnel_idle;
                        let tunnel: Tunnel = Box::pin(async move {
                            let (client, upstream) = tokio::join!(client_upgrade, backend_upgrade);
                            if let (Ok(client), Ok(upstream)) = (client, upstream) {
                                let backend = guard.backend();
                                let end = tunnel::pump(
                                    TokioIo::new(client),
                                    TokioIo::new(upstream),
                                    idle,
                                    &backend.cut,
                                )
                                .await;
                                // A silent tunnel is closed, not failed: nothing is
                                // counted against the backend.
                                if end == tunnel::TunnelEnd::Idle {
                                    tracing::debug!(
                                        service = %backend.service, backend = %backend.name,
                                        tunnel_idle = %crate::config::format_duration(idle),
                                        "no byte moved either way in the tunnel for \
                                         timeouts.tunnel_idle; closed both sides"
                                    );
                                }
                            }
                            drop(guard);
                        });
                        context.tunnels.push(tunnel);
                    }
                    let (parts, _) = response.into_parts();
                    return Response::from_parts(parts, ProxyBody::Local(None));
                }
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let tracked = Tracked {
                    body,
                    cut: None,
                    deadline: BodyDeadline::new(service.config.timeouts.body),
                    finished: false,
                    connection,
                    active: guard,
                    _in_flight: in_flight,
                };
                return Response::from_parts(parts, ProxyBody::Upstream(Box::new(tracked)));
            }
            // The client's failures are not the backend's: nothing is recorded against
            // it, or clients could have healthy backends ejected.
            Ok(Err(failure))
                if watch
                    .as_ref()
                    .is_some_and(|w| w.stalled.load(Ordering::Relaxed)) =>
            {
                // Counted as a request without an answer, as on the fast path.
                backend.metrics.record_error(elapsed);
                let error = match failure {
                    Failure::Connect(error)
                    | Failure::ClientBody(error)
                    | Failure::Backend(error) => error,
                };
                tracing::debug!(
                    service = %service.config.name, backend = %backend.name, stalled = "client",
                    %error, "request body stalled"
                );
                return closing(local(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "408 Request Timeout: the request body stopped arriving for {}",
                        crate::config::format_duration(service.config.timeouts.body)
                    ),
                ));
            }
            Ok(Err(Failure::ClientBody(error))) => {
                // Counted as a request without an answer, as on the fast path.
                backend.metrics.record_error(elapsed);
                tracing::debug!(
                    service = %service.config.name, client_error = %error,
                    "reading the request body failed"
                );
                return closing(local(
                    StatusCode::BAD_REQUEST,
                    "400 Bad Request: the request body could not be read".into(),
                ));
            }
            Ok(Err(failure)) => {
                let (connect, error) = match failure {
                    Failure::Connect(error) => (true, error),
                    Failure::ClientBody(error) | Failure::Backend(error) => (false, error),
                };
                backend.metrics.record_error(elapsed);
                backend.record_outcome(false);
                tracing::debug!(
                    service = %service.config.name, backend = %backend.name, %error,
                    connect, "backend request failed"
                );
                last_failure = Some(if connect {
                    refused(&backend)
                } else {
                    format!(
                        "502 Bad Gateway: backend '{}' ({}) failed the exchange",
                        backend.name, backend.address
                    )
                });
                if !connect || last {
                    break;
                }
                tried.push(index);
            }
            Err(Expired::BodyNotTaken) => {
                // The backend stopped taking the body: its doing, as on the fast path.
                backend.metrics.record_error(elapsed);
                backend.record_outcome(false);
                tracing::debug!(
                    service = %service.config.name, backend = %backend.name, stalled = "backend",
                    "request body stalled"
                );
                return closing(local(
                    StatusCode::BAD_GATEWAY,
                    format!(
                        "502 Bad Gateway: backend '{}' ({}) failed the exchange",
                        backend.name, backend.address
                    ),
                ));
            }
            Err(Expired::ResponseHeaders) => {
                backend.metrics.record_error(elapsed);
                backend.record_outcome(false);
                return local(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "504 Gateway Timeout: backend '{}' sent no response headers within {}",
                        backend.name,
                        crate::config::format_duration(service.config.timeouts.response_headers)
                    ),
                );
            }
        }
    }
    match last_failure {
        Some(message) => local(StatusCode::BAD_GATEWAY, message),
        None => local(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("503 Service Unavailable: {}", service.unavailable_reason()),
        ),
    }
}

pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// RFC 9112 section 3.2: a request has at most one `Host` field, a valid one, and an
/// HTTP/1.1 request has one. Routing reads it, and the forwarding headers name it.
fn check_host<B>(request: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err("more than one Host field"),
        (Some(host), None) if !valid_host(host.as_bytes()) => Err("an invalid Host field"),
        (None, _) if request.version() == Version::HTTP_11 => Err("no Host field"),
        _ => Ok(()),
    }
}

/// Whether a `Host` value is `uri-host [ ":" port ]` (RFC 3986 section 3.2.2): a
/// reg-name (which an IPv4 address is too) or a bracketed IPv6 address, and no
/// user information.
pub(crate) fn valid_host(value: &[u8]) -> bool {
    let port = match value.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else {
                return false;
            };
            let address = std::str::from_utf8(&literal[..end]);
            if !address.is_ok_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok()) {
                return false;
            }
            &literal[end + 1..]
        }
        None => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            if !reg_name(&value[..end]) {
                return false;
            }
            &value[end..]
        }
    };
    match port {
        [] => true,
        [b':', digits @ ..] => digits.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// `*( unreserved / pct-encoded / sub-delims )`
fn reg_name(name: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&byte) = name.get(at) {
        if byte == b'%' {
            let escaped = name.get(at + 1..at + 3);
            if !escaped.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                return false;
            }
            at += 3;
        } else if byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&byte) {
            at += 1;
        } else {
            return false;
        }
    }
    true
}

fn request_host<B>(request: &Request<B>) -> Option<&str> {
    let raw = match request.uri().host() {
        Some(host) => return Some(host.trim_start_matches('[').trim_end_matches(']')),
        None => request.headers().get(header::HOST)?.to_str().ok()?,
    };
    if let Some(v6) = raw.strip_prefix('[') {
        return v6.split(']').next();
    }
    raw.split(':').next()
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers (RFC 9110 7.6.1): those named in `Connection` (but
/// never `Host`, which was routed on) and the fixed list; `TE: trailers` is kept, as
/// gRPC over HTTP/2 needs it.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the few names beats nine lookups.
    let present = headers
        .keys()
        .any(|name| HOP_BY_HOP.contains(name) || (name == header::TE));
    if !present {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
            .filter(|name| name != header::HOST)
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// The forwarding header values of one client connection, computed once.
pub(crate) struct Forwarding {
    pub(crate) tls: bool,
    /// The client address as `X-Forwarded-For` has it.
    pub(crate) client: HeaderValue,
    /// `for=…;proto=…`, the start of this hop's `Forwarded` element.
    pub(crate) forwarded_for: String,
}

impl Forwarding {
    pub(crate) fn new(client: IpAddr, tls: bool) -> Self {
        let text = client.to_string();
        let node = match client {
            IpAddr::V4(_) => text.clone(),
            IpAddr::V6(_) => format!("\"[{text}]\""),
        };
        let proto = if tls { "https" } else { "http" };
        Self {
            tls,
            client: HeaderValue::from_str(&text).expect("an IP address is a header value"),
            forwarded_for: format!("for={node};proto={proto}"),
        }
    }
}

/// The values of the `name` fields joined into one list, followed by ", "; `None`
/// when one of them is not visible ASCII (so can be neither checked nor joined).
fn joined_values(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut joined = String::new();
    for value in headers.get_all(name) {
        let value = value.to_str().ok()?.trim();
        if !value.is_empty() {
            joined.push_str(value);
            joined.push_str(", ");
        }
    }
    Some(joined)
}

/// Appends the client to `X-Forwarded-For` and `Forwarded`, sets `X-Forwarded-Proto`
/// and, when absent, `X-Forwarded-Host`. Earlier values are kept when all of them are
/// visible ASCII; otherwise this hop's replaces them, so the last hop named is always
/// the client.
fn add_forwarding(headers: &mut HeaderMap, forwarding: &Forwarding, host: &str) {
    let xff = if headers.contains_key(X_FORWARDED_FOR) {
        let mut joined = joined_values(headers, &X_FORWARDED_FOR).unwrap_or_default();
        joined.push_str(forwarding.client.to_str().unwrap_or_default());
        HeaderValue::from_maybe_shared(Bytes::from(joined)).ok()
    } else {
        None
    };
    headers.insert(
        X_FORWARDED_FOR,
        xff.unwrap_or_else(|| forwarding.client.clone()),
    );
    let proto = if forwarding.tls { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if !host.is_empty() && !headers.contains_key(X_FORWARDED_HOST) {
        let value = match headers.get(header::HOST) {
            Some(value) => Some(value.clone()),
            None => HeaderValue::from_str(host).ok(),
        };
        if let Some(value) = value {
            headers.insert(X_FORWARDED_HOST, value);
        }
    }
    let mut element = if headers.contains_key(header::FORWARDED) {
        joined_values(headers, &header::FORWARDED).unwrap_or_default()
    } else {
        String::with_capacity(forwarding.forwarded_for.len() + host.len() + 9)
    };
    element.push_str(&forwarding.forwarded_for);
    if !host.is_empty() {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    // Never the client's fields alone: they would name it as someone else.
    match HeaderValue::from_maybe_shared(Bytes::from(element)) {
        Ok(value) => headers.insert(header::FORWARDED, value),
        Err(_) => headers.remove(header::FORWARDED),
    };
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::TE, HeaderValue::from_static("gzip"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        let left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["accept"]);
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.contains_key(header::TE));
    }

    #[test]
    fn forwarding_headers_append_to_earlier_proxies() {
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        add_forwarding(
            &mut headers,
            &Forwarding::new("::1".parse().unwrap(), true),
            "app.example",
        );
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.9, ::1");
        assert_eq!(headers[X_FORWARDED_PROTO], "https");
        assert_eq!(headers[X_FORWARDED_HOST], "app.example");
        assert_eq!(
            headers[header::FORWARDED],
            "for=\"[::1]\";proto=https;host=\"app.example\""
        );
    }

    #[test]
    fn forwarding_headers_join_earlier_lists_or_replace_them() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(header::FORWARDED, HeaderValue::from_static("for=a"));
        headers.append(header::FORWARDED, HeaderValue::from_static("for=b"));
        let forwarding = Forwarding::new("10.0.0.9".parse().unwrap(), false);
        add_forwarding(&mut headers, &forwarding, "x");
        assert_eq!(headers[X_FORWARDED_FOR], "203.0.113.9, 10.0.0.1, 10.0.0.9");
        assert_eq!(
            headers[header::FORWARDED],
            "for=a, for=b, for=10.0.0.9;proto=http;host=\"x\""
        );
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_bytes(b"\x80").unwrap());
        headers.append(header::FORWARDED, HeaderValue::from_bytes(b"\x80").unwrap());
        add_forwarding(&mut headers, &forwarding, "");
        assert_eq!(
            headers.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["10.0.0.9"]
        );
        assert_eq!(
            headers
                .get_all(header::FORWARDED)
                .iter()
                .collect::<Vec<_>>(),
            ["for=10.0.0.9;proto=http"]
        );
    }

    #[test]
    fn host_values_are_a_host_and_an_optional_port() {
        for good in [
            &b"a.example"[..],
            b"A-b.example:8080",
            b"10.0.0.1:80",
            b"[::1]",
            b"[2001:db8::1]:443",
            b"a%41b",
            b"",
            b"a:",
        ] {
            assert!(valid_host(good), "{}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"x\", for=6.6.6.6;host=\"y"[..],
            b"a b",
            b"user@a",
            b"a:8o",
            b"a:80:80",
            b"[::1",
            b"[::1]x",
            b"[v1.x]",
            b"a%4",
            b"a\\b",
            b"a/b",
            b"\x80",
        ] {
            assert!(!valid_host(bad), "{}", String::from_utf8_lossy(bad));
        }
        let two = Request::get("/")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert!(check_host(&two).is_err());
        let none = Request::get("/").body(()).unwrap();
        assert!(check_host(&none).is_err());
        let old = Request::get("/")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        assert!(check_host(&old).is_ok());
    }

    #[test]
    fn host_comes_from_the_authority_or_the_header_without_port() {
        let r = Request::get("http://a.example:8080/x").body(()).unwrap();
        assert_eq!(request_host(&r), Some("a.example"));
        let r = Request::get("/x")
            .header("host", "b.example:81")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), Some("b.example"));
        let r = Request::get("/x")
            .header("host", "[::1]:81")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r), Some("::1"));
    }
}
