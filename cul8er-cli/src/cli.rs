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
    /// Show what apply would change: create, update, replace, delete, and drift.
    Plan(PlanArgs),
    /// Make Incus hold what the topology asks (or exactly what a saved plan says).
    Apply(ApplyArgs),
    /// Show what runs, instance by instance, and what a plan would change.
    Status(TopologyArgs),
    /// Delete everything the topology has in Incus (volumes only with --volumes).
    Destroy(DestroyArgs),
    /// List the deployments found on the topology's hosts (or the local Incus).
    List(ListArgs),
    /// Bring an existing instance under management as a replica of RESOURCE.
    Import(ImportArgs),
    /// List the revisions: version, time, strategy and outcome.
    History(TopologyArgs),
    /// Return to the previous good revision (or `--to REVISION`), through its strategy.
    Rollback(RollbackArgs),
    /// Finish a paused blue-green or canary rollout now: switch, or 100% to the canary.
    Promote(TopologyArgs),
    /// Go on with a paused canary rollout from its next step (blue-green: switch).
    Resume(TopologyArgs),
    /// Ask a blue-green or canary rollout running in another command to pause at its
    /// next step.
    Pause(TopologyArgs),
    /// Undo a paused blue-green or canary rollout: all traffic back on the serving set,
    /// the new set deleted.
    Abort(TopologyArgs),
    /// Inspect or break the lease that keeps two applies apart.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Add, list or remove the Incus servers reached over TLS (`host NAME remote=...`).
    #[command(subcommand)]
    Remote(RemoteCommand),
}

/// Where the topology and its state are.
#[derive(Debug, Args)]
pub(crate) struct TopologyArgs {
    /// The topology file.
    #[arg(default_value = "cul8er.kdl")]
    pub(crate) file: PathBuf,

    /// The topology of the file, when it holds several.
    #[arg(long, short = 't')]
    pub(crate) topology: Option<String>,

    /// The state directory (default: .cul8er beside the topology file).
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,
}

/// `cul8er plan`.
#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    #[command(flatten)]
    pub(crate) topology: TopologyArgs,

    /// Save the plan to FILE for `cul8er apply FILE`.
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,

    /// Exit 0 when there is nothing to do, 2 when there are changes, 1 on error.
    #[arg(long)]
    pub(crate) detailed_exitcode: bool,

    /// Plan the destruction of the topology instead.
    #[arg(long)]
    pub(crate) destroy: bool,
}

/// `cul8er apply`.
#[derive(Debug, Args)]
pub(crate) struct ApplyArgs {
    /// A topology file, or a plan saved by `cul8er plan --out`.
    #[arg(default_value = "cul8er.kdl")]
    pub(crate) file: PathBuf,

    /// The topology of the file, when it holds several.
    #[arg(long, short = 't')]
    pub(crate) topology: Option<String>,

    /// The state directory (default: .cul8er beside the topology file).
    #[arg(long)]
    pub(crate) state_dir: Option<PathBuf>,

    /// Steps run at once at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) parallelism: u16,

    /// Apply without asking for confirmation.
    #[arg(long)]
    pub(crate) auto_approve: bool,
}

/// `cul8er rollback`.
#[derive(Debug, Args)]
pub(crate) struct RollbackArgs {
    #[command(flatten)]
    pub(crate) topology: TopologyArgs,
    /// The revision to return to (`cul8er history` lists them); default: the good
    /// revision before the one serving now.
    #[arg(long, value_name = "REVISION")]
    pub(crate) to: Option<String>,
    /// Steps run at once at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) parallelism: u16,
    /// Roll back without asking for confirmation.
    #[arg(long)]
    pub(crate) auto_approve: bool,
}

/// `cul8er destroy`.
#[derive(Debug, Args)]
pub(crate) struct DestroyArgs {
    #[command(flatten)]
    pub(crate) topology: TopologyArgs,

    /// Delete the topology's volumes too (their data is lost).
    #[arg(long)]
    pub(crate) volumes: bool,

    /// Destroy without asking for confirmation.
    #[arg(long)]
    pub(crate) auto_approve: bool,

    /// Steps run at once at most.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub(crate) parallelism: u16,
}

/// `cul8er list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// A topology file whose hosts are searched; without it, the local Incus.
    pub(crate) file: Option<PathBuf>,
}

/// `cul8er import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The resource the instance becomes a replica of.
    pub(crate) resource: String,

    /// The existing instance.
    pub(crate) instance: String,

    /// The topology file.
    #[arg(long, short = 'f', default_value = "cul8er.kdl")]
    pub(crate) file: PathBuf,

    /// The topology of the file, when it holds several.
    #[arg(long, short = 't')]
    pub(crate) topology: Option<String>,
}

/// `cul8er lock ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum LockCommand {
    /// Show who holds the lease.
    Status(TopologyArgs),
    /// Remove the lease, whoever holds it.
    Release(LockReleaseArgs),
}

/// `cul8er remote ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum RemoteCommand {
    /// Pin a server's certificate and make it trust cul8er's client certificate.
    Add(RemoteAddArgs),
    /// List the remotes: name, address, pinned fingerprint.
    List,
    /// Forget a remote and its pinned certificate.
    Remove {
        /// The remote's name.
        name: String,
    },
}

/// `cul8er remote add`.
#[derive(Debug, Args)]
pub(crate) struct RemoteAddArgs {
    /// The remote's name, as topologies name it (`host edge1 remote=edge1`).
    pub(crate) name: String,

    /// The server's address: https://HOST:8443.
    pub(crate) address: String,

    /// A trust token from `incus config trust add NAME` on the server (`-` reads it
    /// from stdin): it vouches for the server's fingerprint and makes the server trust
    /// cul8er.
    #[arg(long, conflicts_with = "accept_fingerprint")]
    pub(crate) token: Option<String>,

    /// Without a token: the server certificate's SHA-256 fingerprint, checked on the
    /// server; the server must already trust cul8er's client certificate.
    #[arg(long, value_name = "SHA256")]
    pub(crate) accept_fingerprint: Option<String>,
}

/// `cul8er lock release`.
#[derive(Debug, Args)]
pub(crate) struct LockReleaseArgs {
    #[command(flatten)]
    pub(crate) topology: TopologyArgs,

    /// Required: releasing someone else's lease lets two applies run at once.
    #[arg(long)]
    pub(crate) force: bool,
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
