//! The [`Client`]: one cheap-to-clone handle on an Incus server, with typed handles per
//! API area (`client.instances()`, `client.operations()`, ...).
//!
//! A client is scoped like a kube `Api`: [`Client::project`] and [`Client::target`]
//! return clones whose every request carries `project=` and `target=`. Connections are
//! pooled and kept alive (on the unix socket by [`crate::transport`]'s own pool, which
//! never dials ahead); connecting has a timeout, requests do not (waits carry their own
//! deadlines).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http::header::HeaderValue;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::WebSocketStream;

use crate::error::{Error, Result};
use crate::operation_waiter::OperationWaiter;
use crate::request::{ApiRequest, Body};
use crate::response::{Envelope, decode_envelope, decode_sync};
use crate::transport::pool::{Lease, Pool};
use crate::transport::tls::{self, Certificate, ClientIdentity, ServerTrust};
use crate::transport::{Connector, Stream, resolve_socket_path};

/// The default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How many idle connections a client keeps by default.
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 8;

/// How long a client keeps an idle connection by default: well below incusd's own
/// idle timeout (30 s), so the daemon never closes one as a request goes out on it.
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest JSON response body accepted (a hostile server cannot exhaust memory).
const MAX_JSON_BODY: usize = 256 * 1024 * 1024;

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    endpoint: EndpointSpec,
    connect_timeout: Duration,
    user_agent: String,
    max_idle: usize,
    idle_timeout: Duration,
}

#[derive(Debug)]
enum EndpointSpec {
    Unix(PathBuf),
    Https {
        host: String,
        port: u16,
        pinned: Option<Certificate>,
        identity: Option<ClientIdentity>,
    },
}

impl ClientBuilder {
    /// A client for the unix socket at `path`.
    #[must_use]
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        Self::new(EndpointSpec::Unix(path.into()))
    }

    /// A client for `https://host:port`. Give it [`ClientBuilder::pinned_certificate`]
    /// (required) and usually a [`ClientBuilder::identity`].
    #[must_use]
    pub fn https(host: impl Into<String>, port: u16) -> Self {
        Self::new(EndpointSpec::Https {
            host: host.into(),
            port,
            pinned: None,
            identity: None,
        })
    }

    fn new(endpoint: EndpointSpec) -> Self {
        Self {
            endpoint,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            user_agent: concat!("incus-api-rs/", env!("CARGO_PKG_VERSION")).to_owned(),
            max_idle: DEFAULT_MAX_IDLE_CONNECTIONS,
            idle_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
        }
    }

    /// The server certificate to pin (recorded at first contact, see
    /// [`crate::trust::fetch_server_certificate`]).
    #[must_use]
    pub fn pinned_certificate(mut self, cert: Certificate) -> Self {
        if let EndpointSpec::Https { pinned, .. } = &mut self.endpoint {
            *pinned = Some(cert);
        }
        self
    }

    /// The client certificate and key presented to the server.
    #[must_use]
    pub fn identity(mut self, id: ClientIdentity) -> Self {
        if let EndpointSpec::Https { identity, .. } = &mut self.endpoint {
            *identity = Some(id);
        }
        self
    }

    /// How long connecting (and the TLS handshake) may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many idle connections to keep for later requests (0: a connection per
    /// request).
    #[must_use]
    pub fn max_idle_connections(mut self, max: usize) -> Self {
        self.max_idle = max;
        self
    }

    /// How long an idle connection is kept (zero: a connection per request). Keep it
    /// below the server's idle timeout (30 s on incusd).
    #[must_use]
    pub fn idle_connection_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// The `User-Agent` header.
    #[must_use]
    pub fn user_agent(mut self, ua: impl Into<String>) -> Self {
        self.user_agent = ua.into();
        self
    }

    /// Builds the client. Nothing is dialled until the first request.
    ///
    /// # Errors
    /// When an HTTPS client has no pinned certificate, the host is not a valid name, the
    /// identity is unusable, or the user agent is not a valid header value.
    pub fn build(self) -> Result<Client> {
        let user_agent = HeaderValue::from_str(&self.user_agent).map_err(|_| {
            Error::invalid(
                "user agent",
                format!("{:?} is not a valid header value", self.user_agent),
            )
        })?;
        let (connector, authority) = match self.endpoint {
            EndpointSpec::Unix(path) => (
                Connector::unix(path, self.connect_timeout),
                "incus".to_owned(),
            ),
            EndpointSpec::Https {
                host,
                port,
                pinned,
                identity,
            } => {
                let pinned = pinned.ok_or_else(|| {
                    Error::invalid(
                        "HTTPS client",
                        format!(
                            "no pinned server certificate for {host}:{port}; fetch it once with \
                             trust::fetch_server_certificate, check its fingerprint, and pin it"
                        ),
                    )
                })?;
                let config = tls::client_config(ServerTrust::Pinned(pinned), identity.as_ref())?;
                let connector = Connector::tls(&host, port, config, self.connect_timeout)?;
                let authority = connector.endpoint();
                (connector, authority)
            }
        };
        Ok(Client::from_connector(
            connector,
            authority,
            user_agent,
            self.max_idle,
            self.idle_timeout,
        ))
    }
}

