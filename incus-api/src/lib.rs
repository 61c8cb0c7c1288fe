//! A typed client for the Incus REST API.
//!
//! It speaks to `incusd` over the local unix socket or over HTTPS with a client
//! certificate and a pinned server certificate, and knows nothing about cul8er's
//! topologies: it is the one place where the Incus protocol and its quirks live.
//!
//! - [`Client`] is one cheap-to-clone handle; [`Client::project`] and
//!   [`Client::target`] give scoped clones. Typed handles per API area hang off it:
//!   [`Client::instances`] (with snapshots, files, exec), [`Client::operations`],
//!   [`Client::events`], [`Client::profiles`], `networks()`, [`Client::network_acls`],
//!   [`Client::images`], [`Client::storage`], `storage_volumes(pool)`, `projects()`,
//!   [`Client::certificates`], [`Client::cluster`], [`Client::server`].
//! - Calls that start background work return a [`PendingOperation`]: wait for it with
//!   a deadline, or follow it on an [`events::EventStream`] opened before the call. A
//!   client given an [`operation_waiter::OperationWaiter`] resolves all its waits
//!   through one shared events subscription, as the Go client does.
//! - Remote servers: [`trust`] fetches and checks the server certificate, redeems trust
//!   tokens and generates client certificates; [`ClientBuilder::https`] pins it.
//! - Every failure is an [`Error`] that keeps Incus's status and message.
//!
//! ```no_run
//! # async fn demo() -> incus_api::Result<()> {
//! let client = incus_api::Client::local()?;
//! let server = client.server().get().await?;
//! println!("Incus {}", server.environment.server_version);
//! # Ok(()) }
//! ```

pub mod certificates;
pub mod client;
pub mod cluster;
pub mod devices;
pub mod error;
pub mod events;
pub mod exec;
pub mod files;
#[cfg(test)]
mod fixture_tests;
pub mod images;
pub mod instances;
pub mod network_acls;
pub mod networks;
pub mod operation_waiter;
pub mod operations;
pub mod profiles;
pub mod projects;
pub mod request;
mod resend;
mod response;
pub mod server;
pub mod snapshots;
pub mod storage;
pub mod storage_volumes;
pub mod transport;
pub mod trust;

pub use client::{Client, ClientBuilder};
pub use error::{Error, Result};
pub use operations::{Operation, PendingOperation, StatusCode};
pub use transport::tls::{Certificate, ClientIdentity};
