//! A body that stops moving is cut after the service's `timeouts.body`, on both paths
//! and whichever side stops: a backend that sends half a response body, a client that
//! sends half a request body or stops reading its response. A body that keeps moving,
//! however slowly, is never cut. Real sockets on loopback, on a paused clock: the
//! times asserted are the proxy's deadlines, not the machine's speed.

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
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use http_body_util::BodyExt;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The body timeout the tests configure.
const BODY: Duration = Duration::from_secs(30);
/// The gap between the bytes of a slow body: shorter than [`BODY`].
const GAP: Duration = Duration::from_secs(20);
/// How long a test waits for what must happen, on the paused clock; only a proxy that
/// never cuts reaches it.
const NEVER: Duration = Duration::from_secs(600);
/// The response body a client stops reading: more than loopback's socket buffers.
const BIG: usize = 64 << 20;

/// Adds nothing (the fast path) or a field that sends the request to the general path.
const PATHS: [(&str, &str); 2] = [("fast", ""), ("general", "Upgrade: none\r\n")];

/// A backend that answers by target, and counts the connections the proxy closed.
struct Backend {
    addr: SocketAddr,
    closed: Arc<AtomicUsize>,
    _tasks: JoinSet<()>,
}

async fn backend() -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let all = closed.clone();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let closed = all.clone();
            connections.spawn(async move {
                serve(stream).await;
                closed.fetch_add(1, SeqCst);
            });
        }
    });
    Backend {
        addr,
        closed,
        _tasks: tasks,
    }
}

/// Serves one backend connection until the proxy closes it.
async fn serve(mut stream: TcpStream) {
    // A small write must leave at once: on the paused clock, a byte Nagle's algorithm
    // holds back for an acknowledgement would look like a stall.
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    loop {
        let Some((target, length)) = request(&mut stream, &mut buf).await else {
            return;
        };
        if target == "/no-answer" {
            // Takes the whole body, then never answers.
            while buf.len() < length {
                if !more(&mut stream, &mut buf).await {
                    return;
                }
            }
            tokio::time::sleep(10 * NEVER).await;
            return;
        }
        if target == "/no-read" {
            // Takes none of the body (longer than any test waits).
            tokio::time::sleep(10 * NEVER).await;
            return;
        }
        while buf.len() < length {
            if !more(&mut stream, &mut buf).await {
                return;
            }
        }
        buf.drain(..length);
        let head = |framing: &str| format!("HTTP/1.1 200 OK\r\n{framing}\r\n\r\n");
        match target.as_str() {
            // Half a body, then nothing.
            "/stall-length" => {
                let answer = head("content-length: 10") + "hello";
                stream.write_all(answer.as_bytes()).await.unwrap();
                break;
            }
            "/stall-chunked" => {
                let answer = head("transfer-encoding: chunked") + "5\r\nhello\r\n";
                stream.write_all(answer.as_bytes()).await.unwrap();
                break;
            }
            // A byte every GAP, then nothing.
            "/slow-then-stall" => {
                stream
                    .write_all(head("content-length: 10").as_bytes())
                    .await
                    .unwrap();
                for byte in b"hello" {
                    stream.write_all(&[*byte]).await.unwrap();
                    tokio::time::sleep(GAP).await;
                }
                break;
            }
            // A byte every GAP, to the end.
            "/slow" => {
                stream
                    .write_all(head("content-length: 5").as_bytes())
                    .await
                    .unwrap();
                for byte in b"hello" {
                    tokio::time::sleep(GAP).await;
                    stream.write_all(&[*byte]).await.unwrap();
                }
            }
            // More than the client will read: written until the proxy closes.
            "/big" => {
                let answer = head(&format!("content-length: {BIG}"));
                stream.write_all(answer.as_bytes()).await.unwrap();
                let zeros = vec![0_u8; 64 * 1024];
                for _ in 0..BIG / zeros.len() {
                    if stream.write_all(&zeros).await.is_err() {
                        return;
                    }
                }
            }
            _ => {
                let body = format!("got {length}");
                let answer = head(&format!("content-length: {}", body.len())) + &body;
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        }
    }
    // Until the proxy closes the connection: never, were it pooled.
    while more(&mut stream, &mut buf).await {}
}

/// Reads more into `buf`; false at the end of the stream.
async fn more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0_u8; 8192];
    let n = stream.read(&mut chunk).await.unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n > 0
}

