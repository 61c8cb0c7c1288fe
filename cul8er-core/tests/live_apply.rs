//! plan, apply, status and destroy against a real incusd, checked with the `incus`
//! command as an independent client: the demo deployed and served, a second apply
//! planning nothing, in-place and replacing changes, drift made by hand and put back,
//! two applies at once, and a deleted state directory.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod live_support;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use cul8er_core::execute::{ApplyEvent, Cancel, StepStatus};
use cul8er_core::lock::{Holder, LeaseScope, LockError};
use cul8er_core::plan::Action;
use cul8er_core::{ApplyReport, ApplyRequest, DeployError, Deployment};
use live_support::{deployment, incus, instances_named, network_exists, topology};

fn no_env(_: &str) -> Option<String> {
    None
}

fn request(user: &str) -> ApplyRequest<'static> {
    ApplyRequest {
        parallelism: 8,
        destroy: None,
        env: &no_env,
        holder: Holder {
            user: user.to_owned(),
            ..Holder::current()
        },
    }
}

async fn plan_and_apply(deployment: &Deployment) -> ApplyReport {
    let plan = deployment.plan().await.unwrap();
    let events = Mutex::new(Vec::new());
    let report = deployment
        .apply(&plan, &request("ops"), &Cancel::new(), &|e: &ApplyEvent| {
            if std::env::var_os("CUL8ER_TEST_VERBOSE").is_some() {
                eprintln!("{e:?}");
            }
            events.lock().unwrap().push(e.clone());
        })
        .await
        .unwrap();
    let failures: Vec<_> = report.outcome.failures().collect();
    assert!(failures.is_empty(), "failed steps: {failures:#?}");
    let events = events.into_inner().unwrap();
    assert!(
        matches!(events.first(), Some(ApplyEvent::Begin { .. })),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| matches!(e, ApplyEvent::End { .. })),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            ApplyEvent::StepFailed { .. } | ApplyEvent::End { failed: 1.., .. }
        )),
        "{events:?}"
    );
    report
}

