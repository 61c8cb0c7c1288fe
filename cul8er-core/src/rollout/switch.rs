//! Blue-green and canary: the new version comes up as a parallel set of instances
//! beside the serving one, and the edge moves traffic to it.
//!
//! Every move of traffic is one [`Edge::apply`] of a whole configuration carrying both
//! sets with their weights, so the proxy swaps it atomically: the edge is never
//! half-switched. The new set joins the edge at weight 0 (the edge health-checks it
//! all the same) and must pass the resource's health gate and the edge's own checks
//! before it gets any traffic.
//!
//! - **Blue-green**: one switch gives the new set all the weight and the old set 0.
//!   The old set stays, marked `user.cul8er.retire-after`, for the scale-down delay so
//!   that `cul8er rollback` switches back at once. A delay up to
//!   [`FOREGROUND_DELAY`] is waited out in the foreground and the old set removed;
//!   a longer one is left to the next plan, which deletes expired old sets.
//! - **Canary**: the canary's share follows the steps with per-backend weights that
//!   make it exact; each step is judged by [`super::analysis::judge`] on the edge's
//!   per-backend counters; a failing step puts all weight back on stable in one
//!   change and deletes the canary. At 100% the canary is the new stable and the old
//!   set is drained and deleted.
//!
//! A manual promotion (`promotion=manual`, `pause=manual`) or a `cul8er pause` ends
//! the command with the rollout recorded as paused ([`super::pending`]) at a whole
//! step. Ctrl-C before the switch (blue-green) or during the steps (canary) puts all
//! traffic back on the serving set and deletes the new one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cul8er_proxy::ProxyConfig;
use cul8er_proxy::config::BackendConfig;
use cul8er_proxy::metrics::BackendStats;
use futures_util::future::join_all;
use incus_api::Client;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::pending::{
    BackendWeight, InstanceSet, PauseReason, PendingRollout, Phase, SetMember, StepAt,
    SwitchStrategy,
};
use super::run::{Roller, step, wait};
use super::schedule::{PauseEnd, canary_backend_weights, canary_weights, countdown, pause};
use super::{ResourceRollout, RolloutResult};
use crate::desired::{KEY_CANDIDATE, KEY_RETIRE};
use crate::edge::Edge;
use crate::execute::{ApplyEvent, ApplyOutcome, Step, StepOutcome, StepStatus, error_chain};
use crate::health::CrashWatch;
use crate::plan::{Action, Change, ObjectKind, SetChange, Target};
use crate::topology::{Canary, Pause, Promotion, Resource, StrategyKind};

/// The longest scale-down delay `apply` waits out in the foreground before it removes
/// the old set itself; a longer delay is left to the next plan.
pub const FOREGROUND_DELAY: Duration = Duration::from_secs(60);

/// The least time a canary step without a pause is watched before it is judged.
pub const STEP_WINDOW: Duration = Duration::from_secs(10);

/// The longest a canary step waits for `min-requests` beyond its pause.
pub const JUDGE_DEADLINE: Duration = Duration::from_secs(300);

/// How many times the sets are marked after a switch before the rollout gives up
/// (and leaves its record `switched` for `promote`).
const MARK_ATTEMPTS: u32 = 5;

/// The wait before the second attempt at marking; doubled after each failure.
const MARK_BACKOFF: Duration = Duration::from_secs(1);

/// Runs `attempt(n)` (n from 1) until it succeeds or `attempts` failed, waiting
/// `backoff`, doubled each time, between attempts; the last error when all failed.
async fn retried<F, Fut>(attempts: u32, backoff: Duration, mut attempt: F) -> Result<(), String>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let mut wait = backoff;
    let mut n = 1;
    loop {
        match attempt(n).await {
            Ok(()) => return Ok(()),
            Err(problem) if n >= attempts => return Err(problem),
            Err(_) => {
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2);
                n += 1;
            }
        }
    }
}

/// One exposed port of the resource on the edge.
#[derive(Debug, Clone)]
pub(super) struct ServiceRef {
    pub(super) name: String,
    pub(super) nic: String,
    pub(super) port: u16,
}

/// The edge services of `resource`, named as the edge's desire names them.
pub(super) fn services(resource: &Resource) -> Vec<ServiceRef> {
    let routed: Vec<(usize, u16)> = resource
        .networks
        .iter()
        .enumerate()
        .flat_map(|(index, attachment)| {
            attachment
                .expose
                .iter()
                .filter(|e| crate::edge::through_edge(e, resource.replicas))
                .map(move |e| (index, e.port))
        })
        .collect();
    let several = routed.len() > 1;
    routed
        .into_iter()
        .map(|(index, port)| ServiceRef {
            name: if several {
                format!("{}-{port}", resource.name)
            } else {
                resource.name.clone()
            },
            nic: format!("eth{index}"),
            port,
        })
        .collect()
}

/// A set rollout in progress: which instances serve, which are new.
#[derive(Debug, Clone)]
pub(super) struct SetRun<'s> {
    pub(super) resource: &'s Resource,
    /// The step progress is reported on.
    pub(super) step: Step,
    pub(super) old: Vec<String>,
    pub(super) new: Vec<String>,
    pub(super) old_label: String,
    pub(super) new_label: String,
    pub(super) version: Option<String>,
    pub(super) services: Vec<ServiceRef>,
}

impl SetRun<'_> {
    fn strategy(&self) -> SwitchStrategy {
        if self.resource.strategy.kind == StrategyKind::Canary {
            SwitchStrategy::Canary
        } else {
            SwitchStrategy::BlueGreen
        }
    }

    fn canary(&self) -> Canary {
        self.resource.strategy.canary.clone().unwrap_or_default()
    }

    /// The canary step that going on from step `from` (or promoting: the last one)
    /// moves to first.
    fn step_at(&self, from: usize, promote: bool) -> StepAt {
        let weights = canary_weights(&self.canary().steps);
        let last = weights.len().saturating_sub(1);
        let index = if promote { last } else { from.min(last) };
        StepAt {
            index,
            weight: weights.get(index).copied().unwrap_or(100),
        }
    }

    /// The record of this rollout paused at `phase`.
    pub(super) fn record(
        &self,
        topology: &str,
        revision: &str,
        phase: Phase,
        reason: Option<PauseReason>,
        weights: Vec<BackendWeight>,
    ) -> PendingRollout {
        let members = |names: &[String]| {
            names
                .iter()
                .map(|n| SetMember {
                    instance: n.clone(),
                    backend: if self.services.is_empty() {
                        String::new()
                    } else {
                        n.clone()
                    },
                })
                .collect()
        };
        PendingRollout {
            topology: topology.to_owned(),
            revision: revision.to_owned(),
            resource: self.resource.name.clone(),
            version: self.version.clone(),
            strategy: self.strategy(),
            phase,
            old_set: InstanceSet {
                set: self.old_label.clone(),
                members: members(&self.old),
            },
            new_set: InstanceSet {
                set: self.new_label.clone(),
                members: members(&self.new),
            },
            weights,
            reason,
            holder: crate::lock::Holder::current(),
            at: super::pending::utc_time(std::time::SystemTime::now()),
            hosts: vec![self.step.host.clone()],
        }
    }
}

