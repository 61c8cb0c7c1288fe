//! The planner over constructed observed states: every kind of change and drift,
//! pinned as the text people read (`insta` snapshots) and checked field by field.
//!
//! The observed states are built from the desired state of `examples/demo.kdl` the
//! way Incus reports a converged deployment (config plus `volatile.*`/`image.*` keys
//! Incus adds, the revision key), then edited the way an operator or a topology
//! change would.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use cul8er_core::desired::{self, DesireOptions, Desired, KEY_REVISION};
use cul8er_core::edge::{Addresses, EdgeBinary, ObservedEdge};
use cul8er_core::observe::{
    Observed, ObservedHost, ObservedInstance, ObservedNetwork, ObservedVolume,
};
use cul8er_core::plan::{self, Action, Plan};
use cul8er_core::topology::{self, LoadOptions};

fn demo_source() -> String {
    fs_err::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/demo.kdl"))
        .expect("examples/demo.kdl")
}

fn desire(source: &str) -> Desired {
    let env = |_: &str| None;
    let topology = topology::parse_one(source, "demo.kdl", &LoadOptions::new(&env))
        .expect("the topology is valid");
    let options = DesireOptions {
        edge_binary: Some(EdgeBinary {
            path: "/nowhere/cul8er-proxy".into(),
            sha256: "ab".repeat(32),
        }),
        ..DesireOptions::default()
    };
    desired::desire(&topology, &options).expect("it can be planned")
}

/// What Incus reports once `desired` is deployed.
fn converged(desired: &Desired) -> Observed {
    let mut hosts: BTreeMap<String, ObservedHost> = BTreeMap::new();
    for instance in &desired.instances {
        let mut config = instance.config.clone();
        config.insert(KEY_REVISION.into(), "000001".into());
        config.insert("image.os".into(), "busybox".into());
        hosts
            .entry(instance.host.clone())
            .or_default()
            .instances
            .push(ObservedInstance {
                name: instance.name.clone(),
                instance_type: "container".into(),
                status: "Running".into(),
                profiles: instance.profiles.clone(),
                config,
                devices: instance.devices.clone(),
                location: "none".into(),
            });
    }
    for network in &desired.networks {
        let mut config = network.config.clone();
        config.insert("ipv4.dhcp".into(), "true".into());
        hosts
            .entry(network.host.clone())
            .or_default()
            .networks
            .push(ObservedNetwork {
                name: network.name.clone(),
                network_type: "bridge".into(),
                managed: true,
                config,
            });
    }
    for volume in &desired.volumes {
        hosts
            .entry(volume.host.clone())
            .or_default()
            .volumes
            .push(ObservedVolume {
                pool: volume.pool.clone(),
                name: volume.name.clone(),
                config: volume.config.clone(),
            });
    }
    // The edge runs the configuration made from the replicas' bridge addresses.
    for instance in &desired.instances {
        let Some(edge) = instance.edge.as_deref() else {
            continue;
        };
        let mut addresses = Addresses::new();
        for (index, service) in edge.services.iter().enumerate() {
            for (replica, backend) in service.backends.iter().enumerate() {
                let ip = std::net::IpAddr::from([
                    10,
                    181,
                    0,
                    u8::try_from(10 * (index + 1) + replica).unwrap(),
                ]);
                addresses
                    .entry(backend.instance.clone())
                    .or_default()
                    .insert(service.nic.clone(), ip);
            }
        }
        let config = cul8er_core::edge::proxy_config(edge, &addresses)
            .expect("every backend has an address");
        hosts.entry(edge.host.clone()).or_default().edge = Some(ObservedEdge {
            addresses,
            config: Some(config),
            health: None,
        });
    }
    Observed {
        topology: desired.topology.clone(),
        hosts,
    }
}

fn instance<'a>(observed: &'a mut Observed, name: &str) -> &'a mut ObservedInstance {
    observed
        .hosts
        .get_mut("local")
        .expect("host local")
        .instances
        .iter_mut()
        .find(|i| i.name == name)
        .expect("instance")
}

fn change<'a>(plan: &'a Plan, name: &str) -> &'a cul8er_core::plan::Change {
    plan.changes
        .iter()
        .find(|c| c.name == name)
        .expect("a change for the object")
}

