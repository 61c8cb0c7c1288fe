//! Keep-alive against the real daemon: sequential requests travel on one connection.
//!
//! The only test of its binary, so every socket this process opens is the client's:
//! after each request the test notes which sockets are open (by inode, from
//! /proc/self/fd) besides those open before the first request (the runtime's and any
//! inherited), and a kept-alive client shows the same single socket every time.

mod common;

use std::collections::BTreeSet;

use common::*;

/// The inodes of the sockets this process has open, besides those in `before`.
fn open_sockets(before: &BTreeSet<String>) -> BTreeSet<String> {
    fs_err::read_dir("/proc/self/fd")
        .expect("/proc/self/fd lists this process's files")
        .filter_map(|entry| {
            let target = fs_err::read_link(entry.ok()?.path()).ok()?;
            let target = target.to_string_lossy();
            target.starts_with("socket:").then(|| target.into_owned())
        })
        .filter(|s| !before.contains(s))
        .collect()
}

#[tokio::test]
async fn sequential_requests_to_incusd_share_one_connection() {
    let before = open_sockets(&BTreeSet::new());
    let c = client();
    let mut seen = BTreeSet::new();
    for _ in 0..30 {
        let info = c.server().get().await.expect("GET /1.0");
        assert!(info.is_trusted());
        let now = open_sockets(&before);
        assert_eq!(now.len(), 1, "sockets open between requests: {now:?}");
        seen.extend(now);
    }
    assert_eq!(seen.len(), 1, "30 requests used the sockets {seen:?}");

    // The same requests without idle connections each take a new one, which is
    // closed after its answer: nothing stays open between requests.
    let per_request = incus_api::ClientBuilder::unix(socket())
        .max_idle_connections(0)
        .build()
        .expect("client");
    drop(c);
    for _ in 0..5 {
        per_request.server().get().await.expect("GET /1.0");
    }
    let mut open = open_sockets(&before);
    for _ in 0..100 {
        if open.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
        open = open_sockets(&before);
    }
    assert!(open.is_empty(), "connections left open: {open:?}");
}
