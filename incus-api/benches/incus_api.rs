//! incus-api against its peers, side by side in one run, printed as ratios.
//!
//! 1. `GET /1.0` and, with 20 instances present, `GET /1.0/instances?recursion=1`:
//!    incus-api vs a minimal kept-alive Python client (the floor for any client),
//!    `curl --unix-socket`, and `incus query` (what the original design shelled out
//!    to). On the unix socket incus-api opens a connection per request (a unix connect
//!    costs microseconds), because incusd 6.0 stalls on connections that sit idle
//!    before their first request; see `Client::from_connector`.
//! 2. Launching 20 containers and deleting them: incus-api vs `incus-benchmark` (the
//!    upstream benchmark on the Go client) at its best parallelism, and a sequential
//!    `incus launch` / `incus delete --force` loop.
//!
//! Only the local daemon is contacted (the unix socket `CUL8ER_TEST_INCUS_SOCKET`,
//! default `/var/lib/incus/unix.socket`); instances are named `cul8er-t-bench-*` and
//! removed at the end, also on failure. Counts are bounded; each part stops by itself.
//! Run: `just bench-incus-api` (or `cargo bench -p incus-api --bench incus_api`).
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)] // a report program

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use incus_api::Client;
use incus_api::instances::{InstanceSource, InstanceSpec, ListOptions};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

const COUNT: usize = 20;
const WAIT: Duration = Duration::from_secs(300);

const PYTHON_CLIENT: &str = r#"
import http.client, socket, sys, time
class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("incus")
        self.unix_path = path
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)
conn = UnixConnection(sys.argv[1])
path, n = sys.argv[2], int(sys.argv[3])
def get():
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    assert r.status == 200, r.status
for _ in range(min(n, 20)):
    get()
start = time.perf_counter()
for _ in range(n):
    get()
print((time.perf_counter() - start) / n)
"#;

fn socket() -> PathBuf {
    std::env::var_os("CUL8ER_TEST_INCUS_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/incus/unix.socket"))
}

fn image() -> String {
    std::env::var("CUL8ER_TEST_IMAGE").unwrap_or_else(|_| "cul8er-busybox".into())
}

