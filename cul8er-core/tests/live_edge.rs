//! The edge against a real incusd (the standalone daemon: the one-machine cluster
//! cannot host managed bridges): a 3-replica HTTP resource served through
//! `cul8er-proxy` in its edge container on a loopback port, every replica reached,
//! a stopped replica's traffic moved to the others with no failed request after its
//! ejection, the client's address kept in `X-Forwarded-For`, a second apply planning
//! nothing, and destroy removing the edge.
//!
//! Needs the static proxy binary (`just proxy-static`, or `CUL8ER_PROXY_BINARY`).
#![allow(clippy::unwrap_used)]

mod live_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cul8er_core::edge::Edge;
use cul8er_core::execute::Cancel;
use cul8er_core::lock::Holder;
use cul8er_core::plan::{Action, ObjectKind};
use cul8er_core::state::StateDir;
use cul8er_core::topology::{self, LoadOptions};
use cul8er_core::{ApplyRequest, Deployment};
use live_support::{image, incus, instances_named, proxy_binary, socket};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Removes the topology's instances, bridge and profiles when dropped.
struct Cleanup {
    topology: String,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        live_support::remove_topology(&self.topology, Some(&self.network));
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    deployment: Deployment,
    cleanup: Cleanup,
    port: u16,
    bridge_host: IpAddr,
    _dir: tempfile::TempDir,
}

/// A 3-replica busybox httpd whose CGI answers with the replica's host name and the
/// `X-Forwarded-For` it received.
fn setup(what: &str) -> Setup {
    static N: AtomicU32 = AtomicU32::new(0);
    let tag = (std::process::id()
        .wrapping_mul(31)
        .wrapping_add(N.fetch_add(1, Ordering::Relaxed))
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos(),
        ))
        % 0xf_ffff;
    let name = format!("cul8er-t-{what}-{tag:x}");
    let network = format!("c8e{tag:x}");
    let (a, b) = (140 + tag % 40, (tag / 40) % 250);
    let bridge_host: IpAddr = format!("10.{a}.{b}.1").parse().unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    fs_err::create_dir_all(site.join("cgi-bin")).unwrap();
    let cgi = site.join("cgi-bin/who");
    fs_err::write(
        &cgi,
        "#!/bin/sh\nprintf 'Content-Type: text/plain\\r\\n\\r\\n'\necho \"host=$(hostname) xff=$HTTP_X_FORWARDED_FOR\"\n",
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs_err::set_permissions(&cgi, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let source = format!(
        r#"topology {name} {{
    host local
    network {network} subnet="{bridge_host}/24" nat=#false
    resource web {{
        image "{image}"
        replicas 3
        network {network} {{
            expose 8080 public={port} protocol=http
        }}
        release web version="1" {{
            artifact "{site}"
            start "httpd -f -p 8080 -h /opt/web/current"
        }}
        strategy rolling {{
            health http path="/cgi-bin/who" port=8080 interval="1s" timeout="1s"
        }}
    }}
}}
"#,
        image = image(),
        site = site.display(),
    );
    let path = dir.path().join("cul8er.kdl");
    fs_err::write(&path, &source).unwrap();
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
        StateDir::new(dir.path().join(".cul8er")),
    );
    deployment.options.edge_binary = Some(proxy_binary());
    Setup {
        deployment,
        cleanup: Cleanup {
            topology: name,
            network,
        },
        port,
        bridge_host,
        _dir: dir,
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn request(destroy: Option<bool>) -> ApplyRequest<'static> {
    ApplyRequest {
        parallelism: 8,
        destroy,
        env: &no_env,
        holder: Holder::current(),
    }
}

/// One request on a new connection, from `source` when given; the status line and
/// the body.
async fn get(port: u16, source: Option<IpAddr>) -> std::io::Result<(String, String)> {
    let target = SocketAddr::from(([127, 0, 0, 1], port));
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let mut stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(target))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    stream
        .write_all(b"GET /cgi-bin/who HTTP/1.0\r\nHost: web.test\r\n\r\n")
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .map_err(|_| std::io::Error::other("answer timed out"))??;
    let status = text.lines().next().unwrap_or_default().to_owned();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

