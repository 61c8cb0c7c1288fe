//! One module per subcommand; each returns an [`Outcome`].

mod deploy;
mod fmt;
mod remote;
mod rollout;
mod switch;
mod validate;

use cul8er_core::rollout::switch::Continue;

use crate::cli::Command;
use crate::exit::Outcome;
use crate::output::Settings;

/// Runs `command`.
pub(crate) fn run(command: Command, settings: &Settings) -> Outcome {
    match command {
        Command::Validate(args) => validate::run(&args, settings),
        Command::Fmt(args) => fmt::run(&args, settings),
        Command::Plan(args) => deploy::plan(&args, settings),
        Command::Apply(args) => deploy::apply(&args, settings),
        Command::Status(args) => deploy::status(&args, settings),
        Command::Destroy(args) => deploy::destroy(&args, settings),
        Command::List(args) => deploy::list(&args, settings),
        Command::Import(args) => deploy::import(&args, settings),
        Command::History(args) => rollout::history(&args, settings),
        Command::Rollback(args) => rollout::rollback(&args, settings),
        Command::Promote(args) => switch::run(&args, Continue::Promote, settings),
        Command::Resume(args) => switch::run(&args, Continue::Resume, settings),
        Command::Abort(args) => switch::run(&args, Continue::Abort, settings),
        Command::Pause(args) => switch::pause(&args, settings),
        Command::Lock(command) => deploy::lock(&command, settings),
        Command::Remote(command) => remote::run(&command, settings),
    }
}

/// The operator's environment, for `variable NAME env="VAR"`.
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads a topology file; a missing file is the user's mistake.
pub(crate) fn read_file(path: &std::path::Path) -> Result<String, Outcome> {
    fs_err::read_to_string(path).map_err(|err| {
        if matches!(
            err.kind(),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
        ) {
            Outcome::UserReport(miette::miette!(
                help = "give the file's path, e.g. `cul8er validate examples/demo.kdl`; the default is ./cul8er.kdl",
                "{err}"
            ))
        } else {
            Outcome::Unexpected(err.into())
        }
    })
}
