//! Release health for `status` and `list`: whether each instance's release service
//! runs, has stopped, or crashes and is being restarted by its init, with the restart
//! count and the version that runs.
//!
//! One exec per instance (the status script), each bounded by a deadline, at most a
//! few at once: a display must answer even when an instance hangs. A failure to ask is
//! part of the answer ([`ServiceState::Unknown`] with the reason), never an error of
//! the whole display.

use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};

use super::{Answer, Ctx, InitSystem, ServiceStatus, parse_init, parse_status, script};
use crate::execute::error_chain;

/// How long one instance may take to answer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(10);

/// Instances asked at once.
pub const HEALTH_CONCURRENCY: usize = 8;

/// What a release's service is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceState {
    /// Its main process runs.
    Running,
    /// It does not run and nothing restarts it (stopped by hand, or never started).
    Stopped,
    /// It exited and its init is about to start it again.
    CrashedRestarting,
    /// It crashed so often that its init gave up (systemd's start limit).
    Failed,
    /// The instance could not be asked (not running, exec failed or timed out).
    Unknown,
}

impl ServiceState {
    /// The name used in status output: `running`, `stopped`, `crashed-restarting`,
    /// `failed`, `unknown`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::CrashedRestarting => "crashed-restarting",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ServiceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One instance's release service, as `status` and `list` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseHealth {
    /// The release (app) name.
    pub app: String,
    /// What the service does.
    pub state: ServiceState,
    /// How often the init restarted it, when the init counts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restarts: Option<u32>,
    /// The version `current` points at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The init it runs under, when the instance answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<InitSystem>,
    /// The init's own word for the state (systemd: `activating/auto-restart`), or why
    /// the state is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ReleaseHealth {
    /// Whether the service runs.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.state == ServiceState::Running
    }

    /// The state with the restart count and version, as one cell of a table:
    /// `running v2 (3 restarts)`.
    #[must_use]
    pub fn describe(&self) -> String {
        let mut text = self.state.as_str().to_owned();
        if let Some(version) = &self.version {
            text.push_str(&format!(" v{version}"));
        }
        match self.restarts {
            Some(1) => text.push_str(" (1 restart)"),
            Some(n) if n > 1 => text.push_str(&format!(" ({n} restarts)")),
            _ => {}
        }
        if self.state == ServiceState::Unknown
            && let Some(detail) = &self.detail
        {
            text.push_str(&format!(": {detail}"));
        }
        text
    }

    /// The health of an app whose instance is not running: unknown, saying so.
    #[must_use]
    pub fn instance_not_running(app: &str, status: &str) -> Self {
        Self {
            app: app.to_owned(),
            state: ServiceState::Unknown,
            restarts: None,
            version: None,
            init: None,
            detail: Some(format!("the instance is {}", status.to_lowercase())),
        }
    }
}

/// The state a [`ServiceStatus`] amounts to. `supervised` says, for busybox init
/// and OpenRC, whether the init still respawns the service (its inittab line, or
/// OpenRC calling it started); unknown, a dead service started more than once counts
/// as restarting.
#[must_use]
pub fn state_of(status: &ServiceStatus, supervised: Option<bool>) -> ServiceState {
    if status.running {
        return ServiceState::Running;
    }
    match status.init {
        InitSystem::Systemd => {
            let state = status.state.as_deref().unwrap_or_default();
            if state.ends_with("/auto-restart") || state.starts_with("activating") {
                ServiceState::CrashedRestarting
            } else if state.starts_with("failed") {
                ServiceState::Failed
            } else {
                ServiceState::Stopped
            }
        }
        // supervise-daemon and busybox init respawn without end: a dead service they
        // supervise is between two respawns.
        InitSystem::Openrc | InitSystem::Busybox => {
            if supervised.unwrap_or_else(|| status.restarts.is_some_and(|n| n > 0)) {
                ServiceState::CrashedRestarting
            } else {
                ServiceState::Stopped
            }
        }
    }
}

/// Asks `instance` how its release service does, within `timeout`. `app` is the
/// release's name; `None` finds the app cul8er deployed into the instance (for `list`,
/// which has no topology), and gives `None` when there is none.
///
/// Never fails: an instance that cannot be asked gives [`ServiceState::Unknown`] with
/// the reason.
pub async fn health(
    client: &incus_api::Client,
    instance: &str,
    app: Option<&str>,
    timeout: Duration,
) -> Option<ReleaseHealth> {
    let unknown = |app: &str, detail: String| ReleaseHealth {
        app: app.to_owned(),
        state: ServiceState::Unknown,
        restarts: None,
        version: None,
        init: None,
        detail: Some(detail),
    };
    let shown = app.unwrap_or("release");
    let ctx = Ctx {
        client,
        instance,
        app: shown,
        timeout,
    };
    let step = "reading the service status";
    let asked = tokio::time::timeout(
        timeout,
        ctx.script(step, &script::status_script(), &[app.unwrap_or_default()]),
    )
    .await;
    let answer: Answer = match asked {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => return Some(unknown(shown, error_chain(&e))),
        Err(_) => {
            return Some(unknown(
                shown,
                format!("no answer within {} s", timeout.as_secs()),
            ));
        }
    };
    let app = match app {
        Some(app) => app.to_owned(),
        None => answer.get("app")?.clone(),
    };
    let init = match parse_init(&ctx, step, &answer) {
        Ok(init) => init,
        Err(e) => return Some(unknown(&app, error_chain(&e))),
    };
    let status = parse_status(init, &answer);
    let supervised = answer.get("supervised").map(|v| v == "true");
    Some(ReleaseHealth {
        state: state_of(&status, supervised),
        app,
        restarts: status.restarts,
        version: status.version,
        init: Some(init),
        detail: status.state,
    })
}

