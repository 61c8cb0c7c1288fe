//! The `cul8er` binary against a real incusd: Ctrl-C (SIGINT sent to its pid) in the
//! middle of an apply finishes the step in flight, starts no other, records the
//! revision as cancelled and exits 130; the next apply converges; a saved plan is
//! refused once the world moved; destroy leaves nothing.
//!
//! The daemon is `CUL8ER_TEST_INCUS_SOCKET` (default `/var/lib/incus/unix.socket`),
//! the image `CUL8ER_TEST_IMAGE` (default `cul8er-busybox`); the topology is named
//! `cul8er-t-...` and a guard removes what it made.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET").map_or_else(
        || PathBuf::from("/var/lib/incus/unix.socket"),
        PathBuf::from,
    )
}

fn image() -> String {
    std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into())
}

fn incus(args: &[&str]) -> String {
    let out = Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn instances(prefix: &str) -> Vec<String> {
    incus(&["list", "--format", "csv", "-c", "n"])
        .lines()
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in instances(&format!("{}-", self.0)) {
            incus(&["delete", "--force", &name]);
        }
        incus(&["profile", "delete", &format!("cul8er-lease-{}", self.0)]);
    }
}

fn cul8er(dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cul8er"));
    command
        .current_dir(dir)
        .env("INCUS_SOCKET", socket())
        .env("NO_COLOR", "1");
    command
}

#[test]
fn sigint_mid_apply_stops_cleanly_and_the_next_apply_converges() {
    let tag = std::process::id() % 0xf_ffff;
    let topology = format!("cul8er-t-sigint-{tag:x}");
    let _cleanup = Cleanup(topology.clone());
    let dir = tempfile::tempdir().unwrap();
    fs_err::write(
        dir.path().join("cul8er.kdl"),
        format!(
            "topology {topology} {{\n    resource app {{\n        image \"{}\"\n        replicas 8\n    }}\n}}\n",
            image()
        ),
    )
    .unwrap();

    let mut child = cul8er(dir.path())
        .args(["apply", "--auto-approve", "--parallelism", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    let mut line = String::new();
    // Interrupt once the first instance is done: seven are still to come.
    loop {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "apply ended early:\n{log}"
        );
        log.push_str(&line);
        if line.contains("create instance") && line.contains(": done in") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    log.push_str(&rest);
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(130), "exit {exit:?}:\n{log}");
    assert!(log.contains("Apply interrupted"), "{log}");
    assert!(
        log.contains("not started (cancelled before it started)"),
        "{log}"
    );
    let made = instances(&format!("{topology}-"));
    assert!(
        !made.is_empty() && made.len() < 8,
        "some but not all instances were made: {made:?}\n{log}"
    );
    // What was done is recorded.
    let revisions: Vec<_> =
        fs_err::read_dir(dir.path().join(".cul8er").join(&topology).join("revisions"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    assert_eq!(revisions.len(), 1, "{revisions:?}");
    let outcome = fs_err::read_to_string(revisions[0].join("outcome.json")).unwrap();
    assert!(outcome.contains("\"cancelled\": true"), "{outcome}");

    // The next apply converges, and then nothing is left to do.
    let again = cul8er(dir.path())
        .args(["apply", "--auto-approve"])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(instances(&format!("{topology}-")).len(), 8);
    let plan = cul8er(dir.path())
        .args(["plan", "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );

    // A saved plan is refused once the world moved.
    incus(&["stop", "--force", &format!("{topology}-app-3")]);
    let saved = cul8er(dir.path())
        .args(["plan", "--out", "plan.json", "--detailed-exitcode"])
        .output()
        .unwrap();
    assert_eq!(saved.status.code(), Some(2), "a change is planned");
    incus(&["stop", "--force", &format!("{topology}-app-4")]);
    let refused = cul8er(dir.path())
        .args(["apply", "plan.json"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no longer matches"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Destroy leaves nothing.
    let destroy = cul8er(dir.path())
        .args(["destroy", "--auto-approve"])
        .output()
        .unwrap();
    assert!(
        destroy.status.success(),
        "{}",
        String::from_utf8_lossy(&destroy.stderr)
    );
    assert!(instances(&format!("{topology}-")).is_empty());
}
