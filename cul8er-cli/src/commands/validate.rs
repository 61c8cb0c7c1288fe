//! `cul8er validate [FILE] [--topology NAME]`: every problem in the file, or the
//! validated model with `--output json`.

use cul8er_core::topology::{self, LoadOptions, Topology};
use serde::Serialize;

use crate::cli::{OutputFormat, ValidateArgs};
use crate::exit::Outcome;
use crate::output::{Settings, print_stdout};

use super::{process_env, read_file};

#[derive(Serialize)]
struct Validated<'a> {
    file: String,
    topologies: &'a [Topology],
}

pub(crate) fn run(args: &ValidateArgs, settings: &Settings) -> Outcome {
    let source = match read_file(&args.file) {
        Ok(source) => source,
        Err(outcome) => return outcome,
    };
    let origin = args.file.display().to_string();
    let env = process_env;
    let mut options = LoadOptions::new(&env);
    if let Some(name) = &args.topology {
        options = options.topology(name);
    }
    let topologies = match topology::parse(&source, &origin, &options) {
        Ok(topologies) => topologies,
        Err(err) => {
            settings.eprint_report(&err);
            return Outcome::UserError;
        }
    };
    match settings.format {
        OutputFormat::Json => {
            let document = Validated {
                file: origin,
                topologies: &topologies,
            };
            match serde_json::to_string_pretty(&document) {
                Ok(json) => print_stdout(&format!("{json}\n")),
                Err(err) => return Outcome::Unexpected(err.into()),
            }
        }
        OutputFormat::Human => print_stdout(&summary(&origin, &topologies)),
    }
    Outcome::Success
}

fn summary(origin: &str, topologies: &[Topology]) -> String {
    let mut out = String::new();
    for topology in topologies {
        let instances: u32 = topology.resources.iter().map(|r| r.replicas).sum();
        out.push_str(&format!(
            "{origin}: topology `{}` is valid: {} host{}, {} resource{}, {} instance{}\n",
            topology.name,
            topology.hosts.len(),
            plural(topology.hosts.len()),
            topology.resources.len(),
            plural(topology.resources.len()),
            instances,
            plural(instances as usize),
        ));
        for capability in topology.later_capabilities() {
            out.push_str(&format!(
                "  note: uses {capability}; plan and apply refuse it until that capability lands\n"
            ));
        }
    }
    out
}

fn plural(count: usize) -> &'static str {
    if count == 1 { "" } else { "s" }
}
