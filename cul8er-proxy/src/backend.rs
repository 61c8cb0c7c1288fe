//! One backend's live state: health, passive ejection, metrics and in-flight count.
//!
//! A `Backend` outlives configuration changes that keep its service, name and address,
//! so its counters, health and pooled connections carry over a weight change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::PassiveConfig;
use crate::health::{CheckOutcome, HealthStatus, HealthTracker, PassiveEjector};
use crate::metrics::BackendMetrics;
use crate::upstream::IdleList;

#[derive(Debug)]
struct Health {
    tracker: Option<HealthTracker>,
    last_check: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) service: String,
    pub(crate) name: String,
    pub(crate) address: SocketAddr,
    pub(crate) authority: http::uri::Authority,
    /// Active checks pass (or none are configured).
    healthy: AtomicBool,
    health: Mutex<Health>,
    /// Set while passive ejection may have it out; cleared lazily once the time passed.
    ejected: AtomicBool,
    /// Set while the ejector has seen a failure not yet reset by a success, so the
    /// common case (success after success) takes no lock.
    failing: AtomicBool,
    ejector: Mutex<PassiveEjector>,
    pub(crate) metrics: BackendMetrics,
    /// Cancelled when a removed backend's drain timeout runs out: cuts what is in flight.
    pub(crate) cut: CancellationToken,
    /// Children of `cut`, one per worker thread, so that workers waiting on it do not
    /// share its lock.
    worker_cuts: Box<[CancellationToken]>,
    cut_flag: AtomicBool,
    removed: AtomicBool,
    idle: Notify,
    /// Wakes whoever waits for health changes (`Proxy::until_checked`).
    pub(crate) health_changed: Arc<Notify>,
    /// Idle HTTP/1.1 connections, one list per worker thread.
    pub(crate) pools: Box<[IdleList]>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Backend {
    pub(crate) fn new(
        service: &str,
        name: &str,
        address: SocketAddr,
        passive: PassiveConfig,
        health_changed: Arc<Notify>,
        workers: usize,
    ) -> Self {
        let authority = address
            .to_string()
            .parse()
            .expect("a socket address is an authority");
        let cut = CancellationToken::new();
        let worker_cuts = (0..workers.max(1)).map(|_| cut.child_token()).collect();
        Self {
            cut,
            worker_cuts,
            service: service.to_owned(),
            name: name.to_owned(),
            address,
            authority,
            healthy: AtomicBool::new(true),
            health: Mutex::new(Health {
                tracker: None,
                last_check: None,
            }),
            ejected: AtomicBool::new(false),
            failing: AtomicBool::new(false),
            ejector: Mutex::new(PassiveEjector::new(passive)),
            metrics: BackendMetrics::new(workers),
            cut_flag: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            idle: Notify::new(),
            health_changed,
            pools: (0..workers.max(1)).map(|_| IdleList::default()).collect(),
        }
    }

    /// Whether new requests may go here: healthy and not ejected.
    pub(crate) fn available(&self) -> bool {
        self.healthy.load(Relaxed) && !self.is_ejected()
    }

    pub(crate) fn is_ejected(&self) -> bool {
        if !self.ejected.load(Relaxed) {
            return false;
        }
        let ejector = lock(&self.ejector);
        let out = ejector.is_ejected(Instant::now());
        if !out {
            self.ejected.store(false, Relaxed);
        }
        out
    }

    pub(crate) fn health(&self) -> (HealthStatus, Option<String>) {
        let health = lock(&self.health);
        let status = health
            .tracker
            .as_ref()
            .map_or(HealthStatus::Healthy, HealthTracker::status);
        (status, health.last_check.clone())
    }

    /// Turns active checks on (with new thresholds) or off. Turning them on starts from
    /// Unknown; changing thresholds keeps the status.
    pub(crate) fn set_checks(&self, thresholds: Option<(u32, u32)>) {
        let mut health = lock(&self.health);
        match thresholds {
            None => {
                health.tracker = None;
                health.last_check = None;
                self.healthy.store(true, Relaxed);
            }
            Some((rise, fall)) => {
                let mut tracker = HealthTracker::new(rise, fall);
                // Replay the old status so thresholds apply from where it stood.
                if let Some(old) = &health.tracker
                    && old.status() != HealthStatus::Unknown
                {
                    tracker.record(old.status() == HealthStatus::Healthy);
                }
                self.healthy
                    .store(tracker.status() == HealthStatus::Healthy, Relaxed);
                health.tracker = Some(tracker);
            }
        }
    }

    pub(crate) fn record_check(&self, outcome: &CheckOutcome) {
        let mut health = lock(&self.health);
        health.last_check = Some(outcome.reason.clone());
        let Some(tracker) = health.tracker.as_mut() else {
            return;
        };
        if let Some(status) = tracker.record(outcome.passed) {
            self.healthy.store(status == HealthStatus::Healthy, Relaxed);
            self.metrics.health_transitions.fetch_add(1, Relaxed);
            tracing::info!(
                service = %self.service, backend = %self.name, ?status, reason = %outcome.reason,
                "backend health changed"
            );
        }
        drop(health);
        self.health_changed.notify_waiters();
    }

    pub(crate) fn set_passive(&self, config: &PassiveConfig) {
        let mut ejector = lock(&self.ejector);
        *ejector = PassiveEjector::new(config.clone());
        self.ejected.store(false, Relaxed);
    }

    /// Feeds passive ejection: `ok` is false for connect errors and 5xx answers.
    pub(crate) fn record_outcome(&self, ok: bool) {
        if ok && !self.failing.load(Relaxed) {
            return;
        }
        let now = Instant::now();
        let mut ejector = lock(&self.ejector);
        if ok {
            ejector.record_success(now);
            self.failing.store(ejector.is_ejected(now), Relaxed);
            return;
        }
        self.failing.store(true, Relaxed);
        if let Some(length) = ejector.record_failure(now) {
            self.ejected.store(true, Relaxed);
            self.metrics.ejections.fetch_add(1, Relaxed);
            tracing::warn!(
                service = %self.service, backend = %self.name, seconds = length.as_secs_f64(),
                "backend ejected after consecutive failures"
            );
            drop(ejector);
            self.health_changed.notify_waiters();
        }
    }

    /// The calling worker's idle HTTP/1.1 connections.
    pub(crate) fn pool(&self) -> &IdleList {
        &self.pools[crate::workers::worker_index() % self.pools.len()]
    }

    /// Cuts whatever is still in flight (a removed backend's drain timeout ran out).
    pub(crate) fn cut_now(&self) {
        self.cut_flag.store(true, Relaxed);
        self.cut.cancel();
    }

    /// The calling worker's view of `cut`.
    pub(crate) fn worker_cut(&self) -> &CancellationToken {
        &self.worker_cuts[crate::workers::worker_index() % self.worker_cuts.len()]
    }

    /// Whether [`Backend::cut_now`] ran; a lock-free check for the request path.
    pub(crate) fn is_cut(&self) -> bool {
        self.cut_flag.load(Relaxed)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Relaxed);
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.removed.load(Relaxed)
    }

    pub(crate) fn active(&self) -> u64 {
        self.metrics.active()
    }

    /// Waits until nothing is in flight here.
    pub(crate) async fn until_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Counts one request or tunnel in flight on a backend for as long as it lives.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    backend: Arc<Backend>,
    shard: usize,
}

impl ActiveGuard {
    pub(crate) fn new(backend: Arc<Backend>) -> Self {
        let shard = backend.metrics.start();
        Self { backend, shard }
    }

    pub(crate) fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // A waiter re-checks the total; waking it when one shard empties is enough.
        if self.backend.metrics.finish(self.shard) {
            self.backend.idle.notify_waiters();
        }
    }
}
