//! What a topology asks Incus for: networks, volumes and instances, each with the
//! exact config and devices cul8er will set, its `user.cul8er.*` keys and a hash of
//! its spec.
//!
//! This is pure: a [`Topology`] in, a [`Desired`] out. The planner compares it with
//! what Incus holds ([`crate::observe::Observed`]). The spec hash is stored on each
//! instance (`user.cul8er.spec`): when the hash Incus holds equals the one the
//! topology gives, any other difference was made behind cul8er's back — drift.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::topology::{
    CpuLimit, EnvValue, ImageRef, InstanceKind, LaterCapability, NetworkKind, Release,
    StrategyKind, Topology,
};

/// `user.cul8er.topology`: the topology an object belongs to.
pub const KEY_TOPOLOGY: &str = "user.cul8er.topology";
/// `user.cul8er.resource`: the resource an instance belongs to.
pub const KEY_RESOURCE: &str = "user.cul8er.resource";
/// `user.cul8er.replica`: the replica index, from 1.
pub const KEY_REPLICA: &str = "user.cul8er.replica";
/// `user.cul8er.spec`: the hash of the spec that made the object.
pub const KEY_SPEC: &str = "user.cul8er.spec";
/// `user.cul8er.image`: the image reference as the topology wrote it (Incus keeps
/// only the fingerprint).
pub const KEY_IMAGE: &str = "user.cul8er.image";
/// `user.cul8er.release`: the release version deployed.
pub const KEY_RELEASE: &str = "user.cul8er.release";
/// `user.cul8er.revision`: the revision that last changed the object. Not part of
/// the spec: it changes with every apply that touches the object.
pub const KEY_REVISION: &str = "user.cul8er.revision";

/// `user.cul8er.set`: the instance set of a blue-green or canary resource (`g`, `b`,
/// `c`); absent for the first, unsuffixed set.
pub const KEY_SET: &str = "user.cul8er.set";
/// `user.cul8er.candidate`: set on a new set's instances until traffic switches to
/// them; a candidate left by an interrupted rollout is deleted by the next plan.
pub const KEY_CANDIDATE: &str = "user.cul8er.candidate";
/// `user.cul8er.retire-after`: on an old set after the switch, the Unix time after
/// which the next plan deletes it (until then `cul8er rollback` switches back to it).
pub const KEY_RETIRE: &str = "user.cul8er.retire-after";

/// Settings the topology does not carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesireOptions {
    /// The host address Incus proxy devices listen on for `expose`: loopback unless
    /// the operator publishes on another address on purpose.
    pub expose_address: String,
    /// The storage pool of the root disk when a resource sets a disk limit.
    pub root_pool: String,
    /// The image of edge instances (an alias on the host).
    pub edge_image: String,
    /// The static `cul8er-proxy` binary edges run; `None` looks for it when a
    /// topology needs an edge, as [`crate::edge::locate_binary`] does (the
    /// `CUL8ER_PROXY_BINARY` env var, then beside the running executable).
    pub edge_binary: Option<crate::edge::EdgeBinary>,
}

impl Default for DesireOptions {
    fn default() -> Self {
        Self {
            expose_address: "127.0.0.1".to_owned(),
            root_pool: "default".to_owned(),
            edge_image: "cul8er-busybox".to_owned(),
            edge_binary: None,
        }
    }
}

/// Everything a topology asks Incus for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    /// The topology's name.
    pub topology: String,
    /// Its hosts, by name.
    pub hosts: Vec<String>,
    /// Networks, by host and name.
    pub networks: Vec<DesiredNetwork>,
    /// Custom volumes, by host and name.
    pub volumes: Vec<DesiredVolume>,
    /// Instances, by host and name.
    pub instances: Vec<DesiredInstance>,
    /// What the plan must say besides its changes.
    pub notes: Vec<String>,
}

/// A network on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredNetwork {
    /// The host.
    pub host: String,
    /// Its Incus name.
    pub name: String,
    /// `true` for a bridge the topology owns; `false` for one that must exist.
    pub owned: bool,
    /// The config cul8er sets (owned bridges only).
    pub config: BTreeMap<String, String>,
}

/// A custom storage volume on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredVolume {
    /// The host.
    pub host: String,
    /// The storage pool.
    pub pool: String,
    /// Its Incus name.
    pub name: String,
    /// The config cul8er sets.
    pub config: BTreeMap<String, String>,
}

