//! `cul8er remote add|list|remove` against the real daemon's TLS listener
//! (`CUL8ER_TEST_TLS_ADDRESS`, default 127.0.0.1:8443), with a trust token from
//! `incus config trust add` and a fresh config directory per test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET").map_or_else(
        || PathBuf::from("/var/lib/incus/unix.socket"),
        PathBuf::from,
    )
}

fn address() -> String {
    let tls = std::env::var("CUL8ER_TEST_TLS_ADDRESS").unwrap_or_else(|_| "127.0.0.1:8443".into());
    format!("https://{tls}")
}

fn incus(args: &[&str]) -> String {
    let out = Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "incus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn cul8er(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cul8er"))
        .env("CUL8ER_CONFIG_DIR", config)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Revokes the token and untrusts the certificate named `name` when dropped.
struct TrustGuard(String);

impl Drop for TrustGuard {
    fn drop(&mut self) {
        let run = |args: &[&str]| {
            Command::new("incus")
                .env("INCUS_SOCKET", socket())
                .args(args)
                .output()
        };
        let _ = run(&["config", "trust", "revoke-token", &self.0]);
        if let Ok(out) = run(&["query", "/1.0/certificates?recursion=1"]) {
            let certs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for cert in certs.as_array().into_iter().flatten() {
                if cert["name"] == self.0.as_str()
                    && let Some(fp) = cert["fingerprint"].as_str()
                {
                    let _ = run(&["config", "trust", "remove", fp]);
                }
            }
        }
    }
}

#[test]
fn remote_add_list_remove_with_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cul8er");
    let name = format!("cul8er-t-cli-remote-{}", std::process::id());
    let _guard = TrustGuard(name.clone());
    let token = incus(&["config", "trust", "add", &name, "--quiet"]);
    let server: serde_json::Value = serde_json::from_str(&incus(&["query", "/1.0"])).unwrap();
    let server_fp = server["environment"]["certificate_fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    // A wrong fingerprint is refused: exit 1, both fingerprints shown, nothing stored.
    let wrong = "0".repeat(64);
    let out = cul8er(
        &config,
        &[
            "remote",
            "add",
            "lab",
            &address(),
            "--accept-fingerprint",
            &wrong,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&server_fp) && stderr.contains(&wrong),
        "{stderr}"
    );

    // With the token: added, the server's fingerprint shown and pinned.
    let out = cul8er(
        &config,
        &["remote", "add", "lab", &address(), "--token", &token],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&server_fp),
        "{}",
        text(&out.stderr)
    );
    let trusted = incus(&["config", "trust", "list", "-f", "csv"]);
    assert!(
        trusted.contains(&name),
        "the server trusts cul8er now: {trusted}"
    );

    let out = cul8er(&config, &["remote", "list", "--output", "json"]);
    assert!(out.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed,
        serde_json::json!([{ "name": "lab", "address": address(), "fingerprint": server_fp }])
    );
    let out = cul8er(&config, &["remote", "list"]);
    let table = text(&out.stdout);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains("lab") && table.contains(&server_fp),
        "{table}"
    );

    let out = cul8er(&config, &["remote", "remove", "lab"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = cul8er(&config, &["remote", "list", "--output", "json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
    let out = cul8er(&config, &["remote", "remove", "lab"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no remote named lab"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_input_is_a_user_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = cul8er(
        dir.path(),
        &["remote", "add", "lab", "http://127.0.0.1:8443"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("https://HOST:8443"),
        "{}",
        text(&out.stderr)
    );
    let out = cul8er(dir.path(), &["remote", "add", "bad/name", &address()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not valid"),
        "{}",
        text(&out.stderr)
    );
    let out = cul8er(
        dir.path(),
        &["remote", "add", "lab", &address(), "--token", "garbage"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not base64"),
        "{}",
        text(&out.stderr)
    );
}
