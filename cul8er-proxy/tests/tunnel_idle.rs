//! An upgraded connection (here a WebSocket) in which no byte moves either way for the
//! service's `timeouts.tunnel_idle` is closed on both sides; one that keeps exchanging
//! messages, each gap shorter than the limit, is never closed; a limit of 0 is refused.
//! Real sockets on loopback, on a paused clock: the times asserted are the proxy's
//! deadlines, not the machine's speed.

#![allow(
    clippy::disallowed_methods,
    reason = "tests await every task they spawn"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers of tests: a failure is a test failure"
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use cul8er_proxy::config::ConfigError;
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// The idle limit the tests configure.
const LIMIT: Duration = Duration::from_secs(300);
/// The gap between the messages of a live tunnel: shorter than [`LIMIT`].
const GAP: Duration = Duration::from_secs(240);
/// How long a test waits for what must happen, on the paused clock; only a proxy that
/// never closes a silent tunnel reaches it.
const NEVER: Duration = Duration::from_secs(3 * 3600);

/// A WebSocket backend that answers each text message with `echo: <text>`, except
/// `ticks N`, which it answers with `tick 1` to `tick N`, one every [`GAP`]; it reports
/// when the proxy closed its side of a tunnel.
struct EchoBackend {
    addr: SocketAddr,
    closed: mpsc::UnboundedReceiver<Instant>,
    _tasks: JoinSet<()>,
}

async fn echo_backend() -> EchoBackend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (report, closed) = mpsc::unbounded_channel();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            // A small write must leave at once: on the paused clock, a frame Nagle's
            // algorithm holds back for an acknowledgement would look like silence.
            stream.set_nodelay(true).unwrap();
            let report = report.clone();
            connections.spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(stream).await.unwrap();
                while let Some(Ok(message)) = ws.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let replies = match text.as_str().strip_prefix("ticks ") {
                        Some(count) => (1..=count.parse::<u32>().unwrap())
                            .map(|n| format!("tick {n}"))
                            .collect(),
                        None => vec![format!("echo: {}", text.as_str())],
                    };
                    let ticks = replies.len() > 1;
                    for reply in replies {
                        if ticks {
                            tokio::time::sleep(GAP).await;
                        }
                        if ws.send(reply.into()).await.is_err() {
                            break;
                        }
                    }
                }
                let _ = report.send(Instant::now());
            });
        }
    });
    EchoBackend {
        addr,
        closed,
        _tasks: tasks,
    }
}

async fn proxy_to(addr: SocketAddr, tunnel_idle: &str) -> cul8er_proxy::Proxy {
    let config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{addr}\" }}]\n\
         timeouts = {{ tunnel_idle = \"{tunnel_idle}\" }}\n"
    ));
    start(config).await.0
}