/// One instance: one replica of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstance {
    /// The host.
    pub host: String,
    /// The Incus name, `TOPOLOGY-RESOURCE-N`.
    pub name: String,
    /// The resource.
    pub resource: String,
    /// The replica index, from 1.
    pub replica: u32,
    /// Container or VM.
    pub kind: InstanceKind,
    /// The image.
    pub image: ImageRef,
    /// Profiles in order (`default` when the topology names none).
    pub profiles: Vec<String>,
    /// The cluster member to place it on, when the host is a cluster.
    pub target: Option<String>,
    /// Instance config, `user.cul8er.*` keys included (not the revision).
    pub config: BTreeMap<String, String>,
    /// Instance devices.
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
    /// The release to run in it.
    pub release: Option<Release>,
    /// The hash of everything above: equal hashes, equal specs.
    pub spec: String,
    /// For the edge instance: what it serves (not part of the spec hash; the plan
    /// changes the edge's traffic configuration as an object of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<Box<crate::edge::DesiredEdge>>,
    /// `blue-green` or `canary` when the resource's changes come up as a parallel
    /// set and switch traffic on the edge (not part of the spec hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<StrategyKind>,
}

/// A topology that cannot be planned yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DesireError {
    /// The topology uses blocks whose capability has not landed.
    #[error("the topology uses {}, which cul8er cannot deploy yet; remove the block to plan the rest", list(.0))]
    LaterCapabilities(Vec<LaterCapability>),
    /// The topology needs an edge and no `cul8er-proxy` binary was found.
    #[error("{0}")]
    EdgeBinary(String),
    /// A resource takes its image from an image remote.
    #[error(
        "resource {resource} takes its image from the image remote `{remote}`, which cul8er cannot pull from yet; import the image on the host and name its alias"
    )]
    ImageRemote {
        /// The resource.
        resource: String,
        /// The remote.
        remote: String,
    },
}

