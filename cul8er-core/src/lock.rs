//! Locks: a local lock file, and a lease held on the Incus server itself so that two
//! operators on two machines cannot change one topology at once.
//!
//! The lease is an Incus profile, `cul8er-lease-<topology>`, in the topology's
//! project on its first host: it exists while an apply runs and carries a JSON
//! record of its holder (`user@host`, pid) and expiry in `user.cul8er.lease`.
//! Creating it is atomic — Incus refuses a second profile of one name — which an ETag
//! compare-and-swap on the project config is not: on Incus 6.0.4 two concurrent
//! `PUT /1.0/projects/<name>` with the same `If-Match` both succeed (the check and
//! the write are separate transactions; measured, see `tests/live_apply.rs`). The
//! lease is renewed while an apply runs, and a lease whose holder died lapses at its
//! expiry and is taken over.
//!
//! Revision ids are UTC times to the millisecond ([`revision_id`]): they sort, and
//! the lease keeps two applies of one topology apart, so they never collide.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The operator's user name.
    pub user: String,
    /// The operator's machine.
    pub host: String,
    /// The process.
    pub pid: u32,
}

impl Holder {
    /// This process, run by this user on this machine.
    #[must_use]
    pub fn current() -> Self {
        let user = ["USER", "LOGNAME"]
            .iter()
            .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
            .unwrap_or_else(|| "unknown".to_owned());
        let host = fs_err::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        Self {
            user,
            host,
            pid: std::process::id(),
        }
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} (pid {})", self.user, self.host, self.pid)
    }
}

/// A lease as stored on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// Who holds it.
    pub holder: Holder,
    /// When it was taken, in seconds since the Unix epoch.
    pub acquired: u64,
    /// When it lapses unless renewed, in seconds since the Unix epoch.
    pub expires: u64,
}

impl LeaseRecord {
    /// Whether it has lapsed at `now` (seconds since the Unix epoch).
    #[must_use]
    pub fn expired_at(&self, now: u64) -> bool {
        now >= self.expires
    }
}

/// A lock could not be taken, kept or given back.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process on this machine holds the local lock.
    #[error(
        "topology {topology} is locked by {holder} on this machine ({path}); wait for it to finish"
    )]
    HeldLocally {
        /// The topology.
        topology: String,
        /// Who holds it.
        holder: Holder,
        /// The lock file.
        path: PathBuf,
    },
    /// Another operator holds the lease on the server.
    #[error(
        "topology {topology} is being changed by {holder} (lease on host {host} until {expires} s since the epoch); wait, or `cul8er lock release --force` if that apply is dead"
    )]
    Held {
        /// The topology.
        topology: String,
        /// The Incus host.
        host: String,
        /// Who holds it.
        holder: Holder,
        /// When it lapses.
        expires: u64,
    },
    /// The lease was taken over while this process held it.
    #[error("the lease on topology {topology} was lost to {holder}")]
    Lost {
        /// The topology.
        topology: String,
        /// Who holds it now.
        holder: String,
    },
    /// The lock file could not be written or removed.
    #[error("cannot use the local lock file")]
    Io(#[source] std::io::Error),
    /// The server refused to read or change the project.
    #[error("cannot {what} on host {host}")]
    Incus {
        /// What was being done.
        what: String,
        /// The Incus host.
        host: String,
        /// What Incus said.
        #[source]
        source: Box<incus_api::Error>,
    },
    /// Other writers kept changing the project.
    #[error(
        "the project {project} on host {host} kept changing while the lease was taken; try again"
    )]
    Contended {
        /// The project.
        project: String,
        /// The Incus host.
        host: String,
    },
}

/// The local lock: a file created exclusively, removed when dropped.
#[derive(Debug)]
pub struct LocalLock {
    path: PathBuf,
}

impl LocalLock {
    /// Takes the lock file `path` for `holder`. A lock left by a dead process on this
    /// machine is taken over.
    ///
    /// # Errors
    ///
    /// [`LockError::HeldLocally`] when a live process holds it, [`LockError::Io`] when
    /// the file cannot be written.
    pub fn acquire(path: PathBuf, topology: &str, holder: &Holder) -> Result<Self, LockError> {
        if let Some(dir) = path.parent() {
            fs_err::create_dir_all(dir).map_err(LockError::Io)?;
        }
        let body = serde_json::to_vec(holder).unwrap_or_default();
        for _ in 0..2 {
            match fs_err::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    use std::io::Write as _;
                    file.write_all(&body).map_err(LockError::Io)?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let existing: Option<Holder> = fs_err::read(&path)
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    match existing {
                        Some(other)
                            if other.host != holder.host
                                || PathBuf::from(format!("/proc/{}", other.pid)).exists() =>
                        {
                            return Err(LockError::HeldLocally {
                                topology: topology.to_owned(),
                                holder: other,
                                path,
                            });
                        }
                        // Dead holder, or a file cut short by a crash: take it over.
                        _ => {
                            let _ = fs_err::remove_file(&path);
                        }
                    }
                }
                Err(e) => return Err(LockError::Io(e)),
            }
        }
        Err(LockError::Io(std::io::Error::other(format!(
            "{} keeps reappearing",
            path.display()
        ))))
    }
}

