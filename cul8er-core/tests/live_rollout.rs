//! Rollouts against a real incusd, with a bounded load generator on the published
//! port the whole time (8 clients, a new connection per request, a 2 s client
//! timeout, stopped after the rollout or at its request and time bounds):
//!
//! - rolling v1 → v2 over 3 replicas behind the edge: zero failed requests, every
//!   answer from v1 or v2 while it runs, only v2 after;
//! - v3 whose health check fails: rolled back automatically, every answer still v2,
//!   zero failed requests, the pre-deploy snapshot restored, the revision recorded as
//!   rolled back;
//! - an image change whose replacement fails its gate: the old instance comes back
//!   under its name, with its files; one that passes: the kept instance is deleted.
//!
//! Needs the static proxy binary (`just proxy-static`, or `CUL8ER_PROXY_BINARY`).
#![allow(clippy::unwrap_used)]

mod live_support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cul8er_core::execute::{ApplyEvent, Cancel};
use cul8er_core::lock::Holder;
use cul8er_core::rollout::{RolloutResult, history};
use cul8er_core::state::StateDir;
use cul8er_core::topology::{self, LoadOptions};
use cul8er_core::{ApplyReport, ApplyRequest, Deployment};
use live_support::load::{Load, get};
use live_support::{image, incus, instances_named, proxy_binary, socket};

/// Removes the topology's instances, bridge and profiles when dropped.
struct Cleanup {
    topology: String,
    network: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        live_support::remove_topology(&self.topology, self.network.as_deref());
    }
}

fn tag() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    (std::process::id()
        .wrapping_mul(31)
        .wrapping_add(N.fetch_add(1, Ordering::Relaxed))
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        ))
        % 0xf_ffff
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn request() -> ApplyRequest<'static> {
    ApplyRequest {
        parallelism: 8,
        destroy: None,
        env: &no_env,
        holder: Holder::current(),
    }
}

/// Loads `source` (written to `dir`) and binds it to the test daemon.
fn deployment(dir: &std::path::Path, source: &str) -> Deployment {
    let path = dir.join("cul8er.kdl");
    fs_err::write(&path, source).unwrap();
    let env = |_: &str| None;
    let topology = topology::load(&path, &LoadOptions::new(&env))
        .unwrap()
        .remove(0);
    let mut deployment = Deployment::with_clients(
        topology,
        BTreeMap::from([(
            "local".to_owned(),
            incus_api::Client::unix(socket()).unwrap(),
        )]),
        StateDir::new(dir.join(".cul8er")),
    );
    deployment.options.edge_binary = Some(proxy_binary());
    deployment
}

/// Plans and applies, keeping the progress messages.
async fn apply(d: &Deployment) -> (ApplyReport, Vec<String>) {
    let plan = d.plan().await.unwrap();
    let events = Mutex::new(Vec::new());
    let report = d
        .apply(&plan, &request(), &Cancel::new(), &|e: &ApplyEvent| {
            events.lock().unwrap().push(format!("{e:?}"));
        })
        .await
        .unwrap();
    (report, events.into_inner().unwrap())
}

fn web_source(
    name: &str,
    network: &str,
    subnet: &str,
    port: u16,
    version: &str,
    healthy: bool,
) -> String {
    let health_file = if healthy {
        "sh -c 'echo ok > /srv/www/health.txt'"
    } else {
        "rm -f /srv/www/health.txt"
    };
    format!(
        r#"topology {name} {{
    host local
    network {network} subnet="{subnet}" nat=#false
    resource web {{
        image "{image}"
        replicas 3
        network {network} {{
            expose 8080 public={port} protocol=http
        }}
        release web version="{version}" {{
            start "httpd -f -p 8080 -h /srv/www"
            before-start "mkdir -p /srv/www"
            before-start "sh -c 'echo web {version} > /srv/www/index.html'"
            before-start "{health_file}"
        }}
        strategy rolling max-parallel=1 {{
            health http path="/health.txt" port=8080 interval="1s" timeout="1s" retries=2 min-healthy-time="1s" deadline="20s"
            rollback automatic snapshot=#true keep=2
        }}
    }}
}}
"#,
        image = image(),
    )
}