/// A WebSocket through the proxy, past its handshake.
async fn open(proxy: &cul8er_proxy::Proxy) -> WebSocketStream<TcpStream> {
    let addr = proxy.local_addr("web").unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends `text` and reads the backend's echo of it.
async fn exchange(ws: &mut WebSocketStream<TcpStream>, text: &str) {
    ws.send(text.into()).await.unwrap();
    let reply = ws.next().await.unwrap().unwrap();
    assert_eq!(reply.into_text().unwrap().as_str(), format!("echo: {text}"));
}

fn stats(proxy: &cul8er_proxy::Proxy) -> cul8er_proxy::BackendStats {
    proxy.stats().backend("app", "s").unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn a_silent_tunnel_is_closed_on_both_sides_after_tunnel_idle() {
    let mut backend = echo_backend().await;
    let proxy = proxy_to(backend.addr, "5m").await;
    let mut ws = open(&proxy).await;
    exchange(&mut ws, "hello").await;
    let silent_since = Instant::now();
    assert_eq!(stats(&proxy).active, 1, "the tunnel counts as active");

    // The client's side: the proxy closes it (no close frame: the stream just ends).
    let end = tokio::time::timeout(NEVER, ws.next())
        .await
        .expect("the proxy never closed the silent tunnel's client side");
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "a message came on a silent tunnel: {end:?}"
    );
    let client_closed = silent_since.elapsed();
    // The backend's side.
    let backend_closed = tokio::time::timeout(NEVER, backend.closed.recv())
        .await
        .expect("the proxy never closed the silent tunnel's backend side")
        .unwrap()
        - silent_since;
    for (side, after) in [("client", client_closed), ("backend", backend_closed)] {
        assert!(
            after >= LIMIT && after < LIMIT + Duration::from_secs(5),
            "the {side} side was closed {after:?} into the silence, the limit is {LIMIT:?}"
        );
    }

    eventually("the tunnel is no longer active", || {
        stats(&proxy).active == 0
    })
    .await;
    let after = stats(&proxy);
    assert_eq!(after.errors, 0, "an idle tunnel is not the backend's error");
    assert_eq!(after.requests, 1);
    // The proxy still serves: a new tunnel to the same backend works.
    let mut again = open(&proxy).await;
    exchange(&mut again, "again").await;
}

#[tokio::test(start_paused = true)]
async fn a_tunnel_that_keeps_talking_within_tunnel_idle_stays_open() {
    let mut backend = echo_backend().await;
    let proxy = proxy_to(backend.addr, "5m").await;
    let mut ws = open(&proxy).await;
    let opened = Instant::now();
    // One message every GAP (4 min), for four times the limit in all.
    let mut sent = 0;
    while opened.elapsed() < 4 * LIMIT {
        tokio::time::sleep(GAP).await;
        sent += 1;
        exchange(&mut ws, &format!("ping {sent}")).await;
    }
    assert!(sent >= 5, "{sent} messages");
    assert!(
        backend.closed.try_recv().is_err(),
        "the backend's side was closed while the tunnel talked"
    );
    let now = stats(&proxy);
    assert_eq!(now.active, 1, "the tunnel is still open");
    assert_eq!(now.errors, 0);

    // Closed by the client, the tunnel ends at once on the backend too.
    ws.close(None).await.unwrap();
    drop(ws);
    tokio::time::timeout(LIMIT / 2, backend.closed.recv())
        .await
        .expect("the backend's side outlived the client's close")
        .unwrap();
    eventually("the tunnel is no longer active", || {
        stats(&proxy).active == 0
    })
    .await;
}

/// Bytes moving one way only (the backend pushing, the client silent) keep it open too.
#[tokio::test(start_paused = true)]
async fn a_tunnel_the_backend_alone_talks_in_stays_open() {
    let mut backend = echo_backend().await;
    let proxy = proxy_to(backend.addr, "5m").await;
    let mut ws = open(&proxy).await;
    let opened = Instant::now();
    ws.send("ticks 5".into()).await.unwrap();
    for n in 1..=5 {
        let tick = ws.next().await.unwrap().unwrap();
        assert_eq!(tick.into_text().unwrap().as_str(), format!("tick {n}"));
    }
    assert!(opened.elapsed() >= 4 * LIMIT, "{:?}", opened.elapsed());
    assert!(
        backend.closed.try_recv().is_err(),
        "the backend's side was closed while the backend talked"
    );
    exchange(&mut ws, "still there").await;
    assert_eq!(stats(&proxy).errors, 0);
}

#[test]
fn a_tunnel_idle_of_zero_or_over_a_year_is_refused_with_the_field_named() {
    let text = "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n\
                routes = [{ service = \"app\" }]\n\n\
                [[services]]\nname = \"app\"\n\
                backends = [{ name = \"s\", address = \"127.0.0.1:9\" }]\n\
                timeouts = { tunnel_idle = \"0s\" }\n";
    let config = cul8er_proxy::ProxyConfig::from_toml(text, "zero").unwrap();
    let Err(error @ ConfigError::Invalid(_)) = config.validate() else {
        panic!("a tunnel_idle of 0s was accepted")
    };
    let ConfigError::Invalid(problems) = &error else {
        unreachable!()
    };
    let at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
    assert_eq!(at, ["services[app].timeouts.tunnel_idle"]);
    let message = error.to_string();
    assert!(
        message.contains("services[app].timeouts.tunnel_idle")
            && message.contains("longer than 0s"),
        "{message}"
    );

    let too_long = cul8er_proxy::ProxyConfig::from_toml(&text.replace("0s", "8761h"), "long")
        .unwrap()
        .validate()
        .unwrap_err()
        .to_string();
    assert!(
        too_long.contains("services[app].timeouts.tunnel_idle") && too_long.contains("8760h"),
        "{too_long}"
    );

    let default = cul8er_proxy::ProxyConfig::from_toml(&text.replace("0s", "1h"), "hour")
        .unwrap()
        .services[0]
        .timeouts
        .tunnel_idle;
    let unset = cul8er_proxy::ProxyConfig::from_toml(
        &text.replace("timeouts = { tunnel_idle = \"0s\" }\n", ""),
        "unset",
    )
    .unwrap()
    .services[0]
        .timeouts
        .tunnel_idle;
    assert_eq!(unset, Duration::from_secs(3600), "the default is an hour");
    assert_eq!(default, unset);
}
