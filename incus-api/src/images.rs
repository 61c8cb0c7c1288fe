//! Images and aliases (`/1.0/images`), including import from a tarball stream.
//!
//! A unified image tarball (`metadata.yaml` plus `rootfs/`) is streamed as the request
//! body; the finished operation carries the image's fingerprint.

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::{Stream, TryStreamExt as _};
use http::Method;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::{BoxError, Error, Result};
use crate::operations::{Operation, PendingOperation};
use crate::request::{ApiRequest, encode_segment, full_body};

/// An alias as listed on an image.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageAliasRef {
    /// Alias name.
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
}

/// An image.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Image {
    /// SHA-256 fingerprint.
    pub fingerprint: String,
    /// Aliases pointing at it.
    #[serde(default)]
    pub aliases: Vec<ImageAliasRef>,
    /// Properties (`os`, `release`, `description`, ...).
    #[serde(default)]
    pub properties: HashMap<String, String>,
    /// Public.
    #[serde(default)]
    pub public: bool,
    /// Refreshed automatically.
    #[serde(default)]
    pub auto_update: bool,
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// Original file name.
    #[serde(default)]
    pub filename: String,
    /// Bytes.
    #[serde(default)]
    pub size: i64,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type", default)]
    pub image_type: String,
    /// Cached from a remote.
    #[serde(default)]
    pub cached: bool,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub uploaded_at: String,
    /// Project.
    #[serde(default)]
    pub project: String,
}

/// An alias entry (`/1.0/images/aliases`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ImageAlias {
    /// Name (may contain `/`).
    pub name: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Fingerprint it points at.
    #[serde(default)]
    pub target: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type", default)]
    pub alias_type: String,
}

/// Options of an import.
#[derive(Debug, Clone, Default)]
pub struct ImageImport {
    /// Make it public.
    pub public: bool,
    /// File name to record.
    pub filename: Option<String>,
    /// Expected SHA-256 (the server verifies it).
    pub fingerprint: Option<String>,
}

/// Typed handle on `/1.0/images`.
#[derive(Debug, Clone)]
pub struct Images {
    client: Client,
}

fn path(fingerprint: &str) -> String {
    format!("/1.0/images/{}", encode_segment(fingerprint))
}

fn alias_path(name: &str) -> String {
    format!("/1.0/images/aliases/{}", encode_segment(name))
}

impl Images {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// All images of the project.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list(&self) -> Result<Vec<Image>> {
        self.client.list("/1.0/images").await
    }

    /// One image by fingerprint (or unique prefix).
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when there is none.
    pub async fn get(&self, fingerprint: &str) -> Result<Image> {
        self.client.get(path(fingerprint)).await
    }

    /// Deletes an image.
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn delete(&self, fingerprint: &str) -> Result<PendingOperation> {
        self.client
            .call_async(ApiRequest::new(Method::DELETE, path(fingerprint)))
            .await
    }

    /// All aliases.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn aliases(&self) -> Result<Vec<ImageAlias>> {
        self.client.list("/1.0/images/aliases").await
    }

    /// One alias.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when there is none.
    pub async fn alias(&self, name: &str) -> Result<ImageAlias> {
        self.client.get(alias_path(name)).await
    }

    /// Points alias `name` at `fingerprint`.
    ///
    /// # Errors
    /// [`crate::Error::is_conflict`] when the alias exists.
    pub async fn create_alias(
        &self,
        name: &str,
        fingerprint: &str,
        description: &str,
    ) -> Result<()> {
        self.client
            .send_json(
                Method::POST,
                "/1.0/images/aliases",
                &serde_json::json!({ "name": name, "target": fingerprint, "description": description }),
            )
            .await
    }

    /// Deletes an alias (not the image).
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when there is none.
    pub async fn delete_alias(&self, name: &str) -> Result<()> {
        self.client.delete(alias_path(name)).await
    }

    /// Imports a unified image tarball streamed from `body`.
    ///
    /// # Errors
    /// When Incus refuses the upload; a bad tarball fails the operation.
    pub async fn import_stream<S, E>(&self, body: S, opts: &ImageImport) -> Result<PendingOperation>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let stream = body.map_ok(Frame::data).map_err(Into::into);
        let body = StreamBody::new(stream).boxed_unsync();
        self.import_body(body, opts).await
    }

    /// Imports a unified image tarball held in memory.
    ///
    /// # Errors
    /// As [`Images::import_stream`].
    pub async fn import_bytes(
        &self,
        tarball: impl Into<Bytes>,
        opts: &ImageImport,
    ) -> Result<PendingOperation> {
        self.import_body(full_body(tarball.into()), opts).await
    }

    async fn import_body(
        &self,
        body: crate::request::Body,
        opts: &ImageImport,
    ) -> Result<PendingOperation> {
        let mut req = ApiRequest::new(Method::POST, "/1.0/images");
        if opts.public {
            req = req.header("x-incus-public", "true")?;
        }
        if let Some(f) = &opts.filename {
            req = req.header("x-incus-filename", f)?;
        }
        if let Some(fp) = &opts.fingerprint {
            req = req.header("x-incus-fingerprint", fp)?;
        }
        self.client
            .call_async(req.raw("application/octet-stream", body))
            .await
    }
}

/// The fingerprint of the image a finished import operation created.
///
/// # Errors
/// When the operation carries none.
pub fn imported_fingerprint(op: &Operation) -> Result<String> {
    op.metadata_field("fingerprint")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            Error::decode(
                &Method::POST,
                "/1.0/images",
                "the finished import operation carries no fingerprint",
            )
        })
}
