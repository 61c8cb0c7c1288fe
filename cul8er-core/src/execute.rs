//! The executor: runs a [`Plan`] against Incus.
//!
//! Shaped like a reconciler: every step is idempotent (a create that finds its
//! object made, a delete that finds it gone, both count as done), steps run with a
//! bounded concurrency, in dependency order — networks and volumes first, then
//! instances, then the networks and volumes no longer used — and each object has
//! exactly one step, so two steps never touch one instance at once.
//!
//! Progress is a stream of typed [`ApplyEvent`]s handed to a callback. Cancellation
//! has two levels ([`Cancel`]): graceful lets the steps in flight finish and starts no
//! new one; abort also drops the steps in flight. Either way the [`ApplyOutcome`] says
//! which steps were done, so the caller records it and a re-run converges.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::desired::{DesiredInstance, DesiredNetwork, DesiredVolume, KEY_REVISION};
use crate::plan::{Action, Change, ObjectKind, Plan, Target};
use crate::release::{ReleaseError, ResolvedEnv};
use crate::topology::ImageRef;

/// How apply runs.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Steps in flight at most. 8 keeps a 2-core daemon busy without queueing: the
    /// daemon itself is the floor (DESIGN.md).
    pub parallelism: usize,
    /// The longest one Incus operation may take.
    pub operation_timeout: Duration,
    /// The revision written into `user.cul8er.revision` on what changes.
    pub revision: String,
    /// The directory relative release artifacts are found in (the topology file's);
    /// `None` means the current directory.
    pub artifact_base: Option<std::path::PathBuf>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            parallelism: 8,
            operation_timeout: Duration::from_secs(120),
            revision: String::new(),
            artifact_base: None,
        }
    }
}

/// The two levels of cancellation.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    /// Start no new step; steps in flight finish.
    pub graceful: CancellationToken,
    /// Drop the steps in flight too.
    pub abort: CancellationToken,
}

impl Cancel {
    /// Fresh tokens.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }
}

/// One step of an apply: one action on one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The host.
    pub host: String,
    /// What kind of object.
    pub kind: ObjectKind,
    /// Its name.
    pub name: String,
    /// What is done.
    pub action: Action,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {} on host {}",
            self.action.as_str(),
            self.kind.as_str(),
            self.name,
            self.host
        )
    }
}

/// Progress of an apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ApplyEvent {
    /// The apply starts with this many steps.
    Begin {
        /// Steps to run.
        steps: usize,
    },
    /// A step started.
    StepStarted {
        /// The step.
        step: Step,
    },
    /// A step moved on (e.g. `starting`, `deploying release`).
    StepProgress {
        /// The step.
        step: Step,
        /// What it does now.
        message: String,
    },
    /// A step finished.
    StepDone {
        /// The step.
        step: Step,
        /// How long it took, in milliseconds.
        millis: u64,
        /// Of that, milliseconds spent waiting on Incus: operations, and a release's
        /// execs and file transfers.
        waiting_millis: u64,
    },
    /// A step failed.
    StepFailed {
        /// The step.
        step: Step,
        /// What went wrong, with what Incus said.
        error: String,
    },
    /// A step was not started: cancelled, or an earlier phase failed.
    StepSkipped {
        /// The step.
        step: Step,
        /// Why.
        reason: String,
    },
    /// Cancellation was asked for.
    Cancelling {
        /// `graceful` or `abort`.
        level: String,
    },
    /// The apply ended.
    End {
        /// Steps done.
        done: usize,
        /// Steps failed.
        failed: usize,
        /// Steps not started or aborted.
        skipped: usize,
    },
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// Done.
    Done,
    /// Failed; the object is as the error says.
    Failed,
    /// Never started.
    Skipped,
    /// Started, then dropped by an abort: Incus may have finished it or not; the
    /// next plan reads which.
    Aborted,
}

