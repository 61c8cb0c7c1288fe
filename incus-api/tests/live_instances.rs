//! Live tests of the instance calls against a real incusd over the unix socket.

// Helpers outside #[test] functions panic on failure, like the tests.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use incus_api::StatusCode;
use incus_api::instances::{InstanceSource, InstanceSpec, ListOptions, StateAction, StateChange};

#[tokio::test]
async fn server_info_is_trusted_over_the_socket() {
    let info = client().server().get().await.unwrap();
    assert!(info.is_trusted(), "auth = {}", info.auth);
    assert_eq!(info.auth_user_method, "unix");
    assert!(info.has_extension("instance_create_start"));
    assert!(!info.environment.server_version.is_empty());
}

#[tokio::test]
async fn server_config_update_round_trips() {
    let c = client();
    // The server config is shared with other tests: change only a harmless key, and
    // put it back.
    let (info, etag) = c.server().get_with_etag().await.unwrap();
    assert!(etag.is_some(), "GET /1.0 should carry an ETag");
    let interval = info.config.get("images.remote_cache_expiry").cloned();
    let mut patch = std::collections::HashMap::new();
    patch.insert("images.remote_cache_expiry".to_owned(), "11".to_owned());
    c.server().patch_config(&patch).await.unwrap();
    let after = incus(&["config", "get", "images.remote_cache_expiry"]);
    assert_eq!(after.trim(), "11");
    patch.insert(
        "images.remote_cache_expiry".to_owned(),
        interval.unwrap_or_default(),
    );
    c.server().patch_config(&patch).await.unwrap();
    // A stale ETag is refused.
    let err = c
        .server()
        .update_config(&info.config, Some("0000"))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");
}

#[tokio::test]
async fn missing_instance_is_not_found() {
    let err = client()
        .instances()
        .get("cul8er-t-does-not-exist")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert!(err.to_string().contains("cul8er-t-does-not-exist"), "{err}");
}

