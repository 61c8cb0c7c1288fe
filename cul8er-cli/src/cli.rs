//! The command line: global options and one struct per subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Declarative deployments on Incus with health-gated rollouts.
#[derive(Debug, Parser)]
#[command(name = "cul8er", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// How results are printed: `human` text or `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub(crate) output: OutputFormat,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum OutputFormat {
    /// Text for people, with coloured diagnostics on a terminal (NO_COLOR turns colour off).
    Human,
    /// JSON on stdout.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Check a topology file and report every problem in it.
    Validate(ValidateArgs),
    /// Rewrite a topology file in canonical form, keeping comments.
    Fmt(FmtArgs),
}

/// `cul8er validate`.
#[derive(Debug, Args)]
pub(crate) struct ValidateArgs {
    /// The topology file.
    #[arg(default_value = "cul8er.kdl")]
    pub(crate) file: PathBuf,

    /// Validate only this topology of the file.
    #[arg(long, short = 't')]
    pub(crate) topology: Option<String>,
}

/// `cul8er fmt`.
#[derive(Debug, Args)]
pub(crate) struct FmtArgs {
    /// The topology file.
    #[arg(default_value = "cul8er.kdl")]
    pub(crate) file: PathBuf,

    /// Change nothing; exit 1 if the file is not in canonical form.
    #[arg(long)]
    pub(crate) check: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn validate_defaults_to_cul8er_kdl() {
        let cli = Cli::try_parse_from(["cul8er", "validate"]).unwrap();
        let Command::Validate(args) = cli.command else {
            panic!("not validate");
        };
        assert_eq!(args.file, PathBuf::from("cul8er.kdl"));
        assert_eq!(cli.output, OutputFormat::Human);
    }

    #[test]
    fn output_is_global() {
        let cli =
            Cli::try_parse_from(["cul8er", "fmt", "x.kdl", "--check", "--output", "json"]).unwrap();
        assert_eq!(cli.output, OutputFormat::Json);
    }
}
