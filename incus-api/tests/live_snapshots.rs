//! Live tests of snapshots: create, list, restore, delete.

// Helpers outside #[test] functions panic on failure, like the tests.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use incus_api::files::FileOptions;

#[tokio::test]
async fn snapshot_create_list_restore_delete() {
    let c = client();
    let (name, _g) = running_instance(&c, "snap").await;
    let files = c.instances().files(&name);
    files
        .push("/root/marker", "before\n", FileOptions::default())
        .await
        .unwrap();

    let op = c
        .instances()
        .snapshots(&name)
        .create("s0", false)
        .await
        .unwrap();
    op.wait(WAIT).await.unwrap();
    let snaps = c.instances().snapshots(&name).list().await.unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!(snaps[0].name, "s0");
    assert!(
        !c.instances()
            .snapshots(&name)
            .get("s0")
            .await
            .unwrap()
            .created_at
            .is_empty()
    );

    files
        .push("/root/marker", "after\n", FileOptions::default())
        .await
        .unwrap();
    c.instances()
        .snapshots(&name)
        .restore("s0")
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let content = incus(&["exec", &name, "--", "cat", "/root/marker"]);
    assert_eq!(content, "before\n");

    c.instances()
        .snapshots(&name)
        .delete("s0")
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    assert!(
        c.instances()
            .snapshots(&name)
            .list()
            .await
            .unwrap()
            .is_empty()
    );
    let err = c.instances().snapshots(&name).get("s0").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}
