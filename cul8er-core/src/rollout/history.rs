//! Revision history from the state directory: what `cul8er history` lists and the
//! revision `cul8er rollback` returns to.
//!
//! A revision id is the UTC time the apply began, to the millisecond
//! (`YYYYMMDDThhmmss.mmmZ`, [`crate::lock::revision_id`]); [`Revision::time`] is the
//! same instant in RFC 3339, and [`Revision::display_time`] the way a table shows it.

use serde::{Deserialize, Serialize};

use super::{RolloutRecord, RolloutResult};
use crate::execute::ApplyOutcome;
use crate::state::{StateDir, StateError};
use crate::topology::Topology;

/// One revision as `history` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revision {
    /// The revision id; it is also its UTC time (`YYYYMMDDThhmmss.mmmZ`).
    pub revision: String,
    /// When the revision's apply began, UTC, in RFC 3339 (`2026-11-26T04:48:11.042Z`);
    /// `None` when the id is not a time (a directory made by hand).
    #[serde(default)]
    pub time: Option<String>,
    /// Release versions by resource (`web=2`), for resources with a release.
    pub versions: Vec<String>,
    /// Strategies of the resources rolled out, `-` when nothing was rolled.
    pub strategies: Vec<String>,
    /// `succeeded`, `rolled-back`, `failed`, `cancelled` or `unfinished`.
    pub outcome: String,
    /// Why it failed, when it did.
    pub reason: Option<String>,
}

impl Revision {
    /// The time for a table: `2026-11-26 04:48:11` (UTC), or `-` when the id is not
    /// a time.
    #[must_use]
    pub fn display_time(&self) -> String {
        self.time.as_deref().map_or_else(
            || "-".to_owned(),
            |t| t.get(..19).unwrap_or(t).replacen('T', " ", 1),
        )
    }

    /// Whether this revision ended with its version serving.
    #[must_use]
    pub fn is_good(&self) -> bool {
        self.outcome == "succeeded"
    }
}

/// The history could not be read, or there is nothing to roll back to.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The state directory could not be read.
    #[error("cannot read the revision history")]
    State(#[from] StateError),
    /// A record could not be read or decoded.
    #[error("cannot read {path}")]
    Record {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No good revision before the current one.
    #[error(
        "no earlier good revision of topology {topology} to roll back to; `cul8er history` lists them"
    )]
    NothingToRollBackTo {
        /// The topology.
        topology: String,
    },
    /// `--to` names a revision that is not recorded.
    #[error(
        "revision {revision} of topology {topology} is not recorded; `cul8er history` lists them"
    )]
    UnknownRevision {
        /// The topology.
        topology: String,
        /// The revision asked for.
        revision: String,
    },
}

