//! The proxy end to end, in process, on loopback: real sockets, real backends, real
//! TLS. No test asserts a timing; waits poll a condition with a hang guard.

#![allow(
    clippy::disallowed_methods,
    reason = "tests await every task they spawn"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers of tests: a failure is a test failure"
)]

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;

use bytes::Bytes;
use cul8er_proxy::{AdminClient, AdminError, HealthReport, ProxyConfig, ProxyError};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

fn counts(bodies: &[String]) -> HashMap<String, usize> {
    let mut map = HashMap::new();
    for body in bodies {
        *map.entry(body.clone()).or_insert(0) += 1;
    }
    map
}

/// `clients` concurrent clients send `per_client` GETs each; returns every (status, body).
async fn load(url: &str, clients: usize, per_client: usize) -> Vec<(StatusCode, String)> {
    let mut set = JoinSet::new();
    for _ in 0..clients {
        let url = url.to_owned();
        set.spawn(async move {
            let client = client();
            let mut out = Vec::with_capacity(per_client);
            for _ in 0..per_client {
                out.push(get(&client, &url).await);
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(result) = set.join_next().await {
        all.extend(result.unwrap());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_over_10000_requests_is_within_one_percent() {
    weighted_split(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_holds_with_worker_threads() {
    weighted_split(2).await;
}

async fn weighted_split(workers: usize) {
    let (a, b, c) = (
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    );
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1), ("b", &b, 3), ("c", &c, 6)])
    );
    let (proxy, url) = start_on(http_config(&services), workers).await;
    let results = load(&format!("{url}/"), 8, 1250).await;
    assert_eq!(results.len(), 10_000);
    assert!(results.iter().all(|(s, _)| *s == StatusCode::OK));
    let bodies: Vec<String> = results.into_iter().map(|(_, b)| b).collect();
    let counts = counts(&bodies);
    for (name, share) in [("a", 0.1), ("b", 0.3), ("c", 0.6)] {
        let got = counts[name] as f64 / 10_000.0;
        assert!(
            (got - share).abs() <= 0.01,
            "{name}: {got} of traffic, weight share {share}"
        );
    }
    let stats = proxy.stats();
    assert_eq!(
        stats.backend("app", "c").unwrap().requests,
        counts["c"] as u64
    );
    assert_eq!(
        stats.backend("app", "a").unwrap().responses.success,
        counts["a"] as u64
    );
}

#[tokio::test]
async fn no_healthy_backend_answers_503_with_a_reason() {
    let dead = TestBackend::start("dead").await;
    dead.state.healthy.store(false, SeqCst);
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\nhealth_check = {{ path = \"/health\", interval = \"50ms\" }}\n",
        backends_toml(&[("dead", &dead, 1)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    assert!(
        proxy
            .until_checked(std::time::Duration::from_secs(10))
            .await
    );
    let (status, body) = get(&client(), &format!("{url}/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body.contains("service 'app' has no healthy backend"),
        "{body}"
    );

    // A service with no backends at all answers the same way.
    let (_proxy, url) = start(http_config("[[services]]\nname = \"app\"\n")).await;
    let (status, body) = get(&client(), &format!("{url}/x")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("0 configured"), "{body}");
}

fn health_of(report: &HealthReport, backend: &str) -> cul8er_proxy::health::HealthStatus {
    report.services[0]
        .backends
        .iter()
        .find(|b| b.name == backend)
        .unwrap()
        .health
}

#[tokio::test]
async fn active_checks_eject_a_failing_backend_and_bring_it_back() {
    use cul8er_proxy::health::HealthStatus::{Healthy, Unhealthy};
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\nhealth_check = {{ path = \"/health\", body_contains = \"ok\", interval = \"20ms\", rise = 2, fall = 2 }}\n",
        backends_toml(&[("a", &a, 1), ("b", &b, 1)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    assert!(
        proxy
            .until_checked(std::time::Duration::from_secs(10))
            .await
    );
    let http = client();

    a.state.healthy.store(false, SeqCst);
    eventually("a marked unhealthy", || {
        health_of(&proxy.health(), "a") == Unhealthy
    })
    .await;
    for _ in 0..20 {
        assert_eq!(get(&http, &format!("{url}/")).await.1, "b");
    }
    let last = proxy.health().services[0].backends[0]
        .last_check
        .clone()
        .unwrap();
    assert!(last.contains("status 503"), "{last}");

    a.state.healthy.store(true, SeqCst);
    eventually("a healthy again", || {
        health_of(&proxy.health(), "a") == Healthy
    })
    .await;
    let bodies: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..20 {
            v.push(get(&http, &format!("{url}/")).await.1);
        }
        v
    };
    assert_eq!(counts(&bodies).get("a"), Some(&10));
    assert_eq!(
        proxy
            .stats()
            .backend("app", "a")
            .unwrap()
            .health_transitions,
        3
    );
}

#[tokio::test]
async fn passive_ejection_takes_out_a_5xx_backend_and_it_returns_after_the_back_off() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\npassive = {{ consecutive_failures = 3, base_ejection = \"200ms\", max_ejection = \"1s\" }}\n",
        backends_toml(&[("a", &a, 1), ("b", &b, 1)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    let http = client();
    a.state.failing.store(true, SeqCst);
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&http, &format!("{url}/")).await.0);
    }
    assert_eq!(
        statuses.iter().filter(|s| s.is_server_error()).count(),
        3,
        "{statuses:?}"
    );
    let stats = proxy.stats();
    let a_stats = stats.backend("app", "a").unwrap();
    assert_eq!(a_stats.ejections, 1);
    assert!(a_stats.ejected);
    assert_eq!(a_stats.responses.server_error, 3);
    assert!((a_stats.error_rate() - 1.0).abs() < f64::EPSILON);
    for _ in 0..10 {
        assert_eq!(
            get(&http, &format!("{url}/")).await,
            (StatusCode::OK, "b".to_owned())
        );
    }

    a.state.failing.store(false, SeqCst);
    eventually("a back from ejection", || {
        !proxy.stats().backend("app", "a").unwrap().ejected
    })
    .await;
    let mut bodies = Vec::new();
    for _ in 0..10 {
        bodies.push(get(&http, &format!("{url}/")).await.1);
    }
    assert_eq!(counts(&bodies).get("a"), Some(&5), "{bodies:?}");
}

#[tokio::test]
async fn idempotent_requests_retry_another_backend_when_connect_fails() {
    let live = TestBackend::start("live").await;
    // A port that refuses connections for the whole test: bound (so no other test can
    // take it) but never listening.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed = refusing.local_addr().unwrap();
    let services = format!(
        "[[services]]\nname = \"app\"\npassive = {{ consecutive_failures = 0 }}\nbackends = [{{ name = \"gone\", address = \"{closed}\" }}, {}]\n",
        backends_toml(&[("live", &live, 1)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    let http = client();
    for _ in 0..20 {
        assert_eq!(
            get(&http, &format!("{url}/")).await,
            (StatusCode::OK, "live".to_owned())
        );
    }
    let gone = proxy.stats().backend("app", "gone").unwrap().clone();
    assert_eq!(gone.errors, 10);

    // A POST with a body is not retried: it gets a clear 502 when it lands on the dead one.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let request = http::Request::post(format!("{url}/echo"))
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let response = http.request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        if status == StatusCode::BAD_GATEWAY {
            assert!(String::from_utf8_lossy(&body).contains("backend 'gone'"));
        } else {
            assert_eq!(body, "live payload");
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_GATEWAY)
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_requests_finish_while_their_backend_drains_and_after_removal() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1), ("b", &b, 0)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    let held = {
        let url = format!("{url}/hold");
        tokio::spawn(async move { get(&client(), &url).await })
    };
    eventually("the request reached a", || a.state.held.load(SeqCst) == 1).await;

    // Shift traffic to b and drain a: a gets nothing new, its request stays.
    proxy.set_weight("app", "b", 1).await.unwrap();
    let drain = {
        let proxy = proxy.clone();
        tokio::spawn(async move { proxy.drain("app", "a").await })
    };
    eventually("a at weight 0", || {
        proxy.stats().backend("app", "a").unwrap().weight == 0
    })
    .await;
    for _ in 0..10 {
        assert_eq!(get(&client(), &format!("{url}/")).await.1, "b");
    }
    assert!(!drain.is_finished());
    assert_eq!(proxy.stats().backend("app", "a").unwrap().active, 1);

    a.state.release_held();
    assert_eq!(
        held.await.unwrap(),
        (StatusCode::OK, "held a done".to_owned())
    );
    let report = drain.await.unwrap().unwrap();
    assert!(report.drained);
    assert_eq!(report.active, 0);

    // Removal: b holds a request, the new configuration drops b, the request completes.
    let c = TestBackend::start("c").await;
    let held = {
        let url = format!("{url}/hold");
        tokio::spawn(async move { get(&client(), &url).await })
    };
    eventually("the request reached b", || b.state.held.load(SeqCst) == 1).await;
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("c", &c, 1)])
    );
    proxy.apply(http_config(&services)).await.unwrap();
    let stats = proxy.stats();
    let removed = stats.backend("app", "b").unwrap();
    assert!(removed.removed && removed.active == 1, "{removed:?}");
    assert_eq!(get(&client(), &format!("{url}/")).await.1, "c");
    b.state.release_held();
    assert_eq!(
        held.await.unwrap(),
        (StatusCode::OK, "held b done".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reconfiguration_under_load_fails_no_request() {
    live_reconfiguration(0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reconfiguration_with_worker_threads_fails_no_request() {
    live_reconfiguration(2).await;
}

async fn live_reconfiguration(workers: usize) {
    let backends: Vec<TestBackend> = {
        let mut v = Vec::new();
        for name in ["v1", "v2", "v3"] {
            v.push(TestBackend::start(name).await);
        }
        v
    };
    let config_for = |step: usize| {
        // Weights move, backends come and go; at least one is always in rotation.
        let set: Vec<(&str, &TestBackend, u32)> = match step % 4 {
            0 => vec![("v1", &backends[0], 1)],
            1 => vec![("v1", &backends[0], 9), ("v2", &backends[1], 1)],
            2 => vec![
                ("v1", &backends[0], 0),
                ("v2", &backends[1], 1),
                ("v3", &backends[2], 1),
            ],
            _ => vec![("v2", &backends[1], 1), ("v3", &backends[2], 3)],
        };
        http_config(&format!(
            "[[services]]\nname = \"app\"\nbackends = [{}]\n",
            backends_toml(&set)
        ))
    };
    let (proxy, url) = start_on(config_for(0), workers).await;
    let generator = {
        let url = format!("{url}/");
        tokio::spawn(async move { load(&url, 8, 400).await })
    };
    let mut step = 0;
    while !generator.is_finished() {
        step += 1;
        proxy.apply(config_for(step)).await.unwrap();
        if step % 3 == 0 {
            proxy
                .set_weight("app", "v2", u32::try_from(step % 5).unwrap())
                .await
                .ok();
        }
        tokio::task::yield_now().await;
    }
    let results = generator.await.unwrap();
    assert_eq!(results.len(), 3200);
    let failed: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s != StatusCode::OK)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        step > 4,
        "the configuration changed only {step} times during the load"
    );
    let bodies: Vec<String> = results.into_iter().map(|(_, b)| b).collect();
    assert!(counts(&bodies).len() >= 2, "traffic moved between versions");
}

#[tokio::test]
async fn a_bad_configuration_is_refused_and_the_old_one_keeps_serving() {
    let a = TestBackend::start("a").await;
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    let before = proxy.config();

    let mut bad = before.clone();
    bad.listeners[0].routes[0].service = "nope".into();
    bad.services[0].backends[0].address = "127.0.0.1:0".parse().unwrap();
    let err = proxy.apply(bad).await.unwrap_err();
    let ProxyError::Config(cul8er_proxy::ConfigError::Invalid(problems)) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(problems.len(), 2, "{problems:?}");

    // A certificate that does not exist is refused too, naming the file.
    let mut bad_tls = before.clone();
    bad_tls.listeners[0].tls = Some(cul8er_proxy::config::TlsConfig {
        certificates: vec![cul8er_proxy::config::CertificateConfig {
            server_names: vec![],
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
        }],
    });
    let err = proxy.apply(bad_tls).await.unwrap_err();
    assert!(
        cul8er_proxy::error_chain(&err).contains("/nonexistent/cert.pem"),
        "{err}"
    );

    // A listener that cannot bind is refused before anything changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut bad_bind = before.clone();
    bad_bind
        .listeners
        .push(cul8er_proxy::config::ListenerConfig {
            name: "second".into(),
            bind: taken.local_addr().unwrap(),
            ..before.listeners[0].clone()
        });
    bad_bind.services[0].backends[0].weight = 7;
    assert!(matches!(
        proxy.apply(bad_bind).await,
        Err(ProxyError::Bind { .. })
    ));

    assert_eq!(proxy.config(), before);
    assert_eq!(
        get(&client(), &format!("{url}/")).await,
        (StatusCode::OK, "a".to_owned())
    );
}

#[tokio::test]
async fn routes_by_host_and_path_prefix() {
    let (api, web, admin) = (
        TestBackend::start("api").await,
        TestBackend::start("web").await,
        TestBackend::start("other-host").await,
    );
    let text = format!(
        r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
routes = [
  {{ path_prefix = "/", service = "web" }},
  {{ path_prefix = "/api", service = "api" }},
  {{ host = "admin.example", service = "admin" }},
]
[[services]]
name = "api"
backends = [{{ name = "1", address = "{}" }}]
[[services]]
name = "web"
backends = [{{ name = "1", address = "{}" }}]
[[services]]
name = "admin"
backends = [{{ name = "1", address = "{}" }}]
"#,
        api.addr, web.addr, admin.addr
    );
    let (_proxy, url) = start(ProxyConfig::from_toml(&text, "t").unwrap()).await;
    let http = client();
    assert_eq!(get(&http, &format!("{url}/api/users")).await.1, "api");
    assert_eq!(get(&http, &format!("{url}/api")).await.1, "api");
    assert_eq!(get(&http, &format!("{url}/apix")).await.1, "web");
    assert_eq!(
        get_with_host(&http, &format!("{url}/api"), "ADMIN.example:80")
            .await
            .1,
        "other-host"
    );
}

#[tokio::test]
async fn forwarding_headers_are_set_and_hop_by_hop_ones_removed() {
    let a = TestBackend::start("a").await;
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1)])
    );
    let (_proxy, url) = start(http_config(&services)).await;
    let request = http::Request::get(format!("{url}/headers"))
        .header("host", "app.example")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("proxy-authorization", "Basic x")
        .header("x-forwarded-for", "198.51.100.1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let body = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        body.contains("x-forwarded-for: 198.51.100.1, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(
        body.contains("forwarded: for=127.0.0.1;proto=http;host=\"app.example\"\n"),
        "{body}"
    );
    assert!(body.contains("host: app.example\n"), "{body}");
    assert!(!body.contains("x-private"), "{body}");
    assert!(!body.contains("proxy-authorization"), "{body}");
}

#[tokio::test]
async fn http2_prior_knowledge_in_and_h2_to_backends() {
    let a = TestBackend::start("a").await;
    let services = format!(
        "[[services]]\nname = \"app\"\nprotocol = \"http2\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1)])
    );
    let (_proxy, url) = start(http_config(&services)).await;
    let h2 = h2c_client();
    let response = h2
        .get(format!("{url}/headers").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("x-forwarded-proto: http"));
    // HTTP/1.1 clients reach the same HTTP/2 backend.
    assert_eq!(
        get(&client(), &format!("{url}/")).await,
        (StatusCode::OK, "a".to_owned())
    );
}

#[tokio::test]
async fn websocket_upgrades_pass_through() {
    let a = TestBackend::start("a").await;
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    let addr = proxy.local_addr("web").unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for text in ["hello", "again"] {
        ws.send(text.into()).await.unwrap();
        let reply = ws.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), format!("a: {text}"));
    }
    assert_eq!(
        proxy.stats().backend("app", "a").unwrap().active,
        1,
        "the tunnel counts as active"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    eventually("tunnel closed", || {
        proxy.stats().backend("app", "a").unwrap().active == 0
    })
    .await;
    assert_eq!(get(&client(), &format!("{url}/")).await.1, "a");
}

async fn raw_request(addr: std::net::SocketAddr, preface: &[u8], path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(preface).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_give_the_client_address() {
    let a = TestBackend::start("a").await;
    let mut config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1)])
    ));
    config.listeners[0].proxy_protocol = true;
    let (proxy, _) = start(config).await;
    let addr = proxy.local_addr("web").unwrap();

    let answer = raw_request(
        addr,
        b"PROXY TCP4 203.0.113.7 10.0.0.1 40000 80\r\n",
        "/headers",
    )
    .await;
    assert!(
        answer.contains("x-forwarded-for: 203.0.113.7\n"),
        "{answer}"
    );

    let v2 = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (
            "[2001:db8::9]:5000"
                .parse::<std::net::SocketAddr>()
                .unwrap(),
            "[2001:db8::1]:80".parse::<std::net::SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let answer = raw_request(addr, &v2, "/headers").await;
    assert!(
        answer.contains("x-forwarded-for: 2001:db8::9\n"),
        "{answer}"
    );

    // Without the header the connection is closed unanswered.
    let answer = raw_request(addr, b"", "/headers").await;
    assert_eq!(answer, "");
}

#[tokio::test]
async fn tcp_mode_forwards_bytes_to_a_weighted_backend() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            let mut buf = [0_u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(&[b"echo:", &buf[..n]].concat()).await.unwrap();
        }
    });
    let text = format!(
        r#"
[[listeners]]
name = "db"
bind = "127.0.0.1:0"
mode = "tcp"
service = "db"
[[services]]
name = "db"
backends = [{{ name = "1", address = "{echo_addr}" }}]
health_check = {{ kind = "tcp", interval = "50ms" }}
"#
    );
    let proxy = cul8er_proxy::Proxy::start(ProxyConfig::from_toml(&text, "t").unwrap())
        .await
        .unwrap();
    assert!(
        proxy
            .until_checked(std::time::Duration::from_secs(10))
            .await
    );
    let mut s = TcpStream::connect(proxy.local_addr("db").unwrap())
        .await
        .unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(out, b"echo:ping");
    assert_eq!(proxy.stats().backend("db", "1").unwrap().requests, 1);
}

mod tls {
    use super::*;
    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::TlsConnector;

    struct Issued {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    fn issue(name: &str) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn write(dir: &std::path::Path, stem: &str, issued: &Issued) {
        fs_err::write(dir.join(format!("{stem}.crt")), &issued.cert_pem).unwrap();
        fs_err::write(dir.join(format!("{stem}.key")), &issued.key_pem).unwrap();
    }

    /// Connects with SNI `name`, trusting `roots`; returns the certificate the proxy
    /// presented and a GET answer over the negotiated protocol.
    async fn fetch(
        addr: std::net::SocketAddr,
        name: &str,
        roots: &[&Issued],
    ) -> (CertificateDer<'static>, String, Option<Vec<u8>>) {
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store.add(r.der.clone()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await
            .unwrap();
        let (_, session) = tls.get_ref();
        let presented = session.peer_certificates().unwrap()[0].clone();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = hyper_util::rt::TokioIo::new(tls);
        let request = http::Request::get("/headers")
            .uri(format!("https://{name}/headers"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let body = if alpn.as_deref() == Some(b"h2") {
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            let mut tasks = JoinSet::new();
            tasks.spawn(async move {
                let _ = conn.await;
            });
            let response = sender.send_request(request).await.unwrap();
            response.into_body().collect().await.unwrap().to_bytes()
        } else {
            panic!("expected h2 by ALPN, got {alpn:?}");
        };
        (presented, String::from_utf8_lossy(&body).into_owned(), alpn)
    }

    #[tokio::test]
    async fn tls_picks_the_certificate_by_sni_and_reloads_without_restart() {
        let backend = TestBackend::start("a").await;
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (issue("one.test"), issue("two.test"));
        write(dir.path(), "one", &first);
        write(dir.path(), "two", &second);
        let d = dir.path().display();
        let text = format!(
            r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:0"
routes = [{{ service = "app" }}]
tls = {{ certificates = [
  {{ server_names = ["one.test"], cert = "{d}/one.crt", key = "{d}/one.key" }},
  {{ server_names = ["two.test"], cert = "{d}/two.crt", key = "{d}/two.key" }},
] }}
[[services]]
name = "app"
backends = [{{ name = "a", address = "{}" }}]
"#,
            backend.addr
        );
        let (proxy, _) = start(ProxyConfig::from_toml(&text, "t").unwrap()).await;
        let addr = proxy.local_addr("web").unwrap();

        let (cert, body, alpn) = fetch(addr, "one.test", &[&first, &second]).await;
        assert_eq!(cert, first.der);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        assert!(body.contains("x-forwarded-proto: https"), "{body}");
        let (cert, _, _) = fetch(addr, "two.test", &[&first, &second]).await;
        assert_eq!(cert, second.der);

        // New files for one.test, then reload-certs: new handshakes see the new one.
        let renewed = issue("one.test");
        write(dir.path(), "one", &renewed);
        proxy.reload_certs().unwrap();
        let (cert, _, _) = fetch(addr, "one.test", &[&renewed]).await;
        assert_eq!(cert, renewed.der);

        // A broken file is refused and the loaded certificates keep serving.
        fs_err::write(dir.path().join("two.key"), "not a key").unwrap();
        let err = proxy.reload_certs().unwrap_err();
        assert!(cul8er_proxy::error_chain(&err).contains("two.key"), "{err}");
        let (cert, _, _) = fetch(addr, "two.test", &[&second]).await;
        assert_eq!(cert, second.der);
    }
}

#[tokio::test]
async fn admin_socket_round_trips() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\nhealth_check = {{ path = \"/health\", interval = \"50ms\" }}\n",
        backends_toml(&[("a", &a, 1), ("b", &b, 1)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let listener = cul8er_proxy::bind_admin(&socket).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn(cul8er_proxy::serve_admin(
        proxy.clone(),
        listener,
        stop.clone(),
    ));
    let admin = AdminClient::new(&socket);

    assert_eq!(admin.show().await.unwrap(), proxy.config());
    admin.set_weight("app", "a", 0).await.unwrap();
    assert_eq!(
        admin.show().await.unwrap().services[0].backends[0].weight,
        0
    );
    for _ in 0..4 {
        assert_eq!(get(&client(), &format!("{url}/")).await.1, "b");
    }
    let report = admin.drain("app", "b").await.unwrap();
    assert!(report.drained);
    assert_eq!(
        get(&client(), &format!("{url}/")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let mut config = admin.show().await.unwrap();
    config.services[0].backends[0].weight = 5;
    admin.apply(&config).await.unwrap();
    assert_eq!(get(&client(), &format!("{url}/")).await.1, "a");

    let stats = admin.stats().await.unwrap();
    assert_eq!(stats.backend("app", "b").unwrap().requests, 4);
    let metrics = admin.metrics().await.unwrap();
    assert!(
        metrics.contains("cul8er_proxy_backend_requests_total{service=\"app\",backend=\"b\"} 4")
    );
    proxy
        .until_checked(std::time::Duration::from_secs(10))
        .await;
    let health = admin.health().await.unwrap();
    assert_eq!(health.services[0].available, 2);
    admin.reload_certs().await.unwrap();

    let Err(AdminError::Refused { status, body }) = admin.set_weight("app", "zz", 1).await else {
        panic!("expected a refusal")
    };
    assert_eq!(status, 404);
    assert!(
        body.error.contains("no backend named 'zz'"),
        "{}",
        body.error
    );
    config.services[0].backends[1].name = "a".into();
    let Err(AdminError::Refused { status, body }) = admin.apply(&config).await else {
        panic!("expected a refusal")
    };
    assert_eq!(status, 400);
    assert_eq!(body.problems[0].at, "services[app].backends[a].name");
    stop.cancel();
}

#[tokio::test]
async fn a_removed_backend_is_cut_when_its_drain_timeout_runs_out() {
    let (a, b) = (TestBackend::start("a").await, TestBackend::start("b").await);
    let config = |set: &[(&str, &TestBackend, u32)]| {
        let mut c = http_config(&format!(
            "[[services]]\nname = \"app\"\nbackends = [{}]\n",
            backends_toml(set)
        ));
        c.settings.drain_timeout = std::time::Duration::from_millis(100);
        c
    };
    let (proxy, url) = start(config(&[("a", &a, 1)])).await;
    let held = {
        let url = format!("{url}/hold");
        tokio::spawn(async move { get(&client(), &url).await })
    };
    eventually("the request reached a", || a.state.held.load(SeqCst) == 1).await;
    proxy.apply(config(&[("b", &b, 1)])).await.unwrap();
    let (status, body) = held.await.unwrap();
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("drain timeout ran out"), "{body}");
    assert_eq!(get(&client(), &format!("{url}/")).await.1, "b");
}

#[tokio::test]
async fn weight_zero_backends_are_health_checked_before_they_get_traffic() {
    use cul8er_proxy::health::HealthStatus::{Healthy, Unhealthy};
    let (blue, green) = (
        TestBackend::start("blue").await,
        TestBackend::start("green").await,
    );
    green.state.healthy.store(false, SeqCst);
    let services = format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\nhealth_check = {{ path = \"/health\", interval = \"20ms\", rise = 1 }}\n",
        backends_toml(&[("blue", &blue, 1), ("green", &green, 0)])
    );
    let (proxy, url) = start(http_config(&services)).await;
    assert!(
        proxy
            .until_checked(std::time::Duration::from_secs(10))
            .await
    );
    assert_eq!(health_of(&proxy.health(), "green"), Unhealthy);
    green.state.healthy.store(true, SeqCst);
    eventually("green known healthy", || {
        health_of(&proxy.health(), "green") == Healthy
    })
    .await;
    assert_eq!(proxy.stats().backend("app", "green").unwrap().requests, 0);
    // The switch: all traffic to green in one change.
    let mut switched = proxy.config();
    switched.services[0].backends[0].weight = 0;
    switched.services[0].backends[1].weight = 1;
    proxy.apply(switched).await.unwrap();
    for _ in 0..5 {
        assert_eq!(get(&client(), &format!("{url}/")).await.1, "green");
    }
}

#[tokio::test]
async fn a_backend_without_headers_in_time_gives_504_and_idle_clients_are_closed() {
    let a = TestBackend::start("a").await;
    let mut config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\ntimeouts = {{ response_headers = \"100ms\" }}\n",
        backends_toml(&[("a", &a, 1)])
    ));
    config.listeners[0].idle_timeout = std::time::Duration::from_millis(100);
    let (proxy, url) = start(config).await;
    let (status, body) = get(&client(), &format!("{url}/hold")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        body.contains("sent no response headers within 100ms"),
        "{body}"
    );
    assert_eq!(proxy.stats().backend("app", "a").unwrap().errors, 1);

    // A keep-alive connection with nothing in flight is closed after the idle timeout.
    let mut stream = TcpStream::connect(proxy.local_addr("web").unwrap())
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // Reading to the end only ends when the proxy closes; the deadline guards a hang.
    let read = stream.read_to_end(&mut answer);
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("the idle connection was never closed")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("\r\n\r\na"),
        "{answer}"
    );
    a.state.release_held();
}