/// Until every replica answers `want` through the edge (at most 30 s).
async fn serving(port: u16, want: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..300 {
        seen.clear();
        for _ in 0..12 {
            if let Ok(body) = get(port).await {
                seen.insert(body);
            }
        }
        if seen.len() == 1 && seen.contains(want) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_behind_the_edge_serves_throughout_and_a_failed_gate_rolls_back() {
    let tag = tag();
    let name = format!("cul8er-t-roll-{tag:x}");
    let network = format!("c8r{tag:x}");
    let subnet = format!("10.{}.{}.1/24", 100 + tag % 40, (tag / 40) % 250);
    let port = free_port();
    let _cleanup = Cleanup {
        topology: name.clone(),
        network: Some(network.clone()),
    };
    let dir = tempfile::tempdir().unwrap();
    let source =
        |version: &str, healthy| web_source(&name, &network, &subnet, port, version, healthy);

    // v1 from nothing.
    let d = deployment(dir.path(), &source("1", true));
    let (report, _) = apply(&d).await;
    assert!(report.outcome.succeeded(), "{:#?}", report.outcome);
    assert_eq!(
        serving(port, "web 1").await,
        BTreeSet::from(["web 1".to_owned()])
    );

    // Rolling v1 → v2 under load.
    let load = Load::start(port);
    let d = deployment(dir.path(), &source("2", true));
    let (report, events) = apply(&d).await;
    let (answers, failures) = load.finish().await;
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );
    let record = report.rollout.clone().expect("a rollout record");
    assert_eq!(record.result, RolloutResult::Succeeded);
    assert_eq!(record.resources[0].instances.len(), 3, "{record:#?}");
    assert!(
        failures.is_empty(),
        "failed requests during v1 → v2: {failures:?}"
    );
    // The load really ran during the rollout: zero failures out of many requests.
    let served: u64 = answers.values().sum();
    assert!(
        served >= 100,
        "only {served} answers during v1 → v2: {answers:?}"
    );
    let allowed = BTreeSet::from(["web 1".to_owned(), "web 2".to_owned()]);
    assert!(
        answers.keys().all(|a| allowed.contains(a)),
        "answers during v1 → v2: {answers:?}"
    );
    assert!(
        answers.get("web 2").copied().unwrap_or(0) > 0,
        "{answers:?}"
    );
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );
    // Each replica was drained before its change, and took a snapshot named after
    // the revision.
    let drains = events
        .iter()
        .filter(|e| e.contains("draining it on the edge"))
        .count();
    assert_eq!(drains, 3, "{events:#?}");
    let web1 = format!("{name}-web-1");
    let snapshots = incus(&["snapshot", "list", &web1, "--format", "csv", "-c", "n"]);
    assert!(
        snapshots.contains(&format!("cul8er-{}", report.revision)),
        "{snapshots}"
    );

    // v3 fails its health check: rolled back, v2 serves throughout.
    let load = Load::start(port);
    let d = deployment(dir.path(), &source("3", false));
    let (bad, events) = apply(&d).await;
    let (answers, failures) = load.finish().await;
    assert!(!bad.outcome.succeeded(), "v3 must fail: {events:#?}");
    let record = bad.rollout.clone().unwrap();
    assert!(
        matches!(&record.result, RolloutResult::RolledBack { reason } if reason.contains("health gate")),
        "{record:#?}"
    );
    // Only the first batch was changed, and put back from its snapshot.
    assert_eq!(
        record.resources[0].instances,
        std::slice::from_ref(&web1),
        "{record:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.contains(&format!("restoring snapshot cul8er-{}", bad.revision))),
        "{events:#?}"
    );
    assert!(
        failures.is_empty(),
        "failed requests during v3: {failures:?}"
    );
    let served: u64 = answers.values().sum();
    assert!(served >= 50, "only {served} answers during v3: {answers:?}");
    assert_eq!(
        answers.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["web 2".to_owned()]),
        "only v2 may answer while v3 fails"
    );
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );
    let restored = incus(&["exec", &web1, "--", "cat", "/srv/www/index.html"]);
    assert_eq!(restored.trim(), "web 2");

    // History: v1 and v2 succeeded, v3 rolled back with its reason; rollback goes to v1.
    let revisions = history::history(&d.state, &name).unwrap();
    let outcomes: Vec<&str> = revisions.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["succeeded", "succeeded", "rolled-back"],
        "{revisions:#?}"
    );
    assert!(revisions[2].versions.contains(&"web=3".to_owned()));
    assert!(
        revisions[2]
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains("health gate")
    );
    assert_eq!(
        history::rollback_target(&revisions, &name, None).unwrap(),
        revisions[0].revision
    );
}

