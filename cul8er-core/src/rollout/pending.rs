//! The record of a blue-green or canary rollout in progress, kept on the Incus server
//! so that `cul8er promote`, `resume`, `pause` and `abort` continue it from any machine.
//!
//! cul8er has no daemon: `apply` runs a rollout in the foreground, and a pause without
//! a duration (manual promotion, `pause=manual`, `cul8er pause`, an interruption) ends
//! the command with the rollout half-way. What it was doing is a [`PendingRollout`]:
//! which resource, which revision, the old and new sets of instances with their edge
//! backends, the weights in force, the phase, why it stopped, who ran it and when.
//!
//! # Where it is kept
//!
//! Beside the lease ([`crate::lock`]): an Incus profile [`rollout_profile`]
//! (`cul8er-rollout-<topology>`) in the topology's project on its first host, its
//! config key [`ROLLOUT_KEY`] (`user.cul8er.rollout`) holding the record as JSON.
//! Profiles keep `user.*` keys, no instance uses this one, and `incus profile show`
//! shows it to anyone wondering why an apply refuses. Only the command holding the
//! lease writes the record.
//!
//! A request to pause a running rollout (`cul8er pause`, which holds no lease) is a
//! profile of its own, [`pause_profile`] (`cul8er-pause-<topology>`, key
//! [`PAUSE_KEY`]), naming the revision it pauses; the running rollout takes it between
//! steps ([`PendingStore::take_pause_request`]). Two writers never share a profile:
//! on Incus 6.0.4 two concurrent `PUT`s with the same `If-Match` both succeed (see
//! [`crate::lock`]), so a flag written into the record's profile could silently undo
//! a step's update, or be undone by it. Creating a profile is atomic, and of two
//! takers of a request only one deletes it. A request left behind for a rollout that
//! has ended since (it raced with the end) names another revision and is discarded.
//!
//! # The lease while a rollout is paused
//!
//! The lease is held only while a command runs: the `apply` that pauses a rollout saves
//! this record and then releases the lease as it ends. While the record exists it, not
//! the lease, keeps the topology from being changed: a plain `apply` of the same
//! topology refuses and names the paused rollout and the commands that continue it.
//! `cul8er promote`, `resume` and `abort` take the lease again, load the record, go on
//! (or undo), and [`clear`](PendingStore::clear) it when the rollout is over. `cul8er
//! pause` takes no lease: it only sets the pause request, which the command running the
//! rollout (holding the lease) acts on at its next step.
//!
//! # What a killed command leaves
//!
//! The record is written before each move of traffic, never after: a canary's
//! `running` record names the step it moves to ([`Phase::Running`]), so a command
//! killed between the record and the edge change leaves the edge one step behind the
//! record, and going on applies the recorded step's weights again (idempotent). A
//! blue-green record says `running` until the switch; killed between the switch and
//! the `switched` record, the edge already gives the new set all traffic, so a
//! `running` record is read against the edge ([`PendingRollout::phase_on_edge`]) by
//! `promote`, `resume`, `abort` and `status` before anything acts on it.
//!
//! # A damaged record
//!
//! A record that cannot be read (edited by hand, written by an unknown version) is a
//! [`PendingError::Corrupt`] naming the profile and the two ways out: `cul8er abort`
//! (which can [`clear`](PendingStore::clear) without reading it) or `incus profile
//! delete`. Nothing in this module panics on what it reads.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::lock::{Holder, LeaseScope};

/// The config key of the rollout profile that holds the [`PendingRollout`] as JSON.
pub const ROLLOUT_KEY: &str = "user.cul8er.rollout";

/// The config key of the pause profile that holds a [`PauseRequest`] as JSON.
pub const PAUSE_KEY: &str = "user.cul8er.pause";

const NO_RECORD: &str = "has no user.cul8er.rollout key";
const UNREADABLE_RECORD: &str = "has an unreadable user.cul8er.rollout";
const UNREADABLE_PAUSE: &str = "has an unreadable user.cul8er.pause";
const NO_PAUSE: &str = "has no user.cul8er.pause key";

/// How many times a save is retried when the profile appears or vanishes under it.
const ATTEMPTS: usize = 10;