async fn http_get(port: u16) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// The demo, deployed for real: every instance runs, the single-replica `api` answers
/// on loopback through its proxy device, a second apply plans nothing, status agrees,
/// the last web replica deleted by hand is drift that apply puts back, and destroy
/// leaves nothing of it behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_deploys_serves_replans_nothing_and_destroys() {
    let (topology, path, cleanup) = topology("demo", &live_support::demo_source());
    let name = topology.name.clone();
    let mut d = deployment(topology, &cleanup.dir.path().join(".cul8er"));
    // The replicated `web` is published through the edge, which runs the static
    // cul8er-proxy (`just proxy-static`).
    let proxy = std::env::var_os("CUL8ER_PROXY_BINARY").map_or_else(
        || {
            std::path::PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/x86_64-unknown-linux-gnu/release/cul8er-proxy"
            ))
        },
        std::path::PathBuf::from,
    );
    d.options.edge_binary = Some(cul8er_core::edge::locate_binary(Some(&proxy)).unwrap());
    let report = plan_and_apply(&d).await;
    assert!(report.plan.summary.create >= 6, "{}", report.plan);
    let running: BTreeMap<String, String> = instances_named(&format!("{name}-"))
        .into_iter()
        .filter(|(n, _)| !n.ends_with("-edge"))
        .collect();
    assert_eq!(running.len(), 5, "{running:?}");
    assert!(running.values().all(|s| s == "RUNNING"), "{running:?}");
    assert!(network_exists(&cleanup.names.network));

    // The api's release answers on the host through its proxy device, on loopback.
    let api_port = cleanup.names.ports[1];
    let mut answer = String::new();
    for _ in 0..50 {
        answer = http_get(api_port).await;
        if answer.contains("api 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        answer.contains("api 1"),
        "answer on 127.0.0.1:{api_port}: {answer:?}"
    );
    // Whatever publishes it (a proxy device, or the edge for HTTP), every published
    // port of the topology listens on loopback only.
    let mut listens = Vec::new();
    for instance in instances_named(&format!("{name}-")).keys() {
        let devices = incus(&["config", "device", "show", instance]);
        listens.extend(
            devices
                .lines()
                .filter_map(|l| l.trim().strip_prefix("listen: "))
                .map(str::to_owned),
        );
    }
    assert!(!listens.is_empty());
    assert!(
        listens.iter().all(|l| l.starts_with("tcp:127.0.0.1:")),
        "{listens:?}"
    );
    assert!(
        listens.contains(&format!("tcp:127.0.0.1:{api_port}")),
        "{listens:?}"
    );

    let again = d.plan().await.unwrap();
    assert!(!again.has_changes(), "second plan:\n{again}");
    let status = d.status().await.unwrap();
    assert!(
        status
            .instances
            .iter()
            .all(|i| i.up_to_date && i.status == "Running")
    );
    assert!(status.instances.len() >= 5, "{status:?}");
    let revisions = d.state.revisions(&name).unwrap();
    assert_eq!(revisions, std::slice::from_ref(&report.revision));

    // The last replica deleted by hand: no replica above it, but the edge still routes
    // to it, so it is drift; apply makes it again and the edge routes to the new one.
    let web3 = format!("{name}-web-3");
    incus(&["delete", "--force", &web3]);
    let plan = d.plan().await.unwrap();
    let recreate = plan
        .actionable()
        .find(|c| c.name == web3)
        .unwrap_or_else(|| panic!("no change for {web3}:\n{plan}"));
    assert_eq!(recreate.action, Action::Create, "{plan}");
    assert!(recreate.drift, "{plan}");
    assert_eq!(recreate.reason.as_deref(), Some("deleted outside cul8er"));
    let healed = d
        .apply(&plan, &request("ops"), &Cancel::new(), &|_| {})
        .await
        .unwrap();
    assert!(healed.outcome.succeeded(), "{:#?}", healed.outcome);
    let again = d.plan().await.unwrap();
    assert!(!again.has_changes(), "after the heal:\n{again}");
    for record in ["topology", "plan", "outcome"] {
        assert!(
            d.state
                .revision_dir(&name, &report.revision)
                .join(format!("{record}.json"))
                .exists()
        );
    }

    // Destroy: nothing of the topology is left, and something else is untouched.
    let bystander = live_support::names("bystander").topology + "-x";
    incus(&["launch", &live_support::image(), &bystander]);
    let destroy = d.plan_destroy(false).await.unwrap();
    assert!(destroy.summary.delete >= 6, "{destroy}");
    let report = d
        .apply(
            &destroy,
            &ApplyRequest {
                destroy: Some(false),
                ..request("ops")
            },
            &Cancel::new(),
            &|_| {},
        )
        .await
        .unwrap();
    assert!(report.outcome.succeeded(), "{:#?}", report.outcome);
    assert!(instances_named(&format!("{name}-")).is_empty());
    assert!(!network_exists(&cleanup.names.network));
    assert_eq!(
        instances_named(&bystander).len(),
        1,
        "the bystander is untouched"
    );
    incus(&["delete", "--force", &bystander]);
    drop(path);
}

const SMALL: &str = r#"topology demo {
    host local
    resource app {
        image "cul8er-busybox"
        replicas 2
        limits {
            memory "64MiB"
        }
    }
    resource side {
        image "cul8er-busybox"
    }
}
"#;

fn init_pid(name: &str) -> String {
    incus(&["query", &format!("/1.0/instances/{name}/state")])
        .lines()
        .find(|l| l.trim_start().starts_with("\"pid\""))
        .unwrap_or_default()
        .to_owned()
}

