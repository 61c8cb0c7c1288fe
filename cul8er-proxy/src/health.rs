//! Health: active checks (HTTP or TCP), rise/fall thresholds and passive ejection.
//!
//! The threshold and back-off logic are plain values that take the time as an argument,
//! so they are tested on a paused tokio clock; the checks themselves are the functions
//! that `cul8er-proxy probe` also runs inside instances.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::PassiveConfig;

/// A backend's health as the active checks see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Not checked yet: gets no traffic until its first check passes.
    Unknown,
    /// Passing.
    Healthy,
    /// Failing.
    Unhealthy,
}

/// Consecutive check results turned into a status with rise and fall thresholds.
///
/// The first result decides at once (a new backend need not wait `rise` intervals to
/// be known healthy); after that `rise` passes or `fall` failures in a row flip it.
#[derive(Debug, Clone)]
pub struct HealthTracker {
    status: HealthStatus,
    passes: u32,
    failures: u32,
    rise: u32,
    fall: u32,
}

impl HealthTracker {
    /// A tracker in [`HealthStatus::Unknown`].
    #[must_use]
    pub fn new(rise: u32, fall: u32) -> Self {
        Self {
            status: HealthStatus::Unknown,
            passes: 0,
            failures: 0,
            rise,
            fall,
        }
    }

    /// The current status.
    #[must_use]
    pub fn status(&self) -> HealthStatus {
        self.status
    }

    /// Records one result; returns the new status when it changed.
    pub fn record(&mut self, passed: bool) -> Option<HealthStatus> {
        let before = self.status;
        if passed {
            self.passes += 1;
            self.failures = 0;
            if self.status == HealthStatus::Unknown || self.passes >= self.rise {
                self.status = HealthStatus::Healthy;
            }
        } else {
            self.failures += 1;
            self.passes = 0;
            if self.status == HealthStatus::Unknown || self.failures >= self.fall {
                self.status = HealthStatus::Unhealthy;
            }
        }
        (self.status != before).then_some(self.status)
    }
}

/// Passive ejection: `consecutive_failures` connect errors or 5xx answers in a row take
/// a backend out for a back-off that doubles with each ejection (capped); a success
/// after it returns resets the back-off.
#[derive(Debug, Clone)]
pub struct PassiveEjector {
    config: PassiveConfig,
    failures: u32,
    ejections: u32,
    until: Option<Instant>,
}

impl PassiveEjector {
    /// An ejector that has seen nothing.
    #[must_use]
    pub fn new(config: PassiveConfig) -> Self {
        Self {
            config,
            failures: 0,
            ejections: 0,
            until: None,
        }
    }

    /// Whether the backend is out at `now`.
    #[must_use]
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// The end of the current ejection, if any.
    #[must_use]
    pub fn ejected_until(&self) -> Option<Instant> {
        self.until
    }

    /// Records a failure; returns the ejection's length when this one ejects.
    pub fn record_failure(&mut self, now: Instant) -> Option<Duration> {
        if self.config.consecutive_failures == 0 || self.is_ejected(now) {
            return None;
        }
        self.failures += 1;
        if self.failures < self.config.consecutive_failures {
            return None;
        }
        self.failures = 0;
        let factor = 1_u32.checked_shl(self.ejections).unwrap_or(u32::MAX);
        let length = self
            .config
            .base_ejection
            .checked_mul(factor)
            .map_or(self.config.max_ejection, |d| {
                d.min(self.config.max_ejection)
            });
        self.ejections = self.ejections.saturating_add(1);
        self.until = Some(now + length);
        Some(length)
    }

    /// Records a success: the failure count and, once back, the back-off reset.
    pub fn record_success(&mut self, now: Instant) {
        self.failures = 0;
        if !self.is_ejected(now) {
            self.ejections = 0;
            self.until = None;
        }
    }
}

/// What a health check is asked to verify over HTTP.
#[derive(Debug, Clone)]
pub struct HttpCheck {
    /// `host:port` to connect to.
    pub target: String,
    /// The `Host` header to send.
    pub host: String,
    /// The path and query to GET.
    pub path: String,
    /// The status that passes.
    pub expect_status: u16,
    /// A substring the body must contain.
    pub body_contains: Option<String>,
    /// The whole check's deadline.
    pub timeout: Duration,
}

/// The result of one check: passed or not, with a one-line reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckOutcome {
    /// Whether the check passed.
    pub passed: bool,
    /// What was seen, e.g. `status 200` or `connect: connection refused`.
    pub reason: String,
}

