//! Topology files: the KDL format, the typed model, the builder and validation.
//!
//! A topology says what should run where. It is read in three steps: KDL text → raw
//! nodes with spans (`raw`) → the typed model with every value checked (`decode`) →
//! the rules that span blocks (`check`). Every problem found on the way is collected;
//! the caller gets either a valid [`Topology`] or a [`TopologyError`] that lists them
//! all as `miette` diagnostics pointing into the file. `docs/topology.md` is the
//! format reference.
//!
//! ```
//! use cul8er_core::topology::{self, LoadOptions};
//!
//! let source = r#"
//!     topology demo {
//!         variable version env="APP_VERSION" default="1.0.0"
//!         resource web {
//!             image "cul8er-busybox"
//!             replicas 3
//!             release web version="${version}" { start "httpd -f -p 8080" }
//!         }
//!     }
//! "#;
//! let env = |name: &str| (name == "APP_VERSION").then(|| "2.0.0".to_owned());
//! let demo = topology::parse_one(source, "cul8er.kdl", &LoadOptions::new(&env))?;
//! assert_eq!(demo.resources[0].replicas, 3);
//! assert_eq!(demo.resources[0].release.as_ref().map(|r| r.version.as_str()), Some("2.0.0"));
//! assert_eq!(demo.resources[0].instance_names(&demo.name)[0], "demo-web-1");
//! # Ok::<(), cul8er_core::topology::TopologyError>(())
//! ```

mod builder;
mod check;
mod decode;
mod diagnostic;
mod format;
mod model;
pub mod names;
mod raw;
pub mod units;

use std::collections::BTreeSet;
use std::path::Path;

pub use builder::TopologyBuilder;
pub use decode::EnvLookup;
pub use diagnostic::{Problem, ProblemKind, TopologyError};
pub use format::format_kdl;
pub use model::*;
pub use units::{ByteSize, Duration, UnitError};

use diagnostic::suggestion;

/// How to read a topology file.
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// The topology to validate; `None` validates every topology in the file.
    pub topology: Option<&'a str>,
    /// Looks up `variable NAME env="VAR"` in the operator's environment. Passed in so
    /// that callers decide (the CLI passes the process environment, tests a map).
    pub env: EnvLookup<'a>,
}

impl std::fmt::Debug for LoadOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

impl<'a> LoadOptions<'a> {
    /// Every topology, with variables looked up through `env`.
    #[must_use]
    pub fn new(env: EnvLookup<'a>) -> Self {
        Self {
            topology: None,
            env,
        }
    }

    /// Only the topology named `name`.
    #[must_use]
    pub fn topology(mut self, name: &'a str) -> Self {
        self.topology = Some(name);
        self
    }
}

/// Parses and validates the topologies in `source` (named `origin` in diagnostics).
///
/// With [`LoadOptions::topology`] set, only that topology is validated (its variables
/// looked up) and returned; the others need only be valid KDL.
///
/// # Errors
///
/// A [`TopologyError`] listing every problem: syntax, unknown nodes or properties,
/// bad values, broken references, and the named topology missing from the file.
pub fn parse(
    source: &str,
    origin: &str,
    options: &LoadOptions<'_>,
) -> Result<Vec<Topology>, TopologyError> {
    // Spans for the cross-block checks are recorded only when there is a problem to
    // point at: a valid file is read once, a file with problems twice.
    parse_pass(source, origin, options, false)
        .or_else(|_| parse_pass(source, origin, options, true))
}

