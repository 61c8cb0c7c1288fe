//! The validated topology: plain serde types that the planner, the edge and the
//! rollouts read.
//!
//! Field order is declaration order and maps are `BTreeMap`s, so the JSON of a model is
//! stable and a spec hash over it only changes when the spec does. Every value has
//! already been checked: a `Topology` from the parser or from [`TopologyBuilder`]
//! satisfies every rule in `docs/topology.md`.
//!
//! [`TopologyBuilder`]: super::TopologyBuilder

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::units::{ByteSize, Duration};

/// One deployment target: hosts, networks, volumes and the resources that run on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topology {
    /// The topology's name, e.g. `production`; it prefixes every instance name.
    pub name: String,
    /// Variables after lookup in the operator's environment, by name.
    pub variables: BTreeMap<String, String>,
    /// Where Incus runs. A file without `host` gets one local host named `local`.
    pub hosts: Vec<Host>,
    /// Networks the topology owns or attaches to.
    pub networks: Vec<Network>,
    /// Custom storage volumes; they outlive the instances that mount them.
    pub volumes: Vec<Volume>,
    /// What runs.
    pub resources: Vec<Resource>,
    /// App clusters formed from resources (a later capability).
    pub clusters: Vec<AppCluster>,
    /// Security defaults for every resource (a later capability).
    pub security: Option<Security>,
    /// The encrypted secret store (a later capability).
    pub secrets: Option<SecretStore>,
    /// The internal CA and the certificates it issues (a later capability).
    pub certificates: Option<Certificates>,
    /// Network zones and their ACL rules (a later capability).
    pub zones: Vec<Zone>,
}

/// Where an Incus daemon (or cluster) is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// The host's name inside the topology (`on=NAME` on resources).
    pub name: String,
    /// How to reach it.
    pub endpoint: Endpoint,
    /// The Incus project; `None` means Incus's `default` project.
    pub project: Option<String>,
    /// The platform, informational (`incusos`, `debian`).
    pub platform: Option<String>,
    /// Set when the host is an Incus cluster: its members and groups, for placement.
    pub cluster: Option<IncusCluster>,
}

/// How a host's Incus API is reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Endpoint {
    /// The local daemon's default unix socket.
    Local,
    /// A unix socket at a given path.
    Socket {
        /// The socket's path.
        path: String,
    },
    /// A remote added with `cul8er remote add NAME`: TLS with a pinned certificate.
    Remote {
        /// The remote's name.
        remote: String,
    },
}

/// The members and groups of an Incus cluster that placement may name.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IncusCluster {
    /// Cluster member names.
    pub members: Vec<String>,
    /// Cluster group names.
    pub groups: Vec<String>,
}

/// A network declared in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The name resources attach by; for an owned bridge, also its Incus name.
    pub name: String,
    /// The host it lives on; `None` means every host a resource on it runs on.
    pub host: Option<String>,
    /// Owned bridge or existing network.
    pub kind: NetworkKind,
}

/// Whether the topology owns a network or attaches to one that exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum NetworkKind {
    /// A managed bridge that cul8er creates and deletes with the topology.
    Bridge {
        /// The bridge's IPv4 address and prefix, e.g. `10.181.0.1/24`; `None` lets
        /// Incus pick one.
        subnet: Option<String>,
        /// Whether outbound traffic is NATed.
        nat: bool,
    },
    /// A network that already exists in Incus; cul8er never changes it.
    Existing {
        /// Its Incus name.
        name: String,
    },
}

/// A custom storage volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The volume's name (also its Incus name).
    pub name: String,
    /// The host it lives on; `None` means the host of the resource that mounts it.
    pub host: Option<String>,
    /// The storage pool.
    pub pool: String,
    /// Its size quota, if any.
    pub size: Option<ByteSize>,
}

/// Container or virtual machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum InstanceKind {
    /// A system container.
    #[default]
    Container,
    /// A virtual machine.
    Vm,
}