/// The next request head's target and `Content-Length`, taken out of `buf`.
async fn request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize)> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Request::new(&mut fields);
        if let httparse::Status::Complete(n) = parsed.parse(buf).unwrap() {
            let target = parsed.path.unwrap().to_owned();
            let length = field(parsed.headers, "content-length").map_or(0, |v| v.parse().unwrap());
            buf.drain(..n);
            return Some((target, length));
        }
        if !more(stream, buf).await {
            return None;
        }
    }
}

fn field(fields: &[httparse::Header<'_>], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| String::from_utf8_lossy(f.value).into_owned())
}

/// A client connection to the proxy.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(proxy: &cul8er_proxy::Proxy) -> Self {
        let stream = TcpStream::connect(proxy.local_addr("web").unwrap())
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The response head's status and `Content-Length`; what follows stays in `buf`.
    async fn head(&mut self) -> (u16, Option<usize>) {
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(n) = parsed.parse(&self.buf).unwrap() {
                let status = parsed.code.unwrap();
                let length = field(parsed.headers, "content-length").map(|v| v.parse().unwrap());
                self.buf.drain(..n);
                return (status, length);
            }
            assert!(
                more(&mut self.stream, &mut self.buf).await,
                "closed before a response head"
            );
        }
    }

    /// Everything up to the close; panics when the proxy never closes.
    async fn until_close(&mut self) -> Vec<u8> {
        let read = async { while more(&mut self.stream, &mut self.buf).await {} };
        tokio::time::timeout(NEVER, read)
            .await
            .expect("the proxy never closed the connection");
        std::mem::take(&mut self.buf)
    }
}

async fn proxy_to(addr: SocketAddr, timeouts: &str) -> cul8er_proxy::Proxy {
    let config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{addr}\" }}]\n\
         timeouts = {{ {timeouts} }}\n"
    ));
    start(config).await.0
}

fn errors(proxy: &cul8er_proxy::Proxy) -> u64 {
    proxy.stats().backend("app", "s").unwrap().errors
}

