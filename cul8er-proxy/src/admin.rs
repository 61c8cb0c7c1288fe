//! The admin interface: HTTP/1.1 with JSON bodies on a unix socket, and its client.
//!
//! | method and path                               | does                              |
//! |-----------------------------------------------|-----------------------------------|
//! | `GET /config`                                 | the configuration in force (JSON) |
//! | `PUT /config`                                 | replace it (body: JSON config)    |
//! | `PUT /services/{s}/backends/{b}/weight`       | body `{"weight": N}`              |
//! | `POST /services/{s}/backends/{b}/drain`       | weight 0, wait for in-flight      |
//! | `GET /stats`                                  | [`Stats`] as JSON                 |
//! | `GET /metrics`                                | Prometheus text                   |
//! | `GET /health`                                 | [`HealthReport`] as JSON          |
//! | `POST /reload-certs`                          | read certificate files again      |
//!
//! Errors answer 400 (refused configuration, with every problem), 404 (unknown
//! service or backend) or 500, with a JSON [`AdminErrorBody`]. Only whoever can open
//! the socket file can use it: the file's permissions are the access control.

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, ConfigProblem, ProxyConfig};
use crate::metrics::Stats;
use crate::runtime::{DrainReport, HealthReport, Proxy, ProxyError};

const BODY_LIMIT: usize = 4 * 1024 * 1024;

/// The JSON body of an admin error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminErrorBody {
    /// The error and its causes, joined by `: `.
    pub error: String,
    /// For a refused configuration, every problem with its place.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<ConfigProblem>,
}

/// The body of `PUT .../weight`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightChange {
    /// The new weight.
    pub weight: u32,
}

/// Renders an error and its sources on one line.
#[must_use]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Binds the admin socket, replacing a stale socket file left by an earlier run.
///
/// # Errors
/// The I/O error, when the path cannot be bound.
pub fn bind_admin(path: &Path) -> std::io::Result<UnixListener> {
    if let Ok(meta) = fs_err::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        if meta.file_type().is_socket() && std::os::unix::net::UnixStream::connect(path).is_err() {
            fs_err::remove_file(path)?;
        }
    }
    UnixListener::bind(path)
}

/// Serves the admin interface on `listener` until `stop` is cancelled.
pub async fn serve_admin(proxy: Proxy, listener: UnixListener, stop: CancellationToken) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let proxy = proxy.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(route(&proxy, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn failure(
    status: StatusCode,
    error: String,
    problems: Vec<ConfigProblem>,
) -> Response<Full<Bytes>> {
    json(status, &AdminErrorBody { error, problems })
}

fn proxy_failure(error: &ProxyError) -> Response<Full<Bytes>> {
    let problems = match error {
        ProxyError::Config(ConfigError::Invalid(problems)) => problems.clone(),
        _ => Vec::new(),
    };
    let status = if error.is_not_found() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::BAD_REQUEST
    };
    failure(status, error_chain(error), problems)
}

async fn read_json<T: DeserializeOwned>(request: Request<Incoming>) -> Result<T, String> {
    let body = Limited::new(request.into_body(), BODY_LIMIT)
        .collect()
        .await
        .map_err(|e| format!("cannot read the request body: {e}"))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| format!("the request body is not valid: {e}"))
}

async fn route(proxy: &Proxy, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["config"]) => json(StatusCode::OK, &proxy.config()),
        (&Method::PUT, ["config"]) => match read_json::<ProxyConfig>(request).await {
            Err(message) => failure(StatusCode::BAD_REQUEST, message, Vec::new()),
            Ok(config) => match proxy.apply(config).await {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({ "applied": true })),
                Err(error) => proxy_failure(&error),
            },
        },
        (&Method::PUT, ["services", service, "backends", backend, "weight"]) => {
            match read_json::<WeightChange>(request).await {
                Err(message) => failure(StatusCode::BAD_REQUEST, message, Vec::new()),
                Ok(change) => match proxy.set_weight(service, backend, change.weight).await {
                    Ok(()) => json(StatusCode::OK, &change),
                    Err(error) => proxy_failure(&error),
                },
            }
        }
        (&Method::POST, ["services", service, "backends", backend, "drain"]) => {
            match proxy.drain(service, backend).await {
                Ok(report) => json(StatusCode::OK, &report),
                Err(error) => proxy_failure(&error),
            }
        }
        (&Method::GET, ["stats"]) => json(StatusCode::OK, &proxy.stats()),
        (&Method::GET, ["health"]) => json(StatusCode::OK, &proxy.health()),
        (&Method::GET, ["metrics"]) => {
            let mut response = Response::new(Full::new(Bytes::from(proxy.stats().to_prometheus())));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            response
        }
        (&Method::POST, ["reload-certs"]) => match proxy.reload_certs() {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "reloaded": true })),
            Err(error) => proxy_failure(&error),
        },
        _ => failure(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {path}; see `cul8er-proxy ctl --help`"),
            Vec::new(),
        ),
    }
}

