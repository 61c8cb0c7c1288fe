//! `status` and `list` tell the truth about release services, against a real incusd:
//! a deployed release shows as running with its version; a service stopped by hand
//! inside one replica (with the `incus` command) shows as stopped there and takes one
//! off the deployment's healthy count; a service killed by hand shows the restart its
//! init made; a service stopped by hand is drift that the next plan names and apply
//! starts through the init, behind the resource's health gate (and deploys again when
//! its service definition is gone too). On the busybox image (init respawn) and, when
//! `CUL8ER_TEST_DEBIAN_IMAGE` and `CUL8ER_TEST_OPENRC_IMAGE` are set, on the Debian
//! images with systemd and OpenRC.
#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod live_support;

use std::collections::BTreeMap;
use std::time::Duration;

use cul8er_core::execute::{ApplyEvent, Cancel};
use cul8er_core::lock::Holder;
use cul8er_core::plan::Action;
use cul8er_core::release::{ReleaseHealth, ServiceState};
use cul8er_core::{ApplyRequest, Deployment, DeploymentSummary, InstanceStatus};
use live_support::{deployment, incus, topology};

fn no_env(_: &str) -> Option<String> {
    None
}

/// Two replicas of a release that just stays up, on `image`.
fn source(image: &str) -> String {
    format!(
        "topology demo {{\n    resource app {{\n        image \"{image}\"\n        replicas 2\n        \
         release app version=\"7\" {{\n            start \"sleep 1000000\"\n        }}\n    }}\n}}\n"
    )
}

async fn apply(d: &Deployment) {
    let plan = d.plan().await.unwrap();
    let request = ApplyRequest {
        parallelism: 4,
        destroy: None,
        env: &no_env,
        holder: Holder::current(),
    };
    let report = d
        .apply(&plan, &request, &Cancel::new(), &|_| {})
        .await
        .unwrap();
    let failures: Vec<_> = report.outcome.failures().collect();
    assert!(failures.is_empty(), "failed steps: {failures:#?}");
}

fn health_of(instances: &[InstanceStatus]) -> BTreeMap<String, Option<ReleaseHealth>> {
    instances
        .iter()
        .map(|i| (i.name.clone(), i.release_health.clone()))
        .collect()
}

