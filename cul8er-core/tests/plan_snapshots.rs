//! The planner over constructed observed states: every kind of change and drift,
//! pinned as the text people read (`insta` snapshots) and checked field by field.
//!
//! The observed states are built from the desired state of `examples/demo.kdl` the
//! way Incus reports a converged deployment (config plus `volatile.*`/`image.*` keys
//! Incus adds, the revision key), then edited the way an operator or a topology
//! change would.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use cul8er_core::desired::{self, DesireOptions, Desired, KEY_REVISION, KEY_SPEC};
use cul8er_core::edge::{Addresses, EdgeBinary, ObservedEdge};
use cul8er_core::observe::{
    Observed, ObservedHost, ObservedInstance, ObservedNetwork, ObservedVolume,
};
use cul8er_core::plan::{self, Action, Plan};
use cul8er_core::release::{InitSystem, ReleaseHealth, ServiceState};
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

/// What the observation reads of a release service.
fn service(app: &str, state: ServiceState, detail: Option<&str>) -> ReleaseHealth {
    ReleaseHealth {
        app: app.into(),
        state,
        restarts: (state != ServiceState::Unknown).then_some(0),
        version: (state != ServiceState::Unknown).then(|| "1".into()),
        init: (state != ServiceState::Unknown).then_some(InitSystem::Busybox),
        detail: detail.map(str::to_owned),
    }
}

/// `converged` with every release service read as running.
fn serving(desired: &Desired) -> Observed {
    let mut observed = converged(desired);
    for instance in &desired.instances {
        if let Some(release) = &instance.release {
            observed
                .hosts
                .get_mut(&instance.host)
                .unwrap()
                .services
                .insert(
                    instance.name.clone(),
                    service(&release.name, ServiceState::Running, None),
                );
        }
    }
    observed
}

fn set_service(observed: &mut Observed, name: &str, health: ReleaseHealth) {
    observed
        .hosts
        .get_mut("local")
        .unwrap()
        .services
        .insert(name.into(), health);
}

#[test]
fn a_release_service_stopped_by_hand_is_drift_and_is_started() {
    let desired = desire(&demo_source());
    let mut observed = serving(&desired);
    assert!(!plan::plan(&desired, &observed).has_changes());
    set_service(
        &mut observed,
        "demo-web-2",
        service("web", ServiceState::Stopped, None),
    );
    // Failed: systemd gave up restarting it; started the same way.
    set_service(
        &mut observed,
        "demo-web-3",
        service("web", ServiceState::Failed, Some("failed/failed")),
    );
    // Its init is restarting it already: not drift.
    set_service(
        &mut observed,
        "demo-web-1",
        service("web", ServiceState::CrashedRestarting, None),
    );
    // Could not be read: reported, not planned.
    set_service(
        &mut observed,
        "demo-api-1",
        service("api", ServiceState::Unknown, Some("no answer within 10 s")),
    );
    let plan = plan::plan(&desired, &observed);
    let web2 = change(&plan, "demo-web-2");
    assert_eq!(web2.action, Action::Update);
    assert!(web2.drift && !web2.restart && !web2.start, "{web2:?}");
    assert_eq!(web2.service_to_start(), Some("web"));
    assert_eq!(web2.fields.len(), 1, "{:?}", web2.fields);
    assert_eq!(change(&plan, "demo-web-3").service_to_start(), Some("web"));
    for unchanged in ["demo-web-1", "demo-api-1"] {
        assert_eq!(change(&plan, unchanged).action, Action::None, "{unchanged}");
    }
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("service api on instance demo-api-1") && n.contains("no answer")),
        "{:?}",
        plan.notes
    );
    assert_eq!((plan.summary.update, plan.summary.drift), (2, 2));
    insta::assert_snapshot!(plan.to_string());

    let json = serde_json::to_value(web2).unwrap();
    let back: cul8er_core::plan::Change = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(&back, web2, "the JSON reads back as the same change");
    let mut json = json;
    json["target"] = serde_json::Value::Null;
    insta::assert_json_snapshot!("a_stopped_service_as_json", json);
}