/// One step's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// The step.
    pub step: Step,
    /// How it ended.
    pub status: StepStatus,
    /// The error, when it failed.
    pub error: Option<String>,
    /// Milliseconds it took.
    pub millis: u64,
    /// Milliseconds of that spent waiting on Incus: operations, and a release's execs
    /// and file transfers.
    pub waiting_millis: u64,
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// The revision.
    pub revision: String,
    /// Every step, in plan order.
    pub steps: Vec<StepOutcome>,
    /// Whether it was cancelled.
    pub cancelled: bool,
    /// Milliseconds from start to end.
    pub millis: u64,
}

impl ApplyOutcome {
    /// Whether every step was done.
    #[must_use]
    pub fn succeeded(&self) -> bool {
        self.steps.iter().all(|s| s.status == StepStatus::Done)
    }

    /// The failed steps.
    pub fn failures(&self) -> impl Iterator<Item = &StepOutcome> {
        self.steps.iter().filter(|s| s.status == StepStatus::Failed)
    }
}

/// A step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Incus refused or failed a request.
    #[error("cannot {what} {kind} {name} on host {host}")]
    Incus {
        /// What was being done.
        what: &'static str,
        /// The kind of object.
        kind: &'static str,
        /// The object.
        name: String,
        /// The host.
        host: String,
        /// What Incus said.
        #[source]
        source: Box<incus_api::Error>,
    },
    /// The release could not be deployed.
    #[error("cannot deploy the release into instance {name} on host {host}")]
    Release {
        /// The instance.
        name: String,
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: Box<ReleaseError>,
    },
    /// A release service found stopped could not be started.
    #[error("cannot start the release service in instance {name} on host {host}")]
    ServiceStart {
        /// The instance.
        name: String,
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: Box<ReleaseError>,
    },
    /// The edge's traffic configuration could not be applied.
    #[error("cannot configure edge {name} on host {host}")]
    Edge {
        /// The edge instance.
        name: String,
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: Box<crate::edge::EdgeError>,
    },
    /// The plan does not say what the object becomes, or names a host without a
    /// client.
    #[error("the plan cannot be applied: {0}")]
    Plan(String),
}

/// The release environments, by resource, resolved at apply time.
pub type Environments = BTreeMap<String, ResolvedEnv>;

/// What the executor needs besides the plan.
#[derive(Debug, Clone)]
pub struct Executor {
    /// Clients by host name.
    pub clients: BTreeMap<String, incus_api::Client>,
    /// Release environments by resource.
    pub environments: Environments,
    /// How to run.
    pub options: ApplyOptions,
}

/// Renders an error with its chain of causes, for events and outcomes.
#[must_use]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The last phase of [`phase`].
const LAST_PHASE: u8 = 4;

fn phase(change: &Change) -> u8 {
    match (change.kind, change.action) {
        (ObjectKind::Network | ObjectKind::Volume, Action::Delete) => LAST_PHASE,
        (ObjectKind::Network | ObjectKind::Volume, _) => 0,
        // After the edge: a backend leaves the edge before its instance goes.
        (ObjectKind::Instance, Action::Delete) => 3,
        (ObjectKind::Instance | ObjectKind::Set, _) => 1,
        // After the instances: the backends must run to have addresses.
        (ObjectKind::Edge, _) => 2,
    }
}

fn step_of(change: &Change) -> Step {
    Step {
        host: change.host.clone(),
        kind: change.kind,
        name: change.name.clone(),
        action: change.action,
    }
}

/// Time spent waiting on Incus (operations, release execs and transfers), summed by a step.
#[derive(Debug, Default)]
struct Waited(Duration);

