//! The proxy's configuration: listeners, routes, services and their backends.
//!
//! The same serde types are the file format (TOML, or JSON when the file name ends in
//! `.json`), the admin interface's body and what `cul8er-core` builds when it drives an
//! edge. [`ProxyConfig::validate`] collects every problem at once, each named by its
//! place in the configuration, so a bad file is refused with one complete message.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The whole configuration of one proxy process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Process-wide settings.
    #[serde(default)]
    pub settings: Settings,
    /// The sockets the proxy accepts on.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// The services that routes and TCP listeners send traffic to.
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
}

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How long in-flight requests to a removed backend may run before they are cut,
    /// and how long a `drain` waits for them.
    #[serde(default = "default_drain_timeout", with = "duration_text")]
    pub drain_timeout: Duration,
    /// How long a shutdown waits for in-flight requests before closing connections.
    #[serde(default = "default_drain_timeout", with = "duration_text")]
    pub shutdown_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain_timeout(),
            shutdown_timeout: default_drain_timeout(),
        }
    }
}

/// What a listener speaks to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// HTTP/1.1 and HTTP/2 (prior knowledge, or ALPN over TLS), routed by host and path.
    #[default]
    Http,
    /// Plain TCP, forwarded byte for byte to one service.
    Tcp,
}

/// One socket the proxy accepts connections on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A unique name, used in errors and metrics.
    pub name: String,
    /// The address to bind, e.g. `0.0.0.0:80` (port 0 picks a free port).
    pub bind: SocketAddr,
    /// HTTP or TCP.
    #[serde(default)]
    pub mode: ListenerMode,
    /// Expect a PROXY protocol (v1 or v2) header on every connection; its client
    /// address is the one reported in `X-Forwarded-For`.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Terminate TLS with these certificates (HTTP listeners only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// HTTP routes, most specific first is not required: the longest matching path
    /// prefix of the most specific host wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteConfig>,
    /// The service a TCP listener forwards to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A client connection with nothing in flight and no bytes moving for this long is
    /// closed.
    #[serde(default = "default_client_idle", with = "duration_text")]
    pub idle_timeout: Duration,
}

/// TLS termination on a listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificates; the one whose `server_names` match the client's SNI is used, and
    /// the first one when none matches or the client sends no SNI.
    pub certificates: Vec<CertificateConfig>,
}

/// One certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The SNI names this certificate answers (exact, or `*.example.com`).
    #[serde(default)]
    pub server_names: Vec<String>,
    /// The PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// The PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// An HTTP route: requests whose host and path match go to `service`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The host to match (without port, case-insensitive); absent matches any host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The path prefix to match, on segment boundaries (`/api` matches `/api/x`, not
    /// `/apix`).
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    /// The service to send matching requests to.
    pub service: String,
}

/// How the proxy talks HTTP to a service's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with a keep-alive pool.
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (h2c).
    Http2,
}

/// A service: a set of weighted backends with health checking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// A unique name.
    pub name: String,
    /// HTTP version spoken to the backends (ignored for TCP listeners).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// The backends.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Active health checks; without them a backend counts as healthy until passive
    /// ejection says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive ejection on consecutive failures.
    #[serde(default)]
    pub passive: PassiveConfig,
    /// Timeouts towards the backends.
    #[serde(default)]
    pub timeouts: TimeoutConfig,
    /// How many other backends an idempotent request without a body is tried on when
    /// connecting fails.
    #[serde(default = "default_retries")]
    pub retries: u32,
}

/// One backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// A name unique within the service (cul8er uses the instance name).
    pub name: String,
    /// The backend's address.
    pub address: SocketAddr,
    /// The share of new requests; 0 takes it out of rotation and keeps its connections.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// An HTTP/1.1 GET of `path`, compared with `expect_status` and `body_contains`.
    #[default]
    Http,
    /// A TCP connect.
    Tcp,
}

/// An active health check, run against every backend of a service (weight 0 included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// HTTP or TCP.
    #[serde(default)]
    pub kind: CheckKind,
    /// The path to GET (HTTP checks).
    #[serde(default = "default_health_path")]
    pub path: String,
    /// The status a healthy backend answers (HTTP checks).
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// A substring the body must contain (HTTP checks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Time between checks.
    #[serde(default = "default_check_interval", with = "duration_text")]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(default = "default_check_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// Consecutive passes that make an unhealthy backend healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    #[serde(default = "default_fall")]
    pub fall: u32,
}