fn list(caps: &[LaterCapability]) -> String {
    caps.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Incus name of the network a topology attaches as `name`.
pub(crate) fn incus_network_name(topology: &Topology, name: &str) -> String {
    match topology.networks.iter().find(|n| n.name == name) {
        Some(network) => match &network.kind {
            NetworkKind::Existing { name } => name.clone(),
            NetworkKind::Bridge { .. } => network.name.clone(),
        },
        None => name.to_owned(),
    }
}

/// Turns a topology into what it asks Incus for.
///
/// # Errors
///
/// [`DesireError::LaterCapabilities`] naming every block whose capability has not
/// landed, and [`DesireError::ImageRemote`] for images on image remotes.
pub fn desire(topology: &Topology, options: &DesireOptions) -> Result<Desired, DesireError> {
    let later: Vec<_> = topology.later_capabilities().into_iter().collect();
    if !later.is_empty() {
        return Err(DesireError::LaterCapabilities(later));
    }
    let mut notes = Vec::new();
    let mut instances = Vec::new();
    let mut edges = crate::edge::EdgeCollector::default();
    // Which hosts use which network and volume, for those declared without a host.
    let mut network_hosts: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut volume_hosts: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for resource in &topology.resources {
        if let ImageRef::Alias {
            remote: Some(remote),
            ..
        } = &resource.image
        {
            return Err(DesireError::ImageRemote {
                resource: resource.name.clone(),
                remote: remote.clone(),
            });
        }
        for attachment in &resource.networks {
            network_hosts
                .entry(&attachment.network)
                .or_default()
                .insert(&resource.host);
        }
        for mount in &resource.volumes {
            volume_hosts
                .entry(&mount.volume)
                .or_default()
                .insert(&resource.host);
        }
        edges.add_resource(topology, resource);
        for unenforced in resource.unenforced_limits("dir") {
            if unenforced == "disk" && options.root_pool == "default" {
                notes.push(format!(
                    "resource {}: the disk limit is not enforced on a `dir` storage pool",
                    resource.name
                ));
            }
        }
        let mut config = BTreeMap::new();
        match resource.limits.cpu {
            Some(CpuLimit::Cores { cores }) => {
                config.insert("limits.cpu".to_owned(), cores.to_string());
            }
            Some(CpuLimit::Allowance { percent }) => {
                config.insert("limits.cpu.allowance".to_owned(), format!("{percent}%"));
            }
            None => {}
        }
        if let Some(memory) = resource.limits.memory {
            config.insert("limits.memory".to_owned(), memory.to_incus());
        }
        if let Some(processes) = resource.limits.processes {
            config.insert("limits.processes".to_owned(), processes.to_string());
        }
        config.extend(resource.config.clone());
        config.insert(KEY_TOPOLOGY.to_owned(), topology.name.clone());
        config.insert(KEY_RESOURCE.to_owned(), resource.name.clone());
        config.insert(KEY_IMAGE.to_owned(), resource.image.to_string());
        if let Some(release) = &resource.release {
            config.insert(KEY_RELEASE.to_owned(), release.version.clone());
        }

        let mut devices: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for (index, attachment) in resource.networks.iter().enumerate() {
            let nic = format!("eth{index}");
            devices.insert(
                nic.clone(),
                map([
                    ("type", "nic"),
                    (
                        "network",
                        &incus_network_name(topology, &attachment.network),
                    ),
                    ("name", &nic),
                ]),
            );
            // Ports the edge serves get no proxy device of their own.
            for expose in attachment
                .expose
                .iter()
                .filter(|e| !crate::edge::through_edge(e, resource.replicas))
            {
                devices.insert(
                    format!("expose-{}", expose.public),
                    map([
                        ("type", "proxy"),
                        (
                            "listen",
                            &listen_on(expose.address, &options.expose_address, expose.public),
                        ),
                        ("connect", &format!("tcp:127.0.0.1:{}", expose.port)),
                    ]),
                );
            }
        }
        for mount in &resource.volumes {
            let pool = topology
                .volumes
                .iter()
                .find(|v| v.name == mount.volume)
                .map_or("default", |v| v.pool.as_str());
            devices.insert(
                format!("volume-{}", mount.volume),
                map([
                    ("type", "disk"),
                    ("pool", pool),
                    ("source", &mount.volume),
                    ("path", &mount.path),
                ]),
            );
        }
        if let Some(disk) = resource.limits.disk {
            devices.insert(
                "root".to_owned(),
                map([
                    ("type", "disk"),
                    ("path", "/"),
                    ("pool", &options.root_pool),
                    ("size", &disk.to_incus()),
                ]),
            );
        }
        devices.extend(resource.devices.clone());

        let profiles = if resource.profiles.is_empty() {
            vec!["default".to_owned()]
        } else {
            resource.profiles.clone()
        };
        // The environment's names and plain values are part of the spec; secret values
        // never are (only the variable they are read from).
        let environment: Vec<(String, String)> = resource
            .environment
            .iter()
            .map(|var| {
                let value = match &var.value {
                    EnvValue::Value { value } => format!("value:{value}"),
                    EnvValue::SecretFromEnv { var } => format!("env:{var}"),
                    EnvValue::SecretFromStore { secret } => format!("store:{secret}"),
                };
                (var.name.clone(), value)
            })
            .collect();
        let members = topology
            .host(&resource.host)
            .and_then(|h| h.cluster.as_ref())
            .map(|c| c.members.clone())
            .unwrap_or_default();
        for replica in 1..=resource.replicas {
            let name =
                crate::topology::names::instance_name(&topology.name, &resource.name, replica);
            let mut config = config.clone();
            config.insert(KEY_REPLICA.to_owned(), replica.to_string());
            let target = match &resource.placement {
                Some(crate::topology::Placement::Member { name }) => Some(name.clone()),
                Some(crate::topology::Placement::Group { name }) => Some(format!("@{name}")),
                Some(crate::topology::Placement::Spread) if !members.is_empty() => {
                    let index = usize::try_from(replica - 1).unwrap_or(0) % members.len();
                    Some(members[index].clone())
                }
                _ => None,
            };
            let mut instance = DesiredInstance {
                host: resource.host.clone(),
                name,
                resource: resource.name.clone(),
                replica,
                kind: resource.kind,
                image: resource.image.clone(),
                profiles: profiles.clone(),
                target,
                config,
                devices: devices.clone(),
                release: resource.release.clone(),
                spec: String::new(),
                edge: None,
                switch: None,
            };
            instance.spec = spec_hash(&(&instance, &environment));
            instance
                .config
                .insert(KEY_SPEC.to_owned(), instance.spec.clone());
            // A parallel set needs the edge to switch to: without an exposed port
            // through it the resource rolls.
            if resource.strategy.kind.switches_traffic()
                && resource
                    .networks
                    .iter()
                    .flat_map(|n| &n.expose)
                    .any(|e| crate::edge::through_edge(e, resource.replicas))
            {
                instance.switch = Some(resource.strategy.kind);
            }
            instances.push(instance);
        }
    }

    let mut networks = Vec::new();
    for network in &topology.networks {
        let hosts: Vec<&str> = match &network.host {
            Some(host) => vec![host.as_str()],
            None => network_hosts
                .get(network.name.as_str())
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default(),
        };
        for host in hosts {
            let (owned, config) = match &network.kind {
                NetworkKind::Bridge { subnet, nat } => {
                    let mut config = BTreeMap::new();
                    config.insert(
                        "ipv4.address".to_owned(),
                        subnet.clone().unwrap_or_else(|| "auto".to_owned()),
                    );
                    config.insert("ipv4.nat".to_owned(), nat.to_string());
                    config.insert("ipv6.address".to_owned(), "none".to_owned());
                    config.insert(KEY_TOPOLOGY.to_owned(), topology.name.clone());
                    (true, config)
                }
                NetworkKind::Existing { .. } => (false, BTreeMap::new()),
            };
            networks.push(DesiredNetwork {
                host: host.to_owned(),
                name: incus_network_name(topology, &network.name),
                owned,
                config,
            });
        }
    }

    let mut volumes = Vec::new();
    for volume in &topology.volumes {
        let hosts: Vec<&str> = match &volume.host {
            Some(host) => vec![host.as_str()],
            None => volume_hosts
                .get(volume.name.as_str())
                .map(|h| h.iter().copied().collect())
                .unwrap_or_default(),
        };
        for host in hosts {
            let mut config = BTreeMap::new();
            if let Some(size) = volume.size {
                config.insert("size".to_owned(), size.to_incus());
            }
            config.insert(KEY_TOPOLOGY.to_owned(), topology.name.clone());
            volumes.push(DesiredVolume {
                host: host.to_owned(),
                pool: volume.pool.clone(),
                name: volume.name.clone(),
                config,
            });
        }
    }

    instances.extend(edges.instances(topology, options, &mut notes)?);
    networks.sort_by(|a, b| (&a.host, &a.name).cmp(&(&b.host, &b.name)));
    volumes.sort_by(|a, b| (&a.host, &a.pool, &a.name).cmp(&(&b.host, &b.pool, &b.name)));
    instances.sort_by(|a, b| (&a.host, &a.name).cmp(&(&b.host, &b.name)));
    Ok(Desired {
        topology: topology.name.clone(),
        hosts: topology.hosts.iter().map(|h| h.name.clone()).collect(),
        networks,
        volumes,
        instances,
        notes,
    })
}

pub(crate) fn map<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A short, stable hash of a value's JSON (16 hex digits of SHA-256).
pub(crate) fn spec_hash(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&json);
    hex::encode(&digest[..8])
}