impl Executor {
    /// Runs every actionable change of `plan`, reporting each event to `on_event`.
    ///
    /// Never fails as a whole: each step's error is in the outcome and was reported
    /// as [`ApplyEvent::StepFailed`]. A failed step in one phase skips the later
    /// phases, since they depend on it.
    pub async fn apply(
        &self,
        plan: &Plan,
        cancel: &Cancel,
        on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
    ) -> ApplyOutcome {
        let started = Instant::now();
        let mut changes: Vec<&Change> = plan.actionable().collect();
        changes.sort_by_key(|c| phase(c));
        on_event(&ApplyEvent::Begin {
            steps: changes.len(),
        });
        let mut outcomes: HashMap<usize, StepOutcome> = HashMap::new();
        let mut cancelled = false;
        let mut phase_failed = false;
        let mut announced = false;
        let mut started_steps = std::collections::HashSet::new();
        for current in 0..=LAST_PHASE {
            let indices: Vec<usize> = (0..changes.len())
                .filter(|&i| phase(changes[i]) == current)
                .collect();
            let mut queue = indices.into_iter();
            let mut running = FuturesUnordered::new();
            loop {
                if cancel.graceful.is_cancelled() && !announced {
                    announced = true;
                    cancelled = true;
                    on_event(&ApplyEvent::Cancelling {
                        level: "graceful".into(),
                    });
                }
                let stop_starting = cancel.graceful.is_cancelled() || phase_failed;
                while !stop_starting && running.len() < self.options.parallelism.max(1) {
                    let Some(index) = queue.next() else { break };
                    let change = changes[index];
                    started_steps.insert(index);
                    on_event(&ApplyEvent::StepStarted {
                        step: step_of(change),
                    });
                    running.push(async move {
                        let begin = Instant::now();
                        let mut waited = Waited::default();
                        let result = self.run_step(change, &mut waited, on_event).await;
                        (index, result, begin.elapsed(), waited.0)
                    });
                }
                if running.is_empty() {
                    break;
                }
                tokio::select! {
                    biased;
                    () = cancel.abort.cancelled() => {
                        on_event(&ApplyEvent::Cancelling { level: "abort".into() });
                        cancelled = true;
                        drop(running);
                        // Whatever was in flight is unknown now; the next plan reads it.
                        for (i, change) in changes.iter().enumerate() {
                            if !outcomes.contains_key(&i) && started_steps.contains(&i) {
                                outcomes.insert(i, StepOutcome {
                                    step: step_of(change),
                                    status: StepStatus::Aborted,
                                    error: None,
                                    millis: 0,
                                    waiting_millis: 0,
                                });
                            }
                        }
                        phase_failed = true;
                        break;
                    }
                    () = cancel.graceful.cancelled(), if !announced => {}
                    Some((index, result, took, waited)) = running.next() => {
                        let step = step_of(changes[index]);
                        let millis = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                        let waiting_millis = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
                        match result {
                            Ok(()) => {
                                on_event(&ApplyEvent::StepDone { step: step.clone(), millis, waiting_millis });
                                outcomes.insert(index, StepOutcome { step, status: StepStatus::Done, error: None, millis, waiting_millis });
                            }
                            Err(e) => {
                                let error = error_chain(&e);
                                tracing::warn!(%step, %error, "step failed");
                                on_event(&ApplyEvent::StepFailed { step: step.clone(), error: error.clone() });
                                outcomes.insert(index, StepOutcome { step, status: StepStatus::Failed, error: Some(error), millis, waiting_millis });
                                phase_failed = true;
                            }
                        }
                    }
                }
            }
            // A failed phase leaves `phase_failed` set: later phases depend on it and
            // start nothing.
        }
        let mut steps = Vec::with_capacity(changes.len());
        for (index, change) in changes.iter().enumerate() {
            let outcome = outcomes.remove(&index).unwrap_or_else(|| {
                let reason = if cancelled {
                    "cancelled before it started"
                } else {
                    "an earlier step failed"
                };
                on_event(&ApplyEvent::StepSkipped {
                    step: step_of(change),
                    reason: reason.to_owned(),
                });
                StepOutcome {
                    step: step_of(change),
                    status: StepStatus::Skipped,
                    error: Some(reason.to_owned()),
                    millis: 0,
                    waiting_millis: 0,
                }
            });
            steps.push(outcome);
        }
        let count = |status| steps.iter().filter(|s| s.status == status).count();
        on_event(&ApplyEvent::End {
            done: count(StepStatus::Done),
            failed: count(StepStatus::Failed),
            skipped: count(StepStatus::Skipped) + count(StepStatus::Aborted),
        });
        ApplyOutcome {
            revision: self.options.revision.clone(),
            steps,
            cancelled,
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    fn client(&self, host: &str) -> Result<&incus_api::Client, StepError> {
        self.clients
            .get(host)
            .ok_or_else(|| StepError::Plan(format!("no connection to host {host}")))
    }

    async fn run_step(
        &self,
        change: &Change,
        waited: &mut Waited,
        on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
    ) -> Result<(), StepError> {
        let client = self.client(&change.host)?;
        match (change.kind, &change.target) {
            (ObjectKind::Network, Some(Target::Network(network)))
                if change.action != Action::Delete =>
            {
                self.put_network(client, network, change.action).await
            }
            (ObjectKind::Network, _) if change.action == Action::Delete => {
                match client.networks().delete(&change.name).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(source) => Err(incus("delete", "network", change, source)),
                }
            }
            (ObjectKind::Volume, Some(Target::Volume(volume)))
                if change.action == Action::Delete =>
            {
                match client
                    .storage_volumes(&volume.pool)
                    .delete(&volume.name)
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(source) => Err(incus("delete", "volume", change, source)),
                }
            }
            (ObjectKind::Volume, Some(Target::Volume(volume))) => {
                self.put_volume(client, volume, change).await
            }
            (ObjectKind::Instance, _) => self.instance_step(client, change, waited, on_event).await,
            (ObjectKind::Edge, Some(Target::Edge(edge))) => {
                crate::edge::converge(client, edge, self.options.operation_timeout)
                    .await
                    .map(drop)
                    .map_err(|source| StepError::Edge {
                        name: change.name.clone(),
                        host: change.host.clone(),
                        source: Box::new(source),
                    })
            }
            (ObjectKind::Set, _) => Err(StepError::Plan(format!(
                "set {} switches traffic: only a rollout (`cul8er apply`) runs it",
                change.name
            ))),
            _ => Err(StepError::Plan(format!(
                "{} {} {} has no target spec",
                change.action.as_str(),
                change.kind.as_str(),
                change.name
            ))),
        }
    }

