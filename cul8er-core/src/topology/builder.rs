//! Building a topology in Rust code instead of a file.
//!
//! The builder assembles the same model the parser produces, and
//! [`TopologyBuilder::build`] runs the same cross-block rules (names, references, ports,
//! strategies), so a built topology is as valid as a parsed one.
//!
//! ```
//! use cul8er_core::topology::{
//!     Expose, Host, ImageRef, Network, Protocol, Resource, StrategyKind, Topology,
//! };
//!
//! let topology = Topology::builder("demo")
//!     .host(Host::local("local"))
//!     .network(Network::bridge("demo-net", Some("10.181.0.1/24"), false))
//!     .resource(
//!         Resource::new("web", ImageRef::alias("cul8er-busybox"))
//!             .replicas(3)
//!             .expose("demo-net", Expose::new(8080, 80, Protocol::Http))
//!             .strategy(StrategyKind::BlueGreen),
//!     )
//!     .build()?;
//! assert_eq!(topology.resources[0].host, "local");
//! assert_eq!(topology.resources[0].instance_names("demo").len(), 3);
//!
//! // The same rules as in files: a canary needs an exposed port.
//! let err = Topology::builder("demo")
//!     .resource(Resource::new("worker", ImageRef::alias("cul8er-busybox")).strategy(StrategyKind::Canary))
//!     .build()
//!     .unwrap_err();
//! assert!(err.problems()[0].message().contains("exposes no port"));
//! # Ok::<(), cul8er_core::topology::TopologyError>(())
//! ```

use std::collections::BTreeMap;

use super::check;
use super::decode::Spans;
use super::diagnostic::TopologyError;
use super::model::{
    AppCluster, BlueGreen, Canary, Certificates, Endpoint, EnvValue, EnvVar, Expose, Host,
    ImageRef, InstanceKind, Limits, Network, NetworkAttachment, NetworkKind, Protocol, Release,
    Resource, SecretStore, Security, Strategy, StrategyKind, Topology, Volume, VolumeMount, Zone,
};

/// Builds a [`Topology`] step by step; see the module example.
#[derive(Debug, Clone)]
pub struct TopologyBuilder {
    topology: Topology,
}

impl TopologyBuilder {
    /// An empty topology named `name`.
    #[must_use]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            topology: Topology {
                name: name.into(),
                variables: BTreeMap::new(),
                hosts: Vec::new(),
                networks: Vec::new(),
                volumes: Vec::new(),
                resources: Vec::new(),
                clusters: Vec::new(),
                security: None,
                secrets: None,
                certificates: None,
                zones: Vec::new(),
            },
        }
    }

    /// Records a variable's value.
    #[must_use]
    pub fn variable(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.topology.variables.insert(name.into(), value.into());
        self
    }

    /// Adds a host.
    #[must_use]
    pub fn host(mut self, host: Host) -> Self {
        self.topology.hosts.push(host);
        self
    }

    /// Adds a network.
    #[must_use]
    pub fn network(mut self, network: Network) -> Self {
        self.topology.networks.push(network);
        self
    }

    /// Adds a volume.
    #[must_use]
    pub fn volume(mut self, volume: Volume) -> Self {
        self.topology.volumes.push(volume);
        self
    }

    /// Adds a resource. One without a host runs on the only host.
    #[must_use]
    pub fn resource(mut self, resource: Resource) -> Self {
        self.topology.resources.push(resource);
        self
    }

    /// Adds an app cluster.
    #[must_use]
    pub fn cluster(mut self, cluster: AppCluster) -> Self {
        self.topology.clusters.push(cluster);
        self
    }

    /// Sets the security defaults.
    #[must_use]
    pub fn security(mut self, security: Security) -> Self {
        self.topology.security = Some(security);
        self
    }

    /// Sets the secret store.
    #[must_use]
    pub fn secrets(mut self, secrets: SecretStore) -> Self {
        self.topology.secrets = Some(secrets);
        self
    }

    /// Sets the certificates.
    #[must_use]
    pub fn certificates(mut self, certificates: Certificates) -> Self {
        self.topology.certificates = Some(certificates);
        self
    }

    /// Adds a zone.
    #[must_use]
    pub fn zone(mut self, zone: Zone) -> Self {
        self.topology.zones.push(zone);
        self
    }

    /// Checks the topology with the same rules as a file and returns it.
    ///
    /// Without hosts, the topology gets one local host named `local`, as a file does.
    ///
    /// # Errors
    ///
    /// A [`TopologyError`] with every problem; its problems have no source spans.
    pub fn build(mut self) -> Result<Topology, TopologyError> {
        if self.topology.hosts.is_empty() {
            self.topology.hosts.push(Host::local("local"));
        }
        if let [only] = self.topology.hosts.as_slice() {
            let name = only.name.clone();
            for resource in &mut self.topology.resources {
                if resource.host.is_empty() {
                    resource.host.clone_from(&name);
                }
            }
        }
        let problems = check::check(&self.topology, &Spans::default());
        if problems.is_empty() {
            Ok(self.topology)
        } else {
            Err(TopologyError::built(problems))
        }
    }
}

impl Host {
    /// The local daemon on its default socket.
    #[must_use]
    pub fn local(name: impl Into<String>) -> Self {
        Self::with_endpoint(name, Endpoint::Local)
    }

    /// A daemon on the unix socket at `path`.
    #[must_use]
    pub fn socket(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self::with_endpoint(name, Endpoint::Socket { path: path.into() })
    }

