//! The running proxy: the current configuration as an immutable snapshot swapped
//! atomically, the listeners and health checkers that follow it, and the operations the
//! admin interface exposes.
//!
//! Every change (a new file, a weight, a drain) builds a whole new [`Snapshot`] from a
//! validated [`ProxyConfig`] and swaps it in one step: a request sees the old snapshot
//! or the new one, never a mix. Backends that keep their service, name and address are
//! the same objects in both, so their health, counters and connection pools carry over.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::balance::SmoothWeightedRoundRobin;
use crate::config::{
    CheckKind, ConfigError, HealthCheckConfig, ListenerConfig, ProxyConfig, RouteConfig,
    ServiceConfig, TimeoutConfig, UpstreamProtocol,
};
use crate::health::{self, HealthStatus, HttpCheck};
use crate::metrics::{BackendStats, ServiceStats, Stats};
use crate::tls::{self, SniResolver, TlsError};
use crate::workers::WorkerPool;

/// What the proxy sends to backends as a request body.
/// How long a client may take to send a request head once it has begun (both paths).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) type UpstreamBody = Either<crate::forward::ClientBody, Empty<Bytes>>;
pub(crate) type UpstreamClient = Client<HttpConnector, UpstreamBody>;

/// A failed proxy operation.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The configuration was refused; the running one keeps serving.
    #[error("configuration refused")]
    Config(#[source] ConfigError),
    /// A listener's certificates could not be loaded; the running ones keep serving.
    #[error("listener '{listener}': cannot load its TLS certificates")]
    Tls {
        /// The listener.
        listener: String,
        /// The file that failed.
        #[source]
        source: TlsError,
    },
    /// A listener could not bind its address; the running configuration keeps serving.
    #[error("listener '{listener}': cannot bind {address}")]
    Bind {
        /// The listener.
        listener: String,
        /// The address.
        address: SocketAddr,
        /// The reason, e.g. address in use.
        #[source]
        source: std::io::Error,
    },
    /// No such service or backend.
    #[error("{0}")]
    NotFound(String),
    /// A worker thread could not be started.
    #[error("cannot start the worker threads")]
    Workers(#[source] std::io::Error),
}

impl ProxyError {
    /// Whether the caller named something that does not exist.
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound(_))
    }
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    /// The service.
    pub service: String,
    /// The backend, now at weight 0.
    pub backend: String,
    /// Whether every in-flight request finished within the drain timeout.
    pub drained: bool,
    /// Requests still in flight when the wait ended.
    pub active: u64,
    /// How long the wait took, in milliseconds.
    pub waited_ms: u64,
}

/// Health of every backend, as the admin `health` command reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthReport {
    /// The services, in configuration order.
    pub services: Vec<ServiceHealth>,
}

/// One service's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceHealth {
    /// The service.
    pub name: String,
    /// Backends that would get new requests if their weight allowed.
    pub available: usize,
    /// Its backends.
    pub backends: Vec<BackendHealth>,
}

/// One backend's health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    /// The backend.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its weight.
    pub weight: u32,
    /// Active-check status.
    pub health: HealthStatus,
    /// Out by passive ejection.
    pub ejected: bool,
    /// The last check's reason.
    pub last_check: Option<String>,
}

pub(crate) struct ServiceRuntime {
    pub(crate) config: ServiceConfig,
    pub(crate) backends: Vec<Arc<Backend>>,
    pub(crate) weights: Vec<u32>,
    balancer: SmoothWeightedRoundRobin,
    /// One client (and so one connection pool) per worker thread.
    clients: Arc<[UpstreamClient]>,
}

impl ServiceRuntime {
    /// The calling worker's client, so a request and its backend connection share a
    /// thread.
    pub(crate) fn client(&self) -> &UpstreamClient {
        &self.clients[crate::workers::worker_index() % self.clients.len()]
    }

    /// The next backend for a new request, skipping `tried`.
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<usize> {
        self.balancer.pick(&self.weights, |i| {
            !tried.contains(&i) && self.backends[i].available()
        })
    }