fn parse_pass(
    source: &str,
    origin: &str,
    options: &LoadOptions<'_>,
    record_spans: bool,
) -> Result<Vec<Topology>, TopologyError> {
    let mut problems = Vec::new();
    let mut names: Vec<(String, miette::SourceSpan)> = Vec::new();
    let mut any_topology = false;
    let mut topologies = Vec::new();
    // The topology being decoded, while its children stream in.
    let mut current: Option<(decode::Decoder<'_>, Topology)> = None;
    raw::read(source, &mut |item| match item {
        raw::Item::Open(node) => {
            current = None;
            if node.name != "topology" {
                problems.push(unknown_top_level(&node));
                return;
            }
            any_topology = true;
            let name = node
                .entries
                .iter()
                .find(|e| e.key.is_none())
                .and_then(|e| match &e.value {
                    raw::RawValue::String(name) => Some(name.clone()),
                    _ => None,
                });
            if let Some(name) = &name {
                if let Some((_, first)) = names.iter().find(|(seen, _)| seen == name) {
                    problems.push(
                        Problem::new(
                            ProblemKind::Duplicate,
                            format!("topology `{name}` is declared twice"),
                        )
                        .at(Some(node.name_span), "declared again here")
                        .also(Some(*first), "first declared here")
                        .help("topology names must be unique in a file"),
                    );
                    return;
                }
                names.push((name.clone(), node.name_span));
            }
            if options.topology.is_none() || options.topology == name.as_deref() {
                let mut decoder = decode::Decoder::new(options.env, record_spans);
                let topology = decoder.start_topology(&node);
                current = Some((decoder, topology));
            }
        }
        raw::Item::Child(child) => {
            if let Some((decoder, topology)) = current.as_mut() {
                decoder.topology_child(topology, &child);
            }
        }
        raw::Item::Close => {
            if let Some((mut decoder, mut topology)) = current.take() {
                decoder.finish_topology(&mut topology);
                problems.append(&mut decoder.problems);
                problems.extend(check::check(&topology, &decoder.spans));
                topologies.push(topology);
            }
        }
    })
    .map_err(|syntax| TopologyError::new(origin, source, syntax))?;
    if !any_topology && problems.is_empty() {
        problems.push(
            Problem::new(ProblemKind::Missing, "the file declares no topology")
                .at(Some(miette::SourceSpan::from(0..0)), "empty")
                .help("start with `topology NAME { resource web { image \"alpine/3.19\" } }`"),
        );
    }
    if let Some(wanted) = options.topology
        && topologies.is_empty()
        && any_topology
    {
        let mut known: Vec<&str> = names.iter().map(|(name, _)| name.as_str()).collect();
        known.sort_unstable();
        problems.push(
            Problem::new(
                ProblemKind::NoSuchTopology,
                format!("the file has no topology `{wanted}`"),
            )
            .help(match suggestion(wanted, &known, "topologies") {
                s if s.starts_with("did you") => s,
                _ => format!("topologies in the file: {}", known.join(", ")),
            }),
        );
    }
    if problems.is_empty() {
        Ok(topologies)
    } else {
        problems.sort_by_key(|p| p.span().map_or(usize::MAX, |s| s.offset()));
        Err(TopologyError::new(origin, source, problems))
    }
}

fn unknown_top_level(node: &raw::RawNode) -> Problem {
    let help = if decode_child_of_topology(&node.name) {
        format!(
            "`{}` belongs inside a topology: `topology NAME {{ {} ... }}`",
            node.name, node.name
        )
    } else {
        suggestion(&node.name, &["topology"], "nodes")
    };
    Problem::new(
        ProblemKind::UnknownNode,
        format!("unknown top-level node `{}`", node.name),
    )
    .at(Some(node.name_span), "not known here")
    .help(help)
}

fn decode_child_of_topology(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "resource"
            | "network"
            | "volume"
            | "variable"
            | "cluster"
            | "security"
            | "secrets"
            | "certificates"
            | "zone"
    )
}

