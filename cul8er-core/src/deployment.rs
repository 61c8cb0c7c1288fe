//! The library's front door: a topology bound to its Incus hosts and its state
//! directory, with plan, apply, status, destroy, import and the lock commands.
//!
//! The CLI is a thin shell over [`Deployment`]; so is any Rust program that deploys.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::desired::{
    self, DesireError, DesireOptions, Desired, KEY_IMAGE, KEY_RELEASE, KEY_REPLICA, KEY_RESOURCE,
    KEY_REVISION, KEY_TOPOLOGY,
};
use crate::execute::{ApplyEvent, ApplyOptions, ApplyOutcome, Cancel, Environments, Executor};
use crate::lock::{Holder, LeaseRecord, LeaseScope, LocalLock, LockError};
use crate::observe::{self, ObserveError, Observed};
use crate::plan::{self, Plan};
use crate::release::health::{self, HealthQuery};
use crate::release::{ReleaseError, ReleaseHealth, ResolvedEnv};
use crate::state::{StateDir, StateError};
use crate::topology::{Endpoint, Topology};

/// How long a lease lasts unless renewed; renewed every third of it while apply runs.
pub const LEASE_TTL: Duration = Duration::from_secs(60);

/// A deployment operation failed before or around the steps themselves (the steps'
/// own failures are in [`ApplyOutcome`]).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The topology cannot be planned.
    #[error("cannot plan topology {topology}")]
    Desire {
        /// The topology.
        topology: String,
        /// Why.
        #[source]
        source: DesireError,
    },
    /// A host cannot be reached.
    #[error("cannot connect to host {host} of topology {topology}")]
    Connect {
        /// The topology.
        topology: String,
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: Box<incus_api::Error>,
    },
    /// A host names a remote, which needs the remote store.
    #[error(
        "host {host} names remote `{remote}`, which is not configured; add it with `cul8er remote add {remote} https://HOST:8443 --token TOKEN`"
    )]
    UnknownRemote {
        /// The host.
        host: String,
        /// The remote.
        remote: String,
    },
    /// A host's remote cannot be used.
    #[error("cannot connect to host {host} through remote `{remote}`")]
    Remote {
        /// The host.
        host: String,
        /// The remote.
        remote: String,
        /// Why.
        #[source]
        source: Box<crate::remote::RemoteError>,
    },
    /// Reading Incus failed.
    #[error(transparent)]
    Observe(#[from] ObserveError),
    /// A lock or the lease could not be taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The state directory could not be written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A saved plan no longer matches the world.
    #[error("the saved plan no longer matches what Incus holds ({}); run `cul8er plan` again", .differences.join(", "))]
    WorldMoved {
        /// The objects whose change differs, as `host/kind/name`.
        differences: Vec<String>,
    },
    /// A saved plan is for another topology.
    #[error("the plan is for topology {plan}, not {topology}")]
    WrongTopology {
        /// The plan's topology.
        plan: String,
        /// This topology.
        topology: String,
    },
    /// A release's environment cannot be resolved.
    #[error("cannot resolve the environment of resource {resource}")]
    Environment {
        /// The resource.
        resource: String,
        /// Why.
        #[source]
        source: Box<ReleaseError>,
    },
    /// `import` was asked for something it cannot do.
    #[error("cannot import instance {instance} as resource {resource}: {reason}")]
    Import {
        /// The resource.
        resource: String,
        /// The instance.
        instance: String,
        /// Why.
        reason: String,
    },
    /// A blue-green or canary rollout of the topology is paused (or was interrupted):
    /// an apply would fight it.
    #[error(
        "topology {topology} has a rollout in progress: {rollout}; `cul8er promote` or `cul8er resume` finishes it, `cul8er abort` puts the serving set back, then apply again"
    )]
    RolloutInProgress {
        /// The topology.
        topology: String,
        /// The rollout, as its record describes it.
        rollout: String,
    },
    /// `promote`, `resume` or `abort` found no rollout in progress.
    #[error("topology {topology} has no rollout in progress to {action}")]
    NoRolloutInProgress {
        /// The topology.
        topology: String,
        /// The command.
        action: &'static str,
    },
    /// The record of a rollout in progress could not be read or written.
    #[error("cannot use the rollout record of topology {topology}")]
    Pending {
        /// The topology.
        topology: String,
        /// Why.
        #[source]
        source: Box<crate::rollout::pending::PendingError>,
    },
    /// A paused rollout could not be continued.
    #[error("cannot continue the rollout of topology {topology}: {reason}")]
    Continue {
        /// The topology.
        topology: String,
        /// Why.
        reason: String,
    },
    /// An Incus request outside the steps failed.
    #[error("cannot {what} on host {host}")]
    Incus {
        /// What was being done.
        what: String,
        /// The host.
        host: String,
        /// What Incus said.
        #[source]
        source: Box<incus_api::Error>,
    },
}

