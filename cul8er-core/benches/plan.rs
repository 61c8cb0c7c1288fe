//! The planner alone on a synthetic topology of 1,000 and 10,000 resources against a
//! synthetic observed state (every instance deployed, every tenth with a limit edited
//! by hand): the time of one plan, and how it grows with size (goal: under 100 ms for
//! 10,000, linear). `just bench-apply` runs it; `cargo bench -p cul8er-core --bench plan`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::Duration;

use cul8er_core::desired::{self, DesireOptions, Desired, KEY_REVISION};
use cul8er_core::observe::{Observed, ObservedHost, ObservedInstance};
use cul8er_core::plan;
use cul8er_core::topology::{self, LoadOptions};

fn synthetic(resources: usize) -> (Desired, Observed) {
    let mut source = String::from("topology bench {\n");
    for i in 0..resources {
        source.push_str(&format!(
            "    resource r{i} {{\n        image \"cul8er-busybox\"\n        limits {{\n            memory \"64MiB\"\n            processes 100\n        }}\n    }}\n"
        ));
    }
    source.push_str("}\n");
    let env = |_: &str| None;
    let topology = topology::parse_one(&source, "bench.kdl", &LoadOptions::new(&env)).unwrap();
    let desired = desired::desire(&topology, &DesireOptions::default()).unwrap();
    let mut host = ObservedHost::default();
    for (n, instance) in desired.instances.iter().enumerate() {
        let mut config = instance.config.clone();
        config.insert(KEY_REVISION.into(), "20261126T000000.000Z".into());
        if n % 10 == 0 {
            config.insert("limits.memory".into(), "128MiB".into());
        }
        host.instances.push(ObservedInstance {
            name: instance.name.clone(),
            instance_type: "container".into(),
            status: "Running".into(),
            profiles: instance.profiles.clone(),
            config,
            devices: instance.devices.clone(),
            location: "none".into(),
        });
    }
    let observed = Observed {
        topology: desired.topology.clone(),
        hosts: BTreeMap::from([("local".to_owned(), host)]),
    };
    (desired, observed)
}

/// The best of `runs` plans.
fn time_plan(desired: &Desired, observed: &Observed, runs: usize) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..runs {
        let start = tokio::time::Instant::now();
        let plan = plan::plan(desired, observed);
        let took = start.elapsed();
        assert_eq!(plan.summary.update, desired.instances.len() / 10);
        best = best.min(took);
    }
    best
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let (small_d, small_o) = synthetic(1_000);
    let (large_d, large_o) = synthetic(10_000);
    let small = time_plan(&small_d, &small_o, 7);
    let large = time_plan(&large_d, &large_o, 7);
    println!("planner, best of 7:");
    println!("  1,000 resources:  {:>8.2} ms", small.as_secs_f64() * 1e3);
    println!(
        "  10,000 resources: {:>8.2} ms (goal: under 100 ms)",
        large.as_secs_f64() * 1e3
    );
    println!(
        "  10,000 / 1,000:   {:>8.2}x (linear would be 10x)",
        large.as_secs_f64() / small.as_secs_f64()
    );
}
