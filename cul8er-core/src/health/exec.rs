//! Checks run inside the instance through the Incus exec API.
//!
//! HTTP and TCP checks run the static `cul8er-proxy probe` binary, pushed once per
//! instance to [`PROBE_PATH`] through the file API (an instance that has the same
//! binary, by SHA-256, keeps it); command checks run the command itself. The probe
//! connects to `127.0.0.1` inside the instance, so it sees what a backend would serve
//! without any route from the operator's machine.

use std::time::Duration;

use incus_api::exec::ExecRequest;
use incus_api::files::FileOptions;
use tokio::sync::OnceCell;

use super::{Check, HealthError, HealthEvent, HealthSource, Probed};
use crate::edge::EdgeBinary;

/// Where the probe binary lives inside instances.
pub const PROBE_PATH: &str = "/opt/cul8er/bin/cul8er-proxy";
const PROBE_DIR: &str = "/opt/cul8er/bin";
const PROBE_STAGING: &str = "/opt/cul8er/bin/.cul8er-proxy.new";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// How long installing the probe may take (a few MiB through the file API).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(60);
/// What the exec round trip itself needs out of a check's timeout: the probe gets the
/// rest, so a slow service is reported in the probe's words, not as the gate's cut-off.
const EXEC_ALLOWANCE: Duration = Duration::from_millis(400);

/// What [`install_probe`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeInstall {
    /// The same binary was there already.
    Reused,
    /// The binary was pushed.
    Pushed,
}

/// Puts `binary` at [`PROBE_PATH`] in `instance` unless the same binary (by SHA-256)
/// is there already. The new file is pushed beside the old and moved over it, so a
/// probe running meanwhile is never cut short.
///
/// # Errors
/// [`HealthError::ProbeInstall`] when a file or exec call fails.
pub async fn install_probe(
    client: &incus_api::Client,
    instance: &str,
    binary: &EdgeBinary,
) -> Result<ProbeInstall, HealthError> {
    let failed = |step: &str, source: Option<incus_api::Error>| HealthError::ProbeInstall {
        instance: instance.to_owned(),
        step: step.to_owned(),
        source: source.map(Box::new),
    };
    let instances = client.instances();
    // `sha256sum` is in busybox and coreutils; an image without it just gets a push.
    let present = instances
        .exec_recorded(
            instance,
            &ExecRequest::new(["sha256sum", PROBE_PATH]).env("PATH", PATH),
            INSTALL_TIMEOUT,
        )
        .await
        .map_err(|e| failed("checking for an installed probe", Some(e)))?;
    if present.exit_code == 0
        && present
            .stdout_text()
            .split_whitespace()
            .next()
            .is_some_and(|hash| hash.eq_ignore_ascii_case(&binary.sha256))
    {
        return Ok(ProbeInstall::Reused);
    }
    let bytes = fs_err::read(&binary.path).map_err(|e| HealthError::ProbeInstall {
        instance: instance.to_owned(),
        step: format!("reading {}: {e}", binary.path.display()),
        source: None,
    })?;
    let files = instances.files(instance);
    files
        .mkdir_all(PROBE_DIR, FileOptions::mode(0o755))
        .await
        .map_err(|e| failed("creating /opt/cul8er/bin", Some(e)))?;
    // Mode and owner apply only to new files: start from none.
    match files.delete(PROBE_STAGING).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(failed("removing an old staging file", Some(e))),
    }
    files
        .push(PROBE_STAGING, bytes, FileOptions::mode(0o755).owner(0, 0))
        .await
        .map_err(|e| failed("pushing the probe binary", Some(e)))?;
    let moved = instances
        .exec_recorded(
            instance,
            &ExecRequest::new(["mv", "-f", PROBE_STAGING, PROBE_PATH]).env("PATH", PATH),
            INSTALL_TIMEOUT,
        )
        .await
        .map_err(|e| failed("moving the probe into place", Some(e)))?;
    if moved.exit_code != 0 {
        return Err(failed(
            &format!(
                "moving the probe into place exited {}: {}",
                moved.exit_code,
                moved.stderr_text().trim()
            ),
            None,
        ));
    }
    Ok(ProbeInstall::Pushed)
}

/// The command line that runs `check` inside an instance with `timeout` for the
/// probe itself.
#[must_use]
pub fn probe_argv(check: &Check, timeout: Duration) -> Vec<String> {
    let timeout = format!("{}ms", timeout.as_millis().max(1));
    match check {
        Check::Http {
            port,
            path,
            status,
            body_contains,
        } => {
            let mut argv = vec![
                PROBE_PATH.to_owned(),
                "probe".into(),
                "http".into(),
                format!("http://127.0.0.1:{port}{path}"),
                "--expect".into(),
                status.to_string(),
                "--timeout".into(),
                timeout,
            ];
            if let Some(body) = body_contains {
                argv.push("--body-contains".into());
                argv.push(body.clone());
            }
            argv
        }
        Check::Tcp { port } => vec![
            PROBE_PATH.to_owned(),
            "probe".into(),
            "tcp".into(),
            format!("127.0.0.1:{port}"),
            "--timeout".into(),
            timeout,
        ],
        Check::Command { argv } => argv.clone(),
    }
}