/// A plain GET on a new connection gets its answer: the proxy still serves.
async fn still_serves(proxy: &cul8er_proxy::Proxy) {
    let mut client = Client::connect(proxy).await;
    client
        .send(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(client.head().await, (200, Some(5)));
    assert_eq!(client.until_close().await, b"got 0");
}

async fn backend_connections_closed(backend: &Backend, count: usize) {
    let closed = backend.closed.clone();
    eventually("the proxy closes the stalled backend connections", || {
        closed.load(SeqCst) == count
    })
    .await;
}

/// A backend that sends its response head and half the body, then nothing: the client
/// gets what came and then the close after `timeouts.body` (no status can be given
/// any more), the backend's connection is closed rather than pooled, the backend gets
/// the error, and the next request is served.
#[tokio::test(start_paused = true)]
async fn a_response_body_the_backend_stops_sending_is_cut_on_both_paths() {
    let backend = backend().await;
    let proxy = proxy_to(backend.addr, "body = \"30s\"").await;
    let mut stalls = 0;
    for (path, extra) in PATHS {
        for (target, sent) in [
            ("/stall-length", &b"hello"[..]),
            ("/stall-chunked", b"5\r\nhello\r\n"),
        ] {
            let mut client = Client::connect(&proxy).await;
            let started = Instant::now();
            let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
            client.send(request.as_bytes()).await;
            assert_eq!(client.head().await.0, 200, "{path} {target}");
            let received = client.until_close().await;
            let waited = started.elapsed();
            assert_eq!(received, sent, "{path} {target}");
            assert!(
                waited >= BODY && waited < 2 * BODY,
                "{path} {target}: {waited:?}"
            );
            stalls += 1;
            backend_connections_closed(&backend, stalls).await;
            assert_eq!(errors(&proxy), stalls as u64, "{path} {target}");
            still_serves(&proxy).await;
        }
    }
}

/// The same over HTTP/2 to the client: the stream is reset after `timeouts.body`.
#[tokio::test(start_paused = true)]
async fn a_response_body_the_backend_stops_sending_resets_the_http2_stream() {
    let backend = backend().await;
    let proxy = proxy_to(backend.addr, "body = \"30s\"").await;
    let url = format!("http://{}", proxy.local_addr("web").unwrap());
    let client = h2c_client();
    let started = Instant::now();
    let response = client
        .get(format!("{url}/stall-length").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(NEVER, response.into_body().collect())
        .await
        .expect("the stalled stream was never reset");
    assert!(body.is_err(), "a cut body must not look complete");
    let waited = started.elapsed();
    assert!(waited >= BODY && waited < 2 * BODY, "{waited:?}");
    backend_connections_closed(&backend, 1).await;
    assert_eq!(errors(&proxy), 1);
    assert_eq!(get(&client, &format!("{url}/ok")).await.1, "got 0");
}

/// A body that keeps moving, a byte every 20 s with a 30 s timeout, is never cut
/// however long it takes; once it stops, the deadline runs from its last byte.
#[tokio::test(start_paused = true)]
async fn a_slow_body_that_keeps_moving_is_not_cut_and_the_deadline_follows_its_last_byte() {
    let backend = backend().await;
    let proxy = proxy_to(backend.addr, "body = \"30s\"").await;
    for (path, extra) in PATHS {
        let mut client = Client::connect(&proxy).await;
        let request = format!("GET /slow HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n");
        client.send(request.as_bytes()).await;
        assert_eq!(client.head().await, (200, Some(5)), "{path}");
        let started = Instant::now();
        assert_eq!(client.until_close().await, b"hello", "{path}");
        assert!(started.elapsed() >= 5 * GAP, "{path}");

        let mut client = Client::connect(&proxy).await;
        let started = Instant::now();
        let request = format!("GET /slow-then-stall HTTP/1.1\r\nHost: x\r\n{extra}\r\n");
        client.send(request.as_bytes()).await;
        assert_eq!(client.head().await, (200, Some(10)), "{path}");
        assert_eq!(client.until_close().await, b"hello", "{path}");
        // The last byte went at 4 GAP; the cut comes BODY after it.
        let waited = started.elapsed();
        assert!(
            waited >= 4 * GAP + BODY && waited < 5 * GAP + BODY,
            "{path}: {waited:?}"
        );
    }
    assert_eq!(errors(&proxy), 2);
}

/// A client that sends a request head with `Content-Length` and half the body, then
/// nothing: answered 408 after `timeouts.body` (well before `response_headers`), the
/// backend's connection is closed rather than reused, and the backend is not blamed
/// for it. A request body that keeps moving is not cut.
#[tokio::test(start_paused = true)]
async fn a_request_body_the_client_stops_sending_is_answered_408_after_the_body_timeout() {
    let backend = backend().await;
    let proxy = proxy_to(backend.addr, "body = \"30s\", response_headers = \"10m\"").await;
    for (round, (path, extra)) in PATHS.into_iter().enumerate() {
        let mut client = Client::connect(&proxy).await;
        let started = Instant::now();
        let request = format!("POST / HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 10\r\n\r\nabc");
        client.send(request.as_bytes()).await;
        let (status, _) = client.head().await;
        let waited = started.elapsed();
        assert_eq!(status, 408, "{path}");
        assert!(waited >= BODY && waited < 2 * BODY, "{path}: {waited:?}");
        let text = String::from_utf8_lossy(&client.until_close().await).into_owned();
        assert!(text.contains("stopped arriving for 30s"), "{path}: {text}");
        backend_connections_closed(&backend, round + 1).await;

        // Slow but moving: a byte every GAP, and the answer comes.
        let mut client = Client::connect(&proxy).await;
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 5\r\nConnection: close\r\n\r\n"
        );
        client.send(request.as_bytes()).await;
        for byte in b"hello" {
            tokio::time::sleep(GAP).await;
            client.send(&[*byte]).await;
        }
        assert_eq!(client.head().await, (200, Some(5)), "{path}");
        assert_eq!(client.until_close().await, b"got 5", "{path}");
    }
    let stats = proxy.stats();
    let stats = stats.backend("app", "s").unwrap();
    assert_eq!((stats.ejected, stats.ejections), (false, 0));
    still_serves(&proxy).await;
}

/// The listener idle timeout the tests of a client that stops reading configure:
/// longer than [`BODY`], so that each path shows which one it follows.
const IDLE: Duration = Duration::from_secs(45);

/// How much later than its limit a client that stops reading may be cut: well under
/// the gap between [`BODY`] and [`IDLE`], so that the tests tell which limit a path
/// follows.
const SLACK: Duration = Duration::from_secs(5);

/// The proxy with a listener idle timeout of [`IDLE`] and a body timeout of [`BODY`].
async fn proxy_with_idle(addr: SocketAddr) -> cul8er_proxy::Proxy {
    let config = cul8er_proxy::ProxyConfig::from_toml(
        &format!(
            "[[listeners]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\nidle_timeout = \"45s\"\n\
             routes = [{{ service = \"app\" }}]\n\n\
             [[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{addr}\" }}]\n\
             timeouts = {{ body = \"30s\" }}\n"
        ),
        "test",
    )
    .unwrap();
    cul8er_proxy::Proxy::start(config).await.unwrap()
}

/// Waits until the proxy has closed `count` backend connections and returns how long
/// that took from `started`.
async fn backend_closed_after(backend: &Backend, count: usize, started: Instant) -> Duration {
    tokio::time::timeout(NEVER, async {
        while backend.closed.load(SeqCst) < count {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the proxy never closed the backend connection");
    started.elapsed()
}

/// A client that stops reading a large response: once no byte has moved for
/// `timeouts.body` (fast path) or no byte could be written to it for the listener's
/// `idle_timeout` (general path: hyper stops polling a body it cannot write) its
/// connection is closed (it gets less than the whole body) and the backend's too, and
/// the backend is not blamed.
#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_and_the_backend_is_not_blamed() {
    let backend = backend().await;
    let proxy = proxy_with_idle(backend.addr).await;
    let requests: [(&str, &[u8], Duration); 2] = [
        ("fast", b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n", BODY),
        // HTTP/1.0 goes to hyper.
        ("general", b"GET /big HTTP/1.0\r\nHost: x\r\n\r\n", IDLE),
    ];
    for (round, (path, request, limit)) in requests.into_iter().enumerate() {
        let mut client = Client::connect(&proxy).await;
        let started = Instant::now();
        client.send(request).await;
        assert_eq!(client.head().await, (200, Some(BIG)), "{path}");
        // Reads nothing: the proxy gives up on it after its limit.
        let waited = backend_closed_after(&backend, round + 1, started).await;
        assert!(
            waited >= limit && waited < limit + SLACK,
            "{path}: {waited:?}"
        );
        let received = client.until_close().await;
        assert!(received.len() < BIG, "{path}: the whole body came");
        assert_eq!(errors(&proxy), 0, "{path}");
    }
    still_serves(&proxy).await;
}

/// A client that reads a large response in bursts with pauses of [`GAP`], shorter than
/// the listener's `idle_timeout` and `timeouts.body`, for more than twice either, is
/// never cut on either path: the proxy's writes wait for room for about a pause each
/// time, and each write that moves bytes ends the wait. (Each burst takes more than
/// a socket's largest send buffer, so that the proxy's socket has room again after it
/// whatever the kernel's buffer sizing.)
#[tokio::test(start_paused = true)]
async fn a_client_that_reads_in_bursts_with_pauses_is_never_cut() {
    const ROUNDS: u32 = 5;
    const BURST: usize = 8 << 20;
    let backend = backend().await;
    let proxy = proxy_with_idle(backend.addr).await;
    let requests: [(&str, &[u8]); 2] = [
        ("fast", b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n"),
        // HTTP/1.0 goes to hyper.
        ("general", b"GET /big HTTP/1.0\r\nHost: x\r\n\r\n"),
    ];
    assert!(ROUNDS * GAP > 2 * IDLE && ROUNDS as usize * BURST < BIG);
    for (path, request) in requests {
        let mut client = Client::connect(&proxy).await;
        client.send(request).await;
        assert_eq!(client.head().await, (200, Some(BIG)), "{path}");
        let started = Instant::now();
        let mut received = client.buf.len();
        let mut chunk = vec![0_u8; 256 * 1024];
        for _ in 0..ROUNDS {
            tokio::time::sleep(GAP).await;
            let burst = received + BURST;
            while received < burst {
                let n = client.stream.read(&mut chunk).await.unwrap_or(0);
                assert!(n > 0, "{path}: cut after {received} bytes");
                received += n;
            }
        }
        assert!(started.elapsed() >= ROUNDS * GAP, "{path}");
        assert_eq!(
            backend.closed.load(SeqCst),
            0,
            "{path}: the backend was cut"
        );
        drop(client);
        backend_connections_closed(&backend, 1).await;
        backend.closed.store(0, SeqCst);
    }
    assert_eq!(errors(&proxy), 0);
    still_serves(&proxy).await;
}

/// An HTTP/2 client that opens a large flow-control window, asks for a large response
/// and then reads nothing more from its socket: after the listener's `idle_timeout`
/// without a byte written its connection is closed, and the backend is not blamed.
#[tokio::test(start_paused = true)]
async fn an_http2_client_that_stops_reading_is_cut_and_the_backend_is_not_blamed() {
    let backend = backend().await;
    let proxy = proxy_with_idle(backend.addr).await;
    let mut client = Client::connect(&proxy).await;
    let started = Instant::now();
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS: the largest initial window; then the connection window to match.
    frames.extend_from_slice(&[0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x4, 0x7f, 0xff, 0xff, 0xff]);
    let increment: u32 = 0x7fff_ffff - 65_535;
    frames.extend_from_slice(&[0, 0, 4, 0x8, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&increment.to_be_bytes());
    // HEADERS on stream 1, END_STREAM | END_HEADERS: GET http://x/big, HPACK with
    // static-table names and literal values.
    let block = [&[0x82, 0x86, 0x44, 4][..], b"/big", &[0x41, 1], b"x"].concat();
    let length = u8::try_from(block.len()).unwrap();
    frames.extend_from_slice(&[0, 0, length, 0x1, 0x5, 0, 0, 0, 1]);
    frames.extend_from_slice(&block);
    client.send(&frames).await;
    // Reads nothing from here on.
    let waited = backend_closed_after(&backend, 1, started).await;
    assert!(waited >= IDLE && waited < IDLE + SLACK, "{waited:?}");
    let received = client.until_close().await;
    assert!(received.len() < BIG, "the whole body came");
    assert_eq!(errors(&proxy), 0);
    still_serves(&proxy).await;
}

/// TCP mode: a connection on which nothing moves either way for the listener's
/// `idle_timeout` is closed, whichever side went quiet.
#[tokio::test(start_paused = true)]
async fn a_tcp_connection_that_stops_moving_is_closed_after_the_idle_timeout() {
    let backend = backend().await;
    let config = cul8er_proxy::ProxyConfig::from_toml(
        &format!(
            "[[listeners]]\nname = \"db\"\nbind = \"127.0.0.1:0\"\nmode = \"tcp\"\n\
             service = \"app\"\nidle_timeout = \"30s\"\n\n\
             [[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{}\" }}]\n",
            backend.addr
        ),
        "test",
    )
    .unwrap();
    let proxy = cul8er_proxy::Proxy::start(config).await.unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr("db").unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /stall-length HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    tokio::time::timeout(NEVER, stream.read_to_end(&mut received))
        .await
        .expect("the quiet TCP connection was never closed")
        .unwrap();
    let waited = started.elapsed();
    assert!(received.ends_with(b"hello"));
    assert!(waited >= BODY && waited < 2 * BODY, "{waited:?}");
    backend_connections_closed(&backend, 1).await;
}

/// A backend that stops reading a request body (more than the socket buffers hold),
/// on both paths: after `timeouts.body` the client gets 502 (well before
/// `response_headers`) and the backend gets the error, which feeds passive ejection (no
/// answer came). (hyper stops polling a body it cannot write, so on the general path
/// the exchange's own deadline notices.)
#[tokio::test(start_paused = true)]
async fn a_request_body_the_backend_stops_reading_is_answered_502_after_the_body_timeout() {
    const EJECTION: Duration = Duration::from_secs(1);
    let backend = backend().await;
    let config = http_config(&format!(
        "[[services]]\nname = \"app\"\nbackends = [{{ name = \"s\", address = \"{}\" }}]\n\
         timeouts = {{ body = \"30s\", response_headers = \"10m\" }}\n\
         passive = {{ consecutive_failures = 1, base_ejection = \"1s\", max_ejection = \"1s\" }}\n",
        backend.addr
    ));
    let proxy = start(config).await.0;
    for (round, (path, extra)) in PATHS.into_iter().enumerate() {
        let stream = TcpStream::connect(proxy.local_addr("web").unwrap())
            .await
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let (reader, mut writer) = stream.into_split();
        let started = Instant::now();
        let head =
            format!("POST /no-read HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: {BIG}\r\n\r\n");
        let mut upload = JoinSet::new();
        upload.spawn(async move {
            writer.write_all(head.as_bytes()).await.unwrap();
            let zeros = vec![0_u8; 64 * 1024];
            for _ in 0..BIG / zeros.len() {
                if writer.write_all(&zeros).await.is_err() {
                    return;
                }
            }
        });
        // The answer's status, read while the upload is held up.
        let mut reader = reader;
        let mut answer = Vec::new();
        let status = tokio::time::timeout(NEVER, async {
            let mut chunk = [0_u8; 8192];
            loop {
                let mut fields = [httparse::EMPTY_HEADER; 32];
                let mut parsed = httparse::Response::new(&mut fields);
                if let httparse::Status::Complete(_) = parsed.parse(&answer).unwrap() {
                    return parsed.code.unwrap();
                }
                let n = reader.read(&mut chunk).await.unwrap();
                assert!(n > 0, "{path}: closed before a response head");
                answer.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("the held-up upload was never answered");
        let waited = started.elapsed();
        assert_eq!(status, 502, "{path}: {}", String::from_utf8_lossy(&answer));
        assert!(waited >= BODY && waited < 2 * BODY, "{path}: {waited:?}");
        assert_eq!(errors(&proxy), round as u64 + 1, "{path}");
        let stats = proxy.stats();
        let ejections = stats.backend("app", "s").unwrap().ejections;
        assert_eq!(
            ejections,
            round as u64 + 1,
            "{path}: not toward passive ejection"
        );
        drop(reader);
        while upload.join_next().await.is_some() {}
        // Back in rotation after the ejection.
        tokio::time::sleep(2 * EJECTION).await;
        still_serves(&proxy).await;
    }
}

/// A slow upload that keeps moving (a byte every 20 s) for far longer than
/// `response_headers` (10 s) is delivered whole and answered, on both paths: that
/// deadline runs from the end of the request, and while the body is sent only
/// `timeouts.body` applies.
#[tokio::test(start_paused = true)]
async fn a_slow_upload_that_keeps_moving_outlasts_the_response_headers_timeout() {
    let backend = backend().await;
    let proxy = proxy_to(backend.addr, "body = \"30s\", response_headers = \"10s\"").await;
    for (path, extra) in PATHS {
        let mut client = Client::connect(&proxy).await;
        let request = format!(
            "POST / HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 5\r\nConnection: close\r\n\r\n"
        );
        client.send(request.as_bytes()).await;
        let started = Instant::now();
        for byte in b"hello" {
            tokio::time::sleep(GAP).await;
            client.send(&[*byte]).await;
        }
        assert_eq!(client.head().await, (200, Some(5)), "{path}");
        assert!(started.elapsed() >= 5 * GAP, "{path}");
        assert_eq!(client.until_close().await, b"got 5", "{path}");
    }
    assert_eq!(errors(&proxy), 0);
}

/// A backend that reads a slowly sent body to its end and then never answers gets 504
/// `response_headers` after the body's last byte, not after the request's start, on
/// both paths; the backend gets the error.
#[tokio::test(start_paused = true)]
async fn the_response_headers_timeout_runs_from_the_end_of_the_request_body() {
    const RESPONSE_HEADERS: Duration = Duration::from_secs(10);
    let backend = backend().await;
    let proxy = proxy_to(backend.addr, "body = \"30s\", response_headers = \"10s\"").await;
    for (round, (path, extra)) in PATHS.into_iter().enumerate() {
        let mut client = Client::connect(&proxy).await;
        let request =
            format!("POST /no-answer HTTP/1.1\r\nHost: x\r\n{extra}Content-Length: 5\r\n\r\n");
        client.send(request.as_bytes()).await;
        for byte in b"hello" {
            tokio::time::sleep(GAP).await;
            client.send(&[*byte]).await;
        }
        let sent = Instant::now();
        let (status, _) = client.head().await;
        let waited = sent.elapsed();
        assert_eq!(status, 504, "{path}");
        assert!(
            waited >= RESPONSE_HEADERS && waited < 2 * RESPONSE_HEADERS,
            "{path}: {waited:?}"
        );
        assert_eq!(errors(&proxy), round as u64 + 1, "{path}");
    }
    still_serves(&proxy).await;
}
