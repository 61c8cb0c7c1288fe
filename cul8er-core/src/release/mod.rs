//! Releases: the app itself, uploaded into an instance and run as a service under the
//! image's own init.
//!
//! A release lands in `/opt/<app>/releases/<version>` through the Incus file API, a
//! `current` link points at the version that runs, its environment is a 0600 file
//! owned by the service user, and the service is a systemd unit, an OpenRC service or
//! a busybox init entry, whichever init the image has. Everything goes through the
//! Incus API (files and exec), so it works the same on local and remote hosts.
//!
//! [`deploy`] is idempotent: the same version twice changes nothing; a new version
//! switches `current` and restarts the service. [`start`] starts a service stopped
//! behind cul8er's back through the init, as apply does for that drift. [`status`]
//! reports whether the service runs, with the process identity and restart count that
//! a crash watch compares between polls. [`health`] turns that into the state `status`
//! and `list` show (running, stopped, crashed-restarting), bounded in time and
//! concurrency; the planner reads it too, so a service stopped by hand is drift.

mod artifact;
pub mod health;
mod script;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use incus_api::exec::ExecRequest;
use incus_api::files::FileOptions;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::topology::{EnvValue, EnvVar, Release};
use artifact::Artifact;
pub use health::{HealthQuery, ReleaseHealth, ServiceState};
use script::Layout;

/// The release part of a resource, as the topology declares it.
pub type ReleaseSpec = Release;

/// The release's environment with every secret read: what the env file will hold.
///
/// Values are kept out of `Debug` output; a secret never reaches logs through it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ResolvedEnv {
    vars: BTreeMap<String, EnvEntry>,
}

#[derive(Clone, PartialEq, Eq)]
struct EnvEntry {
    value: String,
    secret: bool,
}

impl fmt::Debug for ResolvedEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for (name, entry) in &self.vars {
            if entry.secret {
                map.entry(name, &"<redacted>");
            } else {
                map.entry(name, &entry.value);
            }
        }
        map.finish()
    }
}

impl ResolvedEnv {
    /// An empty environment.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Resolves a resource's declared environment, reading `secret X from=env`
    /// variables through `lookup` (the operator's environment at apply time).
    ///
    /// # Errors
    ///
    /// [`ReleaseError::MissingSecret`] when `lookup` has no value for a secret, and
    /// [`ReleaseError::SecretStoreUnavailable`] for secrets from the encrypted store,
    /// which has not landed yet.
    pub fn resolve(
        vars: &[EnvVar],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ReleaseError> {
        let mut env = Self::new();
        for var in vars {
            match &var.value {
                EnvValue::Value { value } => env.insert(&var.name, value),
                EnvValue::SecretFromEnv { var: source } => {
                    let value = lookup(source).ok_or_else(|| ReleaseError::MissingSecret {
                        name: var.name.clone(),
                        source_var: source.clone(),
                    })?;
                    env.insert_secret(&var.name, value);
                }
                EnvValue::SecretFromStore { secret } => {
                    return Err(ReleaseError::SecretStoreUnavailable {
                        name: var.name.clone(),
                        secret: secret.clone(),
                    });
                }
            }
        }
        Ok(env)
    }

    /// Adds a plain variable.
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(
            name.into(),
            EnvEntry {
                value: value.into(),
                secret: false,
            },
        );
    }

    /// Adds a secret variable: its value never shows in `Debug` output.
    pub fn insert_secret(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.vars.insert(
            name.into(),
            EnvEntry {
                value: value.into(),
                secret: true,
            },
        );
    }

    /// The variable names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// Whether there are no variables.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars
            .iter()
            .map(|(name, entry)| (name.as_str(), entry.value.as_str()))
    }
}

impl InitSystem {
    /// The name used in status output: `systemd`, `openrc`, `busybox`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Openrc => "openrc",
            Self::Busybox => "busybox",
        }
    }
}

impl fmt::Display for InitSystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The init system that runs services inside an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitSystem {
    /// systemd (`/run/systemd/system` exists).
    Systemd,
    /// OpenRC (`/sbin/openrc-run` exists).
    Openrc,
    /// busybox init with `/etc/inittab`.
    Busybox,
}