/// The `listen=` of a proxy device publishing `port` on `address`, or on `default`
/// (the deployment's, 127.0.0.1) when the topology names none.
pub(crate) fn listen_on(address: Option<std::net::IpAddr>, default: &str, port: u16) -> String {
    match address {
        Some(ip) => format!("tcp:{}", std::net::SocketAddr::new(ip, port)),
        None => format!("tcp:{default}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{self, LoadOptions};

    fn load(source: &str) -> Topology {
        let env = |_: &str| None;
        topology::parse_one(source, "test.kdl", &LoadOptions::new(&env)).expect("valid topology")
    }

    fn with_binary() -> DesireOptions {
        DesireOptions {
            edge_binary: Some(crate::edge::EdgeBinary {
                path: "/nowhere/cul8er-proxy".into(),
                sha256: "ab".repeat(32),
            }),
            ..DesireOptions::default()
        }
    }

    #[test]
    fn a_single_tcp_replica_exposes_through_a_loopback_proxy_device() {
        let t = load(
            r#"topology t { network n subnet="10.9.0.1/24" nat=#false
               resource db { image "cul8er-busybox"; network n { expose 5432 public=15432 protocol=tcp; }; }; }"#,
        );
        let d = desire(&t, &DesireOptions::default()).unwrap();
        let db = &d.instances[0];
        assert_eq!(d.instances.len(), 1, "no edge for a single TCP replica");
        assert_eq!(db.name, "t-db-1");
        assert_eq!(db.devices["expose-15432"]["listen"], "tcp:127.0.0.1:15432");
        assert_eq!(db.devices["eth0"]["network"], "n");
        assert_eq!(db.config[KEY_TOPOLOGY], "t");
        assert_eq!(db.config[KEY_SPEC], db.spec);
        assert!(d.notes.is_empty());
    }

    #[test]
    fn an_expose_address_publishes_on_that_address_and_the_default_stays_loopback() {
        let t = load(
            r#"topology t { network n subnet="10.9.0.1/24" nat=#false
               resource db { image "cul8er-busybox"; network n { expose 5432 public=15432 address="0.0.0.0"; expose 6432 public=16432 address="::1"; expose 7432 public=17432; }; }
               resource web { image "cul8er-busybox"; replicas 2; network n { expose 8080 public=18080 protocol=http address="192.0.2.10"; }; }; }"#,
        );
        let d = desire(&t, &with_binary()).unwrap();
        let db = d.instances.iter().find(|i| i.name == "t-db-1").unwrap();
        assert_eq!(db.devices["expose-15432"]["listen"], "tcp:0.0.0.0:15432");
        assert_eq!(db.devices["expose-16432"]["listen"], "tcp:[::1]:16432");
        assert_eq!(db.devices["expose-17432"]["listen"], "tcp:127.0.0.1:17432");
        let edge = d.instances.iter().find(|i| i.name == "t-edge").unwrap();
        assert_eq!(
            edge.devices["publish-18080"]["listen"],
            "tcp:192.0.2.10:18080"
        );
    }

    #[test]
    fn http_resources_go_through_the_edge_one_replica_or_many() {
        let t = load(
            r#"topology t { network n subnet="10.9.0.1/24" nat=#false
               resource web { image "cul8er-busybox"; replicas 2; network n { expose 8080 public=18080 protocol=http; }; }
               resource api { image "cul8er-busybox"; network n { expose 8080 public=18081 protocol=http; }; }; }"#,
        );
        let d = desire(&t, &with_binary()).unwrap();
        assert_eq!(d.instances.len(), 4);
        assert!(
            d.instances
                .iter()
                .all(|i| !i.devices.keys().any(|k| k.starts_with("expose-")))
        );
        let edge = d.instances.iter().find(|i| i.name == "t-edge").unwrap();
        assert_eq!(
            edge.devices["publish-18080"]["listen"],
            "tcp:127.0.0.1:18080"
        );
        assert_eq!(edge.devices["publish-18081"]["proxy_protocol"], "true");
        assert_eq!(edge.devices["eth0"]["network"], "n");
        assert_eq!(edge.config[KEY_RELEASE], "abababababababab");
        let spec = edge.edge.as_deref().unwrap();
        assert_eq!(spec.services.len(), 2);
        let web = spec.services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.backends.len(), 2);
        assert_eq!(web.backends[1].instance, "t-web-2");
    }

    #[test]
    fn the_edge_spec_does_not_depend_on_where_the_binary_is() {
        let t = load(
            r#"topology t { network n subnet="10.9.0.1/24" nat=#false
               resource web { image "cul8er-busybox"; network n { expose 8080 public=18080 protocol=http; }; }; }"#,
        );
        let a = desire(&t, &with_binary()).unwrap();
        let mut moved = with_binary();
        if let Some(binary) = &mut moved.edge_binary {
            binary.path = "/elsewhere/cul8er-proxy".into();
        }
        let b = desire(&t, &moved).unwrap();
        let spec = |d: &Desired| {
            d.instances
                .iter()
                .find(|i| i.name == "t-edge")
                .unwrap()
                .spec
                .clone()
        };
        assert_eq!(spec(&a), spec(&b));
        let mut rebuilt = with_binary();
        if let Some(binary) = &mut rebuilt.edge_binary {
            binary.sha256 = "cd".repeat(32);
        }
        assert_ne!(spec(&a), spec(&desire(&t, &rebuilt).unwrap()));
    }

    #[test]
    fn a_limit_changes_the_spec_hash() {
        let a = load(r#"topology t { resource w { image "x"; limits { memory "64MiB"; }; }; }"#);
        let b = load(r#"topology t { resource w { image "x"; limits { memory "128MiB"; }; }; }"#);
        let da = desire(&a, &DesireOptions::default()).unwrap();
        let db = desire(&b, &DesireOptions::default()).unwrap();
        assert_ne!(da.instances[0].spec, db.instances[0].spec);
        assert_eq!(
            da.instances[0].spec,
            desire(&a, &DesireOptions::default()).unwrap().instances[0].spec
        );
    }

    #[test]
    fn later_capabilities_are_refused_by_name() {
        let t = load(r#"topology t { security { nesting #false; }; resource w { image "x"; }; }"#);
        let err = desire(&t, &DesireOptions::default()).unwrap_err();
        assert!(err.to_string().contains("`security` block"), "{err}");
    }
}
