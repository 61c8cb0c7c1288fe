//! Live tests of the events stream and of waiting on operations through it.

// Helpers outside #[test] functions panic on failure, like the tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use incus_api::StatusCode;
use incus_api::events::{EventPayload, EventStream, EventType};
use incus_api::instances::{InstanceSource, InstanceSpec};
use tokio::time::Instant;

/// Reads lifecycle actions for `name` until `last` is seen.
async fn actions_until(events: &mut EventStream, name: &str, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    while !seen.iter().any(|a| a == last) {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no {last} event for {name}; saw {seen:?}"))
            .expect("stream ended")
            .expect("event decodes");
        if let Some(l) = ev.lifecycle()
            && l.object_name() == name
        {
            seen.push(l.action.clone());
        }
    }
    seen
}

#[tokio::test]
async fn events_see_the_lifecycle_of_an_instance_the_test_drives() {
    let c = client();
    let mut events = c
        .events()
        .subscribe(&[EventType::Lifecycle, EventType::Operation])
        .await
        .unwrap();
    let name = unique("events");
    let _g = Guard::instance(&name);

    let op = c
        .instances()
        .create(&InstanceSpec::container(
            &name,
            InstanceSource::image_alias(image()),
        ))
        .await
        .unwrap();
    let done = events
        .wait_operation(op.operation(), Instant::now() + WAIT)
        .await
        .unwrap();
    assert_eq!(done.status_code, StatusCode::Success);
    assert!(
        actions_until(&mut events, &name, "instance-created")
            .await
            .contains(&"instance-created".to_owned())
    );

    c.instances()
        .start(&name)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    actions_until(&mut events, &name, "instance-started").await;
    c.instances()
        .stop(&name, true, None)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    actions_until(&mut events, &name, "instance-stopped").await;
    c.instances()
        .delete(&name)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    actions_until(&mut events, &name, "instance-deleted").await;
    events.close().await.unwrap();
}

#[tokio::test]
async fn a_fast_operation_is_not_missed_when_subscribed_first() {
    let c = client();
    let (name, _g) = running_instance(&c, "fastop").await;
    let mut events = c.events().subscribe(&[EventType::Operation]).await.unwrap();
    let op = c.instances().freeze(&name).await.unwrap();
    // Let the operation finish and vanish from the server before following it.
    let id = op.id().to_owned();
    let deadline = Instant::now() + WAIT;
    loop {
        match c.operations().get(&id).await {
            Err(e) if e.is_not_found() => break,
            Ok(_) => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "operation never vanished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = events
        .wait_operation(op.operation(), Instant::now() + WAIT)
        .await
        .unwrap();
    assert_eq!(done.status_code, StatusCode::Success);
    assert_eq!(done.id, id);
}

#[tokio::test]
async fn events_are_project_filtered() {
    let c = client();
    let project = unique("proj");
    incus(&[
        "project",
        "create",
        &project,
        "-c",
        "features.images=false",
        "-c",
        "features.profiles=false",
    ]);
    let _pg = Guard::new(&socket(), &["project", "delete", &project]);
    let mut in_project = c
        .project(&project)
        .events()
        .subscribe(&[EventType::Lifecycle])
        .await
        .unwrap();

    // Something happens in the default project first, then in ours.
    let (other, _g) = running_instance(&c, "noise").await;
    let name = unique("inproj");
    let _ig = Guard::new(
        &socket(),
        &["delete", "--force", "--project", &project, &name],
    );
    c.project(&project)
        .instances()
        .create(&InstanceSpec::container(
            &name,
            InstanceSource::image_alias(image()),
        ))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, in_project.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let l = ev.lifecycle().unwrap();
        assert_ne!(
            l.object_name(),
            other,
            "an event of the default project leaked in"
        );
        assert_eq!(ev.project, project);
        if l.action == "instance-created" && l.object_name() == name {
            break;
        }
    }
    drop(_ig);
}

#[tokio::test]
async fn unknown_project_events_are_refused() {
    let err = client()
        .project("cul8er-t-no-such-project")
        .events()
        .subscribe(&[])
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

/// incusd runs at its default log level (warning) here, so the test triggers a warning
/// it can cause without side effects: an untrusted TLS client asking for a protected
/// endpoint is refused with "Rejecting request from untrusted client" (daemon.go).
#[tokio::test]
async fn logging_events_carry_the_daemons_warnings() {
    let addr = std::env::var("CUL8ER_TEST_TLS_ADDRESS").unwrap_or_else(|_| "127.0.0.1:8443".into());
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let port: u16 = port.parse().expect("port");
    let mut events = client()
        .events()
        .subscribe(&[EventType::Logging])
        .await
        .unwrap();

    let pinned = incus_api::trust::fetch_server_certificate(host, port, Duration::from_secs(10))
        .await
        .unwrap();
    let stranger = incus_api::trust::generate_client_certificate("cul8er-t-logging@test")
        .unwrap()
        .identity()
        .unwrap();
    let untrusted = incus_api::ClientBuilder::https(host, port)
        .pinned_certificate(pinned)
        .identity(stranger)
        .build()
        .unwrap();
    let refused = untrusted.instances().list_names(&Default::default()).await;
    assert!(refused.is_err(), "an untrusted client listed instances");

    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    let warning = loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap_or_else(|_| panic!("no warning logged; saw {seen:?}"))
            .expect("stream ended")
            .expect("event decodes");
        match ev.payload {
            EventPayload::Logging(l) if l.message == "Rejecting request from untrusted client" => {
                break l;
            }
            other => seen.push(format!("{other:?}")),
        }
    };
    assert_eq!(warning.level, "warning");
    let ip = warning
        .context
        .get("ip")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    assert!(ip.starts_with(&format!("{host}:")), "{warning:?}");
    events.close().await.unwrap();
}