/// What runs: the answer of [`status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// The init system the service runs under.
    pub init: InitSystem,
    /// Whether the service's main process runs now.
    pub running: bool,
    /// The main process's pid inside the instance, when it runs.
    pub pid: Option<u32>,
    /// The main process's identity: pid and start time, so a process restarted under
    /// the same pid still compares different.
    pub process_id: Option<String>,
    /// How often the init restarted the service, when the init counts it.
    pub restarts: Option<u32>,
    /// The release version `current` points at, when one is deployed.
    pub version: Option<String>,
    /// The init's own word for the state (systemd: `active/running`), when it has one.
    pub state: Option<String>,
}

/// A release that could not be deployed or inspected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// A `secret X from=env` variable is missing from the operator's environment.
    #[error(
        "environment variable {name} is a secret read from ${source_var}, which is not set; export it before apply"
    )]
    MissingSecret {
        /// The release's variable.
        name: String,
        /// The operator's variable it is read from.
        source_var: String,
    },
    /// A secret from the encrypted store, which has not landed yet.
    #[error(
        "environment variable {name} reads secret {secret} from the secret store, which cul8er does not offer yet"
    )]
    SecretStoreUnavailable {
        /// The release's variable.
        name: String,
        /// The secret's name.
        secret: String,
    },
    /// The release's name, version or user cannot be used as a path or account name.
    #[error("release {app}: {what} {value:?} is not allowed: {rule}")]
    Invalid {
        /// The app's name.
        app: String,
        /// Which field.
        what: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        rule: &'static str,
    },
    /// The artifact on the operator's machine could not be read.
    #[error("release {app}: cannot read the artifact {path}; check that it exists and is readable")]
    Artifact {
        /// The app's name.
        app: String,
        /// The artifact's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A step inside the instance exited with an error.
    #[error(
        "release {app} on instance {instance}: {step} exited with status {exit_code}: {stderr}"
    )]
    Step {
        /// The app's name.
        app: String,
        /// The instance.
        instance: String,
        /// What was being done.
        step: String,
        /// The exit status.
        exit_code: i32,
        /// What the step wrote to stderr (trimmed).
        stderr: String,
    },
    /// A before-start or after-start hook failed.
    #[error(
        "release {app} on instance {instance}: {phase} hook `{command}` exited with status {exit_code}: {stderr}"
    )]
    Hook {
        /// The app's name.
        app: String,
        /// The instance.
        instance: String,
        /// `before-start` or `after-start`.
        phase: &'static str,
        /// The hook's command.
        command: String,
        /// The exit status.
        exit_code: i32,
        /// What the hook wrote to stderr (trimmed).
        stderr: String,
    },
    /// The instance answered something the release scripts never print.
    #[error("release {app} on instance {instance}: unexpected answer from {step}: {detail}")]
    Unexpected {
        /// The app's name.
        app: String,
        /// The instance.
        instance: String,
        /// What was being done.
        step: String,
        /// What was wrong.
        detail: String,
    },
    /// An Incus request for one step of a deploy or status failed.
    #[error("release {app} on instance {instance}: {step} failed")]
    Incus {
        /// The app's name.
        app: String,
        /// The instance.
        instance: String,
        /// What was being done, e.g. `uploading the artifact`.
        step: String,
        /// What Incus said.
        #[source]
        source: Box<incus_api::Error>,
    },
}

/// How [`deploy_with`] deploys.
#[derive(Debug, Clone)]
pub struct DeployOptions {
    /// Relative artifact paths are resolved against this directory (the topology
    /// file's directory); `None` means the current directory.
    pub artifact_base: Option<PathBuf>,
    /// Versions kept in `/opt/<app>/releases`, `current` included, so a rollback can
    /// switch back without an upload.
    pub keep: usize,
    /// How long the service may take to start.
    pub start_timeout: Duration,
    /// How long one hook may run.
    pub hook_timeout: Duration,
    /// How long each other step inside the instance may take.
    pub step_timeout: Duration,
}

