//! Creating an instance from a remote simplestreams server: a tree made with
//! `incus-simplestreams`, served over HTTPS on loopback by this test, its certificate
//! passed in the request's `source.certificate`.

// Helpers outside #[test] functions panic on failure, like the tests.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use incus_api::instances::{InstanceSource, InstanceSpec};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

fn build_tree(dir: &Path, tag: &str) -> (PathBuf, String) {
    let src = dir.join("src");
    fs_err::create_dir_all(src.join("rootfs/etc")).unwrap();
    fs_err::create_dir_all(src.join("rootfs/sbin")).unwrap();
    fs_err::write(src.join("rootfs/etc/tag"), tag).unwrap();
    fs_err::write(
        src.join("metadata.yaml"),
        format!(
            "architecture: x86_64\ncreation_date: 1700000000\nproperties:\n  os: {tag}\n  release: \"1\"\n  \
             variant: default\n  architecture: amd64\n  description: {tag}\n"
        ),
    )
    .unwrap();
    let tarball = dir.join("img.tar.gz");
    let ok = std::process::Command::new("tar")
        .args(["-C"])
        .arg(&src)
        .args(["-czf"])
        .arg(&tarball)
        .args(["metadata.yaml", "rootfs"])
        .status()
        .unwrap();
    assert!(ok.success());
    let fingerprint = hex::encode(sha2::Sha256::digest(fs_err::read(&tarball).unwrap()));
    let tree = dir.join("tree");
    fs_err::create_dir_all(&tree).unwrap();
    let out = std::process::Command::new("incus-simplestreams")
        .arg("add")
        .arg(&tarball)
        .current_dir(&tree)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "incus-simplestreams: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (tree, fingerprint)
}

/// Serves `root` over HTTPS on 127.0.0.1 until dropped; returns the port and the PEM
/// certificate.
async fn serve(root: PathBuf, tasks: &mut JoinSet<()>) -> (u16, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let root = Arc::new(root);
    tasks.spawn(async move {
        let mut conns = JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let root = Arc::clone(&root);
            conns.spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let root = Arc::clone(&root);
                    async move {
                        let rel = req.uri().path().trim_start_matches('/');
                        let ok = !rel.split('/').any(|p| p == "..");
                        let resp = match tokio::fs::read(root.join(rel)).await {
                            Ok(bytes) if ok => hyper::Response::new(Full::new(Bytes::from(bytes))),
                            _ => {
                                let mut r = hyper::Response::new(Full::new(Bytes::from_static(
                                    b"not found",
                                )));
                                *r.status_mut() = hyper::StatusCode::NOT_FOUND;
                                r
                            }
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, cert.pem())
}

#[tokio::test]
async fn create_from_a_simplestreams_server_over_https_with_its_certificate() {
    let c = client();
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("c8ts{}", std::process::id());
    let (tree, fingerprint) = build_tree(dir.path(), &tag);
    let _img = Guard::new(&socket(), &["image", "delete", &fingerprint]);
    let mut tasks = JoinSet::new();
    let (port, pem) = serve(tree, &mut tasks).await;

    // Without the certificate the daemon refuses the unknown server (checked first:
    // once the image is cached, the server is no longer contacted).
    let name2 = unique("ssnocert");
    let _g2 = Guard::instance(&name2);
    let source = InstanceSource::simplestreams(
        format!("https://127.0.0.1:{port}"),
        format!("{tag}/1/default"),
        None,
    );
    let r = c
        .instances()
        .create(&InstanceSpec::container(&name2, source))
        .await;
    let err = match r {
        Ok(op) => op.wait(WAIT).await.unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains("certificate"), "{err}");

    let name = unique("ss");
    let _g = Guard::instance(&name);
    let source = InstanceSource::simplestreams(
        format!("https://127.0.0.1:{port}"),
        format!("{tag}/1/default"),
        Some(pem),
    );
    c.instances()
        .create(&InstanceSpec::container(&name, source))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let inst = c.instances().get(&name).await.unwrap();
    assert_eq!(inst.config["volatile.base_image"], fingerprint);
    let tag_file = c.instances().files(&name).pull("/etc/tag").await;
    // Files of a stopped container are readable too.
    assert_eq!(
        tag_file.unwrap().kind,
        incus_api::files::FileKind::File(Bytes::from(tag.clone()))
    );

    tasks.abort_all();
}
