//! Raw nodes → the typed model: every node, property and value is checked against the
//! format, and every problem is collected with its span.
//!
//! Cross-references (hosts, networks, ports, secrets) are checked afterwards by
//! `check`, on the model, so that topologies built in code get the same rules.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;

use miette::SourceSpan;

use super::diagnostic::{Problem, ProblemKind, suggestion};
use super::model::{
    AclAction, AclProtocol, AclRule, Analysis, AppCluster, BlueGreen, Canary, CanaryStep,
    Certificate, CertificateAuthority, Certificates, CpuLimit, Discovery, Endpoint, EnvValue,
    EnvVar, Expose, HealthCheck, Host, ImageRef, IncusCluster, InstanceKind, Limits, Network,
    NetworkAttachment, NetworkKind, Pause, Placement, Probe, Promotion, Protocol, Release,
    Resource, Rollback, RollbackMode, SecretBackend, SecretStore, Security, Strategy, StrategyKind,
    Topology, Volume, VolumeMount, Zone,
};
use super::raw::{RawEntry, RawNode, RawValue};
use super::units::{ByteSize, Duration, UnitError};

/// Where things were written, by a key such as `r3.on` (resource 3's `on=` property),
/// so that the checks on the model can point back into the file.
///
/// Recording costs a string per key, and the spans are only read when a check finds a
/// problem, so a file is first read without them and read again, recording, only when
/// it has problems.
#[derive(Debug, Default)]
pub(crate) struct Spans {
    map: HashMap<String, SourceSpan>,
    record: bool,
    from_file: bool,
}

impl Spans {
    /// Spans of a file, recorded or not.
    pub(crate) fn for_file(record: bool) -> Self {
        Self {
            map: HashMap::new(),
            record,
            from_file: true,
        }
    }

    pub(crate) fn set(&mut self, key: impl FnOnce() -> String, span: SourceSpan) {
        if self.record {
            self.map.insert(key(), span);
        }
    }

    pub(crate) fn get(&self, key: &str) -> Option<SourceSpan> {
        self.map.get(key).copied()
    }

    /// True for a topology built in code.
    pub(crate) fn is_built(&self) -> bool {
        !self.from_file
    }
}

/// Looks a variable up in the operator's environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub(crate) struct Decoder<'a> {
    pub(crate) problems: Vec<Problem>,
    pub(crate) spans: Spans,
    env: EnvLookup<'a>,
    vars: BTreeMap<String, String>,
    /// Variables already reported as unset; uses of them add no second problem.
    unset_vars: Vec<String>,
    /// Whether the topology declared a host (even an invalid one).
    saw_host: bool,
    /// Uses of variables not declared yet, with the index of their problem: a later
    /// declaration turns its help into "declare it before use".
    undeclared_uses: Vec<(String, usize)>,
    /// Resources without `on=`, resolved when the topology is complete.
    hostless: Vec<usize>,
    /// The single blocks of the topology already seen (`security`, `secrets`, ...).
    topology_blocks: HashMap<String, SourceSpan>,
}

const TOPOLOGY_CHILDREN: &[&str] = &[
    "variable",
    "host",
    "network",
    "volume",
    "resource",
    "cluster",
    "security",
    "secrets",
    "certificates",
    "zone",
];
const RESOURCE_CHILDREN: &[&str] = &[
    "image",
    "replicas",
    "profiles",
    "placement",
    "limits",
    "network",
    "volume",
    "environment",
    "release",
    "config",
    "device",
    "strategy",
    "security",
    "zone",
];
const SECURITY_CHILDREN: &[&str] = &[
    "uid",
    "gid",
    "unprivileged",
    "isolated-idmap",
    "read-only-root",
    "drop-capabilities",
    "deny-syscalls",
    "nesting",
];
const HEALTH_TIMING: &[&str] = &[
    "interval",
    "timeout",
    "retries",
    "start-period",
    "min-healthy-time",
    "deadline",
];

impl<'a> Decoder<'a> {
    pub(crate) fn new(env: EnvLookup<'a>, record_spans: bool) -> Self {
        Self {
            problems: Vec::new(),
            spans: Spans::for_file(record_spans),
            env,
            vars: BTreeMap::new(),
            unset_vars: Vec::new(),
            saw_host: false,
            undeclared_uses: Vec::new(),
            hostless: Vec::new(),
            topology_blocks: HashMap::new(),
        }
    }

    fn push(&mut self, problem: Problem) {
        self.problems.push(problem);
    }

    // ---- generic helpers -------------------------------------------------------------

    /// Reports properties `node` does not take and properties given twice.
    fn props(&mut self, node: &RawNode, known: &[&str]) {
        let mut seen: HashMap<&str, SourceSpan> = HashMap::new();
        for entry in &node.entries {
            let Some(key) = entry.key.as_deref() else {
                continue;
            };
            if !known.contains(&key) {
                self.push(
                    Problem::new(
                        ProblemKind::UnknownProperty,
                        format!("`{}` has no property `{key}`", node.name),
                    )
                    .at(Some(entry.span), "unknown property")
                    .help(suggestion(key, known, "properties")),
                );
            } else if let Some(first) = seen.insert(key, entry.span) {
                self.push(
                    Problem::new(
                        ProblemKind::Duplicate,
                        format!("property `{key}` is given twice"),
                    )
                    .at(Some(entry.span), "given again here")
                    .also(Some(first), "first given here")
                    .help("keep one of them"),
                );
            }
        }
    }

