//! Rollouts: how a change reaches running instances without anyone noticing, and how
//! it is undone when the new version is bad.
//!
//! [`apply`] wraps the executor: objects that are not instance updates or
//! replacements (networks, volumes, new and removed instances, the edge) go through
//! the executor as they are; each resource's updated and replaced instances go
//! through its strategy, batch by batch ([`schedule`]), each batch behind its health
//! gate ([`crate::health`]). Before an in-place change the instance gets a snapshot
//! named after the revision ([`snapshot`]); an image change keeps the old instance
//! stopped and renamed until the replacement passes. A failed gate with rollback
//! `automatic` puts back every instance the rollout changed: the snapshot restored, the
//! kept instance brought back. With `manual`, the rollout stops and says how to go on.
//!
//! What happened is a [`RolloutRecord`] in the revision's directory; [`history`]
//! reads them back, and [`history::rollback_target`] picks the revision `cul8er
//! rollback` returns to.

pub mod analysis;
pub mod history;
pub mod pending;
mod run;
pub mod schedule;
pub mod snapshot;
pub mod switch;

use serde::{Deserialize, Serialize};

pub use run::{RolloutReport, apply, apply_with};

/// How a rollout ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum RolloutResult {
    /// Every changed instance passed its gate.
    Succeeded,
    /// A gate or step failed and the changed instances were put back.
    RolledBack {
        /// Why the rollout failed.
        reason: String,
    },
    /// A gate or step failed and the instances could not all be put back, or
    /// rollback is `manual`: the operator decides.
    Failed {
        /// Why the rollout failed.
        reason: String,
        /// What to do next.
        next: String,
    },
    /// A blue-green or canary rollout stopped at a whole step and is recorded on the
    /// Incus server ([`pending`]): `cul8er promote`, `resume` or `abort` go on.
    Paused {
        /// Why it paused (manual promotion, a pause requested).
        reason: String,
        /// What to do next.
        next: String,
    },
}

impl RolloutResult {
    /// The one word `history` shows.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::RolledBack { .. } => "rolled-back",
            Self::Failed { .. } => "failed",
            Self::Paused { .. } => "paused",
        }
    }

    /// Whether the new version is serving.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        matches!(self, Self::Succeeded)
    }
}

/// One resource's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRollout {
    /// The resource.
    pub resource: String,
    /// The strategy used (`recreate`, `rolling`, ...).
    pub strategy: String,
    /// The release version rolled out, if the resource has a release.
    pub version: Option<String>,
    /// The instances changed, in the order they were.
    pub instances: Vec<String>,
    /// Snapshots taken before in-place changes, as `instance/snapshot`.
    pub snapshots: Vec<String>,
    /// How it ended.
    pub result: RolloutResult,
}

/// What a revision's rollouts did: `rollout.json` in the revision's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutRecord {
    /// The revision.
    pub revision: String,
    /// Each resource that had updated or replaced instances.
    pub resources: Vec<ResourceRollout>,
    /// The whole revision's result: the first failure, else success.
    pub result: RolloutResult,
}
