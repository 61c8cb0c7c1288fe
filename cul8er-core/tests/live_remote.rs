//! Remotes against the real daemon's TLS listener (`CUL8ER_TEST_TLS_ADDRESS`, default
//! 127.0.0.1:8443): a trust token from `incus config trust add` (the `incus` command as
//! an independent helper) adds the remote, and a topology host naming it deploys a
//! release over TLS; a wrong fingerprint is refused, and nothing is trusted without a
//! token or a confirmed fingerprint.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cul8er_core::connect;
use cul8er_core::release::{self, ReleaseSpec, ResolvedEnv};
use cul8er_core::remote::{RemoteError, RemoteStore, RemoteTrust};
use cul8er_core::topology::{Endpoint, Host};
use incus_api::instances::{InstanceSource, InstanceSpec};

const WAIT: Duration = Duration::from_secs(120);

fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET").map_or_else(
        || PathBuf::from("/var/lib/incus/unix.socket"),
        PathBuf::from,
    )
}

fn address() -> String {
    let tls = std::env::var("CUL8ER_TEST_TLS_ADDRESS").unwrap_or_else(|_| "127.0.0.1:8443".into());
    format!("https://{tls}")
}

fn unique(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "cul8er-t-{what}-{}-{:x}",
        std::process::id(),
        nanos % 0xfffff
    )
}

fn incus(args: &[&str]) -> String {
    let out = Command::new("incus")
        .env("INCUS_SOCKET", socket())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "incus {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `incus ARGS` when dropped, ignoring the outcome (cleanup).
struct Guard(Vec<String>);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("incus")
            .env("INCUS_SOCKET", socket())
            .args(&self.0)
            .output();
    }
}

fn guard(args: &[&str]) -> Guard {
    Guard(args.iter().map(|s| (*s).to_owned()).collect())
}

/// A trust token for a client called `name`, and a guard that revokes it if unused.
fn token(name: &str) -> (String, Guard) {
    let token = incus(&["config", "trust", "add", name, "--quiet"]);
    (token, guard(&["config", "trust", "revoke-token", name]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_added_with_a_token_deploys_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let store = RemoteStore::new(dir.path().join("config"));
    let name = unique("remote");
    let (token, _revoke) = token(&name);
    let client_fp = store.client_identity().unwrap().certificate().fingerprint();
    let _untrust = guard(&["config", "trust", "remove", &client_fp]);

    let remote = store
        .add("lab", &address(), RemoteTrust::Token(token))
        .await
        .unwrap();
    assert_eq!(remote.address, address());
    let server_fp = incus(&["query", "/1.0"]);
    assert!(
        server_fp.contains(&remote.fingerprint),
        "the pinned fingerprint is the server's"
    );
    // The server trusts cul8er's certificate, as the `incus` command sees it.
    assert!(incus(&["config", "trust", "list", "-f", "csv"]).contains(&client_fp[..12]));
    assert_eq!(store.list().unwrap(), std::slice::from_ref(&remote));
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &fs_err::metadata(dir.path().join("config/client.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(key_mode & 0o777, 0o600);

    // A topology host naming the remote: TLS with the pinned certificate.
    let host = Host {
        name: "lab-host".into(),
        endpoint: Endpoint::Remote {
            remote: "lab".into(),
        },
        project: None,
        platform: None,
        cluster: None,
    };
    let client = connect::connect(&host, &store).unwrap();
    assert!(
        client.endpoint().contains("127.0.0.1:8443") || client.endpoint().contains(&address()[8..])
    );
    assert!(client.server().get().await.unwrap().is_trusted());

    let instance = unique("rel-tls");
    let _instance = guard(&["delete", "--force", &instance]);
    let image = std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into());
    client
        .instances()
        .create(&InstanceSpec::container(&instance, InstanceSource::image_alias(image)).start(true))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let spec = ReleaseSpec {
        name: "tlsapp".into(),
        version: "1".into(),
        artifact: None,
        start: "sleep 1000000".into(),
        workdir: None,
        user: None,
        before_start: Vec::new(),
        after_start: Vec::new(),
    };
    release::deploy(&client, &instance, &spec, &ResolvedEnv::new())
        .await
        .unwrap();
    let status = release::status(&client, &instance, &spec).await.unwrap();
    assert!(status.running, "{status:?}");
    // Seen independently over the unix socket with the `incus` command.
    let ps = incus(&["exec", &instance, "--", "ps"]);
    assert!(ps.contains("sleep 1000000"), "{ps}");

    // Added twice: refused, the first stays.
    let err = store
        .add("lab", &address(), RemoteTrust::Unconfirmed)
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Exists { .. }), "{err}");

    // With the client trusted, a confirmed fingerprint is enough for a second remote.
    let second = store
        .add(
            "lab2",
            &address(),
            RemoteTrust::Fingerprint(remote.fingerprint.to_uppercase()),
        )
        .await
        .unwrap();
    assert_eq!(second.fingerprint, remote.fingerprint);

    let removed = store.remove("lab").unwrap();
    assert_eq!(removed.name, "lab");
    assert_eq!(store.list().unwrap(), [second]);
    assert!(matches!(
        connect::connect(&host, &store),
        Err(connect::ConnectError::Remote { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fingerprint_is_refused_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = RemoteStore::new(dir.path());

    // A confirmed fingerprint that is not the server's.
    let wrong = "ab".repeat(32);
    let err = store
        .add("lab", &address(), RemoteTrust::Fingerprint(wrong.clone()))
        .await
        .unwrap_err();
    match &err {
        RemoteError::FingerprintMismatch {
            expected,
            presented,
            ..
        } => {
            assert_eq!(expected, &wrong);
            assert_ne!(presented, &wrong);
        }
        other => panic!("expected a fingerprint mismatch, got {other}"),
    }

    // A token whose fingerprint is another server's: refused before it is presented.
    let name = unique("remote-bad");
    let (token, _revoke) = token(&name);
    let mut json: serde_json::Value =
        serde_json::from_slice(&STANDARD.decode(token.trim()).unwrap()).unwrap();
    json["fingerprint"] = serde_json::Value::String(wrong.clone());
    let forged = STANDARD.encode(json.to_string());
    let err = store
        .add("lab", &address(), RemoteTrust::Token(forged))
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            RemoteError::FingerprintMismatch {
                expected_from: "trust token",
                ..
            }
        ),
        "{err}"
    );
    // The real token was not spent: the server still lists it.
    assert!(incus(&["config", "trust", "list-tokens", "-f", "csv"]).contains(&name));

    // Nothing vouched for: refused, and the message shows the fingerprint to check.
    let err = store
        .add("lab", &address(), RemoteTrust::Unconfirmed)
        .await
        .unwrap_err();
    let RemoteError::Unconfirmed { presented, .. } = &err else {
        panic!("expected unconfirmed, got {err}");
    };
    assert!(err.to_string().contains(presented.as_str()));
    assert!(err.to_string().contains("--accept-fingerprint"));

    // The right fingerprint, but the server does not trust this fresh client.
    let err = store
        .add(
            "lab",
            &address(),
            RemoteTrust::Fingerprint(presented.clone()),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::NotTrusted { .. }), "{err}");

    assert!(store.list().unwrap().is_empty(), "nothing was stored");
}