/// Where a set rollout goes on from: the start, or a paused phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Entry {
    /// Create the set (or reuse it), gate it, then switch or step.
    Start,
    /// Blue-green: check the new set's health again, then switch (`promote`).
    Switch,
    /// The edge already switched: apply the final weights again and finish marking
    /// the sets (`promote` or `resume` of a `switched` record).
    Finish,
    /// Canary: go on from step `index` (`resume`), or to 100% at once when `promote`.
    Step { index: usize, promote: bool },
    /// Canary stopped before its first step (killed while its set came up): check
    /// the new set's health again, then the steps from the first (or 100% when
    /// `promote`).
    FirstStep { promote: bool },
    /// Put all traffic back on the serving set and delete the new one (`abort`).
    /// `step`: the canary step the record held, recorded again while the undo runs,
    /// so that an abort killed before its undo leaves the step, not the first.
    Abort { step: Option<StepAt> },
}

/// The phase a running record carries while `entry` runs.
fn running_phase(run: &SetRun<'_>, entry: Entry) -> Phase {
    match entry {
        Entry::Step { index, promote } => Phase::Running {
            step: Some(run.step_at(index, promote)),
        },
        Entry::Abort { step } => Phase::Running { step },
        Entry::Start | Entry::Switch | Entry::Finish | Entry::FirstStep { .. } => Phase::RUNNING,
    }
}

/// How far a set rollout got.
#[derive(Debug)]
enum Ended {
    /// The new set serves.
    Done,
    /// Paused: recorded, the command ends.
    Paused(Box<PendingRollout>),
    /// Failed before the new set served: undo.
    Failed(String),
    /// The edge switched but the sets could not be marked: the record stays
    /// `switched` for `promote` to finish; never undone.
    Unmarked(String),
}