/// A failed admin call.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be reached (is the proxy running, is the path right?).
    #[error("cannot connect to the admin socket {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The reason.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("the admin exchange failed")]
    Http(#[source] hyper::Error),
    /// The proxy answered with an error.
    #[error("the proxy refused: {}", .body.error)]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The proxy's explanation.
        body: AdminErrorBody,
    },
    /// The answer was not what this client understands.
    #[error("the proxy's answer could not be read")]
    Decode(#[source] serde_json::Error),
}

/// A client for the admin socket (what `cul8er-proxy ctl` uses).
#[derive(Debug, Clone)]
pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    /// A client for the socket at `path`.
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    async fn call(&self, method: Method, uri: &str, body: Vec<u8>) -> Result<Bytes, AdminError> {
        let stream =
            UnixStream::connect(&self.path)
                .await
                .map_err(|source| AdminError::Connect {
                    path: self.path.clone(),
                    source,
                })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(AdminError::Http)?;
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, "cul8er-proxy")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .expect("a static request is valid");
        let exchange = async {
            let response = sender.send_request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, body))
        };
        let (status, body) = tokio::select! {
            result = exchange => result.map_err(AdminError::Http)?,
            Err(error) = connection => return Err(AdminError::Http(error)),
        };
        if status.is_success() {
            Ok(body)
        } else {
            let body = serde_json::from_slice(&body).unwrap_or_else(|_| AdminErrorBody {
                error: String::from_utf8_lossy(&body).into_owned(),
                problems: Vec::new(),
            });
            Err(AdminError::Refused {
                status: status.as_u16(),
                body,
            })
        }
    }

    async fn call_json<T: DeserializeOwned>(
        &self,
        method: Method,
        uri: &str,
        body: Vec<u8>,
    ) -> Result<T, AdminError> {
        let bytes = self.call(method, uri, body).await?;
        serde_json::from_slice(&bytes).map_err(AdminError::Decode)
    }

    /// The configuration in force.
    ///
    /// # Errors
    /// An [`AdminError`].
    pub async fn show(&self) -> Result<ProxyConfig, AdminError> {
        self.call_json(Method::GET, "/config", Vec::new()).await
    }

    /// Replaces the configuration.
    ///
    /// # Errors
    /// [`AdminError::Refused`] with every problem when the proxy refuses it.
    pub async fn apply(&self, config: &ProxyConfig) -> Result<(), AdminError> {
        let body = serde_json::to_vec(config).map_err(AdminError::Decode)?;
        self.call(Method::PUT, "/config", body).await.map(drop)
    }

    /// Sets a backend's weight.
    ///
    /// # Errors
    /// [`AdminError::Refused`] (404) for an unknown service or backend.
    pub async fn set_weight(
        &self,
        service: &str,
        backend: &str,
        weight: u32,
    ) -> Result<(), AdminError> {
        let body = serde_json::to_vec(&WeightChange { weight }).map_err(AdminError::Decode)?;
        let uri = format!("/services/{service}/backends/{backend}/weight");
        self.call(Method::PUT, &uri, body).await.map(drop)
    }

    /// Drains a backend: weight 0, then waits for its in-flight requests.
    ///
    /// # Errors
    /// [`AdminError::Refused`] (404) for an unknown service or backend.
    pub async fn drain(&self, service: &str, backend: &str) -> Result<DrainReport, AdminError> {
        let uri = format!("/services/{service}/backends/{backend}/drain");
        self.call_json(Method::POST, &uri, Vec::new()).await
    }

    /// Per-backend statistics.
    ///
    /// # Errors
    /// An [`AdminError`].
    pub async fn stats(&self) -> Result<Stats, AdminError> {
        self.call_json(Method::GET, "/stats", Vec::new()).await
    }

    /// Prometheus text.
    ///
    /// # Errors
    /// An [`AdminError`].
    pub async fn metrics(&self) -> Result<String, AdminError> {
        let bytes = self.call(Method::GET, "/metrics", Vec::new()).await?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Health of every backend.
    ///
    /// # Errors
    /// An [`AdminError`].
    pub async fn health(&self) -> Result<HealthReport, AdminError> {
        self.call_json(Method::GET, "/health", Vec::new()).await
    }

    /// Reloads the certificate files.
    ///
    /// # Errors
    /// [`AdminError::Refused`] naming the file that failed.
    pub async fn reload_certs(&self) -> Result<(), AdminError> {
        self.call(Method::POST, "/reload-certs", Vec::new())
            .await
            .map(drop)
    }
}