impl InstanceKind {
    /// The Incus `type` value.
    #[must_use]
    pub fn as_incus(self) -> &'static str {
        match self {
            Self::Container => "container",
            Self::Vm => "virtual-machine",
        }
    }
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ImageRef {
    /// An alias, on the host itself or on an image remote (`images:alpine/3.19`).
    Alias {
        /// The image remote, e.g. `images`; `None` for the host's own images.
        remote: Option<String>,
        /// The alias.
        alias: String,
    },
    /// A local image by fingerprint (12 to 64 hex digits, a prefix is allowed).
    Fingerprint {
        /// The fingerprint or its prefix, lower case.
        fingerprint: String,
    },
}

impl ImageRef {
    /// Reads `alias`, `remote:alias` or a fingerprint; `None` when the text is none.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let valid_part = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./+".contains(c))
        };
        if let Some((remote, alias)) = text.split_once(':') {
            return (valid_part(remote) && valid_part(alias)).then(|| Self::Alias {
                remote: Some(remote.to_owned()),
                alias: alias.to_owned(),
            });
        }
        if (12..=64).contains(&text.len()) && text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Some(Self::Fingerprint {
                fingerprint: text.to_ascii_lowercase(),
            });
        }
        valid_part(text).then(|| Self::Alias {
            remote: None,
            alias: text.to_owned(),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alias {
                remote: Some(remote),
                alias,
            } => write!(f, "{remote}:{alias}"),
            Self::Alias {
                remote: None,
                alias,
            } => f.write_str(alias),
            Self::Fingerprint { fingerprint } => f.write_str(fingerprint),
        }
    }
}

/// A deployable unit: one or more identical instances.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resource {
    /// The resource's name; instance names derive from it.
    pub name: String,
    /// Container or VM.
    pub kind: InstanceKind,
    /// The host it runs on.
    pub host: String,
    /// The image its instances start from.
    pub image: ImageRef,
    /// How many instances.
    pub replicas: u32,
    /// Incus profiles applied in order; empty means Incus's `default`.
    pub profiles: Vec<String>,
    /// Placement on an Incus cluster's members.
    pub placement: Option<Placement>,
    /// Resource limits.
    pub limits: Limits,
    /// Networks the instances attach to, in NIC order.
    pub networks: Vec<NetworkAttachment>,
    /// Volumes mounted into every instance.
    pub volumes: Vec<VolumeMount>,
    /// Environment of the release.
    pub environment: Vec<EnvVar>,
    /// The app to run.
    pub release: Option<Release>,
    /// Raw Incus config keys, the escape hatch.
    pub config: BTreeMap<String, String>,
    /// Raw Incus devices by name, the escape hatch.
    pub devices: BTreeMap<String, BTreeMap<String, String>>,
    /// How changes roll out.
    pub strategy: Strategy,
    /// Per-resource security settings (a later capability).
    pub security: Option<Security>,
    /// The zone the instances belong to (a later capability).
    pub zone: Option<String>,
}

/// Where on an Incus cluster the instances go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Placement {
    /// All on one member.
    Member {
        /// The member's name.
        name: String,
    },
    /// On members of a cluster group.
    Group {
        /// The group's name.
        name: String,
    },
    /// Spread over all members, one replica per member in turn.
    Spread,
}

/// CPU, memory, disk and process limits.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Limits {
    /// CPU limit.
    pub cpu: Option<CpuLimit>,
    /// Memory limit (`limits.memory`).
    pub memory: Option<ByteSize>,
    /// Root disk size. Incus does not enforce it on a `dir` pool without project
    /// quotas: see [`Resource::unenforced_limits`].
    pub disk: Option<ByteSize>,
    /// Maximum number of processes (`limits.processes`; containers only).
    pub processes: Option<u32>,
}

/// A CPU limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CpuLimit {
    /// A number of cores (`limits.cpu`).
    Cores {
        /// How many.
        cores: u32,
    },
    /// A share of CPU time (`limits.cpu.allowance`), in percent.
    Allowance {
        /// Percent of one CPU's time, 1 to 100.
        percent: u32,
    },
}

