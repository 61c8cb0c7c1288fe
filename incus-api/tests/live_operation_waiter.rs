//! Live tests of waiting on operations through one shared events subscription.

// Helpers outside #[test] functions panic on failure, like the tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use incus_api::StatusCode;
use incus_api::instances::{InstanceSource, InstanceSpec};
use tokio::task::JoinSet;
use tokio::time::Instant;

#[tokio::test]
async fn many_launches_wait_through_one_subscription() {
    let c = client();
    let waiter = c.operation_waiter().await.unwrap();
    let wc = c.with_waiter(&waiter);
    let names: Vec<String> = (0..4).map(|_| unique("waiter")).collect();
    let _guards: Vec<Guard> = names.iter().map(|n| Guard::instance(n)).collect();

    let mut launches = JoinSet::new();
    for n in &names {
        let wc = wc.clone();
        let spec = InstanceSpec::container(n, InstanceSource::image_alias(image())).start(true);
        launches.spawn(async move { wc.instances().create(&spec).await?.wait(WAIT).await });
    }
    while let Some(done) = launches.join_next().await {
        let op = done.unwrap().unwrap();
        assert_eq!(op.status_code, StatusCode::Success);
    }
    for n in &names {
        let state = c.instances().state(n).await.unwrap();
        assert_eq!(state.status_code, StatusCode::Running, "{n}");
    }
    assert!(waiter.is_live());
}

#[tokio::test]
async fn an_operation_that_ended_and_vanished_is_still_answered() {
    let c = client();
    let (name, _g) = running_instance(&c, "vanished").await;
    let waiter = c.operation_waiter().await.unwrap();
    let op = c.instances().freeze(&name).await.unwrap();
    // Incus forgets a finished operation after 5 s; `/wait` then answers 404.
    let deadline = Instant::now() + WAIT;
    loop {
        match c.operations().get(op.id()).await {
            Err(e) if e.is_not_found() => break,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
        assert!(Instant::now() < deadline, "operation never vanished");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let gone = c
        .operations()
        .wait(op.operation(), Instant::now() + WAIT)
        .await
        .unwrap_err();
    assert!(gone.is_not_found(), "{gone:?}");
    // The waiter saw it end and remembers it.
    let done = waiter
        .wait(op.operation(), Instant::now() + WAIT)
        .await
        .unwrap();
    assert_eq!(done.id, op.id());
    assert_eq!(done.status_code, StatusCode::Success);
}

#[tokio::test]
async fn a_cancelled_operation_ends_the_wait_as_cancelled() {
    let c = client();
    let waiter = c.operation_waiter().await.unwrap();
    let wc = c.with_waiter(&waiter);
    let (pending, _token) = wc
        .certificates()
        .create_token(&unique("waittok"))
        .await
        .unwrap();
    let op = pending.operation().clone();
    let mut wait = JoinSet::new();
    let w = waiter.clone();
    wait.spawn(async move { w.wait(&op, Instant::now() + WAIT).await });
    pending.cancel().await.unwrap();
    let done = wait.join_next().await.unwrap().unwrap().unwrap();
    assert_eq!(done.status_code, StatusCode::Cancelled);
    assert!(done.into_success().is_err());
}
