//! The HTTP/1.1 fast path's framing, end to end on loopback: scripted backends that send
//! exact bytes, raw clients that read exact bytes. Each test checks what the other side
//! received, byte for byte where framing is at stake.

#![allow(
    clippy::disallowed_methods,
    reason = "tests await every task they spawn"
)]
#![allow(
    clippy::unwrap_used,
    reason = "helpers of tests: a failure is a test failure"
)]

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// One side of a raw HTTP/1.1 connection with what it has read but not used.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// A parsed head: status (0 for requests), request target, fields in lower case.
#[derive(Debug)]
struct Head {
    status: u16,
    target: String,
    fields: Vec<(String, String)>,
}

impl Head {
    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn connect(addr: SocketAddr) -> Self {
        Self::new(TcpStream::connect(addr).await.unwrap())
    }

    /// Reads more; false at the end of the stream.
    async fn more(&mut self) -> bool {
        let mut chunk = [0_u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(30), self.stream.read(&mut chunk))
            .await
            .expect("the peer sent nothing for 30 s")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next head; `None` when the stream ends first.
    async fn head(&mut self, request: bool) -> Option<Head> {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let owned = |fields: &[httparse::Header<'_>]| -> Vec<(String, String)> {
                fields
                    .iter()
                    .map(|f| {
                        (
                            f.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(f.value).into_owned(),
                        )
                    })
                    .collect()
            };
            let parsed = if request {
                let mut r = httparse::Request::new(&mut fields);
                match r.parse(&self.buf).unwrap() {
                    httparse::Status::Complete(n) => {
                        Some((n, 0, r.path.unwrap().to_owned(), owned(r.headers)))
                    }
                    httparse::Status::Partial => None,
                }
            } else {
                let mut r = httparse::Response::new(&mut fields);
                match r.parse(&self.buf).unwrap() {
                    httparse::Status::Complete(n) => {
                        Some((n, r.code.unwrap(), String::new(), owned(r.headers)))
                    }
                    httparse::Status::Partial => None,
                }
            };
            if let Some((n, status, target, fields)) = parsed {
                self.buf.drain(..n);
                return Some(Head {
                    status,
                    target,
                    fields,
                });
            }
            if !self.more().await {
                return None;
            }
        }
    }

