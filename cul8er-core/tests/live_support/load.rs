//! The bounded load generator of the live rollout tests: `CLIENTS` clients sending
//! GET / on a new connection each time, with a 2 s client timeout, against a port on
//! 127.0.0.1, until stopped or `MAX_REQUESTS` in all or `MAX_TIME`. Answers are counted
//! by body; every failure is kept with its reason (a non-200 answer keeps its status
//! line and body).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// One GET on a new connection with a 2 s client timeout: the body, or why not.
pub async fn get(port: u16) -> Result<String, String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: web.test\r\n\r\n")
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let status = text.lines().next().unwrap_or_default().to_owned();
        if !status.contains(" 200 ") {
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
            return Err(format!("status {status:?} body {body:?}"));
        }
        Ok(text
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "timed out after 2 s".to_owned())?
}

/// The load generator: `CLIENTS` clients until stopped, or `MAX_REQUESTS` in all, or
/// `MAX_TIME`. Counts answers by body and keeps every failure.
/// Answers by (phase when the request started, phase when it ended, body).
pub type Phased = BTreeMap<(u32, u32, String), u64>;

pub struct Load {
    /// Answers by (phase when the request started, phase when it ended, body).
    phased: Arc<Mutex<Phased>>,
    stop: Arc<AtomicBool>,
    tasks: tokio::task::JoinSet<()>,
    answers: Arc<Mutex<BTreeMap<String, u64>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

pub const CLIENTS: usize = 8;
pub const MAX_REQUESTS: u32 = 100_000;
pub const MAX_TIME: Duration = Duration::from_secs(300);

impl Load {
    pub fn start(port: u16) -> Self {
        Self::start_phased(port, &Arc::new(AtomicU32::new(0)))
    }

    /// [`Load::start`], also counting answers by the value of `phase` when each
    /// request started and when it ended (the test moves it at each switch).
    pub fn start_phased(port: u16, phase: &Arc<AtomicU32>) -> Self {
        let phased = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU32::new(0));
        let answers = Arc::new(Mutex::new(BTreeMap::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        let until = tokio::time::Instant::now() + MAX_TIME;
        for _ in 0..CLIENTS {
            let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
            let (answers, failures) = (Arc::clone(&answers), Arc::clone(&failures));
            let (phase, phased) = (Arc::clone(phase), Arc::clone(&phased));
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed)
                    && sent.fetch_add(1, Ordering::Relaxed) < MAX_REQUESTS
                    && tokio::time::Instant::now() < until
                {
                    let started = phase.load(Ordering::SeqCst);
                    match get(port).await {
                        Ok(body) => {
                            let ended = phase.load(Ordering::SeqCst);
                            *phased
                                .lock()
                                .unwrap()
                                .entry((started, ended, body.clone()))
                                .or_insert(0) += 1;
                            *answers.lock().unwrap().entry(body).or_insert(0) += 1;
                        }
                        Err(why) => failures.lock().unwrap().push(why),
                    }
                }
            });
        }
        Self {
            phased,
            stop,
            tasks,
            answers,
            failures,
        }
    }

    /// Stops the clients; the answers by body and the failures.
    pub async fn finish(mut self) -> (BTreeMap<String, u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        let answers = self.answers.lock().unwrap().clone();
        let failures = self.failures.lock().unwrap().clone();
        (answers, failures)
    }
}

impl Load {
    /// Stops the clients; the answers by (start phase, end phase, body).
    pub async fn finish_phased(self) -> (Phased, Vec<String>) {
        let phased = Arc::clone(&self.phased);
        let (_, failures) = self.finish().await;
        let answers = phased.lock().unwrap().clone();
        (answers, failures)
    }
}
