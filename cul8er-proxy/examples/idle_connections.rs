//! Opens N keep-alive connections to an HTTP address, sends one GET on each, then keeps
//! them all open and idle for a bounded time, so the benchmark can read a proxy's
//! memory per idle connection. Prints `ready N` once every connection has its answer.
//!
//! `idle_connections 127.0.0.1:18090 1000 30` (address, count, seconds to hold)

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    reason = "a benchmark helper"
)]

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, address, count, hold] = args.as_slice() else {
        eprintln!("usage: idle_connections ADDRESS COUNT SECONDS");
        std::process::exit(2);
    };
    let count: usize = count.parse().unwrap();
    let hold = Duration::from_secs(hold.parse().unwrap());
    let mut streams = Vec::with_capacity(count);
    let mut batch = JoinSet::new();
    for i in 0..count {
        let address = address.clone();
        batch.spawn(async move {
            let mut stream = TcpStream::connect(&address).await.unwrap();
            stream
                .write_all(format!("GET / HTTP/1.1\r\nHost: {address}\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut buf = [0_u8; 4096];
            let mut seen = Vec::new();
            // Read until the end of the small fixed answer (headers + 13-byte body).
            while !seen.ends_with(b"hello, world\n") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection {i} closed early");
                seen.extend_from_slice(&buf[..n]);
            }
            stream
        });
        if batch.len() >= 32 {
            streams.push(batch.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(stream) = batch.join_next().await {
        streams.push(stream.unwrap());
    }
    println!("ready {}", streams.len());
    tokio::time::sleep(hold).await;
}
