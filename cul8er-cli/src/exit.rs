//! What a command ended with, and the exit code for it.
//!
//! 0: done. 1: the user's input is wrong (a topology with problems, a file not in
//! canonical form under `--check`, a missing file). 2: something unexpected failed.
//! 3: a rollout failed its gate and was rolled back (the old version serves). 4: a
//! rollout stopped for the operator (rollback `manual`, or the rollback itself failed).
//! 130: interrupted by Ctrl-C.

use std::process::ExitCode;

use crate::output::Settings;

/// How a command ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// It did what was asked.
    Success,
    /// The input was wrong; the diagnostics were already printed.
    UserError,
    /// The input was wrong; print this report.
    UserReport(miette::Report),
    /// Something failed that the user did not cause.
    Unexpected(anyhow::Error),
    /// Ctrl-C. Not produced by `validate` and `fmt`, which finish at once; kept so
    /// long-running commands map to 130.
    Interrupted,
    /// A command-specific code, e.g. 2 from `plan --detailed-exitcode` with changes.
    Code(u8),
}

impl Outcome {
    /// Prints what is left to print and returns the exit code.
    pub(crate) fn report(self, settings: &Settings) -> ExitCode {
        match self {
            Self::Success => ExitCode::SUCCESS,
            Self::UserError => ExitCode::from(1),
            Self::UserReport(report) => {
                settings.eprint_report(report.as_ref());
                ExitCode::from(1)
            }
            Self::Unexpected(error) => {
                settings.eprint_line(&format!("error: {error:#}"));
                ExitCode::from(2)
            }
            Self::Interrupted => ExitCode::from(130),
            Self::Code(code) => ExitCode::from(code),
        }
    }
}
