//! The rollout driver: the executor for everything else, the strategy for each
//! resource's updated and replaced instances.

use std::time::Duration;

use futures_util::future::join_all;
use incus_api::Client;
use tokio::sync::OnceCell;

use super::schedule::{BatchesEnd, batches, run_batches};
use super::snapshot;
use super::{ResourceRollout, RolloutRecord, RolloutResult};
use crate::execute::{
    ApplyEvent, ApplyOutcome, Cancel, Executor, Step, StepOutcome, StepStatus, error_chain,
};
use crate::health::{Check, CrashWatch, ExecSource, GateSpec, HealthEvent, HealthGate};
use crate::plan::{Action, Change, ObjectKind, Plan, Target};
use crate::topology::{Resource, RollbackMode, StrategyKind, Topology};

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutReport {
    /// Every step, the executor's and the rollout's (a failed gate is a failed step).
    pub outcome: ApplyOutcome,
    /// The rollouts, when the plan updated or replaced instances.
    pub record: Option<RolloutRecord>,
}

// The suffix of an instance kept, stopped, while its replacement proves itself: the
// one that name validation leaves room for.
use crate::topology::names::KEPT_SUFFIX;

/// How a changed instance is put back.
#[derive(Debug, Clone)]
enum Undo {
    /// Restore this pre-deploy snapshot.
    Restore { name: String, snapshot: String },
    /// Delete the replacement, rename the kept instance back, start it.
    BringBack { name: String, kept: String },
    /// Nothing to put back with (rollback `snapshot=#false`).
    Nothing { name: String },
}

pub(super) fn step(change: &Change) -> Step {
    Step {
        host: change.host.clone(),
        kind: change.kind,
        name: change.name.clone(),
        action: change.action,
    }
}

fn is_rolled(change: &Change, topology: &Topology) -> bool {
    change.kind == ObjectKind::Instance
        && matches!(change.action, Action::Update | Action::Replace)
        && matches!(change.target, Some(Target::Instance(_)))
        && resource_of(change, topology).is_some()
}

fn is_set(change: &Change, topology: &Topology) -> bool {
    change.kind == ObjectKind::Set
        && matches!(change.target, Some(Target::Set(_)))
        && resource_of(change, topology).is_some()
}

fn resource_of<'t>(change: &Change, topology: &'t Topology) -> Option<&'t Resource> {
    let name = change.resource.as_deref()?;
    topology.resources.iter().find(|r| r.name == name)
}

fn only(plan: &Plan, keep: impl Fn(&Change) -> bool) -> Plan {
    let mut sub = plan.clone();
    sub.changes.retain(|c| keep(c));
    sub
}

fn merge(into: &mut ApplyOutcome, from: ApplyOutcome) {
    into.steps.extend(from.steps);
    into.cancelled |= from.cancelled;
    into.millis += from.millis;
}

/// Applies `plan`, rolling each resource's updated and replaced instances out with
/// its strategy; everything else goes through `executor` as it is. Networks and
/// volumes are made first and deleted last.
///
/// HTTP and TCP health checks run the static `cul8er-proxy` binary inside the
/// instances as their probe: `probe`, else as [`crate::edge::locate_binary`] finds it.
///
/// Never fails as a whole: failed steps, failed gates and rollbacks are in the
/// report. Cancelling (`cancel.graceful`, Ctrl-C) starts no new batch and puts back
/// what the rollout changed, so a resource is never left half-switched.
pub async fn apply(
    executor: &Executor,
    topology: &Topology,
    plan: &Plan,
    probe: Option<&crate::edge::EdgeBinary>,
    cancel: &Cancel,
    on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
) -> RolloutReport {
    apply_with(executor, topology, plan, probe, None, cancel, on_event).await
}

