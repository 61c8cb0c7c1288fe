//! The examples users copy, the good fixtures and the format reference all validate,
//! and what they say ends up in the model.

// Test helpers panic on broken fixtures: that is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use cul8er_core::topology::{
    self, Endpoint, EnvValue, LaterCapability, LoadOptions, NetworkKind, Pause, Placement, Probe,
    Protocol, StrategyKind, Topology,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn test_env(name: &str) -> Option<String> {
    match name {
        "APP_VERSION" => Some("1.4.2".into()),
        "API_VERSION" => Some("2.1.0".into()),
        _ => None,
    }
}

fn load(path: &Path) -> Vec<Topology> {
    let env = test_env;
    match topology::load(path, &LoadOptions::new(&env)) {
        Ok(topologies) => topologies,
        Err(err) => panic!("{}: {:?}", path.display(), miette::Report::new(err)),
    }
}

fn load_example(name: &str) -> Topology {
    let mut topologies = load(&root().join("examples").join(name));
    topologies.remove(0)
}

fn kdl_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs_err::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "kdl"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_and_good_fixture_validates_and_round_trips_through_json() {
    let mut count = 0;
    for dir in ["examples", "fixtures/topologies/good"] {
        for path in kdl_files(&root().join(dir)) {
            for topology in load(&path) {
                let json = serde_json::to_string_pretty(&topology).unwrap();
                let back: Topology = serde_json::from_str(&json).unwrap();
                assert_eq!(back, topology, "{}", path.display());
                count += 1;
            }
        }
    }
    assert!(count >= 12, "only {count} topologies found");
}

#[test]
fn demo_runs_on_the_local_test_incus() {
    let demo = load_example("demo.kdl");
    assert_eq!(demo.name, "demo");
    assert_eq!(demo.hosts.len(), 1);
    assert_eq!(demo.hosts[0].endpoint, Endpoint::Local);
    assert_eq!(
        demo.networks[0].kind,
        NetworkKind::Bridge {
            subnet: Some("10.181.0.1/24".into()),
            nat: false
        }
    );
    let web = demo.resource("web").unwrap();
    assert_eq!(web.replicas, 3);
    assert_eq!(web.image.to_string(), "cul8er-busybox");
    assert_eq!(
        web.instance_names(&demo.name),
        ["demo-web-1", "demo-web-2", "demo-web-3"]
    );
    let release = web.release.as_ref().unwrap();
    assert_eq!(release.version, "1");
    assert_eq!(
        release.before_start[1],
        "sh -c 'echo web 1 > /srv/www/index.html'"
    );
    assert!(demo.later_capabilities().is_empty());
    assert_eq!(web.unenforced_limits("dir"), Vec::<&str>::new());
}

#[test]
fn basic_holds_production_and_staging_and_reads_the_environment() {
    let path = root().join("examples/basic.kdl");
    let all = load(&path);
    let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["production", "staging"]);

    let production = &all[0];
    assert_eq!(
        production.hosts[0].endpoint,
        Endpoint::Remote {
            remote: "prod".into()
        }
    );
    let web = production.resource("web").unwrap();
    assert_eq!(web.release.as_ref().unwrap().version, "1.4.2");
    assert_eq!(web.strategy.kind, StrategyKind::Rolling);
    assert_eq!(web.unenforced_limits("dir"), ["disk"]);
    assert_eq!(web.unenforced_limits("zfs"), Vec::<&str>::new());
    assert_eq!(
        web.environment[3].value,
        EnvValue::SecretFromEnv {
            var: "SHOP_SECRET_KEY_BASE".into()
        }
    );
    let db = production.resource("db").unwrap();
    assert!(
        matches!(&db.strategy.health.as_ref().unwrap().probe, Probe::Command { argv } if argv == &["pg_isready", "-q"])
    );

    // Without APP_VERSION, production cannot be read, but staging has a default and
    // validating it alone does not look at production's variables.
    let source = fs_err::read_to_string(&path).unwrap();
    let env = no_env;
    let err = topology::parse(&source, "basic.kdl", &LoadOptions::new(&env)).unwrap_err();
    assert!(err.has(topology::ProblemKind::UnsetVariable));
    let staging = topology::parse_one(
        &source,
        "basic.kdl",
        &LoadOptions::new(&env).topology("staging"),
    )
    .unwrap();
    assert_eq!(
        staging.resources[0].release.as_ref().unwrap().version,
        "main"
    );
}

