//! The cul8er library: topologies, the planner, the executor and rollouts.
//!
//! It never prints and never exits; the `cul8er` binary is a thin shell over it.
//!
//! The path of a deploy: a [`topology::Topology`] (parsed or built in code) →
//! [`desired::desire`] (the objects it asks Incus for) → [`observe`] (what Incus
//! holds) → [`plan::plan`] (pure: create, update, replace, delete, with drift) →
//! [`Deployment::apply`] (lock, lease, the executor's steps, the revision recorded
//! in the state directory). [`Deployment`] bundles it with the hosts' clients.
//!
//! The planner needs no Incus: here it plans a topology against a host that holds
//! nothing yet.
//!
//! ```
//! use cul8er_core::{desired, observe::Observed, plan, topology};
//!
//! let env = |_: &str| None;
//! let demo = topology::parse_one(
//!     r#"topology demo {
//!         resource web { image "cul8er-busybox"; replicas 2; limits { memory "64MiB" } }
//!     }"#,
//!     "cul8er.kdl",
//!     &topology::LoadOptions::new(&env),
//! )?;
//! let wanted = desired::desire(&demo, &desired::DesireOptions::default())?;
//! let plan = plan::plan(&wanted, &Observed::default());
//! assert_eq!(plan.summary.create, 2);
//! assert!(plan.to_string().contains("+ instance demo-web-1 (web)"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Against real hosts (the local Incus here), with progress events:
//!
//! ```no_run
//! use cul8er_core::{ApplyRequest, Deployment, execute::Cancel, lock::Holder, state::StateDir};
//! # async fn deploy() -> Result<(), Box<dyn std::error::Error>> {
//! let env = |name: &str| std::env::var(name).ok();
//! let path = std::path::Path::new("cul8er.kdl");
//! let topology = cul8er_core::topology::load(path, &cul8er_core::topology::LoadOptions::new(&env))?
//!     .remove(0);
//! let deployment = Deployment::connect(topology, StateDir::beside(path))?;
//! let plan = deployment.plan().await?;
//! print!("{plan}");
//! let request = ApplyRequest { parallelism: 8, destroy: None, env: &env, holder: Holder::current() };
//! let report = deployment
//!     .apply(&plan, &request, &Cancel::new(), &|event| eprintln!("{event:?}"))
//!     .await?;
//! assert!(report.outcome.succeeded());
//! # Ok(()) }
//! ```

pub mod connect;
mod deployment;
pub mod desired;
pub mod edge;
pub mod execute;
pub mod health;
pub mod lock;
pub mod observe;
pub mod plan;
pub mod release;
pub mod remote;
pub mod rollout;
pub mod state;
pub mod topology;

pub use deployment::{
    ApplyReport, ApplyRequest, DeployError, Deployment, DeploymentSummary, InstanceStatus,
    LEASE_TTL, Status, connect_host, list,
};