/// The name of the Incus profile holding a topology's rollout in progress.
///
/// A topology name is lower-case letters, digits and hyphens, short enough for its
/// instances' names to stay within 59 characters ([`crate::topology::names`]), so this
/// one (`cul8er-rollout-` and the topology) is a valid profile name: Incus 6.0.4 checks
/// profile names for characters, not length (an 84-character one was accepted).
#[must_use]
pub fn rollout_profile(topology: &str) -> String {
    format!("cul8er-rollout-{topology}")
}

/// The name of the Incus profile holding a request to pause a topology's running
/// rollout.
#[must_use]
pub fn pause_profile(topology: &str) -> String {
    format!("cul8er-pause-{topology}")
}

/// A UTC time as RFC 3339 to the second, e.g. `2026-11-26T04:48:11Z`.
#[must_use]
pub fn utc_time(at: SystemTime) -> String {
    // revision_id is `YYYYMMDDTHHMMSS.mmmZ`, always ASCII of that shape.
    let id = crate::lock::revision_id(at);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &id[0..4],
        &id[4..6],
        &id[6..8],
        &id[9..11],
        &id[11..13],
        &id[13..15]
    )
}

/// Which switching strategy the rollout follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchStrategy {
    /// A parallel set that takes all traffic in one switch.
    BlueGreen,
    /// A canary set whose share of traffic follows the steps.
    Canary,
}

impl SwitchStrategy {
    /// The strategy's name as topologies write it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlueGreen => "blue-green",
            Self::Canary => "canary",
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Phase {
    /// A command is driving it now (it checks for a pause request between steps), or
    /// the command was killed: the lease then tells which.
    Running {
        /// Canary: the step being moved to. It is recorded before the edge's weights
        /// move, so the edge holds this step's weights or the step before's; going on
        /// from here applies this step's weights again (the same weights twice change
        /// nothing) and never lowers the canary's share. `None` before the steps
        /// (bring-up, blue-green).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<StepAt>,
    },
    /// Blue-green: the new set passed its gates at weight 0 and waits for `promote`.
    PausedBeforeSwitch,
    /// Canary: the canary holds `weight` percent of traffic at step `index` (from 0
    /// in the canary's steps) and waits for `promote` or `resume`.
    PausedAtStep {
        /// The step, counted from 0.
        index: usize,
        /// The canary's share of traffic, in percent.
        weight: u32,
    },
    /// The edge switched all traffic to the new set; the keys that tell the planner
    /// so may not have landed yet. Only `promote` or `resume` (which finish the
    /// marking) go on from here; the switch is never undone by `abort`.
    Switched,
}

/// A canary step: its place in the steps and the canary's share of traffic there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepAt {
    /// The step, counted from 0.
    pub index: usize,
    /// The canary's share of traffic, in percent.
    pub weight: u32,
}

impl Phase {
    /// A running rollout before (or without) canary steps.
    pub const RUNNING: Self = Self::Running { step: None };

    /// Whether no command is driving the rollout.
    #[must_use]
    pub fn is_paused(self) -> bool {
        !matches!(self, Self::Running { .. })
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running { step: None } => f.write_str("running"),
            Self::Running {
                step: Some(StepAt { index, weight }),
            } => write!(f, "running at step {} ({weight}% to the canary)", index + 1),
            Self::PausedBeforeSwitch => f.write_str("paused before the switch"),
            Self::Switched => f.write_str("switched, the new set not yet marked as serving"),
            Self::PausedAtStep { index, weight } => {
                write!(f, "paused at step {} ({weight}% to the canary)", index + 1)
            }
        }
    }
}

/// Why a rollout paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PauseReason {
    /// The topology asks for manual promotion (`promotion=manual`, `pause=manual`).
    ManualPromotion,
    /// `cul8er pause` asked for it.
    PauseRequested {
        /// Who asked.
        by: Holder,
    },
    /// The command running it was interrupted (Ctrl-C) and stopped at a whole step.
    Interrupted,
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ManualPromotion => f.write_str("manual promotion"),
            Self::PauseRequested { by } => write!(f, "pause requested by {by}"),
            Self::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// One instance of a set and its backend in the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetMember {
    /// The Incus instance.
    pub instance: String,
    /// Its backend's name in the edge's service (empty when not behind the edge).
    pub backend: String,
}

/// A set of instances: the serving one, or the new one beside it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSet {
    /// The set's identity, as the instances carry it (e.g. `b`, `g`, `c`).
    pub set: String,
    /// Its instances.
    pub members: Vec<SetMember>,
}