#[test]
fn nothing_deployed_creates_everything() {
    let desired = desire(&demo_source());
    let plan = plan::plan(&desired, &Observed::default());
    assert_eq!(
        plan.summary.create, 8,
        "a network, five instances, the edge and its configuration"
    );
    assert!(!plan.changes.iter().any(|c| c.drift));
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_converged_deployment_plans_nothing() {
    let desired = desire(&demo_source());
    let plan = plan::plan(&desired, &converged(&desired));
    assert!(!plan.has_changes(), "{plan}");
    assert_eq!(plan.summary.unchanged, 8);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_limit_edited_by_hand_is_live_drift() {
    let desired = desire(&demo_source());
    let mut observed = converged(&desired);
    instance(&mut observed, "demo-web-2")
        .config
        .insert("limits.memory".into(), "512MiB".into());
    let plan = plan::plan(&desired, &observed);
    let web2 = change(&plan, "demo-web-2");
    assert_eq!(web2.action, Action::Update);
    assert!(web2.drift && !web2.restart);
    assert_eq!(web2.fields[0].old.as_deref(), Some("512MiB"));
    assert_eq!(web2.fields[0].new.as_deref(), Some("67108864B"));
    assert_eq!(plan.summary.update, 1);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_device_added_by_hand_is_drift_and_is_removed() {
    let desired = desire(&demo_source());
    let mut observed = converged(&desired);
    instance(&mut observed, "demo-worker-1").devices.insert(
        "backdoor".into(),
        [
            ("type", "proxy"),
            ("listen", "tcp:0.0.0.0:2222"),
            ("connect", "tcp:127.0.0.1:22"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    let plan = plan::plan(&desired, &observed);
    let worker = change(&plan, "demo-worker-1");
    assert_eq!(worker.action, Action::Update);
    assert!(worker.drift);
    assert_eq!(worker.fields[0].field, "devices.backdoor");
    assert_eq!(worker.fields[0].new, None);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_stopped_instance_is_drift_and_is_started() {
    let desired = desire(&demo_source());
    let mut observed = converged(&desired);
    instance(&mut observed, "demo-api-1").status = "Stopped".into();
    let plan = plan::plan(&desired, &observed);
    let api = change(&plan, "demo-api-1");
    assert_eq!(api.action, Action::Update);
    assert!(api.drift && api.start);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_replica_deleted_by_hand_is_drift_and_is_created_again() {
    let desired = desire(&demo_source());
    let mut observed = converged(&desired);
    observed
        .hosts
        .get_mut("local")
        .unwrap()
        .instances
        .retain(|i| i.name != "demo-web-2");
    let plan = plan::plan(&desired, &observed);
    let web2 = change(&plan, "demo-web-2");
    assert_eq!(web2.action, Action::Create);
    assert!(web2.drift, "web-3 exists, so web-2 was deleted");
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_raw_config_key_set_by_hand_needs_a_restart() {
    let desired = desire(&demo_source());
    let mut observed = converged(&desired);
    instance(&mut observed, "demo-worker-1")
        .config
        .insert("security.nesting".into(), "true".into());
    let plan = plan::plan(&desired, &observed);
    let worker = change(&plan, "demo-worker-1");
    assert!(worker.drift && worker.restart);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn changed_limits_update_in_place_without_restart() {
    let before = desire(&demo_source());
    let after = desire(&demo_source().replace("memory \"64MiB\"", "memory \"128MiB\""));
    let plan = plan::plan(&after, &converged(&before));
    assert_eq!(plan.summary.update, 3);
    for name in ["demo-web-1", "demo-web-2", "demo-web-3"] {
        let web = change(&plan, name);
        assert!(!web.drift && !web.restart, "{name}: {web:?}");
        assert!(web.fields.iter().any(|f| f.field == "config.limits.memory"));
    }
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_changed_image_replaces() {
    let before = desire(&demo_source());
    // The worker's image, however the file spells the string.
    let source = demo_source();
    let changed = ["image \"cul8er-busybox\"", "image cul8er-busybox"]
        .iter()
        .find_map(|image| {
            let old = format!("{image}\n        network demo-net\n");
            source.contains(&old).then(|| {
                source.replacen(
                    &old,
                    "image \"cul8er-busybox-2\"\n        network demo-net\n",
                    1,
                )
            })
        })
        .expect("the demo's worker names its image");
    let after = desire(&changed);
    let plan = plan::plan(&after, &converged(&before));
    let worker = change(&plan, "demo-worker-1");
    assert_eq!(worker.action, Action::Replace);
    assert_eq!(worker.fields[0].field, "image");
    assert_eq!(plan.summary.replace, 1);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_changed_release_version_updates_live() {
    let before = desire(&demo_source());
    let after = desire(&demo_source().replace("default=\"1\"", "default=\"2\""));
    let plan = plan::plan(&after, &converged(&before));
    let api = change(&plan, "demo-api-1");
    assert_eq!(api.action, Action::Update);
    assert!(!api.restart);
    assert!(
        api.fields
            .iter()
            .any(|f| f.field == "config.user.cul8er.release"
                && f.old.as_deref() == Some("1")
                && f.new.as_deref() == Some("2"))
    );
    assert_eq!(plan.summary.update, 4, "three web replicas and api");
}

#[test]
fn a_removed_resource_is_deleted() {
    let before = desire(&demo_source());
    let source = demo_source();
    let start = source.find("    // A background worker").unwrap();
    let end = source.rfind('}').unwrap();
    let after = desire(&format!("{}{}", &source[..start], &source[end..]));
    let plan = plan::plan(&after, &converged(&before));
    let worker = change(&plan, "demo-worker-1");
    assert_eq!(worker.action, Action::Delete);
    assert_eq!(plan.summary.delete, 1);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_network_edited_by_hand_is_put_back_and_undeclared_volumes_are_kept() {
    let desired = desire(&demo_source());
    let mut observed = converged(&desired);
    let host = observed.hosts.get_mut("local").unwrap();
    host.networks[0]
        .config
        .insert("ipv4.nat".into(), "true".into());
    host.volumes.push(ObservedVolume {
        pool: "default".into(),
        name: "old-data".into(),
        config: [("user.cul8er.topology".to_owned(), "demo".to_owned())].into(),
    });
    let plan = plan::plan(&desired, &observed);
    assert_eq!(change(&plan, "demo-net").action, Action::Update);
    assert_eq!(change(&plan, "old-data").action, Action::Keep);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn destroy_keeps_volumes_unless_asked() {
    let desired = desire(&demo_source());
    let mut observed = converged(&desired);
    observed
        .hosts
        .get_mut("local")
        .unwrap()
        .volumes
        .push(ObservedVolume {
            pool: "default".into(),
            name: "data".into(),
            config: [("user.cul8er.topology".to_owned(), "demo".to_owned())].into(),
        });
    let keep = plan::plan_destroy(&observed, false);
    assert_eq!(
        keep.summary.delete, 7,
        "six instances (the edge too) and the network"
    );
    assert_eq!(change(&keep, "data").action, Action::Keep);
    let all = plan::plan_destroy(&observed, true);
    assert_eq!(all.summary.delete, 8);
    insta::assert_snapshot!(format!("{keep}\n---\n{all}"));
}

#[test]
fn the_plan_json_is_stable() {
    let desired = desire(
        r#"topology small {
            resource api { image "cul8er-busybox"; limits { memory "32MiB" } }
        }"#,
    );
    let mut observed = converged(&desired);
    instance_named(&mut observed, "small-api-1")
        .config
        .insert("limits.memory".into(), "1GiB".into());
    let plan = plan::plan(&desired, &observed);
    let json = serde_json::to_value(&plan).unwrap();
    let back: Plan = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, plan, "the JSON reads back as the same plan");
    insta::assert_json_snapshot!(json);
}

fn instance_named<'a>(observed: &'a mut Observed, name: &str) -> &'a mut ObservedInstance {
    instance(observed, name)
}

#[test]
fn the_same_world_gives_no_differences_and_a_moved_one_does() {
    let desired = desire(&demo_source());
    let saved = plan::plan(&desired, &Observed::default());
    assert!(
        saved
            .differences(&plan::plan(&desired, &Observed::default()))
            .is_empty()
    );
    let mut moved = converged(&desired);
    moved
        .hosts
        .get_mut("local")
        .unwrap()
        .instances
        .retain(|i| i.name != "demo-api-1");
    assert_eq!(
        saved.differences(&plan::plan(&desired, &moved)),
        [
            "local/edge/demo-edge",
            "local/instance/demo-edge",
            "local/instance/demo-web-1",
            "local/instance/demo-web-2",
            "local/instance/demo-web-3",
            "local/instance/demo-worker-1",
            "local/network/demo-net"
        ]
    );
}
