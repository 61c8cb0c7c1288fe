//! Profiles (`/1.0/profiles`): configuration and devices shared by instances.
//!
//! A project with `features.profiles=true` starts with an empty `default` profile (no
//! root disk, no NIC): add them before creating instances there.

use std::collections::HashMap;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;
use crate::instances::Device;
use crate::request::encode_segment;

/// A profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Configuration.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// Devices.
    #[serde(default)]
    pub devices: HashMap<String, Device>,
    /// Objects using it.
    #[serde(default)]
    pub used_by: Vec<String>,
    /// Project.
    #[serde(default)]
    pub project: String,
}

/// The writable view of a profile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProfilePut {
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: HashMap<String, String>,
    /// Devices.
    pub devices: HashMap<String, Device>,
}

impl Profile {
    /// The writable part, for [`Profiles::update`].
    #[must_use]
    pub fn to_put(&self) -> ProfilePut {
        ProfilePut {
            description: self.description.clone(),
            config: self.config.clone(),
            devices: self.devices.clone(),
        }
    }
}

/// Typed handle on `/1.0/profiles`.
#[derive(Debug, Clone)]
pub struct Profiles {
    client: Client,
}

fn path(name: &str) -> String {
    format!("/1.0/profiles/{}", encode_segment(name))
}

impl Profiles {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// All profiles of the project.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list(&self) -> Result<Vec<Profile>> {
        self.client.list("/1.0/profiles").await
    }

    /// One profile and its ETag.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get(&self, name: &str) -> Result<(Profile, Option<String>)> {
        self.client.get_with_etag(path(name)).await
    }

    /// Creates a profile.
    ///
    /// # Errors
    /// [`crate::Error::is_conflict`] when it exists.
    pub async fn create(&self, name: &str, put: &ProfilePut) -> Result<()> {
        let body = serde_json::json!({
            "name": name, "description": put.description, "config": put.config, "devices": put.devices,
        });
        self.client
            .send_json(Method::POST, "/1.0/profiles", &body)
            .await
    }

    /// Replaces a profile, with `If-Match` when `etag` is given.
    ///
    /// # Errors
    /// [`crate::Error::is_precondition_failed`] on an ETag mismatch.
    pub async fn update(&self, name: &str, put: &ProfilePut, etag: Option<&str>) -> Result<()> {
        self.client
            .write_json(Method::PUT, path(name), put, etag)
            .await
    }

    /// Merges fields into a profile.
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn patch(&self, name: &str, patch: &serde_json::Value) -> Result<()> {
        self.client
            .write_json(Method::PATCH, path(name), patch, None)
            .await
    }

    /// Renames a profile.
    ///
    /// # Errors
    /// When Incus refuses (the `default` profile cannot be renamed).
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<()> {
        self.client
            .send_json(
                Method::POST,
                path(name),
                &serde_json::json!({ "name": new_name }),
            )
            .await
    }

    /// Deletes a profile (it must be unused).
    ///
    /// # Errors
    /// When it is in use or does not exist.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.client.delete(path(name)).await
    }
}