/// Limits changed in the topology are applied in place without a restart; an image
/// change replaces; a removed resource is deleted; drift made with the `incus` CLI
/// (a limit, a device, a stopped and a deleted instance) is shown and put back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_drift_converge() {
    let (topology, path, cleanup) = topology("chg", SMALL);
    let name = topology.name.clone();
    let state = cleanup.dir.path().join(".cul8er");
    let d = deployment(topology, &state);
    plan_and_apply(&d).await;
    let app1 = format!("{name}-app-1");
    let app2 = format!("{name}-app-2");
    let side = format!("{name}-side-1");
    let pid_before = init_pid(&app1);

    // Limits changed in the topology: updated in place, live, no restart.
    let source = fs_err::read_to_string(&path).unwrap();
    fs_err::write(&path, source.replace("64MiB", "96MiB")).unwrap();
    let d = deployment(live_support::load(&path), &state);
    let plan = d.plan().await.unwrap();
    assert_eq!(plan.summary.update, 2, "{plan}");
    assert!(plan.actionable().all(|c| !c.restart && !c.drift));
    plan_and_apply(&d).await;
    assert_eq!(
        incus(&["config", "get", &app1, "limits.memory"]).trim(),
        "100663296B"
    );
    assert_eq!(
        init_pid(&app1),
        pid_before,
        "the instance was not restarted"
    );

    // Drift made by hand: a limit, a device, a stopped instance, a deleted replica.
    incus(&["config", "set", &app1, "limits.memory=200MiB"]);
    incus(&[
        "config",
        "device",
        "add",
        &side,
        "extra",
        "proxy",
        "listen=tcp:127.0.0.1:1",
        "connect=tcp:127.0.0.1:2",
    ]);
    incus(&["stop", "--force", &app2]);
    let plan = d.plan().await.unwrap();
    let by_name: BTreeMap<&str, _> = plan.changes.iter().map(|c| (c.name.as_str(), c)).collect();
    assert!(
        by_name[app1.as_str()].drift && by_name[app1.as_str()].action == Action::Update,
        "{plan}"
    );
    assert!(
        by_name[side.as_str()]
            .fields
            .iter()
            .any(|f| f.field == "devices.extra"),
        "{plan}"
    );
    assert!(by_name[app2.as_str()].start, "{plan}");
    assert_eq!(plan.summary.drift, 3, "{plan}");
    plan_and_apply(&d).await;
    incus(&["delete", "--force", &app1]);
    let plan = d.plan().await.unwrap();
    let app1_change = plan.changes.iter().find(|c| c.name == app1).unwrap();
    assert!(
        app1_change.action == Action::Create && app1_change.drift,
        "{plan}"
    );
    plan_and_apply(&d).await;
    assert!(!d.plan().await.unwrap().has_changes());
    assert_eq!(
        incus(&["config", "get", &app1, "limits.memory"]).trim(),
        "100663296B"
    );
    assert!(!incus(&["config", "device", "show", &side]).contains("extra"));
    assert_eq!(
        instances_named(&format!("{name}-"))
            .values()
            .filter(|s| *s == "RUNNING")
            .count(),
        3
    );

    // An image change replaces: the same image under a second alias.
    let alias = format!("{name}-img");
    let fingerprint = incus(&["image", "info", &live_support::image()])
        .lines()
        .find_map(|l| l.strip_prefix("Fingerprint: "))
        .unwrap()
        .trim()
        .to_owned();
    incus(&["image", "alias", "create", &alias, &fingerprint]);
    let source = fs_err::read_to_string(&path).unwrap();
    let replaced = source.replacen(
        &format!("image \"{}\"\n    }}", live_support::image()),
        &format!("image \"{alias}\"\n    }}"),
        1,
    );
    assert_ne!(replaced, source);
    fs_err::write(&path, replaced).unwrap();
    let d = deployment(live_support::load(&path), &state);
    let plan = d.plan().await.unwrap();
    let side_change = plan.changes.iter().find(|c| c.name == side).unwrap();
    assert_eq!(side_change.action, Action::Replace, "{plan}");
    let created_before = incus(&["query", &format!("/1.0/instances/{side}")]);
    plan_and_apply(&d).await;
    let created_after = incus(&["query", &format!("/1.0/instances/{side}")]);
    let created = |json: &str| {
        json.lines()
            .find(|l| l.contains("\"created_at\""))
            .unwrap_or_default()
            .to_owned()
    };
    assert_ne!(
        created(&created_before),
        created(&created_after),
        "a new instance"
    );
    incus(&["image", "alias", "delete", &alias]);

    // A removed resource is deleted, nothing else touched.
    let source = fs_err::read_to_string(&path).unwrap();
    let start = source.find("    resource side").unwrap();
    let end = source.rfind('}').unwrap();
    fs_err::write(&path, format!("{}{}", &source[..start], &source[end..])).unwrap();
    let d = deployment(live_support::load(&path), &state);
    let plan = d.plan().await.unwrap();
    assert_eq!(plan.summary.delete, 1, "{plan}");
    plan_and_apply(&d).await;
    let left = instances_named(&format!("{name}-"));
    assert_eq!(left.keys().collect::<Vec<_>>(), [&app1, &app2]);
}

