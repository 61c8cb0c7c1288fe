//! The record of a rollout in progress on a real Incus server: saved by one client,
//! read, paused and cleared by another, checked with the `incus` command; pause
//! requests racing with a running rollout's saves; a damaged record refused with an
//! error that says how to get rid of it.
//!
//! Each test uses its own topology name (`cul8er-t-...`) and a guard that deletes the
//! record's and the pause request's profiles even when the test fails.

#![allow(clippy::unwrap_used)]

mod live_support;

use cul8er_core::lock::{Holder, LeaseScope};
use cul8er_core::rollout::pending::{
    BackendWeight, InstanceSet, PAUSE_KEY, PauseOutcome, PauseReason, PendingError, PendingRollout,
    PendingStore, Phase, ROLLOUT_KEY, SetMember, SwitchStrategy, pause_profile, rollout_profile,
};
use live_support::{client, incus, incus_quiet, names};

/// Deletes the topology's rollout and pause profiles when dropped.
struct ProfileGuard(String);

impl Drop for ProfileGuard {
    fn drop(&mut self) {
        incus_quiet(&["profile", "delete", &rollout_profile(&self.0)]);
        incus_quiet(&["profile", "delete", &pause_profile(&self.0)]);
    }
}

fn profile_exists(name: &str) -> bool {
    incus(&["profile", "list", "--format", "csv", "-c", "n"])
        .lines()
        .any(|l| l == name)
}

/// A store on the test daemon with a client of its own, as another machine would have.
fn store(topology: &str) -> PendingStore {
    PendingStore::new(LeaseScope {
        client: client(),
        host: "local".to_owned(),
        project: "default".to_owned(),
        topology: topology.to_owned(),
    })
}

fn holder(user: &str, pid: u32) -> Holder {
    Holder {
        user: user.to_owned(),
        host: format!("{user}-machine"),
        pid,
    }
}

fn member(name: &str) -> SetMember {
    SetMember {
        instance: name.to_owned(),
        backend: name.to_owned(),
    }
}

fn weights(stable: u32, canary: u32) -> Vec<BackendWeight> {
    [("t-api-1", stable), ("t-api-1-c", canary)]
        .into_iter()
        .map(|(backend, weight)| BackendWeight {
            service: "api".to_owned(),
            backend: backend.to_owned(),
            weight,
        })
        .collect()
}

fn running(topology: &str) -> PendingRollout {
    PendingRollout {
        topology: topology.to_owned(),
        revision: "20261126T044811.042Z".to_owned(),
        resource: "api".to_owned(),
        version: Some("4".to_owned()),
        strategy: SwitchStrategy::Canary,
        phase: Phase::RUNNING,
        old_set: InstanceSet {
            set: String::new(),
            members: vec![member("t-api-1")],
        },
        new_set: InstanceSet {
            set: "c".to_owned(),
            members: vec![member("t-api-1-c")],
        },
        weights: weights(90, 10),
        reason: None,
        holder: holder("first", 1),
        at: "2026-11-26T04:48:11Z".to_owned(),
        hosts: vec!["local".to_owned()],
    }
}

#[tokio::test]
async fn a_rollout_saved_on_one_machine_is_continued_paused_and_cleared_from_another() {
    let topology = names("pend").topology;
    let profile = rollout_profile(&topology);
    let _guard = ProfileGuard(topology.clone());
    let first = store(&topology);
    let second = store(&topology);

    // Nothing yet: nothing to load, clear or pause.
    assert_eq!(second.load().await.unwrap(), None);
    assert!(!second.clear().await.unwrap());
    let err = second
        .request_pause(&holder("second", 2))
        .await
        .unwrap_err();
    assert!(matches!(err, PendingError::NoRollout { .. }), "{err}");
    assert_eq!(second.take_pause_request().await.unwrap(), None);

    // Saved by the first client: the second reads it, and so does `incus`.
    let record = running(&topology);
    first.save(&record).await.unwrap();
    assert_eq!(second.load().await.unwrap(), Some(record.clone()));
    let shown: PendingRollout =
        serde_json::from_str(incus(&["profile", "get", &profile, ROLLOUT_KEY]).trim()).unwrap();
    assert_eq!(shown, record);

    // The second asks for a pause; it waits beside the record.
    let outcome = second.request_pause(&holder("second", 2)).await.unwrap();
    assert_eq!(outcome, PauseOutcome::Requested(record.clone()));
    let waiting = first.pause_requested().await.unwrap().unwrap();
    assert_eq!(waiting.by, holder("second", 2));
    assert_eq!(waiting.revision, record.revision);
    let shown: serde_json::Value = serde_json::from_str(
        incus(&["profile", "get", &pause_profile(&topology), PAUSE_KEY]).trim(),
    )
    .unwrap();
    assert_eq!(shown["by"]["user"], "second");
    // A second request while one waits changes nothing.
    assert_eq!(
        first.request_pause(&holder("third", 3)).await.unwrap(),
        PauseOutcome::Requested(record.clone())
    );
    assert_eq!(
        second.pause_requested().await.unwrap(),
        Some(waiting.clone())
    );

    // The running rollout moves to its next weights: the update keeps the request.
    let mut step = record.clone();
    step.weights = weights(75, 25);
    first.save(&step).await.unwrap();
    assert_eq!(second.load().await.unwrap(), Some(step.clone()));
    assert_eq!(
        second.pause_requested().await.unwrap(),
        Some(waiting.clone())
    );

    // Between steps it takes the request, once; the record stays.
    assert_eq!(
        first.take_pause_request().await.unwrap(),
        Some(waiting.clone())
    );
    assert_eq!(first.take_pause_request().await.unwrap(), None);
    assert_eq!(second.pause_requested().await.unwrap(), None);
    assert_eq!(second.load().await.unwrap(), Some(step.clone()));

    // It pauses at the step; a second pause has nothing to do.
    let paused = PendingRollout {
        phase: Phase::PausedAtStep {
            index: 1,
            weight: 25,
        },
        reason: Some(PauseReason::PauseRequested { by: waiting.by }),
        ..step
    };
    first.save(&paused).await.unwrap();
    let again = second.request_pause(&holder("third", 3)).await.unwrap();
    assert_eq!(again, PauseOutcome::AlreadyPaused(paused.clone()));
    assert_eq!(second.pause_requested().await.unwrap(), None);
    assert_eq!(second.load().await.unwrap(), Some(paused));

    // Over: cleared from the second machine, gone for everyone.
    assert!(second.clear().await.unwrap());
    assert_eq!(first.load().await.unwrap(), None);
    assert!(!profile_exists(&profile));
}