#[tokio::test]
async fn create_get_update_state_rename_delete() {
    let c = client();
    let name = unique("life");
    let _g = Guard::instance(&name);
    let spec = InstanceSpec::container(&name, InstanceSource::image_alias(image()))
        .config("user.cul8er.test", "one")
        .device(
            "web",
            incus_api::devices::proxy("tcp:127.0.0.1:0", "tcp:127.0.0.1:80"),
        );
    // Port 0 is refused by the proxy device only when started; create stopped.
    let spec = InstanceSpec {
        devices: Default::default(),
        ..spec
    };
    let op = c.instances().create(&spec).await.unwrap();
    assert_eq!(op.operation().description, "Creating instance");
    op.wait(WAIT).await.unwrap();

    // A second create with the same name is refused with a clear error.
    let err = c.instances().create(&spec).await;
    let err = match err {
        Ok(op) => op.wait(WAIT).await.unwrap_err(),
        Err(e) => e,
    };
    // 6.0.4 fails the operation on the database constraint; newer servers refuse early.
    let text = err.to_string();
    assert!(
        text.contains("already exists") || text.contains("UNIQUE"),
        "{text}"
    );

    let (inst, etag) = c.instances().get_with_etag(&name).await.unwrap();
    assert_eq!(inst.status_code, StatusCode::Stopped);
    assert_eq!(inst.config["user.cul8er.test"], "one");
    let etag = etag.expect("instance GET has an ETag");

    // PUT with the current ETag works; with the old one it is a 412.
    let mut put = inst.to_put();
    put.config.insert("user.cul8er.test".into(), "two".into());
    c.instances()
        .update(&name, &put, Some(&etag))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        incus(&["config", "get", &name, "user.cul8er.test"]).trim(),
        "two"
    );
    let err = c
        .instances()
        .update(&name, &put, Some(&etag))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err:?}");

    // PATCH merges.
    c.instances()
        .patch(
            &name,
            &serde_json::json!({"config": {"user.cul8er.other": "x"}}),
            None,
        )
        .await
        .unwrap();
    let inst = c.instances().get(&name).await.unwrap();
    assert_eq!(inst.config["user.cul8er.test"], "two");
    assert_eq!(inst.config["user.cul8er.other"], "x");

    // Lists, with recursion and a filter.
    let names = c
        .instances()
        .list_names(&ListOptions::default())
        .await
        .unwrap();
    assert!(names.contains(&name));
    let filtered = c
        .instances()
        .list(&ListOptions::filter(format!("name eq {name}")))
        .await
        .unwrap();
    assert_eq!(filtered.len(), 1);
    assert_eq!(filtered[0].name, name);
    let full = c
        .instances()
        .list_full(&ListOptions::filter(format!("name eq {name}")))
        .await
        .unwrap();
    assert_eq!(full.len(), 1);
    assert!(full[0].state.is_some());
    let bad = c
        .instances()
        .list(&ListOptions::filter("nosuchfield eq 1 and"))
        .await
        .unwrap_err();
    assert!(bad.status().is_some(), "{bad:?}");

    // State changes.
    c.instances()
        .start(&name)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let st = c.instances().state(&name).await.unwrap();
    assert_eq!(st.status_code, StatusCode::Running);
    assert!(st.pid > 0);
    assert!(st.memory.as_ref().unwrap().usage > 0);
    assert!(st.cpu.as_ref().unwrap().usage > 0);
    assert!(st.network.as_ref().unwrap().contains_key("lo"));

    c.instances()
        .freeze(&name)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        c.instances().get(&name).await.unwrap().status_code,
        StatusCode::Frozen
    );
    c.instances()
        .unfreeze(&name)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        c.instances().get(&name).await.unwrap().status_code,
        StatusCode::Running
    );
    c.instances()
        .restart(&name, true)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        c.instances().get(&name).await.unwrap().status_code,
        StatusCode::Running
    );

    // Deleting a running instance is refused.
    let err = c.instances().delete(&name).await.unwrap_err();
    assert!(err.to_string().contains("running"), "{err}");

    c.instances()
        .set_state(&name, &StateChange::new(StateAction::Stop).force(true))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert!(incus(&["list", &name, "-c", "s", "-f", "csv"]).contains("STOPPED"));

    // Rebuild from the image by fingerprint.
    let fp = incus(&["image", "list", &image(), "-c", "F", "-f", "csv"]);
    let fp = fp.trim().to_owned();
    c.instances()
        .rebuild(&name, &InstanceSource::image_fingerprint(&fp))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();

    // Rename, then delete under the new name.
    let new_name = unique("renamed");
    let _g2 = Guard::instance(&new_name);
    c.instances()
        .rename(&name, &new_name)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert!(c.instances().get(&name).await.unwrap_err().is_not_found());
    c.instances()
        .delete(&new_name)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert!(
        c.instances()
            .get(&new_name)
            .await
            .unwrap_err()
            .is_not_found()
    );
}

#[tokio::test]
async fn create_from_fingerprint_and_stop_with_timeout() {
    let c = client();
    let fp = incus(&["image", "list", &image(), "-c", "F", "-f", "csv"]);
    let name = unique("fp");
    let _g = Guard::instance(&name);
    c.instances()
        .create(
            &InstanceSpec::container(&name, InstanceSource::image_fingerprint(fp.trim()))
                .start(true),
        )
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert!(c.instances().get(&name).await.unwrap().is_running());
    c.instances()
        .stop(&name, false, Some(30))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert_eq!(
        c.instances().get(&name).await.unwrap().status_code,
        StatusCode::Stopped
    );
}

#[tokio::test]
async fn failed_operation_is_an_error_with_the_incus_message() {
    let c = client();
    let name = unique("badimg");
    let _g = Guard::instance(&name);
    let r = c
        .instances()
        .create(&InstanceSpec::container(
            &name,
            InstanceSource::image_alias("cul8er-t-no-such-image"),
        ))
        .await;
    let err = match r {
        Ok(op) => op.wait(WAIT).await.unwrap_err(),
        Err(e) => e,
    };
    assert!(
        matches!(
            err,
            incus_api::Error::OperationFailed { .. } | incus_api::Error::Api { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Image"), "{err}");
}
