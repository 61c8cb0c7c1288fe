//! Blue-green and canary rollouts against a real incusd, with the bounded load
//! generator of `live_support::load` on the published port the whole time (8 clients,
//! a new connection per request, a 2 s client timeout):
//!
//! - blue-green v2 → v3: the new set comes up beside the old one, one switch, the old
//!   set removed after a short scale-down delay; zero failed requests, only v2
//!   answers before the switch, only v3 after it;
//! - canary v3 → v4 through every step: zero failed requests, only v3 before the
//!   first step, only v4 once at 100%, the old set gone;
//! - a canary whose release answers 500 on about 20% of requests: aborted by the
//!   analysis at the first step, all weight back on stable, the canary deleted, no
//!   failed request but the canary's own 500s;
//! - manual promotion: apply ends paused, a plain apply refuses, `promote` switches;
//! - a canary paused at its second step whose `resume` was killed after recording
//!   the third step and before moving the edge: the next `resume` moves the edge to
//!   the third step and on, never back to the first step's weights;
//! - a blue-green command killed between the edge's switch and its `switched`
//!   record: `status` reports the switch the edge shows, `abort` refuses to undo it,
//!   `promote` finishes it.
//!
//! Needs the static proxy binary (`just proxy-static`, or `CUL8ER_PROXY_BINARY`).
#![allow(clippy::unwrap_used)]

mod live_support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cul8er_core::execute::{ApplyEvent, Cancel};
use cul8er_core::lock::Holder;
use cul8er_core::lock::LeaseScope;
use cul8er_core::rollout::RolloutResult;
use cul8er_core::rollout::pending::{PendingRollout, PendingStore, Phase, StepAt};
use cul8er_core::rollout::switch::Continue;
use cul8er_core::{ApplyReport, ApplyRequest, DeployError, Deployment};
use live_support::load::{Load, get};
use live_support::{Names, image, instances_named, names, proxy_binary};

/// Removes the topology's instances, bridge and profiles when dropped.
struct Cleanup(Names);

impl Drop for Cleanup {
    fn drop(&mut self) {
        live_support::remove_topology(&self.0.topology, Some(&self.0.network));
    }
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

fn deployment(dir: &std::path::Path, source: &str) -> Deployment {
    let path = dir.join("cul8er.kdl");
    fs_err::write(&path, source).unwrap();
    let mut deployment = live_support::deployment(live_support::load(&path), &dir.join(".cul8er"));
    deployment.options.edge_binary = Some(proxy_binary());
    deployment
}

/// The release of one version: busybox httpd serving `web VERSION`; with `failing`,
/// a CGI script answers 500 on about one request in five instead.
fn release(version: &str, failing: bool) -> String {
    let content = if failing {
        // index.cgi answers for `/` when there is no index.html; written through
        // base64 to stay clear of quoting.
        let script = format!(
            "#!/bin/sh\nif [ $((RANDOM % 5)) -eq 0 ]; then printf 'Status: 500 Internal Server Error\\r\\n\\r\\nbad {version}\\n'; else printf 'Content-Type: text/plain\\r\\n\\r\\nweb {version}\\n'; fi\n"
        );
        let encoded = base64::engine::general_purpose::STANDARD.encode(script);
        format!(
            r#"before-start "mkdir -p /srv/www/cgi-bin"
            before-start "sh -c 'echo {encoded} | base64 -d > /srv/www/cgi-bin/index.cgi && chmod 755 /srv/www/cgi-bin/index.cgi'""#
        )
    } else {
        format!(r#"before-start "sh -c 'echo web {version} > /srv/www/index.html'""#)
    };
    format!(
        r#"release web version="{version}" {{
            start "httpd -f -p 8080 -h /srv/www"
            before-start "mkdir -p /srv/www"
            before-start "sh -c 'echo ok > /srv/www/health.txt'"
            {content}
        }}"#
    )
}

fn source(names: &Names, version: &str, failing: bool, strategy: &str) -> String {
    format!(
        r#"topology {topology} {{
    host local
    network {network} subnet="{subnet}" nat=#false
    resource web {{
        image "{image}"
        replicas 2
        network {network} {{
            expose 8080 public={port} protocol=http
        }}
        {release}
        {strategy}
    }}
}}
"#,
        topology = names.topology,
        network = names.network,
        subnet = names.subnet,
        port = names.ports[0],
        image = image(),
        release = release(version, failing),
    )
}

