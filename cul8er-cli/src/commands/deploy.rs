//! `plan`, `apply`, `status`, `destroy`, `list`, `import` and `lock`: thin shells over
//! [`cul8er_core::Deployment`]. Signals are handled here, never in the library: the
//! first Ctrl-C lets the steps in flight finish and starts no new one, the second
//! aborts them.

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use cul8er_core::execute::{ApplyEvent, Cancel};
use cul8er_core::lock::{Holder, LeaseRecord};
use cul8er_core::plan::Plan;
use cul8er_core::state::StateDir;
use cul8er_core::topology::{self, LoadOptions, Topology};
use cul8er_core::{ApplyRequest, DeployError, Deployment};
use serde::{Deserialize, Serialize};

use crate::cli::{
    ApplyArgs, DestroyArgs, ImportArgs, ListArgs, LockCommand, OutputFormat, PlanArgs, TopologyArgs,
};
use crate::exit::Outcome;
use crate::output::{Settings, print_stdout};
use crate::progress::Progress;

use super::{process_env, read_file};

/// A plan saved by `plan --out`, with what `apply FILE` needs to find its topology.
#[derive(Debug, Serialize, Deserialize)]
struct SavedPlan {
    /// Marks the file as a saved plan, and its layout version.
    cul8er_saved_plan: u32,
    /// The topology file, absolute.
    topology_file: PathBuf,
    /// The topology's name.
    topology: String,
    /// The state directory.
    state_dir: PathBuf,
    /// `Some(volumes)` for a destroy plan.
    destroy: Option<bool>,
    /// The plan.
    plan: Plan,
}

pub(super) fn runtime() -> Result<tokio::runtime::Runtime, Outcome> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| {
            Outcome::Unexpected(anyhow::Error::new(e).context("cannot start the async runtime"))
        })
}

/// Reads and validates the topology; problems are printed as diagnostics.
pub(super) fn load(
    file: &Path,
    name: Option<&str>,
    settings: &Settings,
) -> Result<Topology, Outcome> {
    let source = read_file(file)?;
    let env = process_env;
    let mut options = LoadOptions::new(&env);
    if let Some(name) = name {
        options = options.topology(name);
    }
    topology::parse_one(&source, &file.display().to_string(), &options).map_err(|err| {
        settings.eprint_report(&err);
        Outcome::UserError
    })
}

pub(super) fn state_dir(file: &Path, given: Option<&PathBuf>) -> StateDir {
    given.map_or_else(|| StateDir::beside(file), StateDir::new)
}

pub(super) fn connect(args: &TopologyArgs, settings: &Settings) -> Result<Deployment, Outcome> {
    let topology = load(&args.file, args.topology.as_deref(), settings)?;
    let mut deployment =
        Deployment::connect(topology, state_dir(&args.file, args.state_dir.as_ref()))
            .map_err(failure)?;
    deployment.artifact_base = Some(topology_dir(&args.file));
    Ok(deployment)
}

/// The directory of a topology file, where its relative artifacts are.
fn topology_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Sorts a library error into the user's mistake (exit 1) or an unexpected failure.
pub(super) fn failure(error: DeployError) -> Outcome {
    let text = cul8er_core::execute::error_chain(&error);
    match &error {
        DeployError::Desire { .. }
        | DeployError::UnknownRemote { .. }
        | DeployError::Remote { .. }
        | DeployError::Lock(
            cul8er_core::lock::LockError::Held { .. }
            | cul8er_core::lock::LockError::HeldLocally { .. },
        )
        | DeployError::WorldMoved { .. }
        | DeployError::WrongTopology { .. }
        | DeployError::Environment { .. }
        | DeployError::Import { .. }
        | DeployError::RolloutInProgress { .. }
        | DeployError::NoRolloutInProgress { .. }
        | DeployError::Continue { .. } => Outcome::UserReport(miette::miette!("{text}")),
        _ => Outcome::Unexpected(anyhow::Error::new(error)),
    }
}

