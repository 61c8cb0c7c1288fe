//! `cul8er-proxy`: run the load balancer, drive it through its admin socket, or probe a
//! service's health from inside an instance.
//!
//! Exit codes: 0 success (for `probe`: healthy), 1 `probe` unhealthy or a refused
//! admin call, 2 bad usage or configuration, 3 an unexpected failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use cul8er_proxy::config::parse_duration;
use cul8er_proxy::health::{self, HttpCheck};
use cul8er_proxy::{AdminClient, AdminError, Proxy, ProxyConfig, error_chain};
use tokio_util::sync::CancellationToken;

const DEFAULT_ADMIN_SOCKET: &str = "/run/cul8er-proxy.sock";

#[derive(Parser)]
#[command(name = "cul8er-proxy", version, about = "The cul8er load balancer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy until SIGTERM or SIGINT; SIGHUP reloads the configuration file.
    Run {
        /// The configuration file (TOML, or JSON when it ends in .json).
        #[arg(long)]
        config: PathBuf,
        /// The admin socket to create.
        #[arg(long, env = "CUL8ER_PROXY_ADMIN", default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
        /// Threads serving connections (default: one per CPU).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Talk to a running proxy through its admin socket; answers are printed as JSON.
    Ctl {
        /// The admin socket of the running proxy.
        #[arg(long, env = "CUL8ER_PROXY_ADMIN", default_value = DEFAULT_ADMIN_SOCKET)]
        admin_socket: PathBuf,
        #[command(subcommand)]
        action: Ctl,
    },
    /// Check a service once; exit 0 when healthy, 1 when not, with a one-line reason.
    Probe {
        #[command(subcommand)]
        target: Probe,
    },
}

#[derive(Subcommand)]
enum Ctl {
    /// Print the configuration in force.
    Show,
    /// Replace the configuration with a file's (validated by the proxy first).
    Apply {
        /// The configuration file.
        file: PathBuf,
    },
    /// Set a backend's weight (0 takes it out of rotation).
    Weight {
        service: String,
        backend: String,
        weight: u32,
    },
    /// Set a backend's weight to 0 and wait until its in-flight requests finish.
    Drain { service: String, backend: String },
    /// Per-backend statistics.
    Stats,
    /// Prometheus metrics.
    Metrics,
    /// Health of every backend.
    Health,
    /// Read the TLS certificate files again.
    ReloadCerts,
}

#[derive(Subcommand)]
enum Probe {
    /// GET a URL (http:// only) and compare its status and body.
    Http {
        /// e.g. http://127.0.0.1:8080/health
        url: String,
        /// The status that counts as healthy.
        #[arg(long, default_value_t = 200)]
        expect: u16,
        /// A substring the body must contain.
        #[arg(long)]
        body_contains: Option<String>,
        /// e.g. 2s or 500ms.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Open a TCP connection.
    Tcp {
        /// host:port
        address: String,
        /// e.g. 2s or 500ms.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // This thread accepts, checks health and answers the admin socket; `run` serves
    // connections on its own worker threads.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(3, &format!("cannot start the runtime: {error}")),
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run {
                config,
                admin_socket,
                threads,
            } => {
                let threads = threads
                    .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
                    .unwrap_or(1);
                run(config, admin_socket, threads).await
            }
            Command::Ctl {
                admin_socket,
                action,
            } => ctl(AdminClient::new(admin_socket), action).await,
            Command::Probe { target } => probe(target).await,
        }
    })
}

#[allow(clippy::print_stderr, reason = "the binary reports to its user")]
fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("cul8er-proxy: {message}");
    ExitCode::from(code)
}

#[allow(clippy::print_stdout, reason = "the binary prints its answers")]
fn print(text: &str) {
    println!("{text}");
}

