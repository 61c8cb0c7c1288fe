//! The `cul8er-proxy` binary as cul8er uses it: `run` with a config file and an admin
//! socket, `ctl` against that socket, `probe` exit codes, and SIGTERM that lets an
//! in-flight request finish.

#![allow(
    clippy::disallowed_methods,
    reason = "tests await every task they spawn"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers of tests: a failure is a test failure"
)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::Ordering::SeqCst;

use http::StatusCode;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_cul8er-proxy");

fn cmd(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn ctl(socket: &Path, args: &[&str]) -> Output {
    let mut all = vec!["ctl", "--admin-socket", socket.to_str().unwrap()];
    all.extend_from_slice(args);
    cmd(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ctl_probe_and_graceful_sigterm() {
    let a = TestBackend::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("proxy.toml");
    fs_err::write(
        &config,
        format!(
            r#"
[settings]
shutdown_timeout = "30s"

[[listeners]]
name = "web"
bind = "127.0.0.1:{port}"
routes = [{{ service = "app" }}]

[[services]]
name = "app"
backends = [{{ name = "a", address = "{}" }}]
health_check = {{ path = "/health", interval = "100ms" }}
"#,
            a.addr
        ),
    )
    .unwrap();
    let socket = dir.path().join("admin.sock");
    let log = fs_err::File::create(dir.path().join("proxy.log")).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--config",
            config.to_str().unwrap(),
            "--admin-socket",
        ])
        .arg(&socket)
        .args(["--threads", "2"])
        .stdout(Stdio::null())
        .stderr(log.into_parts().0)
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    eventually("the admin socket answers", || {
        ctl(&socket, &["health"]).status.success()
    })
    .await;

    // probe: healthy, wrong status, body check, closed port.
    let url = format!("http://127.0.0.1:{port}/");
    let ok = cmd(&[
        "probe",
        "http",
        &url,
        "--expect",
        "200",
        "--body-contains",
        "a",
        "--timeout",
        "2s",
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "healthy: status 200\n");
    let wrong = cmd(&["probe", "http", &url, "--expect", "201"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong).contains("unhealthy: status 200, expected 201"),
        "{}",
        text(&wrong)
    );
    let closed = format!("127.0.0.1:{}", free_port());
    let tcp = cmd(&["probe", "tcp", &closed, "--timeout", "1s"]);
    assert_eq!(tcp.status.code(), Some(1));
    assert!(
        text(&tcp).starts_with("unhealthy: connect to"),
        "{}",
        text(&tcp)
    );
    let bad = cmd(&["probe", "http", "https://x/", "--timeout", "1s"]);
    assert_eq!(bad.status.code(), Some(2));

    // ctl: weight, show, stats, refusals.
    assert!(ctl(&socket, &["weight", "app", "a", "3"]).status.success());
    let shown: cul8er_proxy::ProxyConfig =
        serde_json::from_slice(&ctl(&socket, &["show"]).stdout).unwrap();
    assert_eq!(shown.services[0].backends[0].weight, 3);
    let missing = ctl(&socket, &["weight", "app", "zz", "1"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing).contains("no backend named 'zz'"),
        "{}",
        text(&missing)
    );
    let bad_file = dir.path().join("bad.toml");
    fs_err::write(
        &bad_file,
        "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let refused = ctl(&socket, &["apply", bad_file.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused).contains("listeners[web].routes"),
        "{}",
        text(&refused)
    );
    assert_eq!(get(&client(), &url).await, (StatusCode::OK, "a".to_owned()));
    let stats: cul8er_proxy::Stats =
        serde_json::from_slice(&ctl(&socket, &["stats"]).stdout).unwrap();
    assert!(stats.backend("app", "a").unwrap().requests >= 2);
    assert!(
        String::from_utf8_lossy(&ctl(&socket, &["metrics"]).stdout)
            .contains("# TYPE cul8er_proxy_backend_request_duration_seconds histogram")
    );

    // SIGTERM with a request in flight: it finishes, then the process exits 0.
    let held = {
        let url = format!("{url}hold");
        tokio::spawn(async move { get(&client(), &url).await })
    };
    eventually("the request reached a", || a.state.held.load(SeqCst) == 1).await;
    // The shell's own kill, so the test needs no procps.
    let term = Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .unwrap();
    assert!(term.success());
    eventually("the listener closed", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })
    .await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    a.state.release_held();
    assert_eq!(
        held.await.unwrap(),
        (StatusCode::OK, "held a done".to_owned())
    );
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!socket.exists(), "the admin socket is removed on exit");
}