/// A NIC on a declared network, with the ports published from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAttachment {
    /// The network's name in the topology.
    pub network: String,
    /// Ports published on the host.
    pub expose: Vec<Expose>,
}

/// An instance port published as a public port on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expose {
    /// The port the app listens on inside the instance.
    pub port: u16,
    /// The port on the host.
    pub public: u16,
    /// How traffic is handled.
    pub protocol: Protocol,
    /// The host name HTTP/HTTPS traffic is routed by; lets several resources share a
    /// public port.
    pub hostname: Option<String>,
    /// The host address the public port listens on (`address="0.0.0.0"`); `None`
    /// publishes it on the deployment's default, 127.0.0.1 (loopback only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<std::net::IpAddr>,
}

/// The protocol of an exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// Plain TCP.
    Tcp,
    /// HTTP, routed by host name.
    Http,
    /// HTTPS terminated at the edge, routed by SNI host name.
    Https,
}

impl Protocol {
    /// Whether two resources can share a public port when their host names differ.
    #[must_use]
    pub fn routes_by_hostname(self) -> bool {
        matches!(self, Self::Http | Self::Https)
    }

    /// The keyword used in topology files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A volume mounted into the instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The volume's name in the topology.
    pub volume: String,
    /// Where it is mounted.
    pub path: String,
}

/// One environment variable of the release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    /// The variable's name.
    pub name: String,
    /// Its value or where the secret comes from.
    pub value: EnvValue,
}

/// Where an environment variable's value comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EnvValue {
    /// A plain value, visible in plans.
    Value {
        /// The value.
        value: String,
    },
    /// A secret read from the operator's environment at apply time; never stored.
    SecretFromEnv {
        /// The operator's environment variable.
        var: String,
    },
    /// A secret from the encrypted store (a later capability).
    SecretFromStore {
        /// The secret's name in the store.
        secret: String,
    },
}

/// The app to deploy into each instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The app's name (`/opt/<name>/releases/<version>`).
    pub name: String,
    /// The version; a change is a rollout.
    pub version: String,
    /// A file or directory on the operator's machine uploaded as the release.
    pub artifact: Option<String>,
    /// The command that starts the app.
    pub start: String,
    /// The working directory.
    pub workdir: Option<String>,
    /// The user it runs as.
    pub user: Option<String>,
    /// Commands run before the app starts.
    pub before_start: Vec<String>,
    /// Commands run after the app started.
    pub after_start: Vec<String>,
}

/// How changes to a resource roll out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    /// Which strategy.
    pub kind: StrategyKind,
    /// Instances changed at once (rolling).
    pub max_parallel: u32,
    /// The health gate each changed instance must pass.
    pub health: Option<HealthCheck>,
    /// What happens on a failed gate.
    pub rollback: Rollback,
    /// Canary steps and analysis (canary only).
    pub canary: Option<Canary>,
    /// Promotion settings (blue-green only).
    pub blue_green: Option<BlueGreen>,
}

impl Default for Strategy {
    fn default() -> Self {
        Self {
            kind: StrategyKind::Rolling,
            max_parallel: 1,
            health: None,
            rollback: Rollback::default(),
            canary: None,
            blue_green: None,
        }
    }
}

/// The rollout strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    /// Stop, replace, start, check.
    Recreate,
    /// A batch of `max_parallel` instances at a time.
    Rolling,
    /// A parallel set, then one atomic traffic switch.
    BlueGreen,
    /// Weighted steps with analysis.
    Canary,
}

impl StrategyKind {
    /// The keyword used in topology files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recreate => "recreate",
            Self::Rolling => "rolling",
            Self::BlueGreen => "blue-green",
            Self::Canary => "canary",
        }
    }

    /// Whether the strategy moves traffic through the edge (needs an exposed port).
    #[must_use]
    pub fn switches_traffic(self) -> bool {
        matches!(self, Self::BlueGreen | Self::Canary)
    }
}

