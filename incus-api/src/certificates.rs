//! The trust store: certificates and trust tokens (`/1.0/certificates`).
//!
//! Incus 6.0.4 wants a certificate as base64 of its DER bytes, without PEM armour:
//! [`Certificates::add`] sends that form, which newer servers accept too.

use base64::Engine as _;
use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::operations::PendingOperation;
use crate::request::{ApiRequest, encode_segment};
use crate::transport::tls::Certificate;
use crate::trust::TrustToken;

/// A trusted certificate.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertificateEntry {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// `client`, `metrics` or `server`.
    #[serde(rename = "type", default)]
    pub cert_type: String,
    /// Limited to `projects`.
    #[serde(default)]
    pub restricted: bool,
    /// Projects it may use when restricted.
    #[serde(default)]
    pub projects: Vec<String>,
    /// PEM.
    #[serde(default)]
    pub certificate: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// SHA-256 fingerprint.
    #[serde(default)]
    pub fingerprint: String,
}

/// Typed handle on `/1.0/certificates`.
#[derive(Debug, Clone)]
pub struct Certificates {
    client: Client,
}

impl Certificates {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// All trusted certificates.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list(&self) -> Result<Vec<CertificateEntry>> {
        Ok(self
            .client
            .call_sync(ApiRequest::get("/1.0/certificates").query("recursion", "1"))
            .await?
            .0)
    }

    /// One certificate by fingerprint (or a unique prefix).
    ///
    /// # Errors
    /// [`Error::is_not_found`] when it is not trusted.
    pub async fn get(&self, fingerprint: &str) -> Result<CertificateEntry> {
        self.client
            .get(format!("/1.0/certificates/{}", encode_segment(fingerprint)))
            .await
    }

    /// Trusts `certificate` as a client under `name`, optionally restricted to
    /// `projects`.
    ///
    /// # Errors
    /// [`Error::is_conflict`] when it is already trusted.
    pub async fn add(
        &self,
        name: &str,
        certificate: &Certificate,
        projects: Option<&[String]>,
    ) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(certificate.der());
        let body = serde_json::json!({
            "name": name,
            "type": "client",
            "certificate": b64,
            "restricted": projects.is_some(),
            "projects": projects.unwrap_or_default(),
        });
        self.client
            .send_json(Method::POST, "/1.0/certificates", &body)
            .await
    }

    /// Removes a certificate from the trust store.
    ///
    /// # Errors
    /// [`Error::is_not_found`] when it is not trusted.
    pub async fn delete(&self, fingerprint: &str) -> Result<()> {
        self.client
            .call_unit(ApiRequest::new(
                Method::DELETE,
                format!("/1.0/certificates/{}", encode_segment(fingerprint)),
            ))
            .await
    }

    /// Issues a one-time trust token for a client to be called `name`. The token's
    /// operation stays running until the token is used or cancelled.
    ///
    /// # Errors
    /// When the server has no network listener (`core.https_address`) or refuses.
    pub async fn create_token(&self, name: &str) -> Result<(PendingOperation, TrustToken)> {
        let op = self
            .client
            .call_async(ApiRequest::new(Method::POST, "/1.0/certificates").json(
                &serde_json::json!({
                    "name": name,
                    "type": "client",
                    "token": true,
                }),
            )?)
            .await?;
        let meta = op.operation().metadata.clone().unwrap_or_default();
        let field = |k: &str| meta.get(k).cloned().unwrap_or_default();
        let json = serde_json::json!({
            "client_name": name,
            "fingerprint": field("fingerprint"),
            "addresses": field("addresses"),
            "secret": field("secret"),
            "expires_at": field("expiresAt"),
        });
        let encoded = base64::engine::general_purpose::STANDARD.encode(json.to_string());
        let token = TrustToken::decode(&encoded).map_err(|_| Error::Certificate {
            what: format!(
                "the token operation {} does not carry a fingerprint, addresses and a secret",
                op.id()
            ),
            source: None,
        })?;
        Ok((op, token))
    }
}
