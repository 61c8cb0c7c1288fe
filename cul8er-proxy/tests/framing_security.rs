//! Request smuggling and header spoofing, end to end on loopback, on both paths: the
//! fast path (plain keep-alive HTTP/1.1) and the general one (hyper; reached here by
//! HTTP/1.0 or an `Upgrade` field that upgrades nothing). A raw backend records every
//! byte it receives; a raw client reads every byte it is sent, to the close.

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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// Guards against a hang only; no test depends on it.
const HANG: Duration = Duration::from_secs(30);

/// What a raw backend received, all connections together.
type Received = Arc<Mutex<Vec<u8>>>;

/// The end of the complete request at the start of `bytes`, when it is there: its
/// head, then a `Content-Length` body or a chunked one to the end of its trailers.
fn request_end(bytes: &[u8]) -> Option<usize> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(head)) = request.parse(bytes) else {
        return None;
    };
    let field = |name: &str| {
        request
            .headers
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
            .map(|f| String::from_utf8_lossy(f.value).to_ascii_lowercase())
    };
    if field("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        // The last chunk starts a line, and an empty line ends the trailers after it.
        let rest = &bytes[head..];
        let last = (0..rest.len()).find(|&at| {
            rest[at..].starts_with(b"0\r\n") && (at == 0 || rest[..at].ends_with(b"\r\n"))
        })?;
        let end = rest[last + 1..].windows(4).position(|w| w == b"\r\n\r\n")?;
        return Some(head + last + 1 + end + 4);
    }
    let length: usize = field("content-length").map_or(0, |v| v.parse().unwrap());
    (bytes.len() >= head + length).then_some(head + length)
}

/// A backend that records what it receives and sends `answer` after each complete
/// request, keeping the connection open.
async fn recording(answer: &'static [u8]) -> (SocketAddr, Received, JoinSet<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let mut tasks = JoinSet::new();
    let all = received.clone();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let all = all.clone();
            connections.spawn(async move {
                let mut pending = Vec::new();
                let mut chunk = [0_u8; 8192];
                loop {
                    let n = stream.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    all.lock().unwrap().extend_from_slice(&chunk[..n]);
                    pending.extend_from_slice(&chunk[..n]);
                    while let Some(end) = request_end(&pending) {
                        pending.drain(..end);
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, received, tasks)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

async fn proxy_to(addr: SocketAddr) -> cul8er_proxy::Proxy {
    let config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{addr}\" }}]\n"
    ));
    start(config).await.0
}

/// Sends `bytes` on a new connection and returns all that comes back, to the close.
async fn send(proxy: &cul8er_proxy::Proxy, bytes: &[u8]) -> Vec<u8> {
    let mut client = TcpStream::connect(proxy.local_addr("web").unwrap())
        .await
        .unwrap();
    client.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(HANG, client.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the proxy kept the connection open: {answer:?}"
    );
    answer
}

/// The responses in `bytes`: status and body, each framed by its `Content-Length`.
fn responses(mut bytes: &[u8]) -> Vec<(u16, String)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut fields);
        let httparse::Status::Complete(head) = response.parse(bytes).unwrap() else {
            panic!(
                "a partial response head: {:?}",
                String::from_utf8_lossy(bytes)
            );
        };
        let length: usize = response
            .headers
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case("content-length"))
            .map(|f| std::str::from_utf8(f.value).unwrap().parse().unwrap())
            .unwrap_or_else(|| panic!("no Content-Length: {:?}", String::from_utf8_lossy(bytes)));
        let body = String::from_utf8_lossy(&bytes[head..head + length]).into_owned();
        out.push((response.code.unwrap(), body));
        bytes = &bytes[head + length..];
    }
    out
}

