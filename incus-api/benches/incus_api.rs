//! incus-api against its peers, side by side in one run, printed as ratios.
//!
//! 1. `GET /1.0` and, with 20 instances present, `GET /1.0/instances?recursion=1`:
//!    incus-api over its kept-alive unix connections, incus-api with a connection per
//!    request (as it was before keep-alive, `max_idle_connections(0)`), a minimal
//!    kept-alive Python client (the floor for any client), `curl --unix-socket`, and
//!    `incus query` (what the original design shelled out to).
//! 2. Launching 20 containers and deleting them, done as `incus-benchmark` (the
//!    upstream benchmark on the Go client) does it: create from the image's
//!    fingerprint, then start, each operation waited for; stop (forced), then delete.
//!    incus-api waits two ways: a `/wait` request per operation, and one shared events
//!    subscription ([`incus_api::operation_waiter::OperationWaiter`], what the Go
//!    client's `op.Wait()` does). At each parallelism, including incus-benchmark's
//!    default (the number of CPUs), and against a sequential `incus launch` loop.
//!    incus-benchmark runs its parallelism in batches (it waits for a whole batch
//!    before starting the next); incus-api keeps `parallel` in flight.
//!
//! Compared commands run in turn (A B C A B C A B C) and each figure is the median of
//! the rounds, because this machine is shared and noisy; the load average is printed.
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

use incus_api::instances::{InstanceSource, InstanceSpec, ListOptions};
use incus_api::{Client, ClientBuilder};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

