//! The record of a rollout in progress on a real Incus server: saved by one client,
//! read, paused and cleared by another, checked with the `incus` command, and a damaged
//! record refused with an error that says how to get rid of it.
//!
//! Each test uses its own topology name (`cul8er-t-...`) and a guard that deletes the
//! record's profile even when the test fails.

#![allow(clippy::unwrap_used)]

mod live_support;

use cul8er_core::lock::{Holder, LeaseScope};
use cul8er_core::rollout::pending::{
    BackendWeight, InstanceSet, PAUSE_KEY, PauseOutcome, PauseReason, PendingError, PendingRollout,
    PendingStore, Phase, ROLLOUT_KEY, SetMember, SwitchStrategy, rollout_profile,
};
use live_support::{client, incus, incus_quiet, names};

/// Deletes the rollout profile when dropped.
struct ProfileGuard(String);

impl Drop for ProfileGuard {
    fn drop(&mut self) {
        incus_quiet(&["profile", "delete", &self.0]);
    }
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
        phase: Phase::Running,
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
    let _guard = ProfileGuard(profile.clone());
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
    assert!(
        !incus(&["profile", "get", &profile, PAUSE_KEY])
            .trim()
            .is_empty()
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
    assert!(
        !incus(&["profile", "list", "--format", "csv", "-c", "n"])
            .lines()
            .any(|l| l == profile)
    );
}

#[tokio::test]
async fn a_damaged_record_is_refused_with_the_profile_and_the_way_out() {
    let topology = names("pendbad").topology;
    let profile = rollout_profile(&topology);
    let _guard = ProfileGuard(profile.clone());
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

    // A damaged pause request is refused too and left in place.
    incus(&["profile", "set", &profile, PAUSE_KEY, "{oops"]);
    let err = store.take_pause_request().await.unwrap_err();
    assert!(
        err.to_string().contains("unreadable user.cul8er.pause"),
        "{err}"
    );
    assert_eq!(
        incus(&["profile", "get", &profile, PAUSE_KEY]).trim(),
        "{oops"
    );

    // Clearing does not need to read it.
    assert!(store.clear().await.unwrap());
    assert_eq!(store.load().await.unwrap(), None);
}
