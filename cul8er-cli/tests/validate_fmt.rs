//! `cul8er validate` and `cul8er fmt` as a user runs them: the real binary, real files,
//! exit codes and output streams.

// Test helpers panic on unexpected output: that is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cul8er(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cul8er"))
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("APP_VERSION")
        .env_remove("DEMO_VERSION")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_demo_and_summarises_it() {
    let demo = root().join("examples/demo.kdl");
    let out = cul8er(&["validate", demo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("topology `demo` is valid: 1 host, 3 resources, 5 instances"),
        "{stdout}"
    );
}

#[test]
fn validate_prints_every_problem_and_exits_1() {
    let bad = root().join("fixtures/topologies/bad/many-problems-at-once.kdl");
    let out = cul8er(&["validate", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("problems in the topology"), "{stderr}");
    assert!(stderr.contains("did you mean `image`?"), "{stderr}");
    assert!(stderr.contains("did you mean `local`?"), "{stderr}");
    assert!(stderr.contains("many-problems-at-once.kdl:5:"), "{stderr}");
    // NO_COLOR: no escape sequences.
    assert!(!stderr.contains('\u{1b}'), "colour despite NO_COLOR");
    assert!(out.stdout.is_empty());
}

#[test]
fn validate_json_prints_the_model_and_json_diagnostics() {
    let basic = root().join("examples/basic.kdl");
    let out = cul8er(&[
        "validate",
        basic.to_str().unwrap(),
        "--topology",
        "staging",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["topologies"][0]["name"], "staging");
    assert_eq!(
        json["topologies"][0]["resources"][0]["release"]["version"],
        "main"
    );
    assert_eq!(json["topologies"].as_array().unwrap().len(), 1);

    // Production needs APP_VERSION: a JSON diagnostic on stdout, exit 1.
    let out = cul8er(&["validate", basic.to_str().unwrap(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let related = report["related"].as_array().unwrap();
    assert_eq!(related[0]["code"], "topology::unset-variable");
}

#[test]
fn validate_names_a_missing_file_and_exits_1() {
    let out = cul8er(&["validate", "/nonexistent/cul8er.kdl"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/cul8er.kdl"));
}

#[test]
fn validate_with_an_unknown_topology_says_which_exist() {
    let basic = root().join("examples/basic.kdl");
    let out = cul8er(&["validate", basic.to_str().unwrap(), "-t", "stagin"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("did you mean `staging`?"));
}

#[test]
fn fmt_rewrites_keeps_comments_and_check_reports() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cul8er.kdl");
    let messy =
        "// keep this\ntopology t {\n  resource web { image \"cul8er-busybox\"; replicas 2 } \n}\n";
    fs_err::write(&file, messy).unwrap();
    let path = file.to_str().unwrap();

    let out = cul8er(&["fmt", path, "--check"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        fs_err::read_to_string(&file).unwrap(),
        messy,
        "--check changed the file"
    );

    let out = cul8er(&["fmt", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let formatted = fs_err::read_to_string(&file).unwrap();
    assert_eq!(
        formatted,
        "// keep this\ntopology t {\n    resource web {\n        image cul8er-busybox\n        replicas 2\n    }\n}\n"
    );
    let out = cul8er(&["fmt", path, "--check"]);
    assert_eq!(out.status.code(), Some(0), "not idempotent");
    assert_eq!(cul8er(&["validate", path]).status.code(), Some(0));
}

#[test]
fn fmt_refuses_invalid_kdl_without_touching_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.kdl");
    fs_err::write(&file, "topology t {\n").unwrap();
    let out = cul8er(&["fmt", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("never closed"));
    assert_eq!(fs_err::read_to_string(&file).unwrap(), "topology t {\n");
}

#[test]
fn every_example_is_in_canonical_form() {
    for entry in fs_err::read_dir(root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "kdl") {
            let out = cul8er(&["fmt", "--check", path.to_str().unwrap()]);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}: {}",
                path.display(),
                text(&out.stderr)
            );
        }
    }
}
