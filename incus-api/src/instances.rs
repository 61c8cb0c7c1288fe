//! Instances: list, get, create, update, state changes, delete, rebuild, rename, and
//! the live state (status, addresses, memory, CPU). Snapshots, files and exec hang off
//! [`Instances`] in their own modules.
//!
//! Config values are strings (6.0.x rejects numbers and booleans), and a stop's
//! `timeout` is never sent as `0` by default: 0 means "kill now".

use std::collections::HashMap;

use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::error::Result;
use crate::operations::{PendingOperation, StatusCode};
use crate::request::{ApiRequest, encode_segment};

/// A device: its `type` and keys, all strings.
pub type Device = HashMap<String, String>;

/// An instance as `GET /1.0/instances/{name}` returns it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Instance {
    /// Name.
    pub name: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type", default)]
    pub instance_type: String,
    /// Project.
    #[serde(default)]
    pub project: String,
    /// Status text.
    #[serde(default)]
    pub status: String,
    /// Status number (103 running, 102 stopped, 110 frozen).
    #[serde(default)]
    pub status_code: StatusCode,
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// Profiles applied, in order.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Deleted when stopped.
    #[serde(default)]
    pub ephemeral: bool,
    /// Has stateful snapshots.
    #[serde(default)]
    pub stateful: bool,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Local configuration.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// Local devices.
    #[serde(default)]
    pub devices: HashMap<String, Device>,
    /// Configuration with profiles applied.
    #[serde(default)]
    pub expanded_config: HashMap<String, String>,
    /// Devices with profiles applied.
    #[serde(default)]
    pub expanded_devices: HashMap<String, Device>,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub last_used_at: String,
    /// Cluster member (`none` when standalone).
    #[serde(default)]
    pub location: String,
}

impl Instance {
    /// The writable part, to change and send back with [`Instances::update`].
    #[must_use]
    pub fn to_put(&self) -> InstancePut {
        InstancePut {
            architecture: self.architecture.clone(),
            config: self.config.clone(),
            devices: self.devices.clone(),
            ephemeral: self.ephemeral,
            profiles: self.profiles.clone(),
            description: self.description.clone(),
            stateful: self.stateful,
        }
    }

    /// Whether it is running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.status_code == StatusCode::Running
    }
}

/// An instance with its state and snapshots (`recursion=2` lists, `recursion=1` get).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceFull {
    /// The instance.
    #[serde(flatten)]
    pub instance: Instance,
    /// Its live state.
    #[serde(default)]
    pub state: Option<InstanceState>,
    /// Its snapshots.
    #[serde(default)]
    pub snapshots: Option<Vec<crate::snapshots::Snapshot>>,
}

/// The writable view of an instance (`PUT /1.0/instances/{name}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstancePut {
    /// Architecture.
    pub architecture: String,
    /// Configuration.
    pub config: HashMap<String, String>,
    /// Devices.
    pub devices: HashMap<String, Device>,
    /// Ephemeral.
    pub ephemeral: bool,
    /// Profiles.
    pub profiles: Vec<String>,
    /// Description.
    pub description: String,
    /// Stateful.
    pub stateful: bool,
}

/// Where a new instance's root filesystem comes from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceSource {
    /// `image`, `none`, `copy`, `migration`.
    #[serde(rename = "type")]
    pub source_type: String,
    /// Image alias.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub alias: Option<String>,
    /// Image fingerprint.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub fingerprint: Option<String>,
    /// Image properties to match.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub properties: Option<HashMap<String, String>>,
    /// Remote server URL (`pull` mode).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server: Option<String>,
    /// `simplestreams` or `incus`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub protocol: Option<String>,
    /// PEM certificate of the remote server, for servers the daemon would not trust.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub certificate: Option<String>,
    /// `pull`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mode: Option<String>,
    /// Project of the source image or instance.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub project: Option<String>,
    /// Source instance (`copy`), e.g. `c1` or `c1/snap0`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<String>,
}