async fn run(config_path: PathBuf, admin_socket: PathBuf, threads: usize) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let config = match ProxyConfig::load(&config_path) {
        Ok(config) => config,
        Err(error) => return fail(2, &error_chain(&error)),
    };
    let proxy = match Proxy::start_with_workers(config, threads).await {
        Ok(proxy) => proxy,
        Err(error) => return fail(2, &error_chain(&error)),
    };
    let admin = match cul8er_proxy::bind_admin(&admin_socket) {
        Ok(admin) => admin,
        Err(error) => {
            return fail(
                2,
                &format!(
                    "cannot bind the admin socket {}: {error}",
                    admin_socket.display()
                ),
            );
        }
    };
    let stop_admin = CancellationToken::new();
    let admin_task = cul8er_proxy::serve_admin(proxy.clone(), admin, stop_admin.clone());
    tokio::pin!(admin_task);
    let signals = async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => {
                    let applied = match ProxyConfig::load(&config_path) {
                        Ok(config) => proxy.apply(config).await.map_err(|e| error_chain(&e)),
                        Err(error) => Err(error_chain(&error)),
                    };
                    match applied {
                        Ok(()) => tracing::info!(file = %config_path.display(), "configuration reloaded"),
                        Err(error) => tracing::error!(%error, "reload refused; the running configuration stays"),
                    }
                }
            }
        }
    };
    tokio::select! {
        () = signals => {}
        () = &mut admin_task => {}
    }
    tracing::info!("shutting down");
    stop_admin.cancel();
    admin_task.await;
    let _ = fs_err::remove_file(&admin_socket);
    proxy.shutdown().await;
    ExitCode::SUCCESS
}

async fn ctl(client: AdminClient, action: Ctl) -> ExitCode {
    let pretty = |value: serde_json::Result<String>| value.unwrap_or_default();
    let result: Result<String, AdminError> = match action {
        Ctl::Show => client
            .show()
            .await
            .map(|c| pretty(serde_json::to_string_pretty(&c))),
        Ctl::Apply { file } => {
            let config = match ProxyConfig::load(&file) {
                Ok(config) => config,
                Err(error) => return fail(2, &error_chain(&error)),
            };
            client
                .apply(&config)
                .await
                .map(|()| "{\"applied\": true}".to_owned())
        }
        Ctl::Weight {
            service,
            backend,
            weight,
        } => client
            .set_weight(&service, &backend, weight)
            .await
            .map(|()| format!("{{\"weight\": {weight}}}")),
        Ctl::Drain { service, backend } => client
            .drain(&service, &backend)
            .await
            .map(|r| pretty(serde_json::to_string_pretty(&r))),
        Ctl::Stats => client
            .stats()
            .await
            .map(|s| pretty(serde_json::to_string_pretty(&s))),
        Ctl::Metrics => client.metrics().await,
        Ctl::Health => client
            .health()
            .await
            .map(|h| pretty(serde_json::to_string_pretty(&h))),
        Ctl::ReloadCerts => client
            .reload_certs()
            .await
            .map(|()| "{\"reloaded\": true}".to_owned()),
    };
    match result {
        Ok(text) => {
            print(text.trim_end());
            ExitCode::SUCCESS
        }
        Err(AdminError::Refused { body, .. }) => {
            let mut message = body.error;
            for problem in body.problems {
                message.push_str(&format!("\n  - {problem}"));
            }
            fail(1, &message)
        }
        Err(error) => fail(3, &error_chain(&error)),
    }
}

async fn probe(target: Probe) -> ExitCode {
    let outcome = match target {
        Probe::Http {
            url,
            expect,
            body_contains,
            timeout,
        } => {
            let uri: http::Uri = match url.parse() {
                Ok(uri) => uri,
                Err(error) => return fail(2, &format!("'{url}' is not a URL: {error}")),
            };
            if uri.scheme_str() != Some("http") {
                return fail(2, &format!("'{url}': only http:// URLs can be probed"));
            }
            let Some(authority) = uri.authority() else {
                return fail(2, &format!("'{url}' has no host"));
            };
            let target = if authority.port().is_some() {
                authority.to_string()
            } else {
                format!("{authority}:80")
            };
            let path = uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .to_owned();
            let check = HttpCheck {
                target,
                host: authority.to_string(),
                path,
                expect_status: expect,
                body_contains,
                timeout,
            };
            health::check_http(&check).await
        }
        Probe::Tcp { address, timeout } => health::check_tcp(&address, timeout).await,
    };
    if outcome.passed {
        print(&format!("healthy: {}", outcome.reason));
        ExitCode::SUCCESS
    } else {
        print(&format!("unhealthy: {}", outcome.reason));
        ExitCode::from(1)
    }
}
