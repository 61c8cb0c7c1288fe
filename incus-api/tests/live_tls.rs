//! Live tests over HTTPS: first contact, the trust-token flow, pinning (match and
//! mismatch), an untrusted client, and events and exec websockets over TLS.

// Helpers outside #[test] functions panic on failure, like the tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt as _;
use incus_api::events::EventType;
use incus_api::exec::ExecRequest;
use incus_api::instances::{InstanceSource, InstanceSpec};
use incus_api::trust::{self, TrustToken};
use incus_api::{ClientBuilder, Error};
use tokio::time::Instant;

const TIMEOUT: Duration = Duration::from_secs(10);

fn tls_address() -> (String, u16) {
    let addr = std::env::var("CUL8ER_TEST_TLS_ADDRESS").unwrap_or_else(|_| "127.0.0.1:8443".into());
    let (h, p) = addr.rsplit_once(':').expect("host:port");
    (h.to_owned(), p.parse().expect("port"))
}

/// A trusted TLS client made through the token flow, and a guard that untrusts it.
async fn trusted_client() -> (incus_api::Client, Guard) {
    let admin = client();
    let name = unique("tls");
    let (_op, token) = admin.certificates().create_token(&name).await.unwrap();
    // The token round-trips through its string form, as a user would paste it.
    let token = TrustToken::decode(token.as_str()).unwrap();
    let generated = trust::generate_client_certificate(&format!("{name}@test")).unwrap();
    let identity = generated.identity().unwrap();
    let fp = identity.certificate().fingerprint();
    let guard = Guard::new(&socket(), &["config", "trust", "remove", &fp]);
    let c = trust::add_remote_with_token(&token, identity, TIMEOUT)
        .await
        .unwrap();
    (c, guard)
}

#[tokio::test]
async fn first_contact_shows_the_fingerprint_the_server_reports() {
    let (host, port) = tls_address();
    let cert = trust::fetch_server_certificate(&host, port, TIMEOUT)
        .await
        .unwrap();
    let info = client().server().get().await.unwrap();
    assert_eq!(cert.fingerprint(), info.environment.certificate_fingerprint);
}

#[tokio::test]
async fn token_flow_makes_a_trusted_pinned_client() {
    let (c, _g) = trusted_client().await;
    let info = c.server().get().await.unwrap();
    assert!(info.is_trusted());
    assert_eq!(info.auth_user_method, "tls");
    // The certificate is in the trust store under the token's name, as seen by the CLI.
    let list = incus(&["config", "trust", "list", "-f", "csv"]);
    assert!(list.contains("cul8er-t-tls-"), "{list}");
    // Calls work over the pinned connection, repeatedly (kept alive).
    for _ in 0..3 {
        c.instances().list_names(&Default::default()).await.unwrap();
    }
}

#[tokio::test]
async fn a_used_token_is_refused() {
    let admin = client();
    let name = unique("tok");
    let (_op, token) = admin.certificates().create_token(&name).await.unwrap();
    let first = trust::generate_client_certificate("a@test")
        .unwrap()
        .identity()
        .unwrap();
    let _g = Guard::new(
        &socket(),
        &[
            "config",
            "trust",
            "remove",
            &first.certificate().fingerprint(),
        ],
    );
    trust::add_remote_with_token(&token, first, TIMEOUT)
        .await
        .unwrap();
    let second = trust::generate_client_certificate("b@test")
        .unwrap()
        .identity()
        .unwrap();
    let err = trust::add_remote_with_token(&token, second, TIMEOUT)
        .await
        .unwrap_err();
    assert!(err.is_forbidden(), "{err:?}");
    assert!(
        err.to_string()
            .contains("No matching certificate add operation"),
        "{err}"
    );
}