#[test]
fn a_stopped_service_does_not_hide_a_release_to_deploy() {
    let desired = desire(&demo_source());
    let mut observed = serving(&desired);
    instance(&mut observed, "demo-api-1")
        .config
        .insert(KEY_SPEC.into(), "an-older-spec".into());
    set_service(
        &mut observed,
        "demo-api-1",
        service("api", ServiceState::Stopped, None),
    );
    let plan = plan::plan(&desired, &observed);
    let api = change(&plan, "demo-api-1");
    let fields: Vec<&str> = api.fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["config.user.cul8er.spec", "service.api"]);
    assert_eq!(
        api.reason.as_deref(),
        Some("release definition or environment changed")
    );
    assert!(
        api.drift,
        "the stopped service is drift whatever else changed"
    );
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
fn the_last_replica_deleted_by_hand_is_drift_when_the_edge_still_routes_to_it() {
    let desired = desire(&demo_source());
    let mut observed = converged(&desired);
    observed
        .hosts
        .get_mut("local")
        .unwrap()
        .instances
        .retain(|i| i.name != "demo-web-3");
    let plan = plan::plan(&desired, &observed);
    let web3 = change(&plan, "demo-web-3");
    assert_eq!(web3.action, Action::Create);
    assert!(web3.drift, "no replica above it, but the edge routes to it");
    assert_eq!(web3.reason.as_deref(), Some("deleted outside cul8er"));
    insta::assert_snapshot!(plan.to_string());

    // A replica the topology adds is a plain create: no edge ever routed to it.
    let grown = desire(&demo_source().replace("replicas 3", "replicas 4"));
    let plan = plan::plan(&grown, &converged(&desired));
    let web4 = change(&plan, "demo-web-4");
    assert_eq!(web4.action, Action::Create);
    assert!(!web4.drift && web4.reason.is_none(), "{web4:?}");
    assert_eq!(plan.summary.drift, 0);

    // Without an edge nothing Incus holds says that a resource's last replica was
    // deployed: it is created again, without the label.
    let mut observed = converged(&desired);
    observed
        .hosts
        .get_mut("local")
        .unwrap()
        .instances
        .retain(|i| i.name != "demo-worker-1");
    let worker = plan::plan(&desired, &observed);
    let worker = change(&worker, "demo-worker-1");
    assert_eq!((worker.action, worker.drift), (Action::Create, false));
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
    // api-1 is a create in both, but now one that puts back a deletion by hand (the
    // edge routes to it): drift, so it differs too.
    assert_eq!(
        saved.differences(&plan::plan(&desired, &moved)),
        [
            "local/edge/demo-edge",
            "local/instance/demo-api-1",
            "local/instance/demo-edge",
            "local/instance/demo-web-1",
            "local/instance/demo-web-2",
            "local/instance/demo-web-3",
            "local/instance/demo-worker-1",
            "local/network/demo-net"
        ]
    );
}

// Blue-green and canary: instances are matched by (resource, replica) within the set
// that serves, whatever its suffix.

fn shop(strategy: &str, version: &str) -> Desired {
    desire(&format!(
        r#"topology shop {{
    network shop-net subnet="10.30.0.1/24" nat=#false
    resource web {{
        image cul8er-busybox
        replicas 2
        network shop-net {{
            expose 8080 public=18080 protocol=http
        }}
        release web version="{version}" {{
            start "httpd -f -p 8080 -h /srv/www"
        }}
        strategy {strategy}
    }}
}}"#
    ))
}

/// `observed` with the instances of resource web renamed into set `set` and given
/// `keys`.
fn in_set(mut observed: Observed, set: &str, keys: &[(&str, &str)]) -> Observed {
    for instance in &mut observed.hosts.get_mut("local").unwrap().instances {
        if instance
            .config
            .get(desired::KEY_RESOURCE)
            .map(String::as_str)
            != Some("web")
        {
            continue;
        }
        if !set.is_empty() {
            instance.name = format!("{}-{set}", instance.name);
            instance
                .config
                .insert(desired::KEY_SET.into(), set.to_owned());
        }
        for (key, value) in keys {
            instance
                .config
                .insert((*key).to_owned(), (*value).to_owned());
        }
    }
    // The edge knows the set by its names.
    let renamed = |name: &str| {
        if set.is_empty() || !name.starts_with("shop-web-") {
            name.to_owned()
        } else {
            format!("{name}-{set}")
        }
    };
    let edge = observed
        .hosts
        .get_mut("local")
        .unwrap()
        .edge
        .as_mut()
        .unwrap();
    edge.addresses = std::mem::take(&mut edge.addresses)
        .into_iter()
        .map(|(name, nics)| (renamed(&name), nics))
        .collect();
    for service in &mut edge.config.as_mut().unwrap().services {
        for backend in &mut service.backends {
            backend.name = renamed(&backend.name);
        }
    }
    observed
}

