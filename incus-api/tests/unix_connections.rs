//! The client's use of connections on the unix socket.
//!
//! incusd 6.0's unix listener reads the first bytes of each new connection inside its
//! accept loop: one connection that is opened and never used stalls every client of the
//! daemon (seen here: a test's pooled client left such a connection and the daemon
//! answered nobody until that process exited). A stand-in server on a socket of its own
//! records, per connection, whether it ever carried a request, while many requests
//! overlap; every connection must have carried one. And connections are kept alive:
//! sequential requests share one connection, overlapping ones no more than overlap.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

const BODY: &str = r#"{"type":"sync","status":"Success","status_code":200,"operation":"","error_code":0,"error":"","metadata":{"api_version":"1.0"}}"#;

#[derive(Default)]
struct Tally {
    connections: AtomicUsize,
    silent: AtomicUsize,
    requests: AtomicUsize,
}

/// Serves one connection: answers each request, and counts the connection as silent
/// when it closes without having sent a byte.
async fn serve(mut stream: UnixStream, tally: Arc<Tally>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut sent_anything = false;
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        sent_anything = true;
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            tally.requests.fetch_add(1, Ordering::SeqCst);
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{BODY}",
                BODY.len()
            );
            // A daemon takes a moment per request; clients then overlap.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            if stream.write_all(response.as_bytes()).await.is_err() {
                return;
            }
        }
    }
    if !sent_anything {
        tally.silent.fetch_add(1, Ordering::SeqCst);
    }
}

/// A stand-in server on a fresh socket: its path, its tally, and the task set that
/// runs it (dropping it stops the server).
fn stand_in_server() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Arc<Tally>,
    JoinSet<()>,
) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("unix.socket");
    let listener = UnixListener::bind(&path).expect("bind the stand-in socket");
    let tally = Arc::new(Tally::default());

    let mut server = JoinSet::new();
    let accept_tally = tally.clone();
    server.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else { break };
                    accept_tally.connections.fetch_add(1, Ordering::SeqCst);
                    conns.spawn(serve(stream, accept_tally.clone()));
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    (dir, path, tally, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_connections_never_sit_idle() {
    let (_dir, path, tally, mut server) = stand_in_server();

    const ROUNDS: usize = 20;
    const CONCURRENT: usize = 16;
    {
        let client = incus_api::Client::unix(&path).unwrap();
        for _ in 0..ROUNDS {
            let mut calls = JoinSet::new();
            for _ in 0..CONCURRENT {
                let c = client.clone();
                calls.spawn(async move { c.get_value("/1.0").await });
            }
            while let Some(res) = calls.join_next().await {
                let value = res.unwrap().expect("request through the unix socket");
                assert_eq!(value["api_version"], "1.0");
            }
        }
        // The client and every connection it holds go away here.
    }

    // Every connection is closed once the client is gone; wait until the server has
    // seen each of them end (it counts a silent one at its end).
    let expected = ROUNDS * CONCURRENT;
    for _ in 0..1000 {
        let done = tally.requests.load(Ordering::SeqCst) == expected
            && tally.connections.load(Ordering::SeqCst)
                == tally.requests.load(Ordering::SeqCst) + tally.silent.load(Ordering::SeqCst);
        if done {
            break;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.abort_all();

    assert_eq!(tally.requests.load(Ordering::SeqCst), expected);
    assert_eq!(
        tally.silent.load(Ordering::SeqCst),
        0,
        "{} of {} connections were opened and never used",
        tally.silent.load(Ordering::SeqCst),
        tally.connections.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_connections_are_reused() {
    let (_dir, path, tally, _server) = stand_in_server();
    let client = incus_api::Client::unix(&path).unwrap();

    // One request after the other: one connection carries them all.
    const SEQUENTIAL: usize = 50;
    for _ in 0..SEQUENTIAL {
        let value = client.get_value("/1.0").await.unwrap();
        assert_eq!(value["api_version"], "1.0");
    }
    assert_eq!(tally.requests.load(Ordering::SeqCst), SEQUENTIAL);
    assert_eq!(tally.connections.load(Ordering::SeqCst), 1);

    // Overlapping requests: never more connections than requests in flight, and the
    // later rounds reuse the connections of the first (8 kept idle by default).
    const ROUNDS: usize = 10;
    const CONCURRENT: usize = 8;
    for _ in 0..ROUNDS {
        let mut calls = JoinSet::new();
        for _ in 0..CONCURRENT {
            let c = client.clone();
            calls.spawn(async move { c.get_value("/1.0").await });
        }
        while let Some(res) = calls.join_next().await {
            res.unwrap().expect("request through the unix socket");
        }
    }
    let connections = tally.connections.load(Ordering::SeqCst);
    assert_eq!(
        tally.requests.load(Ordering::SeqCst),
        SEQUENTIAL + ROUNDS * CONCURRENT
    );
    assert!(
        connections <= 1 + CONCURRENT,
        "{connections} connections for {ROUNDS} rounds of {CONCURRENT} overlapping requests"
    );
    assert_eq!(tally.silent.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idle_connections_each_request_dials() {
    let (_dir, path, tally, _server) = stand_in_server();
    let client = incus_api::ClientBuilder::unix(&path)
        .max_idle_connections(0)
        .build()
        .unwrap();
    for _ in 0..5 {
        client.get_value("/1.0").await.unwrap();
    }
    assert_eq!(tally.requests.load(Ordering::SeqCst), 5);
    assert_eq!(tally.connections.load(Ordering::SeqCst), 5);
}