impl InstanceSource {
    /// A local image by alias.
    #[must_use]
    pub fn image_alias(alias: impl Into<String>) -> Self {
        Self {
            source_type: "image".into(),
            alias: Some(alias.into()),
            ..Self::default()
        }
    }

    /// A local image by fingerprint (or a unique prefix).
    #[must_use]
    pub fn image_fingerprint(fingerprint: impl Into<String>) -> Self {
        Self {
            source_type: "image".into(),
            fingerprint: Some(fingerprint.into()),
            ..Self::default()
        }
    }

    /// An image pulled from a remote simplestreams server; `certificate` is the
    /// server's PEM certificate when the daemon would not otherwise trust it.
    #[must_use]
    pub fn simplestreams(
        server: impl Into<String>,
        alias: impl Into<String>,
        certificate: Option<String>,
    ) -> Self {
        Self {
            source_type: "image".into(),
            alias: Some(alias.into()),
            server: Some(server.into()),
            protocol: Some("simplestreams".into()),
            mode: Some("pull".into()),
            certificate,
            ..Self::default()
        }
    }

    /// No root filesystem (an empty instance).
    #[must_use]
    pub fn none() -> Self {
        Self {
            source_type: "none".into(),
            ..Self::default()
        }
    }
}

/// The body of `POST /1.0/instances`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstanceSpec {
    /// Name (hostname-like: letters, digits, hyphens, at most 63 characters).
    pub name: String,
    /// `container` or `virtual-machine`.
    #[serde(rename = "type")]
    pub instance_type: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// Profiles; `None` means the server's default (`["default"]`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub profiles: Option<Vec<String>>,
    /// Deleted when stopped.
    #[serde(default)]
    pub ephemeral: bool,
    /// Configuration.
    #[serde(default)]
    pub config: HashMap<String, String>,
    /// Devices.
    #[serde(default)]
    pub devices: HashMap<String, Device>,
    /// Start it once created.
    #[serde(default)]
    pub start: bool,
    /// The root filesystem.
    pub source: InstanceSource,
}

impl InstanceSpec {
    /// A container from `source`, not started, default profiles.
    #[must_use]
    pub fn container(name: impl Into<String>, source: InstanceSource) -> Self {
        Self {
            name: name.into(),
            instance_type: "container".into(),
            description: String::new(),
            profiles: None,
            ephemeral: false,
            config: HashMap::new(),
            devices: HashMap::new(),
            start: false,
            source,
        }
    }

    /// Starts it once created.
    #[must_use]
    pub fn start(mut self, start: bool) -> Self {
        self.start = start;
        self
    }

    /// Sets a configuration key.
    #[must_use]
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Adds a device.
    #[must_use]
    pub fn device(mut self, name: impl Into<String>, device: Device) -> Self {
        self.devices.insert(name.into(), device);
        self
    }

    /// Sets the profiles.
    #[must_use]
    pub fn profiles(mut self, profiles: Vec<String>) -> Self {
        self.profiles = Some(profiles);
        self
    }
}

/// A state change action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateAction {
    /// Start.
    Start,
    /// Stop (clean shutdown unless forced).
    Stop,
    /// Restart.
    Restart,
    /// Freeze.
    Freeze,
    /// Unfreeze.
    Unfreeze,
}

/// The body of `PUT /1.0/instances/{name}/state`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateChange {
    /// What to do.
    pub action: StateAction,
    /// Seconds to wait for a clean stop; omitted means the server's default. Never
    /// `Some(0)` unless a kill is meant.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timeout: Option<i64>,
    /// Kill instead of shutting down.
    #[serde(default)]
    pub force: bool,
    /// Save or restore the running state.
    #[serde(default)]
    pub stateful: bool,
}

impl StateChange {
    /// `action` with server defaults.
    #[must_use]
    pub fn new(action: StateAction) -> Self {
        Self {
            action,
            timeout: None,
            force: false,
            stateful: false,
        }
    }

    /// Forces it (kill on stop).
    #[must_use]
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Seconds to wait for a clean stop.
    #[must_use]
    pub fn timeout(mut self, seconds: i64) -> Self {
        self.timeout = Some(seconds);
        self
    }
}

