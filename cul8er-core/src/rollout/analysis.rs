//! Canary analysis: is the canary at this step doing as well as the thresholds ask?
//!
//! The edge counts per backend, cumulatively since the backend appeared in the proxy
//! (`cul8er_proxy::metrics::BackendStats`). A step is judged on what happened
//! *during* it: the caller reads one service's backend statistics when the step's
//! weights take effect and again when its pause ends, splits each reading into the
//! canary's backends and stable's, and hands both pairs to [`judge`]. This module does
//! no I/O and keeps no clock, so every rule below is pinned by unit tests.
//!
//! # The rules
//!
//! Each side (canary, stable) becomes a [`Window`]:
//!
//! - **Matching.** Backends are matched by name between the two readings; several
//!   entries of one name in a reading (a removed backend still draining beside its
//!   replacement) are added up.
//! - **Requests** are the growth of the `requests` counter; **failures** the growth of
//!   5xx answers plus requests the backend never answered (connect errors, timeouts,
//!   broken connections). The **error rate** is failures over requests, in percent
//!   like `max-error-rate`; requests are counted when sent and failures when they end,
//!   so a window can see the end of a request it did not see start: the rate is taken
//!   over `max(requests, failures)` and never exceeds 100%. No requests means 0%.
//! - **p99 latency** (time to response headers) comes from the growth of the
//!   cumulative histogram buckets, interpolated inside the bucket that holds the 99th
//!   percentile as Prometheus's `histogram_quantile` does (a quantile in the open last
//!   bucket answers that bucket's lower bound). The quantiles the proxy estimates
//!   itself cover the backend's whole life, not the window, and are not used. No
//!   latency observations means no p99 (`None`).
//! - **A counter that went down** means the proxy restarted (its counters start at
//!   zero): that backend's window is its whole second reading, what it counted before
//!   the restart within the window is lost, and the backend is listed in
//!   [`Window::reset`]. Buckets with other bounds in the two readings count as a
//!   restart too.
//! - **A backend in the second reading only** appeared during the step: all of its
//!   counts are the window's. **A backend in the first reading only** went away during
//!   the step: what it served in the window is unknown, it adds nothing and is listed
//!   in [`Window::vanished`].
//!
//! Then [`judge`] decides, in this order:
//!
//! 1. The canary saw fewer than `min-requests` requests: [`Verdict::NotEnoughRequests`]
//!    (the caller decides whether to wait longer; stable's count does not matter) —
//!    unless its failures alone are already more than `max-error-rate` of
//!    `min-requests`: then it could not pass once it has seen them, whatever the rest
//!    do, and the step fails at once ([`Breach::FailuresBeforeMinimum`]), e.g.
//!    `canary failed 5 of its first 5 requests, more than 1% of the 20 min-requests
//!    asks for (stable 0.0% over 300 requests)`.
//! 2. The canary's error rate is above `max-error-rate`, or its p99 is above
//!    `max-p99-latency`: [`Verdict::Fail`], with every threshold broken and a reason
//!    that compares with stable, e.g. `canary error rate 20.3% over 412 requests >
//!    1% (stable 0.0% over 3688 requests)`. A value exactly at its limit passes: the
//!    limits are the highest values tolerated. A canary without latency observations
//!    does not break `max-p99-latency`.
//! 3. Otherwise [`Verdict::Pass`].
//!
//! The thresholds are absolute: stable's figures are reported beside the canary's so
//! that a reader sees whether the canary or the whole service is the problem, but they
//! do not move the limits.
//!
//! # Without thresholds
//!
//! A canary without an `analysis` block is judged with [`DEFAULT_ANALYSIS`]: a canary
//! failing more than [`DEFAULT_MAX_ERROR_RATE`] (5%) of its requests fails the step, and
//! no minimum of requests is asked, so a quiet service is not held up. An [`Analysis`]
//! with neither threshold (the topology format refuses one, but code can build it)
//! gets the same default error rate; its `min-requests` still applies.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use cul8er_proxy::metrics::{BackendStats, histogram_quantile};
use serde::{Deserialize, Serialize};

use crate::topology::Analysis;

/// The error rate, in percent, that fails a canary step when no threshold is
/// configured.
pub const DEFAULT_MAX_ERROR_RATE: f64 = 5.0;

/// The analysis a canary without an `analysis` block gets: at most
/// [`DEFAULT_MAX_ERROR_RATE`] percent of failed requests, no latency limit, no
/// minimum of requests.
pub const DEFAULT_ANALYSIS: Analysis = Analysis {
    max_error_rate: Some(DEFAULT_MAX_ERROR_RATE),
    max_p99_latency: None,
    min_requests: 0,
};