    /// The positional arguments, checking there are between `min` and `max`.
    fn args<'n>(
        &mut self,
        node: &'n RawNode,
        min: usize,
        max: usize,
        what: &str,
    ) -> Vec<&'n RawEntry> {
        let args: Vec<&RawEntry> = node.entries.iter().filter(|e| e.key.is_none()).collect();
        if args.len() < min {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    format!("`{}` needs {what}", node.name),
                )
                .at(Some(node.name_span), format!("{what} missing")),
            );
        } else if args.len() > max {
            let extra = args[max];
            let expected = if max == 0 {
                "no arguments".to_owned()
            } else {
                what.to_owned()
            };
            self.push(
                Problem::new(
                    ProblemKind::InvalidValue,
                    format!("`{}` takes {expected}", node.name),
                )
                .at(Some(extra.span), "unexpected argument"),
            );
        }
        args
    }

    fn prop<'n>(node: &'n RawNode, key: &str) -> Option<&'n RawEntry> {
        node.entries
            .iter()
            .rev()
            .find(|entry| entry.key.as_deref() == Some(key))
    }

    /// The children of `node` the format knows; the others are reported.
    fn children<'n>(
        &mut self,
        node: &'n RawNode,
        known: &[&str],
        props: &[&str],
    ) -> Vec<&'n RawNode> {
        let mut out = Vec::with_capacity(node.children.len());
        for child in &node.children {
            if known.contains(&child.name.as_str()) {
                out.push(child);
                continue;
            }
            let help = if props.contains(&child.name.as_str()) {
                format!(
                    "`{}` is a property of `{}`: write `{}=...` on the `{}` line",
                    child.name, node.name, child.name, node.name
                )
            } else {
                suggestion(&child.name, known, "child nodes")
            };
            self.push(
                Problem::new(
                    ProblemKind::UnknownNode,
                    format!("unknown node `{}` in `{}`", child.name, node.name),
                )
                .at(Some(child.name_span), "not known here")
                .help(help),
            );
        }
        out
    }

    /// Reports a block child given more than once where only one is allowed.
    fn once(&mut self, seen: &mut HashMap<String, SourceSpan>, node: &RawNode) -> bool {
        if let Some(first) = seen.insert(node.name.clone(), node.name_span) {
            self.push(
                Problem::new(
                    ProblemKind::Duplicate,
                    format!("`{}` is given twice", node.name),
                )
                .at(Some(node.name_span), "given again here")
                .also(Some(first), "first given here")
                .help("keep one of them"),
            );
            return false;
        }
        true
    }

    fn no_children(&mut self, node: &RawNode) {
        if let Some(child) = node.children.first() {
            self.push(
                Problem::new(
                    ProblemKind::UnknownNode,
                    format!("`{}` takes no child nodes", node.name),
                )
                .at(Some(child.name_span), "unexpected child"),
            );
        }
    }

    fn wrong_type(&mut self, entry: &RawEntry, expected: &str) {
        self.push(
            Problem::new(
                ProblemKind::InvalidValue,
                format!("expected {expected}, found {}", entry.value.type_name()),
            )
            .at(Some(entry.span), format!("expected {expected}")),
        );
    }

    /// A string value with `${variable}` references replaced.
    fn string(&mut self, entry: &RawEntry) -> Option<String> {
        match &entry.value {
            RawValue::String(text) => self.interpolate(text, entry.span),
            _ => {
                self.wrong_type(entry, "a string");
                None
            }
        }
    }

    fn interpolate(&mut self, text: &str, span: SourceSpan) -> Option<String> {
        if !text.contains('$') {
            return Some(text.to_owned());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        let mut ok = true;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(after_dollar) = after.strip_prefix('$') {
                out.push('$');
                rest = after_dollar;
            } else if let Some(inner) = after.strip_prefix('{') {
                let Some(close) = inner.find('}') else {
                    self.push(
                        Problem::new(ProblemKind::InvalidValue, "unclosed `${` in a string")
                            .at(Some(span), "here")
                            .help("write `${name}`, or `$$` for a literal `$`"),
                    );
                    return None;
                };
                let name = &inner[..close];
                if let Some(value) = self.vars.get(name) {
                    out.push_str(value);
                } else if self.unset_vars.iter().any(|unset| unset == name) {
                    ok = false;
                } else {
                    let names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
                    self.push(
                        Problem::new(
                            ProblemKind::UndefinedReference,
                            format!("variable `{name}` is not declared"),
                        )
                        .at(Some(span), "used here")
                        .help(
                            match suggestion(name, &names, "variables") {
                                s if s.starts_with("did you") => s,
                                _ => format!("declare it: `variable {name} env=\"...\"`"),
                            },
                        ),
                    );
                    self.undeclared_uses
                        .push((name.to_owned(), self.problems.len() - 1));
                    ok = false;
                }
                rest = &inner[close + 1..];
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
        ok.then_some(out)
    }

    fn int(&mut self, entry: &RawEntry, range: RangeInclusive<i128>) -> Option<i128> {
        match entry.value {
            RawValue::Integer(value) if range.contains(&value) => Some(value),
            RawValue::Integer(value) => {
                self.push(
                    Problem::new(
                        ProblemKind::InvalidValue,
                        format!(
                            "{value} is out of range: expected {} to {}",
                            range.start(),
                            range.end()
                        ),
                    )
                    .at(Some(entry.span), "out of range"),
                );
                None
            }
            _ => {
                self.wrong_type(entry, "an integer");
                None
            }
        }
    }

    fn u32(&mut self, entry: &RawEntry, range: RangeInclusive<u32>) -> Option<u32> {
        let (start, end) = (i128::from(*range.start()), i128::from(*range.end()));
        self.int(entry, start..=end)
            .and_then(|value| u32::try_from(value).ok())
    }

    fn port(&mut self, entry: &RawEntry) -> Option<u16> {
        self.int(entry, 1..=65_535)
            .and_then(|value| u16::try_from(value).ok())
    }

    fn boolean(&mut self, entry: &RawEntry) -> Option<bool> {
        if let RawValue::Bool(value) = entry.value {
            Some(value)
        } else {
            self.wrong_type(entry, "#true or #false");
            None
        }
    }

    fn duration(&mut self, entry: &RawEntry) -> Option<Duration> {
        let text = self.string(entry)?;
        match text.parse::<Duration>() {
            Ok(duration) => Some(duration),
            Err(err) => {
                self.unit_problem(entry, &err, "duration", Duration::UNITS, None);
                None
            }
        }
    }

    fn size(&mut self, entry: &RawEntry) -> Option<ByteSize> {
        let text = self.string(entry)?;
        match text.parse::<ByteSize>() {
            Ok(size) => Some(size),
            Err(err) => {
                let hint = match &err {
                    UnitError::UnknownUnit { unit } => ByteSize::suggest_unit(unit),
                    _ => None,
                };
                self.unit_problem(entry, &err, "size", ByteSize::UNITS, hint);
                None
            }
        }
    }

    fn unit_problem(
        &mut self,
        entry: &RawEntry,
        err: &UnitError,
        what: &str,
        units: &str,
        hint: Option<&str>,
    ) {
        let help = match hint {
            Some(unit) => format!("did you mean `{unit}`? Units: {units}"),
            None => {
                format!("write a number and a unit, e.g. \"30s\" or \"512MiB\"; units: {units}")
            }
        };
        self.push(
            Problem::new(ProblemKind::BadUnit, format!("invalid {what}: {err}"))
                .at(Some(entry.span), format!("not a {what}"))
                .help(help),
        );
    }

    /// A string that must be one of `options`.
    fn keyword<'o>(&mut self, entry: &RawEntry, options: &[&'o str]) -> Option<&'o str> {
        let text = self.string(entry)?;
        if let Some(found) = options.iter().find(|option| **option == text) {
            return Some(found);
        }
        self.push(
            Problem::new(
                ProblemKind::InvalidValue,
                format!("`{text}` is not one of: {}", options.join(", ")),
            )
            .at(Some(entry.span), "unknown value")
            .help(suggestion(&text, options, "values")),
        );
        None
    }

    fn name_arg(&mut self, node: &RawNode, what: &str) -> Option<(String, SourceSpan)> {
        let args = self.args(node, 1, 1, what);
        let entry = args.first()?;
        let name = self.string(entry)?;
        Some((name, entry.span))
    }

    fn prop_string(&mut self, node: &RawNode, key: &str) -> Option<String> {
        Self::prop(node, key).and_then(|entry| self.string(entry))
    }

    fn prop_bool(&mut self, node: &RawNode, key: &str) -> Option<bool> {
        Self::prop(node, key).and_then(|entry| self.boolean(entry))
    }

    fn prop_duration(&mut self, node: &RawNode, key: &str) -> Option<Duration> {
        Self::prop(node, key).and_then(|entry| self.duration(entry))
    }

    /// A single-argument node's value as a string.
    fn single_string(&mut self, node: &RawNode, what: &str) -> Option<String> {
        self.props(node, &[]);
        self.no_children(node);
        let args = self.args(node, 1, 1, what);
        args.first().and_then(|entry| self.string(entry))
    }

    fn strings(&mut self, node: &RawNode, what: &str) -> Vec<String> {
        self.props(node, &[]);
        self.no_children(node);
        let args = self.args(node, 1, usize::MAX, what);
        args.iter().filter_map(|entry| self.string(entry)).collect()
    }

    // ---- the format ------------------------------------------------------------------

    /// Starts decoding a `topology NAME { ... }` node; its children follow one by one
    /// through [`Self::topology_child`], then [`Self::finish_topology`]. Streaming them
    /// keeps only one resource's raw nodes in memory at a time.
    pub(crate) fn start_topology(&mut self, node: &RawNode) -> Topology {
        self.props(node, &[]);
        let name = self
            .name_arg(node, "a name, e.g. `topology production { ... }`")
            .map(|(name, span)| {
                self.spans.set(|| "topology".into(), span);
                name
            })
            .unwrap_or_default();
        if !node.has_children {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    format!("topology `{name}` has no block"),
                )
                .at(Some(node.name_span), "no `{ ... }` after the name")
                .help("declare hosts and resources inside `topology NAME { ... }`"),
            );
        }
        Topology {
            name,
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
        }
    }

    /// Decodes one child of the topology into it.
    pub(crate) fn topology_child(&mut self, topology: &mut Topology, child: &RawNode) {
        match child.name.as_str() {
            "variable" => {
                self.variable(child);
                topology.variables.clone_from(&self.vars);
            }
            "host" => {
                self.saw_host = true;
                let index = topology.hosts.len();
                if let Some(host) = self.host(child, index) {
                    topology.hosts.push(host);
                }
            }
            "network" => {
                let index = topology.networks.len();
                if let Some(network) = self.network(child, index) {
                    topology.networks.push(network);
                }
            }
            "volume" => {
                let index = topology.volumes.len();
                if let Some(volume) = self.volume(child, index) {
                    topology.volumes.push(volume);
                }
            }
            "resource" => {
                let index = topology.resources.len();
                if let Some(resource) = self.resource(child, index) {
                    topology.resources.push(resource);
                }
            }
            "cluster" => {
                let index = topology.clusters.len();
                if let Some(cluster) = self.app_cluster(child, index) {
                    topology.clusters.push(cluster);
                }
            }
            "security" => {
                if self.once_in_topology(child) {
                    self.spans.set(|| "security".into(), child.name_span);
                    topology.security = Some(self.security(child));
                }
            }
            "secrets" => {
                if self.once_in_topology(child) {
                    topology.secrets = Some(self.secret_store(child));
                }
            }
            "certificates" => {
                if self.once_in_topology(child) {
                    self.spans.set(|| "certificates".into(), child.name_span);
                    topology.certificates = Some(self.certificates(child));
                }
            }
            "zone" => {
                let index = topology.zones.len();
                if let Some(zone) = self.zone(child, index) {
                    topology.zones.push(zone);
                }
            }
            other => self.push(
                Problem::new(
                    ProblemKind::UnknownNode,
                    format!("unknown node `{other}` in `topology`"),
                )
                .at(Some(child.name_span), "not known here")
                .help(suggestion(other, TOPOLOGY_CHILDREN, "child nodes")),
            ),
        }
    }

    /// Completes a topology once all its children are decoded: the implicit local host,
    /// and the host of resources that did not name one.
    pub(crate) fn finish_topology(&mut self, topology: &mut Topology) {
        if topology.hosts.is_empty() && !self.saw_host {
            topology.hosts.push(Host {
                name: "local".into(),
                endpoint: Endpoint::Local,
                project: None,
                platform: None,
                cluster: None,
            });
        }
        let hostless = std::mem::take(&mut self.hostless);
        if let [only] = topology.hosts.as_slice() {
            for index in hostless {
                topology.resources[index].host.clone_from(&only.name);
            }
            return;
        }
        let names: Vec<&str> = topology.hosts.iter().map(|h| h.name.as_str()).collect();
        let mut unique = names.clone();
        unique.dedup();
        for index in hostless {
            let resource = &topology.resources[index];
            let problem = Problem::new(
                ProblemKind::Missing,
                format!(
                    "resource `{}` does not say which host it runs on",
                    resource.name
                ),
            )
            .at(self.spans.get(&format!("r{index}")), "no `on=`")
            .help(format!(
                "the topology has several hosts: add `on=HOST` with one of: {}",
                unique.join(", ")
            ));
            self.push(problem);
        }
    }

    fn once_in_topology(&mut self, node: &RawNode) -> bool {
        let mut seen = std::mem::take(&mut self.topology_blocks);
        let first = self.once(&mut seen, node);
        self.topology_blocks = seen;
        first
    }

    fn variable(&mut self, node: &RawNode) {
        self.props(node, &["env", "default"]);
        self.no_children(node);
        let Some((name, _)) = self.name_arg(node, "a name") else {
            return;
        };
        for (used, index) in &self.undeclared_uses {
            if *used == name
                && let Some(problem) = self.problems.get_mut(*index)
            {
                *problem = Problem::new(
                    ProblemKind::UndefinedReference,
                    format!("variable `{name}` is used before it is declared"),
                )
                .at(problem.span(), "used here")
                .also(Some(node.name_span), "declared here")
                .help("declare variables before the strings that use them");
            }
        }
        let env = self.prop_string(node, "env");
        let default = self.prop_string(node, "default");
        if env.is_none() && default.is_none() {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    format!("variable `{name}` has neither `env=` nor `default=`"),
                )
                .at(Some(node.name_span), "no source for its value")
                .help(format!(
                    "read it from the environment: `variable {name} env=\"{}\"`",
                    name.to_ascii_uppercase()
                )),
            );
            return;
        }
        let value = env.as_deref().and_then(|var| (self.env)(var)).or(default);
        match value {
            Some(value) => {
                self.vars.insert(name, value);
            }
            None => {
                self.unset_vars.push(name.clone());
                let var = env.unwrap_or_default();
                self.push(
                    Problem::new(
                        ProblemKind::UnsetVariable,
                        format!("variable `{name}` needs `{var}` in the environment"),
                    )
                    .at(Some(node.name_span), format!("`{var}` is not set"))
                    .help(format!(
                        "run with `{var}=...` set, or give a fallback: `default=\"...\"`"
                    )),
                );
            }
        }
    }

    fn host(&mut self, node: &RawNode, index: usize) -> Option<Host> {
        const PROPS: &[&str] = &["socket", "remote", "project", "platform"];
        for entry in &node.entries {
            if let Some(key @ ("address" | "credentials" | "ssh" | "user" | "password")) =
                entry.key.as_deref()
            {
                self.push(ssh_problem(key, entry.span));
            }
        }
        let filtered = RawNode {
            entries: node
                .entries
                .iter()
                .filter(|e| {
                    !matches!(
                        e.key.as_deref(),
                        Some("address" | "credentials" | "ssh" | "user" | "password")
                    )
                })
                .cloned()
                .collect(),
            children: Vec::new(),
            ..node.clone()
        };
        self.props(&filtered, PROPS);
        let (name, span) = self.name_arg(node, "a name")?;
        self.spans.set(|| format!("h{index}"), span);
        let socket = self.prop_string(node, "socket");
        let remote = self.prop_string(node, "remote");
        let endpoint = match (socket, remote) {
            (Some(_), Some(_)) => {
                self.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        format!("host `{name}` has both `socket=` and `remote=`"),
                    )
                    .at(Some(node.name_span), "two endpoints")
                    .help("a host is reached one way: a unix socket or a remote, not both"),
                );
                Endpoint::Local
            }
            (Some(path), None) => Endpoint::Socket { path },
            (None, Some(remote)) => Endpoint::Remote { remote },
            (None, None) => Endpoint::Local,
        };
        let project = self.prop_string(node, "project");
        let platform = self.prop_string(node, "platform");
        let mut cluster = None;
        for child in &node.children {
            match child.name.as_str() {
                "cluster" => cluster = Some(self.incus_cluster(child)),
                "credentials" | "address" | "ssh" => {
                    self.push(ssh_problem(&child.name, child.name_span))
                }
                _ => {
                    let help = if PROPS.contains(&child.name.as_str()) {
                        format!(
                            "`{0}` is a property of `host`: write `host {name} {0}=...`",
                            child.name
                        )
                    } else {
                        suggestion(&child.name, &["cluster"], "child nodes")
                    };
                    self.push(
                        Problem::new(
                            ProblemKind::UnknownNode,
                            format!("unknown node `{}` in `host`", child.name),
                        )
                        .at(Some(child.name_span), "not known here")
                        .help(help),
                    );
                }
            }
        }
        Some(Host {
            name,
            endpoint,
            project,
            platform,
            cluster,
        })
    }

    fn incus_cluster(&mut self, node: &RawNode) -> IncusCluster {
        self.props(node, &[]);
        let mut cluster = IncusCluster::default();
        for child in self.children(node, &["member", "group"], &[]) {
            let Some(name) = self.single_string(child, "a name") else {
                continue;
            };
            if child.name == "member" {
                cluster.members.push(name);
            } else {
                cluster.groups.push(name);
            }
        }
        cluster
    }

    fn network(&mut self, node: &RawNode, index: usize) -> Option<Network> {
        self.props(node, &["subnet", "nat", "existing", "host"]);
        self.no_children(node);
        let (name, span) = self.name_arg(node, "a name")?;
        self.spans.set(|| format!("n{index}"), span);
        let host = self.prop_string(node, "host");
        if let Some(entry) = Self::prop(node, "host") {
            self.spans.set(|| format!("n{index}.host"), entry.span);
        }
        let kind = if let Some(existing) = self.prop_string(node, "existing") {
            if let Some(entry) = Self::prop(node, "subnet").or_else(|| Self::prop(node, "nat")) {
                self.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        format!(
                            "network `{name}` is existing, so cul8er cannot set its addressing"
                        ),
                    )
                    .at(Some(entry.span), "only for a bridge the topology owns")
                    .help("remove `existing=` to own the bridge, or drop `subnet=`/`nat=`"),
                );
            }
            NetworkKind::Existing { name: existing }
        } else {
            let subnet = Self::prop(node, "subnet").and_then(|entry| {
                let text = self.string(entry)?;
                if valid_subnet(&text) {
                    Some(text)
                } else {
                    self.push(
                        Problem::new(
                            ProblemKind::InvalidValue,
                            format!("`{text}` is not an IPv4 address with a prefix"),
                        )
                        .at(Some(entry.span), "invalid subnet")
                        .help("write the bridge's own address and prefix, e.g. \"10.181.0.1/24\" (prefix 8 to 30)"),
                    );
                    None
                }
            });
            let nat = self.prop_bool(node, "nat").unwrap_or(true);
            NetworkKind::Bridge { subnet, nat }
        };
        Some(Network { name, host, kind })
    }

    fn volume(&mut self, node: &RawNode, index: usize) -> Option<Volume> {
        self.props(node, &["pool", "size", "host"]);
        self.no_children(node);
        let (name, span) = self.name_arg(node, "a name")?;
        self.spans.set(|| format!("v{index}"), span);
        let host = self.prop_string(node, "host");
        let pool = self
            .prop_string(node, "pool")
            .unwrap_or_else(|| "default".into());
        let size = Self::prop(node, "size").and_then(|entry| self.size(entry));
        Some(Volume {
            name,
            host,
            pool,
            size,
        })
    }

    #[allow(clippy::too_many_lines)]
    fn resource(&mut self, node: &RawNode, index: usize) -> Option<Resource> {
        self.props(node, &["type", "on"]);
        let (name, span) = self.name_arg(node, "a name")?;
        let key = format!("r{index}");
        self.spans.set(|| key.clone(), span);
        let kind = match Self::prop(node, "type") {
            Some(entry) => {
                self.spans.set(|| format!("{key}.type"), entry.span);
                match self.keyword(entry, &["container", "vm"]) {
                    Some("vm") => InstanceKind::Vm,
                    _ => InstanceKind::Container,
                }
            }
            None => InstanceKind::Container,
        };
        let host = match Self::prop(node, "on") {
            Some(entry) => {
                self.spans.set(|| format!("{key}.on"), entry.span);
                self.string(entry).unwrap_or_default()
            }
            None => {
                self.hostless.push(index);
                String::new()
            }
        };
        let image = ImageRef::Alias {
            remote: None,
            alias: String::new(),
        };
        let mut resource = Resource {
            kind,
            host,
            ..Resource::new(name, image)
        };
        let mut seen = HashMap::new();
        let mut has_image = false;
        for child in self.children(node, RESOURCE_CHILDREN, &["type", "on"]) {
            let repeatable = matches!(child.name.as_str(), "network" | "volume" | "device");
            if !repeatable && !self.once(&mut seen, child) {
                continue;
            }
            match child.name.as_str() {
                "image" => {
                    has_image = true;
                    self.spans.set(|| format!("{key}.image"), child.name_span);
                    if let Some(image) = self.image(child) {
                        resource.image = image;
                    }
                }
                "replicas" => {
                    self.props(child, &[]);
                    self.no_children(child);
                    if let Some(entry) = self.args(child, 1, 1, "a count").first()
                        && let Some(replicas) = self.u32(entry, 1..=999)
                    {
                        resource.replicas = replicas;
                    }
                }
                "profiles" => resource.profiles = self.strings(child, "profile names"),
                "placement" => {
                    self.spans
                        .set(|| format!("{key}.placement"), child.name_span);
                    resource.placement = self.placement(child);
                }
                "limits" => resource.limits = self.limits(child, &key),
                "network" => {
                    let n = resource.networks.len();
                    if let Some(attachment) = self.attachment(child, &format!("{key}.net{n}")) {
                        resource.networks.push(attachment);
                    }
                }
                "volume" => {
                    let n = resource.volumes.len();
                    self.props(child, &["path"]);
                    self.no_children(child);
                    if let Some((volume, span)) = self.name_arg(child, "a volume name") {
                        self.spans.set(|| format!("{key}.vol{n}"), span);
                        let path = self.absolute_path(child, "path");
                        if let Some(path) = path {
                            resource.volumes.push(VolumeMount { volume, path });
                        }
                    }
                }
                "environment" => resource.environment = self.environment(child, &key),
                "release" => resource.release = self.release(child),
                "config" => resource.config = self.raw_config(child),
                "device" => {
                    if let Some((name, device)) = self.device(child) {
                        resource.devices.insert(name, device);
                    }
                }
                "strategy" => {
                    if let Some(strategy) = self.strategy(child, &key) {
                        resource.strategy = strategy;
                    }
                }
                "security" => {
                    self.spans
                        .set(|| format!("{key}.security"), child.name_span);
                    resource.security = Some(self.security(child));
                }
                "zone" => {
                    self.spans.set(|| format!("{key}.zone"), child.name_span);
                    resource.zone = self.single_string(child, "a zone name");
                }
                _ => {}
            }
        }
        if !has_image {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    format!("resource `{}` has no image", resource.name),
                )
                .at(Some(span), "no `image`")
                .help(
                    "add `image \"alpine/3.19\"` (a local alias, `remote:alias` or a fingerprint)",
                ),
            );
        }
        Some(resource)
    }

    fn image(&mut self, node: &RawNode) -> Option<ImageRef> {
        let text = self.single_string(node, "an image")?;
        let image = ImageRef::parse(&text);
        if image.is_none() {
            let span = node.entries.first().map_or(node.name_span, |e| e.span);
            self.push(
                Problem::new(
                    ProblemKind::InvalidValue,
                    format!("`{text}` is not an image reference"),
                )
                .at(Some(span), "invalid image")
                .help("write a local alias (`cul8er-busybox`), a remote alias (`images:alpine/3.19`) or a fingerprint (12 to 64 hex digits)"),
            );
        }
        image
    }

    fn placement(&mut self, node: &RawNode) -> Option<Placement> {
        self.props(node, &["member", "group", "spread"]);
        self.no_children(node);
        self.args(node, 0, 0, "");
        let member = self.prop_string(node, "member");
        let group = self.prop_string(node, "group");
        let spread = self.prop_bool(node, "spread").unwrap_or(false);
        match (member, group, spread) {
            (Some(name), None, false) => Some(Placement::Member { name }),
            (None, Some(name), false) => Some(Placement::Group { name }),
            (None, None, true) => Some(Placement::Spread),
            (None, None, false) => {
                self.push(
                    Problem::new(ProblemKind::Missing, "`placement` says nowhere")
                        .at(Some(node.name_span), "empty placement")
                        .help("give one of `member=NAME`, `group=NAME` or `spread=#true`"),
                );
                None
            }
            _ => {
                self.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        "`placement` takes one of `member=`, `group=` or `spread=`",
                    )
                    .at(Some(node.name_span), "more than one placement")
                    .help("keep one of them"),
                );
                None
            }
        }
    }

    fn limits(&mut self, node: &RawNode, key: &str) -> Limits {
        self.props(node, &[]);
        let mut limits = Limits::default();
        let mut seen = HashMap::new();
        for child in self.children(node, &["cpu", "memory", "disk", "processes"], &[]) {
            if !self.once(&mut seen, child) {
                continue;
            }
            self.no_children(child);
            match child.name.as_str() {
                "cpu" => limits.cpu = self.cpu(child),
                "memory" | "disk" => {
                    self.props(child, &[]);
                    let size = self
                        .args(child, 1, 1, "a size, e.g. \"2GiB\"")
                        .first()
                        .and_then(|entry| self.size(entry));
                    if child.name == "memory" {
                        limits.memory = size;
                    } else {
                        limits.disk = size;
                    }
                }
                "processes" => {
                    self.props(child, &[]);
                    self.spans
                        .set(|| format!("{key}.processes"), child.name_span);
                    limits.processes = self
                        .args(child, 1, 1, "a count")
                        .first()
                        .and_then(|entry| self.u32(entry, 1..=4_194_304));
                }
                _ => {}
            }
        }
        limits
    }

    fn cpu(&mut self, node: &RawNode) -> Option<CpuLimit> {
        self.props(node, &["cores", "allowance"]);
        let args = self.args(node, 0, 1, "a core count");
        let cores = args.first().copied().or_else(|| Self::prop(node, "cores"));
        let allowance = Self::prop(node, "allowance");
        match (cores, allowance) {
            (Some(entry), None) => self
                .u32(entry, 1..=1024)
                .map(|cores| CpuLimit::Cores { cores }),
            (None, Some(entry)) => {
                let text = self.string(entry)?;
                let percent = text
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse::<u32>().ok())
                    .filter(|n| (1..=100).contains(n));
                if percent.is_none() {
                    self.push(
                        Problem::new(
                            ProblemKind::InvalidValue,
                            format!("`{text}` is not a CPU allowance"),
                        )
                        .at(Some(entry.span), "expected a percentage")
                        .help(
                            "write a percentage of one CPU from 1% to 100%, e.g. allowance=\"50%\"",
                        ),
                    );
                }
                percent.map(|percent| CpuLimit::Allowance { percent })
            }
            (None, None) => {
                self.push(
                    Problem::new(ProblemKind::Missing, "`cpu` needs cores or an allowance")
                        .at(Some(node.name_span), "no value")
                        .help("write `cpu 2`, `cpu cores=2` or `cpu allowance=\"50%\"`"),
                );
                None
            }
            (Some(_), Some(entry)) => {
                self.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        "`cpu` takes cores or an allowance, not both",
                    )
                    .at(Some(entry.span), "second limit")
                    .help("keep one of them"),
                );
                None
            }
        }
    }

    fn attachment(&mut self, node: &RawNode, key: &str) -> Option<NetworkAttachment> {
        self.props(node, &[]);
        let (network, span) = self.name_arg(node, "a network name")?;
        self.spans.set(|| key.to_owned(), span);
        let mut expose = Vec::new();
        for child in self.children(node, &["expose"], &[]) {
            let index = expose.len();
            self.spans
                .set(|| format!("{key}.exp{index}"), child.name_span);
            if let Some(item) = self.expose(child) {
                expose.push(item);
            }
        }
        Some(NetworkAttachment { network, expose })
    }

    fn expose(&mut self, node: &RawNode) -> Option<Expose> {
        self.props(node, &["public", "protocol", "hostname", "address"]);
        self.no_children(node);
        let port = self
            .args(
                node,
                1,
                1,
                "the instance port, e.g. `expose 8080 public=80`",
            )
            .first()
            .and_then(|entry| self.port(entry))?;
        let public = match Self::prop(node, "public") {
            Some(entry) => self.port(entry)?,
            None => port,
        };
        let protocol = match Self::prop(node, "protocol") {
            Some(entry) => match self.keyword(entry, &["tcp", "http", "https"])? {
                "http" => Protocol::Http,
                "https" => Protocol::Https,
                _ => Protocol::Tcp,
            },
            None => Protocol::Tcp,
        };
        let hostname = match Self::prop(node, "hostname") {
            Some(entry) => {
                let name = self.string(entry)?;
                if !protocol.routes_by_hostname() {
                    self.push(
                        Problem::new(
                            ProblemKind::Conflict,
                            "`hostname` only applies to HTTP and HTTPS",
                        )
                        .at(Some(entry.span), "on a tcp port")
                        .help("plain TCP cannot be routed by host name: add `protocol=http` or `protocol=https`, or remove `hostname`"),
                    );
                    return None;
                }
                if !valid_hostname(&name) {
                    self.push(
                        Problem::new(
                            ProblemKind::InvalidValue,
                            format!("`{name}` is not a host name"),
                        )
                        .at(Some(entry.span), "invalid host name")
                        .help("letters, digits, hyphens and dots, e.g. \"web.example.com\""),
                    );
                    return None;
                }
                Some(name.to_ascii_lowercase())
            }
            None => None,
        };
        let address = match Self::prop(node, "address") {
            Some(entry) => {
                let text = self.string(entry)?;
                match text.parse::<std::net::IpAddr>() {
                    Ok(address) => Some(address),
                    Err(_) => {
                        self.push(
                            Problem::new(
                                ProblemKind::InvalidValue,
                                format!("`{text}` is not an IP address"),
                            )
                            .at(Some(entry.span), "invalid address")
                            .help("the host address to publish on, e.g. \"0.0.0.0\" (every IPv4 address), \"192.0.2.10\" or \"::1\"; leave it out for 127.0.0.1"),
                        );
                        return None;
                    }
                }
            }
            None => None,
        };
        Some(Expose {
            port,
            public,
            protocol,
            hostname,
            address,
        })
    }

    fn absolute_path(&mut self, node: &RawNode, key: &str) -> Option<String> {
        let Some(entry) = Self::prop(node, key) else {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    format!("`{}` needs `{key}=`", node.name),
                )
                .at(Some(node.name_span), format!("no `{key}=`"))
                .help("give the absolute path inside the instance, e.g. path=\"/var/lib/data\""),
            );
            return None;
        };
        let path = self.string(entry)?;
        if !path.starts_with('/') {
            self.push(
                Problem::new(
                    ProblemKind::InvalidValue,
                    format!("`{path}` is not an absolute path"),
                )
                .at(Some(entry.span), "relative path")
                .help("paths inside the instance start with `/`"),
            );
            return None;
        }
        Some(path)
    }

    fn environment(&mut self, node: &RawNode, key: &str) -> Vec<EnvVar> {
        self.props(node, &[]);
        let mut vars = Vec::new();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for child in self.children(node, &["set", "secret"], &[]) {
            self.no_children(child);
            let name_and_value = if child.name == "set" {
                self.props(child, &[]);
                let args = self.args(
                    child,
                    2,
                    2,
                    "a name and a value, e.g. `set RUST_LOG \"info\"`",
                );
                if args.len() == 2 {
                    let name = self.string(args[0]);
                    let value = self.env_value(args[1]);
                    name.zip(value)
                        .map(|(name, value)| (name, EnvValue::Value { value }, args[0].span))
                } else {
                    None
                }
            } else {
                self.props(child, &["from", "var", "name"]);
                let Some((name, span)) = self.name_arg(child, "a variable name") else {
                    continue;
                };
                let from = match Self::prop(child, "from") {
                    Some(entry) => self.keyword(entry, &["env", "store"]),
                    None => {
                        self.push(
                            Problem::new(
                                ProblemKind::Missing,
                                format!("secret `{name}` does not say where it comes from"),
                            )
                            .at(Some(child.name_span), "no `from=`")
                            .help("add `from=env` (the operator's environment at apply time) or `from=store` (the encrypted store)"),
                        );
                        None
                    }
                };
                let value = match from {
                    Some("env") => {
                        if let Some(entry) = Self::prop(child, "name") {
                            self.push(
                                Problem::new(
                                    ProblemKind::Conflict,
                                    "`name=` names a secret in the store",
                                )
                                .at(Some(entry.span), "with from=env")
                                .help("use `var=` for the environment variable to read"),
                            );
                        }
                        let var = self
                            .prop_string(child, "var")
                            .unwrap_or_else(|| name.clone());
                        Some(EnvValue::SecretFromEnv { var })
                    }
                    Some(_) => {
                        let secret = self
                            .prop_string(child, "name")
                            .unwrap_or_else(|| name.clone());
                        let index = vars.len();
                        self.spans
                            .set(|| format!("{key}.env{index}"), child.name_span);
                        Some(EnvValue::SecretFromStore { secret })
                    }
                    None => None,
                };
                value.map(|value| (name, value, span))
            };
            let Some((name, value, span)) = name_and_value else {
                continue;
            };
            if !valid_env_name(&name) {
                self.push(
                    Problem::new(
                        ProblemKind::InvalidName,
                        format!("`{name}` is not an environment variable name"),
                    )
                    .at(Some(span), "invalid name")
                    .help("letters, digits and `_`, not starting with a digit"),
                );
                continue;
            }
            if let Some(first) = seen.insert(name.clone(), span) {
                self.push(
                    Problem::new(
                        ProblemKind::Duplicate,
                        format!("environment variable `{name}` is set twice"),
                    )
                    .at(Some(span), "set again here")
                    .also(Some(first), "first set here")
                    .help("keep one of them"),
                );
                continue;
            }
            vars.push(EnvVar { name, value });
        }
        vars
    }

    fn env_value(&mut self, entry: &RawEntry) -> Option<String> {
        match &entry.value {
            RawValue::String(_) => self.string(entry),
            RawValue::Integer(value) => Some(value.to_string()),
            RawValue::Float(value) => Some(value.to_string()),
            RawValue::Bool(value) => Some(value.to_string()),
            RawValue::Null => {
                self.wrong_type(entry, "a value");
                None
            }
        }
    }

    fn release(&mut self, node: &RawNode) -> Option<Release> {
        self.props(node, &["version"]);
        let (name, span) = self.name_arg(node, "the app's name")?;
        let version = self.prop_string(node, "version");
        if version.is_none() && Self::prop(node, "version").is_none() {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    format!("release `{name}` has no version"),
                )
                .at(Some(span), "no `version=`")
                .help("add `version=\"1.2.3\"`, or `version=\"${version}\"` with a variable"),
            );
        }
        let mut release = Release {
            name,
            version: version.unwrap_or_default(),
            artifact: None,
            start: String::new(),
            workdir: None,
            user: None,
            before_start: Vec::new(),
            after_start: Vec::new(),
        };
        let mut seen = HashMap::new();
        let known = &[
            "artifact",
            "start",
            "workdir",
            "user",
            "before-start",
            "after-start",
        ];
        for child in self.children(node, known, &["version"]) {
            let repeatable = child.name.ends_with("-start");
            if !repeatable && !self.once(&mut seen, child) {
                continue;
            }
            let Some(value) = self.single_string(child, "a value") else {
                continue;
            };
            match child.name.as_str() {
                "artifact" => release.artifact = Some(value),
                "start" => release.start = value,
                "workdir" => release.workdir = Some(value),
                "user" => release.user = Some(value),
                "before-start" => release.before_start.push(value),
                _ => release.after_start.push(value),
            }
        }
        if !node.children.iter().any(|child| child.name == "start") {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    format!("release `{}` has no start command", release.name),
                )
                .at(Some(span), "no `start`")
                .help("add `start \"/opt/app/bin/server\"` inside the release block"),
            );
        }
        Some(release)
    }

    fn raw_config(&mut self, node: &RawNode) -> BTreeMap<String, String> {
        self.props(node, &[]);
        let mut config = BTreeMap::new();
        for child in &node.children {
            self.props(child, &[]);
            self.no_children(child);
            let args = self.args(child, 1, 1, "a value, e.g. `limits.kernel.nofile \"4096\"`");
            if let Some(value) = args.first().and_then(|entry| self.env_value(entry)) {
                config.insert(child.name.clone(), value);
            }
        }
        config
    }

    fn device(&mut self, node: &RawNode) -> Option<(String, BTreeMap<String, String>)> {
        self.no_children(node);
        let (name, span) = self.name_arg(node, "a device name")?;
        let mut device = BTreeMap::new();
        for entry in node.entries.iter().filter(|e| e.key.is_some()) {
            if let (Some(key), Some(value)) = (entry.key.clone(), self.env_value(entry)) {
                device.insert(key, value);
            }
        }
        if !device.contains_key("type") {
            self.push(
                Problem::new(ProblemKind::Missing, format!("device `{name}` has no type"))
                    .at(Some(span), "no `type=`")
                    .help("raw devices are passed to Incus as written: add `type=disk`, `type=proxy`, ..."),
            );
            return None;
        }
        Some((name, device))
    }

    fn strategy(&mut self, node: &RawNode, key: &str) -> Option<Strategy> {
        self.props(node, &["max-parallel"]);
        self.spans.set(|| format!("{key}.strategy"), node.name_span);
        let args = self.args(
            node,
            1,
            1,
            "a kind: recreate, rolling, blue-green or canary",
        );
        let kind = match self.keyword(
            args.first()?,
            &["recreate", "rolling", "blue-green", "canary"],
        )? {
            "recreate" => StrategyKind::Recreate,
            "rolling" => StrategyKind::Rolling,
            "blue-green" => StrategyKind::BlueGreen,
            _ => StrategyKind::Canary,
        };
        let mut strategy = Strategy {
            kind,
            ..Strategy::default()
        };
        if let Some(entry) = Self::prop(node, "max-parallel") {
            strategy.max_parallel = self.u32(entry, 1..=1000)?;
        }
        let mut seen = HashMap::new();
        for child in self.children(
            node,
            &["health", "rollback", "canary", "blue-green"],
            &["max-parallel"],
        ) {
            if !self.once(&mut seen, child) {
                continue;
            }
            match child.name.as_str() {
                "health" => {
                    self.spans.set(|| format!("{key}.health"), child.name_span);
                    strategy.health = self.health(child);
                }
                "rollback" => {
                    if let Some(rollback) = self.rollback(child) {
                        strategy.rollback = rollback;
                    }
                }
                "canary" => {
                    self.spans.set(|| format!("{key}.canary"), child.name_span);
                    strategy.canary = Some(self.canary(child, key));
                }
                _ => {
                    self.spans
                        .set(|| format!("{key}.blue-green"), child.name_span);
                    strategy.blue_green = self.blue_green(child);
                }
            }
        }
        if kind == StrategyKind::Canary && strategy.canary.is_none() {
            strategy.canary = Some(Canary::default());
        }
        if kind == StrategyKind::BlueGreen && strategy.blue_green.is_none() {
            strategy.blue_green = Some(BlueGreen::default());
        }
        Some(strategy)
    }

    fn health(&mut self, node: &RawNode) -> Option<HealthCheck> {
        self.no_children(node);
        let args: Vec<&RawEntry> = node.entries.iter().filter(|e| e.key.is_none()).collect();
        let Some(first) = args.first() else {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    "`health` needs a kind: http, tcp or command",
                )
                .at(Some(node.name_span), "no kind")
                .help("e.g. `health http path=\"/health\" port=8080` or `health tcp port=5432`"),
            );
            return None;
        };
        let kind = self.keyword(first, &["http", "tcp", "command"])?;
        let probe_props: &[&str] = match kind {
            "http" => &["path", "port", "status", "body"],
            "tcp" => &["port"],
            _ => &[],
        };
        let known: Vec<&str> = probe_props.iter().chain(HEALTH_TIMING).copied().collect();
        self.props(node, &known);
        let probe = match kind {
            "http" => {
                self.args(node, 1, 1, "only its kind");
                let path = self.prop_string(node, "path").unwrap_or_else(|| "/".into());
                if !path.starts_with('/') {
                    let span = Self::prop(node, "path").map(|e| e.span);
                    self.push(
                        Problem::new(
                            ProblemKind::InvalidValue,
                            format!("`{path}` is not a request path"),
                        )
                        .at(span, "must start with `/`")
                        .help("e.g. path=\"/health\""),
                    );
                }
                let port = Self::prop(node, "port").and_then(|entry| self.port(entry));
                let status = match Self::prop(node, "status") {
                    Some(entry) => u16::try_from(self.int(entry, 100..=599)?).ok()?,
                    None => 200,
                };
                Probe::Http { path, port, status }
            }
            "tcp" => {
                self.args(node, 1, 1, "only its kind");
                let Some(entry) = Self::prop(node, "port") else {
                    self.push(
                        Problem::new(ProblemKind::Missing, "a tcp health check needs `port=`")
                            .at(Some(node.name_span), "no port")
                            .help("e.g. `health tcp port=5432`"),
                    );
                    return None;
                };
                Probe::Tcp {
                    port: self.port(entry)?,
                }
            }
            _ => {
                if args.len() < 2 {
                    self.push(
                        Problem::new(
                            ProblemKind::Missing,
                            "a command health check needs the command",
                        )
                        .at(Some(node.name_span), "no command")
                        .help("e.g. `health command \"pg_isready\" \"-q\"`: program and arguments"),
                    );
                    return None;
                }
                let argv = args[1..]
                    .iter()
                    .filter_map(|entry| self.string(entry))
                    .collect();
                Probe::Command { argv }
            }
        };
        let mut check = HealthCheck::new(probe);
        for (name, slot) in [
            ("interval", &mut check.interval),
            ("timeout", &mut check.timeout),
            ("start-period", &mut check.start_period),
            ("min-healthy-time", &mut check.min_healthy_time),
            ("deadline", &mut check.deadline),
        ] {
            if let Some(value) = self.prop_duration(node, name) {
                *slot = value;
            }
        }
        check.body = self.prop_string(node, "body");
        if let Some(entry) = Self::prop(node, "retries")
            && let Some(retries) = self.u32(entry, 1..=100)
        {
            check.retries = retries;
        }
        if check.interval.as_millis() == 0 {
            let span = Self::prop(node, "interval").map(|e| e.span);
            self.push(
                Problem::new(
                    ProblemKind::InvalidValue,
                    "the health check interval is zero",
                )
                .at(span, "zero")
                .help("checks need time between them, e.g. interval=\"5s\""),
            );
        }
        if check.timeout > check.interval {
            let span = Self::prop(node, "timeout").map(|e| e.span);
            self.push(
                Problem::new(
                    ProblemKind::Conflict,
                    format!(
                        "the health check timeout ({}) is longer than its interval ({})",
                        check.timeout, check.interval
                    ),
                )
                .at(span.or(Some(node.name_span)), "longer than the interval")
                .help("a check must end before the next one starts: lower `timeout` or raise `interval`"),
            );
        }
        Some(check)
    }

    fn rollback(&mut self, node: &RawNode) -> Option<Rollback> {
        self.props(node, &["snapshot", "keep"]);
        self.no_children(node);
        let args = self.args(node, 1, 1, "a mode: automatic or manual");
        let mode = match self.keyword(args.first()?, &["automatic", "manual"])? {
            "manual" => RollbackMode::Manual,
            _ => RollbackMode::Automatic,
        };
        let mut rollback = Rollback {
            mode,
            ..Rollback::default()
        };
        if let Some(snapshot) = self.prop_bool(node, "snapshot") {
            rollback.snapshot = snapshot;
        }
        if let Some(entry) = Self::prop(node, "keep") {
            rollback.keep = self.u32(entry, 0..=100)?;
        }
        Some(rollback)
    }

    fn canary(&mut self, node: &RawNode, key: &str) -> Canary {
        self.props(node, &[]);
        let mut canary = Canary {
            steps: Vec::new(),
            analysis: None,
        };
        let mut seen = HashMap::new();
        for child in self.children(node, &["step", "analysis"], &[]) {
            self.no_children(child);
            if child.name == "step" {
                self.props(child, &["pause"]);
                let index = canary.steps.len();
                self.spans
                    .set(|| format!("{key}.step{index}"), child.name_span);
                let Some(weight) = self
                    .args(child, 1, 1, "a weight in percent, e.g. `step 25`")
                    .first()
                    .and_then(|entry| self.u32(entry, 1..=100))
                else {
                    continue;
                };
                let pause = match Self::prop(child, "pause") {
                    Some(entry) => match &entry.value {
                        RawValue::String(text) if text == "manual" => Some(Pause::UntilPromoted),
                        _ => self.duration(entry).map(|duration| Pause::For { duration }),
                    },
                    None => None,
                };
                canary.steps.push(CanaryStep { weight, pause });
            } else if self.once(&mut seen, child) {
                canary.analysis = Some(self.analysis(child));
            }
        }
        if canary.steps.is_empty() {
            canary.steps = Canary::default().steps;
        }
        canary
    }

    fn analysis(&mut self, node: &RawNode) -> Analysis {
        self.props(node, &["max-error-rate", "max-p99-latency", "min-requests"]);
        self.args(node, 0, 0, "");
        let max_error_rate = Self::prop(node, "max-error-rate").and_then(|entry| {
            let text = self.string(entry)?;
            let rate = text
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .filter(|n| (0.0..=100.0).contains(n));
            if rate.is_none() {
                self.push(
                    Problem::new(
                        ProblemKind::InvalidValue,
                        format!("`{text}` is not an error rate"),
                    )
                    .at(Some(entry.span), "expected a percentage")
                    .help("write a percentage from 0% to 100%, e.g. max-error-rate=\"1%\""),
                );
            }
            rate
        });
        let max_p99_latency = self.prop_duration(node, "max-p99-latency");
        let min_requests = Self::prop(node, "min-requests")
            .and_then(|entry| self.u32(entry, 0..=1_000_000))
            .unwrap_or(20);
        if Self::prop(node, "max-error-rate").is_none()
            && Self::prop(node, "max-p99-latency").is_none()
        {
            self.push(
                Problem::new(ProblemKind::Missing, "`analysis` has no threshold")
                    .at(Some(node.name_span), "nothing to compare")
                    .help("add `max-error-rate=\"1%\"` and/or `max-p99-latency=\"500ms\"`"),
            );
        }
        Analysis {
            max_error_rate,
            max_p99_latency,
            min_requests,
        }
    }

    fn blue_green(&mut self, node: &RawNode) -> Option<BlueGreen> {
        self.props(node, &["promotion", "scale-down-delay"]);
        self.no_children(node);
        self.args(node, 0, 0, "");
        let mut blue_green = BlueGreen::default();
        if let Some(entry) = Self::prop(node, "promotion") {
            blue_green.promotion = match self.keyword(entry, &["automatic", "manual"])? {
                "manual" => Promotion::Manual,
                _ => Promotion::Automatic,
            };
        }
        if let Some(delay) = self.prop_duration(node, "scale-down-delay") {
            blue_green.scale_down_delay = delay;
        }
        Some(blue_green)
    }

    fn security(&mut self, node: &RawNode) -> Security {
        self.props(node, &[]);
        self.args(node, 0, 0, "");
        let mut security = Security::default();
        let mut seen = HashMap::new();
        for child in self.children(node, SECURITY_CHILDREN, &[]) {
            if !self.once(&mut seen, child) {
                continue;
            }
            match child.name.as_str() {
                "uid" | "gid" => {
                    self.props(child, &[]);
                    self.no_children(child);
                    let id = self
                        .args(child, 1, 1, "a numeric id")
                        .first()
                        .and_then(|entry| self.u32(entry, 0..=u32::MAX - 1));
                    if child.name == "uid" {
                        security.uid = id;
                    } else {
                        security.gid = id;
                    }
                }
                "drop-capabilities" => {
                    security.drop_capabilities = self.strings(child, "capability names");
                }
                "deny-syscalls" => {
                    security.deny_syscalls = self.strings(child, "system call names")
                }
                _ => {
                    self.props(child, &[]);
                    self.no_children(child);
                    let value = self
                        .args(child, 1, 1, "#true or #false")
                        .first()
                        .and_then(|entry| self.boolean(entry));
                    match child.name.as_str() {
                        "unprivileged" => security.unprivileged = value,
                        "isolated-idmap" => security.isolated_idmap = value,
                        "read-only-root" => security.read_only_root = value,
                        _ => security.nesting = value,
                    }
                }
            }
        }
        security
    }

    fn app_cluster(&mut self, node: &RawNode, index: usize) -> Option<AppCluster> {
        self.props(node, &["discovery"]);
        let (name, span) = self.name_arg(node, "a name")?;
        let key = format!("c{index}");
        self.spans.set(|| key.clone(), span);
        let discovery = match Self::prop(node, "discovery") {
            Some(entry) => match self.keyword(entry, &["epmd", "dns", "gossip"])? {
                "dns" => Discovery::Dns,
                "gossip" => Discovery::Gossip,
                _ => Discovery::Epmd,
            },
            None => Discovery::Epmd,
        };
        let mut cluster = AppCluster {
            name,
            nodes: Vec::new(),
            discovery,
            cookie_secret: None,
        };
        let mut seen = HashMap::new();
        for child in self.children(node, &["nodes", "cookie"], &["discovery"]) {
            if !self.once(&mut seen, child) {
                continue;
            }
            if child.name == "nodes" {
                self.props(child, &[]);
                self.no_children(child);
                for (n, entry) in self
                    .args(child, 1, usize::MAX, "resource names")
                    .into_iter()
                    .enumerate()
                {
                    if let Some(node_name) = self.string(entry) {
                        self.spans.set(|| format!("{key}.node{n}"), entry.span);
                        cluster.nodes.push(node_name);
                    }
                }
            } else {
                self.props(child, &["secret"]);
                self.no_children(child);
                self.args(child, 0, 0, "");
                self.spans.set(|| format!("{key}.cookie"), child.name_span);
                cluster.cookie_secret = self.prop_string(child, "secret");
                if cluster.cookie_secret.is_none() {
                    self.push(
                        Problem::new(ProblemKind::Missing, "`cookie` needs `secret=`")
                            .at(Some(child.name_span), "no secret")
                            .help("the cookie comes from the secret store: `cookie secret=\"erlang-cookie\"`"),
                    );
                }
            }
        }
        if cluster.nodes.is_empty() {
            self.push(
                Problem::new(
                    ProblemKind::Missing,
                    format!("cluster `{}` has no nodes", cluster.name),
                )
                .at(Some(span), "no `nodes`")
                .help("name the resources that form it: `nodes \"web\" \"worker\"`"),
            );
        }
        Some(cluster)
    }

    fn secret_store(&mut self, node: &RawNode) -> SecretStore {
        self.props(node, &["backend", "path"]);
        self.args(node, 0, 0, "");
        self.spans.set(|| "secrets".into(), node.name_span);
        if let Some(entry) = Self::prop(node, "backend") {
            self.keyword(entry, &["local"]);
        }
        let path = self.prop_string(node, "path");
        let mut secrets = Vec::new();
        let mut seen: HashMap<String, SourceSpan> = HashMap::new();
        for child in self.children(node, &["secret"], &["backend", "path"]) {
            let Some(name) = self.single_string(child, "a secret name") else {
                continue;
            };
            if let Some(first) = seen.insert(name.clone(), child.name_span) {
                self.push(
                    Problem::new(
                        ProblemKind::Duplicate,
                        format!("secret `{name}` is declared twice"),
                    )
                    .at(Some(child.name_span), "declared again here")
                    .also(Some(first), "first declared here")
                    .help("keep one of them"),
                );
                continue;
            }
            secrets.push(name);
        }
        SecretStore {
            backend: SecretBackend::Local,
            path,
            secrets,
        }
    }

    fn certificates(&mut self, node: &RawNode) -> Certificates {
        self.props(node, &["ca"]);
        self.args(node, 0, 0, "");
        if let Some(entry) = Self::prop(node, "ca") {
            self.keyword(entry, &["internal"]);
        }
        let mut certificates = Vec::new();
        for child in self.children(node, &["certificate"], &["ca"]) {
            self.props(child, &[]);
            self.no_children(child);
            let args = self.args(
                child,
                2,
                usize::MAX,
                "a name and DNS names, e.g. `certificate web \"web.example.com\"`",
            );
            if args.len() < 2 {
                continue;
            }
            let Some(name) = self.string(args[0]) else {
                continue;
            };
            let mut dns_names = Vec::new();
            for entry in &args[1..] {
                let Some(dns) = self.string(entry) else {
                    continue;
                };
                if valid_hostname(dns.trim_start_matches("*.")) {
                    dns_names.push(dns);
                } else {
                    self.push(
                        Problem::new(
                            ProblemKind::InvalidValue,
                            format!("`{dns}` is not a DNS name"),
                        )
                        .at(Some(entry.span), "invalid DNS name")
                        .help("letters, digits, hyphens and dots; a leading `*.` for a wildcard"),
                    );
                }
            }
            certificates.push(Certificate { name, dns_names });
        }
        Certificates {
            authority: CertificateAuthority::Internal,
            certificates,
        }
    }

    fn zone(&mut self, node: &RawNode, index: usize) -> Option<Zone> {
        self.props(node, &[]);
        let (name, span) = self.name_arg(node, "a name")?;
        let key = format!("z{index}");
        self.spans.set(|| key.clone(), span);
        let mut zone = Zone {
            name,
            networks: Vec::new(),
            rules: Vec::new(),
        };
        for child in self.children(node, &["network", "allow", "deny"], &[]) {
            if child.name == "network" {
                let n = zone.networks.len();
                if let Some(network) = self.single_string(child, "a network name") {
                    self.spans.set(|| format!("{key}.net{n}"), child.name_span);
                    zone.networks.push(network);
                }
                continue;
            }
            self.props(child, &["from", "to", "port", "protocol"]);
            self.no_children(child);
            self.args(child, 0, 0, "");
            let n = zone.rules.len();
            self.spans.set(|| format!("{key}.rule{n}"), child.name_span);
            let action = if child.name == "allow" {
                AclAction::Allow
            } else {
                AclAction::Deny
            };
            let from = self.prop_string(child, "from");
            let to = self.prop_string(child, "to");
            let ports = Self::prop(child, "port")
                .and_then(|entry| self.port(entry))
                .into_iter()
                .collect();
            let protocol = match Self::prop(child, "protocol") {
                Some(entry) => match self.keyword(entry, &["tcp", "udp"]) {
                    Some("udp") => AclProtocol::Udp,
                    _ => AclProtocol::Tcp,
                },
                None => AclProtocol::Tcp,
            };
            zone.rules.push(AclRule {
                action,
                from,
                to,
                ports,
                protocol,
            });
        }
        Some(zone)
    }
}

