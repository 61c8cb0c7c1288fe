//! Per-backend metrics: counters and a latency histogram kept in atomics on the request
//! path, read as [`Stats`] (JSON through the admin interface) or Prometheus text.
//!
//! Canary analysis compares a canary's error rate and p99 with stable's, so each
//! backend's [`LatencySummary`] carries p50/p99 estimated from its histogram.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::health::HealthStatus;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// One worker's counters, on cache lines of their own so that workers counting the
/// same backend do not contend.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Shard {
    requests: AtomicU64,
    status: [AtomicU64; 5],
    errors: AtomicU64,
    active: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

/// The live counters of one backend: a shard per worker thread, summed when read.
#[derive(Debug)]
pub(crate) struct BackendMetrics {
    shards: Box<[Shard]>,
    pub(crate) health_transitions: AtomicU64,
    pub(crate) ejections: AtomicU64,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        Self::new(1)
    }
}

impl BackendMetrics {
    pub(crate) fn new(shards: usize) -> Self {
        Self {
            shards: (0..shards.max(1)).map(|_| Shard::default()).collect(),
            health_transitions: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
        }
    }

    /// The calling worker's shard index.
    pub(crate) fn shard_index(&self) -> usize {
        crate::workers::worker_index() % self.shards.len()
    }

    fn shard(&self) -> &Shard {
        &self.shards[self.shard_index()]
    }

    fn sum(&self, field: impl Fn(&Shard) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| field(s).load(Relaxed)).sum()
    }

    /// Counts a request starting; returns the shard to hand to [`Self::finish`].
    pub(crate) fn start(&self) -> usize {
        let index = self.shard_index();
        let shard = &self.shards[index];
        shard.requests.fetch_add(1, Relaxed);
        shard.active.fetch_add(1, Relaxed);
        index
    }

    /// Counts a request ending; returns whether the shard has nothing in flight.
    pub(crate) fn finish(&self, shard: usize) -> bool {
        self.shards[shard].active.fetch_sub(1, Relaxed) == 1
    }

    pub(crate) fn requests(&self) -> u64 {
        self.sum(|s| &s.requests)
    }

    pub(crate) fn errors(&self) -> u64 {
        self.sum(|s| &s.errors)
    }

    pub(crate) fn active(&self) -> u64 {
        self.sum(|s| &s.active)
    }

    /// Records a response's status class and its time to headers.
    pub(crate) fn record_response(&self, status: u16, latency: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let shard = self.shard();
        shard.status[class].fetch_add(1, Relaxed);
        record_latency(shard, latency);
    }

    /// Records a request that got no response from the backend (connect error, timeout).
    pub(crate) fn record_error(&self, latency: Duration) {
        let shard = self.shard();
        shard.errors.fetch_add(1, Relaxed);
        record_latency(shard, latency);
    }

    /// Records an answer whose body the backend stopped sending: an error, its time to
    /// headers already recorded with its status.
    pub(crate) fn record_broken_body(&self) {
        self.shard().errors.fetch_add(1, Relaxed);
    }

    /// Records a TCP connection's connect time.
    pub(crate) fn record_connected(&self, latency: Duration) {
        record_latency(self.shard(), latency);
    }

    pub(crate) fn latency(&self) -> LatencySummary {
        let counts: Vec<u64> = (0..=LATENCY_BUCKETS.len())
            .map(|i| self.sum(|s| &s.buckets[i]))
            .collect();
        LatencySummary::from_counts(&counts, self.sum(|s| &s.latency_sum_us))
    }

    pub(crate) fn statuses(&self) -> StatusCounts {
        let s = |i: usize| self.sum(|shard| &shard.status[i]);
        StatusCounts {
            informational: s(0),
            success: s(1),
            redirection: s(2),
            client_error: s(3),
            server_error: s(4),
        }
    }
}

fn record_latency(shard: &Shard, latency: Duration) {
    let secs = latency.as_secs_f64();
    let index = LATENCY_BUCKETS
        .iter()
        .position(|&le| secs <= le)
        .unwrap_or(LATENCY_BUCKETS.len());
    shard.buckets[index].fetch_add(1, Relaxed);
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    shard.latency_sum_us.fetch_add(micros, Relaxed);
}

/// Responses by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// 1xx.
    pub informational: u64,
    /// 2xx.
    pub success: u64,
    /// 3xx.
    pub redirection: u64,
    /// 4xx.
    pub client_error: u64,
    /// 5xx answered by the backend.
    pub server_error: u64,
}