impl Default for DeployOptions {
    fn default() -> Self {
        Self {
            artifact_base: None,
            keep: 3,
            start_timeout: Duration::from_secs(30),
            hook_timeout: Duration::from_secs(600),
            step_timeout: Duration::from_secs(120),
        }
    }
}

/// What [`deploy_with`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOutcome {
    /// Whether anything changed; `false` when the same release was already running.
    pub changed: bool,
    /// Whether the artifact was uploaded (a version already present is not).
    pub uploaded: bool,
    /// The service after the deploy.
    pub status: ServiceStatus,
    /// Versions deleted by the keep policy.
    pub pruned: Vec<String>,
}

/// The user a release runs as when the topology names none: the app's own name.
#[must_use]
pub fn service_user(release: &ReleaseSpec) -> &str {
    release.user.as_deref().unwrap_or(&release.name)
}

/// Deploys `release` into `instance`: uploads it, writes its environment, installs the
/// service under the instance's init, switches `current` and (re)starts the service.
///
/// Idempotent: when the same version is deployed with the same environment and the
/// service runs, nothing changes. See [`deploy_with`] for the options.
///
/// # Errors
///
/// A [`ReleaseError`] naming the step that failed.
pub async fn deploy(
    client: &incus_api::Client,
    instance: &str,
    release: &ReleaseSpec,
    env: &ResolvedEnv,
) -> Result<(), ReleaseError> {
    deploy_with(client, instance, release, env, &DeployOptions::default())
        .await
        .map(|_| ())
}