fn status(answer: &[u8]) -> u16 {
    responses(answer).first().map_or(0, |(status, _)| *status)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Chunked request bodies whose lines a backend could read otherwise than the proxy:
/// each is refused with 400 and nothing of it reaches the backend. (The general path
/// decodes and encodes bodies again, so its backend never sees the client's lines.)
#[tokio::test]
async fn chunk_lines_a_backend_could_read_differently_are_refused() {
    let (addr, received, _tasks) = recording(OK).await;
    let proxy = proxy_to(addr).await;
    // The review's reproducer: to a backend ending lines at LF, the chunk data holds a
    // second request.
    let smuggled = b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n";
    let mut lf_extension = format!("{:x};\n", smuggled.len()).into_bytes();
    lf_extension.extend(std::iter::repeat_n(b'x', smuggled.len()));
    lf_extension.extend_from_slice(b"\r\n");
    lf_extension.extend_from_slice(smuggled);
    lf_extension.extend_from_slice(b"\r\n0\r\n\r\n");
    let bodies: [&[u8]; 9] = [
        &lf_extension,
        b";x\r\n\r\n",
        b"1\r\nx\r\n0\r\n\n",
        b"1\nx\r\n0\r\n\r\n",
        b"1;a=\"b\x01\"\r\nx\r\n0\r\n\r\n",
        b"1;a\x7f\r\nx\r\n0\r\n\r\n",
        b"1\rx\r\nx\r\n0\r\n\r\n",
        b"10000000000000000\r\n",
        b"1\r\nx\r\n0\r\nx-sum 1\r\n\r\n",
    ];
    for body in bodies {
        let mut request =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        request.extend_from_slice(body);
        let answer = send(&proxy, &request).await;
        assert_eq!(status(&answer), 400, "{}: {}", text(body), text(&answer));
        // Nothing went on: the line was refused before a byte was relayed.
        let got = text(&received.lock().unwrap());
        assert!(got.is_empty(), "{}: {got:?}", text(body));
    }
    // Well-formed extensions and trailers still pass, byte for byte.
    let body = b"3;a=b ; c=\"d e\\\"\"\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n";
    let mut request =
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            .to_vec();
    request.extend_from_slice(body);
    let answer = send(&proxy, &request).await;
    assert_eq!(responses(&answer), [(200, "ok".to_owned())]);
    assert!(received.lock().unwrap().ends_with(body));
}

/// Sends `bytes`, closes the sending side and returns all that comes back.
async fn send_and_stop(proxy: &cul8er_proxy::Proxy, bytes: &[u8]) -> Vec<u8> {
    let mut client = TcpStream::connect(proxy.local_addr("web").unwrap())
        .await
        .unwrap();
    client.write_all(bytes).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(HANG, client.read_to_end(&mut answer)).await;
    assert!(
        read.is_ok(),
        "the proxy kept the connection open: {answer:?}"
    );
    answer
}

/// Request bodies the client gets wrong (malformed, or cut short) are answered without
/// counting against the backend, on both paths: more of them than passive ejection
/// allows leave it in rotation, and the next request is served.
#[tokio::test]
async fn client_body_errors_do_not_eject_the_backend() {
    let (addr, _received, _tasks) = recording(OK).await;
    let proxy = proxy_to(addr).await;
    for general in [false, true, false, true, false, true] {
        let upgrade = if general { "Upgrade: none\r\n" } else { "" };
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\n{upgrade}Transfer-Encoding: chunked\r\n\r\nzz\r\n"
        );
        let answer = send(&proxy, request.as_bytes()).await;
        assert_eq!(status(&answer), 400, "{}", text(&answer));
        let request =
            format!("POST / HTTP/1.1\r\nHost: x\r\n{upgrade}Content-Length: 10\r\n\r\nabc");
        let answer = send_and_stop(&proxy, request.as_bytes()).await;
        // The client has gone: an answer is not needed, only the close.
        assert!(
            answer.is_empty() || status(&answer) == 400,
            "{}",
            text(&answer)
        );
    }
    let answer = send(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(responses(&answer), [(200, "ok".to_owned())]);
    let stats = proxy.stats();
    let backend = stats.backend("app", "s").unwrap();
    // Counted as requests without an answer, but never against the backend.
    assert_eq!((backend.ejections, backend.ejected), (0, false));
}

/// A backend that sends `100 Continue` unasked while the request body still comes
/// gets the whole body, and the client the final answer.
#[tokio::test]
async fn an_unasked_interim_answer_does_not_stop_the_request_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let continued = Arc::new(tokio::sync::Notify::new());
    let mut tasks = JoinSet::new();
    let notify = continued.clone();
    tasks.spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut received = Vec::new();
        let mut chunk = [0_u8; 8192];
        let mut continue_sent = false;
        while request_end(&received).is_none() {
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the request ended early: {}", text(&received));
            received.extend_from_slice(&chunk[..n]);
            if !continue_sent && received.windows(4).any(|w| w == b"\r\n\r\n") {
                stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .unwrap();
                continue_sent = true;
                notify.notify_one();
            }
        }
        assert!(
            received.ends_with(b"\r\n\r\nabcdefghij"),
            "{}",
            text(&received)
        );
        stream.write_all(OK).await.unwrap();
    });
    let config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{addr}\" }}]\n\
         timeouts = {{ response_headers = \"5s\" }}\n"
    ));
    let (proxy, _) = start(config).await;
    let mut client = TcpStream::connect(proxy.local_addr("web").unwrap())
        .await
        .unwrap();
    client
        .write_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc",
        )
        .await
        .unwrap();
    continued.notified().await;
    // Lets the proxy read the interim answer before the rest of the body comes.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    client.write_all(b"defghij").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(HANG, client.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(responses(&answer), [(200, "ok".to_owned())]);
    tasks.join_next().await.unwrap().unwrap();
}

