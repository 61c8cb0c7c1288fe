//! The two transports to `incusd` behind one connector: the local unix socket and
//! HTTPS with a pinned server certificate.
//!
//! The same connector serves plain requests (through a pool of our own on the unix
//! socket, hyper-util's pooled client over TLS) and websockets (events, streaming
//! exec), so TLS and pinning apply to both. Connecting has a timeout; requests
//! themselves do not, because some legitimately take long (an operation `/wait`, an
//! image upload): callers put deadlines on waits instead.
//!
//! hyperlocal is not used: this one connector dials both the socket and TLS, so
//! websockets reuse exactly the same dialling and pinning as requests.

pub(crate) mod pool;
pub mod tls;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;

use crate::error::{Error, Result};

/// The socket paths the Incus client tries, in order, when `INCUS_SOCKET` and
/// `INCUS_DIR` are unset.
pub const STANDARD_SOCKET_PATHS: [&str; 2] =
    ["/var/lib/incus/unix.socket", "/run/incus/unix.socket"];

/// Resolves the local socket as the Incus client does: `INCUS_SOCKET`, then
/// `INCUS_DIR/unix.socket`, then the first of [`STANDARD_SOCKET_PATHS`] that exists.
///
/// `env` looks up an environment variable; pass `|k| std::env::var_os(k)` in programs.
///
/// # Errors
/// When no variable is set and none of the standard paths exists.
pub fn resolve_socket_path(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf> {
    if let Some(p) = env("INCUS_SOCKET").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Some(dir) = env("INCUS_DIR").filter(|p| !p.is_empty()) {
        return Ok(Path::new(&dir).join("unix.socket"));
    }
    STANDARD_SOCKET_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::invalid(
                "Incus socket",
                format!(
                    "none of {} exists and neither INCUS_SOCKET nor INCUS_DIR is set; is incusd \
                     running? Start it, or point INCUS_SOCKET at its unix.socket",
                    STANDARD_SOCKET_PATHS.join(", ")
                ),
            )
        })
}

enum Target {
    Unix(PathBuf),
    Tls {
        host: String,
        port: u16,
        server_name: ServerName<'static>,
        tls: TlsConnector,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => f.debug_tuple("Unix").field(p).finish(),
            Self::Tls { host, port, .. } => f
                .debug_struct("Tls")
                .field("host", host)
                .field("port", port)
                .finish_non_exhaustive(),
        }
    }
}

/// Dials the endpoint: a unix stream, or TCP + TLS with the pinned-certificate check.
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    inner: Arc<ConnectorInner>,
}

#[derive(Debug)]
struct ConnectorInner {
    target: Target,
    connect_timeout: Duration,
}

impl Connector {
    pub(crate) fn unix(path: PathBuf, connect_timeout: Duration) -> Self {
        Self {
            inner: Arc::new(ConnectorInner {
                target: Target::Unix(path),
                connect_timeout,
            }),
        }
    }

    pub(crate) fn tls(
        host: &str,
        port: u16,
        config: rustls::ClientConfig,
        connect_timeout: Duration,
    ) -> Result<Self> {
        let server_name = ServerName::try_from(host.to_owned()).map_err(|e| {
            Error::invalid(
                "HTTPS host",
                format!("{host:?} is not a host name or IP address ({e})"),
            )
        })?;
        Ok(Self {
            inner: Arc::new(ConnectorInner {
                target: Target::Tls {
                    host: host.to_owned(),
                    port,
                    server_name,
                    tls: TlsConnector::from(Arc::new(config)),
                },
                connect_timeout,
            }),
        })
    }

    /// Whether this dials the local unix socket.
    pub(crate) fn is_unix(&self) -> bool {
        matches!(self.inner.target, Target::Unix(_))
    }

    /// `host:port` or the socket path, for messages.
    pub(crate) fn endpoint(&self) -> String {
        match &self.inner.target {
            Target::Unix(p) => p.display().to_string(),
            Target::Tls { host, port, .. } => {
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
        }
    }

    /// Opens one connection.
    pub(crate) async fn dial(&self) -> Result<Stream> {
        let endpoint = self.endpoint();
        let timeout = self.inner.connect_timeout;
        let fut = async {
            match &self.inner.target {
                Target::Unix(path) => {
                    UnixStream::connect(path)
                        .await
                        .map(Stream::Unix)
                        .map_err(|e| Error::Connect {
                            endpoint: endpoint.clone(),
                            source: Box::new(e),
                        })
                }
                Target::Tls {
                    host,
                    port,
                    server_name,
                    tls,
                } => {
                    let tcp = TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|e| Error::Connect {
                            endpoint: endpoint.clone(),
                            source: Box::new(e),
                        })?;
                    tcp.set_nodelay(true).ok();
                    let stream = tls.connect(server_name.clone(), tcp).await.map_err(|e| {
                        match tls::find_pin_mismatch(&e) {
                            Some((pinned, presented)) => Error::CertificateMismatch {
                                endpoint: endpoint.clone(),
                                pinned,
                                presented,
                            },
                            None => Error::Connect {
                                endpoint: endpoint.clone(),
                                source: Box::new(e),
                            },
                        }
                    })?;
                    Ok(Stream::Tls(Box::new(stream)))
                }
            }
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectTimeout {
                endpoint,
                seconds: timeout.as_secs_f64(),
            }),
        }
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.dial().await.map(TokioIo::new) })
    }
}

/// One connection to the endpoint.
#[derive(Debug)]
pub(crate) enum Stream {
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Unix(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn incus_socket_wins_over_incus_dir() {
        let p = resolve_socket_path(env(&[("INCUS_SOCKET", "/a/s"), ("INCUS_DIR", "/b")])).unwrap();
        assert_eq!(p, PathBuf::from("/a/s"));
    }

    #[test]
    fn incus_dir_gives_its_unix_socket() {
        let p = resolve_socket_path(env(&[("INCUS_DIR", "/var/lib/incus2")])).unwrap();
        assert_eq!(p, PathBuf::from("/var/lib/incus2/unix.socket"));
    }

    #[test]
    fn empty_variables_are_ignored() {
        let r = resolve_socket_path(env(&[("INCUS_SOCKET", ""), ("INCUS_DIR", "")]));
        match r {
            Ok(p) => assert!(STANDARD_SOCKET_PATHS.iter().any(|s| Path::new(s) == p)),
            Err(e) => assert!(e.to_string().contains("INCUS_SOCKET"), "{e}"),
        }
    }
}