/// The web instances of `from` added to `into`.
fn beside(mut into: Observed, from: &Observed) -> Observed {
    let extra: Vec<ObservedInstance> = from.hosts["local"]
        .instances
        .iter()
        .filter(|i| i.config.get(desired::KEY_RESOURCE).map(String::as_str) == Some("web"))
        .cloned()
        .collect();
    into.hosts.get_mut("local").unwrap().instances.extend(extra);
    // On the edge at weight 0, at addresses of their own.
    let theirs = from.hosts["local"].edge.clone().unwrap();
    let edge = into.hosts.get_mut("local").unwrap().edge.as_mut().unwrap();
    for (name, nics) in theirs.addresses {
        let moved = nics
            .into_iter()
            .map(|(nic, ip)| match ip {
                std::net::IpAddr::V4(v4) => {
                    let [a, b, c, d] = v4.octets();
                    (nic, std::net::IpAddr::from([a, b, c, d + 100]))
                }
                other => (nic, other),
            })
            .collect();
        edge.addresses.insert(name, moved);
    }
    let config = edge.config.as_mut().unwrap();
    for (service, old) in config
        .services
        .iter_mut()
        .zip(theirs.config.unwrap().services)
    {
        for mut backend in old.backends {
            backend.weight = 0;
            if let std::net::SocketAddr::V4(v4) = &mut backend.address {
                let [a, b, c, d] = v4.ip().octets();
                v4.set_ip(std::net::Ipv4Addr::new(a, b, c, d + 100));
            }
            service.backends.push(backend);
        }
    }
    into
}

fn at(mut observed: Observed, now: u64) -> Observed {
    for host in observed.hosts.values_mut() {
        host.read_at = now;
    }
    observed
}

#[test]
fn a_first_blue_green_deploy_is_an_ordinary_create() {
    let plan = plan::plan(&shop("blue-green", "1.0.0"), &Observed::default());
    assert!(
        plan.changes
            .iter()
            .all(|c| c.action == Action::Create && c.kind != plan::ObjectKind::Set)
    );
    assert!(plan.changes.iter().any(|c| c.name == "shop-web-1"));
}

#[test]
fn a_new_blue_green_version_is_one_set_change() {
    let before = shop("blue-green", "1.0.0");
    let plan = plan::plan(&shop("blue-green", "1.1.0"), &converged(&before));
    let set = change(&plan, "shop-web-g");
    assert_eq!(set.kind, plan::ObjectKind::Set);
    assert_eq!(set.action, Action::Replace);
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| c.kind == plan::ObjectKind::Instance && c.is_change()),
        "no instance changes of their own: {plan}"
    );
    let Some(plan::Target::Set(target)) = &set.target else {
        panic!("a set target");
    };
    assert_eq!(target.serving, ["shop-web-1", "shop-web-2"]);
    let names: Vec<&str> = target.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["shop-web-1-g", "shop-web-2-g"]);
    assert_eq!(target.instances[0].config[desired::KEY_SET], "g");
    assert_eq!(target.instances[0].config[desired::KEY_CANDIDATE], "true");
    assert!(!target.reuse);
    assert_eq!(plan.summary.replace, 1);
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_canary_alternates_between_the_c_set_and_the_unsuffixed_one() {
    let v1 = shop("canary", "1.0.0");
    let plan = plan::plan(&shop("canary", "1.1.0"), &converged(&v1));
    assert!(
        change(&plan, "shop-web-c")
            .reason
            .as_deref()
            .unwrap()
            .contains("canary set -c (2 instances, version 1.1.0)")
    );
    // Once the canary serves, the next one is unsuffixed again.
    let v2 = shop("canary", "1.1.0");
    let serving = in_set(converged(&v2), "c", &[]);
    let plan = plan::plan(&shop("canary", "1.2.0"), &serving);
    let set = change(&plan, "shop-web");
    assert_eq!(set.kind, plan::ObjectKind::Set);
    let Some(plan::Target::Set(target)) = &set.target else {
        panic!("a set target");
    };
    assert_eq!(target.serving, ["shop-web-1-c", "shop-web-2-c"]);
    assert!(!target.instances[0].config.contains_key(desired::KEY_SET));
}

#[test]
fn the_serving_set_is_matched_whatever_its_suffix() {
    let v2 = shop("blue-green", "1.1.0");
    let serving = in_set(converged(&v2), "g", &[]);
    let plan = plan::plan(&v2, &serving);
    assert!(!plan.has_changes(), "{plan}");
    // Drift on one instance of the serving set stays an in-place fix.
    let mut drifted = serving;
    instance(&mut drifted, "shop-web-2-g")
        .config
        .insert("limits.memory".into(), "512MiB".into());
    instance(&mut drifted, "shop-web-1-g").status = "Stopped".into();
    let plan = plan::plan(&v2, &drifted);
    assert_eq!(change(&plan, "shop-web-2-g").action, Action::Update);
    assert!(change(&plan, "shop-web-2-g").drift);
    assert!(change(&plan, "shop-web-1-g").start);
    assert!(!plan.changes.iter().any(|c| c.kind == plan::ObjectKind::Set));
}

