//! Health gates and the crash watch: what decides that a changed instance may take
//! traffic, and what stops a rollout the moment an instance or its service dies.
//!
//! A [`HealthGate`] runs one check over and over with the vocabulary Nomad's `update`
//! block and Kubernetes probes use: an interval, a timeout per check, retries with
//! back-off, a start period whose failures don't count, a min-healthy-time the
//! instance must stay healthy, and a deadline for the whole gate. It answers a
//! [`GateOutcome`] — healthy, unhealthy, crashed or out of time — which is data, not an
//! error: a failed check is what a gate is for.
//!
//! Where a check runs is a [`HealthSource`]:
//! - [`EdgeSource`]: the edge's own active HTTP/TCP checks, for a resource behind the
//!   edge (the load balancer already probes every backend; asking it twice would only
//!   add load and disagreement);
//! - [`ExecSource`]: inside the instance through the Incus exec API — HTTP and TCP
//!   through the static `cul8er-proxy probe` binary that cul8er pushes once per
//!   instance (so the image needs neither curl nor wget), or any command, exit 0
//!   being healthy. Both work the same on local and remote hosts.
//!
//! A [`CrashWatch`] follows the Incus events stream for the watched instances (a stop
//! or restart nobody asked for fails the gate at once) and polls the release service's
//! status through exec, comparing its process identity and restart count: a service
//! that exits under the instance's init produces no Incus event, and an init that
//! respawns it hides the exit from a plain "running" check.
//!
//! Every check result is a [`HealthEvent`], which the rollout engine forwards to the
//! progress output and `--output json`.
//!
//! All timing goes through `tokio::time`, so the gate's logic is tested on a paused
//! clock.

mod edge;
mod exec;
mod gate;
mod watch;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topology::{HealthCheck, Probe};

pub use edge::{EdgeSource, backend_verdict};
pub use exec::{ExecSource, PROBE_PATH, ProbeInstall, install_probe, probe_argv};
pub use gate::{GateOutcome, HealthGate};
pub use watch::{Crash, CrashKind, CrashWatch, WatchOptions};

/// What one check probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Check {
    /// An HTTP GET of `http://127.0.0.1:<port><path>` inside the instance.
    Http {
        /// The port.
        port: u16,
        /// The request path, starting with `/`.
        path: String,
        /// The status that counts as healthy.
        status: u16,
        /// A substring the body must contain, when set.
        body_contains: Option<String>,
    },
    /// A TCP connection to `127.0.0.1:<port>` inside the instance.
    Tcp {
        /// The port.
        port: u16,
    },
    /// A command run inside the instance; exit status 0 is healthy.
    Command {
        /// Program and arguments (no shell unless the program is one).
        argv: Vec<String>,
    },
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Http {
                port,
                path,
                status,
                body_contains,
            } => {
                write!(f, "http :{port}{path} expecting {status}")?;
                if let Some(body) = body_contains {
                    write!(f, " and a body with {body:?}")?;
                }
                Ok(())
            }
            Self::Tcp { port } => write!(f, "tcp :{port}"),
            Self::Command { argv } => write!(f, "command `{}`", argv.join(" ")),
        }
    }
}

/// A gate's check and timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSpec {
    /// What is probed.
    pub check: Check,
    /// Time between checks while healthy or in the start period.
    pub interval: Duration,
    /// Time one check may take; a slower check fails.
    pub timeout: Duration,
    /// Consecutive counted failures that make the instance unhealthy (at least 1).
    pub retries: u32,
    /// The longest wait between retries: after the n-th failure in a row the next
    /// check comes `interval × 2^(n-1)` later, up to this.
    pub backoff_max: Duration,
    /// Failures before this much time has passed since the gate opened don't count.
    pub start_period: Duration,
    /// How long checks must keep passing before the instance counts as healthy.
    pub min_healthy_time: Duration,
    /// The longest the whole gate may take.
    pub deadline: Duration,
}

impl GateSpec {
    /// A spec with the topology's documented default timing for `check`.
    #[must_use]
    pub fn new(check: Check) -> Self {
        let defaults = HealthCheck::new(Probe::Tcp { port: 0 });
        Self {
            check,
            interval: defaults.interval.to_std(),
            timeout: defaults.timeout.to_std(),
            retries: defaults.retries,
            backoff_max: Duration::from_secs(30),
            start_period: defaults.start_period.to_std(),
            min_healthy_time: defaults.min_healthy_time.to_std(),
            deadline: defaults.deadline.to_std(),
        }
    }