/// Takes what the backend received so far.
fn take(received: &Received) -> Vec<u8> {
    std::mem::take(&mut *received.lock().unwrap())
}

/// The values of the `name` fields of the request head `bytes`, in order.
fn values_of(bytes: &[u8], name: &str) -> Vec<String> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut fields);
    assert!(
        request.parse(bytes).unwrap().is_complete(),
        "{}",
        text(bytes)
    );
    request
        .headers
        .iter()
        .filter(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| text(f.value))
        .collect()
}

/// A request head with `fields`, on the general path when `general` (an `Upgrade`
/// field that upgrades nothing hands it to hyper).
fn request(fields: &[u8], general: bool) -> Vec<u8> {
    let mut request = b"GET / HTTP/1.1\r\n".to_vec();
    request.extend_from_slice(fields);
    if general {
        request.extend_from_slice(b"Upgrade: none\r\n");
    }
    request.extend_from_slice(b"Connection: close\r\n\r\n");
    request
}

/// RFC 9112 section 3.2: a missing, repeated or invalid Host is answered 400 and never
/// forwarded (one with a quote could add an element to `Forwarded`).
#[tokio::test]
async fn host_fields_that_are_missing_repeated_or_invalid_are_refused_on_both_paths() {
    let (addr, received, _tasks) = recording(OK).await;
    let proxy = proxy_to(addr).await;
    let hosts: [&[u8]; 6] = [
        b"",
        b"Host: a.example\r\nHost: b.example\r\n",
        b"Host: x\", for=6.6.6.6;host=\"y\r\n",
        b"Host: a b\r\n",
        b"Host: user@a.example\r\n",
        b"Host: a.example:80x\r\n",
    ];
    for host in hosts {
        for general in [false, true] {
            let request = request(host, general);
            let answer = send(&proxy, &request).await;
            assert_eq!(
                status(&answer),
                400,
                "{}: {}",
                text(&request),
                text(&answer)
            );
            assert!(received.lock().unwrap().is_empty());
        }
    }
    // A valid one passes; `Connection` naming it does not remove it.
    for general in [false, true] {
        let request = request(b"Host: [::1]:8080\r\nConnection: host\r\n", general);
        let answer = send(&proxy, &request).await;
        assert_eq!(responses(&answer), [(200, "ok".to_owned())]);
        let sent = take(&received);
        assert_eq!(values_of(&sent, "host"), ["[::1]:8080"]);
        assert_eq!(
            values_of(&sent, "forwarded"),
            ["for=127.0.0.1;proto=http;host=\"::1\""]
        );
    }
    // HTTP/1.0 may leave it out.
    let answer = send(&proxy, b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(responses(&answer), [(200, "ok".to_owned())]);
}

/// The last `X-Forwarded-For` hop the backend sees is always the client: earlier ones
/// are kept, joined, when all are visible ASCII, and replaced when one is not.
#[tokio::test]
async fn x_forwarded_for_always_ends_with_the_client_on_both_paths() {
    let (addr, received, _tasks) = recording(OK).await;
    let proxy = proxy_to(addr).await;
    let cases: [(&[u8], &str); 3] = [
        (
            b"X-Forwarded-For: \x80\r\nX-Forwarded-For: 10.0.0.1\r\n",
            "127.0.0.1",
        ),
        (
            b"X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: \x80\r\n",
            "127.0.0.1",
        ),
        (
            b"X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2\r\n",
            "203.0.113.9, 10.0.0.1, 10.0.0.2, 127.0.0.1",
        ),
    ];
    for (fields, expected) in cases {
        for general in [false, true] {
            let mut head = b"Host: x\r\n".to_vec();
            head.extend_from_slice(fields);
            let answer = send(&proxy, &request(&head, general)).await;
            assert_eq!(responses(&answer), [(200, "ok".to_owned())]);
            assert_eq!(
                values_of(&take(&received), "x-forwarded-for"),
                [expected],
                "{} (general path: {general})",
                text(fields)
            );
        }
    }
}

/// A backend's `Connection` naming `Content-Length` does not take the framing off its
/// response: on a kept-alive connection the client would read the next response as
/// this one's body.
#[tokio::test]
async fn a_response_keeps_its_framing_whatever_connection_names() {
    let (addr, _received, _tasks) = recording(
        b"HTTP/1.1 200 OK\r\nConnection: content-length, x-a\r\nX-A: 1\r\nContent-Length: 2\r\n\r\nok",
    )
    .await;
    let proxy = proxy_to(addr).await;
    let answer = send(
        &proxy,
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        responses(&answer),
        [(200, "ok".to_owned()), (200, "ok".to_owned())]
    );
    assert!(!text(&answer).to_ascii_lowercase().contains("x-a"));
}

/// A request head that never ends is given 30 s from its first bytes, as on the general
/// path, not the listener's idle timeout (60 s). On a paused clock.
#[tokio::test(start_paused = true)]
async fn a_request_head_that_never_ends_is_cut_after_the_header_read_timeout() {
    let (addr, received, _tasks) = recording(OK).await;
    let proxy = proxy_to(addr).await;
    let mut client = TcpStream::connect(proxy.local_addr("web").unwrap())
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(60),
        "{waited:?}"
    );
    assert!(received.lock().unwrap().is_empty());
}

/// A request body that stops coming is the client's doing: past `timeouts.body` it is
/// answered 408 on both paths and not counted against the backend, however often.
/// On a paused clock.
#[tokio::test(start_paused = true)]
async fn a_stalled_request_body_is_answered_408_and_does_not_eject_the_backend() {
    let (addr, _received, _tasks) = recording(OK).await;
    let config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{addr}\" }}]\n\
         timeouts = {{ body = \"5s\" }}\n"
    ));
    let (proxy, _) = start(config).await;
    for general in [false, true, false, true, false, true] {
        let upgrade = if general { "Upgrade: none\r\n" } else { "" };
        let request =
            format!("POST / HTTP/1.1\r\nHost: x\r\n{upgrade}Content-Length: 10\r\n\r\nabc");
        let answer = send(&proxy, request.as_bytes()).await;
        assert_eq!(status(&answer), 408, "{}", text(&answer));
    }
    let answer = send(
        &proxy,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(responses(&answer), [(200, "ok".to_owned())]);
    let stats = proxy.stats();
    let backend = stats.backend("app", "s").unwrap();
    // Counted as requests without an answer, but never against the backend.
    assert_eq!(
        (backend.ejections, backend.ejected, backend.errors),
        (0, false, 6)
    );
}