#[tokio::test]
async fn a_token_whose_fingerprint_does_not_match_is_refused_before_sending_anything() {
    let admin = client();
    let name = unique("badfp");
    let (op, token) = admin.certificates().create_token(&name).await.unwrap();
    use base64::Engine as _;
    let forged = serde_json::json!({
        "client_name": name,
        "fingerprint": "00".repeat(32),
        "addresses": token.addresses,
        "secret": "forged",
    });
    let forged = base64::engine::general_purpose::STANDARD.encode(forged.to_string());
    let forged = TrustToken::decode(&forged).unwrap();
    let id = trust::generate_client_certificate("c@test")
        .unwrap()
        .identity()
        .unwrap();
    let err = trust::add_remote_with_token(&forged, id, TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CertificateMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains(&"00".repeat(32)), "{err}");
    op.cancel().await.unwrap();
}

#[tokio::test]
async fn a_mismatched_pin_is_refused_showing_both_fingerprints() {
    let (host, port) = tls_address();
    let real = trust::fetch_server_certificate(&host, port, TIMEOUT)
        .await
        .unwrap();
    let other = trust::generate_client_certificate("not-the-server")
        .unwrap()
        .identity()
        .unwrap()
        .certificate();
    let id = trust::generate_client_certificate("d@test")
        .unwrap()
        .identity()
        .unwrap();
    let c = ClientBuilder::https(&host, port)
        .pinned_certificate(other.clone())
        .identity(id)
        .build()
        .unwrap();
    let err = c.server().get().await.unwrap_err();
    match &err {
        Error::CertificateMismatch {
            pinned, presented, ..
        } => {
            assert_eq!(pinned, &other.fingerprint());
            assert_eq!(presented, &real.fingerprint());
        }
        other => panic!("expected a certificate mismatch, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&other.fingerprint()) && msg.contains(&real.fingerprint()),
        "{msg}"
    );
    // Websockets go through the same check.
    let err = c.events().subscribe(&[]).await.unwrap_err();
    assert!(matches!(err, Error::CertificateMismatch { .. }), "{err:?}");
}

#[tokio::test]
async fn an_untrusted_client_gets_a_clear_error() {
    let (host, port) = tls_address();
    let pinned = trust::fetch_server_certificate(&host, port, TIMEOUT)
        .await
        .unwrap();
    let id = trust::generate_client_certificate("untrusted@test")
        .unwrap()
        .identity()
        .unwrap();
    let c = ClientBuilder::https(&host, port)
        .pinned_certificate(pinned)
        .identity(id)
        .build()
        .unwrap();
    let info = c.server().get().await.unwrap();
    assert!(
        !info.is_trusted(),
        "a fresh certificate must not be trusted"
    );
    let err = c
        .instances()
        .list_names(&Default::default())
        .await
        .unwrap_err();
    assert!(err.is_forbidden(), "{err:?}");
    assert!(err.to_string().contains("not authorized"), "{err}");
}

#[tokio::test]
async fn events_and_exec_work_over_tls() {
    let (c, _g) = trusted_client().await;
    let mut events = c
        .events()
        .subscribe(&[EventType::Lifecycle, EventType::Operation])
        .await
        .unwrap();
    let name = unique("tlsev");
    let _ig = Guard::instance(&name);
    let op = c
        .instances()
        .create(&InstanceSpec::container(&name, InstanceSource::image_alias(image())).start(true))
        .await
        .unwrap();
    events
        .wait_operation(op.operation(), Instant::now() + WAIT)
        .await
        .unwrap()
        .into_success()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = tokio::time::timeout_at(deadline, events.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Some(l) = ev.lifecycle()
            && l.action == "instance-started"
            && l.object_name() == name
        {
            assert_eq!(l.requestor.as_ref().unwrap()["protocol"], "tls");
            break;
        }
    }
    let mut s = c
        .instances()
        .exec_stream(
            &name,
            &ExecRequest::new(["sh", "-c", "read x; echo got $x"]),
        )
        .await
        .unwrap();
    s.write_stdin("tls\n").await.unwrap();
    let out = s.finish(WAIT).await.unwrap();
    assert_eq!(out.stdout_text(), "got tls\n");
    let out = c
        .instances()
        .exec_recorded(&name, &ExecRequest::new(["echo", "recorded"]), WAIT)
        .await
        .unwrap();
    assert_eq!(out.stdout_text(), "recorded\n");
}