/// A latency histogram (time to response headers) with estimated quantiles.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Observations.
    pub count: u64,
    /// Sum of all observations, in seconds.
    pub sum_seconds: f64,
    /// Cumulative counts per upper bound in seconds (`le`), as Prometheus has them; the
    /// last bound is infinite and written as `null` in JSON.
    pub buckets: Vec<(Option<f64>, u64)>,
    /// Estimated median, in milliseconds (`None` without observations).
    pub p50_ms: Option<f64>,
    /// Estimated 99th percentile, in milliseconds.
    pub p99_ms: Option<f64>,
}

impl LatencySummary {
    fn from_counts(counts: &[u64], sum_us: u64) -> Self {
        let mut cumulative = 0;
        let buckets: Vec<(Option<f64>, u64)> = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                cumulative += c;
                (LATENCY_BUCKETS.get(i).copied(), cumulative)
            })
            .collect();
        let count = cumulative;
        #[expect(
            clippy::cast_precision_loss,
            reason = "microsecond sums fit f64 well enough"
        )]
        let sum_seconds = sum_us as f64 / 1e6;
        let quantile = |q: f64| histogram_quantile(&buckets, q).map(|s| s * 1000.0);
        Self {
            count,
            sum_seconds,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            buckets,
        }
    }
}

/// The `q` quantile (0 to 1) of a cumulative histogram given as `(le, count)` pairs
/// in seconds, the form [`LatencySummary::buckets`] has: linear interpolation inside the
/// bucket holding it, as Prometheus's `histogram_quantile` does; the open last bucket
/// answers its lower bound. `None` without observations. Also used on the difference
/// of two snapshots (a canary step's window).
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "counts far below 2^52")]
pub fn histogram_quantile(buckets: &[(Option<f64>, u64)], q: f64) -> Option<f64> {
    let count = buckets.last().map_or(0, |&(_, c)| c);
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut lower_bound = 0.0;
    let mut lower_count = 0;
    for &(le, cumulative) in buckets {
        if cumulative as f64 >= rank {
            let Some(upper) = le else {
                return Some(lower_bound);
            };
            let in_bucket = cumulative.saturating_sub(lower_count) as f64;
            let fraction = if in_bucket > 0.0 {
                (rank - lower_count as f64) / in_bucket
            } else {
                1.0
            };
            return Some(lower_bound + (upper - lower_bound) * fraction);
        }
        lower_bound = le.unwrap_or(lower_bound);
        lower_count = cumulative;
    }
    Some(lower_bound)
}

/// Everything the proxy counts, per service and backend.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The services, in configuration order.
    pub services: Vec<ServiceStats>,
}

/// One service's backends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// The service name.
    pub name: String,
    /// Its backends, in configuration order, then removed ones still draining.
    pub backends: Vec<BackendStats>,
}

/// One backend's configuration, state and counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendStats {
    /// The backend name.
    pub name: String,
    /// Its address.
    pub address: String,
    /// Its current weight (0 while draining or removed).
    pub weight: u32,
    /// Active health.
    pub health: HealthStatus,
    /// The last active check's reason, if one ran.
    pub last_check: Option<String>,
    /// Whether passive ejection has it out now.
    pub ejected: bool,
    /// Whether it was removed from the configuration and still has requests in flight.
    pub removed: bool,
    /// Requests in flight (open tunnels included).
    pub active: u64,
    /// Requests sent to it.
    pub requests: u64,
    /// Its answers by status class.
    pub responses: StatusCounts,
    /// Requests it did not answer (connect errors, timeouts, broken connections), and
    /// answers whose body it stopped sending.
    pub errors: u64,
    /// Time to response headers.
    pub latency: LatencySummary,
    /// Health status changes.
    pub health_transitions: u64,
    /// Passive ejections.
    pub ejections: u64,
}

impl BackendStats {
    /// The share of requests that failed: 5xx answers and unanswered requests.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            return 0.0;
        }
        (self.responses.server_error + self.errors) as f64 / self.requests as f64
    }
}

impl Stats {
    /// Finds one backend's figures.
    #[must_use]
    pub fn backend(&self, service: &str, backend: &str) -> Option<&BackendStats> {
        self.services
            .iter()
            .find(|s| s.name == service)?
            .backends
            .iter()
            .find(|b| b.name == backend)
    }