/// Relative slack when comparing with a limit, so that a value exactly at the limit
/// is not failed by floating-point rounding.
const AT_LIMIT: f64 = 1e-9;

/// What one side (canary or stable) did during a step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Window {
    /// Requests sent to the side's backends.
    pub requests: u64,
    /// 5xx answers plus requests that got no answer.
    pub failures: u64,
    /// Failures over requests, in percent (0 to 100), as `max-error-rate` is written.
    pub error_rate: f64,
    /// The 99th percentile of the time to response headers, in milliseconds; `None`
    /// without observations.
    pub p99_ms: Option<f64>,
    /// Backends whose counters went back (the proxy restarted): only what they counted
    /// since the restart is in the window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reset: Vec<String>,
    /// Backends read at the start but gone at the end: their traffic in the window is
    /// unknown and not counted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vanished: Vec<String>,
}

impl Window {
    /// Whether nothing was sent to the side.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.failures == 0
    }
}

/// A threshold the canary broke.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "threshold", rename_all = "kebab-case")]
pub enum Breach {
    /// The canary's error rate is above `max-error-rate`.
    ErrorRate {
        /// The limit, in percent.
        limit: f64,
        /// The canary's rate, in percent.
        canary: f64,
        /// Stable's rate, in percent.
        stable: f64,
    },
    /// Before `min-requests`, the canary's failures are already more than
    /// `max-error-rate` of `min-requests`.
    FailuresBeforeMinimum {
        /// The limit, in percent.
        limit: f64,
        /// The canary's failures so far.
        failures: u64,
        /// `min-requests`.
        needed: u64,
    },
    /// The canary's p99 latency is above `max-p99-latency`.
    P99Latency {
        /// The limit, in milliseconds.
        limit_ms: f64,
        /// The canary's p99, in milliseconds.
        canary_ms: f64,
        /// Stable's p99, in milliseconds, when it had observations.
        stable_ms: Option<f64>,
    },
}

/// The outcome of a canary step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Every threshold holds.
    Pass {
        /// The canary's window.
        canary: Window,
        /// Stable's window.
        stable: Window,
    },
    /// The canary broke at least one threshold.
    Fail {
        /// Every broken threshold, compared with stable, in one sentence.
        reason: String,
        /// The broken thresholds.
        breaches: Vec<Breach>,
        /// The canary's window.
        canary: Window,
        /// Stable's window.
        stable: Window,
    },
    /// The canary has not seen `min-requests` requests yet.
    NotEnoughRequests {
        /// Requests the canary saw.
        seen: u64,
        /// Requests the analysis asks for.
        needed: u64,
        /// The canary's window.
        canary: Window,
        /// Stable's window.
        stable: Window,
    },
}

impl Verdict {
    /// Whether the step passed.
    #[must_use]
    pub fn passed(&self) -> bool {
        matches!(self, Self::Pass { .. })
    }

    /// The canary's window.
    #[must_use]
    pub fn canary(&self) -> &Window {
        match self {
            Self::Pass { canary, .. }
            | Self::Fail { canary, .. }
            | Self::NotEnoughRequests { canary, .. } => canary,
        }
    }

    /// Stable's window.
    #[must_use]
    pub fn stable(&self) -> &Window {
        match self {
            Self::Pass { stable, .. }
            | Self::Fail { stable, .. }
            | Self::NotEnoughRequests { stable, .. } => stable,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pass { canary, stable } => write!(
                f,
                "canary passed: {} over {} requests, p99 {} (stable {} over {} requests, p99 {})",
                percent(canary.error_rate, None),
                canary.requests,
                millis(canary.p99_ms),
                percent(stable.error_rate, None),
                stable.requests,
                millis(stable.p99_ms),
            ),
            Self::Fail { reason, .. } => f.write_str(reason),
            Self::NotEnoughRequests { seen, needed, .. } => write!(
                f,
                "canary saw {seen} of the {needed} requests the analysis needs"
            ),
        }
    }
}

/// A cumulative latency histogram: `(upper bound in seconds, count)`, the last bound
/// `None` for infinity, as `LatencySummary::buckets` has it.
type Histogram = Vec<(Option<f64>, u64)>;

/// One backend's counters, as far as the analysis reads them.
#[derive(Debug, Clone, Default)]
struct Counters {
    requests: u64,
    failures: u64,
    buckets: Histogram,
}

impl Counters {
    fn of(stats: &BackendStats) -> Self {
        Self {
            requests: stats.requests,
            failures: stats.responses.server_error.saturating_add(stats.errors),
            buckets: stats.latency.buckets.clone(),
        }
    }