/// What an apply is asked to do besides the plan.
pub struct ApplyRequest<'a> {
    /// Steps in flight at most.
    pub parallelism: usize,
    /// `Some(volumes)` when the plan is a destroy plan, so that the check against
    /// the world re-plans the same way.
    pub destroy: Option<bool>,
    /// The operator's environment, for `secret X from=env`.
    pub env: &'a (dyn Fn(&str) -> Option<String> + Send + Sync),
    /// Who applies.
    pub holder: Holder,
}

impl std::fmt::Debug for ApplyRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyRequest")
            .field("parallelism", &self.parallelism)
            .field("destroy", &self.destroy)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// What an apply did, as recorded in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// The revision id.
    pub revision: String,
    /// The plan that was applied.
    pub plan: Plan,
    /// What each step did.
    pub outcome: ApplyOutcome,
    /// The rollouts of updated and replaced instances, when there were any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutRecord>,
}

/// One instance in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStatus {
    /// The host.
    pub host: String,
    /// The instance.
    pub name: String,
    /// The resource.
    pub resource: String,
    /// `Running`, `Stopped`, ... or `missing`.
    pub status: String,
    /// The revision that last changed it.
    pub revision: Option<String>,
    /// The release version it carries.
    pub release: Option<String>,
    /// Whether it matches the topology (no pending change).
    pub up_to_date: bool,
    /// Its release service (running, stopped, crashed-restarting, with restarts and
    /// the version that runs), asked through exec; `None` when it has no release.
    #[serde(default)]
    pub release_health: Option<ReleaseHealth>,
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The topology.
    pub topology: String,
    /// Every declared and found instance.
    pub instances: Vec<InstanceStatus>,
    /// Pending changes by action, from a fresh plan.
    pub pending: plan::Summary,
    /// The lease, when someone is applying.
    pub lease: Option<LeaseRecord>,
    /// Each host's edge: its backends with weights and health, as the proxy reports.
    #[serde(default)]
    pub edges: Vec<crate::edge::EdgeStatus>,
    /// The blue-green or canary rollout in progress: its record and where it stands
    /// read against the edge; `None` when there is none.
    #[serde(default)]
    pub rollout: Option<crate::rollout::pending::RolloutStatus>,
    /// Why the record of a rollout in progress cannot be read, when it cannot.
    #[serde(default)]
    pub rollout_problem: Option<String>,
}

/// One deployment found by `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentSummary {
    /// The host.
    pub host: String,
    /// The topology.
    pub topology: String,
    /// Instances carrying its key.
    pub instances: usize,
    /// Of those, running.
    pub running: usize,
    /// The highest revision found on them.
    pub revision: Option<String>,
    /// Of the instances, those that run with their release service (if they have
    /// one) running.
    #[serde(default)]
    pub healthy: usize,
}

/// A client for `host` as the topology describes it; remotes are looked up in
/// `remotes` (`cul8er remote add`).
///
/// # Errors
///
/// [`DeployError::Connect`] when the local socket cannot be found,
/// [`DeployError::UnknownRemote`] without a remote store, [`DeployError::Remote`] for
/// a remote that is not in it or whose files are damaged.
pub fn connect_host(
    topology: &Topology,
    host: &str,
    remotes: Option<&crate::remote::RemoteStore>,
) -> Result<incus_api::Client, DeployError> {
    let declared = topology.host(host);
    let endpoint = declared.map_or(&Endpoint::Local, |h| &h.endpoint);
    let connect_error = |source: incus_api::Error| DeployError::Connect {
        topology: topology.name.clone(),
        host: host.to_owned(),
        source: Box::new(source),
    };
    let client = match endpoint {
        Endpoint::Local => incus_api::Client::local().map_err(connect_error)?,
        Endpoint::Socket { path } => incus_api::Client::unix(path).map_err(connect_error)?,
        Endpoint::Remote { remote } => match remotes {
            Some(store) => store.client(remote).map_err(|source| DeployError::Remote {
                host: host.to_owned(),
                remote: remote.clone(),
                source: Box::new(source),
            })?,
            None => {
                return Err(DeployError::UnknownRemote {
                    host: host.to_owned(),
                    remote: remote.clone(),
                });
            }
        },
    };
    Ok(match declared.and_then(|h| h.project.as_deref()) {
        Some(project) => client.project(project),
        None => client,
    })
}