#[test]
fn canary_and_blue_green_carry_their_steps_and_promotion() {
    let canary = load_example("canary.kdl");
    let strategy = &canary.resources[0].strategy;
    let steps = &strategy.canary.as_ref().unwrap().steps;
    let weights: Vec<u32> = steps.iter().map(|s| s.weight).collect();
    assert_eq!(weights, [10, 25, 50, 100]);
    assert_eq!(steps[2].pause, Some(Pause::UntilPromoted));
    let analysis = strategy.canary.as_ref().unwrap().analysis.as_ref().unwrap();
    assert_eq!(analysis.max_error_rate, Some(1.0));
    assert_eq!(analysis.max_p99_latency.map(|d| d.as_millis()), Some(300));

    let blue_green = load_example("blue-green.kdl");
    let settings = blue_green.resources[0].strategy.blue_green.unwrap();
    assert_eq!(settings.promotion, topology::Promotion::Manual);
    assert_eq!(settings.scale_down_delay.as_millis(), 600_000);
}

#[test]
fn later_capabilities_are_named_per_topology() {
    let hardened = load_example("hardened.kdl");
    let used: Vec<LaterCapability> = hardened.later_capabilities().into_iter().collect();
    assert_eq!(
        used,
        [
            LaterCapability::Certificates,
            LaterCapability::Zones,
            LaterCapability::Security
        ]
    );
    let cluster = load_example("app-cluster.kdl");
    let used: Vec<&str> = cluster
        .later_capabilities()
        .into_iter()
        .map(LaterCapability::block)
        .collect();
    assert_eq!(used, ["secrets", "cluster"]);
    // Blue-green and canary rollouts have landed: nothing refuses them.
    for example in ["blue-green.kdl", "canary.kdl"] {
        let used = load_example(example).later_capabilities();
        assert!(used.is_empty(), "{example}: {used:?}");
    }
}

#[test]
fn incus_cluster_placement_and_remote_hosts() {
    let fleet = load_example("incus-cluster.kdl");
    assert_eq!(fleet.hosts[0].cluster.as_ref().unwrap().members.len(), 3);
    assert_eq!(
        fleet.resource("web").unwrap().placement,
        Some(Placement::Spread)
    );
    assert_eq!(
        fleet.resource("db").unwrap().placement,
        Some(Placement::Member {
            name: "node1".into()
        })
    );
    assert_eq!(
        fleet.resource("batch").unwrap().kind.as_incus(),
        "virtual-machine"
    );
    let edge = load_example("remote-tls.kdl");
    assert_eq!(edge.hosts[0].project.as_deref(), Some("edge"));
    let expose = &edge.resources[0].networks[0].expose[0];
    assert_eq!(
        (expose.port, expose.public, expose.protocol),
        (8443, 443, Protocol::Tcp)
    );
}

/// Every ```kdl block in the format reference and the README is a valid topology file.
#[test]
fn every_kdl_block_in_the_docs_validates() {
    let env = test_env;
    let mut blocks = 0;
    for doc in ["docs/topology.md", "README.md"] {
        let text = fs_err::read_to_string(root().join(doc)).unwrap();
        let mut rest = text.as_str();
        while let Some(start) = rest.find("```kdl\n") {
            let body = &rest[start + 7..];
            let end = body.find("```").expect("unclosed kdl block");
            let block = &body[..end];
            let line = text[..text.len() - rest.len() + start].lines().count() + 1;
            let origin = format!("{doc}:{line}");
            if let Err(err) = topology::parse(block, &origin, &LoadOptions::new(&env)) {
                panic!("{:?}", miette::Report::new(err));
            }
            blocks += 1;
            rest = &body[end + 3..];
        }
    }
    assert!(blocks >= 11, "only {blocks} kdl blocks in the docs");
}