    /// Why nothing could be picked, for the 503 body.
    pub(crate) fn unavailable_reason(&self) -> String {
        let total = self.backends.len();
        let in_rotation = self.weights.iter().filter(|&&w| w > 0).count();
        let available = self
            .backends
            .iter()
            .zip(&self.weights)
            .filter(|(b, w)| **w > 0 && b.available())
            .count();
        format!(
            "service '{}' has no healthy backend ({available} available of {in_rotation} in \
             rotation, {total} configured)",
            self.config.name
        )
    }
}

struct Route {
    host: Option<String>,
    prefix: String,
    service: String,
}

impl Route {
    fn new(config: &RouteConfig) -> Self {
        Self {
            host: config.host.as_ref().map(|h| h.to_ascii_lowercase()),
            prefix: config.path_prefix.clone(),
            service: config.service.clone(),
        }
    }

    fn matches(&self, host: &str, path: &str) -> bool {
        let host_ok = match &self.host {
            None => true,
            Some(h) => match h.strip_prefix("*.") {
                Some(suffix) => host.split_once('.').is_some_and(|(_, rest)| rest == suffix),
                None => h == host,
            },
        };
        host_ok
            && (self.prefix == "/"
                || path == self.prefix
                || (path.starts_with(&self.prefix)
                    && (self.prefix.ends_with('/')
                        || path.as_bytes().get(self.prefix.len()) == Some(&b'/'))))
    }
}

pub(crate) struct ListenerRuntime {
    pub(crate) config: ListenerConfig,
    routes: Vec<Route>,
    pub(crate) tls: Option<TlsAcceptor>,
    resolver: Option<Arc<SniResolver>>,
}

impl ListenerRuntime {
    /// The service for a request: exact hosts before wildcards before any host, then
    /// the longest path prefix.
    pub(crate) fn route(&self, host: &str, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.matches(host, path))
            .map(|r| r.service.as_str())
    }
}

pub(crate) struct Snapshot {
    pub(crate) config: Arc<ProxyConfig>,
    pub(crate) services: HashMap<String, Arc<ServiceRuntime>>,
    pub(crate) listeners: HashMap<String, Arc<ListenerRuntime>>,
}

/// What request handling and connection tasks share; never holds a task handle, so
/// dropping the [`Proxy`] ends every task.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// How client connections are served, by the protocol their first bytes show.
    pub(crate) http1: hyper::server::conn::http1::Builder,
    pub(crate) http2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

struct RunningListener {
    bind: SocketAddr,
    stop: CancellationToken,
}

struct Checker {
    abort: AbortHandle,
    config: HealthCheckConfig,
}

#[derive(Default)]
struct Control {
    backends: HashMap<(String, String), Arc<Backend>>,
    listeners: HashMap<String, RunningListener>,
    checkers: HashMap<(String, String), Checker>,
    clients: HashMap<(UpstreamProtocol, TimeoutConfig), Arc<[UpstreamClient]>>,
}

struct Tasks {
    listeners: JoinSet<()>,
    background: JoinSet<()>,
}

