//! Decoding tests on responses recorded from a live Incus 6.0.4 daemon
//! (`fixtures/incus/`, written by `scripts/record-fixtures.sh`), plus hand-made
//! hostile and newer-server bodies that are labelled as such there.

use std::collections::HashMap;
use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::cluster::ClusterInfo;
use crate::error::Error;
use crate::events::{Event, EventPayload};
use crate::images::{Image, ImageAlias};
use crate::instances::{Instance, InstanceFull, InstanceState};
use crate::operations::{
    Operation, OperationClass, StatusCode as OpStatus, WaitOutcome, interpret_wait,
};
use crate::response::{Envelope, decode_envelope};
use crate::server::ServerInfo;
use crate::snapshots::Snapshot;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/incus")
}

struct Recorded {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn load(name: &str) -> Recorded {
    let path = dir().join(format!("{name}.http"));
    let raw = fs_err::read(&path).expect("fixture exists");
    parse(&raw).unwrap_or_else(|| panic!("{} is not a raw HTTP response", path.display()))
}

fn parse(raw: &[u8]) -> Option<Recorded> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..split]).ok()?;
    let body = raw[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (k, v) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(k.trim().as_bytes()).ok()?,
            HeaderValue::from_str(v.trim()).ok()?,
        );
    }
    Some(Recorded {
        status: StatusCode::from_u16(status).ok()?,
        headers,
        body,
    })
}

fn envelope(name: &str) -> crate::Result<Envelope> {
    let r = load(name);
    decode_envelope(&Method::GET, name, r.status, &r.headers, &r.body)
}

fn sync<T: DeserializeOwned>(name: &str) -> (T, Option<String>) {
    envelope(name)
        .and_then(|e| e.into_sync(&Method::GET, name))
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

fn api_error(name: &str) -> Error {
    let env = envelope(name).unwrap_or_else(|e| panic!("{name}: {e:?}"));
    env.into_result(&Method::GET, name)
        .err()
        .unwrap_or_else(|| panic!("{name} should be an error"))
}

fn operation(name: &str) -> Operation {
    envelope(name)
        .and_then(|e| e.into_operation(&Method::POST, name))
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
}

#[test]
fn every_fixture_decodes_or_fails_cleanly() {
    let mut count = 0;
    for entry in fs_err::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("http") {
            continue;
        }
        let raw = fs_err::read(&path).unwrap();
        let r = parse(&raw).unwrap();
        // Never a panic, whatever the body.
        let _ = decode_envelope(&Method::GET, "/x", r.status, &r.headers, &r.body);
        count += 1;
    }
    assert!(count >= 45, "only {count} fixtures found");
}

#[test]
fn truncating_any_recorded_body_is_an_error_never_a_panic() {
    for name in [
        "server",
        "instance-full",
        "exec-record-wait",
        "instance-create-async",
    ] {
        let r = load(name);
        let body = r.body.trim_ascii_end();
        for cut in (0..body.len()).step_by(7) {
            let res = decode_envelope(&Method::GET, name, r.status, &r.headers, &body[..cut]);
            assert!(res.is_err(), "{name} cut at {cut} decoded");
        }
    }
}

#[test]
fn server_trusted_and_untrusted() {
    let (info, etag): (ServerInfo, _) = sync("server");
    assert!(info.is_trusted());
    assert!(etag.is_some());
    assert_eq!(info.environment.server_version, "6.0.4");
    assert!(info.has_extension("instance_create_start"));
    assert_eq!(info.environment.certificate_fingerprint.len(), 64);
    let (untrusted, _): (ServerInfo, _) = sync("server-untrusted");
    assert!(!untrusted.is_trusted());
    assert!(untrusted.environment.server_version.is_empty());
    let err = api_error("instances-untrusted");
    assert!(err.is_forbidden(), "{err:?}");
}