const HEALTH: &str = r#"health http path="/health.txt" port=8080 interval="1s" timeout="1s" retries=2 min-healthy-time="1s" deadline="30s""#;

fn blue_green(promotion: &str) -> String {
    format!(
        "strategy blue-green {{\n            {HEALTH}\n            blue-green promotion={promotion} scale-down-delay=\"2s\"\n        }}"
    )
}

fn canary(analysis: &str) -> String {
    format!(
        "strategy canary {{\n            {HEALTH}\n            canary {{\n                step 10 pause=\"3s\"\n                step 50 pause=\"3s\"\n                step 100\n                {analysis}\n            }}\n        }}"
    )
}

/// Plans and applies; moves `phase` to `to` whenever a progress message contains
/// its marker; keeps the progress messages.
async fn apply_marked(
    d: &Deployment,
    phase: &Arc<AtomicU32>,
    markers: &[(&str, u32)],
) -> (Result<ApplyReport, DeployError>, Vec<String>) {
    let plan = d.plan().await.unwrap();
    let events = Mutex::new(Vec::new());
    let report = d
        .apply(&plan, &request(), &Cancel::new(), &|e: &ApplyEvent| {
            let text = format!("{e:?}");
            for (marker, to) in markers {
                if text.contains(marker) {
                    phase.store(*to, Ordering::SeqCst);
                }
            }
            events.lock().unwrap().push(text);
        })
        .await;
    (report, events.into_inner().unwrap())
}

async fn apply(d: &Deployment) -> (ApplyReport, Vec<String>) {
    let (report, events) = apply_marked(d, &Arc::new(AtomicU32::new(0)), &[]).await;
    (report.unwrap(), events)
}

/// Until every answer through the edge is `want` (at most 30 s).
/// `cul8er promote`, which must finish the rollout (its events shown when it does not).
async fn promote_succeeds(d: &Deployment) {
    let events = Mutex::new(Vec::new());
    let promoted = d
        .continue_rollout(
            Continue::Promote,
            &Holder::current(),
            &Cancel::new(),
            &|e: &ApplyEvent| events.lock().unwrap().push(format!("{e:?}")),
        )
        .await
        .unwrap();
    assert_eq!(
        promoted.rollout.unwrap().result,
        RolloutResult::Succeeded,
        "{:#?}",
        events.lock().unwrap()
    );
}

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

/// The answers of `phased` that started at or after phase `from`, or ended before
/// phase `until`, by body.
fn bodies(
    phased: &BTreeMap<(u32, u32, String), u64>,
    keep: impl Fn(u32, u32) -> bool,
) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for ((started, ended, body), count) in phased {
        if keep(*started, *ended) {
            *out.entry(body.clone()).or_insert(0) += count;
        }
    }
    out
}

/// The web instances by name (the edge left out).
fn web_instances(names: &Names) -> BTreeSet<String> {
    instances_named(&format!("{}-web-", names.topology))
        .into_keys()
        .collect()
}

