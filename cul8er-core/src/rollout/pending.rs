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
//! shows it to anyone wondering why an apply refuses. A request to pause a running
//! rollout is a second key of the same profile, [`PAUSE_KEY`]
//! (`user.cul8er.pause`), which the running rollout takes between steps
//! ([`PendingStore::take_pause_request`]). Writes read the profile with its ETag and
//! replace it with `If-Match`, retrying when it changed meanwhile, so that saving the
//! record keeps a pause request and taking the request keeps the record.
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

/// The config key of the rollout profile that holds a [`PauseRequest`] as JSON.
pub const PAUSE_KEY: &str = "user.cul8er.pause";

const NO_RECORD: &str = "has no user.cul8er.rollout key";
const UNREADABLE_RECORD: &str = "has an unreadable user.cul8er.rollout";
const UNREADABLE_PAUSE: &str = "has an unreadable user.cul8er.pause";

/// How many times a write is retried when the profile changed between reading and
/// writing it.
const ATTEMPTS: usize = 10;

/// The name of the Incus profile holding a topology's rollout in progress.
///
/// Topology names are valid Incus names of at most 59 characters
/// ([`crate::topology::names`]), so this one (`cul8er-rollout-` and the topology) is a
/// valid profile name too.
#[must_use]
pub fn rollout_profile(topology: &str) -> String {
    format!("cul8er-rollout-{topology}")
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
    /// A command is driving it now (it checks for a pause request between steps).
    Running,
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
}

