//! The `cul8er` command: parse arguments, run the subcommand, map the outcome to an
//! exit code (0 ok, 1 user error, 2 unexpected error, 130 interrupted).

mod cli;
mod commands;
mod exit;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let settings = output::Settings::from_env(cli.output);
    let outcome = commands::run(cli.command, &settings);
    outcome.report(&settings)
}