async fn edge_weights(names: &Names) -> BTreeMap<String, u32> {
    let edge = cul8er_core::edge::Edge::connect(
        &live_support::client(),
        cul8er_core::edge::edge_instance_name(&names.topology),
    );
    let config = edge.config().await.unwrap();
    config.services[0]
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.weight))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_then_canary_under_load() {
    let names = names("switch");
    let _cleanup = Cleanup(names.clone());
    let dir = tempfile::tempdir().unwrap();
    let port = names.ports[0];

    // v2 from nothing: an ordinary create, the unsuffixed set.
    let d = deployment(
        dir.path(),
        &source(&names, "2", false, &blue_green("automatic")),
    );
    let (report, events) = apply(&d).await;
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );
    let first = web_instances(&names);
    assert_eq!(first.len(), 2, "{first:?}");

    // Blue-green v2 → v3 under load.
    let d = deployment(
        dir.path(),
        &source(&names, "3", false, &blue_green("automatic")),
    );
    let plan = d.plan().await.unwrap();
    let set = plan
        .changes
        .iter()
        .find(|c| c.kind == cul8er_core::plan::ObjectKind::Set)
        .unwrap_or_else(|| panic!("one set change: {plan}"));
    assert_eq!(set.name, format!("{}-web-g", names.topology));
    let phase = Arc::new(AtomicU32::new(0));
    let load = Load::start_phased(port, &phase);
    let (report, events) = apply_marked(
        &d,
        &phase,
        &[
            ("the edge finds every new backend healthy", 1),
            ("traffic switched to", 2),
        ],
    )
    .await;
    let (phased, failures) = load.finish_phased().await;
    let report = report.unwrap();
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );
    assert_eq!(
        report.rollout.as_ref().unwrap().result,
        RolloutResult::Succeeded
    );
    assert!(
        failures.is_empty(),
        "failed requests during v2 → v3: {failures:?}"
    );
    let served: u64 = phased.values().sum();
    assert!(
        served >= 100,
        "only {served} answers during v2 → v3: {phased:?}"
    );
    let before = bodies(&phased, |_, ended| ended == 0);
    let after = bodies(&phased, |started, _| started == 2);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["web 2"],
        "before the switch only v2 answers: {phased:?}"
    );
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        ["web 3"],
        "after the switch only v3 answers: {phased:?}"
    );
    assert!(
        events.iter().any(|e| e.contains("old set removed in")),
        "the scale-down delay was waited out: {events:#?}"
    );
    let second = web_instances(&names);
    assert_eq!(
        second,
        first
            .iter()
            .map(|n| format!("{n}-g"))
            .collect::<BTreeSet<_>>(),
        "the old set is gone"
    );
    assert_eq!(
        serving(port, "web 3").await,
        BTreeSet::from(["web 3".to_owned()])
    );
    assert!(!d.plan().await.unwrap().has_changes());

    // Canary v3 → v4 through every step, under load.
    let d = deployment(
        dir.path(),
        &source(
            &names,
            "4",
            false,
            &canary(r#"analysis max-error-rate="5%" min-requests=10"#),
        ),
    );
    let phase = Arc::new(AtomicU32::new(0));
    let load = Load::start_phased(port, &phase);
    let (report, events) = apply_marked(
        &d,
        &phase,
        &[
            ("step 1/3: moving 10%", 1),
            ("step 3/3: 100% to the canary", 2),
        ],
    )
    .await;
    let (phased, failures) = load.finish_phased().await;
    let report = report.unwrap();
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );
    assert!(
        failures.is_empty(),
        "failed requests during v3 → v4: {failures:?}"
    );
    for step in ["step 1/3: 10%", "step 2/3: 50%", "step 3/3: 100%"] {
        assert!(
            events.iter().any(|e| e.contains(step)),
            "{step}: {events:#?}"
        );
    }
    assert!(
        events
            .iter()
            .filter(|e| e.contains("analysis of web: passed"))
            .count()
            >= 2,
        "{events:#?}"
    );
    // Before the first step's weights only v3 answers; both during the steps; only
    // v4 once it has all the weight.
    let before = bodies(&phased, |_, ended| ended == 0);
    let during = bodies(&phased, |started, ended| started == 1 && ended == 1);
    let after = bodies(&phased, |started, _| started == 2);
    let served: u64 = phased.values().sum();
    assert!(
        served >= 100,
        "only {served} answers during v3 → v4: {phased:?}"
    );
    assert_eq!(before.keys().collect::<Vec<_>>(), ["web 3"], "{phased:?}");
    assert!(
        during.keys().all(|b| b == "web 3" || b == "web 4") && during.contains_key("web 4"),
        "both versions during the steps: {phased:?}"
    );
    assert_eq!(after.keys().collect::<Vec<_>>(), ["web 4"], "{phased:?}");
    let third = web_instances(&names);
    assert_eq!(
        third,
        first
            .iter()
            .map(|n| format!("{n}-c"))
            .collect::<BTreeSet<_>>(),
        "the canary set is the new stable, the old set gone"
    );
    assert_eq!(
        serving(port, "web 4").await,
        BTreeSet::from(["web 4".to_owned()])
    );
    assert!(!d.plan().await.unwrap().has_changes());

    // A canary answering 500 on about 20% of requests: aborted at the first step.
    let d = deployment(
        dir.path(),
        &source(
            &names,
            "5",
            true,
            &canary(r#"analysis max-error-rate="1%" min-requests=20"#),
        ),
    );
    let load = Load::start(port);
    let (report, events) = apply(&d).await;
    let (answers, failures) = load.finish().await;
    let record = report.rollout.clone().unwrap();
    assert!(
        matches!(&record.result, RolloutResult::RolledBack { reason } if reason.contains("step 1") && reason.contains("error rate")),
        "{record:#?}\n{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e.contains("step 2/3")),
        "no step after the first: {events:#?}"
    );
    assert!(
        failures
            .iter()
            .all(|f| f.contains(" 500 ") && f.contains("bad 5")),
        "only the canary's own 500s fail: {failures:?}"
    );
    assert!(
        answers.keys().all(|b| b == "web 4" || b == "web 5") && answers.contains_key("web 4"),
        "stable's answers, and the canary's good ones: {answers:?}"
    );
    assert_eq!(web_instances(&names), third, "the canary is gone");
    let weights = edge_weights(&names).await;
    assert_eq!(
        weights,
        third
            .iter()
            .map(|n| (n.clone(), 1))
            .collect::<BTreeMap<_, _>>(),
        "all weight back on stable, the canary out of the edge"
    );
    assert_eq!(
        serving(port, "web 4").await,
        BTreeSet::from(["web 4".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_promotion_ends_paused_and_promote_switches() {
    let names = names("promote");
    let _cleanup = Cleanup(names.clone());
    let dir = tempfile::tempdir().unwrap();
    let port = names.ports[0];
    let d = deployment(
        dir.path(),
        &source(&names, "1", false, &blue_green("manual")),
    );
    let (report, events) = apply(&d).await;
    assert!(
        report.outcome.succeeded(),
        "{:#?}\n{events:#?}",
        report.outcome
    );
    let first = web_instances(&names);

    let d = deployment(
        dir.path(),
        &source(&names, "2", false, &blue_green("manual")),
    );
    let (report, events) = apply(&d).await;
    let record = report.rollout.clone().unwrap();
    assert!(
        matches!(&record.result, RolloutResult::Paused { reason, .. } if reason == "manual promotion"),
        "{record:#?}\n{events:#?}"
    );
    // Both sets exist; the old one still has all the traffic.
    assert_eq!(web_instances(&names).len(), 4);
    assert_eq!(
        serving(port, "web 1").await,
        BTreeSet::from(["web 1".to_owned()])
    );
    let paused = d
        .pending_rollout()
        .await
        .unwrap()
        .expect("a paused rollout");
    assert_eq!(paused.resource, "web");
    // A plain apply refuses while the rollout is paused.
    let plan = d.plan().await.unwrap();
    let refused = d
        .apply(&plan, &request(), &Cancel::new(), &|_: &ApplyEvent| {})
        .await
        .unwrap_err();
    assert!(
        matches!(refused, DeployError::RolloutInProgress { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("cul8er promote"), "{refused}");

    // Promote: the switch, from the record alone.
    promote_succeeds(&d).await;
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );
    assert!(d.pending_rollout().await.unwrap().is_none());
    assert_eq!(
        web_instances(&names),
        first
            .iter()
            .map(|n| format!("{n}-g"))
            .collect::<BTreeSet<_>>()
    );
    assert!(!d.plan().await.unwrap().has_changes());
}

/// The state of the edge's backends: name → weight.
async fn weights_of(names: &Names) -> BTreeMap<String, u32> {
    edge_weights(names).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_old_set_rolls_back_at_once_and_ctrl_c_or_pause_stop_a_canary() {
    let names = names("keep");
    let _cleanup = Cleanup(names.clone());
    let dir = tempfile::tempdir().unwrap();
    let port = names.ports[0];
    let kept = "strategy blue-green {\n            health http path=\"/health.txt\" port=8080 interval=\"1s\" timeout=\"1s\" retries=2 min-healthy-time=\"1s\" deadline=\"30s\"\n            blue-green promotion=automatic scale-down-delay=\"10m\"\n        }";
    let v1 = source(&names, "1", false, kept);
    let (report, events) = apply(&deployment(dir.path(), &v1)).await;
    assert!(report.outcome.succeeded(), "{events:#?}");
    let first = web_instances(&names);

    // v2: the old set stays at weight 0 for the scale-down delay.
    let d = deployment(dir.path(), &source(&names, "2", false, kept));
    let (report, events) = apply(&d).await;
    assert!(report.outcome.succeeded(), "{events:#?}");
    assert!(
        events
            .iter()
            .any(|e| e.contains("the old set is kept until")),
        "{events:#?}"
    );
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );
    assert_eq!(web_instances(&names).len(), 4);
    let plan = d.plan().await.unwrap();
    assert!(!plan.has_changes(), "{plan}");
    assert!(
        plan.changes
            .iter()
            .any(|c| c.action == cul8er_core::plan::Action::Keep && first.contains(&c.name)),
        "{plan}"
    );
    let weights = weights_of(&names).await;
    assert!(first.iter().all(|n| weights[n] == 0), "{weights:?}");

    // Back to v1 while the old set exists: a switch back, nothing created.
    let d = deployment(dir.path(), &v1);
    let plan = d.plan().await.unwrap();
    let Some(cul8er_core::plan::Target::Set(set)) = plan
        .changes
        .iter()
        .find(|c| c.kind == cul8er_core::plan::ObjectKind::Set)
        .and_then(|c| c.target.clone())
    else {
        panic!("a set change: {plan}");
    };
    assert!(set.reuse, "{plan}");
    let load = Load::start(port);
    let (report, events) = apply(&d).await;
    let (answers, failures) = load.finish().await;
    assert!(report.outcome.succeeded(), "{events:#?}");
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("StepStarted") && e.contains("kind: Instance")),
        "nothing created: {events:#?}"
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        answers.keys().all(|b| b == "web 1" || b == "web 2"),
        "{answers:?}"
    );
    assert_eq!(
        serving(port, "web 1").await,
        BTreeSet::from(["web 1".to_owned()])
    );
    assert_eq!(web_instances(&names).len(), 4, "the v2 set is kept in turn");

    // A canary interrupted (Ctrl-C) at its first step: back to stable, canary gone.
    let with_canary = |version: &str| {
        source(
            &names,
            version,
            false,
            &canary(r#"analysis max-error-rate="5%" min-requests=5"#),
        )
    };
    let d = deployment(dir.path(), &with_canary("3"));
    let plan = d.plan().await.unwrap();
    let cancel = Cancel::new();
    let events = Mutex::new(Vec::new());
    let load = Load::start(port);
    let report = d
        .apply(&plan, &request(), &cancel, &|e: &ApplyEvent| {
            let text = format!("{e:?}");
            if text.contains("step 1/3: 10% to the canary") {
                cancel.graceful.cancel();
            }
            events.lock().unwrap().push(text);
        })
        .await
        .unwrap();
    let (answers, failures) = load.finish().await;
    let record = report.rollout.clone().unwrap();
    assert!(
        matches!(&record.result, RolloutResult::RolledBack { reason } if reason.contains("cancelled")),
        "{record:#?}\n{:#?}",
        events.lock().unwrap()
    );
    assert!(failures.is_empty(), "{failures:?}");
    assert!(answers.contains_key("web 1"), "{answers:?}");
    assert_eq!(web_instances(&names).len(), 4, "the canary is gone");
    assert!(d.pending_rollout().await.unwrap().is_none());
    let weights = weights_of(&names).await;
    assert_eq!(
        weights.values().filter(|w| **w > 0).count(),
        2,
        "{weights:?}"
    );

    // `cul8er pause` from elsewhere while the canary runs: paused after its step,
    // then `resume` finishes it.
    let d = deployment(dir.path(), &with_canary("3"));
    let plan = d.plan().await.unwrap();
    let stepped = Arc::new(AtomicU32::new(0));
    let flag = Arc::clone(&stepped);
    let (asked, quiet) = (request(), Cancel::new());
    let on_event = move |e: &ApplyEvent| {
        if format!("{e:?}").contains("step 1/3: 10% to the canary") {
            flag.store(1, Ordering::SeqCst);
        }
    };
    let running = d.apply(&plan, &asked, &quiet, &on_event);
    let pauser = async {
        while stepped.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        d.pause_rollout(&Holder::current()).await.unwrap()
    };
    // The analysis needs traffic to judge the step.
    let load = Load::start(port);
    let (report, requested) = tokio::join!(running, pauser);
    assert!(
        matches!(
            requested,
            cul8er_core::rollout::pending::PauseOutcome::Requested(_)
        ),
        "{requested:?}"
    );
    let record = report.unwrap().rollout.unwrap();
    assert!(
        matches!(&record.result, RolloutResult::Paused { reason, .. } if reason.contains("pause requested")),
        "{record:#?}"
    );
    let paused = d.pending_rollout().await.unwrap().unwrap();
    assert!(
        matches!(
            paused.phase,
            cul8er_core::rollout::pending::Phase::PausedAtStep {
                index: 0,
                weight: 10
            }
        ),
        "{paused:#?}"
    );
    let resumed = d
        .continue_rollout(
            Continue::Resume,
            &Holder::current(),
            &Cancel::new(),
            &|_: &ApplyEvent| {},
        )
        .await
        .unwrap();
    let (answers, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        answers.keys().all(|b| b == "web 1" || b == "web 3"),
        "{answers:?}"
    );
    assert_eq!(resumed.rollout.unwrap().result, RolloutResult::Succeeded);
    assert_eq!(
        serving(port, "web 3").await,
        BTreeSet::from(["web 3".to_owned()])
    );
    assert!(d.pending_rollout().await.unwrap().is_none());
    let now = web_instances(&names);
    assert!(
        now.iter().all(|n| !first.contains(n)),
        "the set the canary replaced is gone: {now:?}"
    );
}

/// The topology's rollout record, as another machine would reach it.
fn store(names: &Names) -> PendingStore {
    PendingStore::new(LeaseScope {
        client: live_support::client(),
        host: "local".to_owned(),
        project: "default".to_owned(),
        topology: names.topology.clone(),
    })
}

/// The canary's share of the edge's weight, in percent.
fn canary_share(weights: &BTreeMap<String, u32>, record: &PendingRollout) -> u32 {
    let of = |set: &cul8er_core::rollout::pending::InstanceSet| -> u32 {
        set.members
            .iter()
            .filter_map(|m| weights.get(&m.backend))
            .sum()
    };
    let (canary, stable) = (of(&record.new_set), of(&record.old_set));
    canary * 100 / (canary + stable).max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_killed_mid_step_resumes_at_its_step_never_lower() {
    let names = names("stepkill");
    let _cleanup = Cleanup(names.clone());
    let dir = tempfile::tempdir().unwrap();
    let port = names.ports[0];
    let stepped = |version: &str| {
        source(
            &names,
            version,
            false,
            &format!(
                "strategy canary {{\n            {HEALTH}\n            canary {{\n                step 10 pause=\"2s\"\n                step 50 pause=\"manual\"\n                step 75\n                step 100\n                analysis max-error-rate=\"5%\" min-requests=5\n            }}\n        }}"
            ),
        )
    };
    let (report, events) = apply(&deployment(dir.path(), &stepped("1"))).await;
    assert!(report.outcome.succeeded(), "{events:#?}");

    // v2 pauses at its second step (50%), judged under load.
    let d = deployment(dir.path(), &stepped("2"));
    let load = Load::start(port);
    let (report, events) = apply(&d).await;
    let record = report.rollout.clone().unwrap();
    assert!(
        matches!(&record.result, RolloutResult::Paused { .. }),
        "{record:#?}\n{events:#?}"
    );
    let paused = d.pending_rollout().await.unwrap().unwrap();
    assert_eq!(
        paused.phase,
        Phase::PausedAtStep {
            index: 1,
            weight: 50
        }
    );
    assert_eq!(canary_share(&edge_weights(&names).await, &paused), 50);

    // A `resume` killed after recording step 3 (index 2), before the edge moved.
    let mut killed = paused.clone();
    killed.phase = Phase::Running {
        step: Some(StepAt {
            index: 2,
            weight: 75,
        }),
    };
    killed.reason = None;
    store(&names).save(&killed).await.unwrap();
    assert_eq!(d.pending_rollout().await.unwrap().unwrap(), killed);

    // Resume: step 3, then 100%; the share seen on the edge meanwhile never drops
    // below the 50% it had.
    let done = Arc::new(AtomicU32::new(0));
    let watcher = {
        let (names, paused, done) = (names.clone(), paused.clone(), Arc::clone(&done));
        async move {
            let mut shares = Vec::new();
            while done.load(Ordering::SeqCst) == 0 {
                shares.push(canary_share(&edge_weights(&names).await, &paused));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            shares
        }
    };
    let events = Mutex::new(Vec::new());
    let resume = async {
        let resumed = d
            .continue_rollout(
                Continue::Resume,
                &Holder::current(),
                &Cancel::new(),
                &|e: &ApplyEvent| events.lock().unwrap().push(format!("{e:?}")),
            )
            .await;
        done.store(1, Ordering::SeqCst);
        resumed
    };
    let (resumed, shares) = tokio::join!(resume, watcher);
    let (answers, failures) = load.finish().await;
    let events = events.into_inner().unwrap();
    assert_eq!(
        resumed.unwrap().rollout.unwrap().result,
        RolloutResult::Succeeded,
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.contains("step 3/4: moving 75%")),
        "{events:#?}"
    );
    assert!(
        !events
            .iter()
            .any(|e| e.contains("step 1/4") || e.contains("step 2/4")),
        "resumed at an earlier step: {events:#?}"
    );
    assert!(!shares.is_empty());
    assert!(shares.iter().all(|s| *s >= 50), "{shares:?}");
    assert!(failures.is_empty(), "{failures:?}");
    assert!(
        answers.keys().all(|b| b == "web 1" || b == "web 2"),
        "{answers:?}"
    );
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );
    assert!(d.pending_rollout().await.unwrap().is_none());
    assert!(!d.plan().await.unwrap().has_changes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_killed_before_its_record_is_finished_never_undone() {
    let names = names("switchkill");
    let _cleanup = Cleanup(names.clone());
    let dir = tempfile::tempdir().unwrap();
    let port = names.ports[0];
    let (report, events) = apply(&deployment(
        dir.path(),
        &source(&names, "1", false, &blue_green("manual")),
    ))
    .await;
    assert!(report.outcome.succeeded(), "{events:#?}");
    let d = deployment(
        dir.path(),
        &source(&names, "2", false, &blue_green("manual")),
    );
    let (report, events) = apply(&d).await;
    assert!(
        matches!(
            &report.rollout.as_ref().unwrap().result,
            RolloutResult::Paused { .. }
        ),
        "{events:#?}"
    );
    let paused = d.pending_rollout().await.unwrap().unwrap();
    assert_eq!(paused.phase, Phase::PausedBeforeSwitch);

    // A `promote` killed right after the edge's switch: its record still says
    // running (written before the switch), the edge gives the new set everything.
    let mut killed = paused.clone();
    killed.phase = Phase::RUNNING;
    killed.reason = None;
    store(&names).save(&killed).await.unwrap();
    let edge = cul8er_core::edge::Edge::connect(
        &live_support::client(),
        cul8er_core::edge::edge_instance_name(&names.topology),
    );
    let mut config = edge.config().await.unwrap();
    let new: BTreeSet<&str> = paused
        .new_set
        .members
        .iter()
        .map(|m| m.backend.as_str())
        .collect();
    for backend in &mut config.services[0].backends {
        backend.weight = u32::from(new.contains(backend.name.as_str()));
    }
    edge.apply(&config).await.unwrap();
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );

    // status reports what the edge shows, beside the record as written.
    let status = d.status().await.unwrap();
    let json = serde_json::to_value(&status).unwrap();
    let rollout = &json["rollout"];
    assert_eq!(rollout["phase"]["kind"], "switched", "{rollout:#}");
    assert_eq!(rollout["record"]["phase"]["kind"], "running", "{rollout:#}");
    assert_eq!(rollout["record"]["strategy"], "blue-green");
    assert_eq!(rollout["record"]["resource"], "web");
    assert_eq!(rollout["record"]["revision"], paused.revision.as_str());
    assert_eq!(
        rollout["record"]["new_set"]["members"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // abort refuses to undo the switch; the new set keeps serving.
    let refused = d
        .continue_rollout(
            Continue::Abort,
            &Holder::current(),
            &Cancel::new(),
            &|_: &ApplyEvent| {},
        )
        .await
        .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("cannot undo a completed switch"),
        "{refused}"
    );
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );
    assert_eq!(web_instances(&names).len(), 4);

    // promote finishes it: the sets marked, the old one removed, the record gone.
    promote_succeeds(&d).await;
    assert!(d.pending_rollout().await.unwrap().is_none());
    assert_eq!(web_instances(&names).len(), 2);
    assert_eq!(
        serving(port, "web 2").await,
        BTreeSet::from(["web 2".to_owned()])
    );
    assert!(!d.plan().await.unwrap().has_changes());
    let status = serde_json::to_value(d.status().await.unwrap()).unwrap();
    assert!(status["rollout"].is_null(), "{status:#}");
}