    async fn put_network(
        &self,
        client: &incus_api::Client,
        network: &DesiredNetwork,
        action: Action,
    ) -> Result<(), StepError> {
        let fail = |what, source: incus_api::Error| StepError::Incus {
            what,
            kind: "network",
            name: network.name.clone(),
            host: network.host.clone(),
            source: Box::new(source),
        };
        let config: HashMap<String, String> = network.config.clone().into_iter().collect();
        if action == Action::Create {
            let spec = incus_api::networks::NetworkSpec {
                name: network.name.clone(),
                network_type: "bridge".to_owned(),
                description: String::new(),
                config: config.clone(),
            };
            match client.networks().create(&spec).await {
                Ok(()) => return Ok(()),
                // Made by an earlier, interrupted apply: update it below.
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(fail("create", e)),
            }
        }
        let (current, etag) = client
            .networks()
            .get_with_etag(&network.name)
            .await
            .map_err(|e| fail("read", e))?;
        let mut put = incus_api::networks::NetworkPut {
            description: current.description,
            config: current.config,
        };
        put.config.extend(config);
        client
            .networks()
            .update(&network.name, &put, etag.as_deref())
            .await
            .map_err(|e| fail("update", e))
    }

    async fn put_volume(
        &self,
        client: &incus_api::Client,
        volume: &DesiredVolume,
        change: &Change,
    ) -> Result<(), StepError> {
        let volumes = client.storage_volumes(&volume.pool);
        let config: HashMap<String, String> = volume.config.clone().into_iter().collect();
        if change.action == Action::Create {
            let mut spec = incus_api::storage_volumes::StorageVolumeSpec::filesystem(&volume.name);
            spec.config = config.clone();
            match volumes.create(&spec, self.options.operation_timeout).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_conflict() => {}
                Err(e) => return Err(incus("create", "volume", change, e)),
            }
        }
        let (current, etag) = volumes
            .get_with_etag(&volume.name)
            .await
            .map_err(|e| incus("read", "volume", change, e))?;
        let mut put = incus_api::storage_volumes::StorageVolumePut {
            description: current.description,
            config: current.config,
        };
        put.config.extend(config);
        volumes
            .update(&volume.name, &put, etag.as_deref())
            .await
            .map_err(|e| incus("update", "volume", change, e))
    }

    /// Sends an instance operation and waits for it; a failure of either is `what` on
    /// the instance of `change`.
    async fn run_op(
        &self,
        what: &'static str,
        change: &Change,
        request: impl Future<Output = Result<incus_api::PendingOperation, incus_api::Error>>,
        waited: &mut Waited,
    ) -> Result<(), StepError> {
        let op = request
            .await
            .map_err(|e| incus(what, "instance", change, e))?;
        self.wait(op, waited)
            .await
            .map_err(|e| incus(what, "instance", change, e))
    }

    async fn wait(
        &self,
        op: incus_api::PendingOperation,
        waited: &mut Waited,
    ) -> Result<(), incus_api::Error> {
        let begin = Instant::now();
        let result = op.wait(self.options.operation_timeout).await;
        waited.0 += begin.elapsed();
        result?.into_success()?;
        Ok(())
    }

    async fn instance_step(
        &self,
        client: &incus_api::Client,
        change: &Change,
        waited: &mut Waited,
        on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
    ) -> Result<(), StepError> {
        let progress = |message: &str| {
            on_event(&ApplyEvent::StepProgress {
                step: step_of(change),
                message: message.to_owned(),
            });
        };
        let desired = match &change.target {
            Some(Target::Instance(desired)) => Some(desired.as_ref()),
            _ => None,
        };
        match (change.action, desired) {
            (Action::Delete, _) => self.delete_instance(client, change, waited).await,
            (Action::Replace, Some(desired)) => {
                progress("deleting the old instance");
                self.delete_instance(client, change, waited).await?;
                progress("creating");
                self.create_instance(client, change, desired, waited)
                    .await?;
                self.deploy_release(client, change, desired, waited, &progress)
                    .await
            }
            (Action::Create, Some(desired)) => {
                self.create_instance(client, change, desired, waited)
                    .await?;
                self.deploy_release(client, change, desired, waited, &progress)
                    .await
            }
            (Action::Update, Some(desired)) => {
                self.update_instance(client, change, desired, waited, &progress)
                    .await?;
                let release_changed = change
                    .fields
                    .iter()
                    .any(|f| f.field.starts_with("config.user.cul8er."));
                if release_changed || change.start {
                    self.deploy_release(client, change, desired, waited, &progress)
                        .await?;
                } else if change.service_to_start().is_some()
                    && let Err(error) = self
                        .start_service(client, change, desired, waited, &progress)
                        .await
                {
                    // Its definition or its files went with it: deploying the release
                    // again (idempotent, the same version) puts them back and starts it.
                    let error = error_chain(&error);
                    tracing::warn!(instance = %change.name, %error, "the service did not start; deploying the release again");
                    progress(&format!(
                        "the service did not start ({error}): deploying the release again"
                    ));
                    self.deploy_release(client, change, desired, waited, &progress)
                        .await?;
                }
                Ok(())
            }
            _ => Err(StepError::Plan(format!(
                "{} instance {} has no target spec",
                change.action.as_str(),
                change.name
            ))),
        }
    }

    async fn create_instance(
        &self,
        client: &incus_api::Client,
        change: &Change,
        desired: &DesiredInstance,
        waited: &mut Waited,
    ) -> Result<(), StepError> {
        let source = match &desired.image {
            ImageRef::Alias { alias, .. } => {
                incus_api::instances::InstanceSource::image_alias(alias)
            }
            ImageRef::Fingerprint { fingerprint } => {
                incus_api::instances::InstanceSource::image_fingerprint(fingerprint)
            }
        };
        let mut spec = incus_api::instances::InstanceSpec::container(&desired.name, source)
            .profiles(desired.profiles.clone())
            .start(true);
        spec.instance_type = desired.kind.as_incus().to_owned();
        for (key, value) in &desired.config {
            spec = spec.config(key, value);
        }
        spec = spec.config(KEY_REVISION, &self.options.revision);
        for (name, device) in &desired.devices {
            spec = spec.device(name, device.clone().into_iter().collect());
        }
        let scoped = match &desired.target {
            Some(target) => client.target(target),
            None => client.clone(),
        };
        match scoped.instances().create(&spec).await {
            Ok(op) => self
                .wait(op, waited)
                .await
                .map_err(|e| incus("create", "instance", change, e)),
            Err(e) if e.is_conflict() => {
                // Made by an interrupted apply, or someone else's: only ours is
                // finished off, by the update path.
                let (existing, _) = client
                    .instances()
                    .get_with_etag(&desired.name)
                    .await
                    .map_err(|e| incus("read", "instance", change, e))?;
                if existing.config.get(crate::desired::KEY_TOPOLOGY)
                    != desired.config.get(crate::desired::KEY_TOPOLOGY)
                {
                    return Err(incus("create", "instance", change, e));
                }
                self.converge_existing(client, change, desired, waited)
                    .await
            }
            Err(e) => Err(incus("create", "instance", change, e)),
        }
    }

    async fn converge_existing(
        &self,
        client: &incus_api::Client,
        change: &Change,
        desired: &DesiredInstance,
        waited: &mut Waited,
    ) -> Result<(), StepError> {
        self.put_instance(client, change, desired, waited).await?;
        let state = client
            .instances()
            .get(&desired.name)
            .await
            .map_err(|e| incus("read", "instance", change, e))?;
        if !state.is_running() {
            self.run_op(
                "start",
                change,
                client.instances().start(&desired.name),
                waited,
            )
            .await?;
        }
        Ok(())
    }

    /// Replaces config, devices and profiles with the desired ones, keeping the keys
    /// Incus owns (`volatile.*`, `image.*`), with an ETag.
    async fn put_instance(
        &self,
        client: &incus_api::Client,
        change: &Change,
        desired: &DesiredInstance,
        waited: &mut Waited,
    ) -> Result<(), StepError> {
        let (current, etag) = client
            .instances()
            .get_with_etag(&desired.name)
            .await
            .map_err(|e| incus("read", "instance", change, e))?;
        let mut put = current.to_put();
        put.config
            .retain(|k, _| k.starts_with("volatile.") || k.starts_with("image."));
        put.config.extend(desired.config.clone());
        put.config
            .insert(KEY_REVISION.to_owned(), self.options.revision.clone());
        put.devices = desired
            .devices
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_iter().collect()))
            .collect();
        put.profiles.clone_from(&desired.profiles);
        self.run_op(
            "update",
            change,
            client
                .instances()
                .update(&desired.name, &put, etag.as_deref()),
            waited,
        )
        .await
    }

    async fn update_instance(
        &self,
        client: &incus_api::Client,
        change: &Change,
        desired: &DesiredInstance,
        waited: &mut Waited,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), StepError> {
        self.put_instance(client, change, desired, waited).await?;
        if change.start {
            progress("starting");
            self.run_op(
                "start",
                change,
                client.instances().start(&desired.name),
                waited,
            )
            .await?;
        } else if change.restart {
            progress("restarting");
            self.run_op(
                "restart",
                change,
                client.instances().restart(&desired.name, false),
                waited,
            )
            .await?;
        }
        Ok(())
    }

    async fn delete_instance(
        &self,
        client: &incus_api::Client,
        change: &Change,
        waited: &mut Waited,
    ) -> Result<(), StepError> {
        let instances = client.instances();
        let current = match instances.get(&change.name).await {
            Ok(current) => current,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(incus("read", "instance", change, e)),
        };
        if current.is_running() || current.status.eq_ignore_ascii_case("frozen") {
            self.run_op(
                "stop",
                change,
                instances.stop(&change.name, true, None),
                waited,
            )
            .await?;
        }
        match instances.delete(&change.name).await {
            Ok(op) => self
                .wait(op, waited)
                .await
                .map_err(|e| incus("delete", "instance", change, e)),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(incus("delete", "instance", change, e)),
        }
    }

    async fn deploy_release(
        &self,
        client: &incus_api::Client,
        change: &Change,
        desired: &DesiredInstance,
        waited: &mut Waited,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), StepError> {
        let Some(release) = &desired.release else {
            return Ok(());
        };
        progress("deploying release");
        let env = self
            .environments
            .get(&desired.resource)
            .cloned()
            .unwrap_or_default();
        let options = crate::release::DeployOptions {
            artifact_base: self.options.artifact_base.clone(),
            ..crate::release::DeployOptions::default()
        };
        // A release deploy is Incus requests end to end (execs, file transfers; the
        // service's start is waited for inside an exec): it all counts as waiting.
        let begin = Instant::now();
        let deployed =
            crate::release::deploy_with(client, &desired.name, release, &env, &options).await;
        waited.0 += begin.elapsed();
        deployed.map(drop).map_err(|source| StepError::Release {
            name: change.name.clone(),
            host: change.host.clone(),
            source: Box::new(source),
        })
    }
    /// Starts the release service of `desired` that the plan found stopped inside the
    /// running instance, through the instance's init. When that fails, the caller
    /// deploys the release again.
    async fn start_service(
        &self,
        client: &incus_api::Client,
        change: &Change,
        desired: &DesiredInstance,
        waited: &mut Waited,
        progress: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), StepError> {
        let Some(release) = &desired.release else {
            return Err(StepError::Plan(format!(
                "instance {} has no release whose service could be started",
                change.name
            )));
        };
        progress(&format!("starting service {}", release.name));
        let begin = Instant::now();
        let started = crate::release::start(
            client,
            &desired.name,
            release,
            &crate::release::DeployOptions::default(),
        )
        .await;
        waited.0 += begin.elapsed();
        started.map(drop).map_err(|source| StepError::ServiceStart {
            name: change.name.clone(),
            host: change.host.clone(),
            source: Box::new(source),
        })
    }
}

