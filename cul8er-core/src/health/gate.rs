//! The gate's timing: checks at an interval, retries with back-off, the start period,
//! min-healthy-time and the deadline, raced against the crash watch.

use std::pin::pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::watch::{Crash, CrashWatch};
use super::{CheckResult, GateSpec, HealthEvent, HealthSource, Verdict, millis};

/// How a gate ended: data for the rollout to act on, never an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum GateOutcome {
    /// Checks kept passing for min-healthy-time.
    Healthy {
        /// Checks run.
        checks: u32,
        /// Milliseconds from the gate's start to healthy.
        elapsed_millis: u64,
    },
    /// `retries` counted failures in a row.
    Unhealthy {
        /// What to tell the operator.
        reason: String,
        /// The last check.
        last_check: CheckResult,
    },
    /// The crash watch saw an instance or its service die.
    Crashed {
        /// What to tell the operator.
        reason: String,
        /// What the watch saw.
        crash: Crash,
    },
    /// The deadline passed before the instance was healthy for min-healthy-time.
    DeadlineExceeded {
        /// The gate's deadline, in milliseconds.
        deadline_millis: u64,
        /// The last finished check, if any finished.
        last_check: Option<CheckResult>,
    },
}

impl GateOutcome {
    /// Whether the gate passed.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy { .. })
    }

    /// One line for the operator: why the gate failed, or `healthy`.
    #[must_use]
    pub fn reason(&self) -> String {
        match self {
            Self::Healthy { checks, .. } => format!("healthy after {checks} checks"),
            Self::Unhealthy { reason, .. } | Self::Crashed { reason, .. } => reason.clone(),
            Self::DeadlineExceeded {
                deadline_millis,
                last_check,
            } => {
                let last = last_check.as_ref().map_or_else(
                    || "no check finished".to_owned(),
                    |c| format!("last check: {} ({})", c.verdict.as_str(), c.reason),
                );
                format!(
                    "not healthy within the deadline of {}; {last}",
                    humanize(*deadline_millis)
                )
            }
        }
    }
}

