//! The crash watch: instances that stop or restart, and services that exit, while a
//! rollout runs.
//!
//! Two signals, because either alone misses crashes:
//! - the Incus events stream (lifecycle events) says at once when an instance stops,
//!   shuts down, restarts or disappears. An event only triggers a look: the
//!   instance's state is compared with the one recorded when the watch began
//!   (`started_at`), so a late event about an earlier, intended stop is not a crash;
//! - a service that exits under the instance's init produces no Incus event, and an
//!   init that respawns it (busybox `respawn`, systemd `Restart=`) makes it look
//!   "running" again two seconds later. So the release's service status is polled
//!   through exec and its process identity (pid and start time) and restart count are
//!   compared with the baseline.
//!
//! The watch runs on its own task, owned by the [`CrashWatch`] value (dropping the
//! watch stops it), so the events websocket keeps answering the server's pings between
//! gates. The rollout unwatches an instance before it stops or restarts it on purpose.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use incus_api::events::{EventStream, EventType};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::HealthError;
use crate::release::{self, ReleaseSpec, ServiceStatus};

/// Lifecycle actions that may mean an instance stopped or restarted.
const TRIGGERS: &[&str] = &[
    "instance-stopped",
    "instance-shutdown",
    "instance-restarted",
    "instance-started",
    "instance-deleted",
    "instance-renamed",
    "instance-restored",
];

/// Instance states that are not a crash: running, or frozen for a snapshot.
const ALIVE: &[&str] = &["Running", "Frozen", "Freezing", "Thawed"];

/// How the watch polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchOptions {
    /// Time between polls of instance state and service status (one exec per watched
    /// instance with a release). Also the delay before the events stream is
    /// subscribed again after it dropped.
    pub poll_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// What died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CrashKind {
    /// The instance stopped (or went into an error state).
    InstanceStopped,
    /// The instance started again: it restarted since the watch began.
    InstanceRestarted,
    /// The instance was deleted or renamed.
    InstanceGone,
    /// The release's service is not running.
    ServiceExited,
    /// The release's service runs as another process, or the init counted a restart.
    ServiceRestarted,
}

/// A crash the watch saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Crash {
    /// The instance.
    pub instance: String,
    /// What died.
    pub kind: CrashKind,
    /// What was seen, for the operator.
    pub detail: String,
}

impl fmt::Display for Crash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance {}: {}", self.instance, self.detail)
    }
}

#[derive(Debug, Clone)]
struct Watched {
    generation: u64,
    release: Option<ReleaseSpec>,
    started_at: String,
    service: Option<ServiceStatus>,
}

#[derive(Debug, Default)]
struct Shared {
    watched: Mutex<BTreeMap<String, Watched>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Watched>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Follows the watched instances and their services; the first crash is kept and
/// fails every gate that waits with this watch.
#[derive(Debug)]
pub struct CrashWatch {
    client: incus_api::Client,
    shared: Arc<Shared>,
    crash: watch::Sender<Option<Crash>>,
    /// The background task; dropped (and so aborted) with the watch.
    task: JoinSet<()>,
}

impl CrashWatch {
    /// Subscribes to `client`'s lifecycle events and starts watching (nothing yet:
    /// add instances with [`CrashWatch::watch`]).
    ///
    /// # Errors
    /// [`HealthError::Watch`] when the events stream cannot be opened.
    pub async fn start(
        client: &incus_api::Client,
        options: WatchOptions,
    ) -> Result<Self, HealthError> {
        let stream = subscribe(client).await?;
        let mut watch = Self::idle(client);
        let runner = Runner {
            client: client.clone(),
            shared: Arc::clone(&watch.shared),
            crash: watch.crash.clone(),
        };
        watch.task.spawn(runner.run(Some(stream), options));
        Ok(watch)
    }

    fn idle(client: &incus_api::Client) -> Self {
        Self {
            client: client.clone(),
            shared: Arc::default(),
            crash: watch::Sender::new(None),
            task: JoinSet::new(),
        }
    }

