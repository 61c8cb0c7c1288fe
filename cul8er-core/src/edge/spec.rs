//! What an edge is asked to do: its listeners (the public ports), the services behind
//! them (one per exposed resource port) and their backends (the replicas), and the
//! `cul8er-proxy` binary it runs.
//!
//! Pure, like the rest of the desired state: [`proxy_config`] turns a [`DesiredEdge`]
//! and the replicas' observed bridge addresses into the proxy's own configuration.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use cul8er_proxy::ProxyConfig;
use cul8er_proxy::config::{
    BackendConfig, CheckKind, HealthCheckConfig, ListenerConfig, ListenerMode, PassiveConfig,
    RouteConfig, ServiceConfig, Settings, TimeoutConfig, UpstreamProtocol,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `user.cul8er.resource` of an edge instance (not a valid resource name, so it never
/// meets one).
pub const EDGE_RESOURCE: &str = "_edge";

/// The Incus name of a topology's edge on a host: `<topology>-edge`.
#[must_use]
pub fn edge_instance_name(topology: &str) -> String {
    format!("{topology}-edge")
}

/// The `cul8er-proxy` binary pushed into edges, with its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeBinary {
    /// Where it is on the operator's machine.
    pub path: PathBuf,
    /// Its SHA-256, hex.
    pub sha256: String,
}

/// The binary could not be found or read.
#[derive(Debug, thiserror::Error)]
pub enum EdgeBinaryError {
    /// No binary in any of the places looked at.
    #[error(
        "no cul8er-proxy binary found (looked at: {}); build it with `just proxy-static` and point {} at it",
        looked.join(", "),
        super::BINARY_ENV
    )]
    NotFound {
        /// The places looked at.
        looked: Vec<String>,
    },
    /// The file could not be read.
    #[error("cannot read the cul8er-proxy binary")]
    Read(#[source] std::io::Error),
}

impl EdgeBinary {
    /// Reads and hashes the binary at `path`.
    ///
    /// # Errors
    /// [`EdgeBinaryError::Read`] (its source names the file).
    pub fn read(path: &Path) -> Result<Self, EdgeBinaryError> {
        let bytes = fs_err::read(path).map_err(EdgeBinaryError::Read)?;
        // A relative path (as `CUL8ER_PROXY_BINARY=target/...` gives) means the working
        // directory: made absolute here, it is never taken relative to the topology's
        // directory, where release artifacts are looked for.
        let path = std::path::absolute(path).map_err(EdgeBinaryError::Read)?;
        Ok(Self {
            path,
            sha256: hex::encode(Sha256::digest(&bytes)),
        })
    }

    /// The release version the edge runs: the first 16 hex digits of the hash, so a
    /// different binary is a planned change.
    #[must_use]
    pub fn version(&self) -> String {
        self.sha256.chars().take(16).collect()
    }
}

/// Finds the `cul8er-proxy` binary: `explicit` when given, else the file named by
/// `CUL8ER_PROXY_BINARY`, else `cul8er-proxy` beside the running executable.
///
/// # Errors
/// [`EdgeBinaryError::NotFound`] listing where it looked, or a read error.
pub fn locate_binary(explicit: Option<&Path>) -> Result<EdgeBinary, EdgeBinaryError> {
    if let Some(path) = explicit {
        return EdgeBinary::read(path);
    }
    let mut looked = Vec::new();
    if let Some(path) = std::env::var_os(super::BINARY_ENV) {
        return EdgeBinary::read(Path::new(&path));
    }
    looked.push(format!("${}", super::BINARY_ENV));
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let beside = dir.join("cul8er-proxy");
        if beside.is_file() {
            return EdgeBinary::read(&beside);
        }
        looked.push(beside.display().to_string());
    }
    Err(EdgeBinaryError::NotFound { looked })
}

/// What one host's edge serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredEdge {
    /// The host.
    pub host: String,
    /// The edge instance.
    pub instance: String,
    /// The public ports.
    pub listeners: Vec<EdgeListener>,
    /// The services, one per exposed resource port.
    pub services: Vec<EdgeService>,
    /// Whether listeners expect a PROXY protocol header (the publishing device sends
    /// one, so client addresses are kept).
    pub proxy_protocol: bool,
}

/// One public port of the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeListener {
    /// The port, inside the edge and on the host.
    pub public: u16,
    /// `false` for TCP mode: bytes go to one service.
    pub http: bool,
    /// HTTP: (host name, service); the route without a host name matches any host.
    /// TCP: one entry, the service.
    pub routes: Vec<(Option<String>, String)>,
}

/// One exposed port of one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeService {
    /// The name in the proxy: the resource's name, or `<resource>-<port>` when it
    /// exposes several ports through the edge.
    pub name: String,
    /// The resource.
    pub resource: String,
    /// The port the app listens on inside each replica.
    pub port: u16,
    /// The NIC of the replicas on the edge's network (`eth0`, ...).
    pub nic: String,
    /// The replicas.
    pub backends: Vec<EdgeBackend>,
    /// The HTTP path the edge checks, `None` for a TCP connect check.
    pub check_path: Option<String>,
    /// The status a healthy HTTP check answers.
    pub check_status: u16,
}

/// One replica behind the edge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeBackend {
    /// The instance (the backend's name in the proxy).
    pub instance: String,
    /// Its weight.
    pub weight: u32,
}

/// Observed bridge addresses, by instance and NIC.
pub type Addresses = BTreeMap<String, BTreeMap<String, IpAddr>>;