/// Passive ejection: consecutive connect errors or 5xx answers take a backend out for
/// a back-off that doubles on each ejection, up to a cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveConfig {
    /// Consecutive failures that eject a backend; 0 turns passive ejection off.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection's length.
    #[serde(default = "default_base_ejection", with = "duration_text")]
    pub base_ejection: Duration,
    /// The longest ejection.
    #[serde(default = "default_max_ejection", with = "duration_text")]
    pub max_ejection: Duration,
}

impl Default for PassiveConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
        }
    }
}

/// Timeouts towards a service's backends.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Establishing a TCP connection.
    #[serde(default = "default_connect_timeout", with = "duration_text")]
    pub connect: Duration,
    /// From sending a request to receiving the response headers.
    #[serde(default = "default_response_headers_timeout", with = "duration_text")]
    pub response_headers: Duration,
    /// How long an unused pooled connection to a backend is kept.
    #[serde(default = "default_upstream_idle", with = "duration_text")]
    pub idle: Duration,
    /// The longest a request or response body may go without a byte moving, whichever
    /// side holds it up (the sender not sending or the receiver not reading); past it
    /// the exchange is ended.
    #[serde(default = "default_body_timeout", with = "duration_text")]
    pub body: Duration,
    /// The longest an upgraded connection (a WebSocket, or any other `101 Switching
    /// Protocols`) may go without a byte moving in either direction; past it both
    /// sides are closed. Long by default, as many WebSocket applications ping less
    /// often than once a minute.
    #[serde(default = "default_tunnel_idle", with = "duration_text")]
    pub tunnel_idle: Duration,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            connect: default_connect_timeout(),
            response_headers: default_response_headers_timeout(),
            idle: default_upstream_idle(),
            body: default_body_timeout(),
            tunnel_idle: default_tunnel_idle(),
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_client_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_path_prefix() -> String {
    "/".to_owned()
}
fn default_retries() -> u32 {
    2
}
fn default_weight() -> u32 {
    1
}
fn default_health_path() -> String {
    "/".to_owned()
}
fn default_expect_status() -> u16 {
    200
}
fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(1)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_response_headers_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_upstream_idle() -> Duration {
    Duration::from_secs(90)
}
fn default_body_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_tunnel_idle() -> Duration {
    Duration::from_secs(3600)
}

