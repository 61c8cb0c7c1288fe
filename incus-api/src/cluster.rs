//! The cluster and its members (`/1.0/cluster`).
//!
//! Placement is not here: a client scoped with [`Client::target`] creates instances on
//! that member. On a standalone server the member list is an error (500 "Server is not
//! clustered"), so check [`ClusterInfo::enabled`] first.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;
use crate::request::encode_segment;

/// `GET /1.0/cluster`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// This member's name.
    #[serde(default)]
    pub server_name: String,
    /// Whether clustering is enabled.
    #[serde(default)]
    pub enabled: bool,
}

/// A cluster member.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Name (use it as `target`).
    pub server_name: String,
    /// API URL.
    #[serde(default)]
    pub url: String,
    /// Database role holder.
    #[serde(default)]
    pub database: bool,
    /// `Online`, `Offline`, `Evacuated`, ...
    #[serde(default)]
    pub status: String,
    /// Status detail.
    #[serde(default)]
    pub message: String,
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// Roles.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Failure domain.
    #[serde(default)]
    pub failure_domain: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Member configuration.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// Cluster groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Typed handle on `/1.0/cluster`.
#[derive(Debug, Clone)]
pub struct Cluster {
    client: Client,
}

impl Cluster {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// Whether and as what this server is clustered.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn get(&self) -> Result<ClusterInfo> {
        self.client.get("/1.0/cluster").await
    }

    /// All members.
    ///
    /// # Errors
    /// A 500 "Server is not clustered" on a standalone server.
    pub async fn members(&self) -> Result<Vec<ClusterMember>> {
        self.client.list("/1.0/cluster/members").await
    }

    /// One member.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when there is no such member.
    pub async fn member(&self, name: &str) -> Result<ClusterMember> {
        self.client
            .get(format!("/1.0/cluster/members/{}", encode_segment(name)))
            .await
    }
}
