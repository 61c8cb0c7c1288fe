//! `history` and `rollback`: the revisions recorded in the state directory, and a
//! return to an earlier good one (its topology applied again, through its strategy).

use cul8er_core::Deployment;
use cul8er_core::rollout::history;

use crate::cli::{OutputFormat, RollbackArgs, TopologyArgs};
use crate::exit::Outcome;
use crate::output::{Settings, print_stdout};

use super::deploy::{failure, load, print_json, run_apply, state_dir};

fn history_failure(error: &history::HistoryError) -> Outcome {
    let text = cul8er_core::execute::error_chain(error);
    match error {
        history::HistoryError::NothingToRollBackTo { .. }
        | history::HistoryError::UnknownRevision { .. } => {
            Outcome::UserReport(miette::miette!("{text}"))
        }
        _ => Outcome::Unexpected(anyhow::anyhow!("{text}")),
    }
}

/// `cul8er history`.
pub(crate) fn history(args: &TopologyArgs, settings: &Settings) -> Outcome {
    let topology = match load(&args.file, args.topology.as_deref(), settings) {
        Ok(t) => t,
        Err(outcome) => return outcome,
    };
    let state = state_dir(&args.file, args.state_dir.as_ref());
    let revisions = match history::history(&state, &topology.name) {
        Ok(r) => r,
        Err(e) => return history_failure(&e),
    };
    if settings.format == OutputFormat::Json {
        return print_json(&revisions).err().unwrap_or(Outcome::Success);
    }
    if revisions.is_empty() {
        settings.eprint_line(&format!(
            "No revisions of {} recorded in {}.",
            topology.name,
            state.root().display()
        ));
        return Outcome::Success;
    }
    let mut out = format!(
        "{:<19}  {:<22}  {:<16}  {:<20}  {:<11}  {}\n",
        "TIME (UTC)", "REVISION", "VERSION", "STRATEGY", "OUTCOME", "REASON"
    );
    for r in &revisions {
        let join = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(",")
            }
        };
        out.push_str(&format!(
            "{:<19}  {:<22}  {:<16}  {:<20}  {:<11}  {}\n",
            r.display_time(),
            r.revision,
            join(&r.versions),
            join(&r.strategies),
            r.outcome,
            r.reason.as_deref().unwrap_or("")
        ));
    }
    print_stdout(&out);
    Outcome::Success
}

/// `cul8er rollback [--to REVISION]`.
pub(crate) fn rollback(args: &RollbackArgs, settings: &Settings) -> Outcome {
    let current = match load(
        &args.topology.file,
        args.topology.topology.as_deref(),
        settings,
    ) {
        Ok(t) => t,
        Err(outcome) => return outcome,
    };
    let state = state_dir(&args.topology.file, args.topology.state_dir.as_ref());
    let target = history::history(&state, &current.name).and_then(|revisions| {
        history::rollback_target(&revisions, &current.name, args.to.as_deref())
    });
    let target = match target {
        Ok(t) => t,
        Err(e) => return history_failure(&e),
    };
    let topology = match history::topology_of(&state, &current.name, &target) {
        Ok(t) => t,
        Err(e) => return history_failure(&e),
    };
    settings.eprint_line(&format!(
        "Rolling {} back to revision {target}.",
        current.name
    ));
    let deployment = match Deployment::connect(topology, state) {
        Ok(d) => d,
        Err(e) => return failure(e),
    };
    run_apply(
        &deployment,
        None,
        None,
        args.parallelism.into(),
        args.auto_approve,
        settings,
    )
}