impl CheckOutcome {
    fn fail(reason: impl Into<String>) -> Self {
        Self {
            passed: false,
            reason: reason.into(),
        }
    }
}

const BODY_LIMIT: usize = 64 * 1024;

/// Runs one HTTP/1.1 GET check. A failed check is data, never an error.
pub async fn check_http(check: &HttpCheck) -> CheckOutcome {
    match tokio::time::timeout(check.timeout, http_attempt(check)).await {
        Ok(outcome) => outcome,
        Err(_) => CheckOutcome::fail(format!(
            "no answer within {}",
            crate::config::format_duration(check.timeout)
        )),
    }
}

async fn http_attempt(check: &HttpCheck) -> CheckOutcome {
    let stream = match TcpStream::connect(&check.target).await {
        Ok(stream) => stream,
        Err(e) => return CheckOutcome::fail(format!("connect to {}: {e}", check.target)),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await {
            Ok(pair) => pair,
            Err(e) => return CheckOutcome::fail(format!("HTTP handshake: {e}")),
        };
    let request = match http::Request::get(&check.path)
        .header(http::header::HOST, &check.host)
        .header(http::header::USER_AGENT, "cul8er-proxy-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
    {
        Ok(request) => request,
        Err(e) => return CheckOutcome::fail(format!("bad request path {:?}: {e}", check.path)),
    };
    let exchange = async {
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await;
        Ok::<_, hyper::Error>((status, body))
    };
    let result = tokio::select! {
        result = exchange => result,
        Err(e) = connection => Err(e),
    };
    let (status, body) = match result {
        Ok(pair) => pair,
        Err(e) => return CheckOutcome::fail(format!("HTTP exchange: {e}")),
    };
    if status != check.expect_status {
        return CheckOutcome::fail(format!("status {status}, expected {}", check.expect_status));
    }
    if let Some(needle) = &check.body_contains {
        let body = match body {
            Ok(body) => body.to_bytes(),
            Err(e) => return CheckOutcome::fail(format!("reading the body: {e}")),
        };
        if !String::from_utf8_lossy(&body).contains(needle.as_str()) {
            return CheckOutcome::fail(format!("status {status}, body lacks {needle:?}"));
        }
    }
    CheckOutcome {
        passed: true,
        reason: format!("status {status}"),
    }
}

/// Runs one TCP connect check.
pub async fn check_tcp(target: &str, timeout: Duration) -> CheckOutcome {
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(_)) => CheckOutcome {
            passed: true,
            reason: format!("connected to {target}"),
        },
        Ok(Err(e)) => CheckOutcome::fail(format!("connect to {target}: {e}")),
        Err(_) => CheckOutcome::fail(format!(
            "connect to {target}: no answer within {}",
            crate::config::format_duration(timeout)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.status(), HealthStatus::Unknown);
        assert_eq!(t.record(true), Some(HealthStatus::Healthy));
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(true), None, "a pass resets the failure count");
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), None);
        assert_eq!(t.record(false), Some(HealthStatus::Unhealthy));
        assert_eq!(t.record(true), None);
        assert_eq!(t.record(true), Some(HealthStatus::Healthy));

        let mut t = HealthTracker::new(2, 3);
        assert_eq!(t.record(false), Some(HealthStatus::Unhealthy));
    }

    fn passive(failures: u32) -> PassiveConfig {
        PassiveConfig {
            consecutive_failures: failures,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(5),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_doubles_up_to_the_cap_and_resets_on_success() {
        let mut e = PassiveEjector::new(passive(2));
        let now = Instant::now();
        assert_eq!(e.record_failure(now), None);
        assert_eq!(e.record_failure(now), Some(Duration::from_secs(1)));
        assert!(e.is_ejected(Instant::now()));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(e.is_ejected(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!e.is_ejected(Instant::now()));

        let mut lengths = Vec::new();
        for _ in 0..4 {
            let now = Instant::now();
            e.record_failure(now);
            lengths.push(e.record_failure(now).unwrap());
            tokio::time::advance(lengths[lengths.len() - 1]).await;
        }
        let secs: Vec<_> = lengths.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 5, 5]);

        e.record_success(Instant::now());
        let now = Instant::now();
        e.record_failure(now);
        assert_eq!(e.record_failure(now), Some(Duration::from_secs(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_threshold_never_ejects() {
        let mut e = PassiveEjector::new(passive(0));
        for _ in 0..100 {
            assert_eq!(e.record_failure(Instant::now()), None);
        }
        assert!(!e.is_ejected(Instant::now()));
    }
}
