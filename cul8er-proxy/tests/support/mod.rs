//! Real backends on loopback for the proxy's tests: HTTP/1.1 + HTTP/2 servers that
//! answer with their name, a health endpoint that can be switched, a request held until
//! the test releases it, a header echo and a WebSocket echo.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    reason = "test support: a failure here is a test failure"
)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use cul8er_proxy::{Proxy, ProxyConfig};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

pub struct BackendState {
    pub name: String,
    pub healthy: AtomicBool,
    pub failing: AtomicBool,
    pub held: AtomicUsize,
    release: watch::Sender<bool>,
}

impl BackendState {
    pub fn release_held(&self) {
        let _ = self.release.send(true);
    }
}

/// A backend server; dropping it stops it.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub state: Arc<BackendState>,
    _tasks: JoinSet<()>,
}

impl TestBackend {
    pub async fn start(name: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap(), name).await
    }

    pub async fn start_on(addr: SocketAddr, name: &str) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_owned(),
            healthy: AtomicBool::new(true),
            failing: AtomicBool::new(false),
            held: AtomicUsize::new(0),
            release: watch::channel(false).0,
        });
        let mut tasks = JoinSet::new();
        let st = state.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((stream, _)) = listener.accept() => {
                        let st = st.clone();
                        conns.spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let st = st.clone();
                                async move { Ok::<_, Infallible>(answer(&st, req).await) }
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Self {
            addr,
            state,
            _tasks: tasks,
        }
    }
}

async fn answer(state: &Arc<BackendState>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    match req.uri().path() {
        "/health" => {
            if state.healthy.load(SeqCst) {
                text(StatusCode::OK, format!("ok {}", state.name))
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "down".into())
            }
        }
        "/hold" => {
            state.held.fetch_add(1, SeqCst);
            let mut rx = state.release.subscribe();
            let _ = rx.wait_for(|released| *released).await;
            text(StatusCode::OK, format!("held {} done", state.name))
        }
        "/headers" => {
            let mut body = String::new();
            for (name, value) in req.headers() {
                body.push_str(&format!("{}: {}\n", name, value.to_str().unwrap_or("?")));
            }
            text(StatusCode::OK, body)
        }
        "/echo" => {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            text(
                StatusCode::OK,
                format!("{} {}", state.name, String::from_utf8_lossy(&body)),
            )
        }
        "/ws" => {
            let key = req.headers().get("sec-websocket-key").cloned().unwrap();
            let upgrade = hyper::upgrade::on(&mut req);
            let name = state.name.clone();
            // The test's runtime ends this task with the test.
            #[allow(clippy::disallowed_methods)]
            tokio::spawn(async move {
                let upgraded = upgrade.await.unwrap();
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_text() {
                        let reply = format!("{name}: {}", msg.into_text().unwrap());
                        ws.send(reply.into()).await.unwrap();
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", derive_accept_key(key.as_bytes()))
                .body(Full::new(Bytes::new()))
                .unwrap()
        }
        _ => {
            if state.failing.load(SeqCst) {
                text(StatusCode::INTERNAL_SERVER_ERROR, "failing".into())
            } else {
                text(StatusCode::OK, state.name.clone())
            }
        }
    }
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

pub async fn get(client: &TestClient, url: &str) -> (StatusCode, String) {
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

pub async fn get_with_host(client: &TestClient, url: &str, host: &str) -> (StatusCode, String) {
    let request = Request::get(url)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A one-listener HTTP config in TOML with `services` appended verbatim.
pub fn http_config(services: &str) -> ProxyConfig {
    let text = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
routes = [{{ service = "app" }}]

{services}
"#
    );
    let config = ProxyConfig::from_toml(&text, "test").unwrap();
    config.validate().unwrap();
    config
}

pub fn backends_toml(backends: &[(&str, &TestBackend, u32)]) -> String {
    backends
        .iter()
        .map(|(name, b, w)| {
            format!(
                "{{ name = \"{name}\", address = \"{}\", weight = {w} }}",
                b.addr
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub async fn start(config: ProxyConfig) -> (Proxy, String) {
    start_on(config, 0).await
}

/// Starts a proxy serving on `workers` worker threads (0: on the test's runtime).
pub async fn start_on(config: ProxyConfig, workers: usize) -> (Proxy, String) {
    let proxy = if workers == 0 {
        Proxy::start(config).await.unwrap()
    } else {
        Proxy::start_with_workers(config, workers).await.unwrap()
    };
    let addr = proxy.local_addr("web").unwrap();
    (proxy, format!("http://{addr}"))
}

/// Polls `condition` until it holds; panics with `what` after a generous deadline that
/// only guards against a hang (no timing is asserted).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}
