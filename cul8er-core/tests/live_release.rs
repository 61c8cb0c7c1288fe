//! Releases against a real incusd: the app uploaded, run as a service under the image's
//! own init (busybox init, systemd and OpenRC on the Debian images), as its own non-root user,
//! with a 0600 env file; idempotent, restarted by the init when killed, back after an
//! instance restart, switched to a new version, old versions pruned.
//!
//! The daemon is `CUL8ER_TEST_INCUS_SOCKET` (default `/var/lib/incus/unix.socket`), the
//! images `CUL8ER_TEST_IMAGE` (default `cul8er-busybox`), `CUL8ER_TEST_DEBIAN_IMAGE`
//! (`scripts/incus-env.sh up --with-debian`) and `CUL8ER_TEST_OPENRC_IMAGE`
//! (`scripts/incus-env.sh up --with-openrc`); every instance is `cul8er-t-...` and
//! deleted by a guard through the `incus` command.
#![allow(clippy::unwrap_used)]

mod live_support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cul8er_core::release::{
    self, DeployOptions, InitSystem, ReleaseSpec, ResolvedEnv, ServiceStatus,
};
use incus_api::Client;
use incus_api::exec::ExecRequest;
use incus_api::files::FileKind;
use incus_api::instances::{InstanceSource, InstanceSpec};

const WAIT: Duration = Duration::from_secs(120);

fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET").map_or_else(
        || PathBuf::from("/var/lib/incus/unix.socket"),
        PathBuf::from,
    )
}

fn unique(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "cul8er-t-{what}-{}-{n}-{:x}",
        std::process::id(),
        nanos % 0xfffff
    )
}

/// Deletes the instance when dropped, through the `incus` command.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("incus")
            .env("INCUS_SOCKET", socket())
            .args(["delete", "--force", &self.0])
            .output();
    }
}

async fn launch(client: &Client, image: &str, what: &str) -> (String, Guard) {
    let name = unique(what);
    let guard = Guard(name.clone());
    client
        .instances()
        .create(&InstanceSpec::container(&name, InstanceSource::image_alias(image)).start(true))
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    (name, guard)
}

async fn sh(client: &Client, instance: &str, script: &str) -> (i32, String) {
    let out = client
        .instances()
        .exec_recorded(instance, &ExecRequest::new(["/bin/sh", "-c", script]), WAIT)
        .await
        .unwrap();
    (out.exit_code, out.stdout_text().trim().to_owned())
}