#[tokio::test]
async fn pause_requests_racing_with_a_running_rollout_lose_no_update() {
    let topology = names("pendrace").topology;
    let _guard = ProfileGuard(topology.clone());
    let runner = store(&topology);
    let mut record = running(&topology);
    runner.save(&record).await.unwrap();

    // The running rollout saves ten steps while four operators ask for a pause.
    let requests = (0..4_u32).map(|i| {
        let topology = topology.clone();
        async move {
            store(&topology)
                .request_pause(&holder(&format!("op{i}"), i))
                .await
                .unwrap()
        }
    });
    let steps = async {
        for weight in 1..=10 {
            record.weights = weights(100 - weight, weight);
            runner.save(&record).await.unwrap();
        }
        record.clone()
    };
    let (outcomes, last) = tokio::join!(futures_util::future::join_all(requests), steps);
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, PauseOutcome::Requested(_)))
    );
    // Every step's update is there, and exactly one request is waiting.
    assert_eq!(store(&topology).load().await.unwrap(), Some(last));
    let taken = runner.take_pause_request().await.unwrap().unwrap();
    assert!(taken.by.user.starts_with("op"), "{taken:?}");
    assert_eq!(runner.take_pause_request().await.unwrap(), None);

    // Two takers of one request: one gets it.
    store(&topology)
        .request_pause(&holder("op9", 9))
        .await
        .unwrap();
    let other = store(&topology);
    let (a, b) = tokio::join!(runner.take_pause_request(), other.take_pause_request());
    let got: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(got.len(), 1, "{got:?}");

    // A request left behind by an earlier rollout is not this one's.
    let stale = r#"{"by":{"user":"old","host":"h","pid":1},"at":"2026-11-26T00:00:00Z","revision":"20261125T000000.000Z"}"#;
    let pause = pause_profile(&topology);
    incus(&["profile", "create", &pause]);
    incus(&["profile", "set", &pause, PAUSE_KEY, stale]);
    assert_eq!(runner.pause_requested().await.unwrap(), None);
    assert_eq!(runner.take_pause_request().await.unwrap(), None);
    assert!(!profile_exists(&pause));
    assert!(runner.clear().await.unwrap());
}

#[tokio::test]
async fn a_damaged_record_is_refused_with_the_profile_and_the_way_out() {
    let topology = names("pendbad").topology;
    let profile = rollout_profile(&topology);
    let _guard = ProfileGuard(topology.clone());
    let store = store(&topology);
    incus(&["profile", "create", &profile]);

    // A profile of that name without the key.
    let err = store.load().await.unwrap_err();
    assert!(matches!(err, PendingError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("has no user.cul8er.rollout key"),
        "{err}"
    );

    let deep = "[".repeat(5_000);
    let wrong_shape = r#"{"topology":"x","phase":{"kind":"sideways"}}"#;
    for hostile in ["{\"topology\": 12", wrong_shape, &deep, "null"] {
        incus(&["profile", "set", &profile, ROLLOUT_KEY, hostile]);
        let err = store.load().await.unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(
                &err,
                PendingError::Corrupt {
                    source: Some(_),
                    ..
                }
            ),
            "{hostile}: {err:?}"
        );
        for needle in [
            format!("profile {profile} (project default, host local)"),
            "`cul8er abort` discards it".to_owned(),
            format!("`incus profile delete {profile} --project default`"),
        ] {
            assert!(
                message.contains(needle.as_str()),
                "{needle} not in {message}"
            );
        }
        let err = store.request_pause(&holder("second", 2)).await.unwrap_err();
        assert!(matches!(err, PendingError::Corrupt { .. }), "{err}");
    }

    // A damaged pause request is refused too, named, and left in place.
    let pause = pause_profile(&topology);
    incus(&["profile", "create", &pause]);
    incus(&["profile", "set", &pause, PAUSE_KEY, "{oops"]);
    let err = store.take_pause_request().await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("unreadable user.cul8er.pause"), "{err}");
    assert!(
        message.contains(&format!("`incus profile delete {pause} --project default`")),
        "{err}"
    );
    assert_eq!(
        incus(&["profile", "get", &pause, PAUSE_KEY]).trim(),
        "{oops"
    );

    // Clearing does not need to read either.
    assert!(store.clear().await.unwrap());
    assert_eq!(store.load().await.unwrap(), None);
    assert!(!profile_exists(&profile));
    assert!(!profile_exists(&pause));
}