fn run(sock: &Path, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .env("INCUS_SOCKET", sock)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Seconds per call of a command run `n` times.
fn per_call(n: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() / n as f64
}

struct Row {
    name: &'static str,
    secs: f64,
}

fn print_table(title: &str, rows: &[Row]) {
    let ours = rows[0].secs;
    println!("\n{title}");
    println!(
        "  {:<32} {:>10} {:>10} {:>16}",
        "client", "ms/req", "req/s", "× incus-api time"
    );
    for r in rows {
        println!(
            "  {:<32} {:>10.3} {:>10.0} {:>16.2}",
            r.name,
            r.secs * 1e3,
            1.0 / r.secs,
            r.secs / ours
        );
    }
}

async fn get_latency(client: &Client, sock: &Path, path: &str, n: usize) -> Vec<Row> {
    // incus-api, sequential.
    let raw = client.clone();
    let p = path.to_owned();
    for _ in 0..20 {
        raw.get_value(&p).await.unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        raw.get_value(&p).await.unwrap();
    }
    let ours = start.elapsed().as_secs_f64() / n as f64;

    let py: f64 = run(
        sock,
        "python3",
        &[
            "-c",
            PYTHON_CLIENT,
            &sock.to_string_lossy(),
            path,
            &n.to_string(),
        ],
    )
    .trim()
    .parse()
    .expect("python prints seconds");
    let sock_s = sock.to_string_lossy().into_owned();
    let url = format!("http://incus{path}");
    let curl = per_call(n.min(100), || {
        run(
            sock,
            "curl",
            &["-sf", "--unix-socket", &sock_s, &url, "-o", "/dev/null"],
        );
    });
    let query = per_call(20, || {
        run(sock, "incus", &["query", path]);
    });
    vec![
        Row {
            name: "incus-api",
            secs: ours,
        },
        Row {
            name: "python http.client (kept alive)",
            secs: py,
        },
        Row {
            name: "curl --unix-socket",
            secs: curl,
        },
        Row {
            name: "incus query",
            secs: query,
        },
    ]
}

async fn throughput(client: &Client, path: &str, tasks: usize, per_task: usize) -> f64 {
    let mut set = JoinSet::new();
    let start = Instant::now();
    for _ in 0..tasks {
        let c = client.clone();
        let p = path.to_owned();
        set.spawn(async move {
            for _ in 0..per_task {
                c.get_value(&p).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    (tasks * per_task) as f64 / start.elapsed().as_secs_f64()
}

fn bench_names() -> Vec<String> {
    (0..COUNT)
        .map(|i| format!("cul8er-t-bench-{i:02}"))
        .collect()
}

/// Removes what the benchmark made, whatever happened.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for n in bench_names() {
            // Bounded by `timeout`, so a hung daemon cannot hang the cleanup.
            let _ = Command::new("timeout")
                .env("INCUS_SOCKET", &self.0)
                .args(["30", "incus", "delete", "--force", &n])
                .output();
        }
        let _ = Command::new("timeout")
            .env("INCUS_SOCKET", &self.0)
            .args(["120", "incus-benchmark", "delete"])
            .output();
    }
}

/// Launches `names` with at most `parallel` in flight; seconds taken.
async fn launch_api(client: &Client, names: &[String], parallel: usize) -> f64 {
    let permits = Arc::new(Semaphore::new(parallel));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for n in names {
        let c = client.clone();
        let permits = Arc::clone(&permits);
        let spec = InstanceSpec::container(n, InstanceSource::image_alias(image())).start(true);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            c.instances().create(&spec).await?.wait(WAIT).await
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// Stops (forced) and deletes `names` with at most `parallel` in flight; seconds taken.
async fn delete_api(client: &Client, names: &[String], parallel: usize) -> f64 {
    let permits = Arc::new(Semaphore::new(parallel));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for n in names {
        let c = client.clone();
        let n = n.clone();
        let permits = Arc::clone(&permits);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            c.instances().stop(&n, true, None).await?.wait(WAIT).await?;
            c.instances().delete(&n).await?.wait(WAIT).await
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    start.elapsed().as_secs_f64()
}

/// `incus-benchmark ACTION`: its own "Batch processing completed in Xs" figure (the
/// whole batch run, without its start-up and image lookup), or the wall time when the
/// line is missing.
///
/// Not the "Processed N containers in Xs" lines: those are progress reports after the
/// first batches (4, 8, 16 of 20 at `--parallel 4`), and taking the first of them
/// once made incus-benchmark look 4 to 5 times faster than it is.
fn incus_benchmark(sock: &Path, args: &[&str]) -> f64 {
    let start = Instant::now();
    let out = run(sock, "incus-benchmark", args);
    let wall = start.elapsed().as_secs_f64();
    batch_time(&out).unwrap_or(wall)
}

fn batch_time(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let rest = l.split("Batch processing completed in ").nth(1)?;
        rest.trim().trim_end_matches('s').parse::<f64>().ok()
    })
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Bounded in time: a daemon that stops answering ends the run with a message.
    let limit = Duration::from_secs(900);
    let outcome = rt.block_on(async { tokio::time::timeout(limit, real_main()).await });
    if outcome.is_err() {
        eprintln!(
            "incus-api benchmark: gave up after {} s (the daemon stopped answering?)",
            limit.as_secs()
        );
        std::process::exit(1);
    }
}

async fn real_main() {
    // The parser reads the total, not a progress line (a real incus-benchmark output).
    assert_eq!(
        batch_time(
            "[Nov 26 06:45:01.581] Processed 4 containers in 1.858s (2.153/s)\n\
             [Nov 26 06:45:10.470] Batch processing completed in 10.747s\n"
        ),
        Some(10.747)
    );
    let sock = socket();
    let client = Client::unix(&sock).unwrap();
    let info = tokio::time::timeout(Duration::from_secs(30), client.server().get())
        .await
        .expect("the Incus daemon did not answer GET /1.0 within 30 s")
        .expect("the Incus daemon answers");
    println!(
        "incus-api benchmark against Incus {} at {} (image {}), {} instances",
        info.environment.server_version,
        sock.display(),
        image(),
        COUNT
    );
    let _cleanup = Cleanup(sock.clone());

    let root = get_latency(&client, &sock, "/1.0", 1000).await;
    print_table("GET /1.0 (sequential)", &root);
    let tput = throughput(&client, "/1.0", 8, 250).await;
    println!("  incus-api, 8 concurrent tasks on the pool: {tput:.0} req/s");

    let names = bench_names();
    println!(
        "\nLaunch and delete {COUNT} containers at each parallelism, incus-api and incus-benchmark in turn"
    );
    let mut best_api = ((f64::MAX, 0), (f64::MAX, 0));
    let mut best_ib = ((f64::MAX, 0), (f64::MAX, 0));
    for (round, parallel) in [4usize, 10, 20].into_iter().enumerate() {
        let la = launch_api(&client, &names, parallel).await;
        if round == 0 {
            let present = client
                .instances()
                .list(&ListOptions::filter("name eq cul8er-t-bench-.*"))
                .await
                .unwrap();
            assert_eq!(present.len(), COUNT);
            let list = get_latency(&client, &sock, "/1.0/instances?recursion=1", 200).await;
            print_table(
                &format!(
                    "GET /1.0/instances?recursion=1 ({COUNT} instances of ours present, besides any others)"
                ),
                &list,
            );
            println!();
        }
        let da = delete_api(&client, &names, parallel).await;
        let p = parallel.to_string();
        let li = incus_benchmark(
            &sock,
            &[
                "launch",
                "--count",
                &COUNT.to_string(),
                "--parallel",
                &p,
                &image(),
            ],
        );
        let di = incus_benchmark(&sock, &["delete", "--parallel", &p]);
        println!(
            "  parallelism {parallel:>2}: incus-api launch {la:.2} s, delete {da:.2} s | \
             incus-benchmark launch {li:.2} s, delete {di:.2} s"
        );
        for (best, l, d) in [(&mut best_api, la, da), (&mut best_ib, li, di)] {
            if l < best.0.0 {
                best.0 = (l, parallel);
            }
            if d < best.1.0 {
                best.1 = (d, parallel);
            }
        }
    }
    let (launch, delete) = (best_api.0.0, best_api.1.0);
    let (best_launch, best_delete) = (best_ib.0, best_ib.1);

    let start = Instant::now();
    for n in &names {
        run(&sock, "incus", &["launch", &image(), n]);
    }
    let loop_launch = start.elapsed().as_secs_f64();
    let start = Instant::now();
    for n in &names {
        run(&sock, "incus", &["delete", "--force", n]);
    }
    let loop_delete = start.elapsed().as_secs_f64();

    println!(
        "\nLaunch {COUNT} containers, then delete them (seconds; ratio = peer time / incus-api time)"
    );
    println!(
        "  {:<36} {:>8} {:>8} {:>10} {:>10}",
        "client", "launch", "delete", "launch ×", "delete ×"
    );
    let line = |name: &str, l: f64, d: f64| {
        println!(
            "  {name:<36} {l:>8.2} {d:>8.2} {:>10.2} {:>10.2}",
            l / launch,
            d / delete
        );
    };
    line(
        &format!(
            "incus-api (best: -P {} / -P {})",
            best_api.0.1, best_api.1.1
        ),
        launch,
        delete,
    );
    line(
        &format!(
            "incus-benchmark (best: -P {} / -P {})",
            best_launch.1, best_delete.1
        ),
        best_launch.0,
        best_delete.0,
    );
    line("incus launch / delete loop", loop_launch, loop_delete);

    let vs_cli = root[3].secs / root[0].secs;
    let vs_py = root[0].secs / root[1].secs;
    println!("\nGoals");
    println!(
        "  GET /1.0 at least 25× faster than `incus query`: {vs_cli:.1}× ({})",
        if vs_cli >= 25.0 { "met" } else { "NOT met" }
    );
    println!(
        "  GET /1.0 within 1.1× of the Python floor: {vs_py:.2}× ({})",
        if vs_py <= 1.1 { "met" } else { "NOT met" }
    );
    println!(
        "  launch no slower than incus-benchmark: {:.2}× its time ({})",
        launch / best_launch.0,
        if launch <= best_launch.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  launch vs the sequential loop: {:.2}× faster",
        loop_launch / launch
    );
}
