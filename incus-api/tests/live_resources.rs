//! Live tests of profiles, networks, network ACLs, images, storage, projects and
//! cluster placement.

// Helpers outside #[test] functions panic on failure, like the tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use common::*;
use incus_api::devices;
use incus_api::files::FileOptions;
use incus_api::images::{ImageImport, imported_fingerprint};
use incus_api::instances::{InstanceSource, InstanceSpec};
use incus_api::network_acls::{AclRule, NetworkAclPut};
use incus_api::networks::{NetworkPut, NetworkSpec};
use incus_api::profiles::ProfilePut;
use incus_api::projects::ProjectPut;
use incus_api::storage_volumes::StorageVolumeSpec;
use sha2::Digest as _;

fn small_random() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    nanos ^ std::process::id().rotate_left(16)
}

#[tokio::test]
async fn profiles_create_update_use_rename_delete() {
    let c = client();
    let name = unique("prof");
    let _g = Guard::new(&socket(), &["profile", "delete", &name]);
    let mut put = ProfilePut {
        description: "test profile".into(),
        ..ProfilePut::default()
    };
    put.config.insert("user.cul8er.profile".into(), "1".into());
    put.devices.insert(
        "web".into(),
        devices::proxy("tcp:127.0.0.1:0", "tcp:127.0.0.1:80"),
    );
    c.profiles().create(&name, &put).await.unwrap();
    let err = c.profiles().create(&name, &put).await.unwrap_err();
    assert!(err.is_conflict(), "{err:?}");

    let (p, etag) = c.profiles().get(&name).await.unwrap();
    assert_eq!(p.devices["web"]["type"], "proxy");
    let etag = etag.unwrap();
    let mut put2 = p.to_put();
    put2.devices.clear();
    put2.config.insert("user.cul8er.profile".into(), "2".into());
    c.profiles()
        .update(&name, &put2, Some(&etag))
        .await
        .unwrap();
    assert!(
        c.profiles()
            .update(&name, &put2, Some(&etag))
            .await
            .unwrap_err()
            .is_precondition_failed()
    );
    c.profiles()
        .patch(
            &name,
            &serde_json::json!({"config": {"user.cul8er.extra": "x"}}),
        )
        .await
        .unwrap();
    assert_eq!(
        incus(&["profile", "get", &name, "user.cul8er.extra"]).trim(),
        "x"
    );
    assert!(
        c.profiles()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == name)
    );

    // An instance using it sees its config, and the profile cannot go while used.
    let inst = unique("profinst");
    let _ig = Guard::instance(&inst);
    c.instances()
        .create(
            &InstanceSpec::container(&inst, InstanceSource::image_alias(image()))
                .profiles(vec!["default".into(), name.clone()]),
        )
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let i = c.instances().get(&inst).await.unwrap();
    assert_eq!(i.expanded_config["user.cul8er.profile"], "2");
    assert!(c.profiles().delete(&name).await.is_err());
    c.instances()
        .delete(&inst)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();

    let renamed = unique("profren");
    let _g2 = Guard::new(&socket(), &["profile", "delete", &renamed]);
    c.profiles().rename(&name, &renamed).await.unwrap();
    c.profiles().delete(&renamed).await.unwrap();
    assert!(c.profiles().get(&renamed).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn bridge_network_create_update_delete_and_an_instance_gets_a_lease() {
    let c = client();
    let r = small_random();
    // Interface names are at most 15 characters.
    let name = format!("c8t{:08x}", r);
    let _g = Guard::new(&socket(), &["network", "delete", &name]);
    let subnet = format!("10.{}.{}", 200 + (r % 50), (r >> 8) % 250);
    let mut config = HashMap::new();
    config.insert("ipv4.address".to_owned(), format!("{subnet}.1/24"));
    config.insert("ipv4.nat".to_owned(), "false".to_owned());
    config.insert("ipv6.address".to_owned(), "none".to_owned());
    c.networks()
        .create(&NetworkSpec {
            name: name.clone(),
            network_type: "bridge".into(),
            description: "test bridge".into(),
            config,
        })
        .await
        .unwrap();
    let (net, etag) = c.networks().get_with_etag(&name).await.unwrap();
    assert!(net.managed);
    assert_eq!(net.config["ipv4.address"], format!("{subnet}.1/24"));
    let mut put = NetworkPut {
        description: net.description.clone(),
        config: net.config.clone(),
    };
    put.config.insert("user.cul8er.test".into(), "1".into());
    c.networks()
        .update(&name, &put, etag.as_deref())
        .await
        .unwrap();
    assert_eq!(
        incus(&["network", "get", &name, "user.cul8er.test"]).trim(),
        "1"
    );

    let (inst, _ig) = {
        let inst = unique("nic");
        let g = Guard::instance(&inst);
        c.instances()
            .create(
                &InstanceSpec::container(&inst, InstanceSource::image_alias(image()))
                    .device("eth0", devices::nic(&name, "eth0"))
                    .start(true),
            )
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
        (inst, g)
    };
    // The image's init runs udhcpc; ask for an address explicitly too, so the check
    // does not depend on how fast that is.
    let out = c
        .instances()
        .exec_recorded(
            &inst,
            &incus_api::exec::ExecRequest::new(["udhcpc", "-i", "eth0", "-n", "-q", "-t", "20"]),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "udhcpc: {}", out.stderr_text());
    let st = c.instances().state(&inst).await.unwrap();
    let addrs = st.addresses("inet");
    assert!(addrs.iter().any(|a| a.starts_with(&subnet)), "{addrs:?}");

    // In use: refused. Then free.
    assert!(c.networks().delete(&name).await.is_err());
    c.instances()
        .stop(&inst, true, None)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    c.instances()
        .delete(&inst)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    c.networks().delete(&name).await.unwrap();
    assert!(
        c.networks()
            .get_with_etag(&name)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn network_acl_create_update_delete() {
    let c = client();
    let name = unique("acl");
    let _g = Guard::new(&socket(), &["network", "acl", "delete", &name]);
    let put = NetworkAclPut {
        description: "web in".into(),
        ingress: vec![AclRule::allow("tcp", "80,443")],
        egress: vec![],
        config: HashMap::new(),
    };
    c.network_acls().create(&name, &put).await.unwrap();
    let (acl, etag) = c.network_acls().get(&name).await.unwrap();
    assert_eq!(acl.ingress, vec![AclRule::allow("tcp", "80,443")]);
    let mut put2 = put.clone();
    put2.egress.push(AclRule {
        action: "drop".into(),
        state: "enabled".into(),
        destination: "10.0.0.0/8".into(),
        ..AclRule::default()
    });
    c.network_acls()
        .update(&name, &put2, etag.as_deref())
        .await
        .unwrap();
    assert!(
        c.network_acls()
            .update(&name, &put2, etag.as_deref())
            .await
            .unwrap_err()
            .is_precondition_failed()
    );
    let shown = incus(&["network", "acl", "show", &name]);
    assert!(shown.contains("10.0.0.0/8"), "{shown}");
    let bad = NetworkAclPut {
        ingress: vec![AclRule {
            action: "explode".into(),
            state: "enabled".into(),
            ..AclRule::default()
        }],
        ..put.clone()
    };
    let err = c
        .network_acls()
        .create(&unique("badacl"), &bad)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Action must be one of"), "{err}");
    assert!(
        c.network_acls()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|a| a.name == name)
    );
    c.network_acls().delete(&name).await.unwrap();
    assert!(
        c.network_acls()
            .get(&name)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

fn build_tarball(dir: &Path, tag: &str) -> Vec<u8> {
    let rootfs = dir.join("rootfs");
    fs_err::create_dir_all(rootfs.join("etc")).unwrap();
    fs_err::write(rootfs.join("etc/tag"), tag).unwrap();
    fs_err::write(
        dir.join("metadata.yaml"),
        format!("architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: cul8er-test\n  description: {tag}\n"),
    )
    .unwrap();
    let out = std::process::Command::new("tar")
        .args(["-czf", "img.tar.gz", "metadata.yaml", "rootfs"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    fs_err::read(dir.join("img.tar.gz")).unwrap()
}

#[tokio::test]
async fn images_import_from_a_stream_alias_and_delete() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let tag = unique("img");
    let tarball = build_tarball(dir.path(), &tag);
    let expected = hex::encode(sha2::Sha256::digest(&tarball));
    let _g = Guard::new(&socket(), &["image", "delete", &expected]);

    // Streamed in small chunks.
    let chunks: Vec<Result<Bytes, std::io::Error>> = tarball
        .chunks(1000)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let op = c
        .images()
        .import_stream(
            futures_util::stream::iter(chunks),
            &ImageImport {
                filename: Some("img.tar.gz".into()),
                ..ImageImport::default()
            },
        )
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(imported_fingerprint(&op).unwrap(), expected);

    let img = c.images().get(&expected).await.unwrap();
    assert_eq!(img.properties["description"], tag);
    c.images()
        .create_alias(&tag, &expected, "test alias")
        .await
        .unwrap();
    assert!(
        c.images()
            .create_alias(&tag, &expected, "")
            .await
            .unwrap_err()
            .is_conflict()
    );
    assert_eq!(c.images().alias(&tag).await.unwrap().target, expected);
    assert!(
        c.images()
            .aliases()
            .await
            .unwrap()
            .iter()
            .any(|a| a.name == tag)
    );
    assert!(
        c.images()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|i| i.fingerprint == expected)
    );
    c.images().delete_alias(&tag).await.unwrap();
    c.images()
        .delete(&expected)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert!(c.images().get(&expected).await.unwrap_err().is_not_found());

    // A broken tarball fails the operation with Incus's message.
    let err = match c
        .images()
        .import_bytes(b"not a tarball".to_vec(), &ImageImport::default())
        .await
    {
        Ok(op) => op.wait(WAIT).await.unwrap_err(),
        Err(e) => e,
    };
    assert!(!err.to_string().is_empty());
    assert!(
        matches!(
            err,
            incus_api::Error::OperationFailed { .. } | incus_api::Error::Api { .. }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn storage_pool_and_a_custom_volume_attached_snapshotted_and_deleted() {
    let c = client();
    let pools = c.storage().pools().await.unwrap();
    assert!(pools.iter().any(|p| p.name == "default"));

    let pool = unique("pool");
    let _pg = Guard::new(&socket(), &["storage", "delete", &pool]);
    c.storage()
        .create_pool(&pool, "dir", &HashMap::new())
        .await
        .unwrap();
    let (p, _) = c.storage().pool(&pool).await.unwrap();
    assert_eq!(p.driver, "dir");

    let vol = unique("vol");
    let _vg = Guard::new(&socket(), &["storage", "volume", "delete", &pool, &vol]);
    let vols = c.storage_volumes(&pool);
    vols.create(&StorageVolumeSpec::filesystem(&vol), WAIT)
        .await
        .unwrap();

    let (inst, _ig) = running_instance(&c, "vol").await;
    c.instances()
        .patch(
            &inst,
            &serde_json::json!({"devices": {"data": devices::disk_volume(&pool, &vol, "/data")}}),
            None,
        )
        .await
        .unwrap();
    c.instances()
        .files(&inst)
        .push("/data/hello", "kept\n", FileOptions::default())
        .await
        .unwrap();
    c.storage()
        .snapshot_volume(&pool, &vol, "snap0")
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let snaps = c.storage().volume_snapshots(&pool, &vol).await.unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].name.ends_with("snap0"));
    assert!(
        vols.delete(&vol).await.is_err(),
        "an attached volume cannot be deleted"
    );

    // Detach (PUT without the device), then clean up.
    let (i, etag) = c.instances().get_with_etag(&inst).await.unwrap();
    let mut put = i.to_put();
    put.devices.remove("data");
    c.instances()
        .update(&inst, &put, etag.as_deref())
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    c.storage()
        .delete_volume_snapshot(&pool, &vol, "snap0")
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    vols.delete(&vol).await.unwrap();
    assert!(vols.get_with_etag(&vol).await.unwrap_err().is_not_found());
    c.storage().delete_pool(&pool).await.unwrap();
}

#[tokio::test]
async fn projects_create_update_rename_delete_and_scope_calls() {
    let c = client();
    let name = unique("proj");
    let _g = Guard::new(&socket(), &["project", "delete", &name]);
    let mut put = ProjectPut::default();
    put.config.insert("features.images".into(), "false".into());
    put.config
        .insert("features.profiles".into(), "false".into());
    c.projects().create(&name, &put).await.unwrap();
    assert!(
        c.projects()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|p| p.name == name)
    );
    let (p, etag) = c.projects().get_with_etag(&name).await.unwrap();
    let mut put2 = p.to_put();
    put2.description = "changed".into();
    c.projects()
        .update(&name, &put2, etag.as_deref())
        .await
        .unwrap();

    // A scoped client creates the instance in the project.
    let inst = unique("pinst");
    let scoped = c.project(&name);
    {
        let _ig = Guard::new(&socket(), &["delete", "--force", "--project", &name, &inst]);
        scoped
            .instances()
            .create(&InstanceSpec::container(
                &inst,
                InstanceSource::image_alias(image()),
            ))
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
        assert!(incus(&["list", "--project", &name, "-f", "csv", "-c", "n"]).contains(&inst));
        assert!(c.instances().get(&inst).await.unwrap_err().is_not_found());
        scoped
            .instances()
            .delete(&inst)
            .await
            .unwrap()
            .wait(WAIT)
            .await
            .unwrap();
    }

    let renamed = unique("projren");
    let _g2 = Guard::new(&socket(), &["project", "delete", &renamed]);
    c.projects()
        .rename(&name, &renamed)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    c.projects().delete(&renamed).await.unwrap();
    assert!(
        c.projects()
            .get_with_etag(&renamed)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn cluster_members_and_placement_on_a_named_member() {
    let sock = cluster_socket();
    if !sock.exists() {
        eprintln!(
            "SKIPPED: no cluster socket at {} (set CUL8ER_TEST_CLUSTER_SOCKET or run `just setup`)",
            sock.display()
        );
        return;
    }
    let c = incus_api::Client::unix(&sock).unwrap();
    let info = c.cluster().get().await.unwrap();
    assert!(info.enabled, "the test cluster is not clustered");
    let members = c.cluster().members().await.unwrap();
    assert!(members.len() >= 2, "{members:?}");
    assert!(members.iter().all(|m| m.status == "Online"), "{members:?}");
    // Place on the member this socket is NOT, to prove the target is honoured.
    let other = members
        .iter()
        .find(|m| m.server_name != info.server_name)
        .unwrap()
        .server_name
        .clone();
    assert_eq!(c.cluster().member(&other).await.unwrap().server_name, other);

    let name = unique("placed");
    let _g = Guard::instance_on(&sock, &name);
    c.target(&other)
        .instances()
        .create(&InstanceSpec::container(&name, InstanceSource::image_alias(image())).start(true))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let inst = c.instances().get(&name).await.unwrap();
    assert_eq!(inst.location, other);
    let cli = incus_on(&sock, &["list", &name, "-f", "csv", "-c", "L"]);
    assert_eq!(cli.trim(), other);
    // Instance calls are forwarded to the owning member.
    let out = c
        .instances()
        .exec_recorded(
            &name,
            &incus_api::exec::ExecRequest::new(["hostname"]),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_text().trim(), name);
    // A standalone server says it is not clustered.
    let standalone = client();
    if !standalone.cluster().get().await.unwrap().enabled {
        let err = standalone.cluster().members().await.unwrap_err();
        assert!(err.to_string().contains("not clustered"), "{err}");
    }
}