    async fn exactly(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.more().await, "the stream ended inside a body");
        }
        self.buf.drain(..n).collect()
    }

    /// A chunked body's raw bytes, up to and with the end of its trailers.
    async fn chunked(&mut self) -> Vec<u8> {
        let mut raw = Vec::new();
        loop {
            let (used, size) = loop {
                match httparse::parse_chunk_size(&self.buf).unwrap() {
                    httparse::Status::Complete(done) => break done,
                    httparse::Status::Partial => assert!(self.more().await),
                }
            };
            let size = usize::try_from(size).unwrap();
            raw.extend(self.exactly(used).await);
            if size == 0 {
                loop {
                    while !self.buf.contains(&b'\n') {
                        assert!(self.more().await);
                    }
                    let end = self.buf.iter().position(|&b| b == b'\n').unwrap() + 1;
                    let line = self.exactly(end).await;
                    raw.extend_from_slice(&line);
                    if line == b"\r\n" {
                        return raw;
                    }
                }
            }
            raw.extend(self.exactly(size + 2).await);
        }
    }

    /// A message body as its head frames it (`bodiless` for HEAD, 204, 304).
    async fn body(&mut self, head: &Head, bodiless: bool) -> Vec<u8> {
        if bodiless {
            return Vec::new();
        }
        if head.field("transfer-encoding").is_some() {
            return self.chunked().await;
        }
        match head.field("content-length") {
            Some(n) => self.exactly(n.parse().unwrap()).await,
            None if head.status == 0 => Vec::new(),
            None => {
                while self.more().await {}
                std::mem::take(&mut self.buf)
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Whether the peer closes the connection (reads to its end, within 30 s).
    async fn closes(&mut self) -> bool {
        while self.more().await {}
        self.buf.is_empty()
    }
}

/// What a scripted backend saw: each request's head and body, and its connections.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(Head, Vec<u8>)>>,
    connections: AtomicUsize,
}

/// A backend that answers each request with what `script` returns for its target:
/// the exact bytes to send, and whether to close the connection after them.
async fn scripted(script: fn(&str) -> (Vec<u8>, bool)) -> (SocketAddr, Arc<Seen>, JoinSet<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let mut tasks = JoinSet::new();
    let s = seen.clone();
    tasks.spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            s.connections.fetch_add(1, SeqCst);
            let s = s.clone();
            conns.spawn(async move {
                let mut conn = Conn::new(stream);
                while let Some(head) = conn.head(true).await {
                    let body = conn.body(&head, false).await;
                    let (answer, close) = script(&head.target);
                    s.requests.lock().unwrap().push((head, body));
                    if conn.stream.write_all(&answer).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen, tasks)
}

async fn proxy_to(addr: SocketAddr) -> cul8er_proxy::Proxy {
    let config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{addr}\" }}]\n"
    ));
    start(config).await.0
}

fn answer(status: &str, fields: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\n{fields}\r\n{body}").into_bytes()
}

#[tokio::test]
async fn chunked_bodies_with_trailers_pass_byte_for_byte_both_ways() {
    let (addr, seen, _tasks) = scripted(|_| {
        let body = "5\r\nhello\r\n6;note=x\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n";
        (
            answer("200 OK", "Transfer-Encoding: chunked\r\n", body),
            false,
        )
    })
    .await;
    let proxy = proxy_to(addr).await;
    let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
    let sent = b"3\r\nabc\r\n4\r\ndefg\r\n0\r\nx-request-sum: 7\r\n\r\n";
    // The body comes in three writes, and a second request follows the first at once.
    client
        .send(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await;
    tokio::task::yield_now().await;
    client.send(b"4\r\ndefg\r\n0\r\nx-request-sum").await;
    client
        .send(b": 7\r\n\r\nGET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    for _ in 0..2 {
        let head = client.head(false).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.field("transfer-encoding"), Some("chunked"));
        let body = client.body(&head, false).await;
        assert_eq!(
            body,
            b"5\r\nhello\r\n6;note=x\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n"
        );
    }
    let requests = seen.requests.lock().unwrap();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].0.target, "/up");
    assert_eq!(requests[0].0.field("transfer-encoding"), Some("chunked"));
    assert_eq!(requests[0].1, sent);
    assert_eq!(requests[1].0.target, "/next");
    assert!(requests[1].1.is_empty());
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_backend_connection() {
    let (addr, seen, _tasks) = scripted(|target| {
        let body = format!("answer to {target}");
        let fields = format!("Content-Length: {}\r\n", body.len());
        (answer("200 OK", &fields, &body), false)
    })
    .await;
    let proxy = proxy_to(addr).await;
    let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
    client
        .send(
            b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nPOST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
    for n in 1..=3 {
        let head = client.head(false).await.unwrap();
        assert_eq!(head.status, 200);
        let body = client.body(&head, false).await;
        assert_eq!(body, format!("answer to /{n}").as_bytes());
        if n == 3 {
            assert_eq!(head.field("connection"), Some("close"));
        }
    }
    assert!(client.closes().await, "Connection: close was not honoured");
    let requests = seen.requests.lock().unwrap();
    let targets: Vec<&str> = requests.iter().map(|(h, _)| h.target.as_str()).collect();
    assert_eq!(targets, ["/1", "/2", "/3"]);
    assert_eq!(requests[1].1, b"hello");
    assert_eq!(requests[1].0.field("content-length"), Some("5"));
    assert_eq!(seen.connections.load(SeqCst), 1);
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body_whatever_their_fields_say() {
    let (addr, seen, _tasks) = scripted(|target| match target {
        "/head" => (answer("200 OK", "Content-Length: 10\r\n", ""), false),
        "/204" => (answer("204 No Content", "", ""), false),
        "/304" => (
            answer("304 Not Modified", "Content-Length: 7\r\n", ""),
            false,
        ),
        _ => (answer("200 OK", "Content-Length: 4\r\n", "last"), false),
    })
    .await;
    let proxy = proxy_to(addr).await;
    let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
    client
        .send(b"HEAD /head HTTP/1.1\r\nHost: x\r\n\r\nGET /204 HTTP/1.1\r\nHost: x\r\n\r\nGET /304 HTTP/1.1\r\nHost: x\r\n\r\nGET /last HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let head = client.head(false).await.unwrap();
    assert_eq!(
        (head.status, head.field("content-length")),
        (200, Some("10"))
    );
    let head = client.head(false).await.unwrap();
    assert_eq!(head.status, 204);
    let head = client.head(false).await.unwrap();
    assert_eq!(
        (head.status, head.field("content-length")),
        (304, Some("7"))
    );
    let head = client.head(false).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(client.body(&head, false).await, b"last");
    // Every answer reused the one backend connection: none was misread.
    assert_eq!(seen.connections.load(SeqCst), 1);
    assert_eq!(seen.requests.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn connection_close_from_the_backend_is_not_reused_and_the_client_stays() {
    let (addr, seen, _tasks) = scripted(|target| {
        let body = target.to_owned();
        let fields = format!("Content-Length: {}\r\nConnection: close\r\n", body.len());
        (answer("200 OK", &fields, &body), true)
    })
    .await;
    let proxy = proxy_to(addr).await;
    let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
    for path in ["/a", "/b", "/c"] {
        client
            .send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let head = client.head(false).await.unwrap();
        assert_eq!(head.field("connection"), None, "{head:?}");
        assert_eq!(client.body(&head, false).await, path.as_bytes());
    }
    assert_eq!(seen.connections.load(SeqCst), 3);
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_not_used() {
    // The backend closes each connection after its answer without saying so, as one
    // whose keep-alive timeout ran out would.
    let (addr, seen, _tasks) =
        scripted(|_| (answer("200 OK", "Content-Length: 2\r\n", "ok"), true)).await;
    let proxy = proxy_to(addr).await;
    let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
    for _ in 0..5 {
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let head = client.head(false).await.unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(client.body(&head, false).await, b"ok");
        // Let the close reach the proxy, so the next request finds it in the pool.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen.connections.load(SeqCst), 5);
}

#[tokio::test]
async fn a_backend_closing_mid_body_closes_the_client_connection_and_the_next_one_works() {
    let (addr, _seen, _tasks) = scripted(|target| match target {
        "/cut" => (
            answer("200 OK", "Content-Length: 100\r\n", "only ten.."),
            true,
        ),
        "/cut-chunked" => (
            answer(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                "a\r\nonly ten..",
            ),
            true,
        ),
        _ => (answer("200 OK", "Content-Length: 2\r\n", "ok"), false),
    })
    .await;
    let proxy = proxy_to(addr).await;
    let addr = proxy.local_addr("web").unwrap();
    for path in ["/cut", "/cut-chunked"] {
        let mut client = Conn::connect(addr).await;
        client
            .send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await;
        let head = client.head(false).await.unwrap();
        assert_eq!(head.status, 200);
        // The head went out before the cut: the client sees a short body and a close.
        while client.more().await {}
        assert!(client.buf.len() < 100, "{path}: {:?}", client.buf);
        assert!(client.buf.starts_with(b"only ten") || client.buf.starts_with(b"a\r\nonly"));
    }
    let mut client = Conn::connect(addr).await;
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = client.head(false).await.unwrap();
    assert_eq!(client.body(&head, false).await, b"ok");
    assert_eq!(proxy.stats().backend("app", "s").unwrap().requests, 3);
}

/// A response body the backend cuts short (length or chunked) or whose chunked framing
/// is malformed is an error of the backend's, on both paths: counted in its `errors`,
/// but not toward passive ejection (its head was a valid answer), so more of them than
/// `consecutive_failures` leave it in rotation.
#[tokio::test]
async fn a_broken_response_body_counts_as_a_backend_error_but_does_not_eject() {
    let (addr, _seen, _tasks) = scripted(|target| match target {
        "/cut" => (
            answer("200 OK", "Content-Length: 100\r\n", "only ten.."),
            true,
        ),
        "/cut-chunked" => (
            answer(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                "a\r\nonly ten..",
            ),
            true,
        ),
        "/bad-chunk" => (
            answer(
                "200 OK",
                "Transfer-Encoding: chunked\r\n",
                "zz\r\nnot hex\r\n",
            ),
            false,
        ),
        _ => (answer("200 OK", "Content-Length: 2\r\n", "ok"), false),
    })
    .await;
    let config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{addr}\" }}]\n\
         passive = {{ consecutive_failures = 2 }}\n"
    ));
    let proxy = start(config).await.0;
    let addr = proxy.local_addr("web").unwrap();
    let mut broken = 0;
    for extra in ["", "Upgrade: none\r\n"] {
        for path in ["/cut", "/cut-chunked", "/bad-chunk"] {
            let mut client = Conn::connect(addr).await;
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
            client.send(request.as_bytes()).await;
            let head = client.head(false).await;
            match (path, extra.is_empty()) {
                // The fast path checks the chunk line that came with the head before
                // it relays the head, so it can still answer 502; hyper fails the
                // body before its head is written and closes the connection.
                ("/bad-chunk", true) => assert_eq!(head.map(|h| h.status), Some(502)),
                ("/bad-chunk", false) => assert!(head.is_none() && client.buf.is_empty()),
                _ => {
                    let status = head.map(|h| h.status);
                    assert_eq!(status, Some(200), "{path} {extra}");
                    while client.more().await {}
                    let received = String::from_utf8_lossy(&client.buf).into_owned();
                    assert!(
                        received.contains("only ten.."),
                        "{path} {extra}: {received:?}"
                    );
                    assert!(client.buf.len() < 100, "{path} {extra}");
                }
            }
            broken += 1;
            let stats = proxy.stats();
            let stats = stats.backend("app", "s").unwrap();
            assert_eq!(stats.errors, broken, "{path} {extra}");
            assert_eq!(
                (stats.ejected, stats.ejections),
                (false, 0),
                "{path} {extra}"
            );
        }
    }
    let mut client = Conn::connect(addr).await;
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = client.head(false).await.unwrap();
    assert_eq!(client.body(&head, false).await, b"ok");
}

#[tokio::test]
async fn a_body_until_close_reaches_the_client_with_connection_close() {
    let (addr, _seen, _tasks) = scripted(|_| {
        (
            b"HTTP/1.1 200 OK\r\nX-Kind: unframed\r\n\r\nall of it".to_vec(),
            true,
        )
    })
    .await;
    let proxy = proxy_to(addr).await;
    let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
    client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = client.head(false).await.unwrap();
    assert_eq!(head.field("connection"), Some("close"));
    assert_eq!(head.field("x-kind"), Some("unframed"));
    assert_eq!(client.body(&head, false).await, b"all of it");
}

#[tokio::test]
async fn both_content_length_and_transfer_encoding_is_refused_and_never_forwarded() {
    let (addr, seen, _tasks) =
        scripted(|_| (answer("200 OK", "Content-Length: 2\r\n", "ok"), false)).await;
    let proxy = proxy_to(addr).await;
    let attempts: [&[u8]; 3] = [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    ];
    for attempt in attempts {
        let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
        client.send(attempt).await;
        let head = client.head(false).await.unwrap();
        assert_eq!(head.status, 400);
        assert_eq!(head.field("connection"), Some("close"));
        let body = client.body(&head, false).await;
        assert!(
            String::from_utf8_lossy(&body).starts_with("400 Bad Request: "),
            "{body:?}"
        );
        assert!(client.closes().await);
    }
    assert!(seen.requests.lock().unwrap().is_empty());
    assert_eq!(seen.connections.load(SeqCst), 0);
}

#[tokio::test]
async fn large_heads_go_to_the_general_path_and_its_limits_hold() {
    let a = TestBackend::start("a").await;
    let (proxy, _url) = start(http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1)])
    )))
    .await;
    let addr = proxy.local_addr("web").unwrap();
    let request = |value_len: usize, fields: usize| {
        let mut head = String::from("GET /headers HTTP/1.1\r\nHost: x\r\n");
        for i in 0..fields {
            head.push_str(&format!("x-f{i}: {}\r\n", "v".repeat(value_len)));
        }
        head.push_str("Connection: close\r\n\r\n");
        head
    };
    // Fits the fast path; too large for its buffer; too many fields for it; too large
    // for hyper too.
    for (value_len, fields, status) in [
        (4_000, 2, 200),
        (10_000, 3, 200),
        (1, 80, 200),
        (100_000, 6, 431),
    ] {
        let mut client = Conn::connect(addr).await;
        client.send(request(value_len, fields).as_bytes()).await;
        let head = client.head(false).await.unwrap();
        assert_eq!(head.status, status, "{value_len} x {fields}");
        if status == 200 {
            let body = client.body(&head, false).await;
            let body = String::from_utf8(body).unwrap();
            assert!(body.contains(&format!("x-f{}: ", fields - 1)), "{body}");
            assert!(body.contains("x-forwarded-for: 127.0.0.1\n"), "{body}");
        }
    }
}