fn read<T: serde::de::DeserializeOwned>(
    state: &StateDir,
    topology: &str,
    revision: &str,
    name: &str,
) -> Result<Option<T>, HistoryError> {
    let path = state
        .revision_dir(topology, revision)
        .join(format!("{name}.json"));
    let bytes = match fs_err::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(HistoryError::Record {
                path: path.display().to_string(),
                source: Box::new(e),
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| HistoryError::Record {
            path: path.display().to_string(),
            source: Box::new(e),
        })
}

/// The topology as revision `revision` deployed it.
///
/// # Errors
/// [`HistoryError`] when the revision or its topology is not recorded.
pub fn topology_of(
    state: &StateDir,
    topology: &str,
    revision: &str,
) -> Result<Topology, HistoryError> {
    read(state, topology, revision, "topology")?.ok_or_else(|| HistoryError::UnknownRevision {
        topology: topology.to_owned(),
        revision: revision.to_owned(),
    })
}

/// Every recorded revision of `topology`, oldest first.
///
/// # Errors
/// [`HistoryError`] when the directory or a record cannot be read.
pub fn history(state: &StateDir, topology: &str) -> Result<Vec<Revision>, HistoryError> {
    let mut revisions = Vec::new();
    for revision in state.revisions(topology)? {
        let deployed: Option<Topology> = read(state, topology, &revision, "topology")?;
        let outcome: Option<ApplyOutcome> = read(state, topology, &revision, "outcome")?;
        let rollout: Option<RolloutRecord> = read(state, topology, &revision, "rollout")?;
        let versions = deployed
            .iter()
            .flat_map(|t| &t.resources)
            .filter_map(|r| {
                r.release
                    .as_ref()
                    .map(|rel| format!("{}={}", r.name, rel.version))
            })
            .collect();
        let strategies = rollout
            .iter()
            .flat_map(|r| &r.resources)
            .map(|r| format!("{}:{}", r.resource, r.strategy))
            .collect();
        let (outcome, reason) = match (&rollout, &outcome) {
            (Some(record), _) if !record.result.succeeded() => (
                record.result.as_str().to_owned(),
                match &record.result {
                    RolloutResult::RolledBack { reason }
                    | RolloutResult::Failed { reason, .. }
                    | RolloutResult::Paused { reason, .. } => Some(reason.clone()),
                    RolloutResult::Succeeded => None,
                },
            ),
            (_, Some(o)) if o.cancelled => ("cancelled".to_owned(), None),
            (_, Some(o)) if o.succeeded() => ("succeeded".to_owned(), None),
            (_, Some(o)) => (
                "failed".to_owned(),
                o.failures().next().and_then(|f| f.error.clone()),
            ),
            (_, None) => ("unfinished".to_owned(), None),
        };
        revisions.push(Revision {
            time: revision_time(&revision),
            revision,
            versions,
            strategies,
            outcome,
            reason,
        });
    }
    Ok(revisions)
}

/// The UTC time a revision id stands for, in RFC 3339 (`20261126T044811.042Z` is
/// `2026-11-26T04:48:11.042Z`); `None` when `id` is not of that shape.
#[must_use]
pub fn revision_time(id: &str) -> Option<String> {
    let b = id.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let shaped = b.len() == 20
        && digits(0..8)
        && b[8] == b'T'
        && digits(9..15)
        && b[15] == b'.'
        && digits(16..19)
        && b[19] == b'Z';
    shaped.then(|| {
        format!(
            "{}-{}-{}T{}:{}:{}.{}Z",
            &id[0..4],
            &id[4..6],
            &id[6..8],
            &id[9..11],
            &id[11..13],
            &id[13..15],
            &id[16..19]
        )
    })
}

/// The revision `cul8er rollback` returns to: `to` when given (it must be recorded),
/// else the good revision before the newest good one (the one serving now).
///
/// # Errors
/// [`HistoryError::UnknownRevision`], [`HistoryError::NothingToRollBackTo`].
pub fn rollback_target(
    revisions: &[Revision],
    topology: &str,
    to: Option<&str>,
) -> Result<String, HistoryError> {
    if let Some(to) = to {
        return revisions
            .iter()
            .find(|r| r.revision == to)
            .map(|r| r.revision.clone())
            .ok_or_else(|| HistoryError::UnknownRevision {
                topology: topology.to_owned(),
                revision: to.to_owned(),
            });
    }
    revisions
        .iter()
        .rev()
        .filter(|r| r.is_good())
        .nth(1)
        .map(|r| r.revision.clone())
        .ok_or_else(|| HistoryError::NothingToRollBackTo {
            topology: topology.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(id: &str, outcome: &str) -> Revision {
        Revision {
            revision: id.into(),
            time: revision_time(id),
            versions: vec![],
            strategies: vec![],
            outcome: outcome.into(),
            reason: None,
        }
    }

    #[test]
    fn rollback_skips_failed_revisions_and_the_one_serving() {
        let history = [
            rev("1", "succeeded"),
            rev("2", "succeeded"),
            rev("3", "rolled-back"),
            rev("4", "succeeded"),
            rev("5", "failed"),
        ];
        assert_eq!(rollback_target(&history, "t", None).unwrap(), "2");
        assert_eq!(rollback_target(&history, "t", Some("1")).unwrap(), "1");
        assert!(matches!(
            rollback_target(&history, "t", Some("9")),
            Err(HistoryError::UnknownRevision { .. })
        ));
        assert!(matches!(
            rollback_target(&history[..1], "t", None),
            Err(HistoryError::NothingToRollBackTo { .. })
        ));
    }

    #[test]
    fn revision_ids_read_as_utc_times() {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_668_491_042);
        let id = crate::lock::revision_id(at);
        assert_eq!(
            revision_time(&id).as_deref(),
            Some("2026-11-26T04:48:11.042Z")
        );
        let r = rev(&id, "succeeded");
        assert_eq!(r.display_time(), "2026-11-26 04:48:11");
        for not_a_time in [
            "r1",
            "",
            "20261126T044811.042",
            "2026112xT044811.042Z",
            "20261126T044811.042Zé",
        ] {
            assert_eq!(revision_time(not_a_time), None, "{not_a_time}");
        }
        assert_eq!(rev("r1", "failed").display_time(), "-");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["time"], "2026-11-26T04:48:11.042Z");
        assert_eq!(json["revision"], id.as_str());
        // Older JSON without the field still reads.
        let old: Revision = serde_json::from_str(
            r#"{"revision":"r1","versions":[],"strategies":[],"outcome":"succeeded","reason":null}"#,
        )
        .unwrap();
        assert_eq!(old.time, None);
    }

    #[test]
    fn history_reads_versions_strategies_and_outcomes() {
        let temp = tempfile::tempdir().unwrap();
        let state = StateDir::new(temp.path());
        let record = RolloutRecord {
            revision: "r2".into(),
            resources: vec![super::super::ResourceRollout {
                resource: "web".into(),
                strategy: "rolling".into(),
                version: Some("5".into()),
                instances: vec!["t-web-1".into()],
                snapshots: vec![],
                result: RolloutResult::RolledBack {
                    reason: "health gate failed".into(),
                },
            }],
            result: RolloutResult::RolledBack {
                reason: "health gate failed".into(),
            },
        };
        state.write_record("t", "r2", "rollout", &record).unwrap();
        state
            .write_record(
                "t",
                "r1",
                "outcome",
                &ApplyOutcome {
                    revision: "r1".into(),
                    steps: vec![],
                    cancelled: false,
                    millis: 1,
                },
            )
            .unwrap();
        let listed = history(&state, "t").unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].outcome, "succeeded");
        assert_eq!(listed[1].outcome, "rolled-back");
        assert_eq!(listed[1].strategies, ["web:rolling"]);
        assert_eq!(listed[1].reason.as_deref(), Some("health gate failed"));
        assert_eq!(listed[0].time, None);
    }
}
