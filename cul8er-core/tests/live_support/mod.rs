//! Helpers of the live deployment tests: a uniquely named copy of a topology, the
//! `incus` command as an independent client, and a guard that removes everything the
//! topology made (instances, its bridge, its lease and rollout profiles) even when the
//! test fails.
//!
//! The daemon is `CUL8ER_TEST_INCUS_SOCKET` (default `/var/lib/incus/unix.socket`) and
//! the image `CUL8ER_TEST_IMAGE` (default `cul8er-busybox`). Topology names start with
//! `cul8er-t-`, so every instance is `cul8er-t-...` and the environment script removes
//! leftovers of runs that died.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::print_stderr)]

pub mod load;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use cul8er_core::Deployment;
use cul8er_core::edge::EdgeBinary;
use cul8er_core::state::StateDir;
use cul8er_core::topology::{self, LoadOptions, Topology};

pub fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET").map_or_else(
        || PathBuf::from("/var/lib/incus/unix.socket"),
        PathBuf::from,
    )
}

pub fn image() -> String {
    std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into())
}

/// The systemd image (`CUL8ER_TEST_DEBIAN_IMAGE`), or `None` after saying how to get
/// one: the test is then skipped.
pub fn debian_image() -> Option<String> {
    optional_image("CUL8ER_TEST_DEBIAN_IMAGE", "Debian", "--with-debian")
}

/// The OpenRC image (`CUL8ER_TEST_OPENRC_IMAGE`), or `None` after saying how to get
/// one: the test is then skipped.
pub fn openrc_image() -> Option<String> {
    optional_image("CUL8ER_TEST_OPENRC_IMAGE", "OpenRC", "--with-openrc")
}

fn optional_image(variable: &str, what: &str, flag: &str) -> Option<String> {
    let image = std::env::var(variable).unwrap_or_default();
    if image.is_empty() {
        eprintln!(
            "skipped: no {what} image (run `scripts/incus-env.sh up {flag}` and set {variable})"
        );
        return None;
    }
    Some(image)
}

/// The static `cul8er-proxy` for the edge container (`CUL8ER_PROXY_BINARY`, or the
/// `just proxy-static` output); a panic that says how to build it when it is missing.
pub fn proxy_binary() -> EdgeBinary {
    let path = std::env::var_os("CUL8ER_PROXY_BINARY").map_or_else(
        || {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/x86_64-unknown-linux-gnu/release/cul8er-proxy"
            ))
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "no static cul8er-proxy at {}: run `just proxy-static` or set CUL8ER_PROXY_BINARY",
        path.display()
    );
    EdgeBinary::read(&path).unwrap()
}

pub fn client() -> incus_api::Client {
    incus_api::Client::unix(socket()).unwrap()
}

/// Names unique across parallel tests and runs.
#[derive(Debug, Clone)]
pub struct Names {
    /// The topology: `cul8er-t-<what><pid><n>`.
    pub topology: String,
    /// A bridge name (at most 15 characters).
    pub network: String,
    /// A /24 subnet for the bridge: `10.18<x>.<y>.1/24`.
    pub subnet: String,
    /// Two free loopback ports.
    pub ports: [u16; 2],
}

pub fn names(what: &str) -> Names {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let tag = (pid.wrapping_mul(31).wrapping_add(n).wrapping_add(nanos)) % 0xf_ffff;
    let ports = [free_port(), free_port()];
    Names {
        topology: format!("cul8er-t-{what}-{tag:x}"),
        network: format!("c8t{tag:x}"),
        subnet: format!("10.{}.{}.1/24", 190 + tag % 50, (tag / 50) % 250),
        ports,
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs `incus` against the test daemon; stdout, or a panic with stderr.
pub fn incus(args: &[&str]) -> String {
    let out = Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(args)
        .output()
        .expect("run incus");
    assert!(
        out.status.success(),
        "incus {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `incus`, ignoring the outcome.
pub fn incus_quiet(args: &[&str]) {
    let _ = Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(args)
        .output();
}

/// The instances whose names start with `prefix`, by name, with their state.
pub fn instances_named(prefix: &str) -> BTreeMap<String, String> {
    incus(&["list", "--format", "csv", "-c", "ns"])
        .lines()
        .filter_map(|l| l.split_once(','))
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(n, s)| (n.to_owned(), s.to_owned()))
        .collect()
}

pub fn network_exists(name: &str) -> bool {
    incus(&["network", "list", "--format", "csv", "-c", "n"])
        .lines()
        .any(|l| l == name)
}

/// Removes everything a topology made, when dropped.
pub struct Cleanup {
    pub names: Names,
    pub dir: tempfile::TempDir,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_topology(&self.names.topology, Some(&self.names.network));
    }
}

/// Removes everything a topology may have made on the test daemon: its instances, its
/// bridge (when given), and its lease, rollout and pause profiles. Never panics, so a
/// guard dropped while a failed test unwinds does not abort it: a failed listing (the
/// daemon restarting) leaves the instances to the environment script, which removes
/// `cul8er-t-` leftovers.
pub fn remove_topology(topology: &str, network: Option<&str>) {
    let listed = Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(["list", "--format", "csv", "-c", "n"])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    let prefix = format!("{topology}-");
    for name in listed.lines().filter(|n| n.starts_with(&prefix)) {
        incus_quiet(&["delete", "--force", name]);
    }
    if let Some(network) = network {
        incus_quiet(&["network", "delete", network]);
    }
    for profile in [
        cul8er_core::lock::lease_profile(topology),
        cul8er_core::rollout::pending::rollout_profile(topology),
        cul8er_core::rollout::pending::pause_profile(topology),
    ] {
        incus_quiet(&["profile", "delete", &profile]);
    }
}

/// Writes `source` with the demo's names replaced by unique ones; returns the
/// topology and its file in a fresh directory.
pub fn topology(what: &str, source: &str) -> (Topology, PathBuf, Cleanup) {
    let names = names(what);
    let source = rename(source, &names);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cul8er.kdl");
    fs_err::write(&path, &source).unwrap();
    let topology = load(&path);
    (topology, path, Cleanup { names, dir })
}

/// The demo's names replaced by `names`.
pub fn rename(source: &str, names: &Names) -> String {
    source
        .replace("topology demo", &format!("topology {}", names.topology))
        .replace("demo-net", &names.network)
        .replace("10.181.0.1/24", &names.subnet)
        .replace("18080", &names.ports[0].to_string())
        .replace("18081", &names.ports[1].to_string())
        .replace("cul8er-busybox", &image())
}

pub fn load(path: &Path) -> Topology {
    let env = |_: &str| None;
    topology::load(path, &LoadOptions::new(&env))
        .unwrap()
        .remove(0)
}

pub fn deployment(topology: Topology, state: &Path) -> Deployment {
    Deployment::with_clients(
        topology,
        BTreeMap::from([("local".to_owned(), client())]),
        StateDir::new(state),
    )
}

pub fn demo_source() -> String {
    fs_err::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo.kdl")).unwrap()
}
