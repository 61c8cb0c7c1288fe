//! Storage pools and custom volumes (`/1.0/storage-pools`).
//!
//! Custom volumes themselves are in [`crate::storage_volumes`]; this module has the
//! pools and volume snapshots. A custom volume is attached to an instance as a disk
//! device ([`crate::devices::disk_volume`]).

use std::collections::HashMap;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;
use crate::operations::PendingOperation;
use crate::request::{ApiRequest, encode_segment};

/// A storage pool.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StoragePool {
    /// Name.
    pub name: String,
    /// `dir`, `zfs`, `btrfs`, `lvm`, ...
    #[serde(default)]
    pub driver: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Configuration.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// Objects using it.
    #[serde(default)]
    pub used_by: Vec<String>,
    /// `Created`, `Pending`, ...
    #[serde(default)]
    pub status: String,
    /// Cluster members it exists on.
    #[serde(default)]
    pub locations: Vec<String>,
}

/// A volume snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeSnapshot {
    /// Name (`volume/snapshot`).
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Configuration.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
}

/// Typed handle on `/1.0/storage-pools`.
#[derive(Debug, Clone)]
pub struct Storage {
    client: Client,
}

fn pool_path(pool: &str) -> String {
    format!("/1.0/storage-pools/{}", encode_segment(pool))
}

fn volume_path(pool: &str, volume: &str) -> String {
    format!(
        "{}/volumes/custom/{}",
        pool_path(pool),
        encode_segment(volume)
    )
}

impl Storage {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// All pools.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn pools(&self) -> Result<Vec<StoragePool>> {
        self.client.list("/1.0/storage-pools").await
    }

    /// One pool and its ETag.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn pool(&self, name: &str) -> Result<(StoragePool, Option<String>)> {
        self.client.get_with_etag(pool_path(name)).await
    }

    /// Creates a pool.
    ///
    /// # Errors
    /// [`crate::Error::is_conflict`] when it exists; Incus's message on a bad driver or key.
    pub async fn create_pool(
        &self,
        name: &str,
        driver: &str,
        config: &HashMap<String, String>,
    ) -> Result<()> {
        self.client
            .send_json(
                Method::POST,
                "/1.0/storage-pools",
                &serde_json::json!({ "name": name, "driver": driver, "config": config, "description": "" }),
            )
            .await
    }

    /// Merges configuration keys into a pool.
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn patch_pool(&self, name: &str, config: &HashMap<String, String>) -> Result<()> {
        self.client
            .write_json(
                Method::PATCH,
                pool_path(name),
                &serde_json::json!({ "config": config }),
                None,
            )
            .await
    }

    /// Deletes a pool (it must be unused).
    ///
    /// # Errors
    /// When it is in use or does not exist.
    pub async fn delete_pool(&self, name: &str) -> Result<()> {
        self.client.delete(pool_path(name)).await
    }

    /// Snapshots a custom volume.
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn snapshot_volume(
        &self,
        pool: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<PendingOperation> {
        self.client
            .call_async(
                ApiRequest::new(
                    Method::POST,
                    format!("{}/snapshots", volume_path(pool, volume)),
                )
                .json(&serde_json::json!({ "name": snapshot }))?,
            )
            .await
    }

    /// The snapshots of a custom volume.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn volume_snapshots(&self, pool: &str, volume: &str) -> Result<Vec<VolumeSnapshot>> {
        self.client
            .list(format!("{}/snapshots", volume_path(pool, volume)))
            .await
    }

    /// Deletes a volume snapshot.
    ///
    /// # Errors
    /// When it does not exist.
    pub async fn delete_volume_snapshot(
        &self,
        pool: &str,
        volume: &str,
        snapshot: &str,
    ) -> Result<PendingOperation> {
        self.client
            .call_async(ApiRequest::new(
                Method::DELETE,
                format!(
                    "{}/snapshots/{}",
                    volume_path(pool, volume),
                    encode_segment(snapshot)
                ),
            ))
            .await
    }
}