/// A topology bound to its hosts and its state directory.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The topology.
    pub topology: Topology,
    /// Clients by host name.
    pub clients: BTreeMap<String, incus_api::Client>,
    /// The state directory.
    pub state: StateDir,
    /// Settings the topology does not carry.
    pub options: DesireOptions,
    /// The directory relative release artifacts are found in: the topology file's.
    pub artifact_base: Option<std::path::PathBuf>,
}

impl Deployment {
    /// Binds `topology` to clients made from its hosts' endpoints, with remotes from
    /// the default remote store (`$CUL8ER_CONFIG_DIR`, `$XDG_CONFIG_HOME/cul8er` or
    /// `~/.config/cul8er`).
    ///
    /// # Errors
    ///
    /// As [`connect_host`].
    pub fn connect(topology: Topology, state: StateDir) -> Result<Self, DeployError> {
        let store = crate::remote::RemoteStore::default_dir(|k| std::env::var_os(k))
            .ok()
            .map(crate::remote::RemoteStore::new);
        Self::connect_with(topology, state, store.as_ref())
    }

    /// Binds `topology` to clients made from its hosts' endpoints, with remotes from
    /// `remotes`.
    ///
    /// # Errors
    ///
    /// As [`connect_host`].
    pub fn connect_with(
        topology: Topology,
        state: StateDir,
        remotes: Option<&crate::remote::RemoteStore>,
    ) -> Result<Self, DeployError> {
        let mut clients = BTreeMap::new();
        for host in &topology.hosts {
            clients.insert(
                host.name.clone(),
                connect_host(&topology, &host.name, remotes)?,
            );
        }
        Ok(Self::with_clients(topology, clients, state))
    }

    /// Binds `topology` to the given clients (tests, embedders with their own
    /// transport).
    #[must_use]
    pub fn with_clients(
        topology: Topology,
        clients: BTreeMap<String, incus_api::Client>,
        state: StateDir,
    ) -> Self {
        Self {
            topology,
            clients,
            state,
            options: DesireOptions::default(),
            artifact_base: None,
        }
    }

    /// What the topology asks Incus for.
    ///
    /// # Errors
    ///
    /// [`DeployError::Desire`] naming the blocks that cannot be deployed yet.
    pub fn desired(&self) -> Result<Desired, DeployError> {
        desired::desire(&self.topology, &self.options).map_err(|source| DeployError::Desire {
            topology: self.topology.name.clone(),
            source,
        })
    }

    /// Reads what Incus holds for the topology.
    ///
    /// # Errors
    ///
    /// [`DeployError::Observe`] naming the host and listing that failed.
    pub async fn observe(&self, desired: &Desired) -> Result<Observed, DeployError> {
        Ok(observe::observe(desired, &self.clients).await?)
    }

    /// Plans the changes that make Incus hold what the topology asks, release services
    /// stopped inside running instances included (one bounded exec per running
    /// instance that has a release, see [`observe::observe_services`]).
    ///
    /// # Errors
    ///
    /// As [`Deployment::desired`] and [`Deployment::observe`].
    pub async fn plan(&self) -> Result<Plan, DeployError> {
        let desired = self.desired()?;
        let mut observed = self.observe(&desired).await?;
        observe::observe_services(&desired, &self.clients, &mut observed).await;
        let plan = plan::plan(&desired, &observed);
        // A paused or interrupted blue-green or canary rollout: its sets are its own.
        let rollout = match self.pending_rollout().await {
            Ok(rollout) => rollout,
            Err(error) => {
                tracing::warn!(error = %crate::execute::error_chain(&error), "cannot read the rollout record");
                None
            }
        };
        Ok(match rollout {
            Some(rollout) => plan.beside_rollout(&rollout),
            None => plan,
        })
    }

    /// Plans the removal of everything the topology has in Incus; volumes only when
    /// `volumes` is set.
    ///
    /// # Errors
    ///
    /// As [`Deployment::observe`].
    pub async fn plan_destroy(&self, volumes: bool) -> Result<Plan, DeployError> {
        // Destroy works from what Incus holds, so it also works for topologies that
        // use blocks the planner refuses.
        let desired = self.desired().unwrap_or_else(|_| Desired {
            topology: self.topology.name.clone(),
            hosts: self.clients.keys().cloned().collect(),
            networks: Vec::new(),
            volumes: Vec::new(),
            instances: Vec::new(),
            notes: Vec::new(),
        });
        let observed = self.observe(&desired).await?;
        Ok(plan::plan_destroy(&observed, volumes))
    }