/// A health check and its timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// What is probed.
    pub probe: Probe,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive failures before the instance counts as unhealthy.
    pub retries: u32,
    /// Grace time after start during which failures do not count.
    pub start_period: Duration,
    /// How long an instance must stay healthy before the rollout moves on.
    pub min_healthy_time: Duration,
    /// The longest an instance may take to become healthy.
    pub deadline: Duration,
    /// HTTP checks only: text the response body must contain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
}

impl HealthCheck {
    /// A check with the documented default timing.
    #[must_use]
    pub fn new(probe: Probe) -> Self {
        Self {
            probe,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            retries: 3,
            start_period: Duration::from_secs(0),
            min_healthy_time: Duration::from_secs(10),
            deadline: Duration::from_secs(300),
            body: None,
        }
    }
}

/// What a health check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Probe {
    /// An HTTP GET inside the instance.
    Http {
        /// The request path.
        path: String,
        /// The port; `None` means the first exposed port.
        port: Option<u16>,
        /// The expected status code.
        status: u16,
    },
    /// A TCP connect.
    Tcp {
        /// The port.
        port: u16,
    },
    /// A command run inside the instance; exit code 0 is healthy.
    Command {
        /// Program and arguments.
        argv: Vec<String>,
    },
}

/// What happens when a gate fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollback {
    /// Roll back by itself or stop and wait for the operator.
    pub mode: RollbackMode,
    /// Take a snapshot before an in-place update.
    pub snapshot: bool,
    /// How many snapshots to keep per instance.
    pub keep: u32,
}

impl Default for Rollback {
    fn default() -> Self {
        Self {
            mode: RollbackMode::Automatic,
            snapshot: true,
            keep: 3,
        }
    }
}

/// Automatic or manual rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RollbackMode {
    /// Put the old version back at once.
    Automatic,
    /// Stop and say how to continue.
    Manual,
}

/// Canary steps and analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Canary {
    /// Traffic weights in rising order; the last is 100.
    pub steps: Vec<CanaryStep>,
    /// Thresholds that abort the canary.
    pub analysis: Option<Analysis>,
}

impl Default for Canary {
    fn default() -> Self {
        Self {
            steps: [10, 25, 50, 100]
                .into_iter()
                .map(|weight| CanaryStep {
                    weight,
                    pause: None,
                })
                .collect(),
            analysis: None,
        }
    }
}

/// One canary step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    /// Percent of traffic to the canary, 1 to 100.
    pub weight: u32,
    /// How long to stay at this weight before the next step.
    pub pause: Option<Pause>,
}

/// A pause between canary steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Pause {
    /// A fixed time.
    For {
        /// How long.
        duration: Duration,
    },
    /// Until `cul8er promote` or `resume`.
    UntilPromoted,
}

/// Thresholds comparing the canary with stable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Highest tolerated error rate (5xx and failed connections), in percent.
    pub max_error_rate: Option<f64>,
    /// Highest tolerated p99 latency.
    pub max_p99_latency: Option<Duration>,
    /// Least requests a step must see before it is judged.
    pub min_requests: u32,
}

/// Blue-green settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlueGreen {
    /// Who switches traffic.
    pub promotion: Promotion,
    /// How long the old set is kept after the switch, for an instant rollback.
    pub scale_down_delay: Duration,
}

impl Default for BlueGreen {
    fn default() -> Self {
        Self {
            promotion: Promotion::Automatic,
            scale_down_delay: Duration::from_secs(300),
        }
    }
}

/// Automatic or manual promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Promotion {
    /// Switch when the new set passes its gates.
    Automatic,
    /// Wait for `cul8er promote`.
    Manual,
}