    fn add(&mut self, other: &Self) {
        self.requests = self.requests.saturating_add(other.requests);
        self.failures = self.failures.saturating_add(other.failures);
        add_histogram(&mut self.buckets, &other.buckets);
    }

    /// `self - start`, or `None` when a counter went down or the buckets changed.
    fn since(&self, start: &Self) -> Option<Self> {
        if !same_bounds(&self.buckets, &start.buckets) {
            return None;
        }
        let buckets = self
            .buckets
            .iter()
            .zip(&start.buckets)
            .map(|(&(le, end), &(_, begin))| end.checked_sub(begin).map(|c| (le, c)))
            .collect::<Option<Histogram>>()?;
        Some(Self {
            requests: self.requests.checked_sub(start.requests)?,
            failures: self.failures.checked_sub(start.failures)?,
            buckets,
        })
    }
}

/// Each backend's counters by name, entries of one name added up.
fn by_name(stats: &[BackendStats]) -> BTreeMap<&str, Counters> {
    let mut map: BTreeMap<&str, Counters> = BTreeMap::new();
    for backend in stats {
        let counters = Counters::of(backend);
        map.entry(backend.name.as_str())
            .and_modify(|c| c.add(&counters))
            .or_insert(counters);
    }
    map
}

/// What one side's backends did between two readings of their statistics; the rules
/// are in the [module documentation](self).
#[must_use]
pub fn window(start: &[BackendStats], end: &[BackendStats]) -> Window {
    let start = by_name(start);
    let end = by_name(end);
    let mut total = Counters::default();
    let mut reset = Vec::new();
    for (name, now) in &end {
        let delta = match start.get(name) {
            None => now.clone(),
            Some(before) => now.since(before).unwrap_or_else(|| {
                reset.push((*name).to_owned());
                now.clone()
            }),
        };
        total.add(&delta);
    }
    let vanished = start
        .keys()
        .filter(|name| !end.contains_key(*name))
        .map(|name| (*name).to_owned())
        .collect();
    #[expect(clippy::cast_precision_loss, reason = "a ratio of request counts")]
    let error_rate = match total.requests.max(total.failures) {
        0 => 0.0,
        seen => total.failures as f64 * 100.0 / seen as f64,
    };
    Window {
        requests: total.requests,
        failures: total.failures,
        error_rate,
        p99_ms: histogram_quantile(&total.buckets, 0.99).map(|s| s * 1000.0),
        reset,
        vanished,
    }
}

/// Judges one canary step: each side's backend statistics read at the start and at
/// the end of the step, `(start, end)`, against `analysis` (use [`DEFAULT_ANALYSIS`]
/// when the canary has none). The rules are in the [module documentation](self).
#[must_use]
pub fn judge(
    canary: (&[BackendStats], &[BackendStats]),
    stable: (&[BackendStats], &[BackendStats]),
    analysis: &Analysis,
) -> Verdict {
    let canary = window(canary.0, canary.1);
    let stable = window(stable.0, stable.1);
    let needed = u64::from(analysis.min_requests);
    let max_error_rate = match (analysis.max_error_rate, analysis.max_p99_latency) {
        (None, None) => Some(DEFAULT_MAX_ERROR_RATE),
        (rate, _) => rate,
    };
    if canary.requests < needed {
        #[expect(clippy::cast_precision_loss, reason = "a ratio of request counts")]
        let doomed = max_error_rate
            .filter(|&limit| above(canary.failures as f64 * 100.0 / needed as f64, limit));
        let Some(limit) = doomed else {
            return Verdict::NotEnoughRequests {
                seen: canary.requests,
                needed,
                canary,
                stable,
            };
        };
        let breach = Breach::FailuresBeforeMinimum {
            limit,
            failures: canary.failures,
            needed,
        };
        return Verdict::Fail {
            reason: describe(&breach, &canary, &stable),
            breaches: vec![breach],
            canary,
            stable,
        };
    }
    let mut breaches = Vec::new();
    if let Some(limit) = max_error_rate
        && above(canary.error_rate, limit)
    {
        breaches.push(Breach::ErrorRate {
            limit,
            canary: canary.error_rate,
            stable: stable.error_rate,
        });
    }
    if let Some(limit) = analysis.max_p99_latency
        && let Some(p99) = canary.p99_ms
    {
        #[expect(clippy::cast_precision_loss, reason = "milliseconds far below 2^52")]
        let limit_ms = limit.as_millis() as f64;
        if above(p99, limit_ms) {
            breaches.push(Breach::P99Latency {
                limit_ms,
                canary_ms: p99,
                stable_ms: stable.p99_ms,
            });
        }
    }
    if breaches.is_empty() {
        return Verdict::Pass { canary, stable };
    }
    let reason = breaches
        .iter()
        .map(|b| describe(b, &canary, &stable))
        .collect::<Vec<_>>()
        .join("; ");
    Verdict::Fail {
        reason,
        breaches,
        canary,
        stable,
    }
}

