//! Locks: a local lock file, and a lease held on the Incus server itself so that two
//! operators on two machines cannot change one topology at once.
//!
//! The lease is the project config key `user.cul8er.lease.<topology>`, a JSON record
//! of its holder (`user@host`, pid) and expiry, taken with an ETag compare-and-swap on
//! `PUT /1.0/projects/<name>`: of two operators who read the same project, only the
//! first write succeeds, the second gets 412 and reads again. The lease is renewed
//! while an apply runs and expires by itself when its holder dies.
//!
//! The revision counter lives beside it (`user.cul8er.revisions.<topology>`) and is
//! incremented under the lease, so revision ids never collide between operators.

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

/// The project key of a topology's lease.
#[must_use]
pub fn lease_key(topology: &str) -> String {
    format!("user.cul8er.lease.{topology}")
}

/// The project key of a topology's revision counter.
#[must_use]
pub fn revision_key(topology: &str) -> String {
    format!("user.cul8er.revisions.{topology}")
}

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

impl LeaseScope {
    fn incus(&self, what: &str) -> impl FnOnce(incus_api::Error) -> LockError + '_ {
        let what = what.to_owned();
        move |source: incus_api::Error| LockError::Incus {
            what,
            host: self.host.clone(),
            source: Box::new(source),
        }
    }

    /// Changes the project config with a compare-and-swap, retrying on 412. `change`
    /// edits the config or refuses with an error.
    async fn swap<T>(
        &self,
        mut change: impl FnMut(&mut HashMap<String, String>) -> Result<T, LockError>,
    ) -> Result<T, LockError> {
        for _ in 0..10 {
            let (project, etag) = self
                .client
                .projects()
                .get_with_etag(&self.project)
                .await
                .map_err(self.incus(&format!("read project {}", self.project)))?;
            let mut put = incus_api::projects::ProjectPut {
                description: project.description.clone(),
                config: project.config.clone(),
            };
            let value = change(&mut put.config)?;
            match self
                .client
                .projects()
                .update(&self.project, &put, etag.as_deref())
                .await
            {
                Ok(()) => return Ok(value),
                Err(e) if e.is_precondition_failed() => {}
                Err(e) => {
                    return Err((self.incus(&format!("update project {}", self.project)))(e));
                }
            }
        }
        Err(LockError::Contended {
            project: self.project.clone(),
            host: self.host.clone(),
        })
    }

    /// The lease as the server holds it, if any.
    ///
    /// # Errors
    ///
    /// [`LockError::Incus`] when the project cannot be read.
    pub async fn status(&self) -> Result<Option<LeaseRecord>, LockError> {
        let (project, _) = self
            .client
            .projects()
            .get_with_etag(&self.project)
            .await
            .map_err(self.incus(&format!("read project {}", self.project)))?;
        Ok(project
            .config
            .get(&lease_key(&self.topology))
            .and_then(|v| serde_json::from_str(v).ok()))
    }

    /// Takes the lease for `holder` for `ttl`.
    ///
    /// # Errors
    ///
    /// [`LockError::Held`] naming the holder when another operator holds a lease that
    /// has not lapsed.
    pub async fn acquire(&self, holder: &Holder, ttl: Duration) -> Result<Lease, LockError> {
        let key = lease_key(&self.topology);
        let record = self
            .swap(|config| {
                let now = now();
                if let Some(existing) = config
                    .get(&key)
                    .and_then(|v| serde_json::from_str::<LeaseRecord>(v).ok())
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
                let record = LeaseRecord {
                    holder: holder.clone(),
                    acquired: now,
                    expires: now + ttl.as_secs().max(1),
                };
                config.insert(
                    key.clone(),
                    serde_json::to_string(&record).unwrap_or_default(),
                );
                Ok(record)
            })
            .await?;
        Ok(Lease {
            scope: self.clone(),
            record,
            ttl,
        })
    }

    /// Removes the lease whoever holds it (`cul8er lock release --force`).
    ///
    /// # Errors
    ///
    /// [`LockError::Incus`] when the project cannot be changed.
    pub async fn force_release(&self) -> Result<Option<LeaseRecord>, LockError> {
        let key = lease_key(&self.topology);
        self.swap(|config| {
            Ok(config
                .remove(&key)
                .and_then(|v| serde_json::from_str(&v).ok()))
        })
        .await
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
    /// [`LockError::Lost`] when someone else took the lease meanwhile.
    pub async fn renew(&mut self) -> Result<(), LockError> {
        let key = lease_key(&self.scope.topology);
        let mine = self.record.holder.clone();
        let ttl = self.ttl;
        let topology = self.scope.topology.clone();
        self.record = self
            .scope
            .swap(|config| {
                let current: Option<LeaseRecord> =
                    config.get(&key).and_then(|v| serde_json::from_str(v).ok());
                match current {
                    Some(current) if current.holder == mine => {
                        let record = LeaseRecord {
                            expires: now() + ttl.as_secs().max(1),
                            ..current
                        };
                        config.insert(
                            key.clone(),
                            serde_json::to_string(&record).unwrap_or_default(),
                        );
                        Ok(record)
                    }
                    other => Err(LockError::Lost {
                        topology: topology.clone(),
                        holder: other.map_or_else(
                            || "nobody (it was released)".to_owned(),
                            |r| r.holder.to_string(),
                        ),
                    }),
                }
            })
            .await?;
        Ok(())
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

    /// Takes the next revision number from the server's counter.
    ///
    /// # Errors
    ///
    /// [`LockError::Incus`] when the project cannot be changed.
    pub async fn next_revision(&self) -> Result<u64, LockError> {
        let key = revision_key(&self.scope.topology);
        self.scope
            .swap(|config| {
                let next = config
                    .get(&key)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    + 1;
                config.insert(key.clone(), next.to_string());
                Ok(next)
            })
            .await
    }

    /// Gives the lease back.
    ///
    /// # Errors
    ///
    /// [`LockError::Incus`] when the project cannot be changed.
    pub async fn release(self) -> Result<(), LockError> {
        let key = lease_key(&self.scope.topology);
        let mine = self.record.holder.clone();
        self.scope
            .swap(|config| {
                let current: Option<LeaseRecord> =
                    config.get(&key).and_then(|v| serde_json::from_str(v).ok());
                if current.is_some_and(|c| c.holder == mine) {
                    config.remove(&key);
                }
                Ok(())
            })
            .await
    }
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