/// A configuration that could not be read or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the proxy configuration")]
    Read(#[source] std::io::Error),
    /// The TOML text does not match the format.
    #[error("the proxy configuration {origin} is not valid TOML for this format")]
    Toml {
        /// The file or source the text came from.
        origin: String,
        /// The parser's message, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// The JSON text does not match the format.
    #[error("the proxy configuration {origin} is not valid JSON for this format")]
    Json {
        /// The file or source the text came from.
        origin: String,
        /// The parser's message, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// The configuration parses but breaks rules; every problem is listed.
    #[error("the proxy configuration is invalid:{}", Problems(.0))]
    Invalid(Vec<ConfigProblem>),
}

struct Problems<'a>(&'a [ConfigProblem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

/// One rule a configuration breaks, with where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigProblem {
    /// Where, e.g. `services[api].backends[web-1].weight`.
    pub at: String,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

impl ProxyConfig {
    /// Parses TOML text; `origin` names the source in errors.
    ///
    /// # Errors
    /// [`ConfigError::Toml`] when the text does not match the format.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Toml {
            origin: origin.to_owned(),
            source,
        })
    }

    /// Parses JSON text; `origin` names the source in errors.
    ///
    /// # Errors
    /// [`ConfigError::Json`] when the text does not match the format.
    pub fn from_json(text: &str, origin: &str) -> Result<Self, ConfigError> {
        serde_json::from_str(text).map_err(|source| ConfigError::Json {
            origin: origin.to_owned(),
            source,
        })
    }

    /// Reads a file (JSON when its name ends in `.json`, TOML otherwise) and validates it.
    ///
    /// # Errors
    /// [`ConfigError::Read`] (the message of its source names the file), a parse error,
    /// or [`ConfigError::Invalid`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = fs_err::read_to_string(path).map_err(ConfigError::Read)?;
        let origin = path.display().to_string();
        let config = if path.extension().is_some_and(|ext| ext == "json") {
            Self::from_json(&text, &origin)?
        } else {
            Self::from_toml(&text, &origin)?
        };
        config.validate()?;
        Ok(config)
    }

    /// Renders the configuration as TOML.
    ///
    /// # Errors
    /// Only if a value cannot be expressed in TOML (it always can for a valid config).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Finds a service by name.
    #[must_use]
    pub fn service(&self, name: &str) -> Option<&ServiceConfig> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Checks every rule and lists every problem.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with one [`ConfigProblem`] per broken rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |at: String, message: &str| {
            problems.push(ConfigProblem {
                at,
                message: message.to_owned(),
            });
        };

        let settings = &self.settings;
        for (name, duration) in [
            ("drain_timeout", settings.drain_timeout),
            ("shutdown_timeout", settings.shutdown_timeout),
        ] {
            if duration > MAX_DURATION {
                problem(format!("settings.{name}"), TOO_LONG);
            }
        }

        let mut service_names = HashSet::new();
        for (i, service) in self.services.iter().enumerate() {
            let at = format!("services[{}]", label(&service.name, i));
            if !valid_name(&service.name) {
                problem(
                    format!("{at}.name"),
                    "names use letters, digits, '-', '_' and '.'",
                );
            }
            if !service_names.insert(service.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    "another service has this name; names are unique",
                );
            }
            let mut backend_names = HashSet::new();
            for (j, backend) in service.backends.iter().enumerate() {
                let at = format!("{at}.backends[{}]", label(&backend.name, j));
                if !valid_name(&backend.name) {
                    problem(
                        format!("{at}.name"),
                        "names use letters, digits, '-', '_' and '.'",
                    );
                }
                if !backend_names.insert(backend.name.as_str()) {
                    problem(
                        format!("{at}.name"),
                        "another backend of this service has this name",
                    );
                }
                if backend.address.port() == 0 {
                    problem(
                        format!("{at}.address"),
                        "a backend needs a port other than 0",
                    );
                }
            }
            if let Some(check) = &service.health_check {
                let at = format!("{at}.health_check");
                if check.kind == CheckKind::Http && !check.path.starts_with('/') {
                    problem(format!("{at}.path"), "the path must start with '/'");
                }
                if !(100..=599).contains(&check.expect_status) {
                    problem(
                        format!("{at}.expect_status"),
                        "a status is between 100 and 599",
                    );
                }
                if check.interval.is_zero() {
                    problem(format!("{at}.interval"), "must be longer than 0s");
                }
                if check.timeout.is_zero() {
                    problem(format!("{at}.timeout"), "must be longer than 0s");
                }
                if check.rise == 0 {
                    problem(format!("{at}.rise"), "must be at least 1");
                }
                if check.fall == 0 {
                    problem(format!("{at}.fall"), "must be at least 1");
                }
            }
            if service.passive.base_ejection.is_zero() {
                problem(
                    format!("{at}.passive.base_ejection"),
                    "must be longer than 0s",
                );
            }
            if service.passive.max_ejection < service.passive.base_ejection {
                problem(
                    format!("{at}.passive.max_ejection"),
                    "must be at least passive.base_ejection",
                );
            }
            if service.timeouts.connect.is_zero() || service.timeouts.response_headers.is_zero() {
                problem(
                    format!("{at}.timeouts"),
                    "connect and response_headers must be > 0s",
                );
            }
            if service.timeouts.body.is_zero() {
                problem(format!("{at}.timeouts.body"), "must be longer than 0s");
            }
            if service.timeouts.tunnel_idle.is_zero() {
                problem(
                    format!("{at}.timeouts.tunnel_idle"),
                    "must be longer than 0s",
                );
            }
            let timeouts = &service.timeouts;
            let check = service.health_check.as_ref();
            for (name, duration) in [
                ("timeouts.connect", Some(timeouts.connect)),
                ("timeouts.response_headers", Some(timeouts.response_headers)),
                ("timeouts.idle", Some(timeouts.idle)),
                ("timeouts.body", Some(timeouts.body)),
                ("timeouts.tunnel_idle", Some(timeouts.tunnel_idle)),
                ("passive.base_ejection", Some(service.passive.base_ejection)),
                ("passive.max_ejection", Some(service.passive.max_ejection)),
                ("health_check.interval", check.map(|c| c.interval)),
                ("health_check.timeout", check.map(|c| c.timeout)),
            ] {
                if duration.is_some_and(|d| d > MAX_DURATION) {
                    problem(format!("{at}.{name}"), TOO_LONG);
                }
            }
        }

        let mut listener_names = HashSet::new();
        let mut binds = HashSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            let at = format!("listeners[{}]", label(&listener.name, i));
            if !valid_name(&listener.name) {
                problem(
                    format!("{at}.name"),
                    "names use letters, digits, '-', '_' and '.'",
                );
            }
            if !listener_names.insert(listener.name.as_str()) {
                problem(
                    format!("{at}.name"),
                    "another listener has this name; names are unique",
                );
            }
            if listener.bind.port() != 0 && !binds.insert(listener.bind) {
                problem(format!("{at}.bind"), "another listener binds this address");
            }
            if listener.idle_timeout.is_zero() {
                problem(format!("{at}.idle_timeout"), "must be longer than 0s");
            }
            if listener.idle_timeout > MAX_DURATION {
                problem(format!("{at}.idle_timeout"), TOO_LONG);
            }
            match listener.mode {
                ListenerMode::Tcp => {
                    match &listener.service {
                        None => problem(
                            format!("{at}.service"),
                            "a tcp listener names the service it forwards to",
                        ),
                        Some(name) if !service_names.contains(name.as_str()) => problem(
                            format!("{at}.service"),
                            &format!("no service is named '{name}'; add it under [[services]]"),
                        ),
                        Some(_) => {}
                    }
                    if !listener.routes.is_empty() {
                        problem(format!("{at}.routes"), "a tcp listener has no routes");
                    }
                    if listener.tls.is_some() {
                        problem(format!("{at}.tls"), "TLS termination is for http listeners");
                    }
                }
                ListenerMode::Http => {
                    if listener.service.is_some() {
                        problem(
                            format!("{at}.service"),
                            "an http listener routes with [[listeners.routes]], not service",
                        );
                    }
                    if listener.routes.is_empty() {
                        problem(
                            format!("{at}.routes"),
                            "an http listener needs at least one route",
                        );
                    }
                    for (j, route) in listener.routes.iter().enumerate() {
                        let at = format!("{at}.routes[{j}]");
                        if !route.path_prefix.starts_with('/') {
                            problem(format!("{at}.path_prefix"), "must start with '/'");
                        }
                        if route
                            .host
                            .as_deref()
                            .is_some_and(|h| h.is_empty() || h.contains('/'))
                        {
                            problem(format!("{at}.host"), "a host name, without scheme or path");
                        }
                        if !service_names.contains(route.service.as_str()) {
                            problem(
                                format!("{at}.service"),
                                &format!(
                                    "no service is named '{}'; add it under [[services]]",
                                    route.service
                                ),
                            );
                        }
                    }
                    if let Some(tls) = &listener.tls
                        && tls.certificates.is_empty()
                    {
                        problem(format!("{at}.tls.certificates"), "list at least one");
                    }
                }
            }
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

