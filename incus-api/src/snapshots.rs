//! Instance snapshots: create, list, restore, delete.
//!
//! On the `dir` pool a snapshot freezes a running container while its filesystem is
//! copied; the snapshot is only done when its operation is, not at the
//! `instance-snapshot-created` event.

use std::collections::HashMap;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;
use crate::instances::{Device, instance_path};
use crate::operations::PendingOperation;
use crate::request::{ApiRequest, encode_segment};

/// A snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Snapshot {
    /// Snapshot name (without the instance part).
    pub name: String,
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// Configuration at the time.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// Devices at the time.
    #[serde(default)]
    pub devices: HashMap<String, Device>,
    /// Profiles at the time.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Whether the running state was saved.
    #[serde(default)]
    pub stateful: bool,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339 (`0001-01-01T00:00:00Z` = never).
    #[serde(default)]
    pub expires_at: String,
    /// Bytes, `-1` when the driver cannot tell.
    #[serde(default)]
    pub size: i64,
}

/// Typed handle on one instance's snapshots.
#[derive(Debug, Clone)]
pub struct Snapshots {
    client: Client,
    instance: String,
}

impl Snapshots {
    pub(crate) fn new(client: Client, instance: &str) -> Self {
        Self {
            client,
            instance: instance.to_owned(),
        }
    }

    fn base(&self) -> String {
        format!("{}/snapshots", instance_path(&self.instance))
    }

    /// All snapshots.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when the instance does not exist.
    pub async fn list(&self) -> Result<Vec<Snapshot>> {
        Ok(self
            .client
            .call_sync(ApiRequest::get(self.base()).query("recursion", "1"))
            .await?
            .0)
    }

    /// One snapshot.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Snapshot> {
        self.client
            .get(format!("{}/{}", self.base(), encode_segment(name)))
            .await
    }

    /// Takes a snapshot (`stateful` needs CRIU; the server's expiry applies).
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn create(&self, name: &str, stateful: bool) -> Result<PendingOperation> {
        self.client
            .call_async(
                ApiRequest::new(Method::POST, self.base())
                    .json(&serde_json::json!({ "name": name, "stateful": stateful }))?,
            )
            .await
    }

    /// Restores the instance to the snapshot (`PUT` on the instance with `restore`).
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn restore(&self, name: &str) -> Result<PendingOperation> {
        self.client
            .call_async(
                ApiRequest::new(Method::PUT, instance_path(&self.instance))
                    .json(&serde_json::json!({ "restore": name, "stateful": false }))?,
            )
            .await
    }

    /// Deletes a snapshot.
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn delete(&self, name: &str) -> Result<PendingOperation> {
        self.client
            .call_async(ApiRequest::new(
                Method::DELETE,
                format!("{}/{}", self.base(), encode_segment(name)),
            ))
            .await
    }
}
