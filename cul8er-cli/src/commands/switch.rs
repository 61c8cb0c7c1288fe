//! `cul8er promote`, `resume`, `abort` and `pause`: a blue-green or canary rollout
//! paused on the Incus server, continued (or undone) from any machine.

use cul8er_core::execute::{ApplyEvent, Cancel};
use cul8er_core::lock::Holder;
use cul8er_core::rollout::RolloutResult;
use cul8er_core::rollout::pending::PauseOutcome;
use cul8er_core::rollout::switch::Continue;

use super::deploy::{connect, failure, print_json, runtime};
use crate::cli::{OutputFormat, TopologyArgs};
use crate::exit::Outcome;
use crate::output::Settings;
use crate::progress::Progress;

/// `cul8er promote|resume|abort`.
pub(crate) fn run(args: &TopologyArgs, action: Continue, settings: &Settings) -> Outcome {
    let deployment = match connect(args, settings) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let progress = Progress::new(settings.format, settings.color);
    let cancel = Cancel::new();
    let on_event = |event: &ApplyEvent| progress.event(event);
    let holder = Holder::current();
    let result = runtime.block_on(async {
        let signals = async {
            if tokio::signal::ctrl_c().await.is_ok() {
                progress.message(
                    "Interrupted: putting all traffic back on the serving set at the next step.",
                );
                cancel.graceful.cancel();
            }
            // Stopping halfway through the undo would leave the edge half-switched:
            // a second Ctrl-C only says so.
            while tokio::signal::ctrl_c().await.is_ok() {
                progress.message(
                    "Still putting traffic back on the serving set; this ends on its own.",
                );
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            result = deployment.continue_rollout(action, &holder, &cancel, &on_event) => result,
            () = signals => unreachable!("the signal watcher never ends"),
        }
    });
    progress.finish();
    let report = match result {
        Ok(report) => report,
        Err(e) => return failure(e),
    };
    if settings.format == OutputFormat::Json
        && let Err(outcome) = print_json(&report)
    {
        return outcome;
    }
    let Some(rollout) = &report.rollout else {
        return Outcome::Success;
    };
    match &rollout.result {
        RolloutResult::Succeeded => {
            settings.eprint_line(&format!(
                "Rollout of revision {} finished: the new set serves.",
                report.revision
            ));
            Outcome::Success
        }
        RolloutResult::RolledBack { reason } if action == Continue::Abort => {
            settings.eprint_line(&format!(
                "Rollout of revision {} aborted ({reason}): the serving set has all traffic, the new set is deleted.",
                report.revision
            ));
            Outcome::Success
        }
        RolloutResult::RolledBack { reason } => {
            settings.eprint_line(&format!(
                "Rolled back: {reason}. The previous version serves again."
            ));
            Outcome::Code(3)
        }
        RolloutResult::Failed { reason, next } => {
            settings.eprint_line(&format!("Rollout stopped: {reason}. {next}."));
            Outcome::Code(4)
        }
        RolloutResult::Paused { reason, next } => {
            settings.eprint_line(&format!("Rollout paused again ({reason}). {next}."));
            Outcome::Success
        }
    }
}

/// `cul8er pause`.
pub(crate) fn pause(args: &TopologyArgs, settings: &Settings) -> Outcome {
    let deployment = match connect(args, settings) {
        Ok(d) => d,
        Err(outcome) => return outcome,
    };
    let runtime = match runtime() {
        Ok(r) => r,
        Err(outcome) => return outcome,
    };
    let outcome = match runtime.block_on(deployment.pause_rollout(&Holder::current())) {
        Ok(outcome) => outcome,
        Err(e) => return failure(e),
    };
    let (state, rollout) = match &outcome {
        PauseOutcome::Requested(r) => ("requested", r),
        PauseOutcome::AlreadyPaused(r) => ("already-paused", r),
    };
    if settings.format == OutputFormat::Json {
        let value = serde_json::json!({ "pause": state, "rollout": rollout });
        if let Err(outcome) = print_json(&value) {
            return outcome;
        }
    } else if state == "requested" {
        settings.eprint_line(&format!(
            "Pause requested: {rollout} pauses at its next step; then `cul8er resume`, `promote` or `abort`."
        ));
    } else {
        settings.eprint_line(&format!("Already paused: {rollout}."));
    }
    Outcome::Success
}