    /// The host whose project holds the lease and the revision counter: the first
    /// host of the topology.
    fn lease_scope(&self) -> Result<LeaseScope, DeployError> {
        let (host, client) = self
            .clients
            .iter()
            .next()
            .ok_or_else(|| DeployError::Import {
                resource: String::new(),
                instance: String::new(),
                reason: "the topology has no host".to_owned(),
            })?;
        let project = self
            .topology
            .host(host)
            .and_then(|h| h.project.clone())
            .unwrap_or_else(|| "default".to_owned());
        Ok(LeaseScope {
            client: client.clone(),
            host: host.clone(),
            project,
            topology: self.topology.name.clone(),
        })
    }

    /// Who holds the lease, if anyone.
    ///
    /// # Errors
    ///
    /// [`DeployError::Lock`] when the project cannot be read.
    pub async fn lock_status(&self) -> Result<Option<LeaseRecord>, DeployError> {
        Ok(self.lease_scope()?.status().await?)
    }

    /// Removes the lease whoever holds it; returns the record removed.
    ///
    /// # Errors
    ///
    /// [`DeployError::Lock`] when the project cannot be changed.
    pub async fn lock_release_force(&self) -> Result<Option<LeaseRecord>, DeployError> {
        Ok(self.lease_scope()?.force_release().await?)
    }

    /// Applies `plan`: takes the local lock and the server lease, checks that the
    /// world still gives the same plan, records the revision, runs the steps (the
    /// lease renewed meanwhile), records the outcome and gives the lease back.
    ///
    /// # Errors
    ///
    /// [`DeployError::Lock`] when someone else is applying (the error names them),
    /// [`DeployError::WorldMoved`] when the plan is stale, and the errors of
    /// planning. Failed steps are not errors: they are in the report's outcome.
    pub async fn apply(
        &self,
        plan: &Plan,
        request: &ApplyRequest<'_>,
        cancel: &Cancel,
        on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
    ) -> Result<ApplyReport, DeployError> {
        let topology = &self.topology.name;
        if plan.topology != *topology {
            return Err(DeployError::WrongTopology {
                plan: plan.topology.clone(),
                topology: topology.clone(),
            });
        }
        let _local = LocalLock::acquire(
            self.state.topology_dir(topology).join("lock"),
            topology,
            &request.holder,
        )?;
        let scope = self.lease_scope()?;
        let mut lease = scope.acquire(&request.holder, LEASE_TTL).await?;
        let result = self
            .apply_leased(plan, request, cancel, on_event, &mut lease)
            .await;
        let released = lease.release().await;
        let report = result?;
        released?;
        Ok(report)
    }