impl Phase {
    /// Whether no command is driving the rollout.
    #[must_use]
    pub fn is_paused(self) -> bool {
        !matches!(self, Self::Running)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running => f.write_str("running"),
            Self::PausedBeforeSwitch => f.write_str("paused before the switch"),
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

/// A request to pause a running rollout at its next step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRequest {
    /// Who asked.
    pub by: Holder,
    /// When, UTC (RFC 3339).
    pub at: String,
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
    /// The record is there but cannot be read.
    #[error(
        "the rollout record in profile {profile} (project {project}, host {host}) {problem}; `cul8er abort` discards it, or remove it by hand with `incus profile delete {profile} --project {project}`"
    )]
    Corrupt {
        /// The profile (named after the topology).
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
    /// Other writers kept changing the profile.
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

    fn profiles(&self) -> incus_api::profiles::Profiles {
        self.scope.client.project(&self.scope.project).profiles()
    }

    fn incus(&self, what: &'static str) -> impl FnOnce(incus_api::Error) -> PendingError + '_ {
        move |source| PendingError::Incus {
            what,
            profile: self.profile(),
            project: self.scope.project.clone(),
            host: self.scope.host.clone(),
            source: Box::new(source),
        }
    }

    fn corrupt(&self, problem: &'static str, source: Option<serde_json::Error>) -> PendingError {
        PendingError::Corrupt {
            profile: self.profile(),
            project: self.scope.project.clone(),
            host: self.scope.host.clone(),
            problem,
            source,
        }
    }

    fn contended(&self) -> PendingError {
        PendingError::Contended {
            profile: self.profile(),
            project: self.scope.project.clone(),
            host: self.scope.host.clone(),
        }
    }

    fn description(&self) -> String {
        format!(
            "cul8er rollout in progress on topology {}: `cul8er promote`, `resume` or `abort` continue it",
            self.scope.topology
        )
    }

    /// The profile's config and ETag, `None` when it does not exist.
    async fn read(
        &self,
    ) -> Result<Option<(HashMap<String, String>, Option<String>)>, PendingError> {
        match self.profiles().get(&self.profile()).await {
            Ok((profile, etag)) => Ok(Some((profile.config, etag))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err((self.incus("read"))(e)),
        }
    }

    /// Replaces the profile's config, `Ok(false)` when it changed or vanished since
    /// it was read with `etag`.
    async fn write(
        &self,
        config: HashMap<String, String>,
        etag: Option<&str>,
    ) -> Result<bool, PendingError> {
        let put = incus_api::profiles::ProfilePut {
            description: self.description(),
            config,
            devices: HashMap::new(),
        };
        match self.profiles().update(&self.profile(), &put, etag).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_precondition_failed() || e.is_not_found() => Ok(false),
            Err(e) => Err((self.incus("update"))(e)),
        }
    }

    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        problem: &'static str,
        value: &str,
    ) -> Result<T, PendingError> {
        serde_json::from_str(value).map_err(|e| self.corrupt(problem, Some(e)))
    }

    /// Saves `record`: creates the profile, or replaces the record in it (a pause
    /// request already there is kept).
    ///
    /// # Errors
    ///
    /// [`PendingError::Incus`] when Incus refuses, [`PendingError::Contended`] when the
    /// profile keeps changing under the write.
    pub async fn save(&self, record: &PendingRollout) -> Result<(), PendingError> {
        let json = serde_json::to_string(record)
            .map_err(|e| self.corrupt("cannot be encoded", Some(e)))?;
        for _ in 0..ATTEMPTS {
            let Some((mut config, etag)) = self.read().await? else {
                let put = incus_api::profiles::ProfilePut {
                    description: self.description(),
                    config: HashMap::from([(ROLLOUT_KEY.to_owned(), json.clone())]),
                    devices: HashMap::new(),
                };
                match self.profiles().create(&self.profile(), &put).await {
                    Ok(()) => return Ok(()),
                    // Created meanwhile: read it again and update it.
                    Err(e) if e.is_conflict() => continue,
                    Err(e) => return Err((self.incus("create"))(e)),
                }
            };
            config.insert(ROLLOUT_KEY.to_owned(), json.clone());
            if self.write(config, etag.as_deref()).await? {
                return Ok(());
            }
        }
        Err(self.contended())
    }

    /// The rollout in progress, `None` when there is none.
    ///
    /// # Errors
    ///
    /// [`PendingError::Corrupt`] when the profile exists but its record cannot be read,
    /// [`PendingError::Incus`] when Incus refuses.
    pub async fn load(&self) -> Result<Option<PendingRollout>, PendingError> {
        let Some((config, _)) = self.read().await? else {
            return Ok(None);
        };
        let Some(value) = config.get(ROLLOUT_KEY) else {
            return Err(self.corrupt(NO_RECORD, None));
        };
        self.decode(UNREADABLE_RECORD, value).map(Some)
    }

    /// Removes the record (and any pause request) without reading it; `Ok(false)` when
    /// there was none.
    ///
    /// # Errors
    ///
    /// [`PendingError::Incus`] when Incus refuses.
    pub async fn clear(&self) -> Result<bool, PendingError> {
        match self.profiles().delete(&self.profile()).await {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err((self.incus("delete"))(e)),
        }
    }

    /// Asks the running rollout to pause at its next step (`cul8er pause`).
    ///
    /// # Errors
    ///
    /// [`PendingError::NoRollout`] when there is no rollout in progress,
    /// [`PendingError::Corrupt`] when its record cannot be read, or what
    /// [`PendingStore::save`] returns.
    pub async fn request_pause(&self, by: &Holder) -> Result<PauseOutcome, PendingError> {
        let request = PauseRequest {
            by: by.clone(),
            at: utc_time(SystemTime::now()),
        };
        let json = serde_json::to_string(&request)
            .map_err(|e| self.corrupt("cannot be encoded", Some(e)))?;
        for _ in 0..ATTEMPTS {
            let Some((mut config, etag)) = self.read().await? else {
                return Err(PendingError::NoRollout {
                    topology: self.scope.topology.clone(),
                });
            };
            let Some(value) = config.get(ROLLOUT_KEY) else {
                return Err(self.corrupt(NO_RECORD, None));
            };
            let record: PendingRollout = self.decode(UNREADABLE_RECORD, value)?;
            if record.phase.is_paused() {
                return Ok(PauseOutcome::AlreadyPaused(record));
            }
            config.insert(PAUSE_KEY.to_owned(), json.clone());
            if self.write(config, etag.as_deref()).await? {
                return Ok(PauseOutcome::Requested(record));
            }
        }
        Err(self.contended())
    }

    /// The pause request waiting for the running rollout, if any; it stays.
    ///
    /// # Errors
    ///
    /// [`PendingError::Corrupt`] when the request cannot be read, or
    /// [`PendingError::Incus`].
    pub async fn pause_requested(&self) -> Result<Option<PauseRequest>, PendingError> {
        let Some((config, _)) = self.read().await? else {
            return Ok(None);
        };
        config
            .get(PAUSE_KEY)
            .map(|value| self.decode(UNREADABLE_PAUSE, value))
            .transpose()
    }

    /// Takes the pause request waiting for the running rollout, if any: the rollout
    /// calls this between steps and pauses when it gets one. The request is removed,
    /// the record kept.
    ///
    /// # Errors
    ///
    /// [`PendingError::Corrupt`] when the request cannot be read (it is left in place;
    /// `clear` removes it), [`PendingError::Incus`], [`PendingError::Contended`].
    pub async fn take_pause_request(&self) -> Result<Option<PauseRequest>, PendingError> {
        for _ in 0..ATTEMPTS {
            let Some((mut config, etag)) = self.read().await? else {
                return Ok(None);
            };
            let Some(value) = config.remove(PAUSE_KEY) else {
                return Ok(None);
            };
            let request: PauseRequest = self.decode(UNREADABLE_PAUSE, &value)?;
            if self.write(config, etag.as_deref()).await? {
                return Ok(Some(request));
            }
        }
        Err(self.contended())
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
        assert!(!Phase::Running.is_paused());
        assert_eq!(
            Phase::PausedBeforeSwitch.to_string(),
            "paused before the switch"
        );
    }

    #[test]
    fn rollout_profiles_are_valid_incus_names() {
        let longest = "a".repeat(59);
        let name = rollout_profile(&longest);
        assert!(crate::topology::names::is_valid(&name));
        assert_eq!(rollout_profile("shop"), "cul8er-rollout-shop");
    }
}