#[tokio::test]
async fn expect_continue_and_http_1_0_are_served_by_the_general_path() {
    let a = TestBackend::start("a").await;
    let (proxy, _url) = start(http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{}]\n",
        backends_toml(&[("a", &a, 1)])
    )))
    .await;
    let addr = proxy.local_addr("web").unwrap();
    let mut client = Conn::connect(addr).await;
    // A fast-path request first, then one that hands the connection over.
    client
        .send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
        .await;
    let head = client.head(false).await.unwrap();
    assert_eq!(client.body(&head, false).await, b"a");
    let head = client.head(false).await.unwrap();
    assert_eq!(head.status, 100);
    client.send(b"abc").await;
    let head = client.head(false).await.unwrap();
    assert_eq!(client.body(&head, false).await, b"a abc");

    let mut client = Conn::connect(addr).await;
    client.send(b"GET / HTTP/1.0\r\n\r\n").await;
    let head = client.head(false).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(client.body(&head, false).await, b"a");
}

#[tokio::test]
async fn an_early_answer_stops_the_request_body_and_closes_the_client_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        // Reads the head only, refuses the body and keeps the connection open.
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = Conn::new(stream);
        conn.head(true).await.unwrap();
        conn.send(&answer(
            "413 Content Too Large",
            "Content-Length: 8\r\n",
            "too much",
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let proxy = proxy_to(backend).await;
    let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
    client
        .send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\nstart")
        .await;
    let head = client.head(false).await.unwrap();
    assert_eq!(head.status, 413);
    assert_eq!(head.field("connection"), Some("close"));
    assert_eq!(client.body(&head, false).await, b"too much");
}

#[tokio::test]
async fn a_malformed_chunked_request_body_is_refused_and_not_held_against_the_backend() {
    let (addr, seen, _tasks) =
        scripted(|_| (answer("200 OK", "Content-Length: 2\r\n", "ok"), false)).await;
    let proxy = proxy_to(addr).await;
    let mut client = Conn::connect(proxy.local_addr("web").unwrap()).await;
    client
        .send(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY0\r\n\r\n",
        )
        .await;
    let head = client.head(false).await.unwrap();
    assert_eq!(head.status, 400);
    assert_eq!(head.field("connection"), Some("close"));
    let body = String::from_utf8(client.body(&head, false).await).unwrap();
    assert!(body.contains("chunk data not followed by CRLF"), "{body}");
    assert!(client.closes().await);
    assert!(seen.requests.lock().unwrap().is_empty());
    let stats = proxy.stats();
    let backend = stats.backend("app", "s").unwrap();
    assert_eq!((backend.errors, backend.ejections), (1, 0));
    assert!(!backend.ejected);
}