const COUNT: usize = 20;
const WAIT: Duration = Duration::from_secs(300);
/// Rounds of each comparison; figures are their medians.
const ROUNDS: usize = 3;
/// Launch parallelisms: incus-benchmark's default (CPUs) is added at run time.
const PARALLELISMS: [usize; 2] = [4, 20];

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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load() -> String {
    fs_err::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

struct Row {
    name: &'static str,
    secs: f64,
}

fn print_table(title: &str, rows: &[Row]) {
    let ours = rows[0].secs;
    println!("\n{title} (median of {ROUNDS} alternating rounds)");
    println!(
        "  {:<40} {:>10} {:>10} {:>16}",
        "client", "ms/req", "req/s", "× incus-api time"
    );
    for r in rows {
        println!(
            "  {:<40} {:>10.3} {:>10.0} {:>16.2}",
            r.name,
            r.secs * 1e3,
            1.0 / r.secs,
            r.secs / ours
        );
    }
}

/// Seconds per sequential `GET path` through `client`, after a warm-up.
async fn api_get(client: &Client, path: &str, n: usize) -> f64 {
    for _ in 0..20 {
        client.get_value(path).await.unwrap();
    }
    let start = Instant::now();
    for _ in 0..n {
        client.get_value(path).await.unwrap();
    }
    start.elapsed().as_secs_f64() / n as f64
}

async fn get_latency(client: &Client, sock: &Path, path: &str, n: usize) -> Vec<Row> {
    let per_request = ClientBuilder::unix(sock)
        .max_idle_connections(0)
        .build()
        .unwrap();
    let sock_s = sock.to_string_lossy().into_owned();
    let url = format!("http://incus{path}");
    let mut figures: [Vec<f64>; 5] = Default::default();
    for _ in 0..ROUNDS {
        figures[0].push(api_get(client, path, n).await);
        figures[1].push(api_get(&per_request, path, n).await);
        figures[2].push(
            run(
                sock,
                "python3",
                &["-c", PYTHON_CLIENT, &sock_s, path, &n.to_string()],
            )
            .trim()
            .parse()
            .expect("python prints seconds"),
        );
        figures[3].push(per_call((n / 10).min(50), || {
            run(
                sock,
                "curl",
                &["-sf", "--unix-socket", &sock_s, &url, "-o", "/dev/null"],
            );
        }));
        figures[4].push(per_call(10, || {
            run(sock, "incus", &["query", path]);
        }));
    }
    let names = [
        "incus-api (kept alive)",
        "incus-api, a connection per request",
        "python http.client (kept alive)",
        "curl --unix-socket",
        "incus query",
    ];
    names
        .into_iter()
        .zip(figures)
        .map(|(name, f)| Row {
            name,
            secs: median(f),
        })
        .collect()
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

/// Creates `names` from `fingerprint` and starts them, as incus-benchmark does, with
/// at most `parallel` in flight; seconds taken.
async fn launch_api(client: &Client, fingerprint: &str, names: &[String], parallel: usize) -> f64 {
    let permits = Arc::new(Semaphore::new(parallel));
    let start = Instant::now();
    let mut set = JoinSet::new();
    for n in names {
        let c = client.clone();
        let n = n.clone();
        let permits = Arc::clone(&permits);
        let spec = InstanceSpec::container(&n, InstanceSource::image_fingerprint(fingerprint));
        set.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            c.instances().create(&spec).await?.wait(WAIT).await?;
            c.instances().start(&n).await?.wait(WAIT).await
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
    let limit = Duration::from_secs(1200);
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
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "incus-api benchmark against Incus {} at {} (image {}), {} instances; {} CPUs, load {}",
        info.environment.server_version,
        sock.display(),
        image(),
        COUNT,
        cpus,
        load()
    );
    let _cleanup = Cleanup(sock.clone());
    let fingerprint = client.images().alias(&image()).await.unwrap().target;

    let root = get_latency(&client, &sock, "/1.0", 1000).await;
    print_table("GET /1.0 (sequential)", &root);
    let tput = throughput(&client, "/1.0", 8, 250).await;
    println!("  incus-api, 8 concurrent tasks on the pool: {tput:.0} req/s");

    let names = bench_names();
    launch_api(&client, &fingerprint, &names, 4).await;
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
    delete_api(&client, &names, 4).await;

    let waiter = client.operation_waiter().await.unwrap();
    let evented = client.with_waiter(&waiter);
    let mut parallelisms = vec![cpus];
    parallelisms.extend(PARALLELISMS.iter().filter(|p| **p != cpus));
    println!(
        "\nLaunch (create, then start) and delete (stop, then delete) {COUNT} containers, \
         seconds, median of {ROUNDS} rounds run in turn; load {}",
        load()
    );
    println!(
        "  {:>3} {:>16} {:>16} {:>16} {:>16} {:>16} {:>16}",
        "-P",
        "api/wait launch",
        "api/events",
        "incus-benchmark",
        "api/wait delete",
        "api/events",
        "incus-benchmark"
    );
    // Per client: (launch, delete, parallelism) medians at its best parallelism.
    let mut best = [(f64::MAX, f64::MAX, 0usize, 0usize); 3];
    for &parallel in &parallelisms {
        let mut launch: [Vec<f64>; 3] = Default::default();
        let mut delete: [Vec<f64>; 3] = Default::default();
        let p = parallel.to_string();
        for _ in 0..ROUNDS {
            launch[0].push(launch_api(&client, &fingerprint, &names, parallel).await);
            delete[0].push(delete_api(&client, &names, parallel).await);
            launch[1].push(launch_api(&evented, &fingerprint, &names, parallel).await);
            delete[1].push(delete_api(&evented, &names, parallel).await);
            let count = COUNT.to_string();
            launch[2].push(incus_benchmark(
                &sock,
                &["launch", "--count", &count, "--parallel", &p, &image()],
            ));
            delete[2].push(incus_benchmark(&sock, &["delete", "--parallel", &p]));
        }
        let l = launch.map(median);
        let d = delete.map(median);
        println!(
            "  {parallel:>3} {:>16.2} {:>16.2} {:>16.2} {:>16.2} {:>16.2} {:>16.2}",
            l[0], l[1], l[2], d[0], d[1], d[2]
        );
        for i in 0..3 {
            if l[i] < best[i].0 {
                best[i].0 = l[i];
                best[i].2 = parallel;
            }
            if d[i] < best[i].1 {
                best[i].1 = d[i];
                best[i].3 = parallel;
            }
        }
    }
    assert!(waiter.is_live(), "the waiter's subscription ended mid-run");
    drop(evented);
    drop(waiter);

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

    let (launch, delete) = (best[1].0, best[1].1);
    println!(
        "\nBest parallelism of each (seconds; ratio = its time / incus-api's with the events waiter)"
    );
    println!(
        "  {:<40} {:>8} {:>8} {:>10} {:>10}",
        "client", "launch", "delete", "launch ×", "delete ×"
    );
    let line = |name: String, l: f64, d: f64| {
        println!(
            "  {name:<40} {l:>8.2} {d:>8.2} {:>10.2} {:>10.2}",
            l / launch,
            d / delete
        );
    };
    let labels = [
        "incus-api, /wait",
        "incus-api, events waiter",
        "incus-benchmark",
    ];
    for (label, b) in labels.iter().zip(best) {
        line(format!("{label} (-P {} / -P {})", b.2, b.3), b.0, b.1);
    }
    line(
        "incus launch / delete --force loop".into(),
        loop_launch,
        loop_delete,
    );

    let vs_cli = root[4].secs / root[0].secs;
    let vs_py = root[0].secs / root[2].secs;
    let keepalive = root[1].secs / root[0].secs;
    println!("\nGoals (load {})", load());
    println!(
        "  GET /1.0 at least 25× faster than `incus query`: {vs_cli:.1}× ({})",
        if vs_cli >= 25.0 { "met" } else { "NOT met" }
    );
    println!(
        "  GET /1.0 within 1.1× of the Python floor: {vs_py:.2}× ({})",
        if vs_py <= 1.1 { "met" } else { "NOT met" }
    );
    println!("  GET /1.0 kept alive vs a connection per request: {keepalive:.2}× faster");
    for (i, label) in labels.iter().take(2).enumerate() {
        let ratio = best[i].0 / best[2].0;
        println!(
            "  launch no slower than incus-benchmark ({label}): {ratio:.2}× its time ({})",
            if ratio <= 1.0 { "met" } else { "NOT met" }
        );
    }
    println!(
        "  delete ({}): {:.2}× incus-benchmark's time",
        labels[1],
        best[1].1 / best[2].1
    );
    println!(
        "  launch vs the sequential loop: {:.2}× faster",
        loop_launch / launch
    );
}