    /// Watches `instance` from now on: its state now is the baseline, and when
    /// `release` is given, so is its service's process identity — `service` when the
    /// caller has it (the status a deploy returned), else read now.
    ///
    /// An instance that is not running, or a service that does not run, is reported
    /// as a crash at once.
    ///
    /// # Errors
    /// [`HealthError::Watch`] or [`HealthError::WatchRelease`] when the baseline cannot
    /// be read.
    pub async fn watch(
        &self,
        instance: &str,
        release: Option<&ReleaseSpec>,
        service: Option<ServiceStatus>,
    ) -> Result<(), HealthError> {
        let state =
            self.client
                .instances()
                .state(instance)
                .await
                .map_err(|e| HealthError::Watch {
                    what: format!("read the state of instance {instance}"),
                    source: Box::new(e),
                })?;
        let service = match (release, service) {
            (Some(spec), None) => Some(
                release::status(&self.client, instance, spec)
                    .await
                    .map_err(|e| HealthError::WatchRelease {
                        instance: instance.to_owned(),
                        source: Box::new(e),
                    })?,
            ),
            (_, service) => service,
        };
        let generation = self
            .shared
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.lock().insert(
            instance.to_owned(),
            Watched {
                generation,
                release: release.cloned(),
                started_at: state.started_at.clone(),
                service: service.clone(),
            },
        );
        tracing::debug!(instance, started_at = %state.started_at, "crash watch: watching");
        if !ALIVE.contains(&state.status.as_str()) {
            self.report(Crash {
                instance: instance.to_owned(),
                kind: CrashKind::InstanceStopped,
                detail: format!("is {} when the watch began", state.status),
            });
        } else if let (Some(spec), Some(service)) = (release, &service)
            && !service.running
        {
            self.report(Crash {
                instance: instance.to_owned(),
                kind: CrashKind::ServiceExited,
                detail: format!("service {} is not running when the watch began", spec.name),
            });
        }
        Ok(())
    }

    /// Stops watching `instance`: call it before stopping or restarting it on purpose.
    pub fn unwatch(&self, instance: &str) {
        self.shared.lock().remove(instance);
    }

    /// The instances watched now.
    #[must_use]
    pub fn watched(&self) -> Vec<String> {
        self.shared.lock().keys().cloned().collect()
    }

    /// The first crash seen, if any.
    #[must_use]
    pub fn crash(&self) -> Option<Crash> {
        self.crash.borrow().clone()
    }