/// The longest duration a configuration may give. Deadlines are instants that far
/// ahead, and one a lifetime away cannot be represented.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
const TOO_LONG: &str = "must be at most 8760h (a year)";

fn label(name: &str, index: usize) -> String {
    if name.is_empty() {
        index.to_string()
    } else {
        name.to_owned()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Parses a duration written as an integer and a unit: `250ms`, `2s`, `5m`, `1h`.
///
/// # Errors
/// A message saying what was expected.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || format!("'{text}' is not a duration: write a whole number and ms, s, m or h");
    let number: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(number.saturating_mul(3600))),
        _ => Err(bad()),
    }
}

/// Writes a duration the way [`parse_duration`] reads it, in the largest exact unit.
#[must_use]
pub fn format_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if !ms.is_multiple_of(1000) || ms == 0 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[settings]
drain_timeout = "10s"

[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
routes = [
  { host = "app.example", path_prefix = "/api", service = "api" },
  { service = "api" },
]

[[listeners]]
name = "db"
bind = "127.0.0.1:5432"
mode = "tcp"
service = "api"

[[services]]
name = "api"
backends = [
  { name = "a", address = "127.0.0.1:9001", weight = 3 },
  { name = "b", address = "127.0.0.1:9002" },
]
health_check = { path = "/health", interval = "500ms", rise = 1, fall = 2 }
"#;

    #[test]
    fn example_parses_with_defaults_and_round_trips() {
        let config = ProxyConfig::from_toml(EXAMPLE, "example").unwrap();
        config.validate().unwrap();
        assert_eq!(config.settings.drain_timeout, Duration::from_secs(10));
        let api = config.service("api").unwrap();
        assert_eq!(api.backends[1].weight, 1);
        assert_eq!(api.retries, 2);
        let check = api.health_check.as_ref().unwrap();
        assert_eq!(check.interval, Duration::from_millis(500));
        assert_eq!(check.expect_status, 200);
        assert_eq!(config.listeners[0].routes[1].path_prefix, "/");
        let again = ProxyConfig::from_toml(&config.to_toml().unwrap(), "again").unwrap();
        assert_eq!(again, config);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(ProxyConfig::from_json(&json, "json").unwrap(), config);
    }

    #[test]
    fn every_problem_is_listed_with_its_place() {
        let text = r#"
[[listeners]]
name = "web"
bind = "127.0.0.1:8080"
routes = [{ path_prefix = "api", service = "missing" }]

[[services]]
name = "api"
backends = [
  { name = "a", address = "127.0.0.1:9001" },
  { name = "a", address = "127.0.0.1:0" },
]
health_check = { rise = 0 }
"#;
        let config = ProxyConfig::from_toml(text, "t").unwrap();
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("expected invalid")
        };
        let at: Vec<_> = problems.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "services[api].backends[a].name",
                "services[api].backends[a].address",
                "services[api].health_check.rise",
                "listeners[web].routes[0].path_prefix",
                "listeners[web].routes[0].service",
            ]
        );
        let message = ConfigError::Invalid(problems).to_string();
        assert!(
            message.contains("no service is named 'missing'"),
            "{message}"
        );
    }

    #[test]
    fn the_body_timeout_defaults_to_a_minute_and_must_be_longer_than_zero() {
        let mut config = ProxyConfig::from_toml(EXAMPLE, "example").unwrap();
        assert_eq!(
            config.service("api").unwrap().timeouts.body,
            Duration::from_secs(60)
        );
        config.services[0].timeouts.body = Duration::ZERO;
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("a zero body timeout was accepted")
        };
        assert_eq!(
            problems,
            [ConfigProblem {
                at: "services[api].timeouts.body".to_owned(),
                message: "must be longer than 0s".to_owned(),
            }]
        );
        let text = EXAMPLE.replace(
            "health_check = {",
            "timeouts = { body = \"5m\" }\nhealth_check = {",
        );
        let config = ProxyConfig::from_toml(&text, "body").unwrap();
        assert_eq!(
            config.service("api").unwrap().timeouts.body,
            Duration::from_secs(300)
        );
    }

    /// Regression: a duration too long to be added to an instant was accepted, and the
    /// first deadline made from it panicked (a body stall with `body = "…h"` huge).
    #[test]
    fn durations_longer_than_a_year_are_refused() {
        let huge = format!("\"{}s\"", u64::MAX);
        let text = EXAMPLE
            .replace(
                "drain_timeout = \"10s\"",
                &format!("drain_timeout = {huge}"),
            )
            .replace(
                "health_check = {",
                &format!(
                    "timeouts = {{ body = {huge}, response_headers = \"8761h\" }}\n\
                     health_check = {{"
                ),
            )
            .replace(
                "service = \"api\"\n\n[[services]]",
                &format!("service = \"api\"\nidle_timeout = {huge}\n\n[[services]]"),
            );
        let config = ProxyConfig::from_toml(&text, "huge").unwrap();
        let Err(ConfigError::Invalid(problems)) = config.validate() else {
            panic!("durations of many years were accepted")
        };
        let mut at: Vec<&str> = problems.iter().map(|p| p.at.as_str()).collect();
        at.sort_unstable();
        assert_eq!(
            at,
            [
                "listeners[db].idle_timeout",
                "services[api].timeouts.body",
                "services[api].timeouts.response_headers",
                "settings.drain_timeout",
            ]
        );
        assert!(
            problems
                .iter()
                .all(|p| p.message == "must be at most 8760h (a year)")
        );
        let text = EXAMPLE.replace(
            "health_check = {",
            "timeouts = { body = \"8760h\" }\nhealth_check = {",
        );
        let config = ProxyConfig::from_toml(&text, "a year").unwrap();
        config.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused_with_their_line() {
        let err = ProxyConfig::from_toml("[settings]\ndrain = \"1s\"\n", "f.toml").unwrap_err();
        let source = std::error::Error::source(&err).unwrap().to_string();
        assert!(source.contains("drain"), "{source}");
        assert!(source.contains("line 2"), "{source}");
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("2").unwrap_err().contains("ms, s, m or h"));
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::ZERO), "0ms");
    }
}