fn host_of(body: &str) -> String {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix("host="))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_behind_the_edge_share_traffic_survive_a_stop_and_keep_client_addresses() {
    let Setup {
        deployment: d,
        cleanup,
        port,
        bridge_host,
        _dir,
    } = setup("edge");
    let name = cleanup.topology.clone();
    let edge_name = format!("{name}-edge");

    let plan = d.plan().await.unwrap();
    let edge_change = plan
        .changes
        .iter()
        .find(|c| c.kind == ObjectKind::Edge)
        .expect("the plan configures the edge");
    assert_eq!(edge_change.action, Action::Create, "{plan}");
    assert!(
        plan.changes
            .iter()
            .any(|c| c.name == edge_name && c.kind == ObjectKind::Instance),
        "{plan}"
    );
    let text = plan.to_string();
    assert!(text.contains(&format!("{name}-web-3")), "{text}");

    let report = d
        .apply(&plan, &request(None), &Cancel::new(), &|_| {})
        .await
        .unwrap();
    let failures: Vec<_> = report.outcome.failures().collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let devices = incus(&["config", "device", "show", &edge_name]);
    assert!(
        devices.contains(&format!("listen: tcp:127.0.0.1:{port}")),
        "{devices}"
    );

    // Every replica answers through the edge.
    let mut seen = BTreeSet::new();
    let mut answers = 0;
    for _ in 0..300 {
        if let Ok((status, body)) = get(port, None).await
            && status.contains(" 200 ")
        {
            answers += 1;
            seen.insert(host_of(&body));
            if seen.len() == 3 && answers >= 30 {
                break;
            }
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let wanted: BTreeSet<String> = (1..=3).map(|i| format!("{name}-web-{i}")).collect();
    assert_eq!(seen, wanted, "replicas reached through 127.0.0.1:{port}");

    // A client bound to the bridge's host-side address: that address reaches the app.
    let (status, body) = get(port, Some(bridge_host)).await.unwrap();
    assert!(status.contains(" 200 "), "{status}");
    assert!(
        body.contains(&format!("xff={bridge_host}")),
        "X-Forwarded-For should carry {bridge_host}: {body:?}"
    );

    // Nothing to do the second time.
    let again = d.plan().await.unwrap();
    assert!(!again.has_changes(), "second plan:\n{again}");
    assert!(
        again.notes.iter().any(|n| n.contains("3 of 3 available")),
        "{:?}",
        again.notes
    );

    // Status shows the edge's backends with weights and health.
    let status = d.status().await.unwrap();
    assert_eq!(status.edges.len(), 1);
    let report = status.edges[0].health.as_ref().expect("the edge runs");
    assert_eq!(report.services[0].available, 3, "{report:?}");
    assert!(report.services[0].backends.iter().all(|b| b.weight == 1));

    // Stop one replica: once the edge has ejected it, no request fails.
    let client = incus_api::Client::unix(socket()).unwrap();
    let edge = Edge::connect(&client, &edge_name);
    let stopped = format!("{name}-web-2");
    incus(&["stop", "--force", &stopped]);
    let mut ejected = false;
    for _ in 0..100 {
        let health = edge.backend_health("web").await.unwrap();
        if health.available == 2 {
            ejected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ejected, "the edge never took {stopped} out");
    let mut after = BTreeSet::new();
    for i in 0..60 {
        let (status, body) = get(port, None)
            .await
            .unwrap_or_else(|e| panic!("request {i} after the ejection failed: {e}"));
        assert!(
            status.contains(" 200 "),
            "request {i} after the ejection: {status} {body}"
        );
        after.insert(host_of(&body));
    }
    let survivors: BTreeSet<String> = [1, 3].map(|i| format!("{name}-web-{i}")).into();
    assert_eq!(after, survivors);
    let metrics = edge.backend_metrics("web").await.unwrap();
    assert_eq!(metrics.len(), 3);
    assert!(metrics.iter().all(|b| b.requests > 0), "{metrics:#?}");

    // Destroy removes the edge with the rest.
    let destroy = d.plan_destroy(false).await.unwrap();
    let report = d
        .apply(&destroy, &request(Some(false)), &Cancel::new(), &|_| {})
        .await
        .unwrap();
    assert!(report.outcome.succeeded(), "{:#?}", report.outcome);
    assert!(instances_named(&format!("{name}-")).is_empty());
    drop(cleanup);
}
