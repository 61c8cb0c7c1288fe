//! Problems found in a topology, as `miette` diagnostics with the exact span.
//!
//! Validation never stops at the first problem: a [`TopologyError`] carries every
//! [`Problem`] found, each with its own label and help, as `#[related]` diagnostics over
//! the file's source. Only the CLI renders them.

use std::fmt;
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};

/// What kind of mistake a [`Problem`] is; callers and tests branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The text is not valid KDL v2.
    Syntax,
    /// A node the format does not know.
    UnknownNode,
    /// A property the node does not take.
    UnknownProperty,
    /// A required argument, property or child is missing.
    Missing,
    /// A value of the wrong type or out of range.
    InvalidValue,
    /// A duration or size with an unknown or missing unit.
    BadUnit,
    /// Two things with the same name.
    Duplicate,
    /// A name that refers to nothing declared.
    UndefinedReference,
    /// A name Incus would refuse, or a derived instance name that is too long.
    InvalidName,
    /// Two resources take the same public port on one host.
    PortConflict,
    /// Settings that contradict each other.
    Conflict,
    /// A feature that is not in the format on purpose (SSH credentials).
    Unsupported,
    /// A variable the environment does not set and that has no default.
    UnsetVariable,
    /// The topology asked for is not in the file.
    NoSuchTopology,
}

impl ProblemKind {
    /// The diagnostic code, e.g. `topology::unknown-node`.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::Syntax => "topology::syntax",
            Self::UnknownNode => "topology::unknown-node",
            Self::UnknownProperty => "topology::unknown-property",
            Self::Missing => "topology::missing",
            Self::InvalidValue => "topology::invalid-value",
            Self::BadUnit => "topology::bad-unit",
            Self::Duplicate => "topology::duplicate",
            Self::UndefinedReference => "topology::undefined",
            Self::InvalidName => "topology::invalid-name",
            Self::PortConflict => "topology::port-conflict",
            Self::Conflict => "topology::conflict",
            Self::Unsupported => "topology::unsupported",
            Self::UnsetVariable => "topology::unset-variable",
            Self::NoSuchTopology => "topology::no-such-topology",
        }
    }
}

/// One problem in a topology, with where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    kind: ProblemKind,
    message: String,
    span: Option<SourceSpan>,
    label: Option<String>,
    help: Option<String>,
    secondary: Option<Box<(SourceSpan, String)>>,
}

impl Problem {
    /// A problem of `kind` described by `message`, without a location yet.
    pub fn new(kind: ProblemKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            span: None,
            label: None,
            help: None,
            secondary: None,
        }
    }

    /// Points the problem at `span` with a short `label`.
    #[must_use]
    pub fn at(mut self, span: Option<SourceSpan>, label: impl Into<String>) -> Self {
        self.span = span;
        self.label = Some(label.into());
        self
    }

    /// Adds a hint on how to fix it.
    #[must_use]
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Adds a second location, e.g. where a duplicate was first declared.
    #[must_use]
    pub fn also(mut self, span: Option<SourceSpan>, label: impl Into<String>) -> Self {
        if let Some(span) = span {
            self.secondary = Some(Box::new((span, label.into())));
        }
        self
    }

    /// What kind of mistake this is.
    #[must_use]
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Where in the source it is, when it came from a file.
    #[must_use]
    pub fn span(&self) -> Option<SourceSpan> {
        self.span
    }

    /// The hint, if any.
    #[must_use]
    pub fn help_text(&self) -> Option<&str> {
        self.help.as_deref()
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

impl Diagnostic for Problem {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.help
            .as_ref()
            .map(|help| Box::new(help) as Box<dyn fmt::Display>)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.span?;
        let primary = LabeledSpan::new_primary_with_span(self.label.clone(), span);
        let secondary = self
            .secondary
            .iter()
            .map(|secondary| LabeledSpan::new_with_span(Some(secondary.1.clone()), secondary.0));
        Some(Box::new(std::iter::once(primary).chain(secondary)))
    }
}

/// A topology that cannot be used, with every problem found in it.
#[derive(Debug, Clone)]
pub struct TopologyError {
    source: Arc<NamedSource<String>>,
    problems: Vec<Problem>,
}

impl TopologyError {
    /// Problems found in `source`, a file or text named `origin`.
    #[must_use]
    pub fn new(origin: &str, source: &str, problems: Vec<Problem>) -> Self {
        Self {
            source: Arc::new(NamedSource::new(origin, source.to_owned())),
            problems,
        }
    }

    /// Problems in a topology built in code (no source text).
    #[must_use]
    pub fn built(problems: Vec<Problem>) -> Self {
        Self::new("<builder>", "", problems)
    }

    /// Every problem found, in source order.
    #[must_use]
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Whether any problem is of `kind`.
    #[must_use]
    pub fn has(&self, kind: ProblemKind) -> bool {
        self.problems.iter().any(|problem| problem.kind == kind)
    }

    /// The name of the file or text the problems are in.
    #[must_use]
    pub fn origin(&self) -> &str {
        self.source.name()
    }
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let plural = if count == 1 { "" } else { "s" };
        write!(
            f,
            "{}: {count} problem{plural} in the topology",
            self.source.name()
        )
    }
}

impl std::error::Error for TopologyError {}

impl Diagnostic for TopologyError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("topology::invalid"))
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        Some(&*self.source)
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(
            self.problems
                .iter()
                .map(|problem| problem as &dyn Diagnostic),
        ))
    }
}

/// The closest of `candidates` to `word`, when close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(word, candidate), candidate))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}

/// "did you mean `x`?" or the list of what is allowed.
pub(crate) fn suggestion(word: &str, candidates: &[&str], what: &str) -> String {
    match did_you_mean(word, candidates.iter().copied()) {
        Some(best) => format!("did you mean `{best}`?"),
        None if candidates.is_empty() => format!("this block takes no {what}"),
        None => format!("expected one of: {}", candidates.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn did_you_mean_finds_close_words_only() {
        assert_eq!(
            did_you_mean("replcas", ["replicas", "image"]),
            Some("replicas")
        );
        assert_eq!(did_you_mean("zzz", ["replicas", "image"]), None);
        assert_eq!(
            suggestion("imge", &["image", "limits"], "nodes"),
            "did you mean `image`?"
        );
        assert_eq!(
            suggestion("qqq", &["image", "limits"], "nodes"),
            "expected one of: image, limits"
        );
    }

    #[test]
    fn error_counts_problems_and_exposes_kinds() {
        let err = TopologyError::new(
            "t.kdl",
            "x",
            vec![Problem::new(ProblemKind::Duplicate, "twice")],
        );
        assert_eq!(err.to_string(), "t.kdl: 1 problem in the topology");
        assert!(err.has(ProblemKind::Duplicate));
        assert!(!err.has(ProblemKind::Syntax));
        assert_eq!(err.related().map(Iterator::count), Some(1));
    }
}