/// An app cluster formed from resources (Erlang-style distribution).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCluster {
    /// The cluster's name.
    pub name: String,
    /// The resources whose instances are its nodes.
    pub nodes: Vec<String>,
    /// How nodes find each other.
    pub discovery: Discovery,
    /// The secret holding the shared cookie.
    pub cookie_secret: Option<String>,
}

/// How app-cluster nodes find each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Discovery {
    /// A static host list handed to epmd.
    Epmd,
    /// DNS names of the instances.
    Dns,
    /// A gossip protocol.
    Gossip,
}

/// Security settings, as topology defaults or per resource.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Security {
    /// The uid the release runs as.
    pub uid: Option<u32>,
    /// The gid the release runs as.
    pub gid: Option<u32>,
    /// Unprivileged container (`security.privileged=false`).
    pub unprivileged: Option<bool>,
    /// A uid/gid map of its own (`security.idmap.isolated`).
    pub isolated_idmap: Option<bool>,
    /// Root filesystem mounted read-only where Incus allows it.
    pub read_only_root: Option<bool>,
    /// Capabilities dropped from the container.
    pub drop_capabilities: Vec<String>,
    /// System calls denied (`security.syscalls.deny`).
    pub deny_syscalls: Vec<String>,
    /// Nested containers allowed (`security.nesting`).
    pub nesting: Option<bool>,
}

/// The encrypted secret store and the secrets it must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretStore {
    /// The backend.
    pub backend: SecretBackend,
    /// Where the store lives; `None` means inside the state directory.
    pub path: Option<String>,
    /// The declared secrets.
    pub secrets: Vec<String>,
}

/// Secret store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretBackend {
    /// A file sealed with XChaCha20-Poly1305 on the operator's machine.
    Local,
}

/// The internal CA and the certificates it issues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificates {
    /// The certificate authority.
    pub authority: CertificateAuthority,
    /// Certificates to issue.
    pub certificates: Vec<Certificate>,
}

/// Certificate authorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertificateAuthority {
    /// A CA kept by cul8er.
    Internal,
}

/// A certificate to issue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// The certificate's name.
    pub name: String,
    /// DNS names it covers.
    pub dns_names: Vec<String>,
}

/// A network zone: networks and the rules between resources on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zone {
    /// The zone's name.
    pub name: String,
    /// Networks in the zone.
    pub networks: Vec<String>,
    /// ACL rules, in order.
    pub rules: Vec<AclRule>,
}

/// One ACL rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    /// Allow or deny.
    pub action: AclAction,
    /// The source resource, or `None` for any.
    pub from: Option<String>,
    /// The destination resource, or `None` for any.
    pub to: Option<String>,
    /// Destination ports; empty means all.
    pub ports: Vec<u16>,
    /// The transport protocol.
    pub protocol: AclProtocol,
}

/// ACL actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclAction {
    /// Let the traffic through.
    Allow,
    /// Drop it.
    Deny,
}

/// ACL transport protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AclProtocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A block whose capability arrives after the first release: parsed and validated now,
/// refused by plan and apply until it lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LaterCapability {
    /// `secrets` and `secret ... from=store`.
    SecretStore,
    /// `certificates`.
    Certificates,
    /// `zone` blocks and `zone` on resources.
    Zones,
    /// `cluster` (app clusters).
    AppClusters,
    /// `security` blocks.
    Security,
}

impl LaterCapability {
    /// The block that uses the capability, as written in topology files.
    #[must_use]
    pub fn block(self) -> &'static str {
        match self {
            Self::SecretStore => "secrets",
            Self::Certificates => "certificates",
            Self::Zones => "zone",
            Self::AppClusters => "cluster",
            Self::Security => "security",
        }
    }
}

impl fmt::Display for LaterCapability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self {
            Self::SecretStore => "the encrypted secret store",
            Self::Certificates => "certificates from the internal CA",
            Self::Zones => "network zones",
            Self::AppClusters => "app clusters",
            Self::Security => "hardening",
        };
        write!(f, "{what} (`{}` block)", self.block())
    }
}