/// [`deploy`] with options, reporting what it did.
///
/// The steps, each through the Incus API: one exec detects the init, creates the
/// service user when absent (a system account named by `user`, or the app's name) and
/// reads what is deployed; when that is this release and it runs, the deploy ends.
/// Otherwise the artifact is uploaded (unless this version is there already), the env
/// file (0600, the service user's), the run script and the service definition are
/// pushed, one exec puts them in place and switches `current`, the before-start hooks
/// run (as root, in `current`, with the environment), the service restarts, the
/// after-start hooks run, and the deploy is recorded and old versions pruned.
///
/// # Errors
///
/// A [`ReleaseError`] naming the step that failed.
pub async fn deploy_with(
    client: &incus_api::Client,
    instance: &str,
    release: &ReleaseSpec,
    env: &ResolvedEnv,
    options: &DeployOptions,
) -> Result<DeployOutcome, ReleaseError> {
    validate(release)?;
    let app = release.name.as_str();
    let user = service_user(release);
    let layout = Layout::new(app);
    let ctx = Ctx {
        client,
        instance,
        app,
        timeout: options.step_timeout,
    };

    let artifact = match &release.artifact {
        None => Artifact::empty(),
        Some(path) => {
            let path = match &options.artifact_base {
                Some(base) if Path::new(path).is_relative() => base.join(path),
                _ => PathBuf::from(path),
            };
            let read_path = path.clone();
            tokio::task::spawn_blocking(move || Artifact::read(&read_path))
                .await
                .map_err(|e| ReleaseError::Artifact {
                    app: app.to_owned(),
                    path: path.clone(),
                    source: Box::new(e),
                })?
                .map_err(|e| ReleaseError::Artifact {
                    app: app.to_owned(),
                    path,
                    source: Box::new(e),
                })?
        }
    };

    let prepared = ctx
        .script(
            "preparing the instance",
            &script::prepare_script(),
            &[app, user, &release.version],
        )
        .await?;
    let init = parse_init(&ctx, "preparing the instance", &prepared)?;
    let uid = parse_id(&ctx, &prepared, "uid")?;
    let gid = parse_id(&ctx, &prepared, "gid")?;
    let digest = deploy_digest(release, env, &artifact.digest, init, uid, gid);
    let before = parse_status(init, &prepared);
    if prepared.get("deployed") == Some(&digest) && before.running {
        tracing::debug!(instance, app, version = %release.version, "release already deployed and running");
        return Ok(DeployOutcome {
            changed: false,
            uploaded: false,
            status: before,
            pruned: Vec::new(),
        });
    }
    tracing::info!(instance, app, version = %release.version, %init, uid, "deploying release");

    let files = client.instances().files(instance);
    let uploaded = prepared.get("artifact") != Some(&artifact.digest);
    if uploaded {
        let root = layout.upload();
        files
            .mkdir(&root, FileOptions::mode(0o755).owner(uid, gid))
            .await
            .map_err(|e| ctx.incus("creating the upload directory", e))?;
        artifact::upload(&files, &root, &artifact, uid, gid)
            .await
            .map_err(|e| match e {
                artifact::UploadError::Incus(e) => ctx.incus("uploading the artifact", e),
                artifact::UploadError::Read { path, source } => ReleaseError::Artifact {
                    app: app.to_owned(),
                    path,
                    source: Box::new(source),
                },
            })?;
    }
    let workdir = release
        .workdir
        .clone()
        .unwrap_or_else(|| format!("{}/current", layout.base));
    files
        .push(
            &format!("{}.new", layout.env_file()),
            script::env_file(env.pairs()),
            FileOptions::mode(0o600).owner(uid, gid),
        )
        .await
        .map_err(|e| ctx.incus("writing the env file", e))?;
    files
        .push(
            &format!("{}.new", layout.run_script()),
            script::run_script(app, &release.version, &workdir, &release.start),
            FileOptions::mode(0o755).owner(0, 0),
        )
        .await
        .map_err(|e| ctx.incus("writing the run script", e))?;
    let service_mode = if init == InitSystem::Systemd {
        0o644
    } else {
        0o755
    };
    files
        .push(
            &format!("{}/service.new", layout.state()),
            script::service_definition(init, app, user, uid, gid),
            FileOptions::mode(service_mode).owner(0, 0),
        )
        .await
        .map_err(|e| ctx.incus("writing the service definition", e))?;

    ctx.script(
        "switching `current` and installing the service",
        &script::activate_script(),
        &[
            app,
            &release.version,
            &artifact.digest,
            init.as_str(),
            &layout.service_file(init),
        ],
    )
    .await?;

    for command in &release.before_start {
        ctx.hook("before-start", command, options.hook_timeout)
            .await?;
    }
    let wait = options.start_timeout.as_secs().max(1).to_string();
    let restart_ctx = Ctx {
        timeout: options.start_timeout + options.step_timeout,
        ..ctx
    };
    let started = restart_ctx
        .script(
            "starting the service",
            &script::restart_script(),
            &[app, init.as_str(), &wait],
        )
        .await?;
    let status = parse_status(init, &started);
    for command in &release.after_start {
        ctx.hook("after-start", command, options.hook_timeout)
            .await?;
    }
    let keep = options.keep.max(1).to_string();
    let finished = ctx
        .script(
            "recording the deploy",
            &script::finish_script(),
            &[app, &release.version, &digest, &keep],
        )
        .await?;
    let pruned = finished.pruned;
    Ok(DeployOutcome {
        changed: true,
        uploaded,
        status,
        pruned,
    })
}

/// Starts `release`'s service in `instance` through the instance's init when it does
/// not run — stopped by hand, or given up on by systemd — and waits until it runs
/// (`options.start_timeout`). A service that runs is left alone, so a second call
/// changes nothing. Nothing is uploaded and no hook runs: the release deployed is the
/// one started.
///
/// # Errors
///
/// A [`ReleaseError`] when the instance cannot be asked, has no init cul8er knows, or
/// the service does not start in time (with what the init said).
pub async fn start(
    client: &incus_api::Client,
    instance: &str,
    release: &ReleaseSpec,
    options: &DeployOptions,
) -> Result<ServiceStatus, ReleaseError> {
    validate(release)?;
    let ctx = Ctx {
        client,
        instance,
        app: &release.name,
        timeout: options.start_timeout + options.step_timeout,
    };
    let step = "starting the service";
    let wait = options.start_timeout.as_secs().max(1).to_string();
    let out = ctx
        .script(step, &script::start_script(), &[&release.name, &wait])
        .await?;
    let init = parse_init(&ctx, step, &out)?;
    Ok(parse_status(init, &out))
}