/// Where plain requests go.
enum Http {
    /// The unix socket: a pool that never dials ahead (see [`crate::transport`]).
    Unix(Pool),
    /// HTTPS: hyper-util's pool, whose speculative dialling a TLS listener tolerates.
    Tls(Box<HyperClient<Connector, Body>>),
}

struct Inner {
    http: Http,
    connector: Connector,
    authority: String,
    user_agent: HeaderValue,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("endpoint", &self.connector.endpoint())
            .finish_non_exhaustive()
    }
}

/// The project and cluster member every request of a client is scoped to.
#[derive(Debug, Clone, Default)]
struct Scope {
    project: Option<String>,
    target: Option<String>,
}

/// A handle on one Incus server. Cheap to clone; clones share the connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
    scope: Scope,
    /// When set, operation waits go through its shared events subscription.
    waiter: Option<OperationWaiter>,
}

impl Client {
    /// A client for the local daemon, finding the socket as the Incus client does
    /// (`INCUS_SOCKET`, `INCUS_DIR/unix.socket`, then the standard paths).
    ///
    /// # Errors
    /// When no socket can be found.
    pub fn local() -> Result<Self> {
        let path = resolve_socket_path(|k| std::env::var_os(k))?;
        ClientBuilder::unix(path).build()
    }

    /// A client for the unix socket at `path`.
    ///
    /// # Errors
    /// Never in practice; kept fallible like the builder.
    pub fn unix(path: impl Into<PathBuf>) -> Result<Self> {
        ClientBuilder::unix(path).build()
    }

