//! Rollout benchmark against the local test Incus (`just bench-rollout`):
//!
//! 1. From nothing to a 3-replica busybox app answering through the edge: wall time,
//!    and the Incus operation waits summed over the steps (steps run in parallel, so
//!    the sum is compared with the steps' own summed time). Goal: under 5 s.
//! 2. A rolling update of the 3 replicas whose health passes at once, against a
//!    scripted replay of the same calls and configured waits with no cul8er logic
//!    (per replica: drain on the edge, snapshot, config update, release deploy, one
//!    probe, min-healthy-time, weight back; then the snapshot retention). Goal: cul8er
//!    within 1.15× of the replay. Printed, not enforced: the machine is shared.
//!
//! Needs the static proxy binary (`just proxy-static`, or `CUL8ER_PROXY_BINARY`).
//! Everything is named `cul8er-t-bench-...` and removed at the end.

// A benchmark measures wall time and prints its report.
#![allow(
    clippy::disallowed_types,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cul8er_core::edge::{Edge, EdgeBinary};
use cul8er_core::execute::{ApplyEvent, Cancel};
use cul8er_core::health::{Check, ExecSource, HealthSource as _};
use cul8er_core::lock::Holder;
use cul8er_core::release::{self, ResolvedEnv};
use cul8er_core::rollout::snapshot;
use cul8er_core::state::StateDir;
use cul8er_core::topology::{self, LoadOptions};
use cul8er_core::{ApplyRequest, Deployment};

fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET").map_or_else(
        || PathBuf::from("/var/lib/incus/unix.socket"),
        PathBuf::from,
    )
}

fn binary() -> EdgeBinary {
    let path = std::env::var_os("CUL8ER_PROXY_BINARY").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/x86_64-unknown-linux-gnu/release/cul8er-proxy"
            ))
        },
        PathBuf::from,
    );
    EdgeBinary::read(&path).unwrap_or_else(|e| {
        panic!("no static cul8er-proxy ({e}): run `just proxy-static` or set CUL8ER_PROXY_BINARY")
    })
}

fn incus_quiet(args: &[&str]) -> String {
    Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

struct Cleanup {
    topology: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let prefix = format!("{}-", self.topology);
        for name in incus_quiet(&["list", "--format", "csv", "-c", "n"])
            .lines()
            .filter(|l| l.starts_with(&prefix))
        {
            incus_quiet(&["delete", "--force", name]);
        }
        incus_quiet(&["network", "delete", &self.network]);
        for key in ["lease", "revisions"] {
            incus_quiet(&[
                "project",
                "unset",
                "default",
                &format!("user.cul8er.{key}.{}", self.topology),
            ]);
        }
    }
}

fn source(name: &str, network: &str, subnet: &str, port: u16, version: &str) -> String {
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
        }}
        strategy rolling max-parallel=1 {{
            health http path="/" port=8080 interval="200ms" timeout="200ms" retries=1 min-healthy-time="0s" deadline="20s"
            rollback automatic snapshot=#true keep=2
        }}
    }}
}}
"#,
        image = std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into()),
    )
}