    /// The gate a topology's `health` block declares. An HTTP check without a port
    /// probes `default_port`, the resource's first exposed port.
    ///
    /// # Errors
    /// [`HealthError::NoPort`] for an HTTP check without a port on a resource that
    /// exposes none, [`HealthError::EmptyCommand`] for a command check without a
    /// program.
    pub fn from_model(
        health: &HealthCheck,
        default_port: Option<u16>,
    ) -> Result<Self, HealthError> {
        let check = match &health.probe {
            Probe::Http { path, port, status } => Check::Http {
                port: port
                    .or(default_port)
                    .ok_or_else(|| HealthError::NoPort { path: path.clone() })?,
                path: if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                },
                status: *status,
                body_contains: health.body.clone(),
            },
            Probe::Tcp { port } => Check::Tcp { port: *port },
            Probe::Command { argv } => {
                if argv.is_empty() {
                    return Err(HealthError::EmptyCommand);
                }
                Check::Command { argv: argv.clone() }
            }
        };
        Ok(Self {
            check,
            interval: health.interval.to_std(),
            timeout: health.timeout.to_std(),
            retries: health.retries,
            backoff_max: Duration::from_secs(30).max(health.interval.to_std()),
            start_period: health.start_period.to_std(),
            min_healthy_time: health.min_healthy_time.to_std(),
            deadline: health.deadline.to_std(),
        })
    }

    /// The wait before the next check after `failures` counted failures in a row.
    #[must_use]
    pub fn retry_delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.interval
            .saturating_mul(factor)
            .min(self.backoff_max.max(self.interval))
    }
}

/// What a source made of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The check passed.
    Pass,
    /// The check failed.
    Fail,
    /// No verdict yet (the edge has not checked a new backend): neither a pass nor a
    /// counted failure.
    Pending,
}

impl Verdict {
    /// `pass`, `fail` or `pending`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Pending => "pending",
        }
    }
}

/// A source's answer to one check: the verdict and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probed {
    /// Pass, fail or pending.
    pub verdict: Verdict,
    /// The probe's own words: `HTTP 200`, `connection refused`, a command's stderr.
    pub reason: String,
}

impl Probed {
    /// A passing check.
    #[must_use]
    pub fn pass(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Pass,
            reason: reason.into(),
        }
    }

    /// A failing check.
    #[must_use]
    pub fn fail(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Fail,
            reason: reason.into(),
        }
    }

    /// No verdict yet.
    #[must_use]
    pub fn pending(reason: impl Into<String>) -> Self {
        Self {
            verdict: Verdict::Pending,
            reason: reason.into(),
        }
    }
}

/// One finished check as the gate saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// Pass, fail or pending.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
    /// How long the check took, in milliseconds.
    pub millis: u64,
}

/// Where checks run: the edge's active checks, exec inside the instance, or a fake in
/// tests.
pub trait HealthSource: Send + Sync {
    /// What is checked where, for events and messages: `http :8080/health in web-1`.
    fn describe(&self) -> String;

    /// Runs one check. `timeout` is the time the gate allows it: a source passes it
    /// on to the probe so that the probe's own reason (not the gate's cut-off) is
    /// reported. A source that cannot ask (Incus unreachable) answers a failure with
    /// the reason, never an error: the gate's retries decide.
    fn check(&self, timeout: Duration) -> impl Future<Output = Probed> + Send;
}

/// Either source, chosen at run time (behind the edge or not).
#[derive(Debug, Clone)]
pub enum AnySource {
    /// The edge's active checks.
    Edge(EdgeSource),
    /// Exec inside the instance.
    Exec(ExecSource),
}

impl HealthSource for AnySource {
    fn describe(&self) -> String {
        match self {
            Self::Edge(s) => s.describe(),
            Self::Exec(s) => s.describe(),
        }
    }

    async fn check(&self, timeout: Duration) -> Probed {
        match self {
            Self::Edge(s) => s.check(timeout).await,
            Self::Exec(s) => s.check(timeout).await,
        }
    }
}