    pub(crate) fn from_connector(
        connector: Connector,
        authority: String,
        user_agent: HeaderValue,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Self {
        let http = if connector.is_unix() {
            // incusd 6.0's unix listener peeks at the first bytes of each new connection
            // inside its accept loop, so one connection that never sends a request
            // stalls every other client of the daemon; hyper-util's pool dials
            // speculatively and would leave exactly such connections. Our own pool
            // dials only for a request it writes at once.
            // Regressions: `unix_socket_connections_never_sit_idle`,
            // `unix_socket_connections_are_reused`.
            Http::Unix(Pool::new(connector.clone(), max_idle, idle_timeout))
        } else {
            let mut builder = HyperClient::builder(TokioExecutor::new());
            builder
                .pool_idle_timeout(idle_timeout)
                .pool_max_idle_per_host(max_idle);
            Http::Tls(Box::new(builder.build(connector.clone())))
        };
        Self {
            inner: Arc::new(Inner {
                http,
                connector,
                authority,
                user_agent,
            }),
            scope: Scope::default(),
            waiter: None,
        }
    }

    /// A clone whose requests are scoped to `project`.
    #[must_use]
    pub fn project(&self, project: impl Into<String>) -> Self {
        let mut c = self.clone();
        c.scope.project = Some(project.into());
        c
    }

    /// A clone whose requests go to (or place objects on) cluster member `target`
    /// (`@group` for a cluster group).
    #[must_use]
    pub fn target(&self, target: impl Into<String>) -> Self {
        let mut c = self.clone();
        c.scope.target = Some(target.into());
        c
    }

    /// Opens one `/1.0/events` subscription (operation events of all projects) that
    /// can resolve the waits of many operations at once, as the Go client's waits do.
    /// Open it before starting the operations to follow; see [`OperationWaiter`].
    ///
    /// # Errors
    /// When the subscription cannot be opened (e.g. 403 for a client restricted to
    /// some projects).
    pub async fn operation_waiter(&self) -> Result<OperationWaiter> {
        OperationWaiter::subscribe(self).await
    }

    /// A clone whose operation waits ([`crate::PendingOperation::wait`],
    /// [`crate::operations::Operations::wait`]) go through `waiter` instead of a
    /// `/wait` request each. Its project and target clones keep it.
    #[must_use]
    pub fn with_waiter(&self, waiter: &OperationWaiter) -> Self {
        let mut c = self.clone();
        c.waiter = Some(waiter.clone());
        c
    }

    /// The waiter this client's operation waits go through, when set.
    pub(crate) fn waiter(&self) -> Option<&OperationWaiter> {
        self.waiter.as_ref()
    }

    /// This client without a waiter (the waiter's own fallback).
    pub(crate) fn without_waiter(&self) -> Self {
        let mut c = self.clone();
        c.waiter = None;
        c
    }

    /// The project this client is scoped to, when set.
    #[must_use]
    pub fn project_name(&self) -> Option<&str> {
        self.scope.project.as_deref()
    }

    /// The cluster member this client targets, when set.
    #[must_use]
    pub fn target_name(&self) -> Option<&str> {
        self.scope.target.as_deref()
    }

    /// The socket path or `host:port` this client talks to.
    #[must_use]
    pub fn endpoint(&self) -> String {
        self.inner.connector.endpoint()
    }

    pub(crate) fn scoped(&self, mut req: ApiRequest) -> ApiRequest {
        if let Some(p) = &self.scope.project
            && !req.has_query("project")
            && !req.has_query("all-projects")
        {
            req.query.push(("project".into(), p.clone()));
        }
        if let Some(t) = &self.scope.target
            && !req.has_query("target")
        {
            req.query.push(("target".into(), t.clone()));
        }
        req
    }

    /// Sends a request (scope applied) and returns the raw response, with the lease
    /// on its pooled connection to release once the body has been read to its end.
    async fn send(
        &self,
        req: ApiRequest,
    ) -> Result<(Method, String, http::Response<Incoming>, Option<Lease>)> {
        let req = self.scoped(req);
        let method = req.method.clone();
        let path = req.path_and_query();
        tracing::debug!(%method, %path, "incus request");
        // A streamed body (an image upload) may still be going out when the answer
        // comes; its connection is not reused.
        let reusable = !req.has_streamed_body();
        let http_req = req.into_http(&self.inner.authority, &self.inner.user_agent)?;
        match &self.inner.http {
            Http::Unix(pool) => {
                let (resp, lease) = pool.send(into_origin_form(http_req)?, reusable).await?;
                Ok((method, path, resp, Some(lease)))
            }
            Http::Tls(http) => match http.request(http_req).await {
                Ok(resp) => Ok((method, path, resp, None)),
                Err(e) => Err(self.transport_error(&method, &path, e)),
            },
        }
    }

    fn transport_error(
        &self,
        method: &Method,
        path: &str,
        e: hyper_util::client::legacy::Error,
    ) -> Error {
        // A connect failure carries our own error inside; surface it as it was.
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(inner) = cur {
            if let Some(ours) = inner.downcast_ref::<Error>() {
                match ours {
                    Error::CertificateMismatch {
                        endpoint,
                        pinned,
                        presented,
                    } => {
                        return Error::CertificateMismatch {
                            endpoint: endpoint.clone(),
                            pinned: pinned.clone(),
                            presented: presented.clone(),
                        };
                    }
                    Error::ConnectTimeout { endpoint, seconds } => {
                        return Error::ConnectTimeout {
                            endpoint: endpoint.clone(),
                            seconds: *seconds,
                        };
                    }
                    Error::Connect { endpoint, source } => {
                        return Error::Connect {
                            endpoint: endpoint.clone(),
                            source: source.to_string().into(),
                        };
                    }
                    _ => {}
                }
            }
            cur = inner.source();
        }
        Error::Transport {
            method: method.clone(),
            path: path.to_owned(),
            source: Box::new(e),
        }
    }

    /// Sends a request and decodes the envelope, keeping error envelopes as values.
    pub(crate) async fn call_envelope(
        &self,
        req: ApiRequest,
    ) -> Result<(Method, String, Envelope)> {
        let (method, path, parts, bytes) = self.call_json(req).await?;
        let env = decode_envelope(&method, &path, parts.status, &parts.headers, &bytes)?;
        Ok((method, path, env))
    }

    /// Sends a request and reads its whole (JSON) answer, giving the connection back.
    async fn call_json(
        &self,
        req: ApiRequest,
    ) -> Result<(Method, String, http::response::Parts, Bytes)> {
        let (method, path, resp, lease) = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let bytes = collect(&method, &path, body, MAX_JSON_BODY).await?;
        if let Some(lease) = lease {
            lease.release();
        }
        Ok((method, path, parts, bytes))
    }

    /// Sends a request whose answer is a sync response with metadata of type `T`.
    pub(crate) async fn call_sync<T: DeserializeOwned>(
        &self,
        req: ApiRequest,
    ) -> Result<(T, Option<String>)> {
        let (method, path, parts, bytes) = self.call_json(req).await?;
        // The usual answer decodes in one pass; anything else (an error, a body that
        // does not fit `T`) goes the long way, which says precisely what is wrong.
        if parts.status.is_success()
            && let Some(done) = decode_sync(&parts.headers, &bytes)
        {
            return Ok(done);
        }
        decode_envelope(&method, &path, parts.status, &parts.headers, &bytes)?
            .into_sync(&method, &path)
    }

    /// Sends a request whose answer is a sync response; the metadata is ignored.
    pub(crate) async fn call_unit(&self, req: ApiRequest) -> Result<()> {
        let (method, path, env) = self.call_envelope(req).await?;
        match env.into_result(&method, &path)? {
            Envelope::Sync { .. } => Ok(()),
            Envelope::Async(op) => Err(Error::decode(
                &method,
                &path,
                format!("expected a sync response, got the operation {}", op.id),
            )),
            Envelope::Error { .. } => Ok(()),
        }
    }

    /// Sends a request whose answer is an async response: the started operation.
    pub(crate) async fn call_async(
        &self,
        req: ApiRequest,
    ) -> Result<crate::operations::PendingOperation> {
        let (method, path, env) = self.call_envelope(req).await?;
        let op = env.into_operation(&method, &path)?;
        Ok(crate::operations::PendingOperation::new(self.clone(), op))
    }

    /// `GET path` with a typed sync answer.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: impl Into<String>) -> Result<T> {
        Ok(self.call_sync(ApiRequest::get(path)).await?.0)
    }

