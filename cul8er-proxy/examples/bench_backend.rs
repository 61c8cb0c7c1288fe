//! A small fast HTTP/1.1 backend for the proxy benchmark: answers every request with a
//! fixed 13-byte body, keep-alive, on each address given.
//!
//! `cargo run --release -p cul8er-proxy --example bench_backend -- 127.0.0.1:18081 127.0.0.1:18082`

#![allow(
    clippy::print_stderr,
    clippy::unwrap_used,
    reason = "a benchmark helper"
)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let addresses: Vec<SocketAddr> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("an address such as 127.0.0.1:18081"))
        .collect();
    if addresses.is_empty() {
        eprintln!("usage: bench_backend ADDRESS...");
        std::process::exit(2);
    }
    let mut listeners = JoinSet::new();
    for address in addresses {
        let listener = TcpListener::bind(address).await.unwrap();
        listeners.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    Ok((stream, _)) = listener.accept() => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(async move {
                            let service = hyper::service::service_fn(|_request| async {
                                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello, world\n"))))
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
    }
    while listeners.join_next().await.is_some() {}
}
