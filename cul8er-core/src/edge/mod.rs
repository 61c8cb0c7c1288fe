//! The edge: the `cul8er-proxy` load balancer running in an Incus container on each
//! host that has exposed HTTP/HTTPS resources (or replicated TCP ones).
//!
//! cul8er drives a running edge only through the Incus API: files are pushed with the
//! file API and `cul8er-proxy ctl` runs inside the container through exec, talking to
//! the proxy's admin unix socket. No port or credential is opened for it.
//!
//! [`Edge`] is the handle the executor and the rollouts use: read and replace the
//! configuration (atomically, and kept on disk so a restart serves the same), set
//! weights, drain a backend, and read per-backend health and metrics in the proxy
//! crate's own types.
//!
//! ```no_run
//! # async fn demo(client: incus_api::Client) -> Result<(), cul8er_core::edge::EdgeError> {
//! use cul8er_core::edge::Edge;
//! let edge = Edge::connect(&client, "demo-edge");
//! edge.set_weights("web", &[("demo-web-1", 9), ("demo-web-4", 1)]).await?;
//! for backend in edge.backend_metrics("web").await? {
//!     println!("{} {} requests, {} 5xx", backend.name, backend.requests, backend.responses.server_error);
//! }
//! # Ok(()) }
//! ```

mod desire;
mod reconcile;
mod spec;

use std::time::Duration;

use cul8er_proxy::metrics::BackendStats;
use cul8er_proxy::{DrainReport, HealthReport, ProxyConfig, ServiceHealth, Stats};
use incus_api::exec::ExecRequest;
use incus_api::files::FileOptions;
use serde::de::DeserializeOwned;

pub(crate) use desire::EdgeCollector;
pub use desire::through_edge;
pub(crate) use reconcile::addresses_of;
pub use reconcile::{EdgeStatus, ObservedEdge, converge, edge_status, observe_edge, plan_edges};
pub use spec::{
    Addresses, DesiredEdge, EDGE_RESOURCE, EdgeBackend, EdgeBinary, EdgeBinaryError, EdgeListener,
    EdgeService, describe, describe_pending, edge_instance_name, locate_binary, proxy_config,
};

/// The binary inside the edge: a link to the release machinery's
/// `/opt/cul8er-proxy/current/<file>`.
pub const BINARY_PATH: &str = "/opt/cul8er-proxy/bin/cul8er-proxy";
/// The configuration file the edge's service reads at start.
pub const CONFIG_PATH: &str = "/etc/cul8er-proxy/edge.json";
/// The admin socket inside the edge, in a directory only the proxy's user (and root,
/// which `ctl` runs as through exec) can enter.
pub const ADMIN_SOCKET: &str = "/var/lib/cul8er-proxy/admin.sock";
/// The env var that names the `cul8er-proxy` binary to push into edges.
pub const BINARY_ENV: &str = "CUL8ER_PROXY_BINARY";

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A failed call to an edge.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// Incus could not run the command or move the file.
    #[error("cannot {what} in edge {instance}")]
    Incus {
        /// What was being done.
        what: String,
        /// The edge instance.
        instance: String,
        /// What Incus said.
        #[source]
        source: Box<incus_api::Error>,
    },
    /// `cul8er-proxy ctl` refused or failed inside the edge.
    #[error(
        "the edge {instance} refused to {what} (cul8er-proxy ctl exited {exit_code}): {stderr}"
    )]
    Refused {
        /// What was asked.
        what: String,
        /// The edge instance.
        instance: String,
        /// The exit code: 1 refused, 2 bad configuration, 3 the proxy is not reachable.
        exit_code: i32,
        /// What it said.
        stderr: String,
    },
    /// The answer was not what this version understands.
    #[error("cannot read the answer of edge {instance} to {what}")]
    Decode {
        /// What was asked.
        what: String,
        /// The edge instance.
        instance: String,
        /// The parser's message.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration that the proxy would refuse; nothing was sent.
    #[error("the edge configuration for {instance} is invalid")]
    Invalid {
        /// The edge instance.
        instance: String,
        /// Every problem.
        #[source]
        source: cul8er_proxy::ConfigError,
    },
    /// The edge has no such service or backend.
    #[error("the edge {instance} has no {what}")]
    NotFound {
        /// The edge instance.
        instance: String,
        /// What is missing, e.g. `service 'web'`.
        what: String,
    },
}