    /// `method path` with a JSON body and an empty sync answer.
    pub(crate) async fn send_json(
        &self,
        method: Method,
        path: impl Into<String>,
        body: &impl Serialize,
    ) -> Result<()> {
        self.call_unit(ApiRequest::new(method, path).json(body)?)
            .await
    }

    /// `GET path` with its ETag.
    pub(crate) async fn get_with_etag<T: DeserializeOwned>(
        &self,
        path: impl Into<String>,
    ) -> Result<(T, Option<String>)> {
        self.call_sync(ApiRequest::get(path)).await
    }

    /// `GET path?recursion=1`.
    pub(crate) async fn list<T: DeserializeOwned>(
        &self,
        path: impl Into<String>,
    ) -> Result<Vec<T>> {
        Ok(self
            .call_sync(ApiRequest::get(path).query("recursion", "1"))
            .await?
            .0)
    }

    /// `method path` with a JSON body and `If-Match` when given; sync answer.
    pub(crate) async fn write_json(
        &self,
        method: Method,
        path: impl Into<String>,
        body: &impl Serialize,
        etag: Option<&str>,
    ) -> Result<()> {
        let mut req = ApiRequest::new(method, path).json(body)?;
        if let Some(e) = etag {
            req = req.header("if-match", e)?;
        }
        self.call_unit(req).await
    }

