//! `cul8er fmt`: the canonical layout of a topology file, comments kept.
//!
//! Formatting uses `kdl` 6, whose document model keeps comments and whitespace; its
//! autoformat re-indents with four spaces, normalises spacing and writes strings bare
//! where KDL allows. Three things are repaired around it: it drops blank lines (they
//! group a file into sections: one is put back wherever the author had any), comments
//! at the end of a node's line and comments between entries (put back where they
//! were). Two checks guard the result: it must read as the same topology, and it must
//! hold as many comments as the source; otherwise `fmt` refuses and changes nothing.
//! Running it twice gives the same text.

use kdl::{KdlDocument, KdlEntryFormat, KdlNode};
use miette::SourceSpan;

use super::diagnostic::{Problem, ProblemKind, TopologyError};
use super::raw;

/// `source` in canonical form, comments kept.
///
/// # Errors
///
/// A [`TopologyError`] with the syntax problems when `source` is not valid KDL v2.
pub fn format_kdl(source: &str, origin: &str) -> Result<String, TopologyError> {
    let mut document = KdlDocument::parse_v2(source).map_err(|error| {
        // The read path's wording first; kdl's own when only kdl refuses the text.
        let mut problems = raw::syntax_problems(source);
        if problems.is_empty() {
            problems = raw::kdl_problems(&error, source);
        }
        TopologyError::new(origin, source, problems)
    })?;
    let mut saved = Vec::new();
    visit(&mut document, &mut |node, first| {
        saved.push(Saved::take(node, first));
    });
    // The default configuration: four spaces, comments kept.
    document.autoformat();
    let mut saved = saved.into_iter();
    visit(&mut document, &mut |node, _| {
        if let Some(saved) = saved.next() {
            saved.restore(node);
        }
    });
    let mut text = indent_slashdashed(&document.to_string());
    if !text.ends_with('\n') {
        text.push('\n');
    }
    verify(source, &text, origin)?;
    Ok(text)
}

/// What autoformat would lose from one node.
struct Saved {
    blank_before: bool,
    line_comment: Option<String>,
    entry_comments: Vec<Option<String>>,
}

impl Saved {
    fn take(node: &KdlNode, first: bool) -> Self {
        let line_comment = node
            .format()
            .map(|format| format.terminator.trim_end_matches('\n').trim())
            .filter(|comment| comment.starts_with("//"))
            .map(str::to_owned);
        let entry_comments = node
            .entries()
            .iter()
            .map(|entry| {
                entry
                    .format()
                    .map(|format| format.leading.trim())
                    .filter(|leading| leading.starts_with("/*"))
                    .map(str::to_owned)
            })
            .collect();
        Self {
            blank_before: !first && has_blank_line(node),
            line_comment,
            entry_comments,
        }
    }

    fn restore(self, node: &mut KdlNode) {
        for (entry, comment) in node.entries_mut().iter_mut().zip(self.entry_comments) {
            if let Some(comment) = comment {
                // Autoformat cleared the entry's format; write it back with the comment.
                let value_repr = entry.value().to_string();
                entry.set_format(KdlEntryFormat {
                    value_repr,
                    leading: format!(" {comment} "),
                    ..KdlEntryFormat::default()
                });
            }
        }
        if let Some(format) = node.format_mut() {
            if self.blank_before {
                format.leading.insert(0, '\n');
            }
            if let Some(comment) = self.line_comment {
                format.before_terminator = " ".to_owned();
                format.terminator = format!("{comment}\n");
            }
        }
    }
}

/// Autoformat keeps a `/-` commented-out node as text but starts it with one space;
/// this puts it at the indentation of its siblings.
fn indent_slashdashed(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut indent, mut opens) = (0, false);
    for line in text.lines() {
        let trimmed = line.trim_start();
        let fixed = if trimmed.starts_with("/-") && line.len() - trimmed.len() == 1 {
            let wanted = if opens { indent + 4 } else { indent };
            format!("{}{trimmed}", " ".repeat(wanted))
        } else {
            line.to_owned()
        };
        let body = fixed.trim_start();
        if !body.is_empty() {
            indent = fixed.len() - body.len();
            opens = body.ends_with('{');
        }
        out.push_str(&fixed);
        out.push('\n');
    }
    out
}