const RESET: &str = "\x1b[0m";

/// The plan's text with its signs coloured, like `terraform plan`.
fn render_plan(plan: &Plan, color: bool) -> String {
    let text = plan.to_string();
    if !color {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 256);
    for line in text.lines() {
        let sign = line.trim_start().split(' ').next().unwrap_or_default();
        let code = match sign {
            "+" => "\x1b[32m",
            "~" => "\x1b[33m",
            "-/+" => "\x1b[35m",
            "-" => "\x1b[31m",
            "=" => "\x1b[36m",
            _ if line.starts_with("Plan:") || line.starts_with("No changes") => "\x1b[1m",
            _ => "",
        };
        if code.is_empty() {
            out.push_str(line);
        } else {
            out.push_str(&format!("{code}{line}{RESET}"));
        }
        out.push('\n');
    }
    out
}

fn stdout_color(settings: &Settings) -> bool {
    settings.color && std::io::stdout().is_terminal()
}

pub(super) fn print_json(value: &impl Serialize) -> Result<(), Outcome> {
    let json = serde_json::to_string_pretty(value).map_err(|e| Outcome::Unexpected(e.into()))?;
    print_stdout(&format!("{json}\n"));
    Ok(())
}

/// `cul8er plan`.
pub(crate) fn plan(args: &PlanArgs, settings: &Settings) -> Outcome {
    let outcome = plan_inner(args, settings);
    if !args.detailed_exitcode {
        return outcome;
    }
    // Terraform's convention: 0 nothing to do, 2 changes, 1 any error.
    match outcome {
        Outcome::Unexpected(error) => {
            settings.eprint_line(&format!("error: {error:#}"));
            Outcome::Code(1)
        }
        other => other,
    }
}

fn plan_inner(args: &PlanArgs, settings: &Settings) -> Outcome {
    let deployment = match connect(&args.topology, settings) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let destroy = args.destroy.then_some(false);
    let planned = runtime.block_on(async {
        match destroy {
            Some(volumes) => deployment.plan_destroy(volumes).await,
            None => deployment.plan().await,
        }
    });
    let plan = match planned {
        Ok(plan) => plan,
        Err(e) => return failure(e),
    };
    if let Some(out) = &args.out {
        let topology_file =
            std::path::absolute(&args.topology.file).unwrap_or_else(|_| args.topology.file.clone());
        let state = std::path::absolute(deployment.state.root())
            .unwrap_or_else(|_| deployment.state.root().to_owned());
        let saved = SavedPlan {
            cul8er_saved_plan: 1,
            topology_file,
            topology: deployment.topology.name.clone(),
            state_dir: state,
            destroy,
            plan: plan.clone(),
        };
        let json = match serde_json::to_vec_pretty(&saved) {
            Ok(json) => json,
            Err(e) => return Outcome::Unexpected(e.into()),
        };
        if let Err(e) = cul8er_core::state::write_atomic(out, &json) {
            return Outcome::Unexpected(anyhow::Error::new(e).context("cannot save the plan"));
        }
    }
    match settings.format {
        OutputFormat::Json => {
            if let Err(outcome) = print_json(&plan) {
                return outcome;
            }
        }
        OutputFormat::Human => {
            print_stdout(&render_plan(&plan, stdout_color(settings)));
            if let Some(out) = &args.out {
                settings.eprint_line(&format!(
                    "Saved the plan to {}; `cul8er apply {}` applies exactly it.",
                    out.display(),
                    out.display()
                ));
            }
        }
    }
    if args.detailed_exitcode && plan.has_changes() {
        Outcome::Code(2)
    } else {
        Outcome::Success
    }
}

