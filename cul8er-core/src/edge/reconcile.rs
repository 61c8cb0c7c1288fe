//! The edge in the plan/apply cycle: what is observed of it, how its traffic
//! configuration is planned, and how the executor brings it about.
//!
//! The edge instance itself (image, NICs, publishing devices, the binary as its
//! release) is planned like any instance. Its traffic configuration is an object of
//! its own ([`ObjectKind::Edge`]), planned after the instances because the backends'
//! addresses exist only once the replicas run: the planner compares the configuration
//! the running proxy holds with the one made from the topology and the observed
//! addresses; the executor reads the addresses again, builds the configuration and
//! applies it in one atomic swap.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use cul8er_proxy::{HealthReport, ProxyConfig};
use serde::{Deserialize, Serialize};

use crate::desired::Desired;
use crate::observe::{Observed, ObservedHost};
use crate::plan::{Action, Change, FieldChange, ObjectKind, Target};

use super::spec::{Addresses, DesiredEdge, describe, describe_pending, proxy_config};
use super::{Edge, EdgeError};

/// What Incus and the running proxy say about one host's edge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedEdge {
    /// The backends' IPv4 addresses, by instance and NIC (running instances only).
    pub addresses: Addresses,
    /// The configuration the proxy runs, `None` when it does not run (yet).
    pub config: Option<ProxyConfig>,
    /// Its backends' health, when it runs.
    pub health: Option<HealthReport>,
}

async fn addresses_of(
    client: &incus_api::Client,
    instance: &str,
) -> Result<BTreeMap<String, IpAddr>, incus_api::Error> {
    let state = client.instances().state(instance).await?;
    let mut nics = BTreeMap::new();
    for (nic, interface) in state.network.iter().flatten() {
        let found = interface
            .addresses
            .iter()
            .filter(|a| a.family == "inet" && a.scope == "global")
            .find_map(|a| a.address.parse::<IpAddr>().ok());
        if let Some(ip) = found {
            nics.insert(nic.clone(), ip);
        }
    }
    Ok(nics)
}

/// Reads the backends' addresses (one state call per running backend, at once) and,
/// when the edge runs, its configuration and health (two execs).
pub async fn observe_edge(
    client: &incus_api::Client,
    edge: &DesiredEdge,
    host: &ObservedHost,
) -> ObservedEdge {
    let running = |name: &str| {
        host.instances
            .iter()
            .any(|i| i.name == name && i.is_running())
    };
    let mut names: Vec<&str> = edge
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.instance.as_str()))
        .filter(|name| running(name))
        .collect();
    names.sort_unstable();
    names.dedup();
    let reads = names.iter().map(|name| async move {
        match addresses_of(client, name).await {
            Ok(nics) => Some(((*name).to_owned(), nics)),
            Err(error) => {
                tracing::debug!(instance = name, %error, "no addresses read");
                None
            }
        }
    });
    let addresses = futures_util::future::join_all(reads)
        .await
        .into_iter()
        .flatten()
        .collect();
    let mut observed = ObservedEdge {
        addresses,
        config: None,
        health: None,
    };
    if running(&edge.instance) {
        let handle = Edge::connect(client, &edge.instance).with_timeout(Duration::from_secs(20));
        let (config, health) = tokio::join!(handle.config(), handle.health());
        match config {
            Ok(config) => observed.config = Some(config),
            Err(error) => {
                tracing::debug!(edge = %edge.instance, error = %crate::execute::error_chain(&error), "edge configuration not read");
            }
        }
        observed.health = health.ok();
    }
    observed
}

/// One host's edge as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeStatus {
    /// The host.
    pub host: String,
    /// The edge instance.
    pub instance: String,
    /// Every backend with its weight and health; `None` when the proxy does not run.
    pub health: Option<HealthReport>,
}

/// The edges `desired` asks for, with the health `observed` read from them.
#[must_use]
pub fn edge_status(desired: &Desired, observed: &Observed) -> Vec<EdgeStatus> {
    desired
        .instances
        .iter()
        .filter_map(|i| i.edge.as_deref())
        .map(|edge| EdgeStatus {
            host: edge.host.clone(),
            instance: edge.instance.clone(),
            health: observed
                .hosts
                .get(&edge.host)
                .and_then(|h| h.edge.as_ref())
                .and_then(|e| e.health.clone()),
        })
        .collect()
}