    /// Waits for the first crash (at once when there was one already).
    pub async fn crashed(&self) -> Crash {
        let mut rx = self.crash.subscribe();
        loop {
            if let Some(crash) = rx.borrow_and_update().clone() {
                return crash;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`: not reached, but never a panic.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Looks at `instance` now (state, and service when watched with a release), so a
    /// gate whose checks fail can tell a crash from an unhealthy service before the
    /// next poll. Returns the first crash, this one or an earlier one.
    pub async fn check_now(&self, instance: &str) -> Option<Crash> {
        if let Some(crash) = self.crash() {
            return Some(crash);
        }
        let entry = self.shared.lock().get(instance).cloned()?;
        let runner = Runner {
            client: self.client.clone(),
            shared: Arc::clone(&self.shared),
            crash: self.crash.clone(),
        };
        runner
            .inspect(instance, &entry, "seen after a failed check", true)
            .await;
        self.crash()
    }

    /// Records a crash seen elsewhere (the rollout's own steps), so gates waiting with
    /// this watch fail. The first crash is kept.
    pub fn report(&self, crash: Crash) {
        report(&self.crash, crash);
    }
}

fn report(tx: &watch::Sender<Option<Crash>>, crash: Crash) {
    tx.send_if_modified(|slot| {
        if slot.is_some() {
            return false;
        }
        tracing::warn!(instance = %crash.instance, kind = ?crash.kind, detail = %crash.detail, "crash watch: crash");
        *slot = Some(crash);
        true
    });
}

async fn subscribe(client: &incus_api::Client) -> Result<EventStream, HealthError> {
    client
        .events()
        .subscribe(&[EventType::Lifecycle])
        .await
        .map_err(|e| HealthError::Watch {
            what: "subscribe to the Incus events stream".into(),
            source: Box::new(e),
        })
}

struct Runner {
    client: incus_api::Client,
    shared: Arc<Shared>,
    crash: watch::Sender<Option<Crash>>,
}

impl Runner {
    async fn run(self, mut stream: Option<EventStream>, options: WatchOptions) {
        let mut poll = tokio::time::interval(options.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if self.crash.borrow().is_some() {
                // The first crash decides the rollout; keep the stream closed.
                return;
            }
            tokio::select! {
                event = next_event(&mut stream) => match event {
                    Some(Ok(event)) => {
                        let Some(lifecycle) = event.lifecycle() else { continue };
                        if !TRIGGERS.contains(&lifecycle.action.as_str()) {
                            continue;
                        }
                        let name = lifecycle.object_name().to_owned();
                        let entry = self.shared.lock().get(&name).cloned();
                        if let Some(entry) = entry {
                            let seen = format!("Incus event {}", lifecycle.action);
                            self.inspect(&name, &entry, &seen, false).await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %crate::execute::error_chain(&e), "crash watch: the events stream failed; polling until it is back");
                        stream = None;
                    }
                    None => {
                        tracing::warn!("crash watch: the events stream closed; polling until it is back");
                        stream = None;
                    }
                },
                _ = poll.tick() => {
                    let entries: Vec<(String, Watched)> = self
                        .shared
                        .lock()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    for (name, entry) in &entries {
                        self.inspect(name, entry, "seen by polling", true).await;
                    }
                    if stream.is_none() {
                        match subscribe(&self.client).await {
                            Ok(s) => stream = Some(s),
                            Err(e) => tracing::warn!(error = %crate::execute::error_chain(&e), "crash watch: cannot subscribe again yet"),
                        }
                    }
                }
            }
        }
    }

    /// Looks at one instance; reports a crash when it is still watched as `entry`.
    async fn inspect(&self, name: &str, entry: &Watched, seen: &str, service: bool) {
        let Some(crash) = self.examine(name, entry, seen, service).await else {
            return;
        };
        // An instance unwatched meanwhile was stopped on purpose; one watched again
        // has a new baseline.
        let current = self.shared.lock().get(name).map(|w| w.generation);
        if current == Some(entry.generation) {
            report(&self.crash, crash);
        }
    }

    async fn examine(
        &self,
        name: &str,
        entry: &Watched,
        seen: &str,
        service: bool,
    ) -> Option<Crash> {
        let crash = |kind, detail| {
            Some(Crash {
                instance: name.to_owned(),
                kind,
                detail,
            })
        };
        let state = match self.client.instances().state(name).await {
            Ok(state) => state,
            Err(e) if e.is_not_found() => {
                return crash(
                    CrashKind::InstanceGone,
                    format!("no longer exists ({seen})"),
                );
            }
            Err(e) => {
                tracing::warn!(instance = name, error = %crate::execute::error_chain(&e), "crash watch: cannot read the instance state");
                return None;
            }
        };
        if !ALIVE.contains(&state.status.as_str()) {
            return crash(
                CrashKind::InstanceStopped,
                format!("stopped unexpectedly: it is {} ({seen})", state.status),
            );
        }
        if state.started_at != entry.started_at {
            return crash(
                CrashKind::InstanceRestarted,
                format!(
                    "restarted unexpectedly: running since {}, was since {} ({seen})",
                    state.started_at, entry.started_at
                ),
            );
        }
        if !service || state.status != "Running" {
            return None;
        }
        let spec = entry.release.as_ref()?;
        let status = match release::status(&self.client, name, spec).await {
            Ok(status) => status,
            Err(e) => {
                tracing::warn!(instance = name, error = %crate::execute::error_chain(&e), "crash watch: cannot read the service status");
                return None;
            }
        };
        service_crash(&spec.name, entry.service.as_ref(), &status)
            .and_then(|(kind, detail)| crash(kind, detail))
    }
}

/// Compares a service's status with its baseline.
fn service_crash(
    app: &str,
    baseline: Option<&ServiceStatus>,
    now: &ServiceStatus,
) -> Option<(CrashKind, String)> {
    if !now.running {
        let state = now
            .state
            .as_deref()
            .map_or_else(String::new, |s| format!(" ({} says {s})", now.init));
        return Some((
            CrashKind::ServiceExited,
            format!("service {app} exited and is not running{state}"),
        ));
    }
    let baseline = baseline?;
    if let (Some(before), Some(after)) = (&baseline.process_id, &now.process_id)
        && before != after
    {
        return Some((
            CrashKind::ServiceRestarted,
            format!(
                "service {app} exited and was restarted by {}: process {before} is now {after}",
                now.init
            ),
        ));
    }
    if let (Some(before), Some(after)) = (baseline.restarts, now.restarts)
        && after > before
    {
        return Some((
            CrashKind::ServiceRestarted,
            format!(
                "service {app} was restarted by {} {} time(s) since the watch began",
                now.init,
                after - before
            ),
        ));
    }
    None
}

async fn next_event(
    stream: &mut Option<EventStream>,
) -> Option<incus_api::Result<incus_api::events::Event>> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
pub(crate) fn detached_for_tests() -> CrashWatch {
    // Building a client sends nothing; a detached watch only carries reported crashes.
    CrashWatch::idle(&incus_api::Client::unix("/nonexistent/incus.socket").expect("client"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::InitSystem;

    fn status(running: bool, process: Option<&str>, restarts: Option<u32>) -> ServiceStatus {
        ServiceStatus {
            init: InitSystem::Busybox,
            running,
            pid: process.map(|_| 42),
            process_id: process.map(str::to_owned),
            restarts,
            version: Some("1".into()),
            state: None,
        }
    }

    #[test]
    fn a_respawned_service_is_a_crash_though_it_runs() {
        let before = status(true, Some("42:1000"), Some(0));
        assert_eq!(service_crash("shop", Some(&before), &before), None);
        let (kind, detail) = service_crash(
            "shop",
            Some(&before),
            &status(true, Some("57:1210"), Some(0)),
        )
        .unwrap();
        assert_eq!(kind, CrashKind::ServiceRestarted);
        assert!(detail.contains("42:1000 is now 57:1210"), "{detail}");
        // Same pid reused but the init counted a restart.
        let (kind, _) = service_crash(
            "shop",
            Some(&before),
            &status(true, Some("42:1000"), Some(1)),
        )
        .unwrap();
        assert_eq!(kind, CrashKind::ServiceRestarted);
        let (kind, _) =
            service_crash("shop", Some(&before), &status(false, None, Some(0))).unwrap();
        assert_eq!(kind, CrashKind::ServiceExited);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_crash_is_kept_and_wakes_every_waiter() {
        let watch = detached_for_tests();
        assert_eq!(watch.crash(), None);
        let first = Crash {
            instance: "web-1".into(),
            kind: CrashKind::InstanceStopped,
            detail: "stopped".into(),
        };
        let (a, b, ()) = tokio::join!(watch.crashed(), watch.crashed(), async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            watch.report(first.clone());
            watch.report(Crash {
                instance: "web-2".into(),
                kind: CrashKind::InstanceGone,
                detail: "gone".into(),
            });
        });
        assert_eq!((a, b), (first.clone(), first.clone()));
        assert_eq!(watch.crashed().await, first);
    }
}