    async fn apply_leased(
        &self,
        plan: &Plan,
        request: &ApplyRequest<'_>,
        cancel: &Cancel,
        on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
        lease: &mut crate::lock::Lease,
    ) -> Result<ApplyReport, DeployError> {
        let topology = &self.topology.name;
        // Planning again reads every release service (one bounded exec each), which
        // can outlast the lease's time to live: it is renewed meanwhile, so that no
        // other operator takes a lapsed lease while this apply goes on to its steps.
        let planned = tokio_util::sync::CancellationToken::new();
        let (current, kept) = tokio::join!(
            async {
                let current = match request.destroy {
                    Some(volumes) => self.plan_destroy(volumes).await,
                    None => self.plan().await,
                };
                planned.cancel();
                current
            },
            lease.keep_alive(&planned)
        );
        kept?;
        let current = current?;
        let differences = plan.differences(&current);
        if !differences.is_empty() {
            return Err(DeployError::WorldMoved { differences });
        }
        let pending = self.pending_store()?;
        if request.destroy.is_none()
            && let Some(rollout) = pending.load().await.map_err(|e| self.pending_error(e))?
        {
            return Err(DeployError::RolloutInProgress {
                topology: topology.clone(),
                rollout: rollout.to_string(),
            });
        }
        let mut environments = Environments::new();
        if request.destroy.is_none() {
            for resource in &self.topology.resources {
                if resource.release.is_some() {
                    let env = ResolvedEnv::resolve(&resource.environment, request.env).map_err(
                        |source| DeployError::Environment {
                            resource: resource.name.clone(),
                            source: Box::new(source),
                        },
                    )?;
                    environments.insert(resource.name.clone(), env);
                }
            }
        }
        let revision = crate::lock::revision_id(std::time::SystemTime::now());
        self.state
            .write_record(topology, &revision, "topology", &self.topology)?;
        self.state.write_record(topology, &revision, "plan", plan)?;
        let executor = Executor {
            clients: self.clients.clone(),
            environments,
            options: ApplyOptions {
                parallelism: request.parallelism,
                revision: revision.clone(),
                artifact_base: self.artifact_base.clone(),
                ..ApplyOptions::default()
            },
        };
        let done = tokio_util::sync::CancellationToken::new();
        let keep = async {
            let kept = lease.keep_alive(&done).await;
            if let Err(e) = &kept {
                // Without the lease another operator may start: start nothing more.
                tracing::warn!(error = %e, "lost the lease; stopping");
                cancel.graceful.cancel();
            }
            kept
        };
        let run = async {
            // Updated and replaced instances roll out by their resource's strategy.
            let report = crate::rollout::apply_with(
                &executor,
                &self.topology,
                plan,
                self.options.edge_binary.as_ref(),
                Some(&pending),
                cancel,
                on_event,
            )
            .await;
            done.cancel();
            report
        };
        let (report, kept) = tokio::join!(run, keep);
        let crate::rollout::RolloutReport {
            outcome,
            record: rollout,
        } = report;
        // A destroy takes a rollout's record (and a pause request) with the sets.
        if request.destroy.is_some() && !outcome.cancelled && outcome.failures().next().is_none() {
            pending.clear().await.map_err(|e| self.pending_error(e))?;
        }
        if let Some(record) = &rollout {
            self.state
                .write_record(topology, &revision, "rollout", record)?;
        }
        self.state
            .write_record(topology, &revision, "outcome", &outcome)?;
        kept?;
        Ok(ApplyReport {
            revision,
            plan: plan.clone(),
            outcome,
            rollout,
        })
    }

    fn pending_store(&self) -> Result<crate::rollout::pending::PendingStore, DeployError> {
        Ok(crate::rollout::pending::PendingStore::new(
            self.lease_scope()?,
        ))
    }

    fn pending_error(&self, source: crate::rollout::pending::PendingError) -> DeployError {
        DeployError::Pending {
            topology: self.topology.name.clone(),
            source: Box::new(source),
        }
    }

    /// The blue-green or canary rollout in progress, if any.
    ///
    /// # Errors
    ///
    /// [`DeployError::Pending`] when its record cannot be read.
    pub async fn pending_rollout(
        &self,
    ) -> Result<Option<crate::rollout::pending::PendingRollout>, DeployError> {
        self.pending_store()?
            .load()
            .await
            .map_err(|e| self.pending_error(e))
    }

    /// Asks the rollout running in another command to pause at its next step
    /// (`cul8er pause`). Takes no lease: the running command holds it.
    ///
    /// # Errors
    ///
    /// [`DeployError::NoRolloutInProgress`] when there is none, [`DeployError::Pending`]
    /// when the record cannot be read or written.
    pub async fn pause_rollout(
        &self,
        holder: &Holder,
    ) -> Result<crate::rollout::pending::PauseOutcome, DeployError> {
        match self.pending_store()?.request_pause(holder).await {
            Ok(outcome) => Ok(outcome),
            Err(crate::rollout::pending::PendingError::NoRollout { .. }) => {
                Err(DeployError::NoRolloutInProgress {
                    topology: self.topology.name.clone(),
                    action: "pause",
                })
            }
            Err(e) => Err(self.pending_error(e)),
        }
    }

