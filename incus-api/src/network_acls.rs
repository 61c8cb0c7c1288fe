//! Network ACLs (`/1.0/network-acls`): firewall rules applied to networks or NICs
//! through `security.acls`.

use std::collections::HashMap;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;
use crate::request::encode_segment;

fn is_empty(s: &str) -> bool {
    s.is_empty()
}

/// One rule. `action` and `state` are required; the others are optional filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclRule {
    /// `allow`, `allow-stateless`, `reject`, `drop`.
    pub action: String,
    /// `enabled`, `disabled`, `logged`.
    pub state: String,
    /// Sources (comma-separated CIDRs or ranges).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub source: String,
    /// Destinations.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub destination: String,
    /// `tcp`, `udp`, `icmp4`, `icmp6`.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub protocol: String,
    /// Source ports.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub source_port: String,
    /// Destination ports (`80,443`, `8000-8010`).
    #[serde(default, skip_serializing_if = "is_empty")]
    pub destination_port: String,
    /// ICMP type.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub icmp_type: String,
    /// ICMP code.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub icmp_code: String,
    /// Description.
    #[serde(default, skip_serializing_if = "is_empty")]
    pub description: String,
}

impl AclRule {
    /// An enabled rule allowing `protocol` to `destination_port`.
    #[must_use]
    pub fn allow(protocol: &str, destination_port: &str) -> Self {
        Self {
            action: "allow".into(),
            state: "enabled".into(),
            protocol: protocol.into(),
            destination_port: destination_port.into(),
            ..Self::default()
        }
    }
}

/// An ACL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkAcl {
    /// Name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Ingress rules.
    #[serde(default)]
    pub ingress: Vec<AclRule>,
    /// Egress rules.
    #[serde(default)]
    pub egress: Vec<AclRule>,
    /// Configuration.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// Objects using it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// The writable view of an ACL.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkAclPut {
    /// Description.
    pub description: String,
    /// Ingress rules.
    pub ingress: Vec<AclRule>,
    /// Egress rules.
    pub egress: Vec<AclRule>,
    /// Configuration.
    pub config: HashMap<String, String>,
}

/// Typed handle on `/1.0/network-acls`.
#[derive(Debug, Clone)]
pub struct NetworkAcls {
    client: Client,
}

fn path(name: &str) -> String {
    format!("/1.0/network-acls/{}", encode_segment(name))
}

impl NetworkAcls {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// All ACLs of the project.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list(&self) -> Result<Vec<NetworkAcl>> {
        self.client.list("/1.0/network-acls").await
    }

    /// One ACL and its ETag.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get(&self, name: &str) -> Result<(NetworkAcl, Option<String>)> {
        self.client.get_with_etag(path(name)).await
    }

    /// Creates an ACL.
    ///
    /// # Errors
    /// [`crate::Error::is_conflict`] when it exists; Incus's message on a bad rule.
    pub async fn create(&self, name: &str, put: &NetworkAclPut) -> Result<()> {
        let body = serde_json::json!({
            "name": name, "description": put.description, "ingress": put.ingress,
            "egress": put.egress, "config": put.config,
        });
        self.client
            .send_json(Method::POST, "/1.0/network-acls", &body)
            .await
    }

    /// Replaces an ACL, with `If-Match` when `etag` is given.
    ///
    /// # Errors
    /// [`crate::Error::is_precondition_failed`] on an ETag mismatch.
    pub async fn update(&self, name: &str, put: &NetworkAclPut, etag: Option<&str>) -> Result<()> {
        self.client
            .write_json(Method::PUT, path(name), put, etag)
            .await
    }

    /// Deletes an ACL (it must be unused).
    ///
    /// # Errors
    /// When it is in use or does not exist.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.client.delete(path(name)).await
    }
}
