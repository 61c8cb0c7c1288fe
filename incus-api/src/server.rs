//! The server itself: `GET /1.0` and its configuration.

use std::collections::HashMap;

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::Client;
use crate::error::Result;
use crate::request::ApiRequest;

/// What `GET /1.0` says about the server (trusted clients see `environment`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Server configuration (`core.https_address`, ...).
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// API extensions: check these for features, not the version.
    #[serde(default)]
    pub api_extensions: Vec<String>,
    /// `stable`.
    #[serde(default)]
    pub api_status: String,
    /// `1.0`.
    #[serde(default)]
    pub api_version: String,
    /// `trusted` or `untrusted`.
    #[serde(default)]
    pub auth: String,
    /// Whether the server is public.
    #[serde(default)]
    pub public: bool,
    /// `tls`, `oidc`.
    #[serde(default)]
    pub auth_methods: Vec<String>,
    /// The caller as the server sees it.
    #[serde(default)]
    pub auth_user_name: String,
    /// `unix` or `tls`.
    #[serde(default)]
    pub auth_user_method: String,
    /// Details about the host (empty for untrusted clients).
    #[serde(default)]
    pub environment: ServerEnvironment,
}

impl ServerInfo {
    /// Whether the server lists `extension`.
    #[must_use]
    pub fn has_extension(&self, extension: &str) -> bool {
        self.api_extensions.iter().any(|e| e == extension)
    }

    /// Whether the caller is trusted.
    #[must_use]
    pub fn is_trusted(&self) -> bool {
        self.auth == "trusted"
    }
}

/// The `environment` part of [`ServerInfo`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ServerEnvironment {
    /// Addresses the API listens on.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Supported architectures.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// The server certificate (PEM).
    #[serde(default)]
    pub certificate: String,
    /// SHA-256 of the server certificate.
    #[serde(default)]
    pub certificate_fingerprint: String,
    /// `lxc`, `qemu`, ...
    #[serde(default)]
    pub driver: String,
    /// `nftables` or `xtables`.
    #[serde(default)]
    pub firewall: String,
    /// Kernel version.
    #[serde(default)]
    pub kernel_version: String,
    /// The project the request was made in.
    #[serde(default)]
    pub project: String,
    /// Whether the server is a cluster member.
    #[serde(default)]
    pub server_clustered: bool,
    /// The member name in a cluster, the host name otherwise.
    #[serde(default)]
    pub server_name: String,
    /// E.g. `6.0.4`.
    #[serde(default)]
    pub server_version: String,
    /// Storage drivers.
    #[serde(default)]
    pub storage: String,
    /// Everything else the server sent.
    #[serde(flatten)]
    pub other: HashMap<String, Value>,
}

/// Typed handle on `/1.0`.
#[derive(Debug, Clone)]
pub struct Server {
    client: Client,
}

#[derive(Serialize)]
struct ConfigBody<'a> {
    config: &'a HashMap<String, String>,
}

impl Server {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// `GET /1.0`.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn get(&self) -> Result<ServerInfo> {
        Ok(self.get_with_etag().await?.0)
    }

    /// `GET /1.0` with its ETag.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn get_with_etag(&self) -> Result<(ServerInfo, Option<String>)> {
        self.client.call_sync(ApiRequest::get("/1.0")).await
    }

    /// `PATCH /1.0`: sets the given configuration keys, keeping the others. An empty
    /// value unsets a key.
    ///
    /// # Errors
    /// When Incus refuses a key or value.
    pub async fn patch_config(&self, config: &HashMap<String, String>) -> Result<()> {
        self.client
            .send_json(Method::PATCH, "/1.0", &ConfigBody { config })
            .await
    }

    /// `PUT /1.0`: replaces the whole configuration, with `If-Match` when `etag` is given.
    ///
    /// # Errors
    /// [`crate::Error::is_precondition_failed`] when the ETag no longer matches.
    pub async fn update_config(
        &self,
        config: &HashMap<String, String>,
        etag: Option<&str>,
    ) -> Result<()> {
        let mut req = ApiRequest::new(Method::PUT, "/1.0").json(&ConfigBody { config })?;
        if let Some(e) = etag {
            req = req.header("if-match", e)?;
        }
        self.client.call_unit(req).await
    }
}