#[test]
fn an_old_set_is_kept_until_its_time_then_deleted() {
    let (v1, v2) = (shop("blue-green", "1.0.0"), shop("blue-green", "1.1.0"));
    let world = beside(
        in_set(converged(&v2), "g", &[]),
        &in_set(converged(&v1), "", &[(desired::KEY_RETIRE, "1000")]),
    );
    let kept = plan::plan(&v2, &at(world.clone(), 999));
    let old = change(&kept, "shop-web-1");
    assert_eq!(old.action, Action::Keep);
    assert!(old.reason.as_deref().unwrap().contains("`cul8er rollback`"));
    // The old set stays on the edge at weight 0.
    let edge = kept
        .changes
        .iter()
        .find(|c| c.kind == plan::ObjectKind::Edge)
        .unwrap();
    let Some(plan::Target::Edge(spec)) = &edge.target else {
        panic!("an edge target");
    };
    let backends: Vec<(&str, u32)> = spec.services[0]
        .backends
        .iter()
        .map(|b| (b.instance.as_str(), b.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("shop-web-1-g", 1),
            ("shop-web-2-g", 1),
            ("shop-web-1", 0),
            ("shop-web-2", 0)
        ]
    );
    let expired = plan::plan(&v2, &at(world, 1000));
    let old = change(&expired, "shop-web-2");
    assert_eq!(old.action, Action::Delete);
    assert!(
        old.reason
            .as_deref()
            .unwrap()
            .contains("scale-down delay ended"),
        "{old:?}"
    );
    insta::assert_snapshot!(expired.to_string());
}

#[test]
fn rolling_back_while_the_old_set_exists_switches_back_to_it() {
    let (v1, v2) = (shop("blue-green", "1.0.0"), shop("blue-green", "1.1.0"));
    let world = at(
        beside(
            in_set(converged(&v2), "g", &[]),
            &in_set(converged(&v1), "", &[(desired::KEY_RETIRE, "1000")]),
        ),
        10,
    );
    let plan = plan::plan(&v1, &world);
    let set = change(&plan, "shop-web");
    let Some(plan::Target::Set(target)) = &set.target else {
        panic!("a set target");
    };
    assert!(target.reuse, "{plan}");
    assert_eq!(target.serving, ["shop-web-1-g", "shop-web-2-g"]);
    assert!(set.reason.as_deref().unwrap().starts_with("switch back"));
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| c.kind == plan::ObjectKind::Instance && c.is_change()),
        "{plan}"
    );
}

#[test]
fn a_set_left_by_an_interrupted_rollout_is_deleted() {
    let (v1, v2) = (shop("blue-green", "1.0.0"), shop("blue-green", "1.1.0"));
    let world = beside(
        converged(&v1),
        &in_set(converged(&v2), "g", &[(desired::KEY_CANDIDATE, "true")]),
    );
    let plan = plan::plan(&v1, &world);
    let left = change(&plan, "shop-web-1-g");
    assert_eq!(left.action, Action::Delete);
    assert!(
        left.reason
            .as_deref()
            .unwrap()
            .contains("interrupted rollout")
    );
    assert_eq!(change(&plan, "shop-web-1").action, Action::None);
}

#[test]
fn a_switched_set_whose_keys_did_not_land_serves_by_the_edge_weights() {
    // The edge switched to -g, then the marking failed: -g still carries the
    // candidate key and the old set no retire-after key.
    let (v1, v2) = (shop("blue-green", "1.0.0"), shop("blue-green", "1.1.0"));
    let world = at(
        beside(
            in_set(converged(&v2), "g", &[(desired::KEY_CANDIDATE, "true")]),
            &converged(&v1),
        ),
        10,
    );
    let plan = plan::plan(&v2, &world);
    for name in ["shop-web-1-g", "shop-web-2-g"] {
        assert!(
            !plan
                .changes
                .iter()
                .any(|c| c.name == name && c.action == Action::Delete),
            "the serving set is never deleted: {plan}"
        );
    }
    assert!(
        !plan.changes.iter().any(|c| c.kind == plan::ObjectKind::Set),
        "{plan}"
    );
    let old = change(&plan, "shop-web-1");
    assert_eq!(old.action, Action::Delete);
    assert!(
        old.reason
            .as_deref()
            .unwrap()
            .contains("switched away from"),
        "{old:?}"
    );
    // With both sets weighted (a canary mid-steps) the keys decide as before.
    let mut mid = world.clone();
    for service in &mut mid
        .hosts
        .get_mut("local")
        .unwrap()
        .edge
        .as_mut()
        .unwrap()
        .config
        .as_mut()
        .unwrap()
        .services
    {
        for backend in &mut service.backends {
            backend.weight = 1;
        }
    }
    let plan = plan::plan(&v1, &mid);
    assert_eq!(change(&plan, "shop-web-1-g").action, Action::Delete);
    assert_eq!(change(&plan, "shop-web-1").action, Action::None);
}