/// Parses `source` and returns one topology: the one named in `options`, or the only
/// one in the file.
///
/// # Errors
///
/// Every problem in the topology, or a [`ProblemKind::NoSuchTopology`] problem when
/// the file holds several topologies and none was named.
pub fn parse_one(
    source: &str,
    origin: &str,
    options: &LoadOptions<'_>,
) -> Result<Topology, TopologyError> {
    let mut topologies = parse(source, origin, options)?;
    if topologies.len() == 1 {
        return Ok(topologies.remove(0));
    }
    let names: Vec<&str> = topologies.iter().map(|t| t.name.as_str()).collect();
    Err(TopologyError::new(
        origin,
        source,
        vec![
            Problem::new(
                ProblemKind::NoSuchTopology,
                format!("the file holds {} topologies; say which one", names.len()),
            )
            .help(format!(
                "pick one with `--topology NAME`: {}",
                names.join(", ")
            )),
        ],
    ))
}

/// Why a topology file could not be loaded.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read the topology file")]
    #[diagnostic(
        code(topology::read),
        help("check the path; `cul8er` looks for ./cul8er.kdl by default")
    )]
    Read(#[source] std::io::Error),
    /// The file has problems.
    #[error(transparent)]
    #[diagnostic(transparent)]
    Invalid(TopologyError),
}

/// Reads and validates the topology file at `path`.
///
/// # Errors
///
/// [`LoadError::Read`] when the file cannot be read (the error names the file),
/// [`LoadError::Invalid`] with every problem otherwise.
pub fn load(path: &Path, options: &LoadOptions<'_>) -> Result<Vec<Topology>, LoadError> {
    let source = fs_err::read_to_string(path).map_err(LoadError::Read)?;
    parse(&source, &path.display().to_string(), options).map_err(LoadError::Invalid)
}

impl Topology {
    /// Starts building a topology in code; see [`TopologyBuilder`].
    #[must_use]
    pub fn builder(name: impl Into<String>) -> TopologyBuilder {
        TopologyBuilder::new(name)
    }

    /// The blocks this topology uses whose capability has not landed yet; plan and
    /// apply refuse the topology, naming each, until it does.
    #[must_use]
    pub fn later_capabilities(&self) -> BTreeSet<LaterCapability> {
        let mut used = BTreeSet::new();
        let store_secrets = self.resources.iter().any(|r| {
            r.environment
                .iter()
                .any(|v| matches!(v.value, EnvValue::SecretFromStore { .. }))
        });
        if self.secrets.is_some() || store_secrets {
            used.insert(LaterCapability::SecretStore);
        }
        if self.certificates.is_some() {
            used.insert(LaterCapability::Certificates);
        }
        if !self.zones.is_empty() || self.resources.iter().any(|r| r.zone.is_some()) {
            used.insert(LaterCapability::Zones);
        }
        if !self.clusters.is_empty() {
            used.insert(LaterCapability::AppClusters);
        }
        if self.security.is_some() || self.resources.iter().any(|r| r.security.is_some()) {
            used.insert(LaterCapability::Security);
        }
        used
    }

    /// The host named `name`.
    #[must_use]
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The resource named `name`.
    #[must_use]
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }
}

impl Resource {
    /// The Incus names of its instances, in replica order (see [`names`]).
    #[must_use]
    pub fn instance_names(&self, topology: &str) -> Vec<String> {
        (1..=self.replicas)
            .map(|replica| names::instance_name(topology, &self.name, replica))
            .collect()
    }

    /// Limits Incus will accept but not enforce on a storage pool of `driver`; the plan
    /// warns about each. Incus skips a root disk quota on `dir` pools (it logs "skipping
    /// set quota") unless project quotas are set up.
    #[must_use]
    pub fn unenforced_limits(&self, driver: &str) -> Vec<&'static str> {
        let mut unenforced = Vec::new();
        if driver == "dir" && self.limits.disk.is_some() {
            unenforced.push("disk");
        }
        unenforced
    }

    /// Whether any of its ports is published.
    #[must_use]
    pub fn exposes(&self) -> bool {
        self.networks.iter().any(|a| !a.expose.is_empty())
    }
}
