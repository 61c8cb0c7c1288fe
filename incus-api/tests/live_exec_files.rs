//! Live tests of exec (recorded and streaming) and the file API.

// Helpers outside #[test] functions panic on failure, like the tests.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use incus_api::exec::{ExecChunk, ExecRequest};
use incus_api::files::{FileKind, FileOptions};

#[tokio::test]
async fn recorded_exec_captures_output_and_exit_code_and_deletes_the_logs() {
    let c = client();
    let (name, _g) = running_instance(&c, "rec").await;
    let out = c
        .instances()
        .exec_recorded(
            &name,
            &ExecRequest::new(["sh", "-c", "echo out; echo err >&2; exit 3"]),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 3);
    assert_eq!(out.stdout_text(), "out\n");
    assert_eq!(out.stderr_text(), "err\n");
    // The output log files are gone afterwards.
    let logs = incus(&["query", &format!("/1.0/instances/{name}/logs/exec-output")]);
    let logs: Vec<String> = serde_json::from_str(&logs).unwrap();
    assert!(logs.is_empty(), "leftover exec logs: {logs:?}");

    let out = c
        .instances()
        .exec_recorded(
            &name,
            &ExecRequest::new(["sh", "-c", "echo $FOO; pwd; id -u; id -g"])
                .env("FOO", "bar baz")
                .cwd("/tmp")
                .user(1000, 1001),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout_text(), "bar baz\n/tmp\n1000\n1001\n");
}

#[tokio::test]
async fn exec_on_a_stopped_instance_is_a_clear_error() {
    let c = client();
    let (name, _g) = running_instance(&c, "stopped").await;
    c.instances()
        .stop(&name, true, None)
        .await
        .unwrap()
        .wait(WAIT)
        .await
        .unwrap();
    let err = c
        .instances()
        .exec_recorded(&name, &ExecRequest::new(["true"]), WAIT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not running"), "{err}");
    let err = c
        .instances()
        .exec_recorded(&name, &ExecRequest::default(), WAIT)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn streaming_exec_passes_stdin_stdout_stderr_and_exit_code() {
    let c = client();
    let (name, _g) = running_instance(&c, "stream").await;
    let mut s = c
        .instances()
        .exec_stream(
            &name,
            &ExecRequest::new(["sh", "-c", "cat; echo done >&2; exit 5"]),
        )
        .await
        .unwrap();
    s.write_stdin("hello ").await.unwrap();
    s.write_stdin("world\n").await.unwrap();
    s.close_stdin().await.unwrap();
    let out = s.finish(WAIT).await.unwrap();
    assert_eq!(out.exit_code, 5);
    assert_eq!(out.stdout_text(), "hello world\n");
    assert_eq!(out.stderr_text(), "done\n");
}

#[tokio::test]
async fn streaming_exec_delivers_output_as_it_comes_and_forwards_signals() {
    let c = client();
    let (name, _g) = running_instance(&c, "signal").await;
    let mut s = c
        .instances()
        .exec_stream(
            &name,
            &ExecRequest::new(["sh", "-c", "echo ready; exec sleep 300"]),
        )
        .await
        .unwrap();
    // The first chunk arrives while the command still runs.
    let first = s.next_output().await.unwrap();
    assert_eq!(first, ExecChunk::Stdout("ready\n".into()));
    s.signal(15).await.unwrap();
    let out = s.finish(WAIT).await.unwrap();
    assert_eq!(out.exit_code, 128 + 15, "killed by SIGTERM");
}

#[tokio::test]
async fn files_push_pull_mkdir_symlink_delete_with_owner_and_mode() {
    let c = client();
    let (name, _g) = running_instance(&c, "files").await;
    let files = c.instances().files(&name);

    files
        .mkdir_all(
            "/opt/cul8er/conf",
            FileOptions::mode(0o750).owner(1000, 1000),
        )
        .await
        .unwrap();
    files
        .push(
            "/opt/cul8er/conf/app.env",
            "KEY=value\n",
            FileOptions::mode(0o640).owner(1000, 1001),
        )
        .await
        .unwrap();

    let got = files.pull("/opt/cul8er/conf/app.env").await.unwrap();
    assert_eq!(got.kind, FileKind::File("KEY=value\n".into()));
    assert_eq!((got.uid, got.gid, got.mode), (1000, 1001, 0o640));
    // Checked independently inside the instance.
    let stat = incus(&[
        "exec",
        &name,
        "--",
        "stat",
        "-c",
        "%a %u %g",
        "/opt/cul8er/conf/app.env",
        "/opt/cul8er/conf",
    ]);
    assert_eq!(stat, "640 1000 1001\n750 1000 1000\n");

    files
        .symlink("/opt/cul8er/current", "/opt/cul8er/conf")
        .await
        .unwrap();
    assert_eq!(
        files.pull("/opt/cul8er/current").await.unwrap().kind,
        FileKind::Symlink("/opt/cul8er/conf".into())
    );
    match files.pull("/opt/cul8er").await.unwrap().kind {
        FileKind::Directory(mut names) => {
            names.sort();
            assert_eq!(names, vec!["conf", "current"]);
        }
        other => panic!("expected a directory, got {other:?}"),
    }

    // Binary content survives.
    let blob: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    files
        .push("/tmp/blob", blob.clone(), FileOptions::default())
        .await
        .unwrap();
    assert_eq!(
        files.pull("/tmp/blob").await.unwrap().kind,
        FileKind::File(blob.into())
    );

    files.delete("/opt/cul8er/conf/app.env").await.unwrap();
    let err = files.pull("/opt/cul8er/conf/app.env").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = files
        .push("relative/path", "x", FileOptions::default())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("absolute"), "{err}");
}

#[tokio::test]
async fn a_proxy_device_set_through_config_forwards_host_traffic() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let c = client();
    let (name, _g) = running_instance(&c, "proxy").await;
    let files = c.instances().files(&name);
    files.mkdir("/www", FileOptions::mode(0o755)).await.unwrap();
    files
        .push(
            "/www/index.html",
            "through the proxy\n",
            FileOptions::mode(0o644),
        )
        .await
        .unwrap();
    // The daemon must not keep the recorded output open, or the exec only ends when
    // Incus gives up waiting for it.
    let start_httpd = ExecRequest::new([
        "sh",
        "-c",
        "httpd -p 127.0.0.1:8080 -h /www </dev/null >/dev/null 2>&1",
    ]);
    let out = c
        .instances()
        .exec_recorded(&name, &start_httpd, WAIT)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.stderr_text());

    // A free loopback port on the host.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let device = incus_api::devices::proxy(&format!("tcp:127.0.0.1:{port}"), "tcp:127.0.0.1:8080");
    c.instances()
        .patch(
            &name,
            &serde_json::json!({ "devices": { "web": device } }),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        c.instances().get(&name).await.unwrap().devices["web"]["type"],
        "proxy"
    );

    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200") || reply.starts_with("HTTP/1.0 200"),
        "{reply}"
    );
    assert!(reply.ends_with("through the proxy\n"), "{reply}");
}