#[test]
fn instances_single_full_and_lists() {
    let (inst, etag): (Instance, _) = sync("instance");
    assert_eq!(inst.name, "cul8er-t-fixture");
    assert_eq!(inst.status_code, OpStatus::Running);
    let etag = etag.expect("ETag header");
    assert_eq!(etag.len(), 64, "quotes are stripped: {etag}");
    let (full, _): (InstanceFull, _) = sync("instance-full");
    assert!(full.state.is_some());
    // No snapshots yet: Incus sends null.
    assert!(full.snapshots.unwrap_or_default().is_empty());
    let (list, _): (Vec<Instance>, _) = sync("instances-recursion1");
    assert_eq!(list.len(), 1);
    let (list, _): (Vec<InstanceFull>, _) = sync("instances-recursion2");
    assert_eq!(list[0].instance.name, "cul8er-t-fixture");
}

#[test]
fn instance_state_running_and_stopped() {
    let (st, _): (InstanceState, _) = sync("instance-state-running");
    assert_eq!(st.status_code, OpStatus::Running);
    assert!(st.pid > 0);
    assert!(st.memory.unwrap().usage > 0);
    let (st, _): (InstanceState, _) = sync("instance-state-stopped");
    assert_eq!(st.status_code, OpStatus::Stopped);
    assert!(st.network.is_none());
    assert_eq!(st.started_at, "0001-01-01T00:00:00Z");
}

#[test]
fn api_errors_keep_status_and_message() {
    let e = api_error("instance-not-found");
    assert!(e.is_not_found());
    assert!(e.api_message().unwrap().contains("not found"), "{e}");
    let e = api_error("instances-filter-invalid");
    assert_eq!(e.status(), Some(500));
    assert!(e.to_string().contains("Properties.os"), "{e}");
    let e = api_error("events-without-upgrade");
    assert_eq!(e.status(), Some(400));
    let e = api_error("instance-delete-running");
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("running"), "{e}");
    assert!(api_error("instance-patch-etag-mismatch").is_precondition_failed());
    assert!(api_error("profile-create-exists").is_conflict());
    assert!(api_error("file-missing").is_not_found());
    let e = api_error("cluster-members-standalone");
    assert!(e.to_string().contains("not clustered"), "{e}");
}

#[test]
fn async_responses_carry_typed_operations() {
    let op = operation("instance-create-async");
    assert_eq!(op.class, OperationClass::Task);
    assert_eq!(op.description, "Creating instance");
    assert!(!op.is_final());
    assert!(op.resources.unwrap()["instances"][0].ends_with("cul8er-t-fixture"));
    let op = operation("exec-websocket-async");
    assert_eq!(op.class, OperationClass::Websocket);
    let fds = op.metadata_field("fds").unwrap();
    for fd in ["0", "1", "2", "control"] {
        assert!(fds.get(fd).is_some(), "fd {fd}");
    }
    let op = operation("certificate-token-async");
    assert_eq!(op.class, OperationClass::Token);
    assert!(op.metadata_field("fingerprint").is_some());
}

fn wait(name: &str, op: &Operation) -> WaitOutcome {
    interpret_wait(op, envelope(name).unwrap())
}

#[test]
fn wait_bodies_of_604_and_newer_servers() {
    let started = operation("instance-create-async");
    match wait("operation-wait-success", &started) {
        WaitOutcome::Done(op) => assert_eq!(op.status_code, OpStatus::Success),
        _ => panic!("success not recognised"),
    }
    for name in ["operation-wait-failure", "handmade-6.0.5-wait-failure"] {
        match wait(name, &started) {
            WaitOutcome::Done(op) => {
                assert_eq!(op.status_code, OpStatus::Failure, "{name}");
                assert!(op.err.contains("Image not provided"), "{name}: {}", op.err);
            }
            _ => panic!("{name}: failure not recognised"),
        }
    }
    for name in ["operation-wait-timeout", "handmade-6.0.5-wait-timeout"] {
        assert!(
            matches!(wait(name, &started), WaitOutcome::Again),
            "{name}: timeout not recognised"
        );
    }
}