    /// Continues the paused rollout (`cul8er promote`, `resume`, `abort`): takes the
    /// lock and the lease, goes on from where it stopped (or undoes it), records the
    /// outcome in its revision and clears the record when the rollout is over.
    ///
    /// `abort` of a record that cannot be read clears it and changes nothing else:
    /// `cul8er apply` then deletes a new set left behind.
    ///
    /// # Errors
    ///
    /// [`DeployError::NoRolloutInProgress`], [`DeployError::Lock`] when someone else
    /// applies, [`DeployError::Pending`], [`DeployError::Continue`] when the record's
    /// resource is not in the topology.
    pub async fn continue_rollout(
        &self,
        action: crate::rollout::switch::Continue,
        holder: &Holder,
        cancel: &Cancel,
        on_event: &(dyn Fn(&ApplyEvent) + Send + Sync),
    ) -> Result<ApplyReport, DeployError> {
        let topology = &self.topology.name;
        let _local = LocalLock::acquire(
            self.state.topology_dir(topology).join("lock"),
            topology,
            holder,
        )?;
        let scope = self.lease_scope()?;
        let store = crate::rollout::pending::PendingStore::new(scope.clone());
        let mut lease = scope.acquire(holder, LEASE_TTL).await?;
        let result = async {
            let record = match store.load().await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    return Err(DeployError::NoRolloutInProgress {
                        topology: topology.clone(),
                        action: action.as_str(),
                    });
                }
                Err(error) if action == crate::rollout::switch::Continue::Abort => {
                    tracing::warn!(error = %crate::execute::error_chain(&error), "clearing an unreadable rollout record");
                    store.clear().await.map_err(|e| self.pending_error(e))?;
                    return Err(self.pending_error(error));
                }
                Err(error) => return Err(self.pending_error(error)),
            };
            let executor = Executor {
                clients: self.clients.clone(),
                environments: Environments::new(),
                options: ApplyOptions {
                    revision: record.revision.clone(),
                    artifact_base: self.artifact_base.clone(),
                    ..ApplyOptions::default()
                },
            };
            let done = tokio_util::sync::CancellationToken::new();
            let keep = async {
                let kept = lease.keep_alive(&done).await;
                if kept.is_err() {
                    cancel.graceful.cancel();
                }
                kept
            };
            let run = async {
                let ran = crate::rollout::switch::continue_rollout(
                    &executor,
                    &self.topology,
                    &record,
                    action,
                    &store,
                    cancel,
                    on_event,
                )
                .await;
                done.cancel();
                ran
            };
            let (ran, kept) = tokio::join!(run, keep);
            let (outcome, resource) = ran.map_err(|reason| DeployError::Continue {
                topology: topology.clone(),
                reason,
            })?;
            let rollout = crate::rollout::RolloutRecord {
                revision: record.revision.clone(),
                result: resource.result.clone(),
                resources: vec![resource],
            };
            self.state
                .write_record(topology, &record.revision, "rollout", &rollout)?;
            self.state
                .write_record(topology, &record.revision, "outcome", &outcome)?;
            kept?;
            Ok(ApplyReport {
                revision: record.revision.clone(),
                plan: crate::plan::Plan::empty(topology.clone()),
                outcome,
                rollout: Some(rollout),
            })
        }
        .await;
        let released = lease.release().await;
        let report = result?;
        released?;
        Ok(report)
    }

    /// What runs, instance by instance, with the changes a plan would make.
    ///
    /// # Errors
    ///
    /// As [`Deployment::plan`].
    pub async fn status(&self) -> Result<Status, DeployError> {
        let desired = self.desired()?;
        let mut observed = self.observe(&desired).await?;
        observe::observe_services(&desired, &self.clients, &mut observed).await;
        let plan = plan::plan(&desired, &observed);
        let pending: BTreeSet<(&str, &str)> = plan
            .actionable()
            .map(|c| (c.host.as_str(), c.name.as_str()))
            .collect();
        let mut instances = Vec::new();
        let mut seen = BTreeSet::new();
        for (host, state) in &observed.hosts {
            for instance in &state.instances {
                seen.insert((host.clone(), instance.name.clone()));
                instances.push(InstanceStatus {
                    host: host.clone(),
                    name: instance.name.clone(),
                    resource: instance.key(KEY_RESOURCE).unwrap_or_default().to_owned(),
                    status: instance.status.clone(),
                    revision: instance.key(KEY_REVISION).map(str::to_owned),
                    release: instance.key(KEY_RELEASE).map(str::to_owned),
                    up_to_date: !pending.contains(&(host.as_str(), instance.name.as_str())),
                    release_health: None,
                });
            }
        }
        for instance in &desired.instances {
            if !seen.contains(&(instance.host.clone(), instance.name.clone())) {
                instances.push(InstanceStatus {
                    host: instance.host.clone(),
                    name: instance.name.clone(),
                    resource: instance.resource.clone(),
                    status: "missing".to_owned(),
                    revision: None,
                    release: None,
                    up_to_date: false,
                    release_health: None,
                });
            }
        }
        instances.sort_by(|a, b| (&a.host, &a.name).cmp(&(&b.host, &b.name)));
        self.release_health(&desired, &observed, &mut instances)
            .await;
        let edges = crate::edge::edge_status(&desired, &observed);
        let (rollout, rollout_problem) = match self.pending_rollout().await {
            Ok(record) => (
                record.map(|r| crate::rollout::pending::RolloutStatus::on_edges(r, &edges)),
                None,
            ),
            Err(e) => (None, Some(crate::execute::error_chain(&e))),
        };
        Ok(Status {
            topology: self.topology.name.clone(),
            instances,
            pending: plan.summary,
            lease: self.lock_status().await?,
            edges,
            rollout,
            rollout_problem,
        })
    }

    /// Fills in each instance's release health: what the observation read already, else
    /// one bounded exec per running instance that has a release (the topology's, or
    /// the one found in an instance the topology no longer declares).
    async fn release_health(
        &self,
        desired: &Desired,
        observed: &Observed,
        instances: &mut [InstanceStatus],
    ) {
        let apps: BTreeMap<(&str, &str), &str> = desired
            .instances
            .iter()
            .filter_map(|i| {
                let release = i.release.as_ref()?;
                Some(((i.host.as_str(), i.name.as_str()), release.name.as_str()))
            })
            .collect();
        let mut asked = Vec::new();
        let mut queries = Vec::new();
        for instance in instances.iter_mut() {
            instance.release_health = observed
                .hosts
                .get(&instance.host)
                .and_then(|h| h.services.get(&instance.name))
                .cloned();
        }
        for (index, instance) in instances.iter().enumerate() {
            if instance.release_health.is_some() {
                continue;
            }
            let app = apps
                .get(&(instance.host.as_str(), instance.name.as_str()))
                .copied();
            if app.is_none() && instance.release.is_none() {
                continue;
            }
            let Some(client) = self.clients.get(&instance.host) else {
                continue;
            };
            if !instance.status.eq_ignore_ascii_case("running") {
                continue;
            }
            asked.push(index);
            queries.push(HealthQuery {
                client,
                instance: &instance.name,
                app,
            });
        }
        let answers =
            health::health_of_many(&queries, health::HEALTH_CONCURRENCY, health::HEALTH_TIMEOUT)
                .await;
        for (index, answer) in asked.into_iter().zip(answers) {
            instances[index].release_health = answer;
        }
        for instance in instances.iter_mut() {
            let app = apps
                .get(&(instance.host.as_str(), instance.name.as_str()))
                .copied();
            if instance.release_health.is_none()
                && instance.status != "missing"
                && !instance.status.eq_ignore_ascii_case("running")
                && let Some(app) = app
            {
                instance.release_health =
                    Some(ReleaseHealth::instance_not_running(app, &instance.status));
            }
        }
    }

    /// Brings the unmanaged instance `instance` under management as the next free
    /// replica of `resource`, without replacing it: its `user.cul8er.*` keys are set
    /// and, when its name differs from the derived one, it is renamed (stopped for
    /// the rename and started again). The next plan shows what else differs.
    ///
    /// # Errors
    ///
    /// [`DeployError::Import`] when the resource is unknown, the instance belongs to
    /// a topology already or every replica exists; [`DeployError::Incus`] when Incus
    /// refuses a step.
    pub async fn import(&self, resource: &str, instance: &str) -> Result<String, DeployError> {
        let import_error = |reason: String| DeployError::Import {
            resource: resource.to_owned(),
            instance: instance.to_owned(),
            reason,
        };
        let Some(declared) = self.topology.resource(resource) else {
            return Err(import_error(format!(
                "topology {} has no resource {resource}",
                self.topology.name
            )));
        };
        let host = declared.host.clone();
        let client = self
            .clients
            .get(&host)
            .ok_or_else(|| import_error(format!("no connection to host {host}")))?;
        let incus = |what: &str| {
            let what = what.to_owned();
            let host = host.clone();
            move |source: incus_api::Error| DeployError::Incus {
                what,
                host,
                source: Box::new(source),
            }
        };
        let (current, _) = client
            .instances()
            .get_with_etag(instance)
            .await
            .map_err(incus(&format!("read instance {instance}")))?;
        if let Some(owner) = current.config.get(KEY_TOPOLOGY) {
            return Err(import_error(format!(
                "it already belongs to topology {owner}"
            )));
        }
        let desired = self.desired()?;
        let observed = self.observe(&desired).await?;
        let taken: BTreeSet<&str> = observed
            .hosts
            .get(&host)
            .map(|h| h.instances.iter().map(|i| i.name.as_str()).collect())
            .unwrap_or_default();
        let Some(target) = desired
            .instances
            .iter()
            .find(|i| i.resource == resource && !taken.contains(i.name.as_str()))
        else {
            return Err(import_error(format!(
                "all {} replicas of {resource} exist",
                declared.replicas
            )));
        };
        if target.name != instance {
            let running = current.is_running();
            let wait = Duration::from_secs(120);
            if running {
                let op = client
                    .instances()
                    .stop(instance, false, None)
                    .await
                    .map_err(incus(&format!("stop instance {instance}")))?;
                op.wait(wait)
                    .await
                    .and_then(incus_api::Operation::into_success)
                    .map_err(incus(&format!("stop instance {instance}")))?;
            }
            let op = client
                .instances()
                .rename(instance, &target.name)
                .await
                .map_err(incus(&format!("rename instance {instance}")))?;
            op.wait(wait)
                .await
                .and_then(incus_api::Operation::into_success)
                .map_err(incus(&format!("rename instance {instance}")))?;
            if running {
                let op = client
                    .instances()
                    .start(&target.name)
                    .await
                    .map_err(incus(&format!("start instance {}", target.name)))?;
                op.wait(wait)
                    .await
                    .and_then(incus_api::Operation::into_success)
                    .map_err(incus(&format!("start instance {}", target.name)))?;
            }
        }
        let (current, etag) = client
            .instances()
            .get_with_etag(&target.name)
            .await
            .map_err(incus(&format!("read instance {}", target.name)))?;
        let mut put = current.to_put();
        for key in [KEY_TOPOLOGY, KEY_RESOURCE, KEY_REPLICA, KEY_IMAGE] {
            if let Some(value) = target.config.get(key) {
                put.config.insert(key.to_owned(), value.clone());
            }
        }
        let op = client
            .instances()
            .update(&target.name, &put, etag.as_deref())
            .await
            .map_err(incus(&format!("update instance {}", target.name)))?;
        op.wait(Duration::from_secs(120))
            .await
            .and_then(incus_api::Operation::into_success)
            .map_err(incus(&format!("update instance {}", target.name)))?;
        Ok(target.name.clone())
    }
}

