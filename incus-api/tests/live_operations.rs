//! Live tests of the trust store and of operations (get, list, cancel).

mod common;

use common::*;
use incus_api::operations::OperationClass;
use incus_api::trust;

#[tokio::test]
async fn certificates_add_list_get_delete() {
    let c = client();
    let generated = trust::generate_client_certificate("cul8er-t-cert@test").unwrap();
    let cert = generated.identity().unwrap().certificate();
    let fp = cert.fingerprint();
    let name = unique("cert");
    let _g = Guard::new(&socket(), &["config", "trust", "remove", &fp]);

    c.certificates().add(&name, &cert, None).await.unwrap();
    let again = c.certificates().add(&name, &cert, None).await.unwrap_err();
    assert!(again.is_conflict(), "{again:?}");
    let listed = c.certificates().list().await.unwrap();
    let entry = listed
        .iter()
        .find(|e| e.fingerprint == fp)
        .expect("added certificate listed");
    assert_eq!(entry.name, name);
    assert_eq!(entry.cert_type, "client");
    let got = c.certificates().get(&fp).await.unwrap();
    assert_eq!(
        incus_api::Certificate::from_pem(&got.certificate).unwrap(),
        cert
    );

    // Restricted to a project.
    c.certificates().delete(&fp).await.unwrap();
    assert!(c.certificates().get(&fp).await.unwrap_err().is_not_found());
    c.certificates()
        .add(&name, &cert, Some(&["default".to_owned()]))
        .await
        .unwrap();
    let got = c.certificates().get(&fp).await.unwrap();
    assert!(got.restricted);
    assert_eq!(got.projects, vec!["default"]);
    c.certificates().delete(&fp).await.unwrap();
}

#[tokio::test]
async fn token_operation_get_list_cancel() {
    let c = client();
    let (pending, token) = c
        .certificates()
        .create_token(&unique("optok"))
        .await
        .unwrap();
    assert_eq!(
        token.fingerprint,
        c.server()
            .get()
            .await
            .unwrap()
            .environment
            .certificate_fingerprint
    );
    let op = c.operations().get(pending.id()).await.unwrap();
    assert_eq!(op.class, OperationClass::Token);
    assert!(!op.is_final());
    assert!(
        c.operations()
            .list()
            .await
            .unwrap()
            .iter()
            .any(|o| o.id == op.id)
    );
    pending.cancel().await.unwrap();
    match c.operations().get(&op.id).await {
        Ok(after) => assert_eq!(after.status_code, incus_api::StatusCode::Cancelled),
        Err(e) => assert!(e.is_not_found(), "{e:?}"),
    }
    let err = c
        .operations()
        .cancel("00000000-0000-0000-0000-000000000000")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}