impl EdgeError {
    /// Whether the proxy in the edge could not be reached (not running yet, or the
    /// instance is stopped).
    #[must_use]
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Refused { exit_code: 3, .. }) || matches!(self, Self::Incus { .. })
    }
}

/// A running edge, driven through Incus exec and file calls.
#[derive(Debug, Clone)]
pub struct Edge {
    client: incus_api::Client,
    instance: String,
    timeout: Duration,
}

impl Edge {
    /// A handle on the edge instance `instance` of `client`'s host. Nothing is sent.
    #[must_use]
    pub fn connect(client: &incus_api::Client, instance: impl Into<String>) -> Self {
        Self {
            client: client.clone(),
            instance: instance.into(),
            timeout: Duration::from_secs(60),
        }
    }

    /// The longest one call may take (default 60 s; a drain waits up to the proxy's
    /// `drain_timeout`, so keep this above it).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The edge instance's name.
    #[must_use]
    pub fn instance(&self) -> &str {
        &self.instance
    }

    async fn run(&self, what: &str, command: Vec<String>) -> Result<String, EdgeError> {
        let request = ExecRequest::new(command).env("PATH", PATH);
        let out = self
            .client
            .instances()
            .exec_recorded(&self.instance, &request, self.timeout)
            .await
            .map_err(|source| EdgeError::Incus {
                what: what.to_owned(),
                instance: self.instance.clone(),
                source: Box::new(source),
            })?;
        if out.exit_code != 0 {
            return Err(EdgeError::Refused {
                what: what.to_owned(),
                instance: self.instance.clone(),
                exit_code: out.exit_code,
                stderr: out.stderr_text().trim().to_owned(),
            });
        }
        Ok(out.stdout_text())
    }

    async fn ctl(&self, what: &str, args: &[&str]) -> Result<String, EdgeError> {
        let mut command = vec![
            BINARY_PATH.to_owned(),
            "ctl".to_owned(),
            "--admin-socket".to_owned(),
            ADMIN_SOCKET.to_owned(),
        ];
        command.extend(args.iter().map(|a| (*a).to_owned()));
        self.run(what, command).await
    }

    async fn ctl_json<T: DeserializeOwned>(
        &self,
        what: &str,
        args: &[&str],
    ) -> Result<T, EdgeError> {
        let text = self.ctl(what, args).await?;
        serde_json::from_str(&text).map_err(|source| EdgeError::Decode {
            what: what.to_owned(),
            instance: self.instance.clone(),
            source,
        })
    }

    /// The configuration in force.
    ///
    /// # Errors
    /// An [`EdgeError`] when the proxy cannot be asked.
    pub async fn config(&self) -> Result<ProxyConfig, EdgeError> {
        self.ctl_json("show its configuration", &["show"]).await
    }

