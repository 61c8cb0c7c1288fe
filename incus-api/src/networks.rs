//! Managed networks (`/1.0/networks`): list, get, create, update, delete.
//!
//! A network's config values are strings, like an instance's. The list also shows the
//! host's unmanaged interfaces (`managed: false`); callers that only care about what
//! they created filter on their own `user.*` keys.

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::{Error, Result};
use crate::request::{ApiRequest, encode_segment};
use crate::resend::Resend;

/// A bridge create that lost a host link made nothing, so it is sent again.
const LINK_VANISHED: Resend = Resend {
    attempts: 4,
    first_pause: Duration::from_millis(500),
    passing: link_vanished,
};

/// Whether Incus failed to set a new bridge up because a host link vanished while it
/// listed them: Incus 6.0 runs `ip -d -j link show` on every link, and a veth that goes
/// away meanwhile (any instance stopping on the host) fails the create with HTTP 500
/// "... link show vethX ... does not exist".
fn link_vanished(error: &Error) -> bool {
    error.status() == Some(500)
        && error
            .api_message()
            .is_some_and(|m| m.contains("link show") && m.contains("does not exist"))
}

/// A network as `GET /1.0/networks/{name}` returns it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Network {
    /// Name.
    pub name: String,
    /// `bridge`, `macvlan`, `physical`, `ovn`, ...
    #[serde(rename = "type", default)]
    pub network_type: String,
    /// Whether Incus manages it (an unmanaged one is a host interface).
    #[serde(default)]
    pub managed: bool,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Configuration.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// `Created`, `Pending`, `Errored`, ...
    #[serde(default)]
    pub status: String,
    /// URLs of the instances and profiles using it.
    #[serde(default)]
    pub used_by: Vec<String>,
}

/// The body of `POST /1.0/networks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Name (an interface name: at most 15 characters).
    pub name: String,
    /// `bridge` for a managed bridge.
    #[serde(rename = "type")]
    pub network_type: String,
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: HashMap<String, String>,
}

/// The writable view of a network (`PUT /1.0/networks/{name}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkPut {
    /// Description.
    pub description: String,
    /// Configuration.
    pub config: HashMap<String, String>,
}

/// Typed handle on `/1.0/networks`.
#[derive(Debug, Clone)]
pub struct Networks {
    client: Client,
}

fn network_path(name: &str) -> String {
    format!("/1.0/networks/{}", encode_segment(name))
}

impl Client {
    /// The networks of the client's project.
    #[must_use]
    pub fn networks(&self) -> Networks {
        Networks {
            client: self.clone(),
        }
    }
}

impl Networks {
    /// Every network, managed or not (`recursion=1`).
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list(&self) -> Result<Vec<Network>> {
        Ok(self
            .client
            .call_sync(ApiRequest::get("/1.0/networks").query("recursion", "1"))
            .await?
            .0)
    }

    /// One network and its ETag.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get_with_etag(&self, name: &str) -> Result<(Network, Option<String>)> {
        self.client
            .call_sync(ApiRequest::get(network_path(name)))
            .await
    }

    /// Creates a network. A create Incus failed because a host link vanished while it
    /// set the bridge up (nothing was made) is sent again, up to four times in all.
    ///
    /// # Errors
    /// [`crate::Error::is_conflict`] when it exists; Incus's message when a key or the
    /// subnet is refused.
    pub async fn create(&self, spec: &NetworkSpec) -> Result<()> {
        LINK_VANISHED
            .run(|| self.client.send_json(Method::POST, "/1.0/networks", spec))
            .await
    }

    /// Replaces the writable view, with `If-Match` when `etag` is given.
    ///
    /// # Errors
    /// [`crate::Error::is_precondition_failed`] when it changed since `etag`.
    pub async fn update(&self, name: &str, put: &NetworkPut, etag: Option<&str>) -> Result<()> {
        let mut req = ApiRequest::new(Method::PUT, network_path(name)).json(put)?;
        if let Some(e) = etag {
            req = req.header("if-match", e)?;
        }
        self.client.call_unit(req).await
    }

    /// Deletes a network (no instance may use it).
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist; a 400 while it is in use.
    pub async fn delete(&self, name: &str) -> Result<()> {
        self.client
            .call_unit(ApiRequest::new(Method::DELETE, network_path(name)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, message: &str) -> Error {
        Error::Api {
            method: Method::POST,
            path: "/1.0/networks".into(),
            status,
            message: message.into(),
        }
    }

    #[test]
    fn a_bridge_create_that_lost_a_link_is_sent_again_and_nothing_else() {
        let vanished = "Failed to delete bridge children interfaces: Failed to run: ip -d -j \
            link show veth2123a875: exit status 1 (Device \"veth2123a875\" does not exist.)";
        assert!(link_vanished(&refused(500, vanished)));
        assert!(!link_vanished(&refused(400, vanished)));
        assert!(!link_vanished(&refused(500, "Network not found")));
        // Not an answer of Incus at all.
        assert!(!link_vanished(&Error::decode(
            &Method::POST,
            "/1.0/networks",
            "not JSON"
        )));
    }
}