/// Checks run inside one instance through exec.
#[derive(Debug, Clone)]
pub struct ExecSource {
    client: incus_api::Client,
    instance: String,
    check: Check,
    binary: Option<EdgeBinary>,
    installed: std::sync::Arc<OnceCell<()>>,
}

impl ExecSource {
    /// A source for `check` in `instance`. HTTP and TCP checks need the probe
    /// `binary` (see [`crate::edge::locate_binary`]); command checks ignore it.
    ///
    /// # Errors
    /// [`HealthError::ProbeBinary`] when an HTTP or TCP check has no binary.
    pub fn new(
        client: &incus_api::Client,
        instance: impl Into<String>,
        check: Check,
        binary: Option<EdgeBinary>,
    ) -> Result<Self, HealthError> {
        if !matches!(check, Check::Command { .. }) && binary.is_none() {
            return Err(HealthError::ProbeBinary {
                source: crate::edge::EdgeBinaryError::NotFound {
                    looked: vec!["(no binary given to the health check)".into()],
                },
            });
        }
        Ok(Self {
            client: client.clone(),
            instance: instance.into(),
            check,
            binary,
            installed: std::sync::Arc::default(),
        })
    }

    /// The instance checked.
    #[must_use]
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Installs the probe now (it is installed at the first check otherwise), and
    /// reports what was done through `on_event`. Command checks need nothing.
    ///
    /// # Errors
    /// [`HealthError::ProbeInstall`].
    pub async fn prepare(
        &self,
        on_event: &(dyn Fn(HealthEvent) + Send + Sync),
    ) -> Result<(), HealthError> {
        let Some(binary) = &self.binary else {
            return Ok(());
        };
        if matches!(self.check, Check::Command { .. }) {
            return Ok(());
        }
        self.installed
            .get_or_try_init(|| async {
                let done = install_probe(&self.client, &self.instance, binary).await?;
                on_event(HealthEvent::ProbeInstalled {
                    instance: self.instance.clone(),
                    path: PROBE_PATH.to_owned(),
                    reused: done == ProbeInstall::Reused,
                });
                Ok::<(), HealthError>(())
            })
            .await
            .copied()
    }
}

impl HealthSource for ExecSource {
    fn describe(&self) -> String {
        format!("{} in {}", self.check, self.instance)
    }

    async fn check(&self, timeout: Duration) -> Probed {
        if let Err(e) = self.prepare(&|_| {}).await {
            return Probed::fail(crate::execute::error_chain(&e));
        }
        let inner = timeout.saturating_sub(EXEC_ALLOWANCE).max(timeout / 2);
        let argv = probe_argv(&self.check, inner);
        let request = ExecRequest::new(argv).env("PATH", PATH);
        let out = match self
            .client
            .instances()
            .exec_recorded(&self.instance, &request, timeout)
            .await
        {
            Ok(out) => out,
            Err(e) => {
                return Probed::fail(format!(
                    "cannot run the check: {}",
                    crate::execute::error_chain(&e)
                ));
            }
        };
        let said = |text: String| -> String {
            let text = text.trim();
            let text = text
                .strip_prefix("healthy: ")
                .or_else(|| text.strip_prefix("unhealthy: "))
                .or_else(|| text.strip_prefix("cul8er-proxy: "))
                .unwrap_or(text);
            text.lines()
                .last()
                .unwrap_or("")
                .chars()
                .take(300)
                .collect()
        };
        match (&self.check, out.exit_code) {
            (_, 0) => Probed::pass(match said(out.stdout_text()) {
                s if s.is_empty() => "exit 0".to_owned(),
                s => s,
            }),
            (Check::Command { argv }, 127) => Probed::fail(format!(
                "{} not found in the instance (exit 127): {}",
                argv[0],
                said(out.stderr_text())
            )),
            (Check::Command { .. }, code) => {
                let stderr = said(out.stderr_text());
                let detail = if stderr.is_empty() {
                    said(out.stdout_text())
                } else {
                    stderr
                };
                Probed::fail(format!("exited with status {code}: {detail}"))
            }
            (_, 1) => Probed::fail(said(out.stdout_text())),
            (_, code) => Probed::fail(format!(
                "the probe failed (exit {code}): {}",
                said(out.stderr_text())
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_probe_line_carries_status_body_and_timeout() {
        let argv = probe_argv(
            &Check::Http {
                port: 8080,
                path: "/up".into(),
                status: 204,
                body_contains: Some("ok".into()),
            },
            Duration::from_millis(1600),
        );
        assert_eq!(
            argv,
            [
                PROBE_PATH,
                "probe",
                "http",
                "http://127.0.0.1:8080/up",
                "--expect",
                "204",
                "--timeout",
                "1600ms",
                "--body-contains",
                "ok"
            ]
        );
    }

    #[test]
    fn tcp_and_command_lines() {
        assert_eq!(
            probe_argv(&Check::Tcp { port: 5432 }, Duration::from_secs(2)),
            [
                PROBE_PATH,
                "probe",
                "tcp",
                "127.0.0.1:5432",
                "--timeout",
                "2000ms"
            ]
        );
        let argv = vec!["/bin/true".to_owned()];
        assert_eq!(
            probe_argv(
                &Check::Command { argv: argv.clone() },
                Duration::from_secs(2)
            ),
            argv
        );
    }
}