fn deployment(dir: &Path, text: &str) -> Deployment {
    let path = dir.join("cul8er.kdl");
    fs_err::write(&path, text).unwrap();
    let env = |_: &str| None;
    let topology = topology::load(&path, &LoadOptions::new(&env))
        .unwrap()
        .remove(0);
    let mut d = Deployment::with_clients(
        topology,
        BTreeMap::from([(
            "local".to_owned(),
            incus_api::Client::unix(socket()).unwrap(),
        )]),
        StateDir::new(dir.join(".cul8er")),
    );
    d.options.edge_binary = Some(binary());
    d
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Applies; wall time, summed step time and summed Incus waits, in seconds.
async fn apply(d: &Deployment) -> (f64, f64, f64) {
    let begin = Instant::now();
    let plan = d.plan().await.unwrap();
    let sums = Mutex::new((0u64, 0u64));
    let request = ApplyRequest {
        parallelism: 8,
        destroy: None,
        env: &no_env,
        holder: Holder::current(),
    };
    let report = d
        .apply(&plan, &request, &Cancel::new(), &|e: &ApplyEvent| {
            if let ApplyEvent::StepDone {
                millis,
                waiting_millis,
                ..
            } = e
            {
                let mut s = sums.lock().unwrap();
                s.0 += millis;
                s.1 += waiting_millis;
            }
        })
        .await
        .unwrap();
    assert!(report.outcome.succeeded(), "{:#?}", report.outcome);
    let (steps, waits) = sums.into_inner().unwrap();
    (
        begin.elapsed().as_secs_f64(),
        steps as f64 / 1000.0,
        waits as f64 / 1000.0,
    )
}

async fn answers(port: u16, want: &str) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for _ in 0..2000 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
            let mut text = String::new();
            let _ = s.read_to_string(&mut text).await;
            if text.contains(want) {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{want} never answered on 127.0.0.1:{port}");
}

/// The same calls as a rolling update of `d`'s replicas, in a script.
async fn replay(d: &Deployment, name: &str, version: &str) -> f64 {
    let client = &d.clients["local"];
    let resource = &d.topology.resources[0];
    let mut spec = resource.release.clone().unwrap();
    spec.version = version.to_owned();
    spec.before_start[1] = format!("sh -c 'echo web {version} > /srv/www/index.html'");
    let edge = Edge::connect(client, format!("{name}-edge"));
    let begin = Instant::now();
    for replica in 1..=3 {
        let instance = format!("{name}-web-{replica}");
        edge.drain("web", &instance).await.unwrap();
        snapshot::take(
            client,
            &instance,
            &format!("cul8er-replay-{version}"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
        let (current, etag) = client.instances().get_with_etag(&instance).await.unwrap();
        let mut put = current.to_put();
        put.config
            .insert("user.cul8er.release".into(), version.to_owned());
        client
            .instances()
            .update(&instance, &put, etag.as_deref())
            .await
            .unwrap()
            .wait(Duration::from_secs(60))
            .await
            .unwrap();
        release::deploy(client, &instance, &spec, &ResolvedEnv::default())
            .await
            .unwrap();
        let probe = ExecSource::new(
            client,
            &instance,
            Check::Http {
                port: 8080,
                path: "/".into(),
                status: 200,
                body_contains: None,
            },
            Some(binary()),
        )
        .unwrap();
        let mut passed = false;
        for _ in 0..100 {
            if probe.check(Duration::from_millis(200)).await.verdict
                == cul8er_core::health::Verdict::Pass
            {
                passed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(passed, "{instance} never passed its probe in the replay");
        edge.set_weights("web", &[(&instance, 1)]).await.unwrap();
        snapshot::prune(client, &instance, 2, Duration::from_secs(60))
            .await
            .unwrap();
    }
    begin.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tag = std::process::id() % 0xffff;
        let name = format!("cul8er-t-bench-{tag:x}");
        let network = format!("c8b{tag:x}");
        let subnet = format!("10.{}.{}.1/24", 60 + tag % 30, (tag / 30) % 250);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let _cleanup = Cleanup {
            topology: name.clone(),
            network: network.clone(),
        };
        let dir = tempfile::tempdir().unwrap();

        let begin = Instant::now();
        let d = deployment(dir.path(), &source(&name, &network, &subnet, port, "1"));
        let (_, steps, waits) = apply(&d).await;
        answers(port, "web 1").await;
        let first = begin.elapsed().as_secs_f64();
        println!(
            "nothing -> 3 replicas serving through the edge: {first:.2} s (goal < 5 s: {}); \
             Incus operation waits {waits:.2} s of {steps:.2} s summed step time ({:.0}%)",
            if first < 5.0 { "met" } else { "missed" },
            100.0 * waits / steps.max(f64::EPSILON)
        );

        let d = deployment(dir.path(), &source(&name, &network, &subnet, port, "2"));
        let (rolled, _, _) = apply(&d).await;
        answers(port, "web 2").await;
        let replayed = replay(&d, &name, "3").await;
        answers(port, "web 3").await;
        let ratio = rolled / replayed;
        println!(
            "rolling update of 3 replicas: cul8er {rolled:.2} s (plan and apply), scripted \
             replay {replayed:.2} s, ratio {ratio:.2} (goal <= 1.15: {})",
            if ratio <= 1.15 { "met" } else { "missed" }
        );
    });
}