/// `shop` with `replicas` replicas.
fn shop_of(strategy: &str, version: &str, replicas: u32) -> Desired {
    let source = format!(
        r#"topology shop {{
    network shop-net subnet="10.30.0.1/24" nat=#false
    resource web {{
        image cul8er-busybox
        replicas {replicas}
        network shop-net {{
            expose 8080 public=18080 protocol=http
        }}
        release web version="{version}" {{
            start "httpd -f -p 8080 -h /srv/www"
        }}
        strategy {strategy}
    }}
}}"#
    );
    desire(&source)
}

#[test]
fn a_new_version_with_more_replicas_serves_from_what_exists() {
    let v1 = shop_of("canary", "1.0.0", 2);
    let plan = plan::plan(&shop_of("canary", "1.1.0", 3), &converged(&v1));
    let set = change(&plan, "shop-web-c");
    let Some(plan::Target::Set(target)) = &set.target else {
        panic!("a set target: {plan}");
    };
    // The serving list is what Incus holds; the third replica comes only in the new set.
    assert_eq!(target.serving, ["shop-web-1", "shop-web-2"]);
    let names: Vec<&str> = target.instances.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["shop-web-1-c", "shop-web-2-c", "shop-web-3-c"]);
    assert!(
        !plan.changes.iter().any(|c| c.name == "shop-web-3"),
        "nothing creates or routes to shop-web-3: {plan}"
    );
    // The edge is not changed before the rollout (no backend for shop-web-3).
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| c.kind == plan::ObjectKind::Edge && c.is_change()),
        "{plan}"
    );
    insta::assert_snapshot!(plan.to_string());
}

#[test]
fn a_paused_rollout_is_named_and_its_sets_left_alone() {
    use cul8er_core::rollout::pending::{
        InstanceSet, PauseReason, PendingRollout, Phase, SetMember, SwitchStrategy,
    };
    let (v1, v2) = (shop("blue-green", "1.0.0"), shop("blue-green", "1.1.0"));
    let world = beside(
        converged(&v1),
        &in_set(converged(&v2), "g", &[(desired::KEY_CANDIDATE, "true")]),
    );
    let bare = plan::plan(&v2, &world);
    assert!(
        bare.changes
            .iter()
            .any(|c| c.name == "shop-web-1-g" && c.action == Action::Delete),
        "without the record the planner takes the set for a stray: {bare}"
    );
    let members = |names: &[&str]| {
        names
            .iter()
            .map(|n| SetMember {
                instance: (*n).to_owned(),
                backend: (*n).to_owned(),
            })
            .collect()
    };
    let paused = PendingRollout {
        topology: "shop".into(),
        revision: "20261126T044811.042Z".into(),
        resource: "web".into(),
        version: Some("1.1.0".into()),
        strategy: SwitchStrategy::BlueGreen,
        phase: Phase::PausedBeforeSwitch,
        old_set: InstanceSet {
            set: String::new(),
            members: members(&["shop-web-1", "shop-web-2"]),
        },
        new_set: InstanceSet {
            set: "g".into(),
            members: members(&["shop-web-1-g", "shop-web-2-g"]),
        },
        weights: Vec::new(),
        reason: Some(PauseReason::ManualPromotion),
        holder: cul8er_core::lock::Holder {
            user: "ops".into(),
            host: "laptop".into(),
            pid: 42,
        },
        at: "2026-11-26T04:48:11Z".into(),
        hosts: vec!["local".into()],
    };
    let plan = bare.beside_rollout(&paused);
    assert!(
        !plan
            .changes
            .iter()
            .any(|c| c.resource.as_deref() == Some("web")
                && (c.kind == plan::ObjectKind::Set || c.action == Action::Delete)),
        "{plan}"
    );
    let note = plan.notes.last().unwrap();
    assert!(
        note.contains("blue-green rollout of resource web"),
        "{note}"
    );
    assert!(note.contains("`cul8er abort`"), "{note}");
    assert_eq!(plan.summary.delete, 0);
    assert_eq!(plan.summary.replace, 0);
}