/// The live state (`GET /1.0/instances/{name}/state`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceState {
    /// Status text.
    #[serde(default)]
    pub status: String,
    /// Status number.
    #[serde(default)]
    pub status_code: StatusCode,
    /// Disk usage per device.
    #[serde(default)]
    pub disk: Option<HashMap<String, DiskState>>,
    /// Memory usage.
    #[serde(default)]
    pub memory: Option<MemoryState>,
    /// Network interfaces (`null` when stopped).
    #[serde(default)]
    pub network: Option<HashMap<String, NetworkInterfaceState>>,
    /// Init PID (0 when stopped).
    #[serde(default)]
    pub pid: i64,
    /// Process count.
    #[serde(default)]
    pub processes: i64,
    /// CPU usage.
    #[serde(default)]
    pub cpu: Option<CpuState>,
    /// RFC 3339 start time (`0001-01-01T00:00:00Z` when stopped).
    #[serde(default)]
    pub started_at: String,
}

impl InstanceState {
    /// Global-scope addresses of `family` (`inet` or `inet6`) on all interfaces but `lo`.
    #[must_use]
    pub fn addresses(&self, family: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .network
            .iter()
            .flatten()
            .filter(|(name, _)| name.as_str() != "lo")
            .flat_map(|(_, nic)| nic.addresses.iter())
            .filter(|a| a.family == family && a.scope == "global")
            .map(|a| a.address.clone())
            .collect();
        out.sort();
        out
    }
}

/// Disk usage of one device.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskState {
    /// Bytes used.
    #[serde(default)]
    pub usage: i64,
    /// Bytes available.
    #[serde(default)]
    pub total: i64,
}

/// Memory usage in bytes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryState {
    /// Current.
    #[serde(default)]
    pub usage: i64,
    /// Peak.
    #[serde(default)]
    pub usage_peak: i64,
    /// Limit.
    #[serde(default)]
    pub total: i64,
    /// Swap.
    #[serde(default)]
    pub swap_usage: i64,
    /// Swap peak.
    #[serde(default)]
    pub swap_usage_peak: i64,
}

/// CPU usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CpuState {
    /// Nanoseconds of CPU consumed.
    #[serde(default)]
    pub usage: i64,
    /// Nanoseconds available per second.
    #[serde(default)]
    pub allocated_time: i64,
}

/// One network interface.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkInterfaceState {
    /// Addresses.
    #[serde(default)]
    pub addresses: Vec<NetworkAddress>,
    /// Counters.
    #[serde(default)]
    pub counters: HashMap<String, i64>,
    /// MAC address.
    #[serde(default)]
    pub hwaddr: String,
    /// Host-side name.
    #[serde(default)]
    pub host_name: String,
    /// MTU.
    #[serde(default)]
    pub mtu: i64,
    /// `up` or `down`.
    #[serde(default)]
    pub state: String,
    /// `broadcast`, `loopback`.
    #[serde(rename = "type", default)]
    pub interface_type: String,
}

/// One address of an interface.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkAddress {
    /// `inet` or `inet6`.
    #[serde(default)]
    pub family: String,
    /// The address.
    #[serde(default)]
    pub address: String,
    /// Prefix length, as a string.
    #[serde(default)]
    pub netmask: String,
    /// `global`, `link`, `local`.
    #[serde(default)]
    pub scope: String,
}

/// Options of an instance list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// A filter such as `name eq web-.*` (field names are JSON names, values
    /// case-insensitive anchored regexes).
    pub filter: Option<String>,
    /// All projects instead of the client's.
    pub all_projects: bool,
}

impl ListOptions {
    /// A list filtered by `filter`.
    #[must_use]
    pub fn filter(filter: impl Into<String>) -> Self {
        Self {
            filter: Some(filter.into()),
            all_projects: false,
        }
    }
}

/// Typed handle on `/1.0/instances`.
#[derive(Debug, Clone)]
pub struct Instances {
    pub(crate) client: Client,
}