/// Every deployment found on `clients` (from the `user.cul8er.*` keys), with its
/// revision, how many of its instances run, and how many are healthy: running with
/// their release service running (one exec each, bounded in time and concurrency).
///
/// # Errors
///
/// [`DeployError::Incus`] naming the host that could not be listed.
pub async fn list(
    clients: &BTreeMap<String, incus_api::Client>,
) -> Result<Vec<DeploymentSummary>, DeployError> {
    let mut found = Vec::new();
    for (host, client) in clients {
        let options =
            incus_api::instances::ListOptions::filter(format!("config.{KEY_TOPOLOGY} eq .+"));
        let instances =
            client
                .instances()
                .list(&options)
                .await
                .map_err(|source: incus_api::Error| DeployError::Incus {
                    what: "list instances".to_owned(),
                    host: host.clone(),
                    source: Box::new(source),
                })?;
        // Running instances with a release are healthy when their service runs: one
        // bounded exec each, the app found inside (list has no topology).
        let with_release: Vec<&incus_api::instances::Instance> = instances
            .iter()
            .filter(|i| i.is_running() && i.config.contains_key(KEY_RELEASE))
            .collect();
        let queries: Vec<HealthQuery<'_>> = with_release
            .iter()
            .map(|i| HealthQuery {
                client,
                instance: &i.name,
                app: None,
            })
            .collect();
        let answers =
            health::health_of_many(&queries, health::HEALTH_CONCURRENCY, health::HEALTH_TIMEOUT)
                .await;
        let unhealthy: BTreeSet<&str> = with_release
            .iter()
            .zip(&answers)
            .filter(|(_, answer)| answer.as_ref().is_some_and(|h| !h.is_healthy()))
            .map(|(i, _)| i.name.as_str())
            .collect();
        let mut by_topology: BTreeMap<String, DeploymentSummary> = BTreeMap::new();
        for instance in &instances {
            let Some(topology) = instance.config.get(KEY_TOPOLOGY) else {
                continue;
            };
            let entry = by_topology
                .entry(topology.clone())
                .or_insert_with(|| DeploymentSummary {
                    host: host.clone(),
                    topology: topology.clone(),
                    instances: 0,
                    running: 0,
                    revision: None,
                    healthy: 0,
                });
            entry.instances += 1;
            if instance.is_running() {
                entry.running += 1;
                if !unhealthy.contains(instance.name.as_str()) {
                    entry.healthy += 1;
                }
            }
            if let Some(revision) = instance.config.get(KEY_REVISION)
                && entry.revision.as_ref().is_none_or(|r| r < revision)
            {
                entry.revision = Some(revision.clone());
            }
        }
        found.extend(by_topology.into_values());
    }
    Ok(found)
}
