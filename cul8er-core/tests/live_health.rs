//! Health gates and the crash watch against a real incusd: HTTP and TCP checks run by
//! the pushed `cul8er-proxy probe` inside a busybox instance (a busybox httpd serves),
//! command checks, an instance stopped mid-gate caught through the events stream, and
//! a release service that exits two seconds after it starts caught by the watch
//! although the init restarts it (busybox respawn; systemd `Restart=` on the Debian
//! image).
//!
//! The daemon is `CUL8ER_TEST_INCUS_SOCKET` (default `/var/lib/incus/unix.socket`), the
//! images `CUL8ER_TEST_IMAGE` (default `cul8er-busybox`) and `CUL8ER_TEST_DEBIAN_IMAGE`.
//! The probe is `CUL8ER_PROXY_BINARY`, else the static build `just proxy-static`
//! leaves in `target/x86_64-unknown-linux-gnu/release/`. Every instance is
//! `cul8er-t-...` and deleted by a guard through the `incus` command.
#![allow(clippy::unwrap_used)]

mod live_support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cul8er_core::edge::{EdgeBinary, locate_binary};
use cul8er_core::health::{
    Check, CrashKind, CrashWatch, ExecSource, GateOutcome, GateSpec, HealthEvent, HealthGate,
    PROBE_PATH, ProbeInstall, Verdict, WatchOptions, install_probe,
};
use cul8er_core::release::{self, DeployOptions, ReleaseSpec, ResolvedEnv};
use incus_api::Client;
use incus_api::exec::ExecRequest;
use incus_api::instances::{InstanceSource, InstanceSpec};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(120);

fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET").map_or_else(
        || PathBuf::from("/var/lib/incus/unix.socket"),
        PathBuf::from,
    )
}

fn busybox() -> String {
    std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into())
}

fn probe_binary() -> EdgeBinary {
    let built = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/x86_64-unknown-linux-gnu/release/cul8er-proxy"
    ));
    let explicit = std::env::var_os("CUL8ER_PROXY_BINARY").is_none() && built.is_file();
    locate_binary(explicit.then_some(built.as_path())).unwrap_or_else(|e| {
        panic!("no cul8er-proxy binary for the probe ({e}); build it with `just proxy-static`")
    })
}

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "cul8er-t-{what}-{}-{n}-{:x}",
        std::process::id(),
        nanos % 0xfffff
    )
}

/// Deletes the instance when dropped, through the `incus` command.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        incus(&["delete", "--force", &self.0]);
    }
}