/// Polls `status` until `done` holds, for at most a minute.
async fn status_until(
    client: &Client,
    instance: &str,
    spec: &ReleaseSpec,
    what: &str,
    done: impl Fn(&ServiceStatus) -> bool,
) -> ServiceStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = release::status(client, instance, spec).await;
        if let Ok(status) = &status
            && done(status)
        {
            return status.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: last status {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An artifact directory: `bin/serve` (mode 0750) and `www/index.html`.
fn artifact(dir: &Path, version: &str) -> PathBuf {
    let root = dir.join(format!("app-{version}"));
    fs_err::create_dir_all(root.join("bin")).unwrap();
    fs_err::create_dir_all(root.join("www")).unwrap();
    fs_err::write(root.join("www/index.html"), format!("version {version}\n")).unwrap();
    fs_err::write(
        root.join("bin/serve"),
        "#!/bin/sh\n# Serves www/ when the image has busybox httpd, else just stays up.\n\
         if command -v httpd >/dev/null 2>&1; then exec httpd -f -p 8080 -h www; fi\n\
         exec sleep 1000000\n",
    )
    .unwrap();
    fs_err::set_permissions(
        root.join("bin/serve"),
        std::fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    root
}

fn spec(version: &str, artifact: &Path) -> ReleaseSpec {
    ReleaseSpec {
        name: "shop".into(),
        version: version.into(),
        artifact: Some(artifact.to_string_lossy().into_owned()),
        start: "bin/serve".into(),
        workdir: None,
        user: Some("shop".into()),
        before_start: vec!["mkdir -p /srv/hooks && echo \"$GREETING\" > /srv/hooks/before".into()],
        after_start: vec!["touch /srv/hooks/after".into()],
    }
}

fn env() -> ResolvedEnv {
    let mut env = ResolvedEnv::new();
    env.insert("GREETING", "hello 'quoted' $world");
    env.insert_secret("API_TOKEN", "s3cret-token");
    env
}

/// The whole life of a release on one image.
async fn release_lifecycle(image: &str, what: &str, expected_init: InitSystem) {
    let client = Client::unix(socket()).unwrap();
    let (instance, _guard) = launch(&client, image, what).await;
    let dir = tempfile::tempdir().unwrap();
    let v1 = spec("1.0", &artifact(dir.path(), "1.0"));
    let options = DeployOptions {
        keep: 2,
        ..DeployOptions::default()
    };

    // First deploy: uploaded, started under the image's init as the service user.
    let outcome = release::deploy_with(&client, &instance, &v1, &env(), &options)
        .await
        .unwrap();
    assert!(outcome.changed && outcome.uploaded, "{outcome:?}");
    let status = outcome.status;
    assert_eq!(status.init, expected_init);
    assert!(status.running, "{status:?}");
    assert_eq!(status.version.as_deref(), Some("1.0"));
    let pid = status.pid.unwrap();

    let (_, uid) = sh(&client, &instance, "id -u shop").await;
    assert_ne!(uid, "0", "the service user is not root");
    let (_, proc_uid) = sh(
        &client,
        &instance,
        &format!("awk '/^Uid:/ {{print $2}}' /proc/{pid}/status"),
    )
    .await;
    assert_eq!(proc_uid, uid, "the service runs as the service user");
    let (_, environ) = sh(
        &client,
        &instance,
        &format!("tr '\\0' '\\n' < /proc/{pid}/environ"),
    )
    .await;
    assert!(
        environ.contains("GREETING=hello 'quoted' $world"),
        "{environ}"
    );
    assert!(environ.contains("API_TOKEN=s3cret-token"), "{environ}");

    let files = client.instances().files(&instance);
    let env_file = files.pull("/opt/shop/env").await.unwrap();
    assert_eq!(env_file.mode & 0o777, 0o600, "the env file is 0600");
    assert_eq!(
        env_file.uid.to_string(),
        uid,
        "the env file is the service user's"
    );
    let serve = files
        .pull("/opt/shop/releases/1.0/bin/serve")
        .await
        .unwrap();
    assert_eq!(serve.mode & 0o7777, 0o750, "modes are kept");
    let current = files.pull("/opt/shop/current").await.unwrap();
    // Incus reports the link's target resolved against its directory.
    assert!(
        matches!(&current.kind, FileKind::Symlink(target) if target.ends_with("releases/1.0")),
        "{current:?}"
    );
    let (_, hooks) = sh(
        &client,
        &instance,
        "cat /srv/hooks/before && ls /srv/hooks/after",
    )
    .await;
    assert_eq!(hooks, "hello 'quoted' $world\n/srv/hooks/after");
    if expected_init == InitSystem::Busybox {
        let (code, page) = sh(&client, &instance, "wget -qO- http://127.0.0.1:8080/").await;
        assert_eq!((code, page.as_str()), (0, "version 1.0"));
    }

    // The same release again changes nothing.
    let again = release::deploy_with(&client, &instance, &v1, &env(), &options)
        .await
        .unwrap();
    assert!(!again.changed, "{again:?}");
    assert_eq!(again.status.process_id, status.process_id);

    // Killed: the init brings it back; the status shows a new process and a restart.
    sh(&client, &instance, &format!("kill -9 {pid}")).await;
    let restarted = status_until(&client, &instance, &v1, "restart after kill", |s| {
        s.running && s.process_id != status.process_id
    })
    .await;
    assert!(restarted.restarts.unwrap() >= 1, "{restarted:?}");

    // An instance restart: the service is back by itself.
    // Stop and start rather than one restart: a forced restart on a loaded daemon can
    // leave the instance stopped when its stop hook times out.
    client
        .instances()
        .stop(&instance, true, None)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    client
        .instances()
        .start(&instance)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let after_boot = status_until(&client, &instance, &v1, "service after reboot", |s| {
        s.running
    })
    .await;
    assert_eq!(after_boot.version.as_deref(), Some("1.0"));
    assert_ne!(after_boot.process_id, restarted.process_id);

    // A new version switches `current` and restarts the service.
    let v2 = spec("2.0", &artifact(dir.path(), "2.0"));
    let outcome = release::deploy_with(&client, &instance, &v2, &env(), &options)
        .await
        .unwrap();
    assert!(outcome.changed, "{outcome:?}");
    assert_eq!(outcome.status.version.as_deref(), Some("2.0"));
    assert_ne!(outcome.status.process_id, after_boot.process_id);
    if expected_init == InitSystem::Busybox {
        let (_, page) = sh(&client, &instance, "wget -qO- http://127.0.0.1:8080/").await;
        assert_eq!(page, "version 2.0");
    }

    // A changed environment alone restarts it too, without an upload.
    let mut env2 = env();
    env2.insert("GREETING", "changed");
    let outcome = release::deploy_with(&client, &instance, &v2, &env2, &options)
        .await
        .unwrap();
    assert!(outcome.changed && !outcome.uploaded, "{outcome:?}");

    // Keep 2: a third version prunes the oldest.
    let v3 = spec("3.0", &artifact(dir.path(), "3.0"));
    let outcome = release::deploy_with(&client, &instance, &v3, &env(), &options)
        .await
        .unwrap();
    assert_eq!(outcome.pruned, ["1.0"]);
    let (_, versions) = sh(&client, &instance, "ls /opt/shop/releases").await;
    assert_eq!(versions, "2.0\n3.0");

    // Rolling back to a kept version needs no upload.
    let outcome = release::deploy_with(&client, &instance, &v2, &env(), &options)
        .await
        .unwrap();
    assert!(outcome.changed && !outcome.uploaded, "{outcome:?}");
    assert_eq!(outcome.status.version.as_deref(), Some("2.0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_runs_as_a_busybox_service() {
    let image = std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into());
    release_lifecycle(&image, "rel-bb", InitSystem::Busybox).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_runs_as_a_systemd_service() {
    let Some(image) = live_support::debian_image() else {
        return;
    };
    release_lifecycle(&image, "rel-deb", InitSystem::Systemd).await;
}

/// OpenRC, on a Debian rootfs with sysvinit and Debian's `openrc` package: the
/// `cul8er-debian-openrc` image that `scripts/incus-env.sh up --with-openrc` builds and
/// names in `CUL8ER_TEST_OPENRC_IMAGE` (CI builds it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_runs_as_an_openrc_service() {
    let Some(image) = live_support::openrc_image() else {
        return;
    };
    release_lifecycle(&image, "rel-orc", InitSystem::Openrc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_hook_names_itself_and_the_service_is_not_started() {
    let image = std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into());
    let client = Client::unix(socket()).unwrap();
    let (instance, _guard) = launch(&client, &image, "rel-hook").await;
    let spec = ReleaseSpec {
        name: "broken".into(),
        version: "1".into(),
        artifact: None,
        start: "sleep 1000".into(),
        workdir: None,
        user: None,
        before_start: vec!["echo migration failed >&2; exit 7".into()],
        after_start: Vec::new(),
    };
    let err = release::deploy(&client, &instance, &spec, &ResolvedEnv::new())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("before-start hook"), "{text}");
    assert!(text.contains("status 7"), "{text}");
    assert!(text.contains("migration failed"), "{text}");
    let status = release::status(&client, &instance, &spec).await.unwrap();
    assert!(!status.running, "{status:?}");
}