impl Roller<'_> {
    fn set_progress(&self, run: &SetRun<'_>, message: impl Into<String>) {
        (self.on_event)(&ApplyEvent::StepProgress {
            step: run.step.clone(),
            message: message.into(),
        });
    }

    fn edge(&self, client: &Client) -> Edge {
        Edge::connect(client, crate::edge::edge_instance_name(&self.topology.name))
            .with_timeout(self.timeout())
    }

    /// Rolls a set change of the plan out.
    pub(super) async fn roll_set(
        &self,
        resource: &Resource,
        change: &Change,
    ) -> (ApplyOutcome, ResourceRollout) {
        let mut outcome = ApplyOutcome {
            revision: self.executor.options.revision.clone(),
            steps: Vec::new(),
            cancelled: false,
            millis: 0,
        };
        let Some(Target::Set(set)) = &change.target else {
            let reason = format!("the set change {} names no set", change.name);
            return (outcome, self.set_record(resource, &[], failed(&reason)));
        };
        let run = SetRun {
            resource,
            step: step(change),
            old: set.serving.clone(),
            new: set.instances.iter().map(|i| i.name.clone()).collect(),
            old_label: set.serving_set.clone(),
            new_label: set.set.clone(),
            version: resource.release.as_ref().map(|r| r.version.clone()),
            services: services(resource),
        };
        let begin = Instant::now();
        (self.on_event)(&ApplyEvent::StepStarted {
            step: run.step.clone(),
        });
        let result = self
            .drive(&run, Entry::Start, Some(set), &mut outcome)
            .await;
        let millis = u64::try_from(begin.elapsed().as_millis()).unwrap_or(u64::MAX);
        let error = match &result {
            RolloutResult::RolledBack { reason } | RolloutResult::Failed { reason, .. } => {
                Some(reason.clone())
            }
            RolloutResult::Succeeded | RolloutResult::Paused { .. } => None,
        };
        match &error {
            None => (self.on_event)(&ApplyEvent::StepDone {
                step: run.step.clone(),
                millis,
                waiting_millis: 0,
            }),
            Some(error) => (self.on_event)(&ApplyEvent::StepFailed {
                step: run.step.clone(),
                error: error.clone(),
            }),
        }
        outcome.steps.push(StepOutcome {
            step: run.step.clone(),
            status: if error.is_some() {
                StepStatus::Failed
            } else {
                StepStatus::Done
            },
            error,
            millis,
            waiting_millis: 0,
        });
        if self.cancel.graceful.is_cancelled() {
            outcome.cancelled = true;
        }
        (outcome, self.set_record(resource, &run.new, result))
    }

    pub(super) fn set_record(
        &self,
        resource: &Resource,
        instances: &[String],
        result: RolloutResult,
    ) -> ResourceRollout {
        ResourceRollout {
            resource: resource.name.clone(),
            strategy: resource.strategy.kind.as_str().to_owned(),
            version: resource.release.as_ref().map(|r| r.version.clone()),
            instances: instances.to_vec(),
            snapshots: Vec::new(),
            result,
        }
    }

    /// Runs a set rollout from `entry` to its end, a pause, or its undoing.
    pub(super) async fn drive(
        &self,
        run: &SetRun<'_>,
        entry: Entry,
        set: Option<&SetChange>,
        outcome: &mut ApplyOutcome,
    ) -> RolloutResult {
        let client = match self.executor.clients.get(&run.step.host) {
            Some(client) => client,
            None => return failed(&format!("no connection to host {}", run.step.host)),
        };
        let edge = self.edge(client);
        let watch: OnceCell<Result<CrashWatch, String>> = OnceCell::new();
        if let Some(store) = &self.pending
            && entry != Entry::Finish
        {
            // The record of a running rollout, so that `cul8er pause` can reach it
            // and a rollout killed halfway is found. Unrecorded, it does not start.
            // A canary going on from a step, or being aborted at one, records that
            // step at once: killed before the step's own record (or the undo), it is
            // not sent back to the first step.
            let running = run.record(
                &self.topology.name,
                &self.executor.options.revision,
                running_phase(run, entry),
                None,
                Vec::new(),
            );
            if let Err(error) = store.save(&running).await {
                return failed(&format!(
                    "cannot record the rollout as running, so it did not start (nothing changed): {}",
                    error_chain(&error)
                ));
            }
        }
        let ended = match entry {
            Entry::Abort { .. } => Ended::Failed("aborted by the operator".to_owned()),
            Entry::Start => {
                let up = tokio::select! {
                    biased;
                    () = self.cancel.graceful.cancelled() => Err("cancelled by the operator".to_owned()),
                    up = self.bring_up(run, set, client, &edge, &watch, outcome) => up,
                };
                match up {
                    Err(reason) => Ended::Failed(reason),
                    Ok(()) if run.strategy() == SwitchStrategy::Canary => {
                        self.steps(run, client, &edge, 0, false).await
                    }
                    Ok(()) => match run
                        .resource
                        .strategy
                        .blue_green
                        .unwrap_or_default()
                        .promotion
                    {
                        Promotion::Manual => Ended::Paused(Box::new(run.record(
                            &self.topology.name,
                            &self.executor.options.revision,
                            Phase::PausedBeforeSwitch,
                            Some(PauseReason::ManualPromotion),
                            Vec::new(),
                        ))),
                        Promotion::Automatic => match self.requested_pause(run).await {
                            Some(reason) => Ended::Paused(Box::new(run.record(
                                &self.topology.name,
                                &self.executor.options.revision,
                                Phase::PausedBeforeSwitch,
                                Some(reason),
                                Vec::new(),
                            ))),
                            None => self.switch(run, client, &edge).await,
                        },
                    },
                }
            }
            Entry::Switch => match self.still_healthy(run, client, &edge).await {
                Ok(()) => self.switch(run, client, &edge).await,
                Err(reason) => Ended::Failed(format!("not switched: {reason}")),
            },
            Entry::Finish if run.strategy() == SwitchStrategy::Canary => {
                self.steps(run, client, &edge, 0, true).await
            }
            Entry::Finish => self.switch(run, client, &edge).await,
            Entry::Step { index, promote } => self.steps(run, client, &edge, index, promote).await,
            Entry::FirstStep { promote } => match self.still_healthy(run, client, &edge).await {
                Ok(()) => self.steps(run, client, &edge, 0, promote).await,
                Err(reason) => Ended::Failed(format!("not started: {reason}")),
            },
        };
        if let Some(Ok(watch)) = watch.get() {
            for name in &run.new {
                watch.unwatch(name);
            }
        }
        match ended {
            Ended::Done => {
                self.clear_record(run).await;
                RolloutResult::Succeeded
            }
            Ended::Unmarked(problem) => RolloutResult::Failed {
                reason: format!(
                    "traffic switched to {}, but the sets could not be marked: {problem}",
                    run.new.join(", ")
                ),
                next: "`cul8er promote` finishes marking them (the switch stands; `cul8er abort` cannot undo it)".to_owned(),
            },
            Ended::Paused(record) => {
                let record = *record;
                let next = format!(
                    "`cul8er promote` {}, `cul8er abort` puts all traffic back on the serving set",
                    if run.strategy() == SwitchStrategy::Canary {
                        "goes to 100% now, `cul8er resume` goes on with the next step"
                    } else {
                        "switches traffic to the new set"
                    }
                );
                let saved = match &self.pending {
                    Some(store) => store.save(&record).await.map_err(|e| error_chain(&e)),
                    None => Err("no rollout record store: the rollout cannot pause".to_owned()),
                };
                match saved {
                    Ok(()) => {
                        self.set_progress(run, format!("paused: {record}"));
                        RolloutResult::Paused {
                            reason: record.reason.map(|r| r.to_string()).unwrap_or_default(),
                            next,
                        }
                    }
                    Err(problem) => {
                        let reason = format!("cannot record the paused rollout: {problem}");
                        self.undo_and_clear(run, client, &edge, reason).await
                    }
                }
            }
            Ended::Failed(reason) => self.undo_and_clear(run, client, &edge, reason).await,
        }
    }

    /// Undoes the rollout; clears its record only once the undo succeeded, so that
    /// a failed or killed undo leaves the record for `cul8er abort` to retry.
    async fn undo_and_clear(
        &self,
        run: &SetRun<'_>,
        client: &Client,
        edge: &Edge,
        reason: String,
    ) -> RolloutResult {
        let result = self.undo_set(run, client, edge, reason).await;
        if matches!(result, RolloutResult::RolledBack { .. }) {
            self.clear_record(run).await;
        }
        result
    }

    async fn clear_record(&self, run: &SetRun<'_>) {
        if let Some(store) = &self.pending
            && let Err(error) = store.clear().await
        {
            self.set_progress(
                run,
                format!("cannot clear the rollout record: {}", error_chain(&error)),
            );
        }
    }

    /// Before a `promote` switches: every new instance still runs and the edge's
    /// checks still find it healthy.
    async fn still_healthy(
        &self,
        run: &SetRun<'_>,
        client: &Client,
        edge: &Edge,
    ) -> Result<(), String> {
        let instances = client.instances();
        for name in &run.new {
            let found = instances
                .get(name)
                .await
                .map_err(|e| format!("cannot read {name}: {}", error_chain(&e)))?;
            if !found.is_running() {
                return Err(format!("{name} is {}", found.status.to_lowercase()));
            }
        }
        if !run.services.is_empty() {
            self.edge_healthy(run, client, edge).await?;
        }
        Ok(())
    }

    /// Right after the edge switched to the new set: records the rollout as
    /// `switched`, marks the new set as serving and the old one to retire at
    /// `retire_secs` (retried: a switch is never left unmarked for a passing
    /// problem), then clears the record.
    async fn mark_switched(
        &self,
        run: &SetRun<'_>,
        client: &Client,
        retire_secs: u64,
    ) -> Result<(), String> {
        if let Some(store) = &self.pending {
            let switched = run.record(
                &self.topology.name,
                &self.executor.options.revision,
                Phase::Switched,
                None,
                Vec::new(),
            );
            if let Err(error) = store.save(&switched).await {
                // The planner still finds the serving set by the edge's weights.
                self.set_progress(
                    run,
                    format!(
                        "cannot record the rollout as switched: {}",
                        error_chain(&error)
                    ),
                );
            }
        }
        retried(MARK_ATTEMPTS, MARK_BACKOFF, |attempt| async move {
            let marked = self
                .mark(client, &run.new, &[KEY_CANDIDATE, KEY_RETIRE], None)
                .await
                .map_err(|p| format!("cannot mark the new set as serving: {p}"));
            let marked = match marked {
                Ok(()) => self
                    .mark(
                        client,
                        &run.old,
                        &[],
                        Some((KEY_RETIRE, retire_secs.to_string())),
                    )
                    .await
                    .map_err(|p| format!("cannot mark the old set for removal: {p}")),
                Err(problem) => Err(problem),
            };
            if let Err(problem) = &marked {
                self.set_progress(
                    run,
                    format!("{problem} (attempt {attempt} of {MARK_ATTEMPTS})"),
                );
            }
            marked
        })
        .await?;
        self.clear_record(run).await;
        Ok(())
    }

    async fn requested_pause(&self, run: &SetRun<'_>) -> Option<PauseReason> {
        let store = self.pending.as_ref()?;
        match store.take_pause_request().await {
            Ok(Some(request)) => Some(PauseReason::PauseRequested { by: request.by }),
            Ok(None) => None,
            Err(error) => {
                self.set_progress(
                    run,
                    format!("cannot read a pause request: {}", error_chain(&error)),
                );
                None
            }
        }
    }

    /// Creates the new set (unless it exists), adds it to the edge at weight 0 and
    /// waits until every new instance passes its gate and the edge's checks.
    async fn bring_up(
        &self,
        run: &SetRun<'_>,
        set: Option<&SetChange>,
        client: &Client,
        edge: &Edge,
        watch: &OnceCell<Result<CrashWatch, String>>,
        outcome: &mut ApplyOutcome,
    ) -> Result<(), String> {
        let Some(set) = set else {
            return Err("no set to bring up".to_owned());
        };
        let creates: Vec<Change> = set
            .instances
            .iter()
            .map(|instance| Change {
                host: run.step.host.clone(),
                kind: ObjectKind::Instance,
                name: instance.name.clone(),
                resource: Some(run.resource.name.clone()),
                // A kept old set switched back to is gated as it stands.
                action: if set.reuse {
                    Action::Keep
                } else {
                    Action::Create
                },
                drift: false,
                restart: false,
                start: false,
                reason: Some(format!("new set of {}", run.resource.name)),
                fields: Vec::new(),
                target: Some(Target::Instance(Box::new(instance.clone()))),
            })
            .collect();
        if set.reuse {
            self.set_progress(
                run,
                format!("switching back to the kept set {}", run.new.join(", ")),
            );
            // It keeps its retire-after key until the switch: undone before it, it is
            // still the old set it was.
        } else {
            self.set_progress(run, format!("creating the new set {}", run.new.join(", ")));
            let mut sub = self.plan.clone();
            sub.changes.clone_from(&creates);
            let done = self.executor.apply(&sub, self.cancel, self.on_event).await;
            let failure = done
                .failures()
                .next()
                .map(|f| format!("{}: {}", f.step, f.error.clone().unwrap_or_default()));
            let cancelled = done.cancelled;
            outcome.steps.extend(done.steps);
            if let Some(failure) = failure {
                return Err(failure);
            }
            if cancelled {
                return Err("cancelled by the operator".to_owned());
            }
        }
        if !run.services.is_empty() {
            self.join_edge(run, client, edge).await?;
        }
        let gates = join_all(
            creates
                .iter()
                .map(|c| self.gate(run.resource, c, Some(watch))),
        )
        .await;
        if let Some(reason) = gates.into_iter().find_map(Result::err) {
            return Err(reason);
        }
        if !run.services.is_empty() {
            self.edge_healthy(run, client, edge).await?;
        }
        Ok(())
    }

    /// Adds the new set to every service of the edge at weight 0 (backends it knows
    /// keep their weight), once each new instance has its address.
    async fn join_edge(
        &self,
        run: &SetRun<'_>,
        client: &Client,
        edge: &Edge,
    ) -> Result<(), String> {
        let until = Instant::now() + self.timeout();
        let addresses = loop {
            let mut addresses = BTreeMap::new();
            let mut missing = Vec::new();
            for name in &run.new {
                let nics = crate::edge::addresses_of(client, name).await.map_err(|e| {
                    format!("cannot read the address of {name}: {}", error_chain(&e))
                })?;
                for service in &run.services {
                    if !nics.contains_key(&service.nic) {
                        missing.push(format!("{name}/{}", service.nic));
                    }
                }
                addresses.insert(name.clone(), nics);
            }
            if missing.is_empty() {
                break addresses;
            }
            if Instant::now() >= until {
                return Err(format!(
                    "no address for {} after {}s; do the instances get a DHCP lease on the bridge?",
                    missing.join(", "),
                    self.timeout().as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let mut config = edge.config().await.map_err(|e| error_chain(&e))?;
        for service in &run.services {
            let found = service_mut(&mut config, &service.name)?;
            for name in &run.new {
                let Some(ip) = addresses.get(name).and_then(|n| n.get(&service.nic)) else {
                    continue;
                };
                let address = SocketAddr::new(*ip, service.port);
                match found.backends.iter_mut().find(|b| &b.name == name) {
                    Some(backend) => backend.address = address,
                    None => found.backends.push(BackendConfig {
                        name: name.clone(),
                        address,
                        weight: 0,
                    }),
                }
            }
        }
        self.set_progress(run, "the new set joins the edge at weight 0");
        edge.apply(&config).await.map_err(|e| error_chain(&e))
    }

    /// Waits until the edge's own checks find every new backend healthy.
    async fn edge_healthy(
        &self,
        run: &SetRun<'_>,
        client: &Client,
        edge: &Edge,
    ) -> Result<(), String> {
        let deadline = run
            .resource
            .strategy
            .health
            .as_ref()
            .map_or(Duration::from_secs(120), |h| h.deadline.to_std());
        let begin = Instant::now();
        let mut readdressed = begin;
        loop {
            let report = edge.health().await.map_err(|e| error_chain(&e))?;
            let mut waiting = Vec::new();
            for service in &run.services {
                let Some(found) = report.services.iter().find(|s| s.name == service.name) else {
                    return Err(format!("the edge has no service {}", service.name));
                };
                for name in &run.new {
                    let backend = found.backends.iter().find(|b| &b.name == name);
                    let healthy = backend.is_some_and(|b| {
                        b.health == cul8er_proxy::health::HealthStatus::Healthy && !b.ejected
                    });
                    if !healthy {
                        let last = backend
                            .and_then(|b| b.last_check.clone())
                            .unwrap_or_else(|| "not checked yet".to_owned());
                        waiting.push(format!("{}/{name} ({last})", service.name));
                    }
                }
            }
            if waiting.is_empty() {
                self.set_progress(run, "the edge finds every new backend healthy");
                return Ok(());
            }
            if begin.elapsed() >= deadline {
                return Err(format!(
                    "the edge's checks did not find {} healthy within {}s",
                    waiting.join(", "),
                    deadline.as_secs()
                ));
            }
            // The instance's own gate passed: a backend the edge still cannot reach
            // may have taken another lease since its address was read.
            if readdressed.elapsed() >= Duration::from_secs(5) {
                readdressed = Instant::now();
                self.set_progress(
                    run,
                    format!("waiting for the edge's checks: {}", waiting.join(", ")),
                );
                self.join_edge(run, client, edge).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Sets the weights of both sets in one atomic change: `weight(name)` for each
    /// backend of either set; `first` come first in each service.
    async fn weigh_sets(
        &self,
        run: &SetRun<'_>,
        edge: &Edge,
        weight: impl Fn(&str) -> Option<u32>,
        first: &[String],
        drop: &[String],
    ) -> Result<Vec<BackendWeight>, String> {
        if run.services.is_empty() {
            return Ok(Vec::new());
        }
        let mut config = edge.config().await.map_err(|e| error_chain(&e))?;
        let mut weights = Vec::new();
        for service in &run.services {
            let found = service_mut(&mut config, &service.name)?;
            found.backends.retain(|b| !drop.contains(&b.name));
            for backend in &mut found.backends {
                if let Some(w) = weight(&backend.name) {
                    backend.weight = w;
                }
                weights.push(BackendWeight {
                    service: service.name.clone(),
                    backend: backend.name.clone(),
                    weight: backend.weight,
                });
            }
            // Stable order: the serving set first, as the planner's edge lists it.
            found
                .backends
                .sort_by_key(|b| usize::from(!first.contains(&b.name)));
        }
        edge.apply(&config).await.map_err(|e| error_chain(&e))?;
        Ok(weights)
    }

    /// Blue-green: all traffic to the new set in one change, then the old set retires.
    async fn switch(&self, run: &SetRun<'_>, client: &Client, edge: &Edge) -> Ended {
        let new = run.new.clone();
        let switched = self
            .weigh_sets(
                run,
                edge,
                |name| {
                    if new.iter().any(|n| n == name) {
                        Some(1)
                    } else if run.old.iter().any(|n| n == name) {
                        Some(0)
                    } else {
                        None
                    }
                },
                &run.new,
                &[],
            )
            .await;
        if let Err(reason) = switched {
            return Ended::Failed(format!("the switch failed: {reason}"));
        }
        self.set_progress(
            run,
            format!(
                "traffic switched to {} in one change; {} at weight 0",
                run.new.join(", "),
                run.old.join(", ")
            ),
        );
        let delay = run
            .resource
            .strategy
            .blue_green
            .unwrap_or_default()
            .scale_down_delay
            .to_std();
        let retire_at = std::time::SystemTime::now() + delay;
        let retire_secs = retire_at
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Err(problem) = self.mark_switched(run, client, retire_secs).await {
            return Ended::Unmarked(problem);
        }
        if delay > FOREGROUND_DELAY {
            self.set_progress(
                run,
                format!(
                    "the old set is kept until {} (scale-down delay {}s) so that `cul8er rollback` switches back at once; the next plan after that deletes it",
                    super::pending::utc_time(retire_at),
                    delay.as_secs()
                ),
            );
            return Ended::Done;
        }
        let waited = countdown(
            delay,
            Duration::from_secs(10),
            &self.cancel.graceful,
            |left| {
                self.set_progress(
                    run,
                    format!("old set removed in {}s (scale-down delay)", left.as_secs()),
                );
            },
        )
        .await;
        if waited == PauseEnd::Cancelled {
            self.set_progress(
                run,
                "interrupted during the scale-down delay: the switch stands; the next plan deletes the old set",
            );
            return Ended::Done;
        }
        if let Err(problem) = self.retire(run, client, edge, &run.old).await {
            self.set_progress(
                run,
                format!("cannot remove the old set (the next plan deletes it): {problem}"),
            );
        }
        Ended::Done
    }

    /// Drains `names` on the edge, takes them out of its configuration and deletes them.
    async fn retire(
        &self,
        run: &SetRun<'_>,
        client: &Client,
        edge: &Edge,
        names: &[String],
    ) -> Result<(), String> {
        for service in &run.services {
            for name in names {
                match edge.drain(&service.name, name).await {
                    Ok(_) => {}
                    Err(crate::edge::EdgeError::NotFound { .. }) => {}
                    Err(e) => return Err(error_chain(&e)),
                }
            }
        }
        self.weigh_sets(run, edge, |_| None, &[], names).await?;
        self.set_progress(run, format!("deleting {}", names.join(", ")));
        let instances = client.instances();
        for name in names {
            match instances.get(name).await {
                Ok(current) => {
                    if current.is_running() || current.status.eq_ignore_ascii_case("frozen") {
                        wait(instances.stop(name, true, None).await, self.timeout())
                            .await
                            .map_err(|e| format!("cannot stop {name}: {e}"))?;
                    }
                    wait(instances.delete(name).await, self.timeout())
                        .await
                        .map_err(|e| format!("cannot delete {name}: {e}"))?;
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(error_chain(&e)),
            }
        }
        Ok(())
    }

    /// Removes `remove` from each instance's config and sets `set`, in one update each.
    async fn mark(
        &self,
        client: &Client,
        names: &[String],
        remove: &[&str],
        set: Option<(&str, String)>,
    ) -> Result<(), String> {
        let instances = client.instances();
        for name in names {
            // An instance already gone (deleted by a plan or by hand) needs no mark.
            let (current, etag) = match instances.get_with_etag(name).await {
                Ok(found) => found,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(error_chain(&e)),
            };
            let mut put = current.to_put();
            for key in remove {
                put.config.remove(*key);
            }
            if let Some((key, value)) = &set {
                put.config.insert((*key).to_owned(), value.clone());
            }
            wait(
                instances.update(name, &put, etag.as_deref()).await,
                self.timeout(),
            )
            .await
            .map_err(|e| format!("cannot update {name}: {e}"))?;
        }
        Ok(())
    }

    /// Canary: the steps from `from`, each judged; `promote` goes to 100% at once.
    async fn steps(
        &self,
        run: &SetRun<'_>,
        client: &Client,
        edge: &Edge,
        from: usize,
        promote: bool,
    ) -> Ended {
        let canary = run.canary();
        let weights = canary_weights(&canary.steps);
        let analysis = canary
            .analysis
            .clone()
            .unwrap_or(super::analysis::DEFAULT_ANALYSIS);
        let last = weights.len().saturating_sub(1);
        let from = run.step_at(from, promote).index;
        // The weights last applied on the edge, as the next step's record carries them.
        let mut in_force = Vec::new();
        for (index, &weight) in weights.iter().enumerate().skip(from) {
            if self.cancel.graceful.is_cancelled() {
                return Ended::Failed("cancelled by the operator".to_owned());
            }
            // The step is recorded before the edge moves: a command killed between
            // the two leaves the edge at this step's weights or the step before's,
            // and the next `resume` or `promote` applies this step's again.
            if let Some(store) = &self.pending {
                let record = run.record(
                    &self.topology.name,
                    &self.executor.options.revision,
                    Phase::Running {
                        step: Some(StepAt { index, weight }),
                    },
                    None,
                    in_force.clone(),
                );
                if let Err(error) = store.save(&record).await {
                    return Ended::Failed(format!(
                        "step {}: cannot record it, so the edge was not moved: {}",
                        index + 1,
                        error_chain(&error)
                    ));
                }
            }
            let (canary_weight, stable_weight) =
                canary_backend_weights(weight, run.new.len(), run.old.len());
            self.set_progress(
                run,
                format!(
                    "step {}/{}: moving {weight}% of the traffic to the canary",
                    index + 1,
                    weights.len()
                ),
            );
            let new = &run.new;
            let old = &run.old;
            let applied = self
                .weigh_sets(
                    run,
                    edge,
                    |name| {
                        if new.iter().any(|n| n == name) {
                            Some(canary_weight)
                        } else if old.iter().any(|n| n == name) {
                            Some(stable_weight)
                        } else {
                            None
                        }
                    },
                    if weight == 100 { new } else { old },
                    &[],
                )
                .await;
            let weights_now = match applied {
                Ok(w) => w,
                Err(reason) => return Ended::Failed(format!("step {}: {reason}", index + 1)),
            };
            in_force.clone_from(&weights_now);
            self.set_progress(
                run,
                format!(
                    "step {}/{}: {weight}% to the canary (weight {canary_weight} on each of {} canary, {stable_weight} on each of {} stable backends)",
                    index + 1,
                    weights.len(),
                    run.new.len(),
                    run.old.len()
                ),
            );
            if index == last {
                break;
            }
            let start = match self.read_stats(run, edge).await {
                Ok(stats) => stats,
                Err(reason) => return Ended::Failed(reason),
            };
            let step_pause = canary.steps.get(index).and_then(|s| s.pause);
            // A step is judged over its timed pause, or over STEP_WINDOW (also before
            // a pause until promoted).
            let window = match step_pause {
                Some(Pause::For { duration }) => Some(Pause::For { duration }),
                _ => Some(Pause::For {
                    duration: crate::topology::Duration::from_secs(STEP_WINDOW.as_secs()),
                }),
            };
            self.set_progress(
                run,
                format!(
                    "step {}: watching for {}",
                    index + 1,
                    describe_pause(window)
                ),
            );
            if pause(window, &self.cancel.graceful).await == PauseEnd::Cancelled {
                return Ended::Failed("cancelled by the operator".to_owned());
            }
            let verdict = match self.judge_step(run, edge, &start, &analysis).await {
                Ok(verdict) => verdict,
                Err(reason) => return Ended::Failed(reason),
            };
            if let Some(reason) = verdict {
                return Ended::Failed(format!("step {} ({weight}%): {reason}", index + 1));
            }
            if step_pause == Some(Pause::UntilPromoted) {
                return Ended::Paused(Box::new(run.record(
                    &self.topology.name,
                    &self.executor.options.revision,
                    Phase::PausedAtStep { index, weight },
                    Some(PauseReason::ManualPromotion),
                    weights_now,
                )));
            }
            if let Some(reason) = self.requested_pause(run).await {
                return Ended::Paused(Box::new(run.record(
                    &self.topology.name,
                    &self.executor.options.revision,
                    Phase::PausedAtStep { index, weight },
                    Some(reason),
                    weights_now,
                )));
            }
        }
        // At 100%: the canary is the new stable (marked before anything else), and
        // the old set, marked to retire now, goes.
        if let Err(problem) = self.mark_switched(run, client, 0).await {
            return Ended::Unmarked(problem);
        }
        self.set_progress(run, "the canary is the new stable; removing the old set");
        if let Err(problem) = self.retire(run, client, edge, &run.old).await {
            self.set_progress(
                run,
                format!("cannot remove the old set (the next plan deletes it): {problem}"),
            );
        }
        Ended::Done
    }

    async fn read_stats(
        &self,
        run: &SetRun<'_>,
        edge: &Edge,
    ) -> Result<BTreeMap<String, Vec<BackendStats>>, String> {
        let stats = edge.stats().await.map_err(|e| error_chain(&e))?;
        Ok(stats
            .services
            .into_iter()
            .filter(|s| run.services.iter().any(|r| r.name == s.name))
            .map(|s| (s.name, s.backends))
            .collect())
    }

    /// Judges a step: `None` when it passed, the reason when it failed. Waits (up to
    /// [`JUDGE_DEADLINE`]) while the canary has too few requests.
    async fn judge_step(
        &self,
        run: &SetRun<'_>,
        edge: &Edge,
        start: &BTreeMap<String, Vec<BackendStats>>,
        analysis: &crate::topology::Analysis,
    ) -> Result<Option<String>, String> {
        let until = Instant::now() + JUDGE_DEADLINE;
        loop {
            let end = self.read_stats(run, edge).await?;
            let mut short = None;
            for service in run.services.iter().map(|s| &s.name) {
                let (Some(started), Some(ended)) = (start.get(service), end.get(service)) else {
                    return Ok(Some(format!(
                        "the edge's statistics have no service {service}"
                    )));
                };
                let side = |stats: &[BackendStats], names: &[String]| -> Vec<BackendStats> {
                    stats
                        .iter()
                        .filter(|b| names.contains(&b.name))
                        .cloned()
                        .collect()
                };
                let (c0, c1) = (side(started, &run.new), side(ended, &run.new));
                let (s0, s1) = (side(started, &run.old), side(ended, &run.old));
                let verdict = super::analysis::judge((&c0, &c1), (&s0, &s1), analysis);
                match verdict {
                    super::analysis::Verdict::Fail { reason, .. } => {
                        self.set_progress(run, format!("analysis of {service}: failed: {reason}"));
                        return Ok(Some(reason));
                    }
                    super::analysis::Verdict::NotEnoughRequests { seen, needed, .. } => {
                        short = Some(format!(
                            "{service}: the canary saw {seen} of the {needed} requests the analysis needs"
                        ));
                    }
                    super::analysis::Verdict::Pass { canary, stable } => {
                        self.set_progress(
                            run,
                            format!(
                                "analysis of {service}: passed (canary {:.1}% errors over {} requests, stable {:.1}% over {})",
                                canary.error_rate, canary.requests, stable.error_rate, stable.requests
                            ),
                        );
                    }
                }
            }
            let Some(short) = short else {
                return Ok(None);
            };
            if Instant::now() >= until {
                return Ok(Some(format!("cannot judge the step: {short}")));
            }
            self.set_progress(run, format!("waiting for traffic: {short}"));
            tokio::select! {
                biased;
                () = self.cancel.graceful.cancelled() => return Err("cancelled by the operator".to_owned()),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Puts all traffic back on the serving set in one change and deletes the new
    /// set (unless it is an old set switched back to, which stays as it was).
    async fn undo_set(
        &self,
        run: &SetRun<'_>,
        client: &Client,
        edge: &Edge,
        reason: String,
    ) -> RolloutResult {
        self.set_progress(run, format!("rolling back: {reason}"));
        let old = &run.old;
        let back = self
            .weigh_sets(run, edge, |name| undo_weight(old, &run.new, name), old, &[])
            .await;
        let mut problems = Vec::new();
        if let Err(problem) = back {
            problems.push(format!(
                "cannot give the serving set its traffic back: {problem}"
            ));
        }
        // An old set switched back to is kept as it was (at weight 0, until its
        // retire-after time); only a set made by this rollout is deleted.
        let mut made = Vec::new();
        for name in &run.new {
            match client.instances().get(name).await {
                Ok(found) if found.config.contains_key(KEY_RETIRE) => {}
                Err(e) if e.is_not_found() => {}
                _ => made.push(name.clone()),
            }
        }
        if let Err(problem) = self.retire(run, client, edge, &made).await {
            problems.push(format!("cannot delete the new set: {problem}"));
        }
        if problems.is_empty() {
            RolloutResult::RolledBack { reason }
        } else {
            RolloutResult::Failed {
                reason: format!("{reason}; then the rollback failed: {}", problems.join("; ")),
                next: "check the edge and the instances with `cul8er status`; `cul8er apply` deletes a new set left behind"
                    .to_owned(),
            }
        }
    }
}

/// The weight of backend `name` when a rollout is undone, all in one edge change:
/// the serving set 1 each, the new set 0 (never its canary weight), others as they are.
fn undo_weight(old: &[String], new: &[String], name: &str) -> Option<u32> {
    if old.iter().any(|n| n == name) {
        Some(1)
    } else if new.iter().any(|n| n == name) {
        Some(0)
    } else {
        None
    }
}

fn service_mut<'c>(
    config: &'c mut ProxyConfig,
    name: &str,
) -> Result<&'c mut cul8er_proxy::config::ServiceConfig, String> {
    config
        .services
        .iter_mut()
        .find(|s| s.name == name)
        .ok_or_else(|| format!("the edge has no service {name}"))
}

fn failed(reason: &str) -> RolloutResult {
    RolloutResult::Failed {
        reason: reason.to_owned(),
        next: "run `cul8er plan` to see where the resource stands".to_owned(),
    }
}

fn describe_pause(pause: Option<Pause>) -> String {
    match pause {
        Some(Pause::For { duration }) => format!("{}s", duration.to_std().as_secs()),
        Some(Pause::UntilPromoted) => "until promoted".to_owned(),
        None => "no time".to_owned(),
    }
}

/// Every backend's weight in the edge's configuration.
fn edge_weights(config: &ProxyConfig) -> Vec<BackendWeight> {
    config
        .services
        .iter()
        .flat_map(|s| {
            s.backends.iter().map(|b| BackendWeight {
                service: s.name.clone(),
                backend: b.name.clone(),
                weight: b.weight,
            })
        })
        .collect()
}

/// Where `action` goes on from for a rollout standing at `phase` (read against the
/// edge); `None` when it is refused: `abort` never undoes a completed switch.
fn entry_for(action: Continue, strategy: SwitchStrategy, phase: Phase) -> Option<Entry> {
    let promote = action == Continue::Promote;
    Some(match (action, phase) {
        (Continue::Abort, Phase::Switched) => return None,
        (Continue::Abort, Phase::Running { step }) => Entry::Abort { step },
        (Continue::Abort, Phase::PausedAtStep { index, weight }) => Entry::Abort {
            step: Some(StepAt { index, weight }),
        },
        (Continue::Abort, Phase::PausedBeforeSwitch) => Entry::Abort { step: None },
        (_, Phase::Switched) => Entry::Finish,
        // The paused step was judged: on with the next.
        (_, Phase::PausedAtStep { index, .. }) => Entry::Step {
            index: index + 1,
            promote,
        },
        // The step being moved to was not judged: its weights again, then on.
        (_, Phase::Running { step: Some(step) }) => Entry::Step {
            index: step.index,
            promote,
        },
        (_, Phase::PausedBeforeSwitch | Phase::Running { step: None }) => match strategy {
            SwitchStrategy::BlueGreen => Entry::Switch,
            SwitchStrategy::Canary => Entry::FirstStep { promote },
        },
    })
}

/// What `cul8er promote`, `resume` and `abort` do to a paused rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Continue {
    /// Blue-green: switch now. Canary: all traffic to the canary now.
    Promote,
    /// Blue-green: switch now. Canary: go on with the next step.
    Resume,
    /// All traffic back on the serving set, the new set deleted.
    Abort,
}

impl Continue {
    /// The command's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Resume => "resume",
            Self::Abort => "abort",
        }
    }
}

/// Continues the paused rollout `record` of `topology` with `action`, its record
/// kept in `store` (saved again if it pauses again, cleared when it ends). The
/// executor's revision should be the record's.
pub async fn continue_rollout(
    executor: &crate::execute::Executor,
    topology: &crate::topology::Topology,
    record: &PendingRollout,
    action: Continue,
    store: &super::pending::PendingStore,
    cancel: &crate::execute::Cancel,
    on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
) -> Result<(ApplyOutcome, ResourceRollout), String> {
    let resource = topology
        .resources
        .iter()
        .find(|r| r.name == record.resource)
        .ok_or_else(|| {
            format!(
                "the paused rollout is of resource {}, which topology {} no longer has; `cul8er abort` with the topology file it was started from undoes it",
                record.resource, topology.name
            )
        })?;
    let host = record
        .hosts
        .first()
        .cloned()
        .unwrap_or_else(|| resource.host.clone());
    let name = if record.new_set.set.is_empty() {
        format!("{}-{}", topology.name, resource.name)
    } else {
        format!("{}-{}-{}", topology.name, resource.name, record.new_set.set)
    };
    let run = SetRun {
        resource,
        step: Step {
            host,
            kind: ObjectKind::Set,
            name,
            action: Action::Replace,
        },
        old: record
            .old_set
            .members
            .iter()
            .map(|m| m.instance.clone())
            .collect(),
        new: record
            .new_set
            .members
            .iter()
            .map(|m| m.instance.clone())
            .collect(),
        old_label: record.old_set.set.clone(),
        new_label: record.new_set.set.clone(),
        version: record.version.clone(),
        services: services(resource),
    };
    let plan = crate::plan::Plan::empty(topology.name.clone());
    let roller = Roller {
        executor,
        plan: &plan,
        topology,
        cancel,
        on_event,
        binary: OnceCell::new(),
        pending: Some(store.clone()),
    };
    // A `running` record is one whose command stopped (it held the lease this
    // command now holds): the edge tells whether its switch happened.
    let phase = if matches!(record.phase, Phase::Running { .. }) && !run.services.is_empty() {
        let client = executor
            .clients
            .get(&run.step.host)
            .ok_or_else(|| format!("no connection to host {}", run.step.host))?;
        let config = roller.edge(client).config().await.map_err(|e| {
            format!(
                "the rollout's command stopped while it ran, and the edge, which tells whether its switch happened, cannot be read ({}); try again when the edge answers",
                error_chain(&e)
            )
        })?;
        record.phase_on_edge(&edge_weights(&config))
    } else {
        record.phase
    };
    let Some(entry) = entry_for(action, record.strategy, phase) else {
        return Err(format!(
            "the edge already switched all traffic to {}: `cul8er abort` cannot undo a completed switch; `cul8er promote` finishes it, and `cul8er rollback` then returns to the previous revision",
            run.new.join(", ")
        ));
    };
    let mut outcome = ApplyOutcome {
        revision: executor.options.revision.clone(),
        steps: Vec::new(),
        cancelled: false,
        millis: 0,
    };
    let begin = Instant::now();
    on_event(&ApplyEvent::StepStarted {
        step: run.step.clone(),
    });
    let result = roller.drive(&run, entry, None, &mut outcome).await;
    let millis = u64::try_from(begin.elapsed().as_millis()).unwrap_or(u64::MAX);
    let error = match &result {
        RolloutResult::Failed { reason, .. } => Some(reason.clone()),
        RolloutResult::RolledBack { reason } if action != Continue::Abort => Some(reason.clone()),
        _ => None,
    };
    outcome.steps.push(StepOutcome {
        step: run.step.clone(),
        status: if error.is_some() {
            StepStatus::Failed
        } else {
            StepStatus::Done
        },
        error,
        millis,
        waiting_millis: 0,
    });
    outcome.cancelled = cancel.graceful.is_cancelled();
    Ok((outcome, roller.set_record(resource, &run.new, result)))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn an_undo_gives_the_canary_nothing_and_stable_everything() {
        let old = ["shop-web-1".to_owned(), "shop-web-2".to_owned()];
        let new = ["shop-web-1-c".to_owned(), "shop-web-2-c".to_owned()];
        // At 10% the canary held 1 and stable 9 per backend; after the undo:
        assert_eq!(undo_weight(&old, &new, "shop-web-1"), Some(1));
        assert_eq!(undo_weight(&old, &new, "shop-web-2"), Some(1));
        assert_eq!(undo_weight(&old, &new, "shop-web-1-c"), Some(0));
        assert_eq!(undo_weight(&old, &new, "shop-web-2-c"), Some(0));
        assert_eq!(undo_weight(&old, &new, "shop-api-1"), None);
    }

    fn canary_run(resource: &Resource) -> SetRun<'_> {
        SetRun {
            resource,
            step: Step {
                host: "local".into(),
                kind: ObjectKind::Set,
                name: "t-web-c".into(),
                action: Action::Replace,
            },
            old: vec!["t-web-1".into()],
            new: vec!["t-web-1-c".into()],
            old_label: String::new(),
            new_label: "c".into(),
            version: None,
            services: services(resource),
        }
    }

    fn canary_topology() -> crate::topology::Topology {
        let env = |_: &str| None;
        crate::topology::parse_one(
            r#"topology t {
                network n subnet="10.9.0.1/24"
                resource web {
                    image "i"
                    network n { expose 8080 public=18080 protocol=http; }
                    strategy canary { canary { step 10; step 25 pause="manual"; step 50; step 100; }; }
                }
            }"#,
            "t.kdl",
            &crate::topology::LoadOptions::new(&env),
        )
        .unwrap()
    }

    #[test]
    fn a_canary_killed_mid_step_goes_on_from_the_recorded_step_never_the_first() {
        let resume = |phase| entry_for(Continue::Resume, SwitchStrategy::Canary, phase);
        let promote = |phase| entry_for(Continue::Promote, SwitchStrategy::Canary, phase);
        let at = |index, weight| Phase::Running {
            step: Some(StepAt { index, weight }),
        };
        // Killed while moving to step 3 (recorded first): step 3's weights again.
        assert_eq!(
            resume(at(2, 50)),
            Some(Entry::Step {
                index: 2,
                promote: false
            })
        );
        assert_eq!(
            promote(at(2, 50)),
            Some(Entry::Step {
                index: 2,
                promote: true
            })
        );
        // Paused at step 2 (judged): on with step 3.
        assert_eq!(
            resume(Phase::PausedAtStep {
                index: 1,
                weight: 25
            }),
            Some(Entry::Step {
                index: 2,
                promote: false
            })
        );
        // Killed before any step was recorded (during bring-up): the new set's
        // health again, then the first step.
        assert_eq!(
            resume(Phase::RUNNING),
            Some(Entry::FirstStep { promote: false })
        );
        assert_eq!(
            promote(Phase::RUNNING),
            Some(Entry::FirstStep { promote: true })
        );
        // And the steps run from there: the recorded step's weight, not the first's.
        let topology = canary_topology();
        let run = canary_run(&topology.resources[0]);
        let step = |index, weight| StepAt { index, weight };
        assert_eq!(run.step_at(2, false), step(2, 50));
        assert_eq!(run.step_at(1, false), step(1, 25));
        // Promoting goes to the last step; an index past it stays at the last.
        assert_eq!(run.step_at(0, true), step(3, 100));
        assert_eq!(run.step_at(9, false), step(3, 100));
    }

    /// Regression: `abort` recorded itself as running with no step, so an abort killed
    /// before its undo left a canary at 50% whose next `resume` went back to the
    /// first step (10%), and `status` no longer said which step the edge held.
    #[test]
    fn an_abort_killed_before_its_undo_leaves_the_step_recorded() {
        let topology = canary_topology();
        let run = canary_run(&topology.resources[0]);
        let at = |index, weight| StepAt { index, weight };
        let aborted_from = |phase| {
            let entry = entry_for(Continue::Abort, SwitchStrategy::Canary, phase).unwrap();
            assert!(matches!(entry, Entry::Abort { .. }), "{entry:?}");
            running_phase(&run, entry)
        };
        let paused = Phase::PausedAtStep {
            index: 1,
            weight: 25,
        };
        let recorded = aborted_from(paused);
        assert_eq!(
            recorded,
            Phase::Running {
                step: Some(at(1, 25))
            }
        );
        // A `resume` after the killed abort goes on from that step, never the first.
        assert_eq!(
            entry_for(Continue::Resume, SwitchStrategy::Canary, recorded),
            Some(Entry::Step {
                index: 1,
                promote: false
            })
        );
        let moving = Phase::Running {
            step: Some(at(2, 50)),
        };
        assert_eq!(aborted_from(moving), moving);
        assert_eq!(aborted_from(Phase::RUNNING), Phase::RUNNING);
        assert_eq!(
            running_phase(
                &run,
                entry_for(
                    Continue::Abort,
                    SwitchStrategy::BlueGreen,
                    Phase::PausedBeforeSwitch
                )
                .unwrap()
            ),
            Phase::RUNNING
        );
        // The other entries record as before.
        assert_eq!(
            running_phase(
                &run,
                Entry::Step {
                    index: 2,
                    promote: false
                }
            ),
            moving
        );
        assert_eq!(
            running_phase(&run, Entry::FirstStep { promote: true }),
            Phase::RUNNING
        );
    }

    #[test]
    fn a_switch_the_edge_made_is_finished_never_undone() {
        for strategy in [SwitchStrategy::BlueGreen, SwitchStrategy::Canary] {
            assert_eq!(entry_for(Continue::Abort, strategy, Phase::Switched), None);
            assert_eq!(
                entry_for(Continue::Resume, strategy, Phase::Switched),
                Some(Entry::Finish)
            );
            assert_eq!(
                entry_for(Continue::Promote, strategy, Phase::Switched),
                Some(Entry::Finish)
            );
            assert_eq!(
                entry_for(Continue::Abort, strategy, Phase::RUNNING),
                Some(Entry::Abort { step: None })
            );
        }
        // Blue-green before its switch: promote checks health again and switches.
        assert_eq!(
            entry_for(
                Continue::Promote,
                SwitchStrategy::BlueGreen,
                Phase::PausedBeforeSwitch
            ),
            Some(Entry::Switch)
        );
        assert_eq!(
            entry_for(Continue::Resume, SwitchStrategy::BlueGreen, Phase::RUNNING),
            Some(Entry::Switch)
        );
    }

    #[test]
    fn the_edge_weights_are_read_from_every_service() {
        let topology = canary_topology();
        let config: ProxyConfig = serde_json::from_value(serde_json::json!({
            "services": [
                {"name": "web", "backends": [
                    {"name": "t-web-1", "address": "10.9.0.2:8080", "weight": 0},
                    {"name": "t-web-1-c", "address": "10.9.0.3:8080", "weight": 1},
                ]},
                {"name": "api", "backends": [
                    {"name": "t-api-1", "address": "10.9.0.4:9090", "weight": 1},
                ]},
            ]
        }))
        .unwrap();
        let run = canary_run(&topology.resources[0]);
        let weights = edge_weights(&config);
        assert_eq!(
            weights
                .iter()
                .map(|w| (w.service.as_str(), w.backend.as_str(), w.weight))
                .collect::<Vec<_>>(),
            [
                ("web", "t-web-1", 0),
                ("web", "t-web-1-c", 1),
                ("api", "t-api-1", 1)
            ]
        );
        let record = run.record("t", "r1", Phase::RUNNING, None, Vec::new());
        assert_eq!(record.phase_on_edge(&weights), Phase::Switched);
    }

    #[tokio::test(start_paused = true)]
    async fn marking_is_retried_with_backoff_until_it_lands() {
        let calls = AtomicU32::new(0);
        let begin = Instant::now();
        let marked = retried(5, Duration::from_secs(1), |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err(format!("ETag mismatch {n}"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert_eq!(marked, Ok(()));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // 1 s after the first failure, 2 s after the second.
        assert_eq!(begin.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn marking_gives_up_after_its_attempts_with_the_last_problem() {
        let calls = AtomicU32::new(0);
        let begin = Instant::now();
        let marked = retried(MARK_ATTEMPTS, MARK_BACKOFF, |n| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Err::<(), _>(format!("timeout {n}")) }
        })
        .await;
        assert_eq!(marked, Err(format!("timeout {MARK_ATTEMPTS}")));
        assert_eq!(calls.load(Ordering::SeqCst), MARK_ATTEMPTS);
        assert_eq!(begin.elapsed(), Duration::from_secs(1 + 2 + 4 + 8));
    }
}
