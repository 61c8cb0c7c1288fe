//! Parse + validate + fmt on arbitrary text: every input ends in a model or a
//! diagnostic that renders, and never in a panic.

#![no_main]

use cul8er_core::topology::{self, LoadOptions};
use libfuzzer_sys::fuzz_target;
use miette::{GraphicalReportHandler, GraphicalTheme};

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| (name.len() % 2 == 0).then(|| name.to_owned());
    let handler = GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor());
    match topology::parse(source, "fuzz.kdl", &LoadOptions::new(&env)) {
        Ok(topologies) => {
            // A valid model serializes and reads back the same.
            for topology in &topologies {
                let json = serde_json_roundtrip(topology);
                assert!(json, "JSON round trip changed the model");
                let _ = topology.later_capabilities();
                for resource in &topology.resources {
                    let _ = resource.instance_names(&topology.name);
                }
            }
        }
        Err(err) => {
            let mut out = String::new();
            handler.render_report(&mut out, &err).expect("diagnostics render");
        }
    }
    if let Err(err) = topology::format_kdl(source, "fuzz.kdl") {
        let mut out = String::new();
        handler.render_report(&mut out, &err).expect("diagnostics render");
    }
});

fn serde_json_roundtrip(topology: &topology::Topology) -> bool {
    let Ok(json) = serde_json::to_string(topology) else {
        return false;
    };
    serde_json::from_str::<topology::Topology>(&json).is_ok_and(|back| back == *topology || has_nan(topology))
}

/// NaN error rates never compare equal; they cannot come from a file (the parser
/// refuses them), but keep the check honest.
fn has_nan(topology: &topology::Topology) -> bool {
    topology.resources.iter().any(|r| {
        r.strategy
            .canary
            .as_ref()
            .and_then(|c| c.analysis.as_ref())
            .and_then(|a| a.max_error_rate)
            .is_some_and(f64::is_nan)
    })
}