/// [`apply`], with the store where a blue-green or canary rollout that pauses
/// (manual promotion, `cul8er pause`) is recorded; without one such a rollout is
/// undone where it would pause.
pub async fn apply_with(
    executor: &Executor,
    topology: &Topology,
    plan: &Plan,
    probe: Option<&crate::edge::EdgeBinary>,
    pending: Option<&super::pending::PendingStore>,
    cancel: &Cancel,
    on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
) -> RolloutReport {
    let rolled: Vec<&Change> = plan
        .actionable()
        .filter(|c| is_rolled(c, topology) || is_set(c, topology))
        .collect();
    if rolled.is_empty() {
        return RolloutReport {
            outcome: executor.apply(plan, cancel, on_event).await,
            record: None,
        };
    }
    let last = |c: &Change| {
        matches!(c.kind, ObjectKind::Network | ObjectKind::Volume) && c.action == Action::Delete
    };
    let first = only(plan, |c| {
        !is_rolled(c, topology) && !is_set(c, topology) && !last(c)
    });
    let mut outcome = executor.apply(&first, cancel, on_event).await;
    let revision = executor.options.revision.clone();
    let mut record = RolloutRecord {
        revision: revision.clone(),
        resources: Vec::new(),
        result: RolloutResult::Succeeded,
    };
    let mut stop = outcome
        .failures()
        .next()
        .map(|f| format!("{} failed before the rollout began", f.step));
    let roller = Roller {
        executor,
        plan,
        topology,
        cancel,
        on_event,
        binary: OnceCell::new_with(probe.cloned().map(Some)),
        pending: pending.cloned(),
    };
    for resource in &topology.resources {
        let changes: Vec<Change> = rolled
            .iter()
            .filter(|c| c.resource.as_deref() == Some(resource.name.as_str()))
            .map(|c| (*c).clone())
            .collect();
        if changes.is_empty() {
            continue;
        }
        if let Some(reason) = &stop {
            skip(&mut outcome, &changes, reason, on_event);
            continue;
        }
        let (done, result) = match changes.iter().find(|c| c.kind == ObjectKind::Set) {
            Some(set) => roller.roll_set(resource, set).await,
            None => roller.roll(resource, &changes).await,
        };
        merge(&mut outcome, done);
        if !result.result.succeeded() {
            stop = Some(format!("the rollout of {} failed", resource.name));
            if record.result.succeeded() {
                record.result = result.result.clone();
            }
        }
        record.resources.push(result);
    }
    let final_plan = only(plan, last);
    if final_plan.changes.iter().any(Change::is_change) {
        match &stop {
            Some(reason) => {
                let changes: Vec<Change> = final_plan.actionable().cloned().collect();
                skip(&mut outcome, &changes, reason, on_event);
            }
            None => merge(
                &mut outcome,
                executor.apply(&final_plan, cancel, on_event).await,
            ),
        }
    }
    RolloutReport {
        outcome,
        record: Some(record),
    }
}

/// The edge services that route to `resource`, named as the edge's desire names them.
fn edge_services(resource: &Resource) -> Vec<String> {
    let routed: Vec<u16> = resource
        .networks
        .iter()
        .flat_map(|n| &n.expose)
        .filter(|e| crate::edge::through_edge(e, resource.replicas))
        .map(|e| e.port)
        .collect();
    match routed.as_slice() {
        [] => Vec::new(),
        [_] => vec![resource.name.clone()],
        ports => ports
            .iter()
            .map(|p| format!("{}-{p}", resource.name))
            .collect(),
    }
}

fn skip(
    outcome: &mut ApplyOutcome,
    changes: &[Change],
    reason: &str,
    on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
) {
    for change in changes {
        on_event(&ApplyEvent::StepSkipped {
            step: step(change),
            reason: reason.to_owned(),
        });
        outcome.steps.push(StepOutcome {
            step: step(change),
            status: StepStatus::Skipped,
            error: Some(reason.to_owned()),
            millis: 0,
            waiting_millis: 0,
        });
    }
}