    /// Renders the Prometheus text exposition format.
    #[must_use]
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let families: [(&str, &str, &str); 9] = [
            ("requests_total", "counter", "Requests sent to the backend."),
            (
                "responses_total",
                "counter",
                "Backend answers by status class.",
            ),
            (
                "errors_total",
                "counter",
                "Requests the backend did not answer.",
            ),
            (
                "active_requests",
                "gauge",
                "Requests and tunnels in flight.",
            ),
            ("weight", "gauge", "Current weight."),
            (
                "healthy",
                "gauge",
                "1 when active checks pass and it is not ejected.",
            ),
            (
                "health_transitions_total",
                "counter",
                "Health status changes.",
            ),
            ("ejections_total", "counter", "Passive ejections."),
            (
                "request_duration_seconds",
                "histogram",
                "Time to response headers.",
            ),
        ];
        for (name, kind, help) in families {
            let _ = writeln!(out, "# HELP cul8er_proxy_backend_{name} {help}");
            let _ = writeln!(out, "# TYPE cul8er_proxy_backend_{name} {kind}");
            for service in &self.services {
                for b in &service.backends {
                    let labels = format!("service=\"{}\",backend=\"{}\"", service.name, b.name);
                    let metric = format!("cul8er_proxy_backend_{name}");
                    let mut line = |extra: &str, value: String| {
                        let _ = writeln!(out, "{metric}{{{labels}{extra}}} {value}");
                    };
                    match name {
                        "requests_total" => line("", b.requests.to_string()),
                        "responses_total" => {
                            let r = &b.responses;
                            for (class, v) in [
                                ("1xx", r.informational),
                                ("2xx", r.success),
                                ("3xx", r.redirection),
                                ("4xx", r.client_error),
                                ("5xx", r.server_error),
                            ] {
                                line(&format!(",class=\"{class}\""), v.to_string());
                            }
                        }
                        "errors_total" => line("", b.errors.to_string()),
                        "active_requests" => line("", b.active.to_string()),
                        "weight" => line("", b.weight.to_string()),
                        "healthy" => {
                            let up = b.health != HealthStatus::Unhealthy
                                && b.health != HealthStatus::Unknown
                                && !b.ejected;
                            line("", u8::from(up).to_string());
                        }
                        "health_transitions_total" => line("", b.health_transitions.to_string()),
                        "ejections_total" => line("", b.ejections.to_string()),
                        _ => {
                            for &(le, count) in &b.latency.buckets {
                                let le = le.map_or_else(|| "+Inf".to_owned(), |v| v.to_string());
                                let _ = writeln!(
                                    out,
                                    "{metric}_bucket{{{labels},le=\"{le}\"}} {count}"
                                );
                            }
                            let _ =
                                writeln!(out, "{metric}_sum{{{labels}}} {}", b.latency.sum_seconds);
                            let _ = writeln!(out, "{metric}_count{{{labels}}} {}", b.latency.count);
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let m = BackendMetrics::default();
        for _ in 0..98 {
            m.record_response(200, Duration::from_micros(700));
        }
        m.record_response(503, Duration::from_millis(20));
        m.record_error(Duration::from_millis(20));
        let latency = m.latency();
        assert_eq!(latency.count, 100);
        let p50 = latency.p50_ms.unwrap();
        assert!(p50 > 0.5 && p50 <= 1.0, "{p50}");
        let p99 = latency.p99_ms.unwrap();
        assert!(p99 > 10.0 && p99 <= 25.0, "{p99}");
        assert_eq!(m.statuses().server_error, 1);
        assert_eq!(m.statuses().success, 98);
        assert_eq!(LatencySummary::default().p99_ms, None);
    }

    #[test]
    fn prometheus_text_has_every_family() {
        let m = BackendMetrics::default();
        m.record_response(200, Duration::from_millis(3));
        let stats = Stats {
            services: vec![ServiceStats {
                name: "api".into(),
                backends: vec![BackendStats {
                    name: "a".into(),
                    address: "127.0.0.1:1".into(),
                    weight: 2,
                    health: HealthStatus::Healthy,
                    last_check: None,
                    ejected: false,
                    removed: false,
                    active: 0,
                    requests: 1,
                    responses: m.statuses(),
                    errors: 0,
                    latency: m.latency(),
                    health_transitions: 1,
                    ejections: 0,
                }],
            }],
        };
        let text = stats.to_prometheus();
        for needle in [
            "cul8er_proxy_backend_requests_total{service=\"api\",backend=\"a\"} 1",
            "cul8er_proxy_backend_responses_total{service=\"api\",backend=\"a\",class=\"2xx\"} 1",
            "cul8er_proxy_backend_request_duration_seconds_bucket{service=\"api\",backend=\"a\",le=\"0.005\"} 1",
            "cul8er_proxy_backend_request_duration_seconds_bucket{service=\"api\",backend=\"a\",le=\"+Inf\"} 1",
            "cul8er_proxy_backend_healthy{service=\"api\",backend=\"a\"} 1",
            "cul8er_proxy_backend_weight{service=\"api\",backend=\"a\"} 2",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