/// One instance to ask in [`health_of_many`].
#[derive(Debug, Clone)]
pub struct HealthQuery<'a> {
    /// The client of the instance's host.
    pub client: &'a incus_api::Client,
    /// The instance.
    pub instance: &'a str,
    /// The release's name; `None` finds it.
    pub app: Option<&'a str>,
}

/// Asks every instance of `queries` with [`health`], at most `concurrency` at once,
/// each within `timeout`; the answers in the order of `queries`.
pub async fn health_of_many(
    queries: &[HealthQuery<'_>],
    concurrency: usize,
    timeout: Duration,
) -> Vec<Option<ReleaseHealth>> {
    let mut answers: Vec<(usize, Option<ReleaseHealth>)> = futures_util::stream::iter(
        queries.iter().enumerate(),
    )
    .map(|(index, q)| async move { (index, health(q.client, q.instance, q.app, timeout).await) })
    .buffer_unordered(concurrency.max(1))
    .collect()
    .await;
    answers.sort_by_key(|(index, _)| *index);
    answers.into_iter().map(|(_, answer)| answer).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        init: InitSystem,
        running: bool,
        restarts: Option<u32>,
        state: &str,
    ) -> ServiceStatus {
        ServiceStatus {
            init,
            running,
            pid: running.then_some(42),
            process_id: None,
            restarts,
            version: Some("2".into()),
            state: (!state.is_empty()).then(|| state.to_owned()),
        }
    }

    #[test]
    fn systemd_states_map_to_running_stopped_restarting_and_failed() {
        let cases = [
            (true, "active/running", ServiceState::Running),
            (false, "inactive/dead", ServiceState::Stopped),
            (
                false,
                "activating/auto-restart",
                ServiceState::CrashedRestarting,
            ),
            (false, "failed/failed", ServiceState::Failed),
        ];
        for (running, word, expected) in cases {
            assert_eq!(
                state_of(&status(InitSystem::Systemd, running, Some(0), word), None),
                expected,
                "{word}"
            );
        }
    }

    #[test]
    fn respawning_inits_tell_restarting_from_stopped_by_supervision() {
        for init in [InitSystem::Busybox, InitSystem::Openrc] {
            let running = status(init, true, Some(3), "");
            assert_eq!(state_of(&running, Some(true)), ServiceState::Running);
            let dead = status(init, false, Some(2), "");
            assert_eq!(state_of(&dead, Some(true)), ServiceState::CrashedRestarting);
            // Restarted before, then stopped by hand: no longer supervised.
            assert_eq!(state_of(&dead, Some(false)), ServiceState::Stopped);
            let never = status(init, false, Some(0), "");
            assert_eq!(
                state_of(&never, Some(true)),
                ServiceState::CrashedRestarting
            );
            assert_eq!(state_of(&never, Some(false)), ServiceState::Stopped);
        }
    }

    #[test]
    fn without_a_supervision_answer_a_dead_service_started_before_is_restarting() {
        for init in [InitSystem::Busybox, InitSystem::Openrc] {
            assert_eq!(
                state_of(&status(init, false, Some(2), ""), None),
                ServiceState::CrashedRestarting
            );
            assert_eq!(
                state_of(&status(init, false, Some(0), ""), None),
                ServiceState::Stopped
            );
            assert_eq!(
                state_of(&status(init, false, None, ""), None),
                ServiceState::Stopped
            );
        }
    }

    #[test]
    fn describe_shows_version_restarts_and_why_unknown() {
        let mut health = ReleaseHealth {
            app: "web".into(),
            state: ServiceState::Running,
            restarts: Some(3),
            version: Some("2".into()),
            init: Some(InitSystem::Systemd),
            detail: Some("active/running".into()),
        };
        assert_eq!(health.describe(), "running v2 (3 restarts)");
        assert!(health.is_healthy());
        health.restarts = Some(0);
        health.state = ServiceState::Stopped;
        assert_eq!(health.describe(), "stopped v2");
        assert!(!health.is_healthy());
        let unknown = ReleaseHealth::instance_not_running("web", "Stopped");
        assert_eq!(unknown.describe(), "unknown: the instance is stopped");
        assert!(!unknown.is_healthy());
    }

    #[test]
    fn json_names_states_in_kebab_case() {
        let json = serde_json::to_string(&ServiceState::CrashedRestarting).unwrap();
        assert_eq!(json, "\"crashed-restarting\"");
    }
}