pub(super) struct Roller<'a> {
    pub(super) executor: &'a Executor,
    pub(super) plan: &'a Plan,
    pub(super) topology: &'a Topology,
    pub(super) cancel: &'a Cancel,
    pub(super) on_event: &'a (dyn Fn(&ApplyEvent) + Send + Sync),
    pub(super) binary: OnceCell<Option<crate::edge::EdgeBinary>>,
    /// Where a paused blue-green or canary rollout is recorded.
    pub(super) pending: Option<super::pending::PendingStore>,
}

impl Roller<'_> {
    pub(super) fn timeout(&self) -> Duration {
        self.executor.options.operation_timeout
    }

    fn progress(&self, change: &Change, message: impl Into<String>) {
        (self.on_event)(&ApplyEvent::StepProgress {
            step: step(change),
            message: message.into(),
        });
    }

    fn client(&self, change: &Change) -> Result<&Client, String> {
        self.executor
            .clients
            .get(&change.host)
            .ok_or_else(|| format!("no connection to host {}", change.host))
    }

    /// Rolls one resource's changes out with its strategy.
    async fn roll(
        &self,
        resource: &Resource,
        changes: &[Change],
    ) -> (ApplyOutcome, ResourceRollout) {
        let strategy = &resource.strategy;
        let revision = self.executor.options.revision.clone();
        let mut outcome = ApplyOutcome {
            revision: revision.clone(),
            steps: Vec::new(),
            cancelled: false,
            millis: 0,
        };
        let mut rollout = ResourceRollout {
            resource: resource.name.clone(),
            strategy: strategy.kind.as_str().to_owned(),
            version: resource.release.as_ref().map(|r| r.version.clone()),
            instances: Vec::new(),
            snapshots: Vec::new(),
            result: RolloutResult::Succeeded,
        };
        // Recreate changes every instance at once; the others a batch at a time. Blue-
        // green and canary need the edge's traffic switch; without it they roll.
        let size = match strategy.kind {
            StrategyKind::Recreate => u32::try_from(changes.len()).unwrap_or(u32::MAX),
            _ => strategy.max_parallel,
        };
        let planned = batches(changes, size);
        let watch: OnceCell<Result<CrashWatch, String>> = OnceCell::new();
        let undos = std::sync::Mutex::new(Vec::<(Change, Undo)>::new());
        let steps = std::sync::Mutex::new(Vec::<StepOutcome>::new());
        let ended = run_batches(planned.len(), None, &self.cancel.graceful, |index| {
            let batch = &planned[index];
            let watch = &watch;
            let undos = &undos;
            let steps = &steps;
            async move {
                let mut ready = Vec::new();
                for change in batch {
                    self.weigh(resource, change, 0).await?;
                    let prepared = self.prepare(resource, change).await;
                    match prepared {
                        Ok((undo, runnable)) => {
                            undos
                                .lock()
                                .map_err(|_| "poisoned")?
                                .push((change.clone(), undo));
                            ready.push(runnable);
                        }
                        Err(reason) => return Err(reason),
                    }
                }
                let mut sub = self.plan.clone();
                sub.changes = ready;
                let done = self.executor.apply(&sub, self.cancel, self.on_event).await;
                let failure = done
                    .failures()
                    .next()
                    .map(|f| format!("{}: {}", f.step, f.error.clone().unwrap_or_default()));
                steps.lock().map_err(|_| "poisoned")?.extend(done.steps);
                if let Some(failure) = failure {
                    return Err(failure);
                }
                let gates =
                    join_all(batch.iter().map(|c| self.gate(resource, c, Some(watch)))).await;
                for (change, gate) in batch.iter().zip(gates) {
                    if let Err(reason) = gate {
                        steps.lock().map_err(|_| "poisoned")?.push(StepOutcome {
                            step: step(change),
                            status: StepStatus::Failed,
                            error: Some(reason.clone()),
                            millis: 0,
                            waiting_millis: 0,
                        });
                        return Err(reason);
                    }
                }
                // Passed: the batch gets its traffic back.
                for change in batch {
                    self.weigh(resource, change, 1).await?;
                }
                Ok(())
            }
        })
        .await;
        outcome.steps.extend(steps.into_inner().unwrap_or_default());
        let undos = undos.into_inner().unwrap_or_default();
        rollout.instances = undos.iter().map(|(c, _)| c.name.clone()).collect();
        rollout.snapshots = undos
            .iter()
            .filter_map(|(_, u)| match u {
                Undo::Restore { name, snapshot } => Some(format!("{name}/{snapshot}")),
                _ => None,
            })
            .collect();
        let reason = match ended {
            BatchesEnd::Passed => None,
            BatchesEnd::Failed { reason, .. } => Some(reason),
            BatchesEnd::Cancelled { .. } => {
                outcome.cancelled = true;
                Some("cancelled by the operator".to_owned())
            }
            BatchesEnd::DeadlineExceeded { .. } => Some("the rollout's deadline passed".to_owned()),
        };
        // Instances never started (later batches) are listed as skipped.
        let touched: Vec<String> = outcome.steps.iter().map(|s| s.step.name.clone()).collect();
        for change in changes {
            if !touched.contains(&change.name) {
                let why = reason.clone().unwrap_or_default();
                skip(
                    &mut outcome,
                    std::slice::from_ref(change),
                    &why,
                    self.on_event,
                );
            }
        }
        if let Ok(Ok(watch)) = watch.get().ok_or(()) {
            for (change, _) in &undos {
                watch.unwatch(&change.name);
            }
        }
        rollout.result = match reason {
            None => {
                self.finish(resource, &undos).await;
                RolloutResult::Succeeded
            }
            Some(reason) if strategy.rollback.mode == RollbackMode::Manual => {
                RolloutResult::Failed {
                    next: format!(
                        "rollback is manual: instances {} run the new revision {revision} (kept \
                         instances end in `{KEPT_SUFFIX}`); `cul8er rollback` puts the previous \
                         revision back, or fix the release and `cul8er apply` again",
                        rollout.instances.join(", ")
                    ),
                    reason,
                }
            }
            Some(reason) => {
                let result = self.undo_all(&undos, reason).await;
                // The old version is back: once it passes its check again, it gets its
                // traffic back too.
                for (change, _) in &undos {
                    if !edge_services(resource).is_empty()
                        && let Err(problem) = self.gate(resource, change, None).await
                    {
                        self.progress(
                            change,
                            format!("the old version is not healthy either: {problem}"),
                        );
                    }
                    if let Err(problem) = self.weigh(resource, change, 1).await {
                        self.progress(change, format!("cannot give its traffic back: {problem}"));
                    }
                }
                result
            }
        };
        (outcome, rollout)
    }

    /// Readies one change: a snapshot before an in-place change, the old instance
    /// stopped and renamed before a replacement. Returns the undo and the change the
    /// executor runs (a replacement becomes a create).
    async fn prepare(
        &self,
        resource: &Resource,
        change: &Change,
    ) -> Result<(Undo, Change), String> {
        let client = self.client(change)?;
        let timeout = self.timeout();
        match change.action {
            Action::Replace => {
                let kept = format!("{}{KEPT_SUFFIX}", change.name);
                self.progress(
                    change,
                    format!("stopping and keeping the old instance as {kept}"),
                );
                let instances = client.instances();
                let current = instances
                    .get(&change.name)
                    .await
                    .map_err(|e| error_chain(&e))?;
                if current.is_running() || current.status.eq_ignore_ascii_case("frozen") {
                    wait(instances.stop(&change.name, true, None).await, timeout)
                        .await
                        .map_err(|e| format!("cannot stop {}: {e}", change.name))?;
                }
                wait(instances.rename(&change.name, &kept).await, timeout)
                    .await
                    .map_err(|e| {
                        format!(
                            "cannot keep {} as {kept}: {e} (an instance {kept} left by an \
                             interrupted rollout must be deleted or renamed back first)",
                            change.name
                        )
                    })?;
                let mut create = change.clone();
                create.action = Action::Create;
                Ok((
                    Undo::BringBack {
                        name: change.name.clone(),
                        kept,
                    },
                    create,
                ))
            }
            _ if resource.strategy.rollback.snapshot => {
                let name = snapshot::name(&self.executor.options.revision);
                self.progress(change, format!("taking snapshot {name}"));
                snapshot::take(client, &change.name, &name, timeout)
                    .await
                    .map_err(|e| error_chain(&e))?;
                Ok((
                    Undo::Restore {
                        name: change.name.clone(),
                        snapshot: name,
                    },
                    change.clone(),
                ))
            }
            _ => Ok((
                Undo::Nothing {
                    name: change.name.clone(),
                },
                change.clone(),
            )),
        }
    }

    /// Sets the edge weight of one instance in every service of its resource: 0
    /// drains it first (in-flight requests finish), 1 gives it its traffic back.
    /// Resources not behind the edge have nothing to do.
    async fn weigh(&self, resource: &Resource, change: &Change, weight: u32) -> Result<(), String> {
        let services = edge_services(resource);
        if services.is_empty() {
            return Ok(());
        }
        let client = self.client(change)?;
        let edge = crate::edge::Edge::connect(
            client,
            crate::edge::edge_instance_name(&self.topology.name),
        )
        .with_timeout(self.timeout());
        if weight > 0 {
            self.progress(
                change,
                format!("weight {weight} on the edge ({})", services.join(", ")),
            );
            return self
                .readdress(client, &edge, resource, &change.name, weight)
                .await;
        }
        for service in &services {
            self.progress(change, format!("draining it on the edge ({service})"));
            edge.drain(service, &change.name)
                .await
                .map_err(|e| error_chain(&e))?;
        }
        Ok(())
    }

    /// Gives `name` its weight back in every service of `resource`, at the address it
    /// has now (a replacement has a new one), in one configuration change.
    async fn readdress(
        &self,
        client: &Client,
        edge: &crate::edge::Edge,
        resource: &Resource,
        name: &str,
        weight: u32,
    ) -> Result<(), String> {
        let nics = crate::edge::addresses_of(client, name)
            .await
            .map_err(|e| format!("cannot read the address of {name}: {}", error_chain(&e)))?;
        let mut config = edge.config().await.map_err(|e| error_chain(&e))?;
        for service in super::switch::services(resource) {
            let found = config
                .services
                .iter_mut()
                .find(|s| s.name == service.name)
                .ok_or_else(|| format!("the edge has no service {}", service.name))?;
            let backend = found
                .backends
                .iter_mut()
                .find(|b| b.name == name)
                .ok_or_else(|| {
                    format!("the edge has no backend {name} in service {}", service.name)
                })?;
            backend.weight = weight;
            if let Some(ip) = nics.get(&service.nic) {
                backend.address = std::net::SocketAddr::new(*ip, service.port);
            }
        }
        edge.apply(&config).await.map_err(|e| error_chain(&e))
    }

    async fn binary(&self) -> Option<crate::edge::EdgeBinary> {
        self.binary
            .get_or_init(|| async { crate::edge::locate_binary(None).ok() })
            .await
            .clone()
    }

    /// Runs the resource's health gate on one changed instance, with the crash watch.
    pub(super) async fn gate(
        &self,
        resource: &Resource,
        change: &Change,
        watch: Option<&OnceCell<Result<CrashWatch, String>>>,
    ) -> Result<(), String> {
        let Some(health) = &resource.strategy.health else {
            return Ok(());
        };
        let client = self.client(change)?;
        let port = resource
            .networks
            .iter()
            .flat_map(|n| &n.expose)
            .map(|e| e.port)
            .next();
        let spec = GateSpec::from_model(health, port).map_err(|e| error_chain(&e))?;
        let binary = match spec.check {
            Check::Command { .. } => None,
            _ => Some(self.binary().await.ok_or_else(|| {
                "the health check needs the static cul8er-proxy binary as its probe; build it \
                 with `just proxy-static` and point CUL8ER_PROXY_BINARY at it"
                    .to_owned()
            })?),
        };
        let source = ExecSource::new(client, &change.name, spec.check.clone(), binary)
            .map_err(|e| error_chain(&e))?;
        let on_health = |event: HealthEvent| match event {
            HealthEvent::Check {
                attempt, result, ..
            } => self.progress(
                change,
                format!(
                    "health check {attempt}: {} ({})",
                    result.verdict.as_str(),
                    result.reason
                ),
            ),
            HealthEvent::GateEnded { outcome, .. } => {
                self.progress(change, format!("health gate: {}", outcome.reason()));
            }
            _ => {}
        };
        source
            .prepare(&on_health)
            .await
            .map_err(|e| error_chain(&e))?;
        let watch = match watch {
            Some(cell) => {
                let watch = cell
                    .get_or_init(|| async {
                        CrashWatch::start(client, crate::health::WatchOptions::default())
                            .await
                            .map_err(|e| error_chain(&e))
                    })
                    .await
                    .as_ref()
                    .map_err(Clone::clone)?;
                let release = match &change.target {
                    Some(Target::Instance(desired)) => desired.release.as_ref(),
                    _ => None,
                };
                watch
                    .watch(&change.name, release, None)
                    .await
                    .map_err(|e| error_chain(&e))?;
                Some(watch)
            }
            None => None,
        };
        let outcome = HealthGate::new(spec)
            .wait(&change.name, &source, watch, &on_health)
            .await;
        if outcome.is_healthy() {
            Ok(())
        } else {
            Err(format!(
                "the health gate of {} failed: {}",
                change.name,
                outcome.reason()
            ))
        }
    }

    /// After success: the kept instances go, old snapshots beyond `keep` go.
    async fn finish(&self, resource: &Resource, undos: &[(Change, Undo)]) {
        let timeout = self.timeout();
        for (change, undo) in undos {
            let Ok(client) = self.client(change) else {
                continue;
            };
            let result = match undo {
                Undo::BringBack { kept, .. } => {
                    self.progress(change, format!("deleting the kept instance {kept}"));
                    wait(client.instances().delete(kept).await, timeout)
                        .await
                        .map(drop)
                }
                Undo::Restore { name, .. } => {
                    snapshot::prune(client, name, resource.strategy.rollback.keep, timeout)
                        .await
                        .map(|gone| {
                            if !gone.is_empty() {
                                self.progress(
                                    change,
                                    format!("deleted old snapshots {}", gone.join(", ")),
                                );
                            }
                        })
                        .map_err(|e| error_chain(&e))
                }
                Undo::Nothing { .. } => Ok(()),
            };
            if let Err(error) = result {
                // The rollout succeeded; leftovers are reported, not fatal.
                tracing::warn!(instance = %change.name, %error, "cleanup after the rollout failed");
                self.progress(change, format!("cleanup failed (left as is): {error}"));
            }
        }
    }

    /// Puts back every changed instance, newest first.
    async fn undo_all(&self, undos: &[(Change, Undo)], reason: String) -> RolloutResult {
        let mut problems = Vec::new();
        for (change, undo) in undos.iter().rev() {
            if let Err(problem) = self.undo(change, undo).await {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            RolloutResult::RolledBack { reason }
        } else {
            RolloutResult::Failed {
                reason: format!(
                    "{reason}; then the rollback failed: {}",
                    problems.join("; ")
                ),
                next: "check the instances named above with `cul8er status`, then run \
                       `cul8er rollback` or fix them by hand"
                    .to_owned(),
            }
        }
    }

    async fn undo(&self, change: &Change, undo: &Undo) -> Result<(), String> {
        let client = self.client(change)?;
        let timeout = self.timeout();
        let instances = client.instances();
        match undo {
            Undo::Restore { name, snapshot } => {
                self.progress(
                    change,
                    format!("rolling back: restoring snapshot {snapshot}"),
                );
                snapshot::restore(client, name, snapshot, timeout)
                    .await
                    .map_err(|e| error_chain(&e))?;
                let state = instances.get(name).await.map_err(|e| error_chain(&e))?;
                if !state.is_running() {
                    wait(instances.start(name).await, timeout)
                        .await
                        .map_err(|e| format!("cannot start {name} after the restore: {e}"))?;
                }
                Ok(())
            }
            Undo::BringBack { name, kept } => {
                self.progress(
                    change,
                    format!("rolling back: bringing back {kept} as {name}"),
                );
                match instances.get(name).await {
                    Ok(current) => {
                        if current.is_running() || current.status.eq_ignore_ascii_case("frozen") {
                            wait(instances.stop(name, true, None).await, timeout)
                                .await
                                .map_err(|e| format!("cannot stop the replacement {name}: {e}"))?;
                        }
                        wait(instances.delete(name).await, timeout)
                            .await
                            .map_err(|e| format!("cannot delete the replacement {name}: {e}"))?;
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(error_chain(&e)),
                }
                wait(instances.rename(kept, name).await, timeout)
                    .await
                    .map_err(|e| format!("cannot rename {kept} back to {name}: {e}"))?;
                wait(instances.start(name).await, timeout)
                    .await
                    .map_err(|e| format!("cannot start {name}: {e}"))
            }
            Undo::Nothing { name } => Err(format!(
                "{name} has no pre-deploy snapshot (rollback snapshot=#false) and stays as it is"
            )),
        }
    }
}

pub(super) async fn wait(
    op: Result<incus_api::PendingOperation, incus_api::Error>,
    timeout: Duration,
) -> Result<(), String> {
    op.map_err(|e| error_chain(&e))?
        .wait(timeout)
        .await
        .and_then(incus_api::Operation::into_success)
        .map(drop)
        .map_err(|e| error_chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(resources: &str) -> Topology {
        let env = |_: &str| None;
        crate::topology::parse_one(
            &format!("topology t {{\n network n subnet=\"10.9.0.1/24\"\n {resources} }}"),
            "t.kdl",
            &crate::topology::LoadOptions::new(&env),
        )
        .unwrap()
    }

    #[test]
    fn edge_services_match_what_the_edge_serves() {
        let t = topology(
            r#"resource web { image "i"; replicas 3; network n { expose 8080 public=18080 protocol=http; }; }
               resource two { image "i"; replicas 2; network n { expose 8080 public=18081 protocol=http; expose 9090 public=18082 protocol=http; }; }
               resource db { image "i"; network n { expose 5432 public=15432 protocol=tcp; }; }
               resource worker { image "i"; }"#,
        );
        let services: Vec<Vec<String>> = t.resources.iter().map(edge_services).collect();
        assert_eq!(services[0], ["web"]);
        assert_eq!(services[1], ["two-8080", "two-9090"]);
        // A single TCP replica is published by a proxy device, not the edge.
        assert!(services[2].is_empty());
        assert!(services[3].is_empty());
    }

    #[test]
    fn only_updates_and_replacements_of_known_resources_are_rolled() {
        let t = topology(r#"resource web { image "i"; replicas 2; }"#);
        let wanted = crate::desired::desire(&t, &crate::desired::DesireOptions::default()).unwrap();
        let plan = crate::plan::plan(&wanted, &crate::observe::Observed::default());
        let create = plan
            .changes
            .iter()
            .find(|c| c.kind == ObjectKind::Instance)
            .unwrap()
            .clone();
        assert!(!is_rolled(&create, &t), "a new instance is the executor's");
        let mut update = create.clone();
        update.action = Action::Update;
        assert!(is_rolled(&update, &t));
        let mut replace = create.clone();
        replace.action = Action::Replace;
        assert!(is_rolled(&replace, &t));
        let mut stranger = update;
        stranger.resource = Some("gone".into());
        assert!(
            !is_rolled(&stranger, &t),
            "no strategy for an unknown resource"
        );
    }
}