#[test]
fn recorded_exec_operation_has_exit_code_and_output_paths() {
    let (op, _): (Operation, _) = sync("exec-record-wait");
    assert_eq!(op.status_code, OpStatus::Success);
    assert_eq!(op.metadata_field("return").unwrap().as_i64(), Some(3));
    let output: HashMap<String, String> =
        serde_json::from_value(op.metadata_field("output").unwrap().clone()).unwrap();
    assert!(output["1"].ends_with(".stdout"));
    assert!(output["2"].ends_with(".stderr"));
}

#[test]
fn files_directory_listing_and_headers() {
    let r = load("file-directory");
    assert_eq!(r.headers["x-incus-type"], "directory");
    let (names, _): (Vec<String>, _) = sync("file-directory");
    assert_eq!(names, vec!["f"]);
    let r = load("file-regular");
    assert_eq!(r.headers["x-incus-mode"], "0644");
    assert_eq!(r.body, b"hi\n");
    let r = load("file-symlink");
    assert_eq!(r.headers["x-incus-type"], "symlink");
}

#[test]
fn snapshots_and_other_collections() {
    let (snaps, _): (Vec<Snapshot>, _) = sync("snapshots");
    assert_eq!(snaps[0].name, "s0");
    let (imgs, _): (Vec<Image>, _) = sync("images");
    assert!(!imgs.is_empty());
    let (aliases, _): (Vec<ImageAlias>, _) = sync("image-aliases");
    assert!(aliases.iter().all(|a| !a.target.is_empty()));
    let (nets, _): (Vec<crate::networks::Network>, _) = sync("networks");
    assert!(!nets.is_empty());
    let (pools, _): (Vec<crate::storage::StoragePool>, _) = sync("storage-pools");
    assert!(pools.iter().any(|p| p.name == "default"));
    let (projects, _): (Vec<crate::projects::Project>, _) = sync("projects");
    assert!(projects.iter().any(|p| p.name == "default"));
    let (certs, _): (Vec<crate::certificates::CertificateEntry>, _) = sync("certificates");
    assert!(certs.iter().all(|c| c.fingerprint.len() == 64));
    let (cluster, _): (ClusterInfo, _) = sync("cluster");
    assert!(!cluster.enabled);
    let (profile, etag): (crate::profiles::Profile, _) = sync("profile");
    assert_eq!(profile.config["user.a"], "1");
    assert!(etag.is_some());
    let (ops, _): (HashMap<String, Vec<Operation>>, _) = sync("operations");
    assert!(ops.values().flatten().all(|o| !o.id.is_empty()));
}

#[test]
fn created_profile_is_a_201_sync() {
    let r = load("profile-create");
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(matches!(
        envelope("profile-create").unwrap(),
        Envelope::Sync { .. }
    ));
}

#[test]
fn hostile_bodies_are_errors() {
    assert!(matches!(
        envelope("handmade-truncated"),
        Err(Error::Decode { .. })
    ));
    assert!(matches!(
        envelope("handmade-unknown-type"),
        Err(Error::Decode { .. })
    ));
    assert!(matches!(
        envelope("handmade-async-bad-operation"),
        Err(Error::Decode { .. })
    ));
    let e = api_error("handmade-html-502");
    assert_eq!(e.status(), Some(502));
}

#[test]
fn recorded_events_decode_to_typed_payloads() {
    let text = fs_err::read_to_string(dir().join("events-6.0.4.jsonl")).unwrap();
    let mut actions = Vec::new();
    let mut ops = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let ev = Event::from_json(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
        match ev.payload {
            EventPayload::Lifecycle(l) => actions.push(l.action),
            EventPayload::Operation(_) => ops += 1,
            _ => {}
        }
    }
    for a in [
        "instance-created",
        "instance-started",
        "instance-stopped",
        "instance-deleted",
    ] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    assert!(ops > 0);
}