pub(crate) fn instance_path(name: &str) -> String {
    format!("/1.0/instances/{}", encode_segment(name))
}

impl Instances {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    fn list_request(recursion: u8, opts: &ListOptions) -> ApiRequest {
        let mut req = ApiRequest::get("/1.0/instances").query("recursion", recursion.to_string());
        if let Some(f) = &opts.filter {
            req = req.query("filter", f.clone());
        }
        if opts.all_projects {
            req = req.query("all-projects", "true");
        }
        req
    }

    /// Instance names (`recursion=0`).
    ///
    /// # Errors
    /// On any API or transport failure (an invalid filter is a 500 from Incus).
    pub async fn list_names(&self, opts: &ListOptions) -> Result<Vec<String>> {
        let urls: Vec<String> = self.client.call_sync(Self::list_request(0, opts)).await?.0;
        Ok(urls
            .iter()
            .map(|u| {
                u.split('?')
                    .next()
                    .unwrap_or("")
                    .rsplit('/')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect())
    }

    /// Instances (`recursion=1`).
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list(&self, opts: &ListOptions) -> Result<Vec<Instance>> {
        Ok(self.client.call_sync(Self::list_request(1, opts)).await?.0)
    }

    /// Instances with state and snapshots (`recursion=2`; costly: it reads every state).
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list_full(&self, opts: &ListOptions) -> Result<Vec<InstanceFull>> {
        Ok(self.client.call_sync(Self::list_request(2, opts)).await?.0)
    }

    /// One instance.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get(&self, name: &str) -> Result<Instance> {
        Ok(self.get_with_etag(name).await?.0)
    }

    /// One instance and its ETag, for [`Instances::update`].
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get_with_etag(&self, name: &str) -> Result<(Instance, Option<String>)> {
        self.client
            .call_sync(ApiRequest::get(instance_path(name)))
            .await
    }

    /// One instance with state and snapshots (`recursion=1`).
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn get_full(&self, name: &str) -> Result<InstanceFull> {
        Ok(self
            .client
            .call_sync(ApiRequest::get(instance_path(name)).query("recursion", "1"))
            .await?
            .0)
    }

    /// Creates an instance (placed on the client's target member, if any).
    ///
    /// # Errors
    /// When Incus refuses the request; a failure while creating shows on the operation.
    pub async fn create(&self, spec: &InstanceSpec) -> Result<PendingOperation> {
        self.client
            .call_async(ApiRequest::new(Method::POST, "/1.0/instances").json(spec)?)
            .await
    }

    /// Replaces the writable view (`PUT`), with `If-Match` when `etag` is given.
    ///
    /// # Errors
    /// [`crate::Error::is_precondition_failed`] when the instance changed since `etag`.
    pub async fn update(
        &self,
        name: &str,
        put: &InstancePut,
        etag: Option<&str>,
    ) -> Result<PendingOperation> {
        let mut req = ApiRequest::new(Method::PUT, instance_path(name)).json(put)?;
        if let Some(e) = etag {
            req = req.header("if-match", e)?;
        }
        self.client.call_async(req).await
    }

    /// Merges fields into the instance (`PATCH`): sent config keys and whole devices
    /// replace theirs, others are kept (removing needs [`Instances::update`]).
    ///
    /// # Errors
    /// When Incus refuses the change.
    pub async fn patch(
        &self,
        name: &str,
        patch: &serde_json::Value,
        etag: Option<&str>,
    ) -> Result<()> {
        let mut req = ApiRequest::new(Method::PATCH, instance_path(name)).json(patch)?;
        if let Some(e) = etag {
            req = req.header("if-match", e)?;
        }
        self.client.call_unit(req).await
    }

    /// Changes the running state.
    ///
    /// # Errors
    /// When Incus refuses the change.
    pub async fn set_state(&self, name: &str, change: &StateChange) -> Result<PendingOperation> {
        self.client
            .call_async(
                ApiRequest::new(Method::PUT, format!("{}/state", instance_path(name)))
                    .json(change)?,
            )
            .await
    }

    /// Starts it.
    ///
    /// # Errors
    /// As [`Instances::set_state`].
    pub async fn start(&self, name: &str) -> Result<PendingOperation> {
        self.set_state(name, &StateChange::new(StateAction::Start))
            .await
    }

    /// Stops it, cleanly within `timeout` seconds, or at once when `force`.
    ///
    /// # Errors
    /// As [`Instances::set_state`].
    pub async fn stop(
        &self,
        name: &str,
        force: bool,
        timeout: Option<i64>,
    ) -> Result<PendingOperation> {
        let mut change = StateChange::new(StateAction::Stop).force(force);
        change.timeout = timeout;
        self.set_state(name, &change).await
    }

    /// Restarts it.
    ///
    /// # Errors
    /// As [`Instances::set_state`].
    pub async fn restart(&self, name: &str, force: bool) -> Result<PendingOperation> {
        self.set_state(name, &StateChange::new(StateAction::Restart).force(force))
            .await
    }

    /// Freezes it.
    ///
    /// # Errors
    /// As [`Instances::set_state`].
    pub async fn freeze(&self, name: &str) -> Result<PendingOperation> {
        self.set_state(name, &StateChange::new(StateAction::Freeze))
            .await
    }

    /// Unfreezes it.
    ///
    /// # Errors
    /// As [`Instances::set_state`].
    pub async fn unfreeze(&self, name: &str) -> Result<PendingOperation> {
        self.set_state(name, &StateChange::new(StateAction::Unfreeze))
            .await
    }

    /// Deletes it (it must be stopped: a running instance is a 400).
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn delete(&self, name: &str) -> Result<PendingOperation> {
        self.client
            .call_async(ApiRequest::new(Method::DELETE, instance_path(name)))
            .await
    }

    /// Rebuilds its root filesystem from `source`, keeping its configuration (it must
    /// be stopped and have no snapshots).
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn rebuild(&self, name: &str, source: &InstanceSource) -> Result<PendingOperation> {
        #[derive(Serialize)]
        struct Body<'a> {
            source: &'a InstanceSource,
        }
        self.client
            .call_async(
                ApiRequest::new(Method::POST, format!("{}/rebuild", instance_path(name)))
                    .json(&Body { source })?,
            )
            .await
    }