fn ssh_problem(key: &str, span: SourceSpan) -> Problem {
    Problem::new(
        ProblemKind::Unsupported,
        format!("hosts are not reached by `{key}`: cul8er talks to Incus over its API with TLS trust"),
    )
    .at(Some(span), "not supported")
    .help("add the server once with `cul8er remote add NAME https://HOST:8443 --token TOKEN` (the token comes from `incus config trust add` on the server), then write `host NAME remote=NAME`")
}

/// `a.b.c.d/len` with a prefix from 8 to 30.
pub(crate) fn valid_subnet(text: &str) -> bool {
    let Some((address, prefix)) = text.split_once('/') else {
        return false;
    };
    address.parse::<std::net::Ipv4Addr>().is_ok()
        && prefix.parse::<u8>().is_ok_and(|p| (8..=30).contains(&p))
}

/// DNS host name: labels of letters, digits and hyphens, separated by dots.
pub(crate) fn valid_hostname(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn valid_env_name(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_and_hostnames() {
        assert!(valid_subnet("10.181.0.1/24"));
        assert!(!valid_subnet("10.181.0.1"));
        assert!(!valid_subnet("10.181.0.1/31"));
        assert!(!valid_subnet("10.181.0/24"));
        assert!(valid_hostname("web.example.com"));
        assert!(!valid_hostname("-web.example.com"));
        assert!(!valid_hostname("web..com"));
        assert!(valid_env_name("RUST_LOG"));
        assert!(!valid_env_name("1X"));
    }

    #[test]
    fn interpolation_replaces_variables_and_escapes() {
        let env = |_: &str| None;
        let mut decoder = Decoder::new(&env, true);
        decoder.vars.insert("version".into(), "1.2.3".into());
        let span = SourceSpan::from(0..1);
        assert_eq!(
            decoder.interpolate("v${version}", span).as_deref(),
            Some("v1.2.3")
        );
        assert_eq!(
            decoder.interpolate("$$5 and $x", span).as_deref(),
            Some("$5 and $x")
        );
        assert_eq!(decoder.interpolate("${nope}", span), None);
        assert_eq!(decoder.problems[0].kind(), ProblemKind::UndefinedReference);
    }
}
