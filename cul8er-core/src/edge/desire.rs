//! Which exposed ports go through the edge, and the edge instance each host gets.
//!
//! Every exposed HTTP/HTTPS port goes through the edge, one replica or many; a TCP
//! port does when its resource has more than one replica (a single TCP replica keeps
//! its Incus proxy device). HTTPS is passed through in TCP mode to the app, which
//! terminates TLS itself until cul8er has certificates of its own.

use std::collections::{BTreeMap, BTreeSet};

use crate::desired::{
    DesireError, DesireOptions, DesiredInstance, KEY_IMAGE, KEY_RELEASE, KEY_REPLICA, KEY_RESOURCE,
    KEY_SPEC, KEY_TOPOLOGY, incus_network_name, map, spec_hash,
};
use crate::topology::{
    Expose, ImageRef, InstanceKind, Probe, Protocol, Release, Resource, Topology,
};

use super::spec::{
    DesiredEdge, EDGE_RESOURCE, EdgeBackend, EdgeBinary, EdgeListener, EdgeService,
    edge_instance_name, locate_binary,
};
use super::{ADMIN_SOCKET, BINARY_PATH, CONFIG_PATH};

/// Whether an exposed port is served through the edge.
#[must_use]
pub fn through_edge(expose: &Expose, replicas: u32) -> bool {
    expose.protocol != Protocol::Tcp || replicas > 1
}

/// What the edges of a topology serve, gathered resource by resource.
#[derive(Debug, Default)]
pub(crate) struct EdgeCollector {
    hosts: BTreeMap<String, HostEdge>,
}

#[derive(Debug, Default)]
struct HostEdge {
    networks: BTreeSet<String>,
    listeners: BTreeMap<u16, EdgeListener>,
    /// The host address each public port is published on (`None`: the default).
    addresses: BTreeMap<u16, Option<std::net::IpAddr>>,
    services: Vec<EdgeService>,
}

impl EdgeCollector {
    /// Adds the ports of `resource` that go through the edge.
    pub(crate) fn add_resource(&mut self, topology: &Topology, resource: &Resource) {
        let routed: Vec<(usize, &str, &Expose)> = resource
            .networks
            .iter()
            .enumerate()
            .flat_map(|(index, attachment)| {
                attachment
                    .expose
                    .iter()
                    .filter(|e| through_edge(e, resource.replicas))
                    .map(move |e| (index, attachment.network.as_str(), e))
            })
            .collect();
        if routed.is_empty() {
            return;
        }
        let host = self.hosts.entry(resource.host.clone()).or_default();
        let several = routed.len() > 1;
        for (index, network, expose) in routed {
            let name = if several {
                format!("{}-{}", resource.name, expose.port)
            } else {
                resource.name.clone()
            };
            host.networks.insert(incus_network_name(topology, network));
            let check = resource
                .strategy
                .health
                .as_ref()
                .and_then(|h| match &h.probe {
                    Probe::Http { path, port, status }
                        if port.is_none_or(|p| p == expose.port)
                            && expose.protocol == Protocol::Http =>
                    {
                        Some((path.clone(), *status))
                    }
                    _ => None,
                });
            host.services.push(EdgeService {
                name: name.clone(),
                resource: resource.name.clone(),
                port: expose.port,
                nic: format!("eth{index}"),
                backends: (1..=resource.replicas)
                    .map(|replica| EdgeBackend {
                        instance: crate::topology::names::instance_name(
                            &topology.name,
                            &resource.name,
                            replica,
                        ),
                        weight: 1,
                    })
                    .collect(),
                check_status: check.as_ref().map_or(200, |c| c.1),
                check_path: check.map(|c| c.0),
            });
            let listener = host
                .listeners
                .entry(expose.public)
                .or_insert_with(|| EdgeListener {
                    public: expose.public,
                    http: expose.protocol == Protocol::Http,
                    routes: Vec::new(),
                });
            listener.routes.push((expose.hostname.clone(), name));
            // Resources sharing a port share its address (the topology check).
            host.addresses
                .entry(expose.public)
                .or_insert(expose.address);
        }
    }