/// The plan's change for each edge `desired` asks for.
#[must_use]
pub fn plan_edges(desired: &Desired, observed: &Observed) -> (Vec<Change>, Vec<String>) {
    let mut changes = Vec::new();
    let mut notes = Vec::new();
    let empty = Addresses::new();
    for instance in &desired.instances {
        let Some(edge) = instance.edge.as_deref() else {
            continue;
        };
        let seen = observed.hosts.get(&edge.host).and_then(|h| h.edge.as_ref());
        let old = seen.and_then(|s| s.config.as_ref());
        let addresses = seen.map_or(&empty, |s| &s.addresses);
        let (wanted, new_lines, reason) = match proxy_config(edge, addresses) {
            Ok(config) => {
                let lines = describe(&config);
                (Some(config), lines, None)
            }
            Err(missing) => (
                None,
                describe_pending(edge),
                Some(format!(
                    "the addresses of {} are read at apply",
                    missing.join(", ")
                )),
            ),
        };
        let old_lines = old.map(describe).unwrap_or_default();
        let mut fields = Vec::new();
        let keys: std::collections::BTreeSet<&String> =
            old_lines.keys().chain(new_lines.keys()).collect();
        for key in keys {
            let (before, after) = (old_lines.get(key), new_lines.get(key));
            if before != after {
                fields.push(FieldChange {
                    field: key.clone(),
                    old: before.cloned(),
                    new: after.cloned(),
                    live: true,
                });
            }
        }
        let action = match (old, &wanted) {
            (None, _) => Action::Create,
            (Some(old), Some(wanted)) if old == wanted => Action::None,
            _ => Action::Update,
        };
        if action != Action::None && fields.is_empty() {
            fields.push(FieldChange {
                field: "settings".to_owned(),
                old: None,
                new: Some("as cul8er sets them".to_owned()),
                live: true,
            });
        }
        if let Some(report) = seen.and_then(|s| s.health.as_ref()) {
            for service in &report.services {
                let backends: Vec<String> = service
                    .backends
                    .iter()
                    .map(|b| {
                        let state = if b.ejected {
                            "ejected".to_owned()
                        } else {
                            format!("{:?}", b.health).to_lowercase()
                        };
                        format!("{} w{} {state}", b.name, b.weight)
                    })
                    .collect();
                notes.push(format!(
                    "edge {} service {}: {} of {} available ({})",
                    edge.instance,
                    service.name,
                    service.available,
                    service.backends.len(),
                    backends.join(", ")
                ));
            }
        }
        changes.push(Change {
            host: edge.host.clone(),
            kind: ObjectKind::Edge,
            name: edge.instance.clone(),
            resource: None,
            action,
            drift: false,
            restart: false,
            start: false,
            reason: if action == Action::None { None } else { reason },
            fields,
            target: Some(Target::Edge(Box::new(edge.clone()))),
        });
    }
    (changes, notes)
}

/// Brings the running edge to `edge`: waits until every backend has its address on
/// the bridge (up to `deadline`), builds the configuration and applies it atomically.
///
/// # Errors
/// An [`EdgeError`] from reading the backends or applying the configuration.
pub async fn converge(
    client: &incus_api::Client,
    edge: &DesiredEdge,
    deadline: Duration,
) -> Result<ProxyConfig, EdgeError> {
    let until = tokio::time::Instant::now() + deadline;
    let config = loop {
        let mut addresses = Addresses::new();
        for service in &edge.services {
            for backend in &service.backends {
                if addresses.contains_key(&backend.instance) {
                    continue;
                }
                let nics = addresses_of(client, &backend.instance)
                    .await
                    .map_err(|source| EdgeError::Incus {
                        what: format!("read the address of backend {}", backend.instance),
                        instance: edge.instance.clone(),
                        source: Box::new(source),
                    })?;
                addresses.insert(backend.instance.clone(), nics);
            }
        }
        match proxy_config(edge, &addresses) {
            Ok(config) => break config,
            Err(missing) if tokio::time::Instant::now() >= until => {
                return Err(EdgeError::NotFound {
                    instance: edge.instance.clone(),
                    what: format!(
                        "address for {} after {}s; do the replicas get a DHCP lease on the bridge?",
                        missing.join(", "),
                        deadline.as_secs()
                    ),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    };
    let handle = Edge::connect(client, &edge.instance);
    loop {
        match handle.apply(&config).await {
            Ok(()) => return Ok(config),
            // The service may still be binding its admin socket.
            Err(error) if error.is_unreachable() && tokio::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error),
        }
    }
}