    /// `DELETE path`, sync answer.
    pub(crate) async fn delete(&self, path: impl Into<String>) -> Result<()> {
        self.call_unit(ApiRequest::new(Method::DELETE, path)).await
    }

    /// Sends a request and returns the raw body and headers of a successful answer,
    /// turning error answers into [`Error::Api`] (files, exec output).
    pub(crate) async fn call_raw(
        &self,
        req: ApiRequest,
        limit: usize,
    ) -> Result<(http::response::Parts, Bytes)> {
        let (method, path, resp, lease) = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let bytes = collect(&method, &path, body, limit).await?;
        if let Some(lease) = lease {
            lease.release();
        }
        if parts.status.is_success() {
            return Ok((parts, bytes));
        }
        let env = decode_envelope(&method, &path, parts.status, &parts.headers, &bytes)?;
        env.into_result(&method, &path)?;
        Err(Error::decode(
            &method,
            &path,
            format!("HTTP {} without an error body", parts.status),
        ))
    }

    /// Opens a websocket on `path` (scope applied) over the client's own connector.
    pub(crate) async fn websocket(&self, req: ApiRequest) -> Result<WebSocketStream<Stream>> {
        let req = self.scoped(req);
        let path = req.path_and_query();
        let stream = self.inner.connector.dial().await?;
        let url = format!("ws://{}{path}", self.inner.authority);
        let mut ws_req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
                url.as_str(),
            )
            .map_err(|e| Error::Websocket {
                path: path.clone(),
                source: Box::new(e),
            })?;
        ws_req
            .headers_mut()
            .insert(http::header::USER_AGENT, self.inner.user_agent.clone());
        match tokio_tungstenite::client_async(ws_req, stream).await {
            Ok((ws, _resp)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let status = resp.status();
                let body = resp.body().clone().unwrap_or_default();
                let env = decode_envelope(&Method::GET, &path, status, resp.headers(), &body)?;
                env.into_result(&Method::GET, &path)?;
                Err(Error::decode(
                    &Method::GET,
                    &path,
                    format!("websocket upgrade refused with HTTP {status}"),
                ))
            }
            Err(e) => Err(Error::Websocket {
                path,
                source: Box::new(e),
            }),
        }
    }

    /// `GET` any API path (with its query, e.g. `/1.0/instances?recursion=1`) and
    /// return the metadata as JSON: the escape hatch for endpoints without a typed
    /// handle, like `incus query`.
    ///
    /// # Errors
    /// On any API or transport failure, or a query that is not URL-encoded.
    pub async fn get_value(&self, path_and_query: &str) -> Result<serde_json::Value> {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| Error::invalid("query", format!("{query:?} is not URL-encoded ({e})")))?;
        let mut req = ApiRequest::get(path);
        req.query = pairs;
        Ok(self.call_sync(req).await?.0)
    }

    // ---- typed handles ----

    /// The server itself (`/1.0`).
    #[must_use]
    pub fn server(&self) -> crate::server::Server {
        crate::server::Server::new(self.clone())
    }

    /// Instances, their state, snapshots, files and exec.
    #[must_use]
    pub fn instances(&self) -> crate::instances::Instances {
        crate::instances::Instances::new(self.clone())
    }

    /// Background operations.
    #[must_use]
    pub fn operations(&self) -> crate::operations::Operations {
        crate::operations::Operations::new(self.clone())
    }

    /// The trust store.
    #[must_use]
    pub fn certificates(&self) -> crate::certificates::Certificates {
        crate::certificates::Certificates::new(self.clone())
    }

    /// Profiles.
    #[must_use]
    pub fn profiles(&self) -> crate::profiles::Profiles {
        crate::profiles::Profiles::new(self.clone())
    }

    /// Network ACLs.
    #[must_use]
    pub fn network_acls(&self) -> crate::network_acls::NetworkAcls {
        crate::network_acls::NetworkAcls::new(self.clone())
    }

    /// Images and their aliases.
    #[must_use]
    pub fn images(&self) -> crate::images::Images {
        crate::images::Images::new(self.clone())
    }

    /// Storage pools and their volumes.
    #[must_use]
    pub fn storage(&self) -> crate::storage::Storage {
        crate::storage::Storage::new(self.clone())
    }

    /// The cluster and its members.
    #[must_use]
    pub fn cluster(&self) -> crate::cluster::Cluster {
        crate::cluster::Cluster::new(self.clone())
    }

    /// The `/1.0/events` stream.
    #[must_use]
    pub fn events(&self) -> crate::events::Events {
        crate::events::Events::new(self.clone())
    }
}