/// Reports whether `release`'s service runs in `instance`.
///
/// One exec: cheap enough for a crash watch to poll. Compare
/// [`ServiceStatus::process_id`] and [`ServiceStatus::restarts`] between polls to see a
/// service that the init restarted.
///
/// # Errors
///
/// A [`ReleaseError`] when the instance cannot be asked (stopped, unreachable) or has
/// no init cul8er knows.
pub async fn status(
    client: &incus_api::Client,
    instance: &str,
    release: &ReleaseSpec,
) -> Result<ServiceStatus, ReleaseError> {
    validate(release)?;
    let ctx = Ctx {
        client,
        instance,
        app: &release.name,
        timeout: Duration::from_secs(30),
    };
    let out = ctx
        .script(
            "reading the service status",
            &script::status_script(),
            &[&release.name],
        )
        .await?;
    let init = parse_init(&ctx, "reading the service status", &out)?;
    Ok(parse_status(init, &out))
}

/// The `key=value` lines a script printed, and the `pruned=` ones collected.
#[derive(Debug, Default)]
struct Answer {
    values: BTreeMap<String, String>,
    pruned: Vec<String>,
}

impl Answer {
    fn parse(stdout: &str) -> Self {
        let mut answer = Self::default();
        for line in stdout.lines() {
            if let Some((key, value)) = line.split_once('=') {
                if key == "pruned" {
                    answer.pruned.push(value.to_owned());
                } else {
                    answer.values.insert(key.to_owned(), value.to_owned());
                }
            }
        }
        answer
    }

    fn get(&self, key: &str) -> Option<&String> {
        self.values.get(key).filter(|v| !v.is_empty())
    }
}

#[derive(Clone, Copy)]
struct Ctx<'a> {
    client: &'a incus_api::Client,
    instance: &'a str,
    app: &'a str,
    timeout: Duration,
}

impl Ctx<'_> {
    fn incus(&self, step: &str, source: incus_api::Error) -> ReleaseError {
        ReleaseError::Incus {
            app: self.app.to_owned(),
            instance: self.instance.to_owned(),
            step: step.to_owned(),
            source: Box::new(source),
        }
    }

    async fn script(
        &self,
        step: &str,
        script: &str,
        args: &[&str],
    ) -> Result<Answer, ReleaseError> {
        let mut command = vec!["/bin/sh", "-c", script, "cul8er"];
        command.extend_from_slice(args);
        let request = ExecRequest::new(command).env("PATH", script::PATH);
        let out = self
            .client
            .instances()
            .exec_recorded(self.instance, &request, self.timeout)
            .await
            .map_err(|e| self.incus(step, e))?;
        if out.exit_code != 0 {
            return Err(ReleaseError::Step {
                app: self.app.to_owned(),
                instance: self.instance.to_owned(),
                step: step.to_owned(),
                exit_code: out.exit_code,
                stderr: out.stderr_text().trim().to_owned(),
            });
        }
        Ok(Answer::parse(&out.stdout_text()))
    }

    async fn hook(
        &self,
        phase: &'static str,
        command: &str,
        timeout: Duration,
    ) -> Result<(), ReleaseError> {
        tracing::info!(
            instance = self.instance,
            app = self.app,
            phase,
            command,
            "running hook"
        );
        let request = ExecRequest::new([
            "/bin/sh",
            "-c",
            &script::hook_script(),
            "cul8er",
            self.app,
            command,
        ])
        .env("PATH", script::PATH);
        let out = self
            .client
            .instances()
            .exec_recorded(self.instance, &request, timeout)
            .await
            .map_err(|e| self.incus(&format!("the {phase} hook `{command}`"), e))?;
        if out.exit_code != 0 {
            return Err(ReleaseError::Hook {
                app: self.app.to_owned(),
                instance: self.instance.to_owned(),
                phase,
                command: command.to_owned(),
                exit_code: out.exit_code,
                stderr: out.stderr_text().trim().to_owned(),
            });
        }
        Ok(())
    }
}

