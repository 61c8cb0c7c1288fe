//! The rules that span several blocks, checked on the model so that topologies from
//! files and from [`TopologyBuilder`](super::TopologyBuilder) obey the same ones.
//!
//! Spans come from the file when there is one; a built topology has none and its
//! problems carry only their message and help.

use std::collections::{BTreeSet, HashMap};

use miette::SourceSpan;

use super::decode::Spans;
use super::diagnostic::{Problem, ProblemKind, did_you_mean};
use super::model::{EnvValue, InstanceKind, Placement, Probe, Protocol, StrategyKind, Topology};
use super::names::{self, MAX_INSTANCE_NAME, ROLLOUT_SUFFIX_BUDGET};

/// Every cross-block problem in `topology`.
pub(crate) fn check(topology: &Topology, spans: &Spans) -> Vec<Problem> {
    let mut checker = Checker {
        topology,
        spans,
        problems: Vec::new(),
    };
    checker.names();
    checker.values();
    checker.references();
    checker.ports();
    checker.strategies();
    checker.containers_only();
    checker.problems
}

struct Checker<'a> {
    topology: &'a Topology,
    spans: &'a Spans,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn span(&self, key: &str) -> Option<SourceSpan> {
        self.spans.get(key)
    }

    fn undefined(
        &mut self,
        what: &str,
        name: &str,
        known: &[&str],
        span: Option<SourceSpan>,
        declare: &str,
    ) {
        let help = match did_you_mean(name, known.iter().copied()) {
            Some(best) => format!("did you mean `{best}`?"),
            None if known.is_empty() => format!("no {what} is declared: add `{declare}`"),
            None => format!("declared: {}; or add `{declare}`", known.join(", ")),
        };
        self.problems.push(
            Problem::new(
                ProblemKind::UndefinedReference,
                format!("{what} `{name}` is not declared"),
            )
            .at(span, format!("unknown {what}"))
            .help(help),
        );
    }

    /// Names are valid Incus names and unique within their kind.
    fn names(&mut self) {
        let t = self.topology;
        // A file's nameless topology was already reported by the decoder.
        if !t.name.is_empty() || self.spans.is_built() {
            self.valid_name(
                "topology",
                &t.name,
                self.span("topology"),
                MAX_INSTANCE_NAME,
            );
        }
        let groups: [(&str, Vec<&str>, char); 6] = [
            (
                "host",
                t.hosts.iter().map(|h| h.name.as_str()).collect(),
                'h',
            ),
            (
                "network",
                t.networks.iter().map(|n| n.name.as_str()).collect(),
                'n',
            ),
            (
                "volume",
                t.volumes.iter().map(|v| v.name.as_str()).collect(),
                'v',
            ),
            (
                "resource",
                t.resources.iter().map(|r| r.name.as_str()).collect(),
                'r',
            ),
            (
                "cluster",
                t.clusters.iter().map(|c| c.name.as_str()).collect(),
                'c',
            ),
            (
                "zone",
                t.zones.iter().map(|z| z.name.as_str()).collect(),
                'z',
            ),
        ];
        for (what, list, prefix) in &groups {
            let mut first: HashMap<&str, usize> = HashMap::new();
            for (index, name) in list.iter().enumerate() {
                let key = || format!("{prefix}{index}");
                // An owned bridge is a Linux interface: at most 15 characters.
                let max = if *what == "network" {
                    15
                } else {
                    MAX_INSTANCE_NAME
                };
                if !names::is_valid(name) || name.len() > max {
                    let span = self.span(&key());
                    self.valid_name(what, name, span, max);
                }
                if let Some(&earlier) = first.get(name) {
                    let span = self.span(&key());
                    self.problems.push(
                        Problem::new(
                            ProblemKind::Duplicate,
                            format!("{what} `{name}` is declared twice"),
                        )
                        .at(span, "declared again here")
                        .also(
                            self.span(&format!("{prefix}{earlier}")),
                            "first declared here",
                        )
                        .help(format!(
                            "{what} names must be unique within a topology: rename or remove one"
                        )),
                    );
                } else {
                    first.insert(name, index);
                }
            }
        }
        // Derived instance names must be valid Incus names with room for rollout suffixes.
        for (index, resource) in t.resources.iter().enumerate() {
            if !names::is_valid(&resource.name) || !names::is_valid(&t.name) {
                continue;
            }
            let longest = names::instance_name(&t.name, &resource.name, resource.replicas);
            let budget = MAX_INSTANCE_NAME - ROLLOUT_SUFFIX_BUDGET;
            if longest.len() > budget {
                self.problems.push(
                    Problem::new(
                        ProblemKind::InvalidName,
                        format!(
                            "instance name `{longest}` is {} characters; at most {budget} fit",
                            longest.len()
                        ),
                    )
                    .at(self.span(&format!("r{index}")), "derived names too long")
                    .help(format!(
                        "instances are named TOPOLOGY-RESOURCE-REPLICA and rollouts add up to {ROLLOUT_SUFFIX_BUDGET} more characters (`-old`), within Incus's {MAX_INSTANCE_NAME}: shorten the topology or resource name"
                    )),
                );
            }
        }
    }

    fn valid_name(&mut self, what: &str, name: &str, span: Option<SourceSpan>, max: usize) {
        if names::is_valid(name) && name.len() <= max {
            return;
        }
        let reason = if name.len() > max {
            format!("it is {} characters; at most {max} are allowed", name.len())
        } else {
            "Incus names are lower-case letters, digits and hyphens, starting with a letter and not ending with a hyphen".to_owned()
        };
        let help = match names::suggest(name) {
            Some(better) if better.len() <= max => format!("{reason}: try `{better}`"),
            _ => reason,
        };
        self.problems.push(
            Problem::new(
                ProblemKind::InvalidName,
                format!("`{name}` is not a valid {what} name"),
            )
            .at(span, "invalid name")
            .help(help),
        );
    }

    /// Ranges a file cannot get wrong (the decoder refuses them) but code can.
    fn values(&mut self) {
        if !self.spans.is_built() {
            // From a file: the decoder already checked these, with better spans.
            return;
        }
        for (index, resource) in self.topology.resources.iter().enumerate() {
            let span = self.span(&format!("r{index}"));
            let mut bad = |what: String| {
                self.problems.push(
                    Problem::new(
                        ProblemKind::InvalidValue,
                        format!("resource `{}`: {what}", resource.name),
                    )
                    .at(span, "invalid value"),
                );
            };
            if !(1..=999).contains(&resource.replicas) {
                bad(format!(
                    "replicas {} is out of range: expected 1 to 999",
                    resource.replicas
                ));
            }
            if resource.strategy.max_parallel == 0 {
                bad("max-parallel 0: at least one instance must change at a time".to_owned());
            }
            for expose in resource.networks.iter().flat_map(|a| &a.expose) {
                if expose.port == 0 || expose.public == 0 {
                    bad("port 0 cannot be exposed".to_owned());
                }
            }
            if let Some(health) = &resource.strategy.health
                && (health.interval.as_millis() == 0 || health.timeout > health.interval)
            {
                bad(
                    "the health check interval must be above zero and at least its timeout"
                        .to_owned(),
                );
            }
        }
    }

    #[allow(clippy::too_many_lines)]
    fn references(&mut self) {
        let t = self.topology;
        let hosts: Vec<&str> = t.hosts.iter().map(|h| h.name.as_str()).collect();
        let networks: Vec<&str> = t.networks.iter().map(|n| n.name.as_str()).collect();
        let volumes: Vec<&str> = t.volumes.iter().map(|v| v.name.as_str()).collect();
        let resources: Vec<&str> = t.resources.iter().map(|r| r.name.as_str()).collect();
        let zones: Vec<&str> = t.zones.iter().map(|z| z.name.as_str()).collect();
        let secrets: Vec<&str> = t
            .secrets
            .as_ref()
            .map(|s| s.secrets.iter().map(String::as_str).collect())
            .unwrap_or_default();

        for (index, network) in t.networks.iter().enumerate() {
            if let Some(host) = &network.host
                && !hosts.contains(&host.as_str())
            {
                self.undefined(
                    "host",
                    host,
                    &hosts,
                    self.span(&format!("n{index}.host")),
                    "host NAME",
                );
            }
        }
        for (index, volume) in t.volumes.iter().enumerate() {
            if let Some(host) = &volume.host
                && !hosts.contains(&host.as_str())
            {
                self.undefined(
                    "host",
                    host,
                    &hosts,
                    self.span(&format!("v{index}")),
                    "host NAME",
                );
            }
        }
        for (index, resource) in t.resources.iter().enumerate() {
            let key = format!("r{index}");
            if !resource.host.is_empty() && !hosts.contains(&resource.host.as_str()) {
                let span = self.span(&format!("{key}.on")).or(self.span(&key));
                self.undefined("host", &resource.host, &hosts, span, "host NAME");
            }
            if let Some(placement) = &resource.placement {
                let host = t.hosts.iter().find(|h| h.name == resource.host);
                let span = self.span(&format!("{key}.placement"));
                match host.map(|h| h.cluster.as_ref()) {
                    Some(None) => self.problems.push(
                        Problem::new(
                            ProblemKind::Conflict,
                            format!("resource `{}` has a placement but host `{}` is not an Incus cluster", resource.name, resource.host),
                        )
                        .at(span, "placement on a single server")
                        .help("declare the cluster's members on the host: `host NAME remote=R { cluster { member \"node1\"; group \"fast\" } }`"),
                    ),
                    Some(Some(cluster)) => {
                        let (list, name, what) = match placement {
                            Placement::Member { name } => (&cluster.members, name, "cluster member"),
                            Placement::Group { name } => (&cluster.groups, name, "cluster group"),
                            Placement::Spread => (&cluster.members, &String::new(), ""),
                        };
                        if !what.is_empty() && !list.contains(name) {
                            let known: Vec<&str> = list.iter().map(String::as_str).collect();
                            self.undefined(what, name, &known, span, "member/group NAME in the host's cluster block");
                        }
                    }
                    None => {}
                }
            }
            for (n, attachment) in resource.networks.iter().enumerate() {
                if !networks.contains(&attachment.network.as_str()) {
                    let span = self.span(&format!("{key}.net{n}"));
                    self.undefined(
                        "network",
                        &attachment.network,
                        &networks,
                        span,
                        "network NAME subnet=\"10.181.0.1/24\"",
                    );
                }
            }
            for (n, mount) in resource.volumes.iter().enumerate() {
                if !volumes.contains(&mount.volume.as_str()) {
                    let span = self.span(&format!("{key}.vol{n}"));
                    self.undefined(
                        "volume",
                        &mount.volume,
                        &volumes,
                        span,
                        "volume NAME size=\"10GiB\"",
                    );
                }
            }
            for (n, var) in resource.environment.iter().enumerate() {
                if let EnvValue::SecretFromStore { secret } = &var.value
                    && !secrets.contains(&secret.as_str())
                {
                    let span = self.span(&format!("{key}.env{n}"));
                    self.undefined("secret", secret, &secrets, span, "secrets { secret NAME }");
                }
            }
            if let Some(zone) = &resource.zone
                && !zones.contains(&zone.as_str())
            {
                self.undefined(
                    "zone",
                    zone,
                    &zones,
                    self.span(&format!("{key}.zone")),
                    "zone NAME { ... }",
                );
            }
        }
        for (index, cluster) in t.clusters.iter().enumerate() {
            let key = format!("c{index}");
            for (n, node) in cluster.nodes.iter().enumerate() {
                if !resources.contains(&node.as_str()) {
                    self.undefined(
                        "resource",
                        node,
                        &resources,
                        self.span(&format!("{key}.node{n}")),
                        "resource NAME { ... }",
                    );
                }
            }
            if let Some(secret) = &cluster.cookie_secret
                && !secrets.contains(&secret.as_str())
            {
                self.undefined(
                    "secret",
                    secret,
                    &secrets,
                    self.span(&format!("{key}.cookie")),
                    "secrets { secret NAME }",
                );
            }
        }
        for (index, zone) in t.zones.iter().enumerate() {
            let key = format!("z{index}");
            for (n, network) in zone.networks.iter().enumerate() {
                if !networks.contains(&network.as_str()) {
                    self.undefined(
                        "network",
                        network,
                        &networks,
                        self.span(&format!("{key}.net{n}")),
                        "network NAME",
                    );
                }
            }
            for (n, rule) in zone.rules.iter().enumerate() {
                for name in [&rule.from, &rule.to].into_iter().flatten() {
                    if !resources.contains(&name.as_str()) {
                        self.undefined(
                            "resource",
                            name,
                            &resources,
                            self.span(&format!("{key}.rule{n}")),
                            "resource NAME { ... }",
                        );
                    }
                }
            }
        }
    }

    /// Two resources on one host may not take the same public port, unless both route
    /// HTTP or HTTPS by distinct host names.
    fn ports(&mut self) {
        struct Taken<'a> {
            resource: &'a str,
            protocol: Protocol,
            hostname: Option<&'a str>,
            address: Option<std::net::IpAddr>,
            at: (usize, usize, usize),
        }
        let mut taken: HashMap<(&str, u16), Vec<Taken<'_>>> = HashMap::new();
        for (index, resource) in self.topology.resources.iter().enumerate() {
            for (n, attachment) in resource.networks.iter().enumerate() {
                for (e, expose) in attachment.expose.iter().enumerate() {
                    let key = |(r, n, e): (usize, usize, usize)| format!("r{r}.net{n}.exp{e}");
                    let slot = taken
                        .entry((resource.host.as_str(), expose.public))
                        .or_default();
                    let clash = slot.iter().find(|other| {
                        let shareable = other.protocol.routes_by_hostname()
                            && expose.protocol.routes_by_hostname()
                            && other.protocol == expose.protocol;
                        !shareable
                            || other.hostname.is_none()
                            || expose.hostname.is_none()
                            || other.hostname == expose.hostname.as_deref()
                            // One port, one listener: shared, it has one address.
                            || other.address != expose.address
                    });
                    if let Some(other) = clash {
                        let both_http = other.protocol.routes_by_hostname()
                            && expose.protocol.routes_by_hostname();
                        let shared_but_for_address = other.protocol.routes_by_hostname()
                            && other.protocol == expose.protocol
                            && other.hostname.is_some()
                            && expose.hostname.is_some()
                            && other.hostname != expose.hostname.as_deref();
                        let help = if shared_but_for_address {
                            "resources that share a public port publish it on one address: give them the same `address=`, or use another public port".to_owned()
                        } else if both_http && other.protocol == expose.protocol {
                            "HTTP and HTTPS services can share a public port when each has its own `hostname=`: give them different host names, or use another public port".to_owned()
                        } else {
                            format!(
                                "choose another `public=` port; a {} port cannot be shared",
                                if both_http {
                                    "HTTP and an HTTPS"
                                } else {
                                    "TCP"
                                }
                            )
                        };
                        let message = if other.resource == resource.name {
                            format!(
                                "resource `{}` exposes public port {} twice on host `{}`",
                                resource.name, expose.public, resource.host
                            )
                        } else {
                            format!(
                                "resources `{}` and `{}` both take public port {} on host `{}`",
                                other.resource, resource.name, expose.public, resource.host
                            )
                        };
                        let first = self.span(&key(other.at));
                        self.problems.push(
                            Problem::new(ProblemKind::PortConflict, message)
                                .at(self.span(&key((index, n, e))), "port taken again here")
                                .also(first, "first taken here")
                                .help(help),
                        );
                        continue;
                    }
                    slot.push(Taken {
                        resource: &resource.name,
                        protocol: expose.protocol,
                        hostname: expose.hostname.as_deref(),
                        address: expose.address,
                        at: (index, n, e),
                    });
                }
            }
        }
    }

    fn strategies(&mut self) {
        for (index, resource) in self.topology.resources.iter().enumerate() {
            let key = format!("r{index}");
            let strategy = &resource.strategy;
            let strategy_key = || format!("{key}.strategy");
            let exposes = resource.networks.iter().any(|a| !a.expose.is_empty());
            if strategy.kind.switches_traffic() && !exposes {
                self.problems.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        format!("resource `{}` uses {} but exposes no port", resource.name, strategy.kind.as_str()),
                    )
                    .at(self.span(&strategy_key()), "needs traffic switching")
                    .help("blue-green and canary move traffic through the edge: add `network NAME { expose PORT public=PORT protocol=http }`, or use `strategy rolling`"),
                );
            }
            if strategy.canary.is_some() && strategy.kind != StrategyKind::Canary {
                self.problems.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        format!("a `canary` block on a {} strategy", strategy.kind.as_str()),
                    )
                    .at(
                        self.span(&format!("{key}.canary")),
                        "ignored by this strategy",
                    )
                    .help("use `strategy canary`, or remove the `canary` block"),
                );
            }
            if strategy.blue_green.is_some() && strategy.kind != StrategyKind::BlueGreen {
                self.problems.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        format!(
                            "a `blue-green` block on a {} strategy",
                            strategy.kind.as_str()
                        ),
                    )
                    .at(
                        self.span(&format!("{key}.blue-green")),
                        "ignored by this strategy",
                    )
                    .help("use `strategy blue-green`, or remove the `blue-green` block"),
                );
            }
            if strategy.kind == StrategyKind::Canary
                && let Some(canary) = &strategy.canary
            {
                let mut previous = 0;
                for (n, step) in canary.steps.iter().enumerate() {
                    if step.weight <= previous {
                        self.problems.push(
                                Problem::new(
                                    ProblemKind::InvalidValue,
                                    format!("canary step {} ({}%) does not rise above the step before it ({previous}%)", n + 1, step.weight),
                                )
                                .at(self.span(&format!("{key}.step{n}")), "not rising")
                                .help("canary weights rise step by step to 100, e.g. 10, 25, 50, 100"),
                            );
                    }
                    previous = step.weight;
                }
                if previous != 100 {
                    let last = canary.steps.len().saturating_sub(1);
                    self.problems.push(
                        Problem::new(
                            ProblemKind::InvalidValue,
                            format!("canary steps end at {previous}%, not 100%"),
                        )
                        .at(
                            self.span(&format!("{key}.step{last}"))
                                .or(self.span(&format!("{key}.canary"))),
                            "last step",
                        )
                        .help(
                            "add a final `step 100` so the canary takes all traffic when it passes",
                        ),
                    );
                }
            }
            if let Some(health) = &strategy.health
                && let Probe::Http { port: None, .. } = health.probe
                && !exposes
            {
                self.problems.push(
                            Problem::new(
                                ProblemKind::Missing,
                                format!("the http health check of `{}` has no port and the resource exposes none", resource.name),
                            )
                            .at(self.span(&format!("{key}.health")), "which port?")
                            .help("add `port=PORT` to the health check"),
                        );
            }
        }
    }

    fn containers_only(&mut self) {
        for (index, resource) in self.topology.resources.iter().enumerate() {
            if resource.kind != InstanceKind::Vm {
                continue;
            }
            let key = format!("r{index}");
            let mut settings = Vec::new();
            if resource.limits.processes.is_some() {
                settings.push(("limits processes", self.span(&format!("{key}.processes"))));
            }
            if let Some(security) = &resource.security {
                let used: BTreeSet<&str> = [
                    security.unprivileged.map(|_| "unprivileged"),
                    security.isolated_idmap.map(|_| "isolated-idmap"),
                    security.nesting.map(|_| "nesting"),
                    (!security.drop_capabilities.is_empty()).then_some("drop-capabilities"),
                    (!security.deny_syscalls.is_empty()).then_some("deny-syscalls"),
                    security.read_only_root.map(|_| "read-only-root"),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !used.is_empty() {
                    settings.push(("security", self.span(&format!("{key}.security"))));
                }
            }
            for (setting, span) in settings {
                self.problems.push(
                    Problem::new(
                        ProblemKind::Conflict,
                        format!("resource `{}` is a VM, but `{setting}` applies to containers only", resource.name),
                    )
                    .at(span, "container-only setting")
                    .also(self.span(&format!("{key}.type")), "declared a VM here")
                    .help("remove the setting, or make the resource `type=container`; a VM has its own kernel, so idmaps, capabilities, syscall filters, nesting and process limits do not apply"),
                );
            }
        }
    }
}