/// The request as written on a connection of our own: path and query in the request
/// line, the authority in `Host` (hyper-util's client does this for pooled requests).
fn into_origin_form(req: http::Request<Body>) -> Result<http::Request<Body>> {
    let (mut parts, body) = req.into_parts();
    if let Some(authority) = parts.uri.authority() {
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| {
            Error::invalid(
                "host",
                format!("{authority} cannot be sent in a Host header"),
            )
        })?;
        parts.headers.insert(http::header::HOST, host);
    }
    let origin = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    parts.uri = origin.parse().map_err(|e| {
        Error::invalid(
            "request",
            format!("{origin} is not a valid request target: {e}"),
        )
    })?;
    Ok(http::Request::from_parts(parts, body))
}

async fn collect(method: &Method, path: &str, body: Incoming, limit: usize) -> Result<Bytes> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(Error::decode(
                    method,
                    path,
                    format!("the response body exceeds {limit} bytes"),
                ))
            } else {
                Err(Error::Transport {
                    method: method.clone(),
                    path: path.to_owned(),
                    source: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_adds_project_and_target_once() {
        let c = Client::unix("/nonexistent")
            .unwrap()
            .project("p")
            .target("m2");
        let r = c.scoped(ApiRequest::get("/1.0/instances").query("project", "q"));
        assert_eq!(r.path_and_query(), "/1.0/instances?project=q&target=m2");
        let r = c.scoped(ApiRequest::get("/1.0/instances").query("all-projects", "true"));
        assert_eq!(
            r.path_and_query(),
            "/1.0/instances?all-projects=true&target=m2"
        );
    }

    #[test]
    fn https_without_a_pin_is_refused() {
        let err = ClientBuilder::https("127.0.0.1", 8443).build().unwrap_err();
        assert!(err.to_string().contains("pinned"), "{err}");
    }

    #[tokio::test]
    async fn missing_socket_is_a_connect_error_naming_it() {
        let c = Client::unix("/nonexistent/incus.socket").unwrap();
        let err = c.server().get().await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/nonexistent/incus.socket"),
            "{err}"
        );
    }
}
