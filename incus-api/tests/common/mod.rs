//! Shared helpers of the live tests: the daemon, unique names, cleanup guards.
//!
//! Tests talk to the daemon at `CUL8ER_TEST_INCUS_SOCKET` (default
//! `/var/lib/incus/unix.socket`) and launch the image `CUL8ER_TEST_IMAGE` (default
//! `cul8er-busybox`). Everything they create is named `cul8er-t-...` and removed by a
//! guard, through the `incus` command as an independent client, even when the test fails.
// Helpers panic on failure, like the tests that call them.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use incus_api::Client;
use incus_api::instances::{InstanceSource, InstanceSpec};

pub const WAIT: Duration = Duration::from_secs(120);

pub fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/incus/unix.socket"))
}

pub fn cluster_socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_CLUSTER_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/incus2/unix.socket"))
}

pub fn image() -> String {
    std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into())
}

pub fn client() -> Client {
    Client::unix(socket()).unwrap()
}

/// A name unique across parallel tests and runs: `cul8er-t-<what>-<pid>-<n>`.
pub fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let name = format!(
        "cul8er-t-{what}-{}-{n}-{:x}",
        std::process::id(),
        nanos % 0xfffff
    );
    assert!(name.len() <= 63, "test name too long: {name}");
    name
}

/// Runs the `incus` command against `socket`, returning stdout; panics on failure.
pub fn incus_on(socket: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new("incus")
        .env("INCUS_SOCKET", socket)
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

pub fn incus(args: &[&str]) -> String {
    incus_on(&socket(), args)
}

/// Runs `incus` and ignores the outcome (cleanup).
pub fn incus_quiet(socket: &std::path::Path, args: &[&str]) {
    let _ = Command::new("incus")
        .env("INCUS_SOCKET", socket)
        .args(args)
        .output();
}

/// Deletes what it names when dropped.
pub struct Guard {
    socket: PathBuf,
    args: Vec<String>,
}

impl Guard {
    pub fn instance(name: &str) -> Self {
        Self::instance_on(&socket(), name)
    }
    pub fn instance_on(socket: &std::path::Path, name: &str) -> Self {
        Self::new(socket, &["delete", "--force", name])
    }
    pub fn new(socket: &std::path::Path, args: &[&str]) -> Self {
        Self {
            socket: socket.to_owned(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        incus_quiet(&self.socket, &args);
    }
}

/// Creates and starts a container, returning its name and guard.
pub async fn running_instance(client: &Client, what: &str) -> (String, Guard) {
    let name = unique(what);
    let guard = Guard::instance(&name);
    client
        .instances()
        .create(&InstanceSpec::container(&name, InstanceSource::image_alias(image())).start(true))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    (name, guard)
}
