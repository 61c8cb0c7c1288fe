//! cul8er-proxy: the load balancer that moves traffic between versions.
//!
//! A weighted HTTP/1.1, HTTP/2 and TCP reverse proxy with active health checks,
//! passive ejection, draining and atomic live reconfiguration. It knows nothing of Incus.
//!
//! The library is what the `cul8er-proxy` binary runs, and what `cul8er-core` uses for
//! its types: [`ProxyConfig`] (the configuration), [`AdminClient`] and the admin answer
//! types ([`Stats`], [`HealthReport`], [`DrainReport`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use cul8er_proxy::{Proxy, ProxyConfig};
//! let config = ProxyConfig::load(std::path::Path::new("/etc/cul8er-proxy.toml"))?;
//! let proxy = Proxy::start(config).await?;
//! proxy.set_weight("web", "web-2", 0).await?;
//! println!("{}", proxy.stats().to_prometheus());
//! proxy.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod backend;
mod balance;
pub mod config;
mod fast;
mod forward;
pub mod health;
mod io;
pub mod metrics;
mod runtime;
mod server;
mod tls;
mod tunnel;
mod upstream;
mod workers;

pub use admin::{
    AdminClient, AdminError, AdminErrorBody, WeightChange, bind_admin, error_chain, serve_admin,
};
pub use balance::SmoothWeightedRoundRobin;
pub use config::{ConfigError, ProxyConfig};
pub use io::{PrefixedIo, ProxyHeaderError, read_proxy_header};
pub use metrics::{BackendStats, Stats};
pub use runtime::{BackendHealth, DrainReport, HealthReport, Proxy, ProxyError, ServiceHealth};
pub use tls::{SniResolver, TlsError};