/// A backend's weight in an edge service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendWeight {
    /// The edge's service.
    pub service: String,
    /// The backend.
    pub backend: String,
    /// Its weight.
    pub weight: u32,
}

/// A rollout in progress, as kept on the Incus server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRollout {
    /// The topology.
    pub topology: String,
    /// The revision being rolled out.
    pub revision: String,
    /// The resource.
    pub resource: String,
    /// The release version rolled out, if the resource has a release.
    #[serde(default)]
    pub version: Option<String>,
    /// Blue-green or canary.
    pub strategy: SwitchStrategy,
    /// Where it stands.
    pub phase: Phase,
    /// The set serving before the rollout.
    pub old_set: InstanceSet,
    /// The set being rolled out.
    pub new_set: InstanceSet,
    /// The edge weights in force.
    #[serde(default)]
    pub weights: Vec<BackendWeight>,
    /// Why it paused; `None` while running.
    #[serde(default)]
    pub reason: Option<PauseReason>,
    /// Who ran the command that wrote the record.
    pub holder: Holder,
    /// When the record was written, UTC (RFC 3339, see [`utc_time`]).
    pub at: String,
    /// The topology's hosts the rollout touches; the record lives on the first.
    pub hosts: Vec<String>,
}

impl fmt::Display for PendingRollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rollout of resource {} (revision {}",
            self.strategy.as_str(),
            self.resource,
            self.revision
        )?;
        if let Some(version) = &self.version {
            write!(f, ", version {version}")?;
        }
        write!(f, ") {}", self.phase)?;
        if let Some(reason) = &self.reason {
            write!(f, " ({reason})")?;
        }
        write!(f, " since {} by {}", self.at, self.holder)
    }
}

impl PendingRollout {
    /// Where the rollout stands given the weights the edge holds now (`edge`: the
    /// backends of the record's host's edge).
    ///
    /// The record is written before each move of traffic, so a command killed
    /// between the edge's switch and saving the `switched` record leaves a `running`
    /// record whose switch has happened. The edge is the truth about traffic: when it
    /// gives the old set nothing and the new set something, the rollout is
    /// [`Phase::Switched`], and `abort` must not undo it. Any other record, an edge
    /// without the new set's backends, or a rollout without the edge keeps the
    /// record's phase.
    #[must_use]
    pub fn phase_on_edge(&self, edge: &[BackendWeight]) -> Phase {
        if !matches!(self.phase, Phase::Running { .. }) {
            return self.phase;
        }
        // The set's total weight; `None` when none of its backends is on the edge.
        let weight_of = |set: &InstanceSet| {
            edge.iter()
                .filter(|w| {
                    set.members
                        .iter()
                        .any(|m| !m.backend.is_empty() && m.backend == w.backend)
                })
                .map(|w| u64::from(w.weight))
                .reduce(|a, b| a + b)
        };
        match (weight_of(&self.old_set), weight_of(&self.new_set)) {
            (None | Some(0), Some(new)) if new > 0 => Phase::Switched,
            _ => self.phase,
        }
    }
}

/// The rollout in progress as `cul8er status` reports it (`rollout` in
/// `status --output json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutStatus {
    /// Where it stands: the record's phase, read against the edge
    /// ([`PendingRollout::phase_on_edge`]).
    pub phase: Phase,
    /// The record as kept on the Incus server (its own `phase` is what the command
    /// that wrote it last recorded).
    pub record: PendingRollout,
    /// A `running` record whose edge could not be read: why. `phase` is then the
    /// record's own and whether the switch happened is not known (`promote`,
    /// `resume` and `abort` read the edge before they act). Absent when the edge
    /// was read, or when nothing needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge_unread: Option<String>,
}

impl RolloutStatus {
    /// The status of `record` given the weights on its edge.
    #[must_use]
    pub fn new(record: PendingRollout, edge: &[BackendWeight]) -> Self {
        Self {
            phase: record.phase_on_edge(edge),
            record,
            edge_unread: None,
        }
    }