    /// The configuration file the edge starts from, `None` when there is none yet.
    ///
    /// # Errors
    /// An [`EdgeError`] when the file cannot be read or parsed.
    pub async fn stored_config(&self) -> Result<Option<ProxyConfig>, EdgeError> {
        let files = self.client.instances().files(&self.instance);
        let content = match files.pull(CONFIG_PATH).await {
            Ok(content) => content,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(source) => {
                return Err(EdgeError::Incus {
                    what: format!("read {CONFIG_PATH}"),
                    instance: self.instance.clone(),
                    source: Box::new(source),
                });
            }
        };
        let incus_api::files::FileKind::File(bytes) = content.kind else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| EdgeError::Decode {
                what: format!("read {CONFIG_PATH}"),
                instance: self.instance.clone(),
                source,
            })
    }

    /// Replaces the configuration in one atomic swap inside the proxy, and keeps it
    /// as the file the edge starts from.
    ///
    /// The configuration is validated here first, then pushed beside the file, applied
    /// with `cul8er-proxy ctl apply` and only then renamed over the file: a refused
    /// configuration leaves both the running proxy and the file as they were.
    ///
    /// # Errors
    /// [`EdgeError::Invalid`] before anything is sent, [`EdgeError::Refused`] when
    /// the proxy refuses it (a listener that cannot bind), or an Incus failure.
    pub async fn apply(&self, config: &ProxyConfig) -> Result<(), EdgeError> {
        config.validate().map_err(|source| EdgeError::Invalid {
            instance: self.instance.clone(),
            source,
        })?;
        let body = serde_json::to_vec_pretty(config).map_err(|source| EdgeError::Decode {
            what: "write its configuration".to_owned(),
            instance: self.instance.clone(),
            source,
        })?;
        let staged = format!("{CONFIG_PATH}.new.json");
        self.client
            .instances()
            .files(&self.instance)
            .push(&staged, body, FileOptions::mode(0o644).owner(0, 0))
            .await
            .map_err(|source| EdgeError::Incus {
                what: format!("write {staged}"),
                instance: self.instance.clone(),
                source: Box::new(source),
            })?;
        let script = r#"set -e
"$1" ctl --admin-socket "$2" apply "$3"
mv -f "$3" "$4""#;
        self.run(
            "apply its configuration",
            [
                "/bin/sh",
                "-c",
                script,
                "cul8er",
                BINARY_PATH,
                ADMIN_SOCKET,
                &staged,
                CONFIG_PATH,
            ]
            .map(str::to_owned)
            .to_vec(),
        )
        .await
        .map(drop)
    }

    /// Sets the weights of some backends of `service` in one atomic change (the
    /// others keep theirs), kept in the file the edge starts from.
    ///
    /// # Errors
    /// [`EdgeError::NotFound`] for an unknown service or backend (nothing changes),
    /// or what [`Edge::apply`] returns.
    pub async fn set_weights(
        &self,
        service: &str,
        weights: &[(&str, u32)],
    ) -> Result<(), EdgeError> {
        let mut config = self.config().await?;
        let found = config
            .services
            .iter_mut()
            .find(|s| s.name == service)
            .ok_or_else(|| EdgeError::NotFound {
                instance: self.instance.clone(),
                what: format!("service '{service}'"),
            })?;
        for (backend, weight) in weights {
            let slot = found
                .backends
                .iter_mut()
                .find(|b| b.name == *backend)
                .ok_or_else(|| EdgeError::NotFound {
                    instance: self.instance.clone(),
                    what: format!("backend '{backend}' in service '{service}'"),
                })?;
            slot.weight = *weight;
        }
        self.apply(&config).await
    }

    /// Drains a backend: weight 0 at once (kept in the file the edge starts from),
    /// then waits until its in-flight requests finish, up to the proxy's
    /// `drain_timeout`.
    ///
    /// # Errors
    /// [`EdgeError::NotFound`] for an unknown service or backend, or an exec failure.
    pub async fn drain(&self, service: &str, backend: &str) -> Result<DrainReport, EdgeError> {
        self.set_weights(service, &[(backend, 0)]).await?;
        self.ctl_json(
            &format!("drain backend {backend} of service {service}"),
            &["drain", service, backend],
        )
        .await
    }

    /// Health of every backend of every service.
    ///
    /// # Errors
    /// An [`EdgeError`] when the proxy cannot be asked.
    pub async fn health(&self) -> Result<HealthReport, EdgeError> {
        self.ctl_json("report health", &["health"]).await
    }

    /// Health of one service's backends: the edge's active checks (also on backends at
    /// weight 0) and passive ejections.
    ///
    /// # Errors
    /// [`EdgeError::NotFound`] for an unknown service, or an exec failure.
    pub async fn backend_health(&self, service: &str) -> Result<ServiceHealth, EdgeError> {
        self.health()
            .await?
            .services
            .into_iter()
            .find(|s| s.name == service)
            .ok_or_else(|| EdgeError::NotFound {
                instance: self.instance.clone(),
                what: format!("service '{service}'"),
            })
    }

    /// Per-backend statistics of every service.
    ///
    /// # Errors
    /// An [`EdgeError`] when the proxy cannot be asked.
    pub async fn stats(&self) -> Result<Stats, EdgeError> {
        self.ctl_json("report statistics", &["stats"]).await
    }

    /// One service's per-backend counters: requests, responses by status class,
    /// errors, latency, active requests — what a canary analysis compares.
    ///
    /// # Errors
    /// [`EdgeError::NotFound`] for an unknown service, or an exec failure.
    pub async fn backend_metrics(&self, service: &str) -> Result<Vec<BackendStats>, EdgeError> {
        self.stats()
            .await?
            .services
            .into_iter()
            .find(|s| s.name == service)
            .map(|s| s.backends)
            .ok_or_else(|| EdgeError::NotFound {
                instance: self.instance.clone(),
                what: format!("service '{service}'"),
            })
    }
}