/// The proxy configuration for `edge`, with each backend at its observed address.
///
/// # Errors
/// The backends (`service/instance`) that have no address yet, when any.
pub fn proxy_config(edge: &DesiredEdge, addresses: &Addresses) -> Result<ProxyConfig, Vec<String>> {
    let mut missing = Vec::new();
    let mut services = Vec::new();
    for service in &edge.services {
        let mut backends = Vec::new();
        for backend in &service.backends {
            match addresses
                .get(&backend.instance)
                .and_then(|nics| nics.get(&service.nic))
            {
                Some(ip) => backends.push(BackendConfig {
                    name: backend.instance.clone(),
                    address: SocketAddr::new(*ip, service.port),
                    weight: backend.weight,
                }),
                None => missing.push(format!("{}/{}", service.name, backend.instance)),
            }
        }
        let health_check = HealthCheckConfig {
            kind: if service.check_path.is_some() {
                CheckKind::Http
            } else {
                CheckKind::Tcp
            },
            path: service.check_path.clone().unwrap_or_else(|| "/".to_owned()),
            expect_status: service.check_status,
            body_contains: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 2,
        };
        services.push(ServiceConfig {
            name: service.name.clone(),
            protocol: UpstreamProtocol::Http1,
            backends,
            health_check: Some(health_check),
            passive: PassiveConfig {
                consecutive_failures: 3,
                base_ejection: Duration::from_secs(2),
                max_ejection: Duration::from_secs(30),
            },
            timeouts: TimeoutConfig {
                connect: Duration::from_secs(1),
                ..TimeoutConfig::default()
            },
            retries: 2,
        });
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let listeners = edge
        .listeners
        .iter()
        .map(|listener| {
            let bind = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), listener.public);
            let name = format!("port-{}", listener.public);
            let base = ListenerConfig {
                name,
                bind,
                mode: ListenerMode::Http,
                proxy_protocol: edge.proxy_protocol,
                tls: None,
                routes: Vec::new(),
                service: None,
                idle_timeout: Duration::from_secs(60),
            };
            if listener.http {
                ListenerConfig {
                    routes: listener
                        .routes
                        .iter()
                        .map(|(host, service)| RouteConfig {
                            host: host.clone(),
                            path_prefix: "/".to_owned(),
                            service: service.clone(),
                        })
                        .collect(),
                    ..base
                }
            } else {
                ListenerConfig {
                    mode: ListenerMode::Tcp,
                    service: listener.routes.first().map(|(_, s)| s.clone()),
                    ..base
                }
            }
        })
        .collect();
    Ok(ProxyConfig {
        settings: Settings {
            drain_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
        },
        listeners,
        services,
    })
}

/// One line per listener and service, for plans: `port 18080 http: web`,
/// `service web: demo-web-1=10.0.0.5:8080 weight 1, ...`.
#[must_use]
pub fn describe(config: &ProxyConfig) -> BTreeMap<String, String> {
    let mut lines = BTreeMap::new();
    for listener in &config.listeners {
        let text = match listener.mode {
            ListenerMode::Tcp => format!("tcp -> {}", listener.service.as_deref().unwrap_or("?")),
            ListenerMode::Http => {
                let routes: Vec<String> = listener
                    .routes
                    .iter()
                    .map(|r| format!("{} -> {}", r.host.as_deref().unwrap_or("*"), r.service))
                    .collect();
                format!("http {}", routes.join(", "))
            }
        };
        let text = if listener.proxy_protocol {
            format!("{text} (proxy protocol)")
        } else {
            text
        };
        lines.insert(format!("listener.{}", listener.bind.port()), text);
    }
    for service in &config.services {
        let backends: Vec<String> = service
            .backends
            .iter()
            .map(|b| format!("{}={} w{}", b.name, b.address, b.weight))
            .collect();
        let check = service
            .health_check
            .as_ref()
            .map_or(String::new(), |c| match c.kind {
                CheckKind::Http => format!(" check http {} {}", c.path, c.expect_status),
                CheckKind::Tcp => " check tcp".to_owned(),
            });
        lines.insert(
            format!("service.{}", service.name),
            format!("{}{check}", backends.join(", ")),
        );
    }
    lines
}

/// [`describe`] before addresses are known: backends by name only.
#[must_use]
pub fn describe_pending(edge: &DesiredEdge) -> BTreeMap<String, String> {
    let mut lines = BTreeMap::new();
    for listener in &edge.listeners {
        let routes: Vec<String> = listener
            .routes
            .iter()
            .map(|(host, service)| format!("{} -> {service}", host.as_deref().unwrap_or("*")))
            .collect();
        let text = if listener.http {
            format!("http {}", routes.join(", "))
        } else {
            format!(
                "tcp -> {}",
                listener.routes.first().map_or("?", |(_, s)| s.as_str())
            )
        };
        let text = if edge.proxy_protocol {
            format!("{text} (proxy protocol)")
        } else {
            text
        };
        lines.insert(format!("listener.{}", listener.public), text);
    }
    for service in &edge.services {
        let backends: Vec<String> = service
            .backends
            .iter()
            .map(|b| {
                format!(
                    "{}=(address at apply):{} w{}",
                    b.instance, service.port, b.weight
                )
            })
            .collect();
        lines.insert(format!("service.{}", service.name), backends.join(", "));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_binary_path_is_taken_from_the_working_directory() {
        // Cargo runs unit tests in the crate's directory, where Cargo.toml is.
        let binary = EdgeBinary::read(Path::new("Cargo.toml")).unwrap();
        assert!(binary.path.is_absolute(), "{:?}", binary.path);
        assert_eq!(
            binary.path,
            std::env::current_dir().unwrap().join("Cargo.toml")
        );
        assert_eq!(binary.version().len(), 16);
    }
}