    /// The status of `record` read against the edge on its first host among `edges`
    /// (as `cul8er status` reads them). A `running` record of sets behind the edge
    /// whose edge did not answer (or is not among `edges`) keeps its own phase, with
    /// [`RolloutStatus::edge_unread`] saying so: an unread edge is never taken for
    /// one that has not switched.
    #[must_use]
    pub fn on_edges(record: PendingRollout, edges: &[crate::edge::EdgeStatus]) -> Self {
        let host = record.hosts.first();
        let edge = edges.iter().find(|e| host == Some(&e.host));
        let behind_edge = record
            .old_set
            .members
            .iter()
            .chain(&record.new_set.members)
            .any(|m| !m.backend.is_empty());
        let edge_unread = (matches!(record.phase, Phase::Running { .. })
            && behind_edge
            && edge.is_none_or(|e| e.health.is_none()))
        .then(|| match (edge, host) {
            (Some(e), _) => format!(
                "the edge {} on host {} did not answer, so whether the switch happened is not known",
                e.instance, e.host
            ),
            (None, Some(host)) => format!(
                "the topology has no edge on host {host} to read, so whether the switch happened is not known"
            ),
            (None, None) => {
                "the record names no host, so whether the switch happened is not known".to_owned()
            }
        });
        let weights: Vec<BackendWeight> = edge
            .into_iter()
            .filter_map(|e| e.health.as_ref())
            .flat_map(|health| &health.services)
            .flat_map(|service| {
                service.backends.iter().map(|b| BackendWeight {
                    service: service.name.clone(),
                    backend: b.name.clone(),
                    weight: b.weight,
                })
            })
            .collect();
        Self {
            edge_unread,
            ..Self::new(record, &weights)
        }
    }
}

impl fmt::Display for RolloutStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.record)?;
        if self.phase != self.record.phase {
            write!(
                f,
                "; the edge shows it {}: the command that ran it stopped before recording that",
                self.phase
            )?;
        }
        if let Some(why) = &self.edge_unread {
            write!(f, "; {why}")?;
        }
        Ok(())
    }
}

/// A request to pause a running rollout at its next step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRequest {
    /// Who asked.
    pub by: Holder,
    /// When, UTC (RFC 3339).
    pub at: String,
    /// The revision of the rollout it pauses.
    pub revision: String,
}

/// What [`PendingStore::request_pause`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PauseOutcome {
    /// The request is recorded; the running rollout pauses at its next step.
    Requested(PendingRollout),
    /// The rollout is paused already; nothing was written.
    AlreadyPaused(PendingRollout),
}

/// The rollout record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PendingError {
    /// Incus refused to read or change the profile.
    #[error("cannot {what} profile {profile} (project {project}, host {host})")]
    Incus {
        /// What was being done.
        what: &'static str,
        /// The profile.
        profile: String,
        /// The project.
        project: String,
        /// The Incus host.
        host: String,
        /// What Incus said.
        #[source]
        source: Box<incus_api::Error>,
    },
    /// The record or a pause request is there but cannot be read.
    #[error(
        "cannot read the rollout in progress: profile {profile} (project {project}, host {host}) {problem}; `cul8er abort` discards it, or remove it by hand with `incus profile delete {profile} --project {project}`"
    )]
    Corrupt {
        /// The profile.
        profile: String,
        /// The project.
        project: String,
        /// The Incus host.
        host: String,
        /// What is wrong, e.g. `has an unreadable user.cul8er.rollout`.
        problem: &'static str,
        /// The parser's message, when it is a parse failure.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// There is no rollout in progress to act on.
    #[error("topology {topology} has no rollout in progress")]
    NoRollout {
        /// The topology.
        topology: String,
    },
    /// The profile kept appearing and vanishing while it was written.
    #[error(
        "profile {profile} (project {project}, host {host}) kept changing while it was written; try again"
    )]
    Contended {
        /// The profile.
        profile: String,
        /// The project.
        project: String,
        /// The Incus host.
        host: String,
    },
}

/// The rollout record of one topology on its Incus server.
#[derive(Debug, Clone)]
pub struct PendingStore {
    scope: LeaseScope,
}

impl PendingStore {
    /// The store beside the lease of `scope`: same host, project and topology. Nothing
    /// is sent.
    #[must_use]
    pub fn new(scope: LeaseScope) -> Self {
        Self { scope }
    }

    /// The profile that holds the record.
    #[must_use]
    pub fn profile(&self) -> String {
        rollout_profile(&self.scope.topology)
    }

    /// The profile that holds a pause request.
    #[must_use]
    pub fn pause_profile(&self) -> String {
        pause_profile(&self.scope.topology)
    }

    fn profiles(&self) -> incus_api::profiles::Profiles {
        self.scope.client.project(&self.scope.project).profiles()
    }

