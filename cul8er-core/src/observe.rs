//! What Incus holds for a topology: its instances, networks and volumes, read with one
//! listing per kind, host and project — never one request per instance.
//!
//! Instances are found by their `user.cul8er.topology` key with a server-side filter.
//! Networks and volumes are listed whole and kept when they carry the key or when the
//! topology names them. The result is a plain serde value, so the planner's tests feed
//! it recorded or constructed states.
//!
//! What a listing cannot show — whether a release's service runs inside its instance —
//! [`observe_services`] reads with one bounded exec per running instance that has a
//! release, several at once; a topology without releases costs nothing more.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::desired::{Desired, KEY_RELEASE, KEY_RESOURCE, KEY_TOPOLOGY};
use crate::release::health::{self, HealthQuery, ReleaseHealth};

/// What Incus holds for one topology, by host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    /// The topology.
    pub topology: String,
    /// By host name.
    pub hosts: BTreeMap<String, ObservedHost>,
}

/// What one host holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedHost {
    /// Instances carrying the topology's key.
    pub instances: Vec<ObservedInstance>,
    /// Networks the topology made or names.
    pub networks: Vec<ObservedNetwork>,
    /// Custom volumes the topology made or names.
    pub volumes: Vec<ObservedVolume>,
    /// The edge, when the topology has one on this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<crate::edge::ObservedEdge>,
    /// When it was read, in Unix seconds (an old blue-green set is deleted once its
    /// `user.cul8er.retire-after` time has passed); 0 when unknown.
    #[serde(default)]
    pub read_at: u64,
    /// The release services of running instances that have a release, by instance
    /// name, as [`observe_services`] read them (an instance not asked is absent).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, ReleaseHealth>,
}

/// An instance as Incus holds it (its own config and devices, profiles not expanded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInstance {
    /// Name.
    pub name: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub instance_type: String,
    /// `Running`, `Stopped`, `Frozen`, ...
    pub status: String,
    /// Profiles in order.
    pub profiles: Vec<String>,
    /// Config without `volatile.*` keys.
    pub config: BTreeMap<String, String>,
    /// Devices.
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
    /// Cluster member, `none` when standalone.
    #[serde(default)]
    pub location: String,
}

impl ObservedInstance {
    /// Whether it runs.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.status.eq_ignore_ascii_case("running")
    }

    /// A config value.
    #[must_use]
    pub fn key(&self, key: &str) -> Option<&str> {
        self.config.get(key).map(String::as_str)
    }
}

/// A network as Incus holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedNetwork {
    /// Name.
    pub name: String,
    /// `bridge`, `physical`, ...
    #[serde(rename = "type")]
    pub network_type: String,
    /// Whether Incus manages it.
    pub managed: bool,
    /// Config without `volatile.*` keys.
    pub config: BTreeMap<String, String>,
}

/// A custom volume as Incus holds it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedVolume {
    /// The pool.
    pub pool: String,
    /// Name.
    pub name: String,
    /// Config without `volatile.*` keys.
    pub config: BTreeMap<String, String>,
}

/// Reading the state of a host failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {what} on host {host}")]
pub struct ObserveError {
    /// The host.
    pub host: String,
    /// What was being read.
    pub what: String,
    /// What Incus said.
    #[source]
    pub source: Box<incus_api::Error>,
}

