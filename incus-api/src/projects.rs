//! Projects (`/1.0/projects`): read and replace one project's writable view with an
//! ETag, the compare-and-swap that leases and counters kept in `user.*` keys need.

use std::collections::HashMap;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;
use crate::request::{ApiRequest, encode_segment};

/// A project.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Project {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Configuration (`features.*`, `limits.*`, `user.*`, ...).
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// URLs of what uses it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// The writable view of a project (`PUT /1.0/projects/{name}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProjectPut {
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: HashMap<String, String>,
}

impl Project {
    /// The writable part, to change and send back with [`Projects::update`].
    #[must_use]
    pub fn to_put(&self) -> ProjectPut {
        ProjectPut {
            description: self.description.clone(),
            config: self.config.clone(),
        }
    }
}

/// Typed handle on `/1.0/projects`.
#[derive(Debug, Clone)]
pub struct Projects {
    client: Client,
}

fn project_path(name: &str) -> String {
    format!("/1.0/projects/{}", encode_segment(name))
}

impl Client {
    /// The projects of the server.
    #[must_use]
    pub fn projects(&self) -> Projects {
        Projects {
            client: self.clone(),
        }
    }
}

impl Projects {
    /// One project and its ETag.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get_with_etag(&self, name: &str) -> Result<(Project, Option<String>)> {
        self.client
            .call_sync(ApiRequest::get(project_path(name)))
            .await
    }

    /// Replaces the writable view. With `etag`, Incus refuses with 412 when the project
    /// changed since it was read: a compare-and-swap.
    ///
    /// # Errors
    /// [`crate::Error::is_precondition_failed`] when it changed since `etag`.
    pub async fn update(&self, name: &str, put: &ProjectPut, etag: Option<&str>) -> Result<()> {
        let mut req = ApiRequest::new(Method::PUT, project_path(name)).json(put)?;
        if let Some(e) = etag {
            req = req.header("if-match", e)?;
        }
        self.client.call_unit(req).await
    }
}

impl Projects {
    /// All projects.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list(&self) -> Result<Vec<Project>> {
        self.client.list("/1.0/projects").await
    }

    /// Creates a project. Projects made through the API get their own images,
    /// profiles and volumes by default, and an empty `default` profile.
    ///
    /// # Errors
    /// [`crate::Error::is_conflict`] when it exists.
    pub async fn create(&self, name: &str, put: &ProjectPut) -> Result<()> {
        let body = serde_json::json!({ "name": name, "description": put.description, "config": put.config });
        self.client
            .send_json(Method::POST, "/1.0/projects", &body)
            .await
    }

    /// Renames a project (it must be empty).
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn rename(
        &self,
        name: &str,
        new_name: &str,
    ) -> Result<crate::operations::PendingOperation> {
        self.client
            .call_async(
                ApiRequest::new(Method::POST, project_path(name))
                    .json(&serde_json::json!({ "name": new_name }))?,
            )
            .await
    }

    /// Deletes a project (it must be empty).
    ///
    /// # Errors
    /// When it is in use or does not exist.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.client.delete(project_path(name)).await
    }
}