    fn incus(
        &self,
        what: &'static str,
        profile: String,
    ) -> impl FnOnce(incus_api::Error) -> PendingError + '_ {
        move |source| PendingError::Incus {
            what,
            profile,
            project: self.scope.project.clone(),
            host: self.scope.host.clone(),
            source: Box::new(source),
        }
    }

    fn corrupt(
        &self,
        profile: String,
        problem: &'static str,
        source: Option<serde_json::Error>,
    ) -> PendingError {
        PendingError::Corrupt {
            profile,
            project: self.scope.project.clone(),
            host: self.scope.host.clone(),
            problem,
            source,
        }
    }

    fn put(description: String, key: &str, json: String) -> incus_api::profiles::ProfilePut {
        incus_api::profiles::ProfilePut {
            description,
            config: HashMap::from([(key.to_owned(), json)]),
            devices: HashMap::new(),
        }
    }

    /// The value of `key` in `profile`: `None` when the profile does not exist,
    /// `Some(None)` when it has no such key.
    async fn read(&self, profile: &str, key: &str) -> Result<Option<Option<String>>, PendingError> {
        match self.profiles().get(profile).await {
            Ok((mut found, _)) => Ok(Some(found.config.remove(key))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err((self.incus("read", profile.to_owned()))(e)),
        }
    }

    /// Deletes `profile`; `Ok(false)` when it was not there.
    async fn delete(&self, profile: &str) -> Result<bool, PendingError> {
        match self.profiles().delete(profile).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err((self.incus("delete", profile.to_owned()))(e)),
        }
    }

    /// Saves `record`: creates the profile, or replaces the record in it. Only the
    /// command holding the lease saves.
    ///
    /// # Errors
    ///
    /// [`PendingError::Incus`] when Incus refuses, [`PendingError::Contended`] when the
    /// profile keeps appearing and vanishing under the write.
    pub async fn save(&self, record: &PendingRollout) -> Result<(), PendingError> {
        let profile = self.profile();
        // These types always encode: every map key is a string.
        let json = serde_json::to_string(record).unwrap_or_default();
        let put = Self::put(
            format!(
                "cul8er rollout in progress on topology {}: `cul8er promote`, `resume` or `abort` continue it",
                self.scope.topology
            ),
            ROLLOUT_KEY,
            json,
        );
        for _ in 0..ATTEMPTS {
            match self.profiles().update(&profile, &put, None).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err((self.incus("update", profile))(e)),
            }
            match self.profiles().create(&profile, &put).await {
                Ok(()) => return Ok(()),
                // Created meanwhile: update it.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err((self.incus("create", profile))(e)),
            }
        }
        Err(PendingError::Contended {
            profile,
            project: self.scope.project.clone(),
            host: self.scope.host.clone(),
        })
    }

    /// The rollout in progress, `None` when there is none.
    ///
    /// # Errors
    ///
    /// [`PendingError::Corrupt`] when the profile exists but its record cannot be read,
    /// [`PendingError::Incus`] when Incus refuses.
    pub async fn load(&self) -> Result<Option<PendingRollout>, PendingError> {
        let profile = self.profile();
        match self.read(&profile, ROLLOUT_KEY).await? {
            None => Ok(None),
            Some(None) => Err(self.corrupt(profile, NO_RECORD, None)),
            Some(Some(value)) => serde_json::from_str(&value)
                .map(Some)
                .map_err(|e| self.corrupt(profile, UNREADABLE_RECORD, Some(e))),
        }
    }

    /// Removes the record and any pause request without reading them; `Ok(false)`
    /// when there was no record.
    ///
    /// # Errors
    ///
    /// [`PendingError::Incus`] when Incus refuses.
    pub async fn clear(&self) -> Result<bool, PendingError> {
        let existed = self.delete(&self.profile()).await?;
        self.delete(&self.pause_profile()).await?;
        Ok(existed)
    }

    /// Asks the running rollout to pause at its next step (`cul8er pause`). A request
    /// already waiting stays as it is.
    ///
    /// # Errors
    ///
    /// [`PendingError::NoRollout`] when there is no rollout in progress,
    /// [`PendingError::Corrupt`] when its record cannot be read, or
    /// [`PendingError::Incus`].
    pub async fn request_pause(&self, by: &Holder) -> Result<PauseOutcome, PendingError> {
        let Some(record) = self.load().await? else {
            return Err(PendingError::NoRollout {
                topology: self.scope.topology.clone(),
            });
        };
        if record.phase.is_paused() {
            return Ok(PauseOutcome::AlreadyPaused(record));
        }
        let request = PauseRequest {
            by: by.clone(),
            at: utc_time(SystemTime::now()),
            revision: record.revision.clone(),
        };
        let json = serde_json::to_string(&request).unwrap_or_default();
        let profile = self.pause_profile();
        let put = Self::put(
            format!(
                "cul8er: pause the rollout of topology {} at its next step",
                self.scope.topology
            ),
            PAUSE_KEY,
            json,
        );
        match self.profiles().create(&profile, &put).await {
            // A request is waiting already (perhaps a stale one: the running rollout
            // discards that one and, between steps, sees this rollout's next request).
            Ok(()) => Ok(PauseOutcome::Requested(record)),
            Err(e) if e.is_conflict() => Ok(PauseOutcome::Requested(record)),
            Err(e) => Err((self.incus("create", profile))(e)),
        }
    }

    /// The request waiting in the pause profile, read but left in place.
    async fn waiting_request(&self) -> Result<Option<PauseRequest>, PendingError> {
        let profile = self.pause_profile();
        match self.read(&profile, PAUSE_KEY).await? {
            None => Ok(None),
            Some(None) => Err(self.corrupt(profile, NO_PAUSE, None)),
            Some(Some(value)) => serde_json::from_str(&value)
                .map(Some)
                .map_err(|e| self.corrupt(profile, UNREADABLE_PAUSE, Some(e))),
        }
    }

    /// Whether `request` is for the rollout in progress now.
    async fn is_current(&self, request: &PauseRequest) -> Result<bool, PendingError> {
        Ok(self
            .load()
            .await?
            .is_some_and(|record| record.revision == request.revision))
    }

    /// The pause request waiting for the running rollout, if any; it stays.
    ///
    /// # Errors
    ///
    /// [`PendingError::Corrupt`] when the request or the record cannot be read, or
    /// [`PendingError::Incus`].
    pub async fn pause_requested(&self) -> Result<Option<PauseRequest>, PendingError> {
        let Some(request) = self.waiting_request().await? else {
            return Ok(None);
        };
        Ok(self.is_current(&request).await?.then_some(request))
    }

    /// Takes the pause request waiting for the running rollout, if any: the rollout
    /// calls this between steps and pauses when it gets one. The request is removed
    /// (of two takers, one gets it); a request for another revision is removed and
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`PendingError::Corrupt`] when the request cannot be read (it is left in place;
    /// [`clear`](Self::clear) removes it) or the record cannot be read,
    /// [`PendingError::Incus`].
    pub async fn take_pause_request(&self) -> Result<Option<PauseRequest>, PendingError> {
        let Some(request) = self.waiting_request().await? else {
            return Ok(None);
        };
        if !self.delete(&self.pause_profile()).await? {
            // Another taker was first.
            return Ok(None);
        }
        Ok(self.is_current(&request).await?.then_some(request))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn holder() -> Holder {
        Holder {
            user: "ops".into(),
            host: "laptop".into(),
            pid: 42,
        }
    }

    fn record(phase: Phase, reason: Option<PauseReason>) -> PendingRollout {
        PendingRollout {
            topology: "shop".into(),
            revision: "20261126T044811.042Z".into(),
            resource: "api".into(),
            version: Some("4".into()),
            strategy: SwitchStrategy::Canary,
            phase,
            old_set: InstanceSet {
                set: String::new(),
                members: vec![SetMember {
                    instance: "shop-api-1".into(),
                    backend: "shop-api-1".into(),
                }],
            },
            new_set: InstanceSet {
                set: "c".into(),
                members: vec![SetMember {
                    instance: "shop-api-1-c".into(),
                    backend: "shop-api-1-c".into(),
                }],
            },
            weights: vec![
                BackendWeight {
                    service: "api".into(),
                    backend: "shop-api-1".into(),
                    weight: 75,
                },
                BackendWeight {
                    service: "api".into(),
                    backend: "shop-api-1-c".into(),
                    weight: 25,
                },
            ],
            reason,
            holder: holder(),
            at: "2026-11-26T04:48:11Z".into(),
            hosts: vec!["local".into()],
        }
    }

    #[test]
    fn utc_times_are_rfc3339_to_the_second() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_668_491_042);
        assert_eq!(utc_time(at), "2026-11-26T04:48:11Z");
        assert_eq!(utc_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_record_reads_back_as_written_and_says_where_it_stands() {
        let paused = record(
            Phase::PausedAtStep {
                index: 1,
                weight: 25,
            },
            Some(PauseReason::PauseRequested { by: holder() }),
        );
        let json = serde_json::to_value(&paused).unwrap();
        assert_eq!(json["phase"]["kind"], "paused-at-step");
        assert_eq!(json["phase"]["weight"], 25);
        assert_eq!(json["strategy"], "canary");
        assert_eq!(json["reason"]["kind"], "pause-requested");
        let back: PendingRollout = serde_json::from_value(json).unwrap();
        assert_eq!(back, paused);
        assert_eq!(
            paused.to_string(),
            "canary rollout of resource api (revision 20261126T044811.042Z, version 4) paused at step 2 (25% to the canary) (pause requested by ops@laptop (pid 42)) since 2026-11-26T04:48:11Z by ops@laptop (pid 42)"
        );
        assert!(paused.phase.is_paused());
        assert!(!Phase::RUNNING.is_paused());
        assert_eq!(
            Phase::PausedBeforeSwitch.to_string(),
            "paused before the switch"
        );
    }

    fn weight(backend: &str, weight: u32) -> BackendWeight {
        BackendWeight {
            service: "api".into(),
            backend: backend.into(),
            weight,
        }
    }

    #[test]
    fn a_running_record_whose_edge_switched_is_switched() {
        let mut running = record(Phase::RUNNING, None);
        running.strategy = SwitchStrategy::BlueGreen;
        // Killed between the edge's switch and the `switched` record.
        let switched = [weight("shop-api-1", 0), weight("shop-api-1-c", 1)];
        assert_eq!(running.phase_on_edge(&switched), Phase::Switched);
        // The old set already retired from the edge: still switched.
        assert_eq!(
            running.phase_on_edge(&[weight("shop-api-1-c", 1)]),
            Phase::Switched
        );
        // Killed before the switch: the old set has the traffic, the record stands.
        let before = [weight("shop-api-1", 1), weight("shop-api-1-c", 0)];
        assert_eq!(running.phase_on_edge(&before), Phase::RUNNING);
        // A canary mid-step, and an edge without the sets (or none): as recorded.
        let step = Phase::Running {
            step: Some(StepAt {
                index: 1,
                weight: 25,
            }),
        };
        let stepping = record(step, None);
        let mid = [weight("shop-api-1", 3), weight("shop-api-1-c", 1)];
        assert_eq!(stepping.phase_on_edge(&mid), step);
        assert_eq!(stepping.phase_on_edge(&[]), step);
        assert_eq!(
            stepping.phase_on_edge(&[weight("shop-web-1", 1)]),
            step,
            "another resource's backends say nothing"
        );
        // Only a running record is read against the edge: a paused one was written
        // after its edge change.
        let paused = record(
            Phase::PausedAtStep {
                index: 1,
                weight: 25,
            },
            Some(PauseReason::ManualPromotion),
        );
        assert_eq!(paused.phase_on_edge(&switched), paused.phase);
        let status = RolloutStatus::new(running, &switched);
        assert_eq!(status.phase, Phase::Switched);
        assert!(
            status.to_string().ends_with(
                "; the edge shows it switched, the new set not yet marked as serving: the command that ran it stopped before recording that"
            ),
            "{status}"
        );
    }

    #[test]
    fn a_running_record_carries_its_step_and_older_records_still_read() {
        let at = Phase::Running {
            step: Some(StepAt {
                index: 2,
                weight: 50,
            }),
        };
        let json = serde_json::to_value(at).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"kind": "running", "step": {"index": 2, "weight": 50}})
        );
        assert_eq!(serde_json::from_value::<Phase>(json).unwrap(), at);
        assert_eq!(at.to_string(), "running at step 3 (50% to the canary)");
        // A record written before steps were recorded.
        let old: Phase = serde_json::from_str(r#"{"kind":"running"}"#).unwrap();
        assert_eq!(old, Phase::RUNNING);
        assert_eq!(
            serde_json::to_string(&Phase::RUNNING).unwrap(),
            r#"{"kind":"running"}"#
        );
    }

    /// Regression: `status` took an edge that did not answer for one that had not
    /// switched, and so reported a running blue-green record as plainly running (and
    /// abort as open) while the edge might give the new set all traffic.
    #[test]
    fn a_running_record_whose_edge_did_not_answer_is_reported_unconfirmed() {
        let edge = |health: serde_json::Value| -> crate::edge::EdgeStatus {
            serde_json::from_value(serde_json::json!({
                "host": "local", "instance": "shop-edge", "health": health
            }))
            .unwrap()
        };
        let mut running = record(Phase::RUNNING, None);
        running.strategy = SwitchStrategy::BlueGreen;
        let unread = RolloutStatus::on_edges(running.clone(), &[edge(serde_json::Value::Null)]);
        assert_eq!(unread.phase, Phase::RUNNING);
        let why = unread
            .edge_unread
            .as_deref()
            .expect("the status says the edge was not read");
        assert!(why.contains("shop-edge") && why.contains("local"), "{why}");
        assert!(
            unread.to_string().ends_with(&format!("; {why}")),
            "{unread}"
        );
        // No edge on the record's host at all: nothing tells whether it switched.
        let none = RolloutStatus::on_edges(running.clone(), &[]);
        assert!(none.edge_unread.is_some(), "{none}");
        // The edge answered: confirmed either way.
        let answered = edge(
            serde_json::json!({"services": [{"name": "api", "available": 2, "backends": [
                {"name": "shop-api-1", "address": "10.0.0.2:80", "weight": 0, "health": "healthy", "ejected": false, "last_check": null},
                {"name": "shop-api-1-c", "address": "10.0.0.3:80", "weight": 1, "health": "healthy", "ejected": false, "last_check": null}
            ]}]}),
        );
        let read = RolloutStatus::on_edges(running.clone(), &[answered]);
        assert_eq!(read.phase, Phase::Switched);
        assert_eq!(read.edge_unread, None);
        // A paused record was written after its edge change: no edge needed.
        let paused = record(
            Phase::PausedBeforeSwitch,
            Some(PauseReason::ManualPromotion),
        );
        let status = RolloutStatus::on_edges(paused, &[edge(serde_json::Value::Null)]);
        assert_eq!(status.edge_unread, None);
        // Sets not behind the edge: there is nothing to read.
        for member in running
            .old_set
            .members
            .iter_mut()
            .chain(running.new_set.members.iter_mut())
        {
            member.backend.clear();
        }
        let unserved = RolloutStatus::on_edges(running, &[]);
        assert_eq!(unserved.edge_unread, None);
    }

    #[test]
    fn the_status_json_is_the_documented_shape() {
        let step = Phase::Running {
            step: Some(StepAt {
                index: 2,
                weight: 50,
            }),
        };
        let status = RolloutStatus::new(record(step, None), &[]);
        let json = serde_json::to_value(&status).unwrap();
        // docs/deployment-guide.md, "Paused rollouts": the fields a script reads.
        assert_eq!(
            json,
            serde_json::json!({
                "phase": {"kind": "running", "step": {"index": 2, "weight": 50}},
                "record": {
                    "topology": "shop",
                    "revision": "20261126T044811.042Z",
                    "resource": "api",
                    "version": "4",
                    "strategy": "canary",
                    "phase": {"kind": "running", "step": {"index": 2, "weight": 50}},
                    "old_set": {"set": "", "members": [
                        {"instance": "shop-api-1", "backend": "shop-api-1"}
                    ]},
                    "new_set": {"set": "c", "members": [
                        {"instance": "shop-api-1-c", "backend": "shop-api-1-c"}
                    ]},
                    "weights": [
                        {"service": "api", "backend": "shop-api-1", "weight": 75},
                        {"service": "api", "backend": "shop-api-1-c", "weight": 25}
                    ],
                    "reason": null,
                    "holder": {"user": "ops", "host": "laptop", "pid": 42},
                    "at": "2026-11-26T04:48:11Z",
                    "hosts": ["local"]
                }
            })
        );
        let back: RolloutStatus = serde_json::from_value(json).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn rollout_profiles_are_valid_incus_names() {
        let longest = "a".repeat(59);
        for name in [rollout_profile(&longest), pause_profile(&longest)] {
            assert!(crate::topology::names::is_valid(&name), "{name}");
        }
        assert_eq!(rollout_profile("shop"), "cul8er-rollout-shop");
        assert_eq!(pause_profile("shop"), "cul8er-pause-shop");
    }
}
