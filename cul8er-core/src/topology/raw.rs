//! KDL text → a tree of nodes with byte spans, before any meaning is given to it.
//!
//! The read path uses `just-kdl`'s streaming reader: it is about twenty times faster
//! than `kdl` 6 and keeps byte spans (figures in `docs/topology.md`). Its errors are
//! precise (one span, the first mistake); this module words them for people and adds
//! the fix. `fmt` uses `kdl` 6 because its document model keeps comments.
//!
//! `just-kdl` 0.3.0 writes the characters it decodes one at a time (string escapes,
//! numbers) inside a `debug_assert!`, so a build without its debug assertions loses
//! them. The workspace keeps them on (`[profile.release.package.just-kdl]`); for builds
//! that do not (cul8er-core used as a dependency), a self-check on first use switches
//! to `kdl` 6 for reading too, slower but correct.

use std::ops::Range;
use std::sync::OnceLock;

use just_kdl::dom::{Event, Value};
use just_kdl::lexer::LexerError;
use just_kdl::reader::{Reader, ReaderError};
use miette::SourceSpan;

use super::diagnostic::{Problem, ProblemKind};

/// A node as written.
#[derive(Debug, Clone)]
pub(crate) struct RawNode {
    pub(crate) name: String,
    pub(crate) name_span: SourceSpan,
    pub(crate) entries: Vec<RawEntry>,
    pub(crate) children: Vec<RawNode>,
    pub(crate) has_children: bool,
}

/// An argument (`key` is `None`) or a property.
#[derive(Debug, Clone)]
pub(crate) struct RawEntry {
    pub(crate) key: Option<String>,
    pub(crate) value: RawValue,
    pub(crate) span: SourceSpan,
}

/// A KDL value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawValue {
    String(String),
    Integer(i128),
    Float(f64),
    Bool(bool),
    Null,
}

impl RawValue {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Self::String(_) => "a string",
            Self::Integer(_) => "an integer",
            Self::Float(_) => "a number",
            Self::Bool(_) => "a boolean",
            Self::Null => "#null",
        }
    }
}

fn span(range: &Range<usize>) -> SourceSpan {
    SourceSpan::from(range.start..range.end)
}

/// What the reader hands out as it goes, so that a large topology never exists as a
/// whole raw tree: each top-level node without its children, then its children one by
/// one, complete, then the end of it.
#[derive(Debug)]
pub(crate) enum Item {
    /// A top-level node with its entries; `children` is empty, `has_children` is set.
    Open(RawNode),
    /// A complete child of the top-level node last opened.
    Child(RawNode),
    /// The end of the top-level node last opened.
    Close,
}

/// Reads `source`, handing each [`Item`] to `sink`; stops at the first syntax error.
pub(crate) fn read(source: &str, sink: &mut dyn FnMut(Item)) -> Result<(), Vec<Problem>> {
    if fast_reader_is_sound() {
        read_fast(source, sink).map_err(|problem| vec![*problem])
    } else {
        for mut node in read_kdl6(source)? {
            let children = std::mem::take(&mut node.children);
            sink(Item::Open(node));
            for child in children {
                sink(Item::Child(child));
            }
            sink(Item::Close);
        }
        Ok(())
    }
}

/// Parses `source` into a whole tree of top-level nodes.
#[cfg(test)]
pub(crate) fn parse(source: &str) -> Result<Vec<RawNode>, Vec<Problem>> {
    let mut nodes: Vec<RawNode> = Vec::new();
    read(source, &mut |item| match item {
        Item::Open(node) => nodes.push(node),
        Item::Child(child) => {
            if let Some(parent) = nodes.last_mut() {
                parent.children.push(child);
            }
        }
        Item::Close => {}
    })?;
    Ok(nodes)
}

/// The nodes, entries and values of `source` without spans: two texts with the same
/// shape mean the same topology. `None` when `source` is not valid KDL.
pub(crate) fn shape(source: &str) -> Option<String> {
    fn write(node: &RawNode, out: &mut String) {
        out.push_str(&format!("{:?}", node.name));
        for entry in &node.entries {
            out.push_str(&format!(" {:?}={:?}", entry.key, entry.value));
        }
        if node.has_children {
            out.push('{');
            for child in &node.children {
                write(child, out);
            }
            out.push('}');
        }
        out.push(';');
    }
    let mut out = String::new();
    let mut open: Option<RawNode> = None;
    let result = read(source, &mut |item| match item {
        Item::Open(node) => open = Some(node),
        Item::Child(child) => {
            if let Some(node) = open.as_mut() {
                node.children.push(child);
            }
        }
        Item::Close => {
            if let Some(node) = open.take() {
                write(&node, &mut out);
            }
        }
    });
    result.ok().map(|()| out)
}

