//! The `cul8er` command: parse arguments, run, map the outcome to an exit code.

use clap::Parser;

/// Declarative deployments on Incus with health-gated rollouts.
#[derive(Debug, Parser)]
#[command(name = "cul8er", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