/// Runs `incus` against the test daemon, as an independent client; true on success.
fn incus(args: &[&str]) -> bool {
    Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

async fn launch(client: &Client, image: &str, what: &str) -> (String, Guard) {
    let name = unique(what);
    let guard = Guard(name.clone());
    client
        .instances()
        .create(&InstanceSpec::container(&name, InstanceSource::image_alias(image)).start(true))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    (name, guard)
}

async fn sh(client: &Client, instance: &str, script: &str) -> (i32, String) {
    let out = client
        .instances()
        .exec_recorded(instance, &ExecRequest::new(["/bin/sh", "-c", script]), WAIT)
        .await
        .unwrap();
    (out.exit_code, out.stdout_text().trim().to_owned())
}

fn spec(check: Check) -> GateSpec {
    GateSpec {
        check,
        interval: Duration::from_millis(200),
        timeout: Duration::from_secs(5),
        retries: 2,
        backoff_max: Duration::from_millis(400),
        start_period: Duration::ZERO,
        min_healthy_time: Duration::from_millis(400),
        deadline: Duration::from_secs(60),
    }
}

/// Runs a gate with an exec source; the outcome and the events it produced.
async fn gate(client: &Client, instance: &str, check: Check) -> (GateOutcome, Vec<HealthEvent>) {
    let source = ExecSource::new(client, instance, check.clone(), Some(probe_binary())).unwrap();
    let events = Mutex::new(Vec::new());
    let outcome = HealthGate::new(spec(check))
        .wait(instance, &source, None, &|e| events.lock().unwrap().push(e))
        .await;
    (outcome, events.into_inner().unwrap())
}

fn unhealthy_reason(outcome: &GateOutcome) -> String {
    match outcome {
        GateOutcome::Unhealthy { reason, last_check } => {
            assert_eq!(last_check.verdict, Verdict::Fail);
            reason.clone()
        }
        other => panic!("expected unhealthy, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_checks_http_tcp_and_commands_inside_busybox() {
    let client = Client::unix(socket()).unwrap();
    let (instance, _guard) = launch(&client, &busybox(), "hc-exec").await;
    let (code, _) = sh(
        &client,
        &instance,
        "mkdir -p /srv/www && echo 'hello cul8er' > /srv/www/index.html \
         && httpd -p 8080 -h /srv/www </dev/null >/dev/null 2>&1",
    )
    .await;
    assert_eq!(code, 0, "busybox httpd started");

    // The probe is pushed once; the same binary is then found and kept.
    let binary = probe_binary();
    assert_eq!(
        install_probe(&client, &instance, &binary).await.unwrap(),
        ProbeInstall::Pushed
    );
    assert_eq!(
        install_probe(&client, &instance, &binary).await.unwrap(),
        ProbeInstall::Reused
    );
    let (_, hash) = sh(&client, &instance, &format!("sha256sum {PROBE_PATH}")).await;
    assert!(hash.starts_with(&binary.sha256), "{hash}");

    // HTTP healthy, with a body match; every check is an event.
    let http = |status: u16, body: Option<&str>| Check::Http {
        port: 8080,
        path: "/index.html".into(),
        status,
        body_contains: body.map(str::to_owned),
    };
    let (outcome, events) = gate(&client, &instance, http(200, Some("hello"))).await;
    assert!(outcome.is_healthy(), "{outcome:?}");
    let passes = events
        .iter()
        .filter(|e| {
            matches!(e, HealthEvent::Check { result, .. }
                if result.verdict == Verdict::Pass && result.reason.contains("200"))
        })
        .count();
    assert!(
        passes >= 2,
        "min-healthy-time needs passes over 400 ms: {events:?}"
    );
    assert!(matches!(events.last(), Some(HealthEvent::GateEnded { .. })));

    // Wrong status, wrong body, nothing listening: unhealthy, each with its reason.
    let (outcome, _) = gate(&client, &instance, http(204, None)).await;
    let reason = unhealthy_reason(&outcome);
    assert!(reason.contains("200") && reason.contains("204"), "{reason}");
    assert!(reason.contains("failed 2 times in a row"), "{reason}");
    let (outcome, _) = gate(&client, &instance, http(200, Some("goodbye"))).await;
    let reason = unhealthy_reason(&outcome);
    assert!(reason.contains("goodbye"), "{reason}");
    let (outcome, _) = gate(
        &client,
        &instance,
        Check::Http {
            port: 8081,
            path: "/".into(),
            status: 200,
            body_contains: None,
        },
    )
    .await;
    let reason = unhealthy_reason(&outcome);
    assert!(reason.to_lowercase().contains("refused"), "{reason}");

    // TCP: the httpd port is open, another is not.
    let (outcome, _) = gate(&client, &instance, Check::Tcp { port: 8080 }).await;
    assert!(outcome.is_healthy(), "{outcome:?}");
    let (outcome, _) = gate(&client, &instance, Check::Tcp { port: 8081 }).await;
    let reason = unhealthy_reason(&outcome);
    assert!(reason.contains("tcp :8081"), "{reason}");

    // Commands: exit 0 is healthy; anything else is unhealthy with its status and words.
    let command = |script: &str| Check::Command {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
    };
    let (outcome, _) = gate(&client, &instance, command("test -f /srv/www/index.html")).await;
    assert!(outcome.is_healthy(), "{outcome:?}");
    let (outcome, _) = gate(
        &client,
        &instance,
        command("echo 'db not ready' >&2; exit 3"),
    )
    .await;
    let reason = unhealthy_reason(&outcome);
    assert!(
        reason.contains("status 3") && reason.contains("db not ready"),
        "{reason}"
    );
    let (outcome, _) = gate(
        &client,
        &instance,
        Check::Command {
            argv: vec!["/no/such/check".into()],
        },
    )
    .await;
    let reason = unhealthy_reason(&outcome);
    assert!(reason.contains("/no/such/check"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_stopped_mid_gate_is_a_crash_seen_through_events() {
    let client = Client::unix(socket()).unwrap();
    let (instance, _guard) = launch(&client, &busybox(), "hc-stop").await;
    // Polling once an hour: only the events stream can see the stop in time.
    let watch = CrashWatch::start(
        &client,
        WatchOptions {
            poll_interval: Duration::from_secs(3600),
        },
    )
    .await
    .unwrap();
    watch.watch(&instance, None, None).await.unwrap();
    let check = Check::Command {
        argv: vec!["true".into()],
    };
    let mut spec = spec(check.clone());
    // The next check long after the stop: the event, not a failed check, must tell.
    spec.interval = Duration::from_secs(10);
    spec.min_healthy_time = Duration::from_secs(50);
    let source = ExecSource::new(&client, &instance, check, None).unwrap();
    let (first_pass, passed) = tokio::sync::oneshot::channel::<()>();
    let first_pass = Mutex::new(Some(first_pass));
    let gate = HealthGate::new(spec);
    let began = Instant::now();
    let stopper = async {
        passed.await.unwrap();
        let name = instance.clone();
        tokio::task::spawn_blocking(move || incus(&["stop", "--force", &name]))
            .await
            .unwrap()
    };
    let on_event = |e: HealthEvent| {
        if let HealthEvent::Check { result, .. } = &e
            && result.verdict == Verdict::Pass
            && let Some(tx) = first_pass.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    };
    let (outcome, stopped) = tokio::join!(
        gate.wait(&instance, &source, Some(&watch), &on_event),
        stopper
    );
    assert!(stopped, "incus stop");
    let GateOutcome::Crashed { crash, reason } = &outcome else {
        panic!("expected a crash, got {outcome:?}")
    };
    assert_eq!(crash.instance, instance);
    assert_eq!(crash.kind, CrashKind::InstanceStopped, "{crash:?}");
    assert!(reason.contains("Incus event instance-"), "{reason}");
    assert!(
        began.elapsed() < Duration::from_secs(50),
        "before min-healthy-time ended"
    );
}

/// A release whose service exits two seconds after each start, under an init that
/// restarts it: the watch must catch it although the service "runs" again.
async fn flapping_service_is_caught(image: &str, what: &str) {
    let client = Client::unix(socket()).unwrap();
    let (instance, _guard) = launch(&client, image, what).await;
    let spec = ReleaseSpec {
        name: "flaky".into(),
        version: "1".into(),
        artifact: None,
        start: "sleep 2".into(),
        workdir: None,
        user: None,
        before_start: Vec::new(),
        after_start: Vec::new(),
    };
    let deployed = release::deploy_with(
        &client,
        &instance,
        &spec,
        &ResolvedEnv::new(),
        &DeployOptions::default(),
    )
    .await
    .unwrap();
    assert!(deployed.status.running, "{deployed:?}");
    let watch = CrashWatch::start(
        &client,
        WatchOptions {
            poll_interval: Duration::from_millis(500),
        },
    )
    .await
    .unwrap();
    watch
        .watch(&instance, Some(&spec), Some(deployed.status.clone()))
        .await
        .unwrap();
    // The health check itself keeps passing: only the watch can fail this gate.
    let check = Check::Command {
        argv: vec!["true".into()],
    };
    let mut gate_spec = spec_for_watch(check.clone());
    gate_spec.deadline = Duration::from_secs(60);
    let source = ExecSource::new(&client, &instance, check, None).unwrap();
    let began = Instant::now();
    let outcome = HealthGate::new(gate_spec)
        .wait(&instance, &source, Some(&watch), &|_| {})
        .await;
    let GateOutcome::Crashed { crash, reason } = &outcome else {
        panic!("expected a crash, got {outcome:?}")
    };
    assert!(
        matches!(
            crash.kind,
            CrashKind::ServiceRestarted | CrashKind::ServiceExited
        ),
        "{crash:?}"
    );
    assert!(reason.contains("service flaky"), "{reason}");
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "caught long before the 60 s deadline: {:?}",
        began.elapsed()
    );
}

fn spec_for_watch(check: Check) -> GateSpec {
    let mut spec = spec(check);
    spec.interval = Duration::from_secs(1);
    spec.min_healthy_time = Duration::from_secs(50);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_respawned_by_busybox_init_is_a_crash() {
    flapping_service_is_caught(&busybox(), "hc-bb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_restarted_by_systemd_is_a_crash() {
    let Some(image) = live_support::debian_image() else {
        return;
    };
    flapping_service_is_caught(&image, "hc-deb").await;
}
