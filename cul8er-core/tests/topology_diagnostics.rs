//! Every broken topology in `fixtures/topologies/bad/` is refused with the problem its
//! first line names (`// expect: CODE`), and the rendered diagnostic is pinned by an
//! insta snapshot. Rendering is miette's graphical handler, no colour, fixed width,
//! so the snapshots are stable.

// Test helpers panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cul8er_core::topology::{self, LoadOptions};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

fn bad_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/topologies/bad")
}

fn env(name: &str) -> Option<String> {
    (name == "APP_VERSION").then(|| "1.0.0".to_owned())
}

fn render(diagnostic: &dyn Diagnostic) -> String {
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    handler.render_report(&mut out, diagnostic).unwrap();
    out
}

/// The value of a `// key: value` header line.
fn header<'a>(source: &'a str, key: &str) -> Option<&'a str> {
    source
        .lines()
        .take_while(|line| line.starts_with("//"))
        .find_map(|line| {
            line.strip_prefix("// ")?
                .strip_prefix(key)?
                .strip_prefix(": ")
        })
}

#[test]
fn every_bad_topology_is_refused_with_its_diagnostic() {
    let mut files: Vec<PathBuf> = fs_err::read_dir(bad_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "kdl"))
        .collect();
    files.sort();
    assert!(files.len() >= 40, "only {} bad fixtures", files.len());

    let mut syntax = 0;
    for path in &files {
        let name = path.file_stem().unwrap().to_str().unwrap();
        let source = fs_err::read_to_string(path).unwrap();
        let expected = header(&source, "expect")
            .unwrap_or_else(|| panic!("{name}: first line must be `// expect: CODE`"));
        let mut options = LoadOptions::new(&env);
        if let Some(selected) = header(&source, "topology") {
            options = options.topology(selected);
        }
        let origin = format!("bad/{name}.kdl");
        let err = match topology::parse(&source, &origin, &options) {
            Ok(_) => panic!("{name}: accepted, but it should fail with {expected}"),
            Err(err) => err,
        };
        let codes: Vec<&str> = err.problems().iter().map(|p| p.kind().code()).collect();
        assert!(
            codes.contains(&expected),
            "{name}: expected {expected}, got {codes:?}"
        );
        // Problems from a file point into it (only "no such topology" has no place).
        for problem in err.problems() {
            if problem.kind() != topology::ProblemKind::NoSuchTopology {
                assert!(problem.span().is_some(), "{name}: `{problem}` has no span");
            }
        }
        if expected == "topology::syntax" {
            syntax += 1;
        }
        insta::with_settings!({
            snapshot_path => "snapshots/bad",
            prepend_module_to_snapshot => false,
            description => format!("fixtures/topologies/bad/{name}.kdl"),
            omit_expression => true,
        }, {
            insta::assert_snapshot!(name, render(&err));
        });
    }
    assert!(syntax >= 8, "only {syntax} syntax error classes");
}

#[test]
fn many_problems_are_reported_in_one_run() {
    let source = fs_err::read_to_string(bad_dir().join("many-problems-at-once.kdl")).unwrap();
    let err = topology::parse(&source, "many.kdl", &LoadOptions::new(&env)).unwrap_err();
    let codes: Vec<&str> = err.problems().iter().map(|p| p.kind().code()).collect();
    assert!(err.problems().len() >= 8, "{codes:?}");
    for code in [
        "topology::invalid-name",
        "topology::undefined",
        "topology::unknown-node",
        "topology::invalid-value",
        "topology::bad-unit",
        "topology::unknown-property",
    ] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    // In source order.
    let offsets: Vec<usize> = err
        .problems()
        .iter()
        .filter_map(|p| p.span().map(|s| s.offset()))
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]), "{offsets:?}");
}
