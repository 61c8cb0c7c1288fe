//! plan, apply and destroy through [`Deployment`] to a host that names a remote reached
//! over TLS (`CUL8ER_TEST_TLS_ADDRESS`, default 127.0.0.1:8443): the remote is added
//! with a trust token from `incus config trust add` into a temporary remote store, and
//! the result is checked with the `incus` command over the unix socket as an
//! independent client.
#![allow(clippy::unwrap_used)]

mod live_support;

use cul8er_core::execute::Cancel;
use cul8er_core::lock::Holder;
use cul8er_core::remote::{RemoteStore, RemoteTrust, TrustRemoval};
use cul8er_core::state::StateDir;
use cul8er_core::{ApplyRequest, Deployment};
use live_support::{incus, incus_quiet, instances_named, topology};

/// Runs `incus ARGS` when dropped, ignoring the outcome (cleanup).
struct Guard(Vec<String>);

impl Drop for Guard {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        incus_quiet(&args);
    }
}

fn guard(args: &[&str]) -> Guard {
    Guard(args.iter().map(|s| (*s).to_owned()).collect())
}

fn address() -> String {
    let tls = std::env::var("CUL8ER_TEST_TLS_ADDRESS").unwrap_or_else(|_| "127.0.0.1:8443".into());
    format!("https://{tls}")
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn request(destroy: Option<bool>) -> ApplyRequest<'static> {
    ApplyRequest {
        parallelism: 4,
        destroy,
        env: &no_env,
        holder: Holder {
            user: "ops".to_owned(),
            ..Holder::current()
        },
    }
}

const REMOTE: &str = r#"topology demo {
    host lab remote=lab
    resource app {
        image "cul8er-busybox"
        release app version="1" {
            start "sleep 1000042"
        }
    }
}
"#;

/// A topology whose only host is a TLS remote deploys, replans nothing over TLS and
/// destroys, as the `incus` command sees it over the unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topology_on_a_tls_remote_deploys_replans_nothing_and_destroys() {
    let (topology, _path, cleanup) = topology("tls", REMOTE);
    let name = topology.name.clone();
    let store = RemoteStore::new(cleanup.dir.path().join("config"));
    let client_name = format!("{name}-client");
    let token = incus(&["config", "trust", "add", &client_name, "--quiet"]);
    let _revoke = guard(&["config", "trust", "revoke-token", &client_name]);
    let client_fp = store.client_identity().unwrap().certificate().fingerprint();
    let _untrust = guard(&["config", "trust", "remove", &client_fp]);
    store
        .add(
            "lab",
            &address(),
            RemoteTrust::Token(token.trim().to_owned()),
        )
        .await
        .unwrap();
    // The daemon now trusts the store's certificate, as the `incus` command sees it.
    assert!(incus(&["config", "trust", "list", "-f", "csv"]).contains(&client_fp[..12]));

    let d = Deployment::connect_with(
        topology,
        StateDir::new(cleanup.dir.path().join(".cul8er")),
        Some(&store),
    )
    .unwrap();
    let endpoint = d.clients["lab"].endpoint();
    assert!(endpoint.contains(&address()[8..]), "{endpoint}");

    let plan = d.plan().await.unwrap();
    assert_eq!(plan.summary.create, 1, "{plan}");
    let report = d
        .apply(&plan, &request(None), &Cancel::new(), &|_| {})
        .await
        .unwrap();
    assert!(report.outcome.succeeded(), "{:#?}", report.outcome);

    // Seen over the unix socket: the instance runs, carries its keys and its release.
    let instance = format!("{name}-app-1");
    let running = instances_named(&format!("{name}-"));
    assert_eq!(
        running.iter().collect::<Vec<_>>(),
        [(&instance, &"RUNNING".to_owned())],
        "{running:?}"
    );
    let get = |key: &str| incus(&["config", "get", &instance, key]).trim().to_owned();
    assert_eq!(get("user.cul8er.topology"), name);
    assert_eq!(get("user.cul8er.resource"), "app");
    assert_eq!(get("user.cul8er.revision"), report.revision);
    assert_eq!(get("user.cul8er.replica"), "1");
    assert_eq!(get("user.cul8er.release"), "1");
    let ps = incus(&["exec", &instance, "--", "ps"]);
    assert!(ps.contains("sleep 1000042"), "{ps}");

    // A second plan, over TLS, has nothing to do.
    let again = d.plan().await.unwrap();
    assert!(!again.has_changes(), "second plan:\n{again}");

    // Destroy over TLS: nothing of the topology is left.
    let destroy = d.plan_destroy(false).await.unwrap();
    assert_eq!(destroy.summary.delete, 1, "{destroy}");
    let report = d
        .apply(&destroy, &request(Some(false)), &Cancel::new(), &|_| {})
        .await
        .unwrap();
    assert!(report.outcome.succeeded(), "{:#?}", report.outcome);
    assert!(instances_named(&format!("{name}-")).is_empty());
    assert!(!d.plan_destroy(false).await.unwrap().has_changes());
}

/// `remote remove` revokes the server's trust in cul8er's client certificate, unless
/// another stored remote reaches the same server: checked with `incus config trust list`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_last_remote_of_a_server_revokes_its_trust() {
    let dir = tempfile::tempdir().unwrap();
    let store = RemoteStore::new(dir.path().join("config"));
    let client_name = live_support::names("revoke").topology;
    let token = incus(&["config", "trust", "add", &client_name, "--quiet"]);
    let _revoke = guard(&["config", "trust", "revoke-token", &client_name]);
    let client_fp = store.client_identity().unwrap().certificate().fingerprint();
    let _untrust = guard(&["config", "trust", "remove", &client_fp]);
    let first = store
        .add(
            "lab",
            &address(),
            RemoteTrust::Token(token.trim().to_owned()),
        )
        .await
        .unwrap();
    let trusted = || incus(&["config", "trust", "list", "-f", "csv"]).contains(&client_fp[..12]);
    assert!(trusted());
    store
        .add(
            "lab-again",
            &address(),
            RemoteTrust::Fingerprint(first.fingerprint.clone()),
        )
        .await
        .unwrap();

    // Another remote reaches the same server: its trust stays.
    let (removed, trust) = store.remove_revoking("lab").await.unwrap();
    assert_eq!(removed.name, "lab");
    assert_eq!(
        trust,
        TrustRemoval::SharedWith {
            remote: "lab-again".into()
        }
    );
    assert!(trusted());

    // The last one: revoked, as the server sees it, and the remote is gone.
    let (_, trust) = store.remove_revoking("lab-again").await.unwrap();
    assert_eq!(trust, TrustRemoval::Revoked);
    assert!(!trusted());
    assert!(store.list().unwrap().is_empty());
    assert!(store.remove_revoking("lab-again").await.is_err());
}