    /// Renames it (it must be stopped).
    ///
    /// # Errors
    /// When Incus refuses.
    pub async fn rename(&self, name: &str, new_name: &str) -> Result<PendingOperation> {
        self.client
            .call_async(
                ApiRequest::new(Method::POST, instance_path(name))
                    .json(&serde_json::json!({ "name": new_name }))?,
            )
            .await
    }

    /// The live state.
    ///
    /// # Errors
    /// [`crate::Error::is_not_found`] when it does not exist.
    pub async fn state(&self, name: &str) -> Result<InstanceState> {
        self.client
            .get(format!("{}/state", instance_path(name)))
            .await
    }

    /// Its snapshots.
    #[must_use]
    pub fn snapshots(&self, name: &str) -> crate::snapshots::Snapshots {
        crate::snapshots::Snapshots::new(self.client.clone(), name)
    }

    /// Its files.
    #[must_use]
    pub fn files(&self, name: &str) -> crate::files::Files {
        crate::files::Files::new(self.client.clone(), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_stop_sends_no_timeout() {
        let body = serde_json::to_value(StateChange::new(StateAction::Stop)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"action": "stop", "force": false, "stateful": false})
        );
        let body = serde_json::to_value(StateChange::new(StateAction::Stop).timeout(30)).unwrap();
        assert_eq!(body["timeout"], 30);
    }

    #[test]
    fn simplestreams_source_has_the_pull_fields() {
        let s =
            InstanceSource::simplestreams("https://127.0.0.1:8444", "busybox", Some("PEM".into()));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type": "image", "alias": "busybox", "server": "https://127.0.0.1:8444",
                "protocol": "simplestreams", "mode": "pull", "certificate": "PEM"})
        );
    }
}