/// Whether `value` is above `limit`, a value at the limit (up to rounding) being within.
fn above(value: f64, limit: f64) -> bool {
    value > limit + limit.abs().max(1.0) * AT_LIMIT
}

fn describe(breach: &Breach, canary: &Window, stable: &Window) -> String {
    match *breach {
        Breach::ErrorRate { limit, .. } => format!(
            "canary error rate {} over {} requests > {limit}% (stable {} over {} requests)",
            percent(canary.error_rate, Some(limit)),
            canary.requests,
            percent(stable.error_rate, None),
            stable.requests,
        ),
        Breach::FailuresBeforeMinimum {
            limit,
            failures,
            needed,
        } => format!(
            "canary failed {failures} of its first {} requests, more than {limit}% of the {needed} min-requests asks for (stable {} over {} requests)",
            canary.requests,
            percent(stable.error_rate, None),
            stable.requests,
        ),
        Breach::P99Latency { limit_ms, .. } => format!(
            "canary p99 latency {} over {} requests > {} (stable p99 {})",
            millis_beside(canary.p99_ms, limit_ms),
            canary.requests,
            millis(Some(limit_ms)),
            millis(stable.p99_ms),
        ),
    }
}

/// A percentage with one decimal, or more when one decimal would not show that it is
/// above `limit`.
fn percent(value: f64, limit: Option<f64>) -> String {
    for decimals in 1..=4 {
        let text = format!("{value:.decimals$}%");
        let shown: f64 = text.trim_end_matches('%').parse().unwrap_or(value);
        if limit.is_none_or(|limit| shown > limit) {
            return text;
        }
    }
    format!("{value}%")
}

fn millis(value: Option<f64>) -> String {
    match value {
        None => "n/a (no requests)".to_owned(),
        Some(ms) if ms >= 10.0 => format!("{ms:.0} ms"),
        Some(ms) => format!("{ms:.1} ms"),
    }
}

/// Milliseconds shown precisely enough to be seen above `limit_ms`.
fn millis_beside(value: Option<f64>, limit_ms: f64) -> String {
    let text = millis(value);
    match value {
        Some(ms) if text.trim_end_matches(" ms").parse::<f64>().unwrap_or(ms) <= limit_ms => {
            format!("{ms:.3} ms")
        }
        _ => text,
    }
}

/// Orders bucket bounds, `None` (infinity) last.
fn cmp_bound(a: Option<f64>, b: Option<f64>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.total_cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

fn same_bounds(a: &Histogram, b: &Histogram) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| cmp_bound(x.0, y.0) == Ordering::Equal)
}

/// The cumulative count of `histogram` at bound `le`: its count at the largest bound
/// not above `le`.
fn cumulative_at(histogram: &Histogram, le: Option<f64>) -> u64 {
    histogram
        .iter()
        .take_while(|(bound, _)| cmp_bound(*bound, le) != Ordering::Greater)
        .last()
        .map_or(0, |&(_, count)| count)
}

