//! Custom storage volumes (`/1.0/storage-pools/{pool}/volumes/custom`): list, get,
//! create, update, delete.
//!
//! Custom volumes outlive the instances that mount them (as `disk` devices with
//! `pool` and `source`). Creating one answers with a sync response on 6.0.4 and with
//! an operation on some versions; both are handled.

use std::collections::HashMap;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;
use crate::request::{ApiRequest, encode_segment};
use crate::response::Envelope;

/// A custom storage volume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StorageVolume {
    /// Name.
    pub name: String,
    /// `custom` for the volumes this handle manages.
    #[serde(rename = "type", default)]
    pub volume_type: String,
    /// `filesystem` or `block`.
    #[serde(default)]
    pub content_type: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Configuration (`size`, `user.*`, ...).
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// URLs of the instances and profiles using it.
    #[serde(default)]
    pub used_by: Vec<String>,
    /// Cluster member (`none` when standalone).
    #[serde(default)]
    pub location: String,
}

/// The body of a custom volume creation.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StorageVolumeSpec {
    /// Name.
    pub name: String,
    /// Always `custom` here.
    #[serde(rename = "type")]
    pub volume_type: String,
    /// `filesystem` (the default) or `block`.
    pub content_type: String,
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: HashMap<String, String>,
}

impl StorageVolumeSpec {
    /// A filesystem volume named `name`.
    #[must_use]
    pub fn filesystem(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            volume_type: "custom".into(),
            content_type: "filesystem".into(),
            description: String::new(),
            config: HashMap::new(),
        }
    }
}

/// The writable view of a volume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StorageVolumePut {
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: HashMap<String, String>,
}

/// Typed handle on the custom volumes of one storage pool.
#[derive(Debug, Clone)]
pub struct StorageVolumes {
    client: Client,
    pool: String,
}

impl Client {
    /// The custom volumes of `pool` in the client's project.
    #[must_use]
    pub fn storage_volumes(&self, pool: &str) -> StorageVolumes {
        StorageVolumes {
            client: self.clone(),
            pool: pool.to_owned(),
        }
    }
}

impl StorageVolumes {
    fn base(&self) -> String {
        format!(
            "/1.0/storage-pools/{}/volumes/custom",
            encode_segment(&self.pool)
        )
    }

    fn path(&self, name: &str) -> String {
        format!("{}/{}", self.base(), encode_segment(name))
    }

    /// The pool's custom volumes (`recursion=1`).
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when the pool does not exist.
    pub async fn list(&self) -> Result<Vec<StorageVolume>> {
        Ok(self
            .client
            .call_sync(ApiRequest::get(self.base()).query("recursion", "1"))
            .await?
            .0)
    }

    /// One volume and its ETag.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get_with_etag(&self, name: &str) -> Result<(StorageVolume, Option<String>)> {
        self.client
            .call_sync(ApiRequest::get(self.path(name)))
            .await
    }

    /// Creates a volume and waits until it exists (at most `timeout`).
    ///
    /// # Errors
    /// [`crate::Error::is_conflict`] when it exists; Incus's message otherwise.
    pub async fn create(
        &self,
        spec: &StorageVolumeSpec,
        timeout: std::time::Duration,
    ) -> Result<()> {
        let (method, path, env) = self
            .client
            .call_envelope(ApiRequest::new(Method::POST, self.base()).json(spec)?)
            .await?;
        match env.into_result(&method, &path)? {
            Envelope::Async(op) => {
                let pending = crate::operations::PendingOperation::new(self.client.clone(), *op);
                pending.wait(timeout).await?.into_success()?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Replaces the writable view, with `If-Match` when `etag` is given.
    ///
    /// # Errors
    /// [`crate::Error::is_precondition_failed`] when it changed since `etag`.
    pub async fn update(
        &self,
        name: &str,
        put: &StorageVolumePut,
        etag: Option<&str>,
    ) -> Result<()> {
        let mut req = ApiRequest::new(Method::PUT, self.path(name)).json(put)?;
        if let Some(e) = etag {
            req = req.header("if-match", e)?;
        }
        self.client.call_unit(req).await
    }

    /// Deletes a volume (no instance may use it).
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist; a 400 while it is in use.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.client
            .call_unit(ApiRequest::new(Method::DELETE, self.path(name)))
            .await
    }
}