fn without_volatile(
    config: &std::collections::HashMap<String, String>,
) -> BTreeMap<String, String> {
    config
        .iter()
        .filter(|(k, _)| !k.starts_with("volatile."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Reads one host: one filtered instance listing, one network listing and one volume
/// listing per pool the topology uses.
///
/// `wanted` names what the topology asks of this host (for networks and volumes that
/// exist without cul8er's key); `pools` are the pools to look in.
///
/// # Errors
///
/// An [`ObserveError`] naming the host and the listing that failed.
pub async fn observe_host(
    client: &incus_api::Client,
    host: &str,
    topology: &str,
    wanted_networks: &BTreeSet<String>,
    pools: &BTreeSet<String>,
    wanted_volumes: &BTreeSet<String>,
) -> Result<ObservedHost, ObserveError> {
    let fail = |what: &str| {
        let what = what.to_owned();
        let host = host.to_owned();
        move |source: incus_api::Error| ObserveError {
            host,
            what,
            source: Box::new(source),
        }
    };
    let options =
        incus_api::instances::ListOptions::filter(format!("config.{KEY_TOPOLOGY} eq {topology}"));
    let (instance_api, network_api) = (client.instances(), client.networks());
    let (instances, networks) = tokio::join!(instance_api.list(&options), network_api.list());
    let instances = instances.map_err(fail("the instances"))?;
    let networks = networks.map_err(fail("the networks"))?;
    let mut host_state = ObservedHost {
        read_at: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ..ObservedHost::default()
    };
    for instance in instances {
        // The filter is a case-insensitive regex on the server; check exactly here.
        if instance.config.get(KEY_TOPOLOGY).map(String::as_str) != Some(topology) {
            continue;
        }
        host_state.instances.push(ObservedInstance {
            name: instance.name,
            instance_type: instance.instance_type,
            status: instance.status,
            profiles: instance.profiles,
            config: without_volatile(&instance.config),
            devices: instance
                .devices
                .into_iter()
                .map(|(k, v)| (k, v.into_iter().collect()))
                .collect(),
            location: instance.location,
        });
    }
    for network in networks {
        let ours = network.config.get(KEY_TOPOLOGY).map(String::as_str) == Some(topology);
        if ours || wanted_networks.contains(&network.name) {
            host_state.networks.push(ObservedNetwork {
                name: network.name,
                network_type: network.network_type,
                managed: network.managed,
                config: without_volatile(&network.config),
            });
        }
    }
    for pool in pools {
        let volumes = match client.storage_volumes(pool).list().await {
            Ok(volumes) => volumes,
            // A pool that does not exist holds nothing of ours; creating a volume in it
            // will say so.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(fail(&format!("the volumes of pool {pool}"))(e)),
        };
        for volume in volumes {
            let ours = volume.config.get(KEY_TOPOLOGY).map(String::as_str) == Some(topology);
            if ours || wanted_volumes.contains(&volume.name) {
                host_state.volumes.push(ObservedVolume {
                    pool: pool.clone(),
                    name: volume.name,
                    config: without_volatile(&volume.config),
                });
            }
        }
    }
    host_state.instances.sort_by(|a, b| a.name.cmp(&b.name));
    host_state.networks.sort_by(|a, b| a.name.cmp(&b.name));
    host_state
        .volumes
        .sort_by(|a, b| (&a.pool, &a.name).cmp(&(&b.pool, &b.name)));
    Ok(host_state)
}

/// Reads every host `desired` names, all at once.
///
/// `clients` maps host names to clients; `extra_pools` are pools to look in besides
/// those the topology names (`default` always).
///
/// # Errors
///
/// The first [`ObserveError`].
pub async fn observe(
    desired: &Desired,
    clients: &BTreeMap<String, incus_api::Client>,
) -> Result<Observed, ObserveError> {
    let mut pools: BTreeSet<String> = desired.volumes.iter().map(|v| v.pool.clone()).collect();
    pools.insert("default".to_owned());
    let wanted_networks: BTreeSet<String> =
        desired.networks.iter().map(|n| n.name.clone()).collect();
    let wanted_volumes: BTreeSet<String> = desired.volumes.iter().map(|v| v.name.clone()).collect();
    let reads = clients.iter().map(|(host, client)| {
        let (pools, wanted_networks, wanted_volumes) = (&pools, &wanted_networks, &wanted_volumes);
        async move {
            let mut state = observe_host(
                client,
                host,
                &desired.topology,
                wanted_networks,
                pools,
                wanted_volumes,
            )
            .await?;
            let edge = desired
                .instances
                .iter()
                .filter(|i| &i.host == host)
                .find_map(|i| i.edge.as_deref());
            if let Some(edge) = edge {
                state.edge = Some(crate::edge::observe_edge(client, edge, &state).await);
            }
            Ok::<_, ObserveError>((host.clone(), state))
        }
    });
    let hosts = futures_util::future::try_join_all(reads).await?;
    Ok(Observed {
        topology: desired.topology.clone(),
        hosts: hosts.into_iter().collect(),
    })
}

/// Reads the release service of every running instance of `observed` that carries a
/// release the topology still declares for its resource, into
/// [`ObservedHost::services`]: one exec each, at most [`health::HEALTH_CONCURRENCY`]
/// at once, each within [`health::HEALTH_TIMEOUT`].
///
/// Never fails: an instance that cannot be asked is recorded as
/// [`crate::release::ServiceState::Unknown`] with the reason, which the plan reports
/// rather than plans.
pub async fn observe_services(
    desired: &Desired,
    clients: &BTreeMap<String, incus_api::Client>,
    observed: &mut Observed,
) {
    let apps: BTreeMap<(&str, &str), &str> = desired
        .instances
        .iter()
        .filter_map(|i| {
            Some((
                (i.host.as_str(), i.resource.as_str()),
                i.release.as_ref()?.name.as_str(),
            ))
        })
        .collect();
    if apps.is_empty() {
        return;
    }
    let mut asked = Vec::new();
    let mut queries = Vec::new();
    for (host, state) in &observed.hosts {
        let Some(client) = clients.get(host) else {
            continue;
        };
        for instance in state.instances.iter().filter(|i| i.is_running()) {
            let app = instance
                .key(KEY_RESOURCE)
                .filter(|_| instance.key(KEY_RELEASE).is_some())
                .and_then(|resource| apps.get(&(host.as_str(), resource)));
            if let Some(app) = app {
                asked.push((host.clone(), instance.name.clone()));
                queries.push(HealthQuery {
                    client,
                    instance: &instance.name,
                    app: Some(app),
                });
            }
        }
    }
    let answers =
        health::health_of_many(&queries, health::HEALTH_CONCURRENCY, health::HEALTH_TIMEOUT).await;
    for ((host, name), answer) in asked.into_iter().zip(answers) {
        if let (Some(answer), Some(state)) = (answer, observed.hosts.get_mut(&host)) {
            state.services.insert(name, answer);
        }
    }
}