    /// A remote added with `cul8er remote add REMOTE`.
    #[must_use]
    pub fn remote(name: impl Into<String>, remote: impl Into<String>) -> Self {
        Self::with_endpoint(
            name,
            Endpoint::Remote {
                remote: remote.into(),
            },
        )
    }

    fn with_endpoint(name: impl Into<String>, endpoint: Endpoint) -> Self {
        Self {
            name: name.into(),
            endpoint,
            project: None,
            platform: None,
            cluster: None,
        }
    }

    /// Uses the Incus project `project`.
    #[must_use]
    pub fn project(mut self, project: impl Into<String>) -> Self {
        self.project = Some(project.into());
        self
    }
}

impl Network {
    /// A bridge the topology owns.
    #[must_use]
    pub fn bridge(name: impl Into<String>, subnet: Option<&str>, nat: bool) -> Self {
        Self {
            name: name.into(),
            host: None,
            kind: NetworkKind::Bridge {
                subnet: subnet.map(str::to_owned),
                nat,
            },
        }
    }

    /// An existing Incus network, attached to but never changed.
    #[must_use]
    pub fn existing(name: impl Into<String>, incus_name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            host: None,
            kind: NetworkKind::Existing {
                name: incus_name.into(),
            },
        }
    }
}

impl ImageRef {
    /// A local image alias.
    #[must_use]
    pub fn alias(alias: impl Into<String>) -> Self {
        Self::Alias {
            remote: None,
            alias: alias.into(),
        }
    }
}

impl Expose {
    /// Instance port `port` published as `public` on the host.
    #[must_use]
    pub fn new(port: u16, public: u16, protocol: Protocol) -> Self {
        Self {
            port,
            public,
            protocol,
            hostname: None,
            address: None,
        }
    }

    /// Publishes the port on the host address `address` instead of 127.0.0.1.
    #[must_use]
    pub fn address(mut self, address: std::net::IpAddr) -> Self {
        self.address = Some(address);
        self
    }

    /// Routes HTTP/HTTPS traffic by host name.
    #[must_use]
    pub fn hostname(mut self, hostname: impl Into<String>) -> Self {
        self.hostname = Some(hostname.into());
        self
    }
}

impl Resource {
    /// One container from `image`, rolling strategy, on the topology's only host.
    #[must_use]
    pub fn new(name: impl Into<String>, image: ImageRef) -> Self {
        Self {
            name: name.into(),
            kind: InstanceKind::Container,
            host: String::new(),
            image,
            replicas: 1,
            profiles: Vec::new(),
            placement: None,
            limits: Limits::default(),
            networks: Vec::new(),
            volumes: Vec::new(),
            environment: Vec::new(),
            release: None,
            config: BTreeMap::new(),
            devices: BTreeMap::new(),
            strategy: Strategy::default(),
            security: None,
            zone: None,
        }
    }

    /// Runs on host `host`.
    #[must_use]
    pub fn on(mut self, host: impl Into<String>) -> Self {
        self.host = host.into();
        self
    }

    /// A VM instead of a container.
    #[must_use]
    pub fn vm(mut self) -> Self {
        self.kind = InstanceKind::Vm;
        self
    }

    /// Runs `replicas` instances.
    #[must_use]
    pub fn replicas(mut self, replicas: u32) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the limits.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Attaches to `network` (once) and publishes `expose` from it.
    #[must_use]
    pub fn expose(mut self, network: &str, expose: Expose) -> Self {
        match self.networks.iter_mut().find(|a| a.network == network) {
            Some(attachment) => attachment.expose.push(expose),
            None => self.networks.push(NetworkAttachment {
                network: network.to_owned(),
                expose: vec![expose],
            }),
        }
        self
    }

    /// Attaches to `network` without publishing anything.
    #[must_use]
    pub fn attach(mut self, network: &str) -> Self {
        if !self.networks.iter().any(|a| a.network == network) {
            self.networks.push(NetworkAttachment {
                network: network.to_owned(),
                expose: Vec::new(),
            });
        }
        self
    }

    /// Mounts volume `volume` at `path`.
    #[must_use]
    pub fn mount(mut self, volume: impl Into<String>, path: impl Into<String>) -> Self {
        self.volumes.push(VolumeMount {
            volume: volume.into(),
            path: path.into(),
        });
        self
    }

    /// Sets an environment variable of the release.
    #[must_use]
    pub fn env(mut self, name: impl Into<String>, value: EnvValue) -> Self {
        self.environment.push(EnvVar {
            name: name.into(),
            value,
        });
        self
    }

    /// Deploys `release`.
    #[must_use]
    pub fn release(mut self, release: Release) -> Self {
        self.release = Some(release);
        self
    }

    /// Rolls out with `kind` and its defaults (canary steps 10, 25, 50, 100;
    /// automatic blue-green promotion).
    #[must_use]
    pub fn strategy(mut self, kind: StrategyKind) -> Self {
        self.strategy = Strategy {
            kind,
            canary: (kind == StrategyKind::Canary).then(Canary::default),
            blue_green: (kind == StrategyKind::BlueGreen).then(BlueGreen::default),
            ..Strategy::default()
        };
        self
    }

    /// Rolls out with a fully specified strategy.
    #[must_use]
    pub fn with_strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = strategy;
        self
    }
}

impl Release {
    /// Version `version` of app `name`, started with `start`.
    #[must_use]
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        start: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            artifact: None,
            start: start.into(),
            workdir: None,
            user: None,
            before_start: Vec::new(),
            after_start: Vec::new(),
        }
    }
}