/// Adds `other` into `sum`. Histograms of one proxy share their bounds and are added
/// bucket by bucket; otherwise both are read on the union of the bounds.
fn add_histogram(sum: &mut Histogram, other: &Histogram) {
    if other.is_empty() {
        return;
    }
    if sum.is_empty() {
        sum.clone_from(other);
    } else if same_bounds(sum, other) {
        for (slot, &(_, count)) in sum.iter_mut().zip(other) {
            slot.1 = slot.1.saturating_add(count);
        }
    } else {
        let mut bounds: Vec<Option<f64>> = sum.iter().chain(other).map(|&(le, _)| le).collect();
        bounds.sort_by(|a, b| cmp_bound(*a, *b));
        bounds.dedup_by(|a, b| cmp_bound(*a, *b) == Ordering::Equal);
        *sum = bounds
            .into_iter()
            .map(|le| {
                (
                    le,
                    cumulative_at(sum, le).saturating_add(cumulative_at(other, le)),
                )
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use cul8er_proxy::health::HealthStatus;
    use cul8er_proxy::metrics::{LATENCY_BUCKETS, LatencySummary, StatusCounts};

    use super::*;
    use crate::topology::Duration;

    /// A backend's cumulative figures: `requests` sent, `server_errors` 5xx answers,
    /// `errors` unanswered, and latency observations as `(seconds, how many)`.
    fn backend(
        name: &str,
        requests: u64,
        server_errors: u64,
        errors: u64,
        latencies: &[(f64, u64)],
    ) -> BackendStats {
        let mut counts = [0_u64; LATENCY_BUCKETS.len() + 1];
        for &(secs, n) in latencies {
            let index = LATENCY_BUCKETS
                .iter()
                .position(|&le| secs <= le)
                .unwrap_or(LATENCY_BUCKETS.len());
            counts[index] += n;
        }
        let mut cumulative = 0;
        let buckets: Histogram = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                cumulative += c;
                (LATENCY_BUCKETS.get(i).copied(), cumulative)
            })
            .collect();
        BackendStats {
            name: name.to_owned(),
            address: "10.0.0.1:80".to_owned(),
            weight: 1,
            health: HealthStatus::Healthy,
            last_check: None,
            ejected: false,
            removed: false,
            active: 0,
            requests,
            responses: StatusCounts {
                success: requests.saturating_sub(server_errors + errors),
                server_error: server_errors,
                ..StatusCounts::default()
            },
            errors,
            latency: LatencySummary {
                count: cumulative,
                sum_seconds: 0.0,
                buckets,
                // Whole-life estimates the analysis must not use.
                p50_ms: Some(9_999.0),
                p99_ms: Some(9_999.0),
            },
            health_transitions: 0,
            ejections: 0,
        }
    }

    fn analysis(max_error_rate: Option<f64>, max_p99_ms: Option<u64>, min: u32) -> Analysis {
        Analysis {
            max_error_rate,
            max_p99_latency: max_p99_ms.map(Duration::from_millis),
            min_requests: min,
        }
    }

    /// A stable side that served `n` fast requests during the step, none failed.
    fn quiet_stable(n: u64) -> (Vec<BackendStats>, Vec<BackendStats>) {
        (
            vec![backend("web-1", 0, 0, 0, &[])],
            vec![backend("web-1", n, 0, 0, &[(0.002, n)])],
        )
    }

    #[test]
    fn a_canary_failing_a_fifth_of_its_requests_fails_with_a_reason_that_compares() {
        let canary_start = [backend("web-1-c", 100, 0, 0, &[(0.002, 100)])];
        let canary_end = [backend("web-1-c", 512, 80, 4, &[(0.002, 512)])];
        let (stable_start, stable_end) = quiet_stable(3_688);
        let verdict = judge(
            (&canary_start, &canary_end),
            (&stable_start, &stable_end),
            &analysis(Some(1.0), None, 200),
        );
        let Verdict::Fail {
            reason,
            breaches,
            canary,
            stable,
        } = &verdict
        else {
            panic!("expected a failure, got {verdict:?}");
        };
        assert_eq!(canary.requests, 412);
        assert_eq!(canary.failures, 84);
        assert!((canary.error_rate - 8_400.0 / 412.0).abs() < 1e-9);
        assert_eq!(stable.requests, 3_688);
        assert!(stable.error_rate.abs() < f64::EPSILON);
        assert_eq!(
            reason,
            "canary error rate 20.4% over 412 requests > 1% (stable 0.0% over 3688 requests)"
        );
        assert!(matches!(
            breaches.as_slice(),
            [Breach::ErrorRate { limit, .. }] if (*limit - 1.0).abs() < f64::EPSILON
        ));
        assert_eq!(verdict.to_string(), *reason);
        assert!(!verdict.passed());
    }

    #[test]
    fn p99_comes_from_the_bucket_growth_not_the_whole_life_estimate() {
        // Before the step the canary was slow (1000 requests at 2 s); during it,
        // 100 requests took 0.7 ms each.
        let start = [backend("c", 1_000, 0, 0, &[(2.0, 1_000)])];
        let end = [backend("c", 1_100, 0, 0, &[(2.0, 1_000), (0.0007, 100)])];
        let w = window(&start, &end);
        let p99 = w.p99_ms.unwrap();
        assert!(p99 > 0.5 && p99 <= 1.0, "{p99}");
        // Interpolated as Prometheus does: rank 99 of 100 in (0.5 ms, 1 ms].
        assert!((p99 - 0.995).abs() < 1e-9, "{p99}");
        let verdict = judge((&start, &end), (&[], &[]), &analysis(None, Some(300), 100));
        assert!(verdict.passed(), "{verdict:?}");
    }

    #[test]
    fn a_slow_canary_fails_on_p99_and_says_how_slow_stable_is() {
        // 95 fast, 5 between 250 and 500 ms: p99 interpolates to 450 ms.
        let start = [backend("c", 0, 0, 0, &[])];
        let end = [backend("c", 100, 0, 0, &[(0.004, 95), (0.4, 5)])];
        let (stable_start, stable_end) = quiet_stable(400);
        let verdict = judge(
            (&start, &end),
            (&stable_start, &stable_end),
            &analysis(Some(1.0), Some(300), 50),
        );
        let Verdict::Fail {
            reason, breaches, ..
        } = &verdict
        else {
            panic!("expected a failure, got {verdict:?}");
        };
        assert_eq!(
            reason,
            "canary p99 latency 450 ms over 100 requests > 300 ms (stable p99 2.5 ms)"
        );
        assert!(matches!(
            breaches.as_slice(),
            [Breach::P99Latency { canary_ms, .. }] if (*canary_ms - 450.0).abs() < 1e-6
        ));
    }

    #[test]
    fn both_thresholds_broken_are_both_reported() {
        let end = [backend("c", 100, 10, 0, &[(0.002, 90), (0.4, 10)])];
        let verdict = judge((&[], &end), (&[], &[]), &analysis(Some(1.0), Some(100), 10));
        let Verdict::Fail {
            reason, breaches, ..
        } = &verdict
        else {
            panic!("expected a failure, got {verdict:?}");
        };
        assert_eq!(breaches.len(), 2);
        assert!(reason.starts_with("canary error rate 10.0% over 100 requests > 1%"));
        assert!(
            reason.contains("; canary p99 latency 475 ms over 100 requests > 100 ms (stable p99 n/a (no requests))"),
            "{reason}"
        );
    }

    #[test]
    fn a_counter_that_went_down_is_a_proxy_restart_and_counts_from_zero() {
        let start = [backend("c", 1_000, 10, 0, &[(0.002, 1_000)])];
        let end = [backend("c", 50, 1, 0, &[(0.002, 50)])];
        let w = window(&start, &end);
        assert_eq!(w.requests, 50);
        assert_eq!(w.failures, 1);
        assert!((w.error_rate - 2.0).abs() < 1e-9);
        assert_eq!(w.reset, ["c"]);
        assert!(w.vanished.is_empty());
        // Only the histogram went back: a restart too.
        let mut odd = backend("c", 1_100, 10, 0, &[(0.002, 50)]);
        odd.responses.server_error = 10;
        let w = window(&start, &[odd]);
        assert_eq!(w.reset, ["c"]);
        assert_eq!(w.requests, 1_100);
    }

    #[test]
    fn buckets_with_other_bounds_count_as_a_restart() {
        let start = [backend("c", 10, 0, 0, &[(0.002, 10)])];
        let mut end = backend("c", 20, 0, 0, &[(0.002, 20)]);
        end.latency.buckets = vec![(Some(0.01), 20), (None, 20)];
        let w = window(&start, &[end]);
        assert_eq!(w.reset, ["c"]);
        assert_eq!(w.requests, 20);
        let p99 = w.p99_ms.unwrap();
        assert!(p99 > 0.0 && p99 <= 10.0, "{p99}");
    }

    #[test]
    fn an_empty_window_has_no_rate_and_no_p99_and_waits_for_min_requests() {
        let same = [backend("c", 40, 2, 0, &[(0.002, 40)])];
        let w = window(&same, &same);
        assert!(w.is_empty());
        assert!(w.error_rate.abs() < f64::EPSILON);
        assert_eq!(w.p99_ms, None);
        assert_eq!(
            judge(
                (&same, &same),
                (&same, &same),
                &analysis(Some(1.0), None, 20)
            ),
            Verdict::NotEnoughRequests {
                seen: 0,
                needed: 20,
                canary: w.clone(),
                stable: w.clone(),
            }
        );
        // Without a minimum, nothing seen is nothing failed.
        assert!(judge((&same, &same), (&[], &[]), &analysis(Some(1.0), None, 0)).passed());
        // No backends at all.
        assert_eq!(window(&[], &[]), Window::default());
    }

    #[test]
    fn fewer_requests_than_the_minimum_wait_while_they_could_still_pass() {
        // 1 failure in 19 is within 10% of 20 requests: wait for more.
        let end = [backend("c", 19, 1, 0, &[(0.002, 19)])];
        let verdict = judge((&[], &end), (&[], &[]), &analysis(Some(10.0), None, 20));
        assert!(
            matches!(
                verdict,
                Verdict::NotEnoughRequests {
                    seen: 19,
                    needed: 20,
                    ..
                }
            ),
            "{verdict:?}"
        );
        assert_eq!(
            verdict.to_string(),
            "canary saw 19 of the 20 requests the analysis needs"
        );
        // Exactly 10% of 20 already failed: still within the limit.
        let end = [backend("c", 5, 2, 0, &[(0.002, 5)])];
        let verdict = judge((&[], &end), (&[], &[]), &analysis(Some(10.0), None, 20));
        assert!(
            matches!(verdict, Verdict::NotEnoughRequests { .. }),
            "{verdict:?}"
        );
        // At 20 requests the rate decides.
        let end = [backend("c", 20, 3, 0, &[(0.002, 20)])];
        assert!(!judge((&[], &end), (&[], &[]), &analysis(Some(10.0), None, 20)).passed());
    }

    #[test]
    fn failures_that_already_break_the_limit_at_min_requests_fail_at_once() {
        let end = [backend("c", 5, 5, 0, &[(0.002, 5)])];
        let (stable_start, stable_end) = quiet_stable(300);
        let verdict = judge(
            (&[], &end),
            (&stable_start, &stable_end),
            &analysis(Some(1.0), None, 20),
        );
        let Verdict::Fail {
            reason, breaches, ..
        } = &verdict
        else {
            panic!("expected a failure, got {verdict:?}");
        };
        assert_eq!(
            reason,
            "canary failed 5 of its first 5 requests, more than 1% of the 20 min-requests asks for (stable 0.0% over 300 requests)"
        );
        assert_eq!(
            breaches.as_slice(),
            [Breach::FailuresBeforeMinimum {
                limit: 1.0,
                failures: 5,
                needed: 20
            }]
        );
        // 3 of 20 is above 10%: fails with only 4 requests seen.
        let end = [backend("c", 4, 3, 0, &[(0.002, 4)])];
        assert!(!judge((&[], &end), (&[], &[]), &analysis(Some(10.0), None, 20)).passed());
        // A latency-only analysis has no error limit: it waits.
        let end = [backend("c", 4, 4, 0, &[(0.002, 4)])];
        assert!(matches!(
            judge((&[], &end), (&[], &[]), &analysis(None, Some(100), 20)),
            Verdict::NotEnoughRequests { .. }
        ));
    }

    #[test]
    fn backends_that_appear_count_whole_and_backends_that_vanish_count_nothing() {
        let start = [
            backend("c-1", 100, 0, 0, &[(0.002, 100)]),
            backend("c-2", 500, 50, 0, &[(0.002, 500)]),
        ];
        let end = [
            backend("c-1", 150, 0, 0, &[(0.002, 150)]),
            backend("c-3", 30, 3, 2, &[(0.002, 30)]),
        ];
        let w = window(&start, &end);
        assert_eq!(w.requests, 80);
        assert_eq!(w.failures, 5);
        assert_eq!(w.vanished, ["c-2"]);
        assert!(w.reset.is_empty());
    }

    #[test]
    fn entries_of_one_name_are_added_up() {
        // A removed backend still draining beside its re-added namesake.
        let start = [
            backend("c", 10, 0, 0, &[(0.002, 10)]),
            backend("c", 5, 0, 0, &[(0.002, 5)]),
        ];
        let end = [
            backend("c", 30, 1, 0, &[(0.002, 30)]),
            backend("c", 5, 0, 0, &[(0.002, 5)]),
        ];
        let w = window(&start, &end);
        assert_eq!((w.requests, w.failures), (20, 1));
        assert!(w.reset.is_empty());
    }

    #[test]
    fn values_exactly_at_a_limit_pass() {
        let end = [backend("c", 100, 1, 0, &[(0.2, 100)])];
        // 1 of 100 failed: 1% is within max-error-rate 1%.
        assert!(judge((&[], &end), (&[], &[]), &analysis(Some(1.0), None, 100)).passed());
        let end = [backend("c", 100, 2, 0, &[(0.2, 100)])];
        assert!(!judge((&[], &end), (&[], &[]), &analysis(Some(1.0), None, 100)).passed());
        // 1 of 1000 at 0.1%.
        let end = [backend("c", 1_000, 0, 1, &[(0.2, 1_000)])];
        assert!(judge((&[], &end), (&[], &[]), &analysis(Some(0.1), None, 0)).passed());
        // p99 landing on a bucket's upper bound: all 100 in (100 ms, 250 ms], rank 99
        // of 100 interpolates to 248.5 ms; a limit of exactly that passes.
        let end = [backend("c", 100, 0, 0, &[(0.2, 100)])];
        let p99 = window(&[], &end).p99_ms.unwrap();
        assert!((p99 - 248.5).abs() < 1e-9, "{p99}");
        assert!(judge((&[], &end), (&[], &[]), &analysis(None, Some(249), 0)).passed());
        // 99 of 100 within 50 ms: rank 99 fills that bucket, p99 is its bound exactly.
        let at_bound = [backend("c", 100, 0, 0, &[(0.05, 99), (0.2, 1)])];
        let p99 = window(&[], &at_bound).p99_ms.unwrap();
        assert!((p99 - 50.0).abs() < 1e-9, "{p99}");
        assert!(judge((&[], &at_bound), (&[], &[]), &analysis(None, Some(50), 0)).passed());
        assert!(!judge((&[], &at_bound), (&[], &[]), &analysis(None, Some(49), 0)).passed());
    }

    #[test]
    fn without_thresholds_the_default_error_rate_applies() {
        let five = [backend("c", 100, 5, 0, &[(0.002, 100)])];
        let six = [backend("c", 100, 6, 0, &[(0.9, 100)])];
        for no_thresholds in [&DEFAULT_ANALYSIS, &analysis(None, None, 0)] {
            assert!(judge((&[], &five), (&[], &[]), no_thresholds).passed());
            let verdict = judge((&[], &six), (&[], &[]), no_thresholds);
            assert!(
                matches!(&verdict, Verdict::Fail { reason, .. } if reason.contains("> 5%")),
                "{verdict:?}"
            );
        }
        // A latency-only analysis has no error-rate limit.
        let all_failed = [backend("c", 100, 100, 0, &[(0.002, 100)])];
        assert!(
            judge(
                (&[], &all_failed),
                (&[], &[]),
                &analysis(None, Some(300), 0)
            )
            .passed()
        );
        // The default asks for no minimum.
        assert!(judge((&[], &[]), (&[], &[]), &DEFAULT_ANALYSIS).passed());
    }

    #[test]
    fn failures_of_requests_started_before_the_window_cap_the_rate_at_100() {
        let start = [backend("c", 10, 0, 0, &[])];
        let mut end = backend("c", 12, 0, 0, &[]);
        end.errors = 5;
        let w = window(&start, &[end]);
        assert_eq!((w.requests, w.failures), (2, 5));
        assert!((w.error_rate - 100.0).abs() < 1e-9);
    }

    #[test]
    fn the_open_last_bucket_answers_its_lower_bound() {
        let end = [backend("c", 10, 0, 10, &[(45.0, 10)])];
        assert_eq!(window(&[], &end).p99_ms, Some(30_000.0));
    }

    #[test]
    fn histograms_with_other_bounds_merge_on_the_union_of_bounds() {
        let mut sum: Histogram = vec![(Some(0.1), 10), (None, 10)];
        add_histogram(&mut sum, &vec![(Some(0.05), 5), (Some(0.2), 7), (None, 8)]);
        assert_eq!(
            sum,
            vec![
                (Some(0.05), 5),
                (Some(0.1), 15),
                (Some(0.2), 17),
                (None, 18)
            ]
        );
    }

    #[test]
    fn verdicts_serialize_with_a_tag() {
        let end = [backend("c", 100, 30, 0, &[(0.002, 100)])];
        let verdict = judge((&[], &end), (&[], &[]), &analysis(Some(1.0), None, 0));
        let json = serde_json::to_value(&verdict).unwrap();
        assert_eq!(json["verdict"], "fail");
        assert_eq!(json["canary"]["requests"], 100);
        assert_eq!(json["breaches"][0]["threshold"], "error-rate");
        assert!(json["canary"].get("reset").is_none());
        let back: Verdict = serde_json::from_value(json).unwrap();
        assert_eq!(back, verdict);
        let pass = judge((&[], &[]), (&[], &[]), &DEFAULT_ANALYSIS);
        assert_eq!(serde_json::to_value(&pass).unwrap()["verdict"], "pass");
        let wait = judge((&[], &[]), (&[], &[]), &analysis(Some(1.0), None, 5));
        let json = serde_json::to_value(&wait).unwrap();
        assert_eq!(json["verdict"], "not-enough-requests");
        assert_eq!(json["needed"], 5);
    }

    #[test]
    fn percentages_show_enough_decimals_to_be_seen_above_the_limit() {
        assert_eq!(percent(20.388, Some(1.0)), "20.4%");
        assert_eq!(percent(1.04, Some(1.0)), "1.04%");
        assert_eq!(percent(1.0004, Some(1.0)), "1.0004%");
        assert_eq!(percent(0.0, None), "0.0%");
    }
}