/// Asks on the terminal; anything but `yes` declines.
fn confirm(question: &str) -> Result<bool, Outcome> {
    if !std::io::stdin().is_terminal() {
        return Err(Outcome::UserReport(miette::miette!(
            help = "review the plan with `cul8er plan`, then pass --auto-approve",
            "cannot ask for confirmation: standard input is not a terminal"
        )));
    }
    let mut stderr = std::io::stderr();
    let _ = write!(stderr, "{question} Only 'yes' is accepted: ");
    let _ = stderr.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Outcome::Unexpected(e.into()))?;
    Ok(answer.trim() == "yes")
}

fn read_saved(file: &Path) -> Option<SavedPlan> {
    let text = fs_err::read_to_string(file).ok()?;
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(&text).ok()
}

/// `cul8er apply`.
pub(crate) fn apply(args: &ApplyArgs, settings: &Settings) -> Outcome {
    let (deployment, plan, destroy) = if let Some(saved) = read_saved(&args.file) {
        let topology = match load(&saved.topology_file, Some(&saved.topology), settings) {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        match Deployment::connect(topology, StateDir::new(saved.state_dir)) {
            Ok(mut d) => {
                d.artifact_base = Some(topology_dir(&saved.topology_file));
                (d, Some(saved.plan), saved.destroy)
            }
            Err(e) => return failure(e),
        }
    } else {
        let args = TopologyArgs {
            file: args.file.clone(),
            topology: args.topology.clone(),
            state_dir: args.state_dir.clone(),
        };
        match connect(&args, settings) {
            Ok(d) => (d, None, None),
            Err(outcome) => return outcome,
        }
    };
    run_apply(
        &deployment,
        plan,
        destroy,
        args.parallelism.into(),
        args.auto_approve,
        settings,
    )
}

pub(super) fn run_apply(
    deployment: &Deployment,
    saved: Option<Plan>,
    destroy: Option<bool>,
    parallelism: usize,
    auto_approve: bool,
    settings: &Settings,
) -> Outcome {
    let runtime = match runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let from_file = saved.is_some();
    let plan = match saved {
        Some(plan) => plan,
        None => {
            let planned = runtime.block_on(async {
                match destroy {
                    Some(volumes) => deployment.plan_destroy(volumes).await,
                    None => deployment.plan().await,
                }
            });
            match planned {
                Ok(plan) => plan,
                Err(e) => return failure(e),
            }
        }
    };
    if settings.format == OutputFormat::Human {
        print_stdout(&render_plan(&plan, stdout_color(settings)));
    }
    if !plan.has_changes() {
        return Outcome::Success;
    }
    // What the messages call the run: a destroy is an apply of a destroy plan.
    let (verb, command) = if destroy.is_some() {
        ("Destroy", "destroy")
    } else {
        ("Apply", "apply")
    };
    if !auto_approve && !from_file {
        let question = if destroy.is_some() {
            "Destroy everything listed above?"
        } else {
            "Apply these changes?"
        };
        match confirm(question) {
            Ok(true) => {}
            Ok(false) => {
                settings.eprint_line(&format!("{verb} cancelled: nothing was changed."));
                return Outcome::UserError;
            }
            Err(outcome) => return outcome,
        }
    }
    let progress = Progress::new(settings.format, settings.color);
    let cancel = Cancel::new();
    let env = |name: &str| std::env::var(name).ok();
    let request = ApplyRequest {
        parallelism,
        destroy,
        env: &env,
        holder: Holder::current(),
    };
    let on_event = |event: &ApplyEvent| progress.event(event);
    let result = runtime.block_on(async {
        let signals = async {
            if tokio::signal::ctrl_c().await.is_ok() {
                progress.message("Interrupted: finishing the steps in flight, starting no new one (Ctrl-C again aborts them).");
                cancel.graceful.cancel();
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                progress.message("Aborting the steps in flight.");
                cancel.abort.cancel();
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            result = deployment.apply(&plan, &request, &cancel, &on_event) => result,
            () = signals => unreachable!("the signal watcher never ends"),
        }
    });
    progress.finish();
    let report = match result {
        Ok(report) => report,
        Err(e) => return failure(e),
    };
    let outcome = &report.outcome;
    let count = |status| outcome.steps.iter().filter(|s| s.status == status).count();
    use cul8er_core::execute::StepStatus;
    let summary = format!(
        "revision {}: {} done, {} failed, {} not started or aborted, in {:.1} s",
        report.revision,
        count(StepStatus::Done),
        count(StepStatus::Failed),
        count(StepStatus::Skipped) + count(StepStatus::Aborted),
        outcome.millis as f64 / 1000.0
    );
    if settings.format == OutputFormat::Human {
        for failed in outcome.failures() {
            settings.eprint_line(&format!(
                "error: {}: {}",
                failed.step,
                failed.error.as_deref().unwrap_or("failed")
            ));
        }
    }
    if let Some(rollout) = &report.rollout {
        use cul8er_core::rollout::RolloutResult;
        match &rollout.result {
            RolloutResult::Succeeded => {}
            RolloutResult::RolledBack { reason } => {
                settings.eprint_line(&format!(
                    "Rolled back: {reason}. The previous version serves again; revision {} is \
                     recorded as rolled back (`cul8er history`).",
                    report.revision
                ));
                return Outcome::Code(3);
            }
            RolloutResult::Failed { reason, next } => {
                settings.eprint_line(&format!("Rollout stopped: {reason}. {next}."));
                return Outcome::Code(4);
            }
            RolloutResult::Paused { reason, next } => {
                settings.eprint_line(&format!(
                    "Rollout paused ({reason}); the serving set keeps its traffic. {next}."
                ));
                return Outcome::Success;
            }
        }
    }
    if outcome.cancelled {
        settings.eprint_line(&format!(
            "{verb} interrupted, {summary}. Run {command} again to finish."
        ));
        Outcome::Interrupted
    } else if outcome.succeeded() {
        settings.eprint_line(&format!("{verb} complete, {summary}."));
        Outcome::Success
    } else {
        settings.eprint_line(&format!("{verb} failed, {summary}."));
        Outcome::Code(2)
    }
}

/// `cul8er destroy`.
pub(crate) fn destroy(args: &DestroyArgs, settings: &Settings) -> Outcome {
    let deployment = match connect(&args.topology, settings) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    run_apply(
        &deployment,
        None,
        Some(args.volumes),
        args.parallelism.into(),
        args.auto_approve,
        settings,
    )
}

/// `cul8er status`.
pub(crate) fn status(args: &TopologyArgs, settings: &Settings) -> Outcome {
    let deployment = match connect(args, settings) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let status = match runtime.block_on(deployment.status()) {
        Ok(status) => status,
        Err(e) => return failure(e),
    };
    if settings.format == OutputFormat::Json {
        return print_json(&status).err().unwrap_or(Outcome::Success);
    }
    let mut rows = vec![[
        "INSTANCE".to_owned(),
        "RESOURCE".to_owned(),
        "HOST".to_owned(),
        "STATUS".to_owned(),
        "RELEASE".to_owned(),
        "SERVICE".to_owned(),
        "REVISION".to_owned(),
        "UP TO DATE".to_owned(),
    ]];
    for i in &status.instances {
        rows.push([
            i.name.clone(),
            i.resource.clone(),
            i.host.clone(),
            i.status.clone(),
            i.release.clone().unwrap_or_else(|| "-".into()),
            i.release_health
                .as_ref()
                .map_or_else(|| "-".into(), cul8er_core::release::ReleaseHealth::describe),
            i.revision.clone().unwrap_or_else(|| "-".into()),
            if i.up_to_date { "yes" } else { "no" }.to_owned(),
        ]);
    }
    let mut out = format!("topology {}\n{}", status.topology, table(&rows));
    for edge in &status.edges {
        out.push_str(&format!("edge {} on host {}:\n", edge.instance, edge.host));
        let Some(health) = &edge.health else {
            out.push_str("  not running; `cul8er apply` starts it\n");
            continue;
        };
        for service in &health.services {
            // Which backends (which blue-green or canary set) get traffic, by share.
            let total: u64 = service.backends.iter().map(|b| u64::from(b.weight)).sum();
            let shares: Vec<String> = service
                .backends
                .iter()
                .filter(|b| b.weight > 0)
                .map(|b| format!("{} {}%", b.name, u64::from(b.weight) * 100 / total.max(1)))
                .collect();
            out.push_str(&format!(
                "  service {}: {} of {} available; traffic to {}\n",
                service.name,
                service.available,
                service.backends.len(),
                if shares.is_empty() {
                    "none".to_owned()
                } else {
                    shares.join(", ")
                }
            ));
            for b in &service.backends {
                let state = if b.ejected {
                    "ejected".to_owned()
                } else {
                    format!("{:?}", b.health).to_lowercase()
                };
                out.push_str(&format!(
                    "    {} {} weight {} {state}\n",
                    b.name, b.address, b.weight
                ));
            }
        }
    }
    let p = &status.pending;
    if p.create + p.update + p.replace + p.delete == 0 {
        out.push_str("In sync with the topology.\n");
    } else {
        out.push_str(&format!(
            "Pending: {} to create, {} to update, {} to replace, {} to delete ({} drift); `cul8er plan` shows them.\n",
            p.create, p.update, p.replace, p.delete, p.drift
        ));
    }
    if let Some(lease) = &status.lease {
        out.push_str(&format!("{}\n", describe_lease(lease)));
    }
    out.push_str(&rollout_lines(&status));
    print_stdout(&out);
    Outcome::Success
}

/// The rollout in progress as `status` prints it: where it stands (read against the
/// edge) and what continues it; empty when there is none.
fn rollout_lines(status: &cul8er_core::Status) -> String {
    let mut out = String::new();
    if let Some(rollout) = &status.rollout {
        out.push_str(&format!(
            "Rollout in progress: {rollout}; {}.\n",
            if rollout.phase == cul8er_core::rollout::pending::Phase::Switched {
                "`cul8er promote` finishes it (`cul8er abort` cannot undo a switch)"
            } else if rollout.edge_unread.is_some() {
                "`cul8er promote`, `resume` or `abort` read the edge first and continue it once it answers"
            } else {
                "`cul8er promote`, `resume` or `abort` continue it"
            }
        ));
    }
    if let Some(problem) = &status.rollout_problem {
        out.push_str(&format!("The rollout record cannot be read: {problem}\n"));
    }
    out
}

fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn describe_lease(lease: &LeaseRecord) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if lease.expired_at(now) {
        format!(
            "Lease: held by {}, lapsed {} s ago.",
            lease.holder,
            now - lease.expires
        )
    } else {
        format!(
            "Lease: held by {} for {} s more (taken {} s ago).",
            lease.holder,
            lease.expires - now,
            now.saturating_sub(lease.acquired)
        )
    }
}

/// `cul8er list`.
pub(crate) fn list(args: &ListArgs, settings: &Settings) -> Outcome {
    let clients = match &args.file {
        Some(file) => match connect(
            &TopologyArgs {
                file: file.clone(),
                topology: None,
                state_dir: None,
            },
            settings,
        ) {
            Ok(d) => d.clients,
            Err(outcome) => return outcome,
        },
        None => match incus_api::Client::local() {
            Ok(client) => BTreeMap::from([("local".to_owned(), client)]),
            Err(e) => {
                return Outcome::Unexpected(
                    anyhow::Error::new(e).context("cannot find the local Incus"),
                );
            }
        },
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let found = match runtime.block_on(cul8er_core::list(&clients)) {
        Ok(found) => found,
        Err(e) => return failure(e),
    };
    if settings.format == OutputFormat::Json {
        return print_json(&found).err().unwrap_or(Outcome::Success);
    }
    let mut rows = vec![[
        "HOST".to_owned(),
        "TOPOLOGY".to_owned(),
        "INSTANCES".to_owned(),
        "RUNNING".to_owned(),
        "HEALTH".to_owned(),
        "REVISION".to_owned(),
    ]];
    for d in &found {
        rows.push([
            d.host.clone(),
            d.topology.clone(),
            d.instances.to_string(),
            d.running.to_string(),
            format!("{}/{} healthy", d.healthy, d.instances),
            d.revision.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    print_stdout(&table(&rows));
    Outcome::Success
}

/// `cul8er import`.
pub(crate) fn import(args: &ImportArgs, settings: &Settings) -> Outcome {
    let deployment = match connect(
        &TopologyArgs {
            file: args.file.clone(),
            topology: args.topology.clone(),
            state_dir: None,
        },
        settings,
    ) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    match runtime.block_on(deployment.import(&args.resource, &args.instance)) {
        Ok(name) => {
            if settings.format == OutputFormat::Json {
                return print_json(
                    &serde_json::json!({ "resource": args.resource, "instance": name }),
                )
                .err()
                .unwrap_or(Outcome::Success);
            }
            settings.eprint_line(&format!(
                "Imported {} as {name}, replica of {}; `cul8er plan` shows what else differs.",
                args.instance, args.resource
            ));
            Outcome::Success
        }
        Err(e) => failure(e),
    }
}

/// `cul8er lock status` and `cul8er lock release --force`.
pub(crate) fn lock(command: &LockCommand, settings: &Settings) -> Outcome {
    let (args, release) = match command {
        LockCommand::Status(args) => (args, false),
        LockCommand::Release(release) => {
            if !release.force {
                return Outcome::UserReport(miette::miette!(
                    help = "check `cul8er lock status` first: releasing a live apply's lease lets a second one start; then pass --force",
                    "refusing to release the lease without --force"
                ));
            }
            (&release.topology, true)
        }
    };
    let deployment = match connect(args, settings) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let result = runtime.block_on(async {
        if release {
            deployment.lock_release_force().await
        } else {
            deployment.lock_status().await
        }
    });
    let lease = match result {
        Ok(lease) => lease,
        Err(e) => return failure(e),
    };
    if settings.format == OutputFormat::Json {
        return print_json(&serde_json::json!({ "released": release, "lease": lease }))
            .err()
            .unwrap_or(Outcome::Success);
    }
    let line = match (&lease, release) {
        (None, _) => format!("No lease on topology {}.", deployment.topology.name),
        (Some(lease), false) => describe_lease(lease),
        (Some(lease), true) => format!("Released the lease held by {}.", lease.holder),
    };
    print_stdout(&format!("{line}\n"));
    Outcome::Success
}

#[cfg(test)]
mod tests {
    use cul8er_core::rollout::pending::Phase;

    use super::*;

    /// `status --output json` of a blue-green rollout whose command was killed between
    /// the edge's switch and its `switched` record.
    const STATUS_JSON: &str = r#"{
      "topology": "shop",
      "instances": [],
      "pending": {"create": 0, "update": 0, "replace": 0, "delete": 0, "keep": 0, "unchanged": 0, "drift": 0},
      "lease": null,
      "edges": [],
      "rollout": {
        "phase": {"kind": "switched"},
        "record": {
          "topology": "shop", "revision": "20261126T044811.042Z", "resource": "web",
          "version": "2", "strategy": "blue-green",
          "phase": {"kind": "running"},
          "old_set": {"set": "", "members": [{"instance": "shop-web-1", "backend": "shop-web-1"}]},
          "new_set": {"set": "g", "members": [{"instance": "shop-web-1-g", "backend": "shop-web-1-g"}]},
          "weights": [],
          "reason": null,
          "holder": {"user": "ops", "host": "laptop", "pid": 42},
          "at": "2026-11-26T04:48:11Z",
          "hosts": ["local"]
        }
      },
      "rollout_problem": null
    }"#;

    #[test]
    fn status_json_decodes_with_its_rollout_and_the_text_says_what_the_edge_shows() {
        let status: cul8er_core::Status = serde_json::from_str(STATUS_JSON).unwrap();
        let rollout = status.rollout.as_ref().unwrap();
        assert_eq!(rollout.phase, Phase::Switched);
        assert_eq!(rollout.record.phase, Phase::RUNNING);
        assert_eq!(rollout.record.resource, "web");
        assert_eq!(rollout.record.new_set.members[0].instance, "shop-web-1-g");
        assert_eq!(
            rollout_lines(&status),
            "Rollout in progress: blue-green rollout of resource web (revision 20261126T044811.042Z, version 2) running since 2026-11-26T04:48:11Z by ops@laptop (pid 42); the edge shows it switched, the new set not yet marked as serving: the command that ran it stopped before recording that; `cul8er promote` finishes it (`cul8er abort` cannot undo a switch).\n"
        );
        // It prints back as it was read.
        let again: serde_json::Value = serde_json::to_value(&status).unwrap();
        let read: serde_json::Value = serde_json::from_str(STATUS_JSON).unwrap();
        assert_eq!(again, read);
        // A canary paused at a step, and a record that cannot be read.
        let mut status = status;
        let paused = Phase::PausedAtStep {
            index: 1,
            weight: 25,
        };
        let rollout = status.rollout.as_mut().unwrap();
        rollout.phase = paused;
        rollout.record.phase = paused;
        assert!(
            rollout_lines(&status).ends_with(
                "paused at step 2 (25% to the canary) since 2026-11-26T04:48:11Z by ops@laptop (pid 42); `cul8er promote`, `resume` or `abort` continue it.\n"
            ),
            "{}",
            rollout_lines(&status)
        );
        // A running record whose edge did not answer: not taken for unswitched.
        let rollout = status.rollout.as_mut().unwrap();
        rollout.phase = Phase::RUNNING;
        rollout.record.phase = Phase::RUNNING;
        rollout.edge_unread = Some("the edge shop-edge on host local did not answer, so whether the switch happened is not known".into());
        assert!(
            rollout_lines(&status).ends_with(
                "running since 2026-11-26T04:48:11Z by ops@laptop (pid 42); the edge shop-edge on host local did not answer, so whether the switch happened is not known; `cul8er promote`, `resume` or `abort` read the edge first and continue it once it answers.\n"
            ),
            "{}",
            rollout_lines(&status)
        );
        status.rollout = None;
        status.rollout_problem =
            Some("profile cul8er-rollout-shop has an unreadable user.cul8er.rollout".into());
        assert_eq!(
            rollout_lines(&status),
            "The rollout record cannot be read: profile cul8er-rollout-shop has an unreadable user.cul8er.rollout\n"
        );
        status.rollout_problem = None;
        assert_eq!(rollout_lines(&status), "");
    }

    #[test]
    fn tables_align_columns() {
        let rows = [
            ["A".to_owned(), "long value".to_owned()],
            ["longer".to_owned(), "b".to_owned()],
        ];
        assert_eq!(table(&rows), "A       long value\nlonger  b\n");
    }

    #[test]
    fn a_topology_file_is_not_taken_for_a_saved_plan() {
        let dir = tempfile::tempdir().unwrap();
        let kdl = dir.path().join("cul8er.kdl");
        fs_err::write(&kdl, "topology t { resource w { image \"x\"; }; }").unwrap();
        assert!(read_saved(&kdl).is_none());
        let saved = dir.path().join("plan.json");
        let plan = serde_json::json!({
            "cul8er_saved_plan": 1, "topology_file": kdl, "topology": "t",
            "state_dir": dir.path(), "destroy": null,
            "plan": {"format": 1, "topology": "t", "changes": [], "notes": [],
                     "summary": {"create": 0, "update": 0, "replace": 0, "delete": 0,
                                 "keep": 0, "unchanged": 0, "drift": 0}}
        });
        fs_err::write(&saved, plan.to_string()).unwrap();
        assert_eq!(read_saved(&saved).map(|s| s.topology).as_deref(), Some("t"));
    }
}