/// Two operators at once: the second is refused and told who holds the lease; a
/// deleted state directory changes nothing about the plan, and revision ids keep
/// counting on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_keeps_two_applies_apart_and_the_state_dir_is_only_history() {
    let (topology, _path, cleanup) = topology("lock", SMALL);
    let name = topology.name.clone();
    let state_a = cleanup.dir.path().join("a");
    let state_b = cleanup.dir.path().join("b");
    let a = deployment(topology.clone(), &state_a);
    let b = deployment(topology, &state_b);
    let plan = a.plan().await.unwrap();
    let (alice, bob, cancel) = (request("alice"), request("bob"), Cancel::new());
    let (ra, rb) = tokio::join!(
        a.apply(&plan, &alice, &cancel, &|_| {}),
        b.apply(&plan, &bob, &cancel, &|_| {}),
    );
    let (won, lost) = match (ra, rb) {
        (Ok(won), Err(lost)) => (won, lost),
        (Err(lost), Ok(won)) => (won, lost),
        (ra, rb) => panic!("exactly one apply must win: {ra:?} / {rb:?}"),
    };
    assert!(won.outcome.succeeded());
    match &lost {
        DeployError::Lock(LockError::Held { holder, .. }) => {
            assert!(["alice", "bob"].contains(&holder.user.as_str()), "{holder}");
        }
        // The loser may also have taken the lease after the winner released it and
        // found the world moved on.
        DeployError::WorldMoved { .. } => {}
        other => panic!("unexpected error: {other}"),
    }
    assert!(
        lost.to_string().contains("alice")
            || lost.to_string().contains("bob")
            || matches!(lost, DeployError::WorldMoved { .. }),
        "{lost}"
    );

    // A lease held elsewhere refuses an apply and names its holder.
    let scope = LeaseScope {
        client: live_support::client(),
        host: "local".into(),
        project: "default".into(),
        topology: name.clone(),
    };
    let other = Holder {
        user: "carol".into(),
        host: "elsewhere".into(),
        pid: 4242,
    };
    let lease = scope
        .acquire(&other, Duration::from_secs(300))
        .await
        .unwrap();
    let plan = a.plan().await.unwrap();
    let err = a
        .apply(&plan, &request("alice"), &Cancel::new(), &|_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("carol@elsewhere (pid 4242)"),
        "{err}"
    );
    assert_eq!(a.lock_status().await.unwrap().unwrap().holder, other);
    lease.release().await.unwrap();
    assert_eq!(a.lock_status().await.unwrap(), None);

    // The state directory is history only: deleted, the plan is still right.
    fs_err::remove_dir_all(&state_a).unwrap();
    let a = deployment(live_support::load(&_path), &state_a);
    assert!(!a.plan().await.unwrap().has_changes());
    incus(&["stop", "--force", &format!("{name}-side-1")]);
    let report = plan_and_apply(&a).await;
    assert!(
        report.revision > won.revision,
        "revisions sort in time order"
    );
    assert_eq!(
        a.state.revisions(&name).unwrap(),
        std::slice::from_ref(&report.revision)
    );
    assert!(
        report
            .outcome
            .steps
            .iter()
            .all(|s| s.status == StepStatus::Done)
    );
}

/// `expose ... address=` publishes the port on that host address only: here 127.0.0.2,
/// answered there and not on 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expose_address_publishes_on_that_address_only() {
    let source = r#"topology demo {
    network demo-net subnet="10.181.0.1/24" nat=#false
    resource app {
        image "cul8er-busybox"
        network demo-net {
            expose 8080 public=18080 address="127.0.0.2"
        }
        release app version="1" {
            start "httpd -f -p 8080 -h /srv/www"
            before-start "mkdir -p /srv/www"
            before-start "sh -c 'echo on 127.0.0.2 > /srv/www/index.html'"
        }
    }
}
"#;
    let (topology, _path, cleanup) = topology("address", source);
    let name = topology.name.clone();
    let port = cleanup.names.ports[0];
    let d = deployment(topology, &cleanup.dir.path().join(".cul8er"));
    plan_and_apply(&d).await;
    let listen = incus(&[
        "config",
        "device",
        "get",
        &format!("{name}-app-1"),
        &format!("expose-{port}"),
        "listen",
    ]);
    assert_eq!(listen.trim(), format!("tcp:127.0.0.2:{port}"));

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut answer = String::new();
    for _ in 0..50 {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.2", port)).await {
            stream
                .write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
                .await
                .unwrap();
            answer.clear();
            stream.read_to_string(&mut answer).await.unwrap();
            if answer.contains("on 127.0.0.2") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answer.contains("on 127.0.0.2"), "answer: {answer:?}");
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "nothing listens on 127.0.0.1:{port}"
    );
    assert!(!d.plan().await.unwrap().has_changes());
}