fn parse_init(ctx: &Ctx<'_>, step: &str, answer: &Answer) -> Result<InitSystem, ReleaseError> {
    match answer.get("init").map(String::as_str) {
        Some("systemd") => Ok(InitSystem::Systemd),
        Some("openrc") => Ok(InitSystem::Openrc),
        Some("busybox") => Ok(InitSystem::Busybox),
        other => Err(ReleaseError::Unexpected {
            app: ctx.app.to_owned(),
            instance: ctx.instance.to_owned(),
            step: step.to_owned(),
            detail: format!(
                "no supported init system (found {}): cul8er runs releases under systemd, OpenRC or busybox init",
                other.unwrap_or("nothing")
            ),
        }),
    }
}

fn parse_id(ctx: &Ctx<'_>, answer: &Answer, key: &str) -> Result<u32, ReleaseError> {
    answer
        .get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ReleaseError::Unexpected {
            app: ctx.app.to_owned(),
            instance: ctx.instance.to_owned(),
            step: "preparing the instance".to_owned(),
            detail: format!("no numeric {key} for the service user"),
        })
}

fn parse_status(init: InitSystem, answer: &Answer) -> ServiceStatus {
    let running = answer.get("running").map(String::as_str) == Some("true");
    let pid = answer
        .get("pid")
        .and_then(|p| p.parse().ok())
        .filter(|_| running);
    let process_id = match (pid, answer.get("start_time")) {
        (Some(pid), Some(start)) => Some(format!("{pid}@{start}")),
        _ => None,
    };
    ServiceStatus {
        init,
        running,
        pid,
        process_id,
        restarts: answer.get("restarts").and_then(|r| r.parse().ok()),
        version: answer.get("version").cloned(),
        state: answer.get("state").cloned(),
    }
}

/// The digest recorded in the instance after a complete deploy: a change in any input
/// makes the next deploy act. The env values are hashed, never stored.
fn deploy_digest(
    release: &ReleaseSpec,
    env: &ResolvedEnv,
    artifact: &str,
    init: InitSystem,
    uid: u32,
    gid: u32,
) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"cul8er-release-v1\0");
    hasher.update(serde_json::to_vec(release).unwrap_or_default());
    for (name, value) in env.pairs() {
        hasher.update(format!("{name}\0{}\0", value.len()).as_bytes());
        hasher.update(value.as_bytes());
    }
    hasher.update(format!("\0{artifact}\0{init}\0{uid}:{gid}").as_bytes());
    hex::encode(hasher.finalize())
}