/// Progress of gates and probes: every check result is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum HealthEvent {
    /// A gate opened.
    GateStarted {
        /// The instance (or backend) the gate is for.
        target: String,
        /// What is checked where.
        check: String,
        /// The whole gate's deadline, in milliseconds.
        deadline_millis: u64,
    },
    /// A check finished.
    Check {
        /// The instance (or backend).
        target: String,
        /// The check's number in this gate, from 1.
        attempt: u32,
        /// The result.
        result: CheckResult,
        /// Whether a failure counted towards the retries (not in the start period).
        counted: bool,
        /// Counted failures in a row so far.
        failures: u32,
        /// How long the checks have kept passing, in milliseconds, when passing.
        healthy_millis: Option<u64>,
    },
    /// A gate closed.
    GateEnded {
        /// The instance (or backend).
        target: String,
        /// How it ended.
        outcome: GateOutcome,
        /// How long the gate took, in milliseconds.
        millis: u64,
    },
    /// The probe binary was pushed into an instance, or found there already.
    ProbeInstalled {
        /// The instance.
        instance: String,
        /// Where it is inside.
        path: String,
        /// `true` when the same binary was there and nothing was pushed.
        reused: bool,
    },
}

/// Something that keeps a gate or a watch from running at all (a failed check is not
/// an error: see [`GateOutcome`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// An HTTP check without a port, on a resource that exposes none.
    #[error(
        "the HTTP health check of {path} has no port and the resource exposes none; give it one: `http \"{path}\" port=8080`"
    )]
    NoPort {
        /// The check's path.
        path: String,
    },
    /// A command check without a program.
    #[error("the command health check has no program; give one: `command \"/bin/check\"`")]
    EmptyCommand,
    /// The probe binary could not be found or read on this machine.
    #[error("cannot find the cul8er-proxy binary that runs HTTP and TCP checks in instances")]
    ProbeBinary {
        /// Where it looked, or the read error.
        #[source]
        source: crate::edge::EdgeBinaryError,
    },
    /// Pushing the probe binary into an instance failed.
    #[error("cannot install the health probe in instance {instance}: {step}")]
    ProbeInstall {
        /// The instance.
        instance: String,
        /// What was being done.
        step: String,
        /// What Incus said, when it said something.
        #[source]
        source: Option<Box<incus_api::Error>>,
    },
    /// An Incus request of the crash watch failed.
    #[error("the crash watch cannot {what}")]
    Watch {
        /// What was being done.
        what: String,
        /// What Incus said.
        #[source]
        source: Box<incus_api::Error>,
    },
    /// The release service's status could not be read to take the watch's baseline.
    #[error("the crash watch cannot read the service of instance {instance}")]
    WatchRelease {
        /// The instance.
        instance: String,
        /// Why.
        #[source]
        source: Box<crate::release::ReleaseError>,
    },
}

/// Milliseconds of a duration, saturating.
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_from_the_interval_up_to_the_cap() {
        let mut spec = GateSpec::new(Check::Tcp { port: 80 });
        spec.interval = Duration::from_secs(2);
        spec.backoff_max = Duration::from_secs(10);
        let delays: Vec<u64> = (1..=6).map(|n| spec.retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [2, 4, 8, 10, 10, 10]);
        assert_eq!(spec.retry_delay(200), Duration::from_secs(10));
        spec.backoff_max = Duration::from_secs(1);
        assert_eq!(
            spec.retry_delay(3),
            Duration::from_secs(2),
            "never below the interval"
        );
    }

    #[test]
    fn model_http_without_port_takes_the_exposed_port_or_says_what_to_do() {
        let mut model = HealthCheck::new(Probe::Http {
            path: "health".into(),
            port: None,
            status: 204,
        });
        model.retries = 5;
        model.body = Some("ok".into());
        let spec = GateSpec::from_model(&model, Some(8080)).unwrap();
        assert_eq!(
            spec.check,
            Check::Http {
                port: 8080,
                path: "/health".into(),
                status: 204,
                body_contains: Some("ok".into())
            }
        );
        assert_eq!(spec.retries, 5);
        let err = GateSpec::from_model(&model, None).unwrap_err();
        assert!(err.to_string().contains("port=8080"), "{err}");
        let empty = HealthCheck::new(Probe::Command { argv: Vec::new() });
        assert!(matches!(
            GateSpec::from_model(&empty, None),
            Err(HealthError::EmptyCommand)
        ));
    }

    #[test]
    fn events_serialize_with_a_kebab_case_tag() {
        let event = HealthEvent::Check {
            target: "web-1".into(),
            attempt: 2,
            result: CheckResult {
                verdict: Verdict::Fail,
                reason: "connection refused".into(),
                millis: 3,
            },
            counted: true,
            failures: 1,
            healthy_millis: None,
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["event"], "check");
        assert_eq!(json["result"]["verdict"], "fail");
        assert_eq!(json["attempt"], 2);
    }
}