/// Refuses output that reads differently from the source or lost a comment.
fn verify(source: &str, formatted: &str, origin: &str) -> Result<(), TopologyError> {
    let before = raw::shape(source);
    let after = raw::shape(formatted);
    let problem = if before != after {
        Some("formatting would change what the file means")
    } else if comment_marks(source) != comment_marks(formatted) {
        Some("formatting would drop a comment")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(message) => Err(TopologyError::new(
            origin,
            source,
            vec![
                Problem::new(ProblemKind::Unsupported, message)
                    .at(Some(SourceSpan::from(0..0)), "file left unchanged")
                    .help("the KDL formatter cannot lay out this file safely (a comment after `}` or inside an entry); move the comment to its own line and run `cul8er fmt` again"),
            ],
        )),
    }
}

/// How many `//` and `/*` the text holds (strings with them stay quoted either way).
fn comment_marks(text: &str) -> usize {
    text.matches("//").count() + text.matches("/*").count()
}

/// Calls `f` on every node, depth first, with whether it is the first in its block.
fn visit(document: &mut KdlDocument, f: &mut dyn FnMut(&mut KdlNode, bool)) {
    for (index, node) in document.nodes_mut().iter_mut().enumerate() {
        f(node, index == 0);
        if let Some(children) = node.children_mut() {
            visit(children, f);
        }
    }
}

/// Whether the text before `node` (after the previous node's line) holds an empty line.
fn has_blank_line(node: &KdlNode) -> bool {
    let Some(format) = node.format() else {
        return false;
    };
    let before_comments = format.leading.split(['/']).next().unwrap_or_default();
    before_comments.contains('\n')
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSY: &str = "// the demo\ntopology demo   {\n  host   local // the only host\n\n\n  resource web {\n image \"cul8er-busybox\"\n      /* three of them */ replicas 3\n  limits { memory /* at most */ \"64MiB\"; }\n  }\n}\n";

    #[test]
    fn fmt_keeps_comments_and_groups_and_is_idempotent() {
        let once = format_kdl(MESSY, "t.kdl").unwrap();
        assert_eq!(
            once,
            "// the demo\ntopology demo {\n    host local // the only host\n\n    resource web {\n        image cul8er-busybox\n        /* three of them */\n        replicas 3\n        limits {\n            memory /* at most */ \"64MiB\"\n        }\n    }\n}\n"
        );
        assert_eq!(format_kdl(&once, "t.kdl").unwrap(), once);
    }

    #[test]
    fn fmt_refuses_rather_than_lose_a_comment() {
        let source = "topology demo {\n    resource web { image \"a\"; } // keep me\n}\n";
        match format_kdl(source, "t.kdl") {
            Ok(text) => assert!(text.contains("// keep me"), "{text}"),
            Err(err) => assert!(
                err.problems()[0].message().contains("formatting would")
                    || err.has(ProblemKind::Syntax),
                "{err:?}"
            ),
        }
    }

    #[test]
    fn fmt_indents_commented_out_nodes_like_their_siblings() {
        let source = "topology t {\n    resource a { image \"x\"; }\n    /-resource b {\n        image \"y\"\n    }\n}\n/-topology old { }\n";
        let once = format_kdl(source, "t.kdl").unwrap();
        assert_eq!(
            once,
            "topology t {\n    resource a {\n        image x\n    }\n    /-resource b {\n        image \"y\"\n    }\n}\n/-topology old { }\n"
        );
        assert_eq!(format_kdl(&once, "t.kdl").unwrap(), once);
    }

    #[test]
    fn fmt_refuses_invalid_text_with_a_diagnostic() {
        let err = format_kdl("topology demo {", "t.kdl").unwrap_err();
        assert_eq!(err.problems().len(), 1);
        assert!(err.problems()[0].message().contains("never closed"));
    }
}