/// Polls `status` until `done` holds for the release health of every instance, for at
/// most a minute.
async fn status_until(
    d: &Deployment,
    what: &str,
    done: impl Fn(&BTreeMap<String, Option<ReleaseHealth>>) -> bool,
) -> BTreeMap<String, Option<ReleaseHealth>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let health = health_of(&d.status().await.unwrap().instances);
        if done(&health) {
            return health;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last status {health:#?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn summary(topology: &str) -> DeploymentSummary {
    let clients = BTreeMap::from([("local".to_owned(), live_support::client())]);
    let found = cul8er_core::list(&clients).await.unwrap();
    found
        .into_iter()
        .find(|s| s.topology == topology)
        .unwrap_or_else(|| panic!("list does not show {topology}"))
}

fn state(health: &BTreeMap<String, Option<ReleaseHealth>>, name: &str) -> Option<ServiceState> {
    health.get(name)?.as_ref().map(|h| h.state)
}

/// How the service of app `app` is stopped and killed by hand inside an instance, and
/// how its service definition is removed.
struct ByHand {
    stop: &'static str,
    kill: &'static str,
    remove: &'static str,
}

const BUSYBOX: ByHand = ByHand {
    // Taken out of init's table, then its process ended: nothing respawns it. Busybox
    // init may end the process itself when it rereads the table (FEATURE_KILL_REMOVED),
    // so a pid that is already gone is what we asked for too.
    stop: "sed -i '/cul8er-app/d' /etc/inittab && kill -HUP 1 && sleep 0.5 && \
           pid=\"$(cut -d' ' -f1 /run/cul8er-app/pid)\" && \
           { kill -KILL \"$pid\" 2>/dev/null || ! kill -0 \"$pid\" 2>/dev/null; }",
    kill: "kill -KILL \"$(cut -d' ' -f1 /run/cul8er-app/pid)\"",
    remove: "rm /etc/service.d/cul8er-app",
};

const OPENRC: ByHand = ByHand {
    stop: "rc-service cul8er-app stop",
    // supervise-daemon respawns it.
    kill: "kill -KILL \"$(cut -d' ' -f1 /run/cul8er-app/pid)\"",
    remove: "rm /etc/init.d/cul8er-app",
};

const SYSTEMD: ByHand = ByHand {
    stop: "systemctl stop cul8er-app.service",
    kill: "systemctl kill --signal=KILL cul8er-app.service",
    remove: "rm /etc/systemd/system/cul8er-app.service && systemctl daemon-reload",
};

async fn status_and_list_follow_the_service(image: &str, by_hand: &ByHand) {
    let (topology, _path, cleanup) = topology("status", &source(image));
    let name = topology.name.clone();
    let d = deployment(topology, &cleanup.dir.path().join(".cul8er"));
    apply(&d).await;
    let (first, second) = (format!("{name}-app-1"), format!("{name}-app-2"));

    // Both replicas run version 7.
    let health = status_until(&d, "both running", |h| {
        state(h, &first) == Some(ServiceState::Running)
            && state(h, &second) == Some(ServiceState::Running)
    })
    .await;
    for instance in [&first, &second] {
        let h = health[instance].as_ref().unwrap();
        assert_eq!(h.app, "app");
        assert_eq!(h.version.as_deref(), Some("7"), "{h:?}");
        assert_eq!(h.restarts, Some(0), "{h:?}");
    }
    let listed = summary(&name).await;
    assert_eq!((listed.instances, listed.healthy), (2, 2), "{listed:?}");

    // Killed by hand: the init restarts it, and status counts the restart.
    incus(&["exec", &first, "--", "sh", "-c", by_hand.kill]);
    let health = status_until(&d, "the restart counted", |h| {
        h.get(&first)
            .and_then(Option::as_ref)
            .is_some_and(|h| h.restarts == Some(1) && h.state == ServiceState::Running)
    })
    .await;
    assert_eq!(state(&health, &second), Some(ServiceState::Running));

    // Stopped by hand in one replica: status says so there only; list counts 1/2.
    incus(&["exec", &first, "--", "sh", "-c", by_hand.stop]);
    let health = status_until(&d, "one stopped", |h| {
        state(h, &first) == Some(ServiceState::Stopped)
    })
    .await;
    assert_eq!(state(&health, &second), Some(ServiceState::Running));
    let listed = summary(&name).await;
    assert_eq!(
        (listed.instances, listed.running, listed.healthy),
        (2, 2, 1),
        "{listed:?}"
    );

    // A stopped instance: its release cannot be asked, and status says why.
    incus(&["stop", "--force", &second]);
    let health = status_until(&d, "instance stopped", |h| {
        state(h, &second) == Some(ServiceState::Unknown)
    })
    .await;
    let detail = health[&second].as_ref().unwrap().detail.clone();
    assert_eq!(detail.as_deref(), Some("the instance is stopped"));
    let listed = summary(&name).await;
    assert_eq!((listed.running, listed.healthy), (1, 0), "{listed:?}");
}

/// Two replicas of a release that stays up, behind a health gate that passes only
/// while the app's process runs.
fn gated_source(image: &str) -> String {
    format!(
        "topology demo {{\n    resource app {{\n        image \"{image}\"\n        replicas 2\n        \
         release app version=\"7\" {{\n            start \"sleep 1000000\"\n        }}\n        \
         strategy rolling {{\n            health command \"pidof\" \"sleep\" interval=\"1s\" timeout=\"1s\" \
         retries=3 min-healthy-time=\"1s\" deadline=\"60s\"\n        }}\n    }}\n}}\n"
    )
}

async fn a_stopped_service_is_drift_that_apply_starts(image: &str, by_hand: &ByHand) {
    let (topology, _path, cleanup) = topology("svcdrift", &gated_source(image));
    let name = topology.name.clone();
    let d = deployment(topology, &cleanup.dir.path().join(".cul8er"));
    apply(&d).await;
    let (first, second) = (format!("{name}-app-1"), format!("{name}-app-2"));
    status_until(&d, "both running", |h| {
        state(h, &first) == Some(ServiceState::Running)
            && state(h, &second) == Some(ServiceState::Running)
    })
    .await;
    assert!(!d.plan().await.unwrap().has_changes(), "converged");

    // Stopped by hand inside a running instance: drift, with the service named.
    incus(&["exec", &first, "--", "sh", "-c", by_hand.stop]);
    status_until(&d, "one stopped", |h| {
        state(h, &first) == Some(ServiceState::Stopped)
    })
    .await;
    let plan = d.plan().await.unwrap();
    let actionable: Vec<_> = plan.actionable().collect();
    assert_eq!(actionable.len(), 1, "only the stopped one: {plan}");
    let change = actionable[0];
    assert_eq!(
        (change.name.as_str(), change.action),
        (first.as_str(), Action::Update)
    );
    assert!(
        change.drift && !change.restart && !change.start,
        "{change:?}"
    );
    assert_eq!(change.service_to_start(), Some("app"));
    let text = plan.to_string();
    assert!(
        text.contains(&format!(
            "~ instance {first} (app)  [drift, live, service app is stopped: start it]"
        )) && text.contains("~ service.app: \"stopped\" → \"running\""),
        "{text}"
    );

    // Apply starts it through the init, behind the resource's health gate.
    let request = ApplyRequest {
        parallelism: 4,
        destroy: None,
        env: &no_env,
        holder: Holder::current(),
    };
    let report = d
        .apply(&plan, &request, &Cancel::new(), &|_| {})
        .await
        .unwrap();
    let failures: Vec<_> = report.outcome.failures().collect();
    assert!(failures.is_empty(), "failed steps: {failures:#?}");
    let rollout = report.rollout.expect("an in-place change rolls out");
    assert!(rollout.result.succeeded(), "{rollout:?}");
    assert_eq!(
        rollout.resources[0].instances,
        std::slice::from_ref(&first),
        "{rollout:?}"
    );

    // It runs again (started, not a crash restart), and nothing is left to do.
    let health = health_of(&d.status().await.unwrap().instances);
    let started = health[&first].as_ref().unwrap();
    assert_eq!(started.state, ServiceState::Running, "{started:?}");
    assert_eq!(started.version.as_deref(), Some("7"), "{started:?}");
    assert_eq!(state(&health, &second), Some(ServiceState::Running));
    let again = d.plan().await.unwrap();
    assert!(!again.has_changes(), "second plan: {again}");

    // Stopped and its service definition removed: the init cannot start it, so apply
    // deploys the release again, which puts the definition back and starts it.
    let lose = format!("{} && {}", by_hand.stop, by_hand.remove);
    incus(&["exec", &second, "--", "sh", "-c", &lose]);
    status_until(&d, "the second stopped", |h| {
        state(h, &second) == Some(ServiceState::Stopped)
    })
    .await;
    let plan = d.plan().await.unwrap();
    let names: Vec<&str> = plan.actionable().map(|c| c.name.as_str()).collect();
    assert_eq!(names, [second.as_str()], "{plan}");
    let events = std::sync::Mutex::new(Vec::new());
    let report = d
        .apply(&plan, &request, &Cancel::new(), &|event| {
            if let ApplyEvent::StepProgress { message, .. } = event {
                events.lock().unwrap().push(message.clone());
            }
        })
        .await
        .unwrap();
    let failures: Vec<_> = report.outcome.failures().collect();
    assert!(failures.is_empty(), "failed steps: {failures:#?}");
    let events = events.into_inner().unwrap();
    assert!(
        events
            .iter()
            .any(|m| m.contains("is missing") && m.contains("deploying the release again")),
        "{events:#?}"
    );
    let health = health_of(&d.status().await.unwrap().instances);
    assert_eq!(
        state(&health, &second),
        Some(ServiceState::Running),
        "{health:#?}"
    );
    let again = d.plan().await.unwrap();
    assert!(!again.has_changes(), "third plan: {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_stopped_by_hand_is_started_by_apply_on_busybox() {
    Box::pin(a_stopped_service_is_drift_that_apply_starts(
        &live_support::image(),
        &BUSYBOX,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_stopped_by_hand_is_started_by_apply_on_systemd() {
    let Some(image) = live_support::debian_image() else {
        return;
    };
    Box::pin(a_stopped_service_is_drift_that_apply_starts(
        &image, &SYSTEMD,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_stopped_by_hand_is_started_by_apply_on_openrc() {
    let Some(image) = live_support::openrc_image() else {
        return;
    };
    Box::pin(a_stopped_service_is_drift_that_apply_starts(
        &image, &OPENRC,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_list_follow_the_release_service_on_busybox() {
    Box::pin(status_and_list_follow_the_service(
        &live_support::image(),
        &BUSYBOX,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_list_follow_the_release_service_on_systemd() {
    let Some(image) = live_support::debian_image() else {
        return;
    };
    Box::pin(status_and_list_follow_the_service(&image, &SYSTEMD)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_list_follow_the_release_service_on_openrc() {
    let Some(image) = live_support::openrc_image() else {
        return;
    };
    Box::pin(status_and_list_follow_the_service(&image, &OPENRC)).await;
}