fn validate(release: &ReleaseSpec) -> Result<(), ReleaseError> {
    let invalid = |what: &'static str, value: &str, rule: &'static str| ReleaseError::Invalid {
        app: release.name.clone(),
        what,
        value: value.to_owned(),
        rule,
    };
    let path_safe = |s: &str| {
        !s.is_empty()
            && !s.starts_with(['.', '-'])
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
    };
    if !path_safe(&release.name) {
        return Err(invalid(
            "name",
            &release.name,
            "use letters, digits, `.`, `_`, `+` and `-`, at most 64, not starting with `.` or `-`",
        ));
    }
    if !path_safe(&release.version) {
        return Err(invalid(
            "version",
            &release.version,
            "use letters, digits, `.`, `_`, `+` and `-`, at most 64, not starting with `.` or `-`",
        ));
    }
    let user = service_user(release);
    let user_ok = !user.is_empty()
        && user.len() <= 32
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b));
    if !user_ok {
        return Err(invalid(
            "user",
            user,
            "a user name is lowercase letters, digits, `_` and `-`, starting with a letter or `_`, at most 32",
        ));
    }
    if user == "root" {
        return Err(invalid(
            "user",
            user,
            "releases run as a non-root user; name another user or leave `user` out to use the app's name",
        ));
    }
    if release.start.trim().is_empty() {
        return Err(invalid(
            "start",
            &release.start,
            "give the command that starts the app",
        ));
    }
    if let Some(workdir) = release.workdir.as_ref().filter(|w| !w.starts_with('/')) {
        return Err(invalid(
            "workdir",
            workdir,
            "give an absolute path inside the instance",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release() -> ReleaseSpec {
        Release {
            name: "web".into(),
            version: "1.0".into(),
            artifact: None,
            start: "httpd -f".into(),
            workdir: None,
            user: None,
            before_start: Vec::new(),
            after_start: Vec::new(),
        }
    }

    #[test]
    fn secrets_from_env_are_read_and_redacted_in_debug() {
        let vars = vec![
            EnvVar {
                name: "GREETING".into(),
                value: EnvValue::Value {
                    value: "hello".into(),
                },
            },
            EnvVar {
                name: "TOKEN".into(),
                value: EnvValue::SecretFromEnv {
                    var: "OP_TOKEN".into(),
                },
            },
        ];
        let env = ResolvedEnv::resolve(&vars, |name| {
            (name == "OP_TOKEN").then(|| "s3cret".to_owned())
        })
        .unwrap();
        let shown = format!("{env:?}");
        assert!(shown.contains("hello"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(env.names().collect::<Vec<_>>(), ["GREETING", "TOKEN"]);

        let err = ResolvedEnv::resolve(&vars, |_| None).unwrap_err();
        assert!(err.to_string().contains("$OP_TOKEN"), "{err}");
    }

    #[test]
    fn the_user_defaults_to_the_app_name_and_root_is_refused() {
        let mut r = release();
        assert_eq!(service_user(&r), "web");
        r.user = Some("root".into());
        let err = validate(&r).unwrap_err();
        assert!(err.to_string().contains("non-root"), "{err}");
        r.user = Some("Bad User".into());
        assert!(validate(&r).is_err());
    }

    #[test]
    fn versions_that_escape_the_releases_directory_are_refused() {
        for version in ["../etc", "a/b", "", ".hidden", "1 0"] {
            let mut r = release();
            r.version = version.into();
            assert!(validate(&r).is_err(), "{version:?} accepted");
        }
        let mut r = release();
        r.version = "1.2.3+build-4".into();
        validate(&r).unwrap();
    }

    #[test]
    fn the_digest_follows_every_input() {
        let r = release();
        let mut env = ResolvedEnv::new();
        env.insert("A", "1");
        let base = deploy_digest(&r, &env, "art", InitSystem::Busybox, 999, 999);
        assert_eq!(
            base,
            deploy_digest(&r, &env, "art", InitSystem::Busybox, 999, 999)
        );
        let mut env2 = env.clone();
        env2.insert("A", "2");
        assert_ne!(
            base,
            deploy_digest(&r, &env2, "art", InitSystem::Busybox, 999, 999)
        );
        assert_ne!(
            base,
            deploy_digest(&r, &env, "art2", InitSystem::Busybox, 999, 999)
        );
        let mut r2 = r.clone();
        r2.version = "2".into();
        assert_ne!(
            base,
            deploy_digest(&r2, &env, "art", InitSystem::Busybox, 999, 999)
        );
    }

    #[test]
    fn status_lines_parse_into_a_service_status() {
        let answer = Answer::parse(
            "init=busybox\nrestarts=2\npid=41\nstart_time=12345\nrunning=true\nversion=1.0\n",
        );
        let status = parse_status(InitSystem::Busybox, &answer);
        assert!(status.running);
        assert_eq!(status.pid, Some(41));
        assert_eq!(status.process_id.as_deref(), Some("41@12345"));
        assert_eq!(status.restarts, Some(2));
        assert_eq!(status.version.as_deref(), Some("1.0"));

        let stopped = parse_status(
            InitSystem::Systemd,
            &Answer::parse("running=false\nrestarts=\n"),
        );
        assert!(!stopped.running);
        assert_eq!(stopped.pid, None);
        assert_eq!(stopped.restarts, None);
    }
}