fn fingerprint(alias: &str) -> String {
    let text = incus(&["query", &format!("/1.0/images/aliases/{alias}")]);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value["target"].as_str().unwrap().to_owned()
}

fn single_source(name: &str, image: &str, check: &str) -> String {
    format!(
        r#"topology {name} {{
    host local
    resource app {{
        image "{image}"
        strategy rolling {{
            health command {check} interval="1s" timeout="1s" retries=2 min-healthy-time="1s" deadline="15s"
        }}
    }}
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_change_keeps_the_old_instance_until_the_replacement_passes() {
    let tag = tag();
    let name = format!("cul8er-t-img-{tag:x}");
    let _cleanup = Cleanup {
        topology: name.clone(),
        network: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let alias = image();
    let by_fingerprint = fingerprint(&alias);
    let app = format!("{name}-app-1");

    let d = deployment(dir.path(), &single_source(&name, &alias, r#""true""#));
    let (report, _) = apply(&d).await;
    assert!(report.outcome.succeeded(), "{:#?}", report.outcome);

    // A replacement that passes: the kept instance is gone afterwards.
    incus(&["exec", &app, "--", "touch", "/root/first"]);
    let d = deployment(
        dir.path(),
        &single_source(&name, &by_fingerprint, r#""true""#),
    );
    let (report, events) = apply(&d).await;
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );
    assert!(
        events
            .iter()
            .any(|e| e.contains(&format!("keeping the old instance as {app}-old"))),
        "{events:#?}"
    );
    let left = instances_named(&format!("{name}-"));
    assert_eq!(
        left.keys().cloned().collect::<Vec<_>>(),
        std::slice::from_ref(&app),
        "{left:?}"
    );
    let fresh = Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(["exec", &app, "--", "test", "-f", "/root/first"])
        .status()
        .unwrap();
    assert!(!fresh.success(), "the replacement is a new instance");

    // A replacement that fails: the old instance comes back, with its files.
    incus(&["exec", &app, "--", "touch", "/root/marker"]);
    let d = deployment(
        dir.path(),
        &single_source(&name, &alias, r#""test" "-f" "/root/marker""#),
    );
    let (bad, events) = apply(&d).await;
    assert!(!bad.outcome.succeeded(), "{events:#?}");
    let record = bad.rollout.unwrap();
    assert!(
        matches!(record.result, RolloutResult::RolledBack { .. }),
        "{record:#?}"
    );
    let left = instances_named(&format!("{name}-"));
    assert_eq!(
        left,
        BTreeMap::from([(app.clone(), "RUNNING".to_owned())]),
        "only the old instance, running"
    );
    incus(&["exec", &app, "--", "test", "-f", "/root/marker"]);
}

fn crash_source(name: &str, version: &str, start: &str) -> String {
    format!(
        r#"topology {name} {{
    host local
    resource app {{
        image "{image}"
        release app version="{version}" {{
            start "{start}"
            before-start "mkdir -p /srv/www"
            before-start "sh -c 'echo app {version} > /srv/www/index.html'"
        }}
        strategy rolling {{
            health command "true" interval="1s" timeout="1s" retries=2 min-healthy-time="6s" deadline="30s"
        }}
    }}
}}
"#,
        image = image(),
    )
}

/// A release whose service exits 2 s after it starts (and is started again by the
/// image's init): its check (`true`) always passes, so only the crash watch can fail
/// the gate — and it must, before min-healthy-time is over; the snapshot is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_exits_after_starting_is_caught_by_the_crash_watch_and_rolled_back() {
    let tag = tag();
    let name = format!("cul8er-t-crash-{tag:x}");
    let _cleanup = Cleanup {
        topology: name.clone(),
        network: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let app = format!("{name}-app-1");
    let d = deployment(
        dir.path(),
        &crash_source(&name, "1", "httpd -f -p 8080 -h /srv/www"),
    );
    let (report, events) = apply(&d).await;
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );

    let d = deployment(
        dir.path(),
        &crash_source(&name, "2", "sh -c 'sleep 2; exit 1'"),
    );
    let (bad, events) = apply(&d).await;
    assert!(!bad.outcome.succeeded(), "{events:#?}");
    let record = bad.rollout.unwrap();
    assert!(
        matches!(&record.result, RolloutResult::RolledBack { reason } if reason.contains("health gate")),
        "{record:#?}\n{events:#?}"
    );
    let restored = incus(&["exec", &app, "--", "cat", "/srv/www/index.html"]);
    assert_eq!(restored.trim(), "app 1");
}

/// The rolling update on the Debian image, where the release runs under systemd:
/// v1 → v2 passes with a snapshot taken; v3 whose check fails is restored to v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_update_on_the_debian_image_with_systemd() {
    let debian =
        std::env::var("CUL8ER_TEST_DEBIAN_IMAGE").unwrap_or_else(|_| "cul8er-debian".into());
    let tag = tag();
    let name = format!("cul8er-t-deb-{tag:x}");
    let _cleanup = Cleanup {
        topology: name.clone(),
        network: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let app = format!("{name}-app-1");
    let source = |version: &str, marker: &str| {
        format!(
            r#"topology {name} {{
    host local
    resource app {{
        image "{debian}"
        release app version="{version}" {{
            start "/bin/sleep 1000000"
            before-start "/bin/sh -c 'echo app {version} > /root/version'"
        }}
        strategy rolling {{
            health command "/bin/grep" "-q" "{marker}" "/root/version" interval="1s" timeout="1s" retries=2 min-healthy-time="2s" deadline="60s"
        }}
    }}
}}
"#
        )
    };
    let d = deployment(dir.path(), &source("1", "app"));
    let (report, events) = apply(&d).await;
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );

    let d = deployment(dir.path(), &source("2", "app"));
    let (report, events) = apply(&d).await;
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );
    assert_eq!(
        report.rollout.unwrap().result,
        RolloutResult::Succeeded,
        "{events:#?}"
    );
    assert_eq!(
        incus(&["exec", &app, "--", "cat", "/root/version"]).trim(),
        "app 2"
    );
    let snapshots = incus(&["snapshot", "list", &app, "--format", "csv", "-c", "n"]);
    assert!(
        snapshots.contains(&format!("cul8er-{}", report.revision)),
        "{snapshots}"
    );

    let d = deployment(dir.path(), &source("3", "never-there"));
    let (bad, events) = apply(&d).await;
    assert!(
        matches!(
            bad.rollout.unwrap().result,
            RolloutResult::RolledBack { .. }
        ),
        "{events:#?}"
    );
    assert_eq!(
        incus(&["exec", &app, "--", "cat", "/root/version"]).trim(),
        "app 2"
    );
}