    /// The edge instance of every host that needs one.
    ///
    /// # Errors
    /// [`DesireError::EdgeBinary`] when an edge is needed and no binary is configured
    /// or found.
    pub(crate) fn instances(
        self,
        topology: &Topology,
        options: &DesireOptions,
        notes: &mut Vec<String>,
    ) -> Result<Vec<DesiredInstance>, DesireError> {
        if self.hosts.is_empty() {
            return Ok(Vec::new());
        }
        let binary = match &options.edge_binary {
            Some(binary) => binary.clone(),
            None => locate_binary(None)
                .map_err(|e| DesireError::EdgeBinary(crate::execute::error_chain(&e)))?,
        };
        let mut instances = Vec::new();
        for (host, edge) in self.hosts {
            for listener in edge.listeners.values() {
                if !listener.http && listener.routes.len() > 1 {
                    notes.push(format!(
                        "port {}: TCP and HTTPS ports are passed through to one resource; only {} gets it",
                        listener.public, listener.routes[0].1
                    ));
                }
            }
            instances.push(edge_instance(topology, options, &binary, host, edge)?);
        }
        Ok(instances)
    }
}

fn edge_instance(
    topology: &Topology,
    options: &DesireOptions,
    binary: &EdgeBinary,
    host: String,
    edge: HostEdge,
) -> Result<DesiredInstance, DesireError> {
    let name = edge_instance_name(&topology.name);
    let file_name = binary
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        })
        .ok_or_else(|| {
            DesireError::EdgeBinary(format!(
                "the cul8er-proxy binary {} needs a file name of letters, digits, `.`, `_`, `+` and `-`",
                binary.path.display()
            ))
        })?;
    let version = binary.version();
    let mut config = BTreeMap::new();
    config.insert(KEY_TOPOLOGY.to_owned(), topology.name.clone());
    config.insert(KEY_RESOURCE.to_owned(), EDGE_RESOURCE.to_owned());
    config.insert(KEY_IMAGE.to_owned(), options.edge_image.clone());
    config.insert(KEY_RELEASE.to_owned(), version.clone());
    config.insert(KEY_REPLICA.to_owned(), "1".to_owned());
    let mut devices = BTreeMap::new();
    for (index, network) in edge.networks.iter().enumerate() {
        let nic = format!("eth{index}");
        devices.insert(
            nic.clone(),
            map([("type", "nic"), ("network", network), ("name", &nic)]),
        );
    }
    for port in edge.listeners.keys() {
        devices.insert(
            format!("publish-{port}"),
            map([
                ("type", "proxy"),
                (
                    "listen",
                    &crate::desired::listen_on(
                        edge.addresses.get(port).copied().flatten(),
                        &options.expose_address,
                        *port,
                    ),
                ),
                ("connect", &format!("tcp:127.0.0.1:{port}")),
                ("proxy_protocol", "true"),
            ]),
        );
    }
    let admin_dir = ADMIN_SOCKET.rsplit_once('/').map_or("/", |(dir, _)| dir);
    let bin_dir = BINARY_PATH.rsplit_once('/').map_or("/", |(dir, _)| dir);
    let release = Release {
        name: "cul8er-proxy".to_owned(),
        version,
        artifact: None,
        start: format!("{BINARY_PATH} run --config {CONFIG_PATH} --admin-socket {ADMIN_SOCKET}"),
        workdir: None,
        // The app's own name: releases never run as root.
        user: None,
        before_start: vec![
            format!(
                "sh -c 'mkdir -p {bin_dir} && ln -sfn /opt/cul8er-proxy/current/{file_name} {BINARY_PATH}'"
            ),
            format!(
                "sh -c 'mkdir -p /etc/cul8er-proxy && {{ [ -s {CONFIG_PATH} ] || echo {{}} > {CONFIG_PATH}; }}'"
            ),
            format!(
                "sh -c 'mkdir -p {admin_dir} && chown cul8er-proxy {admin_dir} && chmod 0700 {admin_dir}'"
            ),
        ],
        after_start: Vec::new(),
    };
    let mut instance = DesiredInstance {
        host: host.clone(),
        name: name.clone(),
        resource: EDGE_RESOURCE.to_owned(),
        replica: 1,
        kind: InstanceKind::Container,
        image: ImageRef::Alias {
            remote: None,
            alias: options.edge_image.clone(),
        },
        profiles: vec!["default".to_owned()],
        target: None,
        config,
        devices,
        release: Some(release),
        spec: String::new(),
        edge: None,
        switch: None,
    };
    // The spec leaves out where the binary is on this machine: only its hash counts.
    instance.spec = spec_hash(&instance);
    instance
        .config
        .insert(KEY_SPEC.to_owned(), instance.spec.clone());
    if let Some(release) = &mut instance.release {
        release.artifact = Some(binary.path.to_string_lossy().into_owned());
    }
    instance.edge = Some(Box::new(DesiredEdge {
        host,
        instance: name,
        listeners: edge.listeners.into_values().collect(),
        services: edge.services,
        proxy_protocol: true,
    }));
    Ok(instance)
}