impl Drop for LocalLock {
    fn drop(&mut self) {
        let _ = fs_err::remove_file(&self.path);
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The name of the Incus profile that is a topology's lease while it exists.
#[must_use]
pub fn lease_profile(topology: &str) -> String {
    format!("cul8er-lease-{topology}")
}

/// The config key of the lease profile that holds the [`LeaseRecord`].
pub const LEASE_KEY: &str = "user.cul8er.lease";

/// Where a lease lives: a host's client and project.
#[derive(Debug, Clone)]
pub struct LeaseScope {
    /// The client (its project scope does not matter).
    pub client: incus_api::Client,
    /// The Incus host's name in the topology.
    pub host: String,
    /// The project (`default` when the topology names none).
    pub project: String,
    /// The topology.
    pub topology: String,
}

fn record_of(profile: &incus_api::profiles::Profile) -> Option<LeaseRecord> {
    profile
        .config
        .get(LEASE_KEY)
        .and_then(|v| serde_json::from_str(v).ok())
}

impl LeaseScope {
    fn client(&self) -> incus_api::Client {
        self.client.project(&self.project)
    }

    fn name(&self) -> String {
        lease_profile(&self.topology)
    }

    fn incus(&self, what: &str) -> impl FnOnce(incus_api::Error) -> LockError + '_ {
        let what = what.to_owned();
        move |source: incus_api::Error| LockError::Incus {
            what,
            host: self.host.clone(),
            source: Box::new(source),
        }
    }

    fn put(&self, record: &LeaseRecord) -> incus_api::profiles::ProfilePut {
        incus_api::profiles::ProfilePut {
            description: format!(
                "cul8er lease on topology {}: exists while an apply runs",
                self.topology
            ),
            config: HashMap::from([(
                LEASE_KEY.to_owned(),
                serde_json::to_string(record).unwrap_or_default(),
            )]),
            devices: HashMap::new(),
        }
    }

    /// The lease profile and its ETag, `None` when nobody holds the lease.
    async fn read(
        &self,
    ) -> Result<Option<(incus_api::profiles::Profile, Option<String>)>, LockError> {
        match self.client().profiles().get(&self.name()).await {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err((self.incus(&format!("read profile {}", self.name())))(e)),
        }
    }

    /// The lease as the server holds it, if any.
    ///
    /// # Errors
    ///
    /// [`LockError::Incus`] when the profile cannot be read.
    pub async fn status(&self) -> Result<Option<LeaseRecord>, LockError> {
        Ok(self
            .read()
            .await?
            .and_then(|(profile, _)| record_of(&profile)))
    }

    /// Takes the lease for `holder` for `ttl`.
    ///
    /// Creating the lease profile is the atomic step: Incus's database refuses a
    /// second profile of the same name, so of two operators only one creates it.
    /// (An ETag compare-and-swap on the project is not enough: on Incus 6.0.4 two
    /// concurrent `PUT`s carrying the same `If-Match` both succeed.) A lapsed lease
    /// is taken over with an ETag `PUT` of the profile.
    ///
    /// # Errors
    ///
    /// [`LockError::Held`] naming the holder when another operator holds a lease that
    /// has not lapsed.
    pub async fn acquire(&self, holder: &Holder, ttl: Duration) -> Result<Lease, LockError> {
        let client = self.client();
        for _ in 0..10 {
            let now = now();
            let record = LeaseRecord {
                holder: holder.clone(),
                acquired: now,
                expires: now + ttl.as_secs().max(1),
            };
            match client
                .profiles()
                .create(&self.name(), &self.put(&record))
                .await
            {
                Ok(()) => {
                    return Ok(Lease {
                        scope: self.clone(),
                        record,
                        ttl,
                    });
                }
                Err(e) if e.is_conflict() => {}
                Err(e) => {
                    return Err((self.incus(&format!("create profile {}", self.name())))(e));
                }
            }
            let Some((profile, etag)) = self.read().await? else {
                // Released between our create and our read: try again.
                continue;
            };
            if let Some(existing) = record_of(&profile)
                && existing.holder != *holder
                && !existing.expired_at(now)
            {
                return Err(LockError::Held {
                    topology: self.topology.clone(),
                    host: self.host.clone(),
                    holder: existing.holder,
                    expires: existing.expires,
                });
            }
            match client
                .profiles()
                .update(&self.name(), &self.put(&record), etag.as_deref())
                .await
            {
                Ok(()) => {
                    return Ok(Lease {
                        scope: self.clone(),
                        record,
                        ttl,
                    });
                }
                Err(e) if e.is_precondition_failed() || e.is_not_found() => {}
                Err(e) => {
                    return Err((self.incus(&format!("update profile {}", self.name())))(e));
                }
            }
        }
        Err(LockError::Contended {
            project: self.project.clone(),
            host: self.host.clone(),
        })
    }

    /// Removes the lease whoever holds it (`cul8er lock release --force`).
    ///
    /// # Errors
    ///
    /// [`LockError::Incus`] when the profile cannot be deleted.
    pub async fn force_release(&self) -> Result<Option<LeaseRecord>, LockError> {
        let Some((profile, _)) = self.read().await? else {
            return Ok(None);
        };
        match self.client().profiles().delete(&self.name()).await {
            Ok(()) => Ok(record_of(&profile)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err((self.incus(&format!("delete profile {}", self.name())))(e)),
        }
    }
}

/// A lease this process holds.
#[derive(Debug)]
pub struct Lease {
    scope: LeaseScope,
    record: LeaseRecord,
    ttl: Duration,
}

impl Lease {
    /// The record as last written.
    #[must_use]
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Pushes the expiry out by the lease's time to live.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when the lease was released or taken over meanwhile.
    pub async fn renew(&mut self) -> Result<(), LockError> {
        let scope = &self.scope;
        let lost = |holder: Option<LeaseRecord>| LockError::Lost {
            topology: scope.topology.clone(),
            holder: holder.map_or_else(
                || "nobody (it was released)".to_owned(),
                |r| r.holder.to_string(),
            ),
        };
        let Some((profile, etag)) = scope.read().await? else {
            return Err(lost(None));
        };
        let current = record_of(&profile);
        if current.as_ref().map(|r| &r.holder) != Some(&self.record.holder) {
            return Err(lost(current));
        }
        let record = LeaseRecord {
            expires: now() + self.ttl.as_secs().max(1),
            ..self.record.clone()
        };
        match scope
            .client()
            .profiles()
            .update(&scope.name(), &scope.put(&record), etag.as_deref())
            .await
        {
            Ok(()) => {
                self.record = record;
                Ok(())
            }
            Err(e) if e.is_precondition_failed() || e.is_not_found() => {
                Err(lost(scope.status().await.ok().flatten()))
            }
            Err(e) => Err((scope.incus(&format!("update profile {}", scope.name())))(
                e,
            )),
        }
    }

    /// Renews the lease every third of its time to live until `stop` is cancelled.
    ///
    /// # Errors
    ///
    /// The first renewal that fails; the caller should stop starting work.
    pub async fn keep_alive(&mut self, stop: &CancellationToken) -> Result<(), LockError> {
        let period = (self.ttl / 3).max(Duration::from_secs(1));
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep(period) => self.renew().await?,
            }
        }
    }

