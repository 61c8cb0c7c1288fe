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

/// The IPv4 addresses of `instance`'s NICs on their networks.
pub(crate) async fn addresses_of(
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
    // Every running instance of a served resource: a blue-green or canary set has
    // names of its own beside the ones the topology gives.
    let resources: std::collections::BTreeSet<&str> =
        edge.services.iter().map(|s| s.resource.as_str()).collect();
    let mut names: Vec<&str> = edge
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.instance.as_str()))
        .filter(|name| running(name))
        .chain(
            host.instances
                .iter()
                .filter(|i| {
                    i.is_running()
                        && i.key(crate::desired::KEY_RESOURCE)
                            .is_some_and(|r| resources.contains(r))
                })
                .map(|i| i.name.as_str()),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::{DesireOptions, desire};
    use crate::edge::EdgeBinary;
    use crate::observe::ObservedInstance;
    use crate::topology::{self, LoadOptions};

    fn desired(source: &str) -> Desired {
        let env = |_: &str| None;
        let topology = topology::parse_one(source, "t.kdl", &LoadOptions::new(&env)).unwrap();
        let options = DesireOptions {
            edge_binary: Some(EdgeBinary {
                path: "/nowhere/cul8er-proxy".into(),
                sha256: "ab".repeat(32),
            }),
            ..DesireOptions::default()
        };
        desire(&topology, &options).unwrap()
    }

    const WEB: &str = r#"topology t { network n subnet="10.9.0.1/24" nat=#false
        resource web { image "cul8er-busybox"; replicas 2; network n { expose 8080 public=18080 protocol=http; }; }; }"#;

    fn running(desired: &Desired) -> Observed {
        let mut observed = Observed {
            topology: "t".into(),
            ..Observed::default()
        };
        let host = observed.hosts.entry("local".into()).or_default();
        for instance in &desired.instances {
            host.instances.push(ObservedInstance {
                name: instance.name.clone(),
                instance_type: "container".into(),
                status: "Running".into(),
                profiles: instance.profiles.clone(),
                config: instance.config.clone(),
                devices: instance.devices.clone(),
                location: "none".into(),
            });
        }
        observed
    }

    fn addresses(last: [u8; 2]) -> Addresses {
        (1..=2)
            .map(|i| {
                let ip = IpAddr::from([10, 9, 0, last[i - 1]]);
                (
                    format!("t-web-{i}"),
                    BTreeMap::from([("eth0".to_owned(), ip)]),
                )
            })
            .collect()
    }

    fn edge_of(desired: &Desired) -> &DesiredEdge {
        desired
            .instances
            .iter()
            .find_map(|i| i.edge.as_deref())
            .unwrap()
    }

    #[test]
    fn a_new_edge_is_created_with_addresses_read_at_apply() {
        let d = desired(WEB);
        let (changes, _) = plan_edges(&d, &running(&d));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].action, Action::Create);
        assert!(changes[0].reason.as_deref().unwrap().contains("t-web-2"));
        let service = changes[0]
            .fields
            .iter()
            .find(|f| f.field == "service.web")
            .unwrap();
        assert!(
            service
                .new
                .as_deref()
                .unwrap()
                .contains("t-web-1=(address at apply):8080 w1")
        );
    }

    #[test]
    fn the_running_configuration_plans_nothing_and_a_moved_address_updates_it() {
        let d = desired(WEB);
        let edge = edge_of(&d);
        let mut observed = running(&d);
        let config = proxy_config(edge, &addresses([11, 12])).unwrap();
        let host = observed.hosts.get_mut("local").unwrap();
        host.edge = Some(ObservedEdge {
            addresses: addresses([11, 12]),
            config: Some(config),
            health: None,
        });
        let (changes, _) = plan_edges(&d, &observed);
        assert_eq!(changes[0].action, Action::None, "{:?}", changes[0]);

        // web-2 came back with another lease.
        observed
            .hosts
            .get_mut("local")
            .unwrap()
            .edge
            .as_mut()
            .unwrap()
            .addresses = addresses([11, 13]);
        let (changes, _) = plan_edges(&d, &observed);
        assert_eq!(changes[0].action, Action::Update);
        let field = &changes[0].fields[0];
        assert_eq!(field.field, "service.web");
        assert!(field.old.as_deref().unwrap().contains("10.9.0.12:8080"));
        assert!(field.new.as_deref().unwrap().contains("10.9.0.13:8080"));
    }

    #[test]
    fn weights_changed_by_hand_are_put_back() {
        let d = desired(WEB);
        let edge = edge_of(&d);
        let mut observed = running(&d);
        let mut config = proxy_config(edge, &addresses([11, 12])).unwrap();
        config.services[0].backends[1].weight = 0;
        observed.hosts.get_mut("local").unwrap().edge = Some(ObservedEdge {
            addresses: addresses([11, 12]),
            config: Some(config),
            health: None,
        });
        let (changes, _) = plan_edges(&d, &observed);
        assert_eq!(changes[0].action, Action::Update);
        assert!(
            changes[0].fields[0]
                .old
                .as_deref()
                .unwrap()
                .contains("t-web-2=10.9.0.12:8080 w0")
        );
    }

    #[test]
    fn moving_a_single_replica_from_its_proxy_device_to_the_edge_is_planned() {
        // What an earlier cul8er made: api published by its own proxy device.
        let tcp = desired(
            r#"topology t { network n subnet="10.9.0.1/24" nat=#false
               resource api { image "cul8er-busybox"; network n { expose 8080 public=18081 protocol=tcp; }; }; }"#,
        );
        let http = desired(
            r#"topology t { network n subnet="10.9.0.1/24" nat=#false
               resource api { image "cul8er-busybox"; network n { expose 8080 public=18081 protocol=http; }; }; }"#,
        );
        let plan = crate::plan::plan(&http, &running(&tcp));
        let api = plan.changes.iter().find(|c| c.name == "t-api-1").unwrap();
        assert_eq!(api.action, Action::Update);
        assert!(
            api.fields
                .iter()
                .any(|f| f.field == "devices.expose-18081" && f.new.is_none()),
            "{api:?}"
        );
        let edge = plan
            .changes
            .iter()
            .filter(|c| c.name == "t-edge")
            .map(|c| (c.kind, c.action))
            .collect::<Vec<_>>();
        assert_eq!(
            edge,
            [
                (ObjectKind::Instance, Action::Create),
                (ObjectKind::Edge, Action::Create)
            ]
        );
    }

    #[test]
    fn a_replicated_tcp_port_gets_a_tcp_listener() {
        let d = desired(
            r#"topology t { network n subnet="10.9.0.1/24" nat=#false
               resource db { image "cul8er-busybox"; replicas 2; network n { expose 5432 public=15432 protocol=tcp; }; }; }"#,
        );
        let edge = edge_of(&d);
        let addresses: Addresses = (1..=2)
            .map(|i| {
                (
                    format!("t-db-{i}"),
                    BTreeMap::from([("eth0".to_owned(), IpAddr::from([10, 9, 0, 20 + i]))]),
                )
            })
            .collect();
        let config = proxy_config(edge, &addresses).unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.listeners[0].mode,
            cul8er_proxy::config::ListenerMode::Tcp
        );
        assert_eq!(config.listeners[0].service.as_deref(), Some("db"));
        assert!(config.listeners[0].proxy_protocol);
        assert_eq!(
            config.services[0].health_check.as_ref().unwrap().kind,
            cul8er_proxy::config::CheckKind::Tcp
        );
    }
}