/// The syntax problems of `source`, empty when it is valid KDL.
pub(crate) fn syntax_problems(source: &str) -> Vec<Problem> {
    read(source, &mut |_| {}).err().unwrap_or_default()
}

/// Whether `just-kdl` decodes escapes and numbers in this build (see the module notes).
fn fast_reader_is_sound() -> bool {
    static SOUND: OnceLock<bool> = OnceLock::new();
    *SOUND.get_or_init(|| {
        let mut values = Vec::new();
        let read = read_fast("probe \"a\\tb\" 12 0x1f", &mut |item| {
            if let Item::Open(node) = item {
                values = node.entries.into_iter().map(|e| e.value).collect();
            }
        });
        let sound = read.is_ok()
            && values
                == [
                    RawValue::String("a\tb".to_owned()),
                    RawValue::Integer(12),
                    RawValue::Integer(31),
                ];
        if !sound {
            tracing::warn!(
                "just-kdl built without debug assertions decodes values wrongly; reading topologies with kdl 6"
            );
        }
        sound
    })
}

/// The same tree through `kdl` 6.
fn read_kdl6(source: &str) -> Result<Vec<RawNode>, Vec<Problem>> {
    fn convert(node: &kdl::KdlNode) -> Result<RawNode, Problem> {
        if let Some(ty) = node.ty() {
            return Err(type_annotation_problem(
                &(ty.span().offset()..ty.span().offset() + ty.span().len()),
            ));
        }
        let mut entries = Vec::with_capacity(node.entries().len());
        for entry in node.entries() {
            if let Some(ty) = entry.ty() {
                return Err(type_annotation_problem(
                    &(ty.span().offset()..ty.span().offset() + ty.span().len()),
                ));
            }
            let value = match entry.value() {
                kdl::KdlValue::String(text) => RawValue::String(text.clone()),
                kdl::KdlValue::Integer(int) => RawValue::Integer(*int),
                kdl::KdlValue::Float(float) => RawValue::Float(*float),
                kdl::KdlValue::Bool(value) => RawValue::Bool(*value),
                kdl::KdlValue::Null => RawValue::Null,
            };
            entries.push(RawEntry {
                key: entry.name().map(|key| key.value().to_owned()),
                value,
                span: entry.span(),
            });
        }
        let children = match node.children() {
            Some(document) => document
                .nodes()
                .iter()
                .map(convert)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        Ok(RawNode {
            name: node.name().value().to_owned(),
            name_span: node.name().span(),
            entries,
            children,
            has_children: node.children().is_some(),
        })
    }
    let document =
        kdl::KdlDocument::parse_v2(source).map_err(|error| kdl_problems(&error, source))?;
    document
        .nodes()
        .iter()
        .map(convert)
        .collect::<Result<_, _>>()
        .map_err(|problem| vec![problem])
}

fn read_fast(source: &str, sink: &mut dyn FnMut(Item)) -> Result<(), Box<Problem>> {
    // The open nodes, outermost first; a top-level node is handed out as soon as its
    // entries are read, and each of its children when complete.
    let mut stack: Vec<RawNode> = Vec::new();
    let mut top_opened = false;
    // Where each open `{` is, to point at the one left unclosed.
    let mut open_braces: Vec<Range<usize>> = Vec::new();
    for item in Reader::new(source.as_bytes()) {
        let (event, range) = item.map_err(|(error, range)| {
            Box::new(syntax_problem(source, &error, &range, open_braces.last()))
        })?;
        match event {
            Event::Node { r#type, name } => {
                if r#type.is_some() {
                    return Err(Box::new(type_annotation_problem(&range)));
                }
                stack.push(RawNode {
                    name: name.to_string(),
                    name_span: span(&range),
                    entries: Vec::new(),
                    children: Vec::new(),
                    has_children: false,
                });
            }
            Event::Entry(entry) => {
                if entry.r#type.is_some() {
                    return Err(Box::new(type_annotation_problem(&range)));
                }
                let value = match entry.value {
                    Value::String(text) => RawValue::String(text.to_string()),
                    Value::Number(number) => match i128::try_from(&number) {
                        Ok(int) => RawValue::Integer(int),
                        Err(_) => RawValue::Float(f64::try_from(&number).unwrap_or(f64::NAN)),
                    },
                    Value::Bool(value) => RawValue::Bool(value),
                    Value::Null => RawValue::Null,
                };
                if let Some(node) = stack.last_mut() {
                    node.entries.push(RawEntry {
                        key: entry.name.map(|key| key.to_string()),
                        value,
                        span: span(&range),
                    });
                }
            }
            Event::Children => {
                open_braces.push(range.clone());
                if let Some(node) = stack.last_mut() {
                    node.has_children = true;
                }
                if stack.len() == 1 {
                    let top = &mut stack[0];
                    sink(Item::Open(RawNode {
                        name: std::mem::take(&mut top.name),
                        name_span: top.name_span,
                        entries: std::mem::take(&mut top.entries),
                        children: Vec::new(),
                        has_children: true,
                    }));
                    top_opened = true;
                }
            }
            Event::End => {
                let Some(node) = stack.pop() else {
                    continue;
                };
                if node.has_children {
                    open_braces.pop();
                }
                match stack.len() {
                    0 => {
                        if !top_opened {
                            sink(Item::Open(node));
                        }
                        sink(Item::Close);
                        top_opened = false;
                    }
                    1 => sink(Item::Child(node)),
                    _ => {
                        if let Some(parent) = stack.last_mut() {
                            parent.children.push(node);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// `range` inside `source` and on character boundaries, so it can be shown.
fn clamp(source: &str, range: &Range<usize>) -> SourceSpan {
    let mut start = range.start.min(source.len());
    while !source.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = range.end.clamp(start, source.len());
    while !source.is_char_boundary(end) {
        end += 1;
    }
    SourceSpan::from(start..end)
}

fn type_annotation_problem(range: &Range<usize>) -> Problem {
    Problem::new(
        ProblemKind::Syntax,
        "type annotations are not used in topology files",
    )
    .at(Some(span(range)), "annotated here")
    .help("remove the `(type)` before the name or value")
}

/// Words a reader error for people: what is wrong, where, and how to fix it.
fn syntax_problem(
    source: &str,
    error: &ReaderError,
    range: &Range<usize>,
    open_brace: Option<&Range<usize>>,
) -> Problem {
    let at = |pos: usize| Some(clamp(source, &(pos..pos + 1)));
    let span = clamp(source, range);
    let whole = Some(span);
    let text = source
        .get(span.offset()..span.offset() + span.len())
        .unwrap_or("");
    let problem = |message: &str| Problem::new(ProblemKind::Syntax, message.to_owned());
    match error {
        ReaderError::Lexer(lexer) => match lexer {
            LexerError::InvalidEscape(pos) | LexerError::BadUnicodeEscape(pos) => {
                problem("invalid escape in a string")
                    .at(Some(clamp(source, &(*pos..*pos + 2))), "unknown escape")
                    .help("escapes are \\n \\t \\\\ \\\" and \\u{41}; for a literal backslash write \\\\ or use a raw string: #\"a\\b\"#")
            }
            LexerError::UnexpectedKeyword => problem(&format!("bare keyword `{text}`"))
                .at(whole, "not a value in KDL v2")
                .help("KDL v2 writes #true, #false and #null; quote it (\"false\") for a string"),
            LexerError::InvalidNumber => problem(&format!("`{text}` is not a number"))
                .at(whole, "invalid number")
                .help("numbers look like 3, 2.5, 1_000 or 0x1f; quote it for a string"),
            LexerError::InvalidOperator | LexerError::InvalidCharacter(_) => {
                problem("a character that cannot appear here")
                    .at(whole, "not allowed in a bare name")
                    .help("names and values with characters other than letters, digits and `-_.:/` must be quoted: \"we[b]\"")
            }
            LexerError::UnexpectedStringNewline(_) => problem("the string is not closed on its line")
                .at(whole, "no closing quote")
                .help("close the string with `\"`; a string over several lines starts with `\"\"\"` and a newline"),
            LexerError::UnexpectedEof(_) => problem("the file ends inside a comment or a string")
                .at(
                    at(span.offset() + text.find(['/', '"', '#']).unwrap_or(0)),
                    "opened here and never closed",
                )
                .help("close the `/* ... */` comment or the string"),
            _ => problem(&format!("invalid KDL: {error}")).at(whole, "here"),
        },
        ReaderError::UnclosedOpen => problem("a `{` is never closed")
            .at(open_brace.map(|brace| clamp(source, brace)).or(at(range.start)), "opened here")
            .help("add the matching `}`"),
        ReaderError::UnmatchedClose => problem("a `}` closes nothing")
            .at(whole, "no `{` to close")
            .help("remove it, or check the braces above it"),
        ReaderError::ExpectedBlock => problem("a node has at most one `{ ... }` block")
            .at(whole, "second block")
            .help("merge the two blocks into one"),
        ReaderError::ExpectedValue(_) => problem(&format!("expected a value, found {text:?}"))
            .at(whole, "a value must come here")
            .help("a property is `key=value` with no spaces around `=`, e.g. on=local"),
        _ => problem(&format!("invalid KDL: {error}")).at(whole, "here"),
    }
}

/// `kdl` 6's diagnostics for text it refuses; `fmt` needs them when `just-kdl` and
/// `kdl` disagree on a document.
pub(crate) fn kdl_problems(error: &kdl::KdlError, source: &str) -> Vec<Problem> {
    error
        .diagnostics
        .iter()
        .map(|diagnostic| {
            let message = diagnostic
                .message
                .clone()
                .unwrap_or_else(|| "invalid KDL".to_owned());
            let label = diagnostic
                .label
                .clone()
                .unwrap_or_else(|| "here".to_owned());
            let start = diagnostic.span.offset().min(source.len());
            let end = (start + diagnostic.span.len()).min(source.len());
            let mut problem = Problem::new(ProblemKind::Syntax, message)
                .at(Some(SourceSpan::from(start..end)), label);
            if let Some(help) = &diagnostic.help {
                problem = problem.help(help.clone());
            }
            problem
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_tree_with_spans() {
        let source = "a 1 key=\"v\" {\n  b #true\n}\nc";
        let nodes = parse(source).unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0].name, "a");
        assert_eq!(nodes[0].entries.len(), 2);
        assert_eq!(nodes[0].entries[0].value, RawValue::Integer(1));
        assert_eq!(nodes[0].entries[1].key.as_deref(), Some("key"));
        let prop = nodes[0].entries[1].span;
        assert_eq!(
            &source[prop.offset()..prop.offset() + prop.len()],
            "key=\"v\""
        );
        assert_eq!(nodes[0].children[0].name, "b");
        assert_eq!(nodes[0].children[0].entries[0].value, RawValue::Bool(true));
        assert!(nodes[0].has_children);
        assert!(!nodes[1].has_children);
    }

    #[test]
    fn slashdash_removes_nodes_and_entries() {
        let nodes = parse("/-a 1\nb /-2 3").unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0].entries.len(), 1);
        assert_eq!(nodes[0].entries[0].value, RawValue::Integer(3));
    }

    #[test]
    fn syntax_errors_carry_a_span() {
        let problems = parse("a {\n  b \"unterminated\n}").unwrap_err();
        assert!(!problems.is_empty());
        assert!(
            problems
                .iter()
                .all(|p| p.kind() == ProblemKind::Syntax && p.span().is_some())
        );
    }

    #[test]
    fn this_build_decodes_values_with_the_fast_reader() {
        assert!(
            fast_reader_is_sound(),
            "just-kdl needs its debug assertions: see the module notes"
        );
    }

    #[test]
    fn both_readers_build_the_same_tree() {
        let source =
            "a 1 key=\"v\\n\" 2.5 #null {\n  b #true 0x1f\n}\nc \"\"\"\n  multi\n  line\n  \"\"\"";
        let fast = parse(source).unwrap();
        let slow = read_kdl6(source).unwrap();
        let show = |nodes: &[RawNode]| format!("{nodes:?}");
        assert_eq!(show(&fast), show(&slow));
    }

    #[test]
    fn type_annotations_are_refused() {
        let problems = parse("(t)a 1").unwrap_err();
        assert!(problems[0].message().contains("type annotations"));
    }
}