fn humanize(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

/// One instance's health gate: a [`GateSpec`] run against a [`HealthSource`].
#[derive(Debug, Clone)]
pub struct HealthGate {
    spec: GateSpec,
}

impl HealthGate {
    /// A gate with `spec`'s check and timing.
    #[must_use]
    pub fn new(spec: GateSpec) -> Self {
        Self { spec }
    }

    /// The spec.
    #[must_use]
    pub fn spec(&self) -> &GateSpec {
        &self.spec
    }

    /// Runs checks against `source` until the instance `target` has passed for
    /// min-healthy-time, fails `retries` counted checks in a row, crashes (any crash
    /// `watch` reports fails the gate at once), or the deadline passes. Every check
    /// result is handed to `on_event`.
    ///
    /// Dropping the future stops the gate (nothing runs in the background).
    pub async fn wait<S: HealthSource>(
        &self,
        target: &str,
        source: &S,
        watch: Option<&CrashWatch>,
        on_event: &(dyn Fn(HealthEvent) + Send + Sync),
    ) -> GateOutcome {
        let started = Instant::now();
        on_event(HealthEvent::GateStarted {
            target: target.to_owned(),
            check: source.describe(),
            deadline_millis: millis(self.spec.deadline),
        });
        let outcome = self.run(source, target, watch, on_event, started).await;
        on_event(HealthEvent::GateEnded {
            target: target.to_owned(),
            outcome: outcome.clone(),
            millis: millis(started.elapsed()),
        });
        outcome
    }

    async fn run<S: HealthSource>(
        &self,
        source: &S,
        target: &str,
        watch: Option<&CrashWatch>,
        on_event: &(dyn Fn(HealthEvent) + Send + Sync),
        started: Instant,
    ) -> GateOutcome {
        let spec = &self.spec;
        let deadline = started + spec.deadline;
        let start_period_ends = started + spec.start_period;
        let retries = spec.retries.max(1);
        let mut crashed = pin!(crash_of(watch));
        let mut out_of_time = pin!(sleep_until(deadline));
        let mut failures = 0u32;
        let mut healthy_since: Option<Instant> = None;
        let mut attempt = 0u32;
        let mut last: Option<CheckResult> = None;
        loop {
            attempt += 1;
            let result = tokio::select! {
                biased;
                crash = &mut crashed => return crash_outcome(crash),
                () = &mut out_of_time => return self.deadline_outcome(last),
                result = run_check(source, spec.timeout) => result,
            };
            let now = Instant::now();
            let mut counted = false;
            let mut healthy_for = None;
            let next = match result.verdict {
                Verdict::Pass => {
                    failures = 0;
                    let since = *healthy_since.get_or_insert(now);
                    let held = now - since;
                    healthy_for = Some(millis(held));
                    if held >= spec.min_healthy_time {
                        emit_check(on_event, target, attempt, &result, false, 0, healthy_for);
                        return GateOutcome::Healthy {
                            checks: attempt,
                            elapsed_millis: millis(now - started),
                        };
                    }
                    spec.interval.min(spec.min_healthy_time - held)
                }
                Verdict::Pending => {
                    healthy_since = None;
                    spec.interval
                }
                Verdict::Fail => {
                    healthy_since = None;
                    if now < start_period_ends {
                        spec.interval
                    } else {
                        counted = true;
                        failures += 1;
                        if failures >= retries {
                            emit_check(on_event, target, attempt, &result, true, failures, None);
                            // A dead instance fails its checks too: name the real cause.
                            if let Some(watch) = watch
                                && let Some(crash) = watch.check_now(target).await
                            {
                                return crash_outcome(crash);
                            }
                            return GateOutcome::Unhealthy {
                                reason: format!(
                                    "{} failed {failures} time{} in a row: {}",
                                    source.describe(),
                                    if failures == 1 { "" } else { "s" },
                                    result.reason
                                ),
                                last_check: result,
                            };
                        }
                        spec.retry_delay(failures)
                    }
                }
            };
            emit_check(
                on_event,
                target,
                attempt,
                &result,
                counted,
                failures,
                healthy_for,
            );
            last = Some(result);
            tokio::select! {
                biased;
                crash = &mut crashed => return crash_outcome(crash),
                () = &mut out_of_time => return self.deadline_outcome(last),
                () = sleep(next) => {}
            }
        }
    }

    fn deadline_outcome(&self, last_check: Option<CheckResult>) -> GateOutcome {
        GateOutcome::DeadlineExceeded {
            deadline_millis: millis(self.spec.deadline),
            last_check,
        }
    }
}

async fn crash_of(watch: Option<&CrashWatch>) -> Crash {
    match watch {
        Some(watch) => watch.crashed().await,
        None => std::future::pending().await,
    }
}

fn crash_outcome(crash: Crash) -> GateOutcome {
    GateOutcome::Crashed {
        reason: crash.to_string(),
        crash,
    }
}

/// One check, cut off at `limit`.
async fn run_check<S: HealthSource>(source: &S, limit: Duration) -> CheckResult {
    {
        let began = Instant::now();
        let probed = timeout(limit, source.check(limit)).await;
        let took = millis(began.elapsed());
        match probed {
            Ok(p) => CheckResult {
                verdict: p.verdict,
                reason: p.reason,
                millis: took,
            },
            Err(_) => CheckResult {
                verdict: Verdict::Fail,
                reason: format!(
                    "no answer within the check timeout of {}",
                    humanize(millis(limit))
                ),
                millis: took,
            },
        }
    }
}

fn emit_check(
    on_event: &(dyn Fn(HealthEvent) + Send + Sync),
    target: &str,
    attempt: u32,
    result: &CheckResult,
    counted: bool,
    failures: u32,
    healthy_millis: Option<u64>,
) {
    on_event(HealthEvent::Check {
        target: target.to_owned(),
        attempt,
        result: result.clone(),
        counted,
        failures,
        healthy_millis,
    });
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::health::{Check, CrashKind, Probed};

    /// A source that answers from a script of (verdict, delay) by the time it is
    /// asked, relative to the test's start: the clock is paused, so the times are exact.
    struct Scripted {
        start: Instant,
        /// (from this many ms on, answer this).
        plan: Vec<(u64, Verdict)>,
        /// How long each check takes.
        takes: Duration,
        asked: Mutex<Vec<u64>>,
    }

    impl Scripted {
        fn new(plan: &[(u64, Verdict)]) -> Self {
            Self {
                start: Instant::now(),
                plan: plan.to_vec(),
                takes: Duration::ZERO,
                asked: Mutex::new(Vec::new()),
            }
        }

        fn asked(&self) -> Vec<u64> {
            self.asked.lock().unwrap().clone()
        }
    }

    impl HealthSource for Scripted {
        fn describe(&self) -> String {
            "scripted check".into()
        }

        async fn check(&self, _timeout: Duration) -> Probed {
            let at = millis(self.start.elapsed());
            self.asked.lock().unwrap().push(at);
            sleep(self.takes).await;
            let verdict = self
                .plan
                .iter()
                .rev()
                .find(|(from, _)| *from <= at)
                .map_or(Verdict::Fail, |(_, v)| *v);
            Probed {
                verdict,
                reason: format!("{} at {at}ms", verdict.as_str()),
            }
        }
    }

    fn spec() -> GateSpec {
        GateSpec {
            check: Check::Tcp { port: 80 },
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            retries: 3,
            backoff_max: Duration::from_secs(4),
            start_period: Duration::ZERO,
            min_healthy_time: Duration::ZERO,
            deadline: Duration::from_secs(60),
        }
    }

    fn no_events(_: HealthEvent) {}

    #[tokio::test(start_paused = true)]
    async fn healthy_at_the_first_pass_without_min_healthy_time() {
        let source = Scripted::new(&[(0, Verdict::Pass)]);
        let outcome = HealthGate::new(spec())
            .wait("web-1", &source, None, &no_events)
            .await;
        assert_eq!(
            outcome,
            GateOutcome::Healthy {
                checks: 1,
                elapsed_millis: 0
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_back_off_and_then_the_gate_is_unhealthy() {
        let source = Scripted::new(&[(0, Verdict::Fail)]);
        let outcome = HealthGate::new(spec())
            .wait("web-1", &source, None, &no_events)
            .await;
        // Fail at 0 → wait 1 s; fail at 1000 → wait 2 s; fail at 3000: third in a row.
        assert_eq!(source.asked(), [0, 1000, 3000]);
        let GateOutcome::Unhealthy { reason, last_check } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(reason.contains("failed 3 times in a row"), "{reason}");
        assert!(reason.contains("fail at 3000ms"), "{reason}");
        assert_eq!(last_check.verdict, Verdict::Fail);
    }

    #[tokio::test(start_paused = true)]
    async fn back_off_grows_to_its_cap() {
        let mut spec = spec();
        spec.retries = 6;
        let source = Scripted::new(&[(0, Verdict::Fail)]);
        HealthGate::new(spec)
            .wait("web-1", &source, None, &no_events)
            .await;
        // Gaps 1, 2, 4, 4 (cap), 4 s.
        assert_eq!(source.asked(), [0, 1000, 3000, 7000, 11000, 15000]);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_in_the_start_period_do_not_count() {
        let mut spec = spec();
        spec.start_period = Duration::from_millis(4500);
        let source = Scripted::new(&[(0, Verdict::Fail)]);
        let events = Mutex::new(Vec::new());
        let outcome = HealthGate::new(spec)
            .wait("web-1", &source, None, &|e| events.lock().unwrap().push(e))
            .await;
        // Uncounted at 0..4000 every interval; counted from 5000: 5000, 6000, 8000.
        assert_eq!(
            source.asked(),
            [0, 1000, 2000, 3000, 4000, 5000, 6000, 8000]
        );
        assert!(
            matches!(outcome, GateOutcome::Unhealthy { .. }),
            "{outcome:?}"
        );
        let counted: Vec<bool> = events
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                HealthEvent::Check { counted, .. } => Some(*counted),
                _ => None,
            })
            .collect();
        assert_eq!(
            counted,
            [false, false, false, false, false, true, true, true]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pass_in_the_start_period_counts() {
        let mut spec = spec();
        spec.start_period = Duration::from_secs(30);
        let source = Scripted::new(&[(0, Verdict::Fail), (2000, Verdict::Pass)]);
        let outcome = HealthGate::new(spec)
            .wait("web-1", &source, None, &no_events)
            .await;
        assert_eq!(
            outcome,
            GateOutcome::Healthy {
                checks: 3,
                elapsed_millis: 2000
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn min_healthy_time_restarts_after_a_failure() {
        let mut spec = spec();
        spec.min_healthy_time = Duration::from_millis(2500);
        // Passing from 0, one failure at 2000, passing again from 3000.
        let source = Scripted::new(&[
            (0, Verdict::Pass),
            (2000, Verdict::Fail),
            (2001, Verdict::Pass),
        ]);
        let outcome = HealthGate::new(spec)
            .wait("web-1", &source, None, &no_events)
            .await;
        // Healthy since 3000 again; the last wait is cut to the 500 ms still missing.
        assert_eq!(source.asked(), [0, 1000, 2000, 3000, 4000, 5000, 5500]);
        assert_eq!(
            outcome,
            GateOutcome::Healthy {
                checks: 7,
                elapsed_millis: 5500
            }
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pending_neither_passes_nor_counts() {
        let mut spec = spec();
        spec.retries = 1;
        let source = Scripted::new(&[(0, Verdict::Pending), (3000, Verdict::Pass)]);
        let outcome = HealthGate::new(spec)
            .wait("web-1", &source, None, &no_events)
            .await;
        assert_eq!(source.asked(), [0, 1000, 2000, 3000]);
        assert!(outcome.is_healthy(), "{outcome:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_gate_that_never_settles() {
        let mut spec = spec();
        spec.deadline = Duration::from_secs(10);
        spec.min_healthy_time = Duration::from_secs(3);
        // Flapping: passes then fails every other second, never 3 s in a row.
        let plan: Vec<(u64, Verdict)> = (0..20)
            .map(|i| {
                (
                    i * 1000,
                    if i % 2 == 0 {
                        Verdict::Pass
                    } else {
                        Verdict::Fail
                    },
                )
            })
            .collect();
        let source = Scripted::new(&plan);
        let begin = Instant::now();
        let outcome = HealthGate::new(spec)
            .wait("web-1", &source, None, &no_events)
            .await;
        assert_eq!(begin.elapsed(), Duration::from_secs(10));
        let GateOutcome::DeadlineExceeded {
            deadline_millis,
            last_check,
        } = &outcome
        else {
            panic!("{outcome:?}")
        };
        assert_eq!(*deadline_millis, 10_000);
        assert_eq!(last_check.as_ref().unwrap().reason, "fail at 9000ms");
        assert!(
            outcome.reason().contains("deadline of 10s"),
            "{}",
            outcome.reason()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_check_fails_at_the_timeout() {
        let mut source = Scripted::new(&[(0, Verdict::Pass)]);
        source.takes = Duration::from_secs(5);
        let mut spec = spec();
        spec.retries = 2;
        let begin = Instant::now();
        let outcome = HealthGate::new(spec)
            .wait("web-1", &source, None, &no_events)
            .await;
        // 0–500 timed out, wait 1 s, 1500–2000 timed out.
        assert_eq!(begin.elapsed(), Duration::from_millis(2000));
        let GateOutcome::Unhealthy { last_check, .. } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(last_check.reason.contains("500ms"), "{}", last_check.reason);
        assert_eq!(last_check.millis, 500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_crash_fails_the_gate_at_once() {
        let mut spec = spec();
        spec.min_healthy_time = Duration::from_secs(10);
        let source = Scripted::new(&[(0, Verdict::Pass)]);
        let watch = crate::health::watch::detached_for_tests();
        let begin = Instant::now();
        let crash = Crash {
            instance: "web-1".into(),
            kind: CrashKind::ServiceRestarted,
            detail: "service shop exited and was restarted".into(),
        };
        let gate = HealthGate::new(spec);
        let (outcome, ()) = tokio::join!(
            gate.wait("web-1", &source, Some(&watch), &no_events),
            async {
                sleep(Duration::from_millis(2500)).await;
                watch.report(crash.clone());
            }
        );
        assert_eq!(begin.elapsed(), Duration::from_millis(2500));
        assert_eq!(source.asked(), [0, 1000, 2000]);
        assert_eq!(
            outcome,
            GateOutcome::Crashed {
                reason: "instance web-1: service shop exited and was restarted".into(),
                crash: crash.clone(),
            }
        );
        // A crash seen before the gate opens fails it before any check.
        let again = Scripted::new(&[(0, Verdict::Pass)]);
        let outcome = HealthGate::new(self::spec())
            .wait("web-1", &again, Some(&watch), &no_events)
            .await;
        assert!(
            matches!(outcome, GateOutcome::Crashed { .. }),
            "{outcome:?}"
        );
        assert!(again.asked().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn every_check_is_an_event_between_start_and_end() {
        let source = Scripted::new(&[(0, Verdict::Fail), (1000, Verdict::Pass)]);
        let events = Mutex::new(Vec::new());
        HealthGate::new(spec())
            .wait("web-1", &source, None, &|e| events.lock().unwrap().push(e))
            .await;
        let events = events.into_inner().unwrap();
        assert_eq!(events.len(), 4, "{events:?}");
        assert!(matches!(&events[0], HealthEvent::GateStarted { target, .. } if target == "web-1"));
        assert!(matches!(
            &events[1],
            HealthEvent::Check {
                attempt: 1,
                counted: true,
                failures: 1,
                ..
            }
        ));
        assert!(matches!(
            &events[2],
            HealthEvent::Check {
                attempt: 2,
                healthy_millis: Some(0),
                ..
            }
        ));
        assert!(matches!(
            &events[3],
            HealthEvent::GateEnded {
                outcome: GateOutcome::Healthy { .. },
                millis: 1000,
                ..
            }
        ));
    }
}