fn incus(
    what: &'static str,
    kind: &'static str,
    change: &Change,
    source: incus_api::Error,
) -> StepError {
    StepError::Incus {
        what,
        kind,
        name: change.name.clone(),
        host: change.host.clone(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod phase_tests {
    use super::*;

    fn change(kind: ObjectKind, action: Action) -> Change {
        Change {
            host: "local".into(),
            kind,
            name: "x".into(),
            resource: None,
            action,
            drift: false,
            restart: false,
            start: false,
            reason: None,
            fields: Vec::new(),
            target: None,
        }
    }

    #[test]
    fn backends_leave_the_edge_before_their_instances_are_deleted() {
        let create = phase(&change(ObjectKind::Instance, Action::Create));
        let edge = phase(&change(ObjectKind::Edge, Action::Update));
        let delete = phase(&change(ObjectKind::Instance, Action::Delete));
        let network = phase(&change(ObjectKind::Network, Action::Delete));
        assert!(phase(&change(ObjectKind::Network, Action::Create)) < create);
        assert!(create < edge, "backends run before the edge routes to them");
        assert!(
            edge < delete,
            "the edge drops a backend before it is deleted"
        );
        assert!(delete < network, "instances go before their network");
        assert_eq!(network, LAST_PHASE);
    }
}