    /// Gives the lease back: deletes the lease profile if it is still ours.
    ///
    /// # Errors
    ///
    /// [`LockError::Incus`] when the profile cannot be deleted.
    pub async fn release(self) -> Result<(), LockError> {
        let scope = &self.scope;
        let Some((profile, _)) = scope.read().await? else {
            return Ok(());
        };
        if record_of(&profile).is_some_and(|r| r.holder == self.record.holder) {
            match scope.client().profiles().delete(&scope.name()).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    return Err((scope.incus(&format!("delete profile {}", scope.name())))(
                        e,
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A revision id: the UTC time to the millisecond, `YYYYMMDDTHHMMSS.mmmZ`. Ids sort
/// in time order, and two cannot collide for one topology: applies are serialized by
/// the lease, and each takes longer than a millisecond.
#[must_use]
pub fn revision_id(at: SystemTime) -> String {
    let at = time::OffsetDateTime::from(at.max(UNIX_EPOCH));
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(pid: u32) -> Holder {
        Holder {
            user: "ops".into(),
            host: Holder::current().host,
            pid,
        }
    }

    #[test]
    fn a_live_local_holder_keeps_the_lock_and_a_dead_one_loses_it() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("demo/lock");
        let me = holder(std::process::id());
        let lock = LocalLock::acquire(path.clone(), "demo", &me).unwrap();
        let err = LocalLock::acquire(path.clone(), "demo", &holder(1)).unwrap_err();
        assert!(
            matches!(&err, LockError::HeldLocally { holder, .. } if holder.pid == std::process::id()),
            "{err}"
        );
        drop(lock);
        assert!(!path.exists());
        // A lock file left by a process that no longer exists is taken over.
        fs_err::write(&path, serde_json::to_vec(&holder(u32::MAX - 1)).unwrap()).unwrap();
        let _lock = LocalLock::acquire(path, "demo", &me).unwrap();
    }

    #[test]
    fn revision_ids_are_utc_times_that_sort() {
        let at = UNIX_EPOCH + Duration::from_millis(1_795_668_491_042);
        assert_eq!(revision_id(at), "20261126T044811.042Z");
        assert_eq!(revision_id(UNIX_EPOCH), "19700101T000000.000Z");
        assert!(revision_id(at) < revision_id(at + Duration::from_millis(1)));
    }

    #[test]
    fn a_lease_lapses_at_its_expiry() {
        let record = LeaseRecord {
            holder: holder(7),
            acquired: 100,
            expires: 130,
        };
        assert!(!record.expired_at(129));
        assert!(record.expired_at(130));
    }
}