/// A running proxy. Cheap to clone; dropping the last clone stops every task at once
/// (call [`Proxy::shutdown`] first for a graceful stop).
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    control: Arc<tokio::sync::Mutex<Control>>,
    tasks: Arc<Mutex<Tasks>>,
    /// Removed backends with requests still in flight, for the stats.
    removed: Arc<Mutex<Vec<Arc<Backend>>>>,
    /// Each listener's bound address, readable while a change is being applied.
    bound: Arc<Mutex<HashMap<String, SocketAddr>>>,
    health_changed: Arc<Notify>,
    shutdown: CancellationToken,
    workers: Option<Arc<WorkerPool>>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Proxy {
    /// Validates `config`, binds its listeners, starts health checks and serves.
    ///
    /// # Errors
    /// A [`ProxyError`] when the configuration is invalid, a certificate does not load,
    /// or a listener cannot bind.
    pub async fn start(config: ProxyConfig) -> Result<Self, ProxyError> {
        Self::start_inner(config, None).await
    }

    /// Like [`Proxy::start`], but connections are served by `threads` worker threads,
    /// each with its own single-threaded runtime and backend connection pools; the
    /// calling runtime keeps accepting, health checks and administration.
    ///
    /// # Errors
    /// As [`Proxy::start`], and [`ProxyError::Workers`] when a thread cannot start.
    pub async fn start_with_workers(
        config: ProxyConfig,
        threads: usize,
    ) -> Result<Self, ProxyError> {
        let pool = WorkerPool::start(threads.max(1)).map_err(ProxyError::Workers)?;
        Self::start_inner(config, Some(Arc::new(pool))).await
    }

    async fn start_inner(
        config: ProxyConfig,
        workers: Option<Arc<WorkerPool>>,
    ) -> Result<Self, ProxyError> {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        let empty = Snapshot {
            config: Arc::new(ProxyConfig::default()),
            services: HashMap::new(),
            listeners: HashMap::new(),
        };
        let proxy = Self {
            shared: Arc::new(Shared {
                snapshot: ArcSwap::from_pointee(empty),
                http1,
                http2,
            }),
            control: Arc::new(tokio::sync::Mutex::new(Control::default())),
            tasks: Arc::new(Mutex::new(Tasks {
                listeners: JoinSet::new(),
                background: JoinSet::new(),
            })),
            removed: Arc::default(),
            bound: Arc::default(),
            health_changed: Arc::new(Notify::new()),
            shutdown: CancellationToken::new(),
            workers,
        };
        proxy.apply(config).await?;
        Ok(proxy)
    }

    /// Replaces the configuration atomically. On any error nothing changes.
    ///
    /// # Errors
    /// As [`Proxy::start`].
    pub async fn apply(&self, config: ProxyConfig) -> Result<(), ProxyError> {
        let mut control = self.control.lock().await;
        self.apply_locked(&mut control, config).await
    }

    /// The configuration in force.
    #[must_use]
    pub fn config(&self) -> ProxyConfig {
        (*self.shared.snapshot.load().config).clone()
    }

    /// The address a listener actually bound (useful with port 0).
    #[must_use]
    pub fn local_addr(&self, listener: &str) -> Option<SocketAddr> {
        lock(&self.bound).get(listener).copied()
    }

    /// Sets one backend's weight.
    ///
    /// # Errors
    /// [`ProxyError::NotFound`] for an unknown service or backend.
    pub async fn set_weight(
        &self,
        service: &str,
        backend: &str,
        weight: u32,
    ) -> Result<(), ProxyError> {
        let mut control = self.control.lock().await;
        let mut config = self.config();
        find_backend(&mut config, service, backend)?.weight = weight;
        self.apply_locked(&mut control, config).await
    }

    /// Sets a backend's weight to 0 and waits, up to the drain timeout, until nothing is
    /// in flight on it.
    ///
    /// # Errors
    /// [`ProxyError::NotFound`] for an unknown service or backend.
    pub async fn drain(&self, service: &str, backend: &str) -> Result<DrainReport, ProxyError> {
        let target = {
            let mut control = self.control.lock().await;
            let mut config = self.config();
            find_backend(&mut config, service, backend)?.weight = 0;
            self.apply_locked(&mut control, config).await?;
            control
                .backends
                .get(&(service.to_owned(), backend.to_owned()))
                .cloned()
        };
        let Some(target) = target else {
            return Err(ProxyError::NotFound(format!(
                "backend '{backend}' vanished"
            )));
        };
        let timeout = self.shared.snapshot.load().config.settings.drain_timeout;
        let started = tokio::time::Instant::now();
        let drained = tokio::time::timeout(timeout, target.until_idle())
            .await
            .is_ok();
        Ok(DrainReport {
            service: service.to_owned(),
            backend: backend.to_owned(),
            drained,
            active: target.active(),
            waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Reads every listener's certificate files again.
    ///
    /// # Errors
    /// [`ProxyError::Tls`] for the first listener whose files fail; its old
    /// certificates keep serving.
    pub fn reload_certs(&self) -> Result<(), ProxyError> {
        let snapshot = self.shared.snapshot.load();
        for listener in snapshot.listeners.values() {
            if let (Some(resolver), Some(tls)) = (&listener.resolver, &listener.config.tls) {
                resolver.reload(tls).map_err(|source| ProxyError::Tls {
                    listener: listener.config.name.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Counters and state of every backend, removed ones still draining included.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let snapshot = self.shared.snapshot.load_full();
        let removed = lock(&self.removed).clone();
        let services = snapshot
            .config
            .services
            .iter()
            .filter_map(|sc| snapshot.services.get(&sc.name))
            .map(|service| {
                let mut backends: Vec<BackendStats> = service
                    .backends
                    .iter()
                    .zip(&service.weights)
                    .map(|(b, &w)| backend_stats(b, w))
                    .collect();
                backends.extend(
                    removed
                        .iter()
                        .filter(|b| b.service == service.config.name)
                        .map(|b| backend_stats(b, 0)),
                );
                ServiceStats {
                    name: service.config.name.clone(),
                    backends,
                }
            })
            .collect();
        Stats { services }
    }

    /// Health of every backend.
    #[must_use]
    pub fn health(&self) -> HealthReport {
        let snapshot = self.shared.snapshot.load_full();
        let services = snapshot
            .config
            .services
            .iter()
            .filter_map(|sc| snapshot.services.get(&sc.name))
            .map(|service| {
                let backends: Vec<BackendHealth> = service
                    .backends
                    .iter()
                    .zip(&service.weights)
                    .map(|(b, &weight)| {
                        let (health, last_check) = b.health();
                        BackendHealth {
                            name: b.name.clone(),
                            address: b.address.to_string(),
                            weight,
                            health,
                            ejected: b.is_ejected(),
                            last_check,
                        }
                    })
                    .collect();
                let available = service.backends.iter().filter(|b| b.available()).count();
                ServiceHealth {
                    name: service.config.name.clone(),
                    available,
                    backends,
                }
            })
            .collect();
        HealthReport { services }
    }

    /// Waits until every backend with active checks has had its first result, or the
    /// timeout passes; returns whether all were checked.
    pub async fn until_checked(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.health_changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let report = self.health();
                if report
                    .services
                    .iter()
                    .flat_map(|s| &s.backends)
                    .all(|b| b.health != HealthStatus::Unknown)
                {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Stops accepting, lets in-flight requests finish up to the shutdown timeout, then
    /// closes everything.
    pub async fn shutdown(&self) {
        let timeout = self.shared.snapshot.load().config.settings.shutdown_timeout;
        self.shutdown.cancel();
        {
            let control = self.control.lock().await;
            for listener in control.listeners.values() {
                listener.stop.cancel();
            }
        }
        let mut listeners = std::mem::take(&mut lock(&self.tasks).listeners);
        let all_done = async { while listeners.join_next().await.is_some() {} };
        if tokio::time::timeout(timeout, all_done).await.is_err() {
            tracing::warn!("shutdown timeout reached; closing the remaining connections");
        }
        lock(&self.tasks).background.abort_all();
    }

    async fn apply_locked(
        &self,
        control: &mut Control,
        config: ProxyConfig,
    ) -> Result<(), ProxyError> {
        config.validate().map_err(ProxyError::Config)?;
        let current = self.shared.snapshot.load_full();

        // Everything that can fail comes first, before any state changes.
        let mut resolvers = HashMap::new();
        for listener in &config.listeners {
            if let Some(tls) = &listener.tls {
                let tls_error = |source| ProxyError::Tls {
                    listener: listener.name.clone(),
                    source,
                };
                let resolver = Arc::new(SniResolver::load(tls).map_err(tls_error)?);
                let acceptor = tls::acceptor(resolver.clone()).map_err(tls_error)?;
                resolvers.insert(listener.name.clone(), (resolver, acceptor));
            }
        }
        let mut bound = Vec::new();
        for listener in &config.listeners {
            let keep = control
                .listeners
                .get(&listener.name)
                .is_some_and(|r| r.bind == listener.bind);
            if keep {
                continue;
            }
            let socket = bind(listener.bind).map_err(|source| ProxyError::Bind {
                listener: listener.name.clone(),
                address: listener.bind,
                source,
            })?;
            bound.push((listener.name.clone(), listener.bind, socket));
        }

        // Services: reuse backends that keep service, name and address.
        let mut services = HashMap::new();
        let mut live: HashSet<(String, String)> = HashSet::new();
        for sc in &config.services {
            let client = control
                .clients
                .entry((sc.protocol, sc.timeouts.clone()))
                .or_insert_with(|| {
                    let count = self.workers.as_ref().map_or(1, |w| w.len());
                    (0..count)
                        .map(|_| upstream_client(sc.protocol, &sc.timeouts))
                        .collect()
                })
                .clone();
            let old = current.config.service(&sc.name);
            let mut backends = Vec::with_capacity(sc.backends.len());
            for bc in &sc.backends {
                let key = (sc.name.clone(), bc.name.clone());
                let backend = match control.backends.get(&key) {
                    Some(b) if b.address == bc.address => {
                        if old.is_some_and(|o| o.passive != sc.passive) {
                            b.set_passive(&sc.passive);
                        }
                        b.clone()
                    }
                    _ => {
                        let b = Arc::new(Backend::new(
                            &sc.name,
                            &bc.name,
                            bc.address,
                            sc.passive.clone(),
                            self.health_changed.clone(),
                            self.workers.as_ref().map_or(1, |w| w.len()),
                        ));
                        if let Some(old) = control.backends.insert(key.clone(), b.clone()) {
                            retire(
                                &mut lock(&self.tasks).background,
                                &old,
                                config.settings.drain_timeout,
                            );
                            lock(&self.removed).push(old);
                        }
                        b
                    }
                };
                live.insert(key);
                backends.push(backend);
            }
            services.insert(
                sc.name.clone(),
                Arc::new(ServiceRuntime {
                    config: sc.clone(),
                    weights: sc.backends.iter().map(|b| b.weight).collect(),
                    balancer: SmoothWeightedRoundRobin::new(backends.len()),
                    backends,
                    clients: client,
                }),
            );
        }

        let mut listeners = HashMap::new();
        for lc in &config.listeners {
            let (resolver, tls) = resolvers.remove(&lc.name).unzip();
            let mut routes: Vec<Route> = lc.routes.iter().map(Route::new).collect();
            routes.sort_by_key(|r| {
                let host_rank = match &r.host {
                    Some(h) if h.starts_with("*.") => 1,
                    Some(_) => 0,
                    None => 2,
                };
                (host_rank, std::cmp::Reverse(r.prefix.len()))
            });
            listeners.insert(
                lc.name.clone(),
                Arc::new(ListenerRuntime {
                    config: lc.clone(),
                    routes,
                    tls,
                    resolver,
                }),
            );
        }

        // Commit: one swap, then the tasks that follow it.
        let config = Arc::new(config);
        self.shared.snapshot.store(Arc::new(Snapshot {
            config: config.clone(),
            services,
            listeners,
        }));

        let mut tasks = lock(&self.tasks);
        while tasks.listeners.try_join_next().is_some() {}
        while tasks.background.try_join_next().is_some() {}
        let wanted: HashMap<&str, SocketAddr> = config
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.bind))
            .collect();
        control.listeners.retain(|name, running| {
            let keep = wanted.get(name.as_str()) == Some(&running.bind);
            if !keep {
                running.stop.cancel();
            }
            keep
        });
        let mut bound_addrs = lock(&self.bound);
        bound_addrs.retain(|name, _| control.listeners.contains_key(name));
        for (name, bind_addr, socket) in bound {
            let stop = self.shutdown.child_token();
            let local = socket.local_addr().unwrap_or(bind_addr);
            tracing::info!(listener = %name, address = %local, "listening");
            tasks.listeners.spawn(crate::server::run_listener(
                self.shared.clone(),
                Arc::from(name.as_str()),
                socket,
                stop.clone(),
                config.settings.shutdown_timeout,
                self.workers.clone(),
            ));
            bound_addrs.insert(name.clone(), local);
            control.listeners.insert(
                name,
                RunningListener {
                    bind: bind_addr,
                    stop,
                },
            );
        }

        // Backends no longer configured: no new requests at once, cut after the drain
        // timeout.
        let gone: Vec<(String, String)> = control
            .backends
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(old) = control.backends.remove(&key) {
                retire(&mut tasks.background, &old, config.settings.drain_timeout);
                lock(&self.removed).push(old);
            }
        }
        lock(&self.removed).retain(|b| b.active() > 0 && !b.cut.is_cancelled());

        // Health checkers follow the backends and their service's check.
        control.checkers.retain(|key, checker| {
            let want = config.service(&key.0).and_then(|s| s.health_check.as_ref());
            let keep = live.contains(key)
                && want == Some(&checker.config)
                && control.backends.get(key).is_some_and(|b| !b.is_removed());
            if !keep {
                checker.abort.abort();
            }
            keep
        });
        for sc in &config.services {
            for bc in &sc.backends {
                let key = (sc.name.clone(), bc.name.clone());
                let Some(backend) = control.backends.get(&key).cloned() else {
                    continue;
                };
                match &sc.health_check {
                    None => backend.set_checks(None),
                    Some(check) => {
                        if control.checkers.contains_key(&key) {
                            continue;
                        }
                        backend.set_checks(Some((check.rise, check.fall)));
                        let abort = tasks.background.spawn(run_checks(backend, check.clone()));
                        control.checkers.insert(
                            key,
                            Checker {
                                abort,
                                config: check.clone(),
                            },
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

fn find_backend<'a>(
    config: &'a mut ProxyConfig,
    service: &str,
    backend: &str,
) -> Result<&'a mut crate::config::BackendConfig, ProxyError> {
    let svc = config
        .services
        .iter_mut()
        .find(|s| s.name == service)
        .ok_or_else(|| ProxyError::NotFound(format!("no service is named '{service}'")))?;
    svc.backends
        .iter_mut()
        .find(|b| b.name == backend)
        .ok_or_else(|| {
            ProxyError::NotFound(format!(
                "service '{service}' has no backend named '{backend}'"
            ))
        })
}

fn retire(background: &mut JoinSet<()>, backend: &Arc<Backend>, drain_timeout: Duration) {
    backend.mark_removed();
    tracing::info!(service = %backend.service, backend = %backend.name, "backend removed; draining");
    let backend = backend.clone();
    background.spawn(async move {
        if tokio::time::timeout(drain_timeout, backend.until_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                service = %backend.service, backend = %backend.name, active = backend.active(),
                "drain timeout reached; cutting in-flight requests"
            );
            backend.cut_now();
        }
    });
}

fn backend_stats(b: &Backend, weight: u32) -> BackendStats {
    use std::sync::atomic::Ordering::Relaxed;
    let (health, last_check) = b.health();
    BackendStats {
        name: b.name.clone(),
        address: b.address.to_string(),
        weight,
        health,
        last_check,
        ejected: b.is_ejected(),
        removed: b.is_removed(),
        active: b.active(),
        requests: b.metrics.requests(),
        responses: b.metrics.statuses(),
        errors: b.metrics.errors(),
        latency: b.metrics.latency(),
        health_transitions: b.metrics.health_transitions.load(Relaxed),
        ejections: b.metrics.ejections.load(Relaxed),
    }
}

fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(address)?;
    socket.listen(4096)
}

fn upstream_client(protocol: UpstreamProtocol, timeouts: &TimeoutConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeouts.connect));
    connector.enforce_http(true);
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(timeouts.idle)
        .http2_only(protocol == UpstreamProtocol::Http2);
    builder.build(connector)
}

async fn run_checks(backend: Arc<Backend>, check: HealthCheckConfig) {
    let target = backend.address.to_string();
    let http = HttpCheck {
        target: target.clone(),
        host: target.clone(),
        path: check.path.clone(),
        expect_status: check.expect_status,
        body_contains: check.body_contains.clone(),
        timeout: check.timeout,
    };
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = match check.kind {
            CheckKind::Http => health::check_http(&http).await,
            CheckKind::Tcp => health::check_tcp(&target, check.timeout).await,
        };
        backend.record_check(&outcome);
    }
}
