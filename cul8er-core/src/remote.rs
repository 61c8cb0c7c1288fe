//! Remotes: Incus servers reached over TLS, each with its server certificate pinned.
//!
//! `cul8er remote add NAME https://HOST:8443 --token TOKEN` fetches the certificate the
//! server presents, requires its SHA-256 fingerprint to equal the one inside the trust
//! token, pins it, and presents cul8er's client certificate with the token so the
//! server trusts it. Without a token the operator must confirm the fingerprint they
//! verified out of band (`--accept-fingerprint`), and the server must already trust
//! the client certificate: cul8er never trusts a server on first sight silently.
//!
//! The store is a directory (`$CUL8ER_CONFIG_DIR`, else `$XDG_CONFIG_HOME/cul8er`,
//! else `~/.config/cul8er`), mode 0700:
//!
//! ```text
//! remotes.toml            name → address and fingerprint
//! servercerts/NAME.crt    each remote's pinned server certificate (PEM)
//! client.crt, client.key  cul8er's client certificate (ECDSA P-384) and key (0600)
//! ```
//!
//! Every file is written atomically (temporary file, fsync, rename).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use incus_api::trust::{self, TrustToken};
use incus_api::{Certificate, Client, ClientBuilder, ClientIdentity};
use serde::{Deserialize, Serialize};

/// How long connecting to a remote (and its TLS handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A stored remote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remote {
    /// Its name (`host NAME remote=NAME` in topologies).
    pub name: String,
    /// `https://host:port`.
    pub address: String,
    /// SHA-256 fingerprint of the pinned server certificate (lowercase hex).
    pub fingerprint: String,
}

/// What removing a remote did about its server's trust in cul8er's client
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "trust", rename_all = "kebab-case")]
pub enum TrustRemoval {
    /// The server no longer trusts the client certificate.
    Revoked,
    /// The server did not trust it (any more).
    NotTrusted,
    /// Another stored remote reaches the same server, so its trust was kept.
    SharedWith {
        /// That remote.
        remote: String,
    },
    /// The server could not be asked: it still trusts the certificate.
    Unreachable {
        /// Why.
        error: String,
    },
}

/// How the operator vouches for the server when adding a remote.
#[derive(Debug, Clone)]
pub enum RemoteTrust {
    /// A trust token from `incus config trust add`: it carries the server's
    /// fingerprint and makes the server trust cul8er's client certificate.
    Token(String),
    /// A fingerprint the operator verified out of band; the server must already trust
    /// cul8er's client certificate.
    Fingerprint(String),
    /// Nothing: the add fails and reports the fingerprint, so the operator can check
    /// it and come back with [`RemoteTrust::Fingerprint`].
    Unconfirmed,
}

/// A remote store operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The remote name cannot be used.
    #[error("remote name {name:?} is not valid: use letters, digits, `-` and `_` (at most 63)")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// The address is not `https://host[:port]`.
    #[error("remote address {address:?} is not valid: {reason}; write it as https://HOST:8443")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A remote of that name exists.
    #[error(
        "a remote named {name} exists already; remove it first with `cul8er remote remove {name}`"
    )]
    Exists {
        /// The name.
        name: String,
    },
    /// No remote of that name.
    #[error(
        "no remote named {name} in {store}; add it with `cul8er remote add {name} https://HOST:8443 --token TOKEN`"
    )]
    NotFound {
        /// The name.
        name: String,
        /// The store directory.
        store: PathBuf,
    },
    /// The server presented a certificate other than the one the operator vouched for.
    #[error(
        "the server at {address} presented a certificate with SHA-256 fingerprint {presented}, \
         but the {expected_from} says {expected}; refusing to add it (check the address, and \
         that the token or fingerprint belongs to this server)"
    )]
    FingerprintMismatch {
        /// The address dialled.
        address: String,
        /// The fingerprint the server presented.
        presented: String,
        /// The fingerprint expected.
        expected: String,
        /// Where the expectation came from: `trust token` or `confirmed fingerprint`.
        expected_from: &'static str,
    },
    /// Neither a token nor a confirmed fingerprint was given.
    #[error(
        "the server at {address} presented a certificate with SHA-256 fingerprint {presented}; \
         cul8er does not trust a server on first sight: give a trust token (`--token`, from \
         `incus config trust add NAME` on the server), or check this fingerprint on the server \
         (`incus info | grep -i fingerprint`) and pass it with `--accept-fingerprint`"
    )]
    Unconfirmed {
        /// The address dialled.
        address: String,
        /// The fingerprint the server presented.
        presented: String,
    },
    /// The server does not trust cul8er's client certificate and there was no token.
    #[error(
        "the server at {address} does not trust cul8er's client certificate (fingerprint \
         {client_fingerprint}); add it with a trust token (`--token`) or trust the certificate \
         on the server (`incus config trust add-certificate`)"
    )]
    NotTrusted {
        /// The address.
        address: String,
        /// Fingerprint of cul8er's client certificate.
        client_fingerprint: String,
    },
    /// The trust token cannot be read.
    #[error("the trust token cannot be used")]
    BadToken(#[source] Box<incus_api::Error>),
    /// Talking to the server failed.
    #[error("remote {address}: {step} failed")]
    Incus {
        /// The address.
        address: String,
        /// What was being done.
        step: &'static str,
        /// What went wrong.
        #[source]
        source: Box<incus_api::Error>,
    },
    /// A stored file is unreadable or damaged.
    #[error("the remote store file {path} is damaged; fix or delete it")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Reading or writing the store failed (the cause names the file).
    #[error("the remote store could not be read or written")]
    Io(#[source] std::io::Error),
    /// No configuration directory can be derived.
    #[error(
        "no configuration directory: set CUL8ER_CONFIG_DIR (or XDG_CONFIG_HOME, or HOME) to where cul8er keeps its remotes"
    )]
    NoConfigDir,
}

impl RemoteError {
    /// Whether the error is the operator's to fix (bad input, refused trust) rather than
    /// a failure of the machine or network.
    #[must_use]
    pub fn is_user_error(&self) -> bool {
        !matches!(
            self,
            Self::Incus { .. } | Self::Io(_) | Self::Damaged { .. }
        )
    }
}

/// The remotes file's format.
#[derive(Debug, Default, Serialize, Deserialize)]
struct RemotesFile {
    #[serde(default)]
    remotes: BTreeMap<String, StoredRemote>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredRemote {
    address: String,
    fingerprint: String,
}

/// The directory of remotes and cul8er's client certificate.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    dir: PathBuf,
}

impl RemoteStore {
    /// The store in `dir` (created on the first write).
    #[must_use]
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The default directory from an environment lookup: `$CUL8ER_CONFIG_DIR`, else
    /// `$XDG_CONFIG_HOME/cul8er`, else `$HOME/.config/cul8er`.
    ///
    /// # Errors
    ///
    /// [`RemoteError::NoConfigDir`] when none of them is set.
    pub fn default_dir(env: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, RemoteError> {
        let set = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(dir) = set("CUL8ER_CONFIG_DIR") {
            return Ok(PathBuf::from(dir));
        }
        if let Some(dir) = set("XDG_CONFIG_HOME") {
            return Ok(Path::new(&dir).join("cul8er"));
        }
        if let Some(home) = set("HOME") {
            return Ok(Path::new(&home).join(".config").join("cul8er"));
        }
        Err(RemoteError::NoConfigDir)
    }

    /// The store's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn remotes_path(&self) -> PathBuf {
        self.dir.join("remotes.toml")
    }

    fn server_cert_path(&self, name: &str) -> PathBuf {
        self.dir.join("servercerts").join(format!("{name}.crt"))
    }

    fn read_file(&self) -> Result<RemotesFile, RemoteError> {
        let path = self.remotes_path();
        let text = match fs_err::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RemotesFile::default()),
            Err(e) => return Err(RemoteError::Io(e)),
        };
        toml::from_str(&text).map_err(|e| RemoteError::Damaged {
            path,
            source: Box::new(e),
        })
    }

    fn write_file(&self, file: &RemotesFile) -> Result<(), RemoteError> {
        let text = toml::to_string(file).map_err(|e| RemoteError::Damaged {
            path: self.remotes_path(),
            source: Box::new(e),
        })?;
        let header = "# cul8er remotes: written by `cul8er remote add` and `remote remove`.\n";
        self.write_atomic(
            &self.remotes_path(),
            format!("{header}{text}").as_bytes(),
            0o600,
        )
    }

    fn ensure_dir(&self, dir: &Path) -> Result<(), RemoteError> {
        fs_err::create_dir_all(dir).map_err(RemoteError::Io)?;
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(RemoteError::Io)
    }

    /// Writes `path` through a temporary file, fsynced and renamed over it.
    fn write_atomic(&self, path: &Path, contents: &[u8], mode: u32) -> Result<(), RemoteError> {
        use fs_err::os::unix::fs::OpenOptionsExt as _;
        let dir = path.parent().unwrap_or(&self.dir);
        self.ensure_dir(&self.dir)?;
        self.ensure_dir(dir)?;
        let file_name = path
            .file_name()
            .map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
        let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
        let result = (|| {
            let mut file = fs_err::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)?;
            file.write_all(contents)?;
            file.sync_all()?;
            fs_err::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = fs_err::remove_file(&tmp);
        }
        result.map_err(RemoteError::Io)
    }

    /// Every stored remote, by name.
    ///
    /// # Errors
    ///
    /// When the store cannot be read.
    pub fn list(&self) -> Result<Vec<Remote>, RemoteError> {
        Ok(self
            .read_file()?
            .remotes
            .into_iter()
            .map(|(name, stored)| Remote {
                name,
                address: stored.address,
                fingerprint: stored.fingerprint,
            })
            .collect())
    }

    /// One stored remote.
    ///
    /// # Errors
    ///
    /// [`RemoteError::NotFound`] when there is none of that name.
    pub fn get(&self, name: &str) -> Result<Remote, RemoteError> {
        self.list()?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| RemoteError::NotFound {
                name: name.to_owned(),
                store: self.dir.clone(),
            })
    }

    /// cul8er's client identity: read from the store, or generated (ECDSA P-384) and
    /// stored on first use, the key with mode 0600.
    ///
    /// # Errors
    ///
    /// When the files cannot be read or written, or hold no usable certificate.
    pub fn client_identity(&self) -> Result<ClientIdentity, RemoteError> {
        let cert_path = self.dir.join("client.crt");
        let key_path = self.dir.join("client.key");
        let damaged = |path: &Path, e: incus_api::Error| RemoteError::Damaged {
            path: path.to_owned(),
            source: Box::new(e),
        };
        if cert_path.exists() && key_path.exists() {
            let cert = fs_err::read_to_string(&cert_path).map_err(RemoteError::Io)?;
            let key = fs_err::read_to_string(&key_path).map_err(RemoteError::Io)?;
            return ClientIdentity::from_pem(&cert, &key).map_err(|e| damaged(&key_path, e));
        }
        let generated =
            trust::generate_client_certificate("cul8er").map_err(|e| RemoteError::Damaged {
                path: cert_path.clone(),
                source: Box::new(e),
            })?;
        // The key first: a certificate without its key would be unusable.
        self.write_atomic(&key_path, generated.key_pem.as_bytes(), 0o600)?;
        self.write_atomic(&cert_path, generated.cert_pem.as_bytes(), 0o644)?;
        tracing::info!(path = %cert_path.display(), "generated the client certificate");
        generated.identity().map_err(|e| damaged(&cert_path, e))
    }

    /// Adds a remote: fetches the server's certificate from `address`, checks it
    /// against `trust`, pins it, makes sure the server trusts cul8er's client
    /// certificate (with the token when one is given), and stores the remote.
    ///
    /// # Errors
    ///
    /// [`RemoteError::FingerprintMismatch`] when the server is not the one vouched for,
    /// [`RemoteError::Unconfirmed`] without a token or fingerprint,
    /// [`RemoteError::NotTrusted`] when the server does not trust the client, and the
    /// errors of talking to the server and of the store.
    pub async fn add(
        &self,
        name: &str,
        address: &str,
        trust: RemoteTrust,
    ) -> Result<Remote, RemoteError> {
        check_name(name)?;
        let (host, port) = parse_address(address)?;
        let address = format_address(&host, port);
        if self.read_file()?.remotes.contains_key(name) {
            return Err(RemoteError::Exists {
                name: name.to_owned(),
            });
        }
        let incus = |step: &'static str| {
            let address = address.clone();
            move |e: incus_api::Error| RemoteError::Incus {
                address,
                step,
                source: Box::new(e),
            }
        };
        let presented = trust::fetch_server_certificate(&host, port, CONNECT_TIMEOUT)
            .await
            .map_err(incus("fetching the server certificate"))?;
        let fingerprint = presented.fingerprint();
        tracing::info!(%address, %fingerprint, "server certificate");
        let identity = self.client_identity()?;
        let client = match trust {
            RemoteTrust::Unconfirmed => {
                return Err(RemoteError::Unconfirmed {
                    address,
                    presented: fingerprint,
                });
            }
            RemoteTrust::Fingerprint(expected) => {
                let expected = normalize_fingerprint(&expected);
                if expected != fingerprint {
                    return Err(RemoteError::FingerprintMismatch {
                        address,
                        presented: fingerprint,
                        expected,
                        expected_from: "confirmed fingerprint",
                    });
                }
                let client_fingerprint = identity.certificate().fingerprint();
                let client = pinned_client(&host, port, presented.clone(), identity)
                    .map_err(incus("setting up the client"))?;
                let info = client
                    .server()
                    .get()
                    .await
                    .map_err(incus("asking the server"))?;
                if !info.is_trusted() {
                    return Err(RemoteError::NotTrusted {
                        address,
                        client_fingerprint,
                    });
                }
                client
            }
            RemoteTrust::Token(token) => {
                let mut token =
                    TrustToken::decode(&token).map_err(|e| RemoteError::BadToken(Box::new(e)))?;
                let expected = normalize_fingerprint(&token.fingerprint);
                if expected != fingerprint {
                    return Err(RemoteError::FingerprintMismatch {
                        address,
                        presented: fingerprint,
                        expected,
                        expected_from: "trust token",
                    });
                }
                // Trust is asked for at the address the operator gave, which the token's
                // own address list need not contain (NAT, another interface).
                token.addresses = vec![format!("{}:{port}", bracket_host(&host))];
                trust::add_remote_with_token(&token, identity, CONNECT_TIMEOUT)
                    .await
                    .map_err(incus("presenting the trust token"))?
            }
        };
        drop(client);

        self.write_atomic(
            &self.server_cert_path(name),
            presented.to_pem().as_bytes(),
            0o644,
        )?;
        let mut file = self.read_file()?;
        file.remotes.insert(
            name.to_owned(),
            StoredRemote {
                address: address.clone(),
                fingerprint: fingerprint.clone(),
            },
        );
        self.write_file(&file)?;
        Ok(Remote {
            name: name.to_owned(),
            address,
            fingerprint,
        })
    }

    /// Removes a remote and its pinned certificate. The server keeps trusting the
    /// client certificate until someone removes it there.
    ///
    /// # Errors
    ///
    /// [`RemoteError::NotFound`] when there is none of that name.
    pub fn remove(&self, name: &str) -> Result<Remote, RemoteError> {
        let mut file = self.read_file()?;
        let stored = file
            .remotes
            .remove(name)
            .ok_or_else(|| RemoteError::NotFound {
                name: name.to_owned(),
                store: self.dir.clone(),
            })?;
        self.write_file(&file)?;
        match fs_err::remove_file(self.server_cert_path(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(RemoteError::Io(e)),
        }
        Ok(Remote {
            name: name.to_owned(),
            address: stored.address,
            fingerprint: stored.fingerprint,
        })
    }

    /// Removes a remote like [`RemoteStore::remove`], first asking its server to stop
    /// trusting cul8er's client certificate, within [`CONNECT_TIMEOUT`] plus as long
    /// again for the request. The trust is kept when another stored remote reaches the
    /// same server (same pinned certificate or address), since the certificate is
    /// shared; a server that cannot be reached still trusts it, and the answer says so.
    ///
    /// # Errors
    ///
    /// [`RemoteError::NotFound`] when there is none of that name, and the store's
    /// errors. Failing to revoke is not an error: it is in the [`TrustRemoval`].
    pub async fn remove_revoking(&self, name: &str) -> Result<(Remote, TrustRemoval), RemoteError> {
        let remote = self.get(name)?;
        let shared = self.list()?.into_iter().find(|r| {
            r.name != remote.name
                && (r.fingerprint == remote.fingerprint || r.address == remote.address)
        });
        let trust = match shared {
            Some(other) => TrustRemoval::SharedWith { remote: other.name },
            None => self.revoke(&remote).await,
        };
        Ok((self.remove(name)?, trust))
    }

    async fn revoke(&self, remote: &Remote) -> TrustRemoval {
        let unreachable = |error: &dyn std::error::Error| TrustRemoval::Unreachable {
            error: crate::execute::error_chain(error),
        };
        let client = match self.client(&remote.name) {
            Ok(client) => client,
            Err(e) => return unreachable(&e),
        };
        let fingerprint = match self.client_identity() {
            Ok(identity) => identity.certificate().fingerprint(),
            Err(e) => return unreachable(&e),
        };
        let asked = tokio::time::timeout(
            CONNECT_TIMEOUT * 2,
            client.certificates().delete(&fingerprint),
        )
        .await;
        match asked {
            Ok(Ok(())) => TrustRemoval::Revoked,
            Ok(Err(e)) if e.is_not_found() => TrustRemoval::NotTrusted,
            // Once untrusted, the server answers like that to everything we send.
            Ok(Err(e)) if e.is_forbidden() => TrustRemoval::NotTrusted,
            Ok(Err(e)) => unreachable(&e),
            Err(_) => TrustRemoval::Unreachable {
                error: format!("no answer within {} s", (CONNECT_TIMEOUT * 2).as_secs()),
            },
        }
    }

    /// A client for the remote: TLS to its address, its certificate pinned, cul8er's
    /// client certificate presented.
    ///
    /// # Errors
    ///
    /// [`RemoteError::NotFound`], or when the stored files are damaged.
    pub fn client(&self, name: &str) -> Result<Client, RemoteError> {
        let remote = self.get(name)?;
        let (host, port) = parse_address(&remote.address)?;
        let cert_path = self.server_cert_path(name);
        let pem = fs_err::read_to_string(&cert_path).map_err(RemoteError::Io)?;
        let damaged = |e: incus_api::Error| RemoteError::Damaged {
            path: cert_path.clone(),
            source: Box::new(e),
        };
        let cert = Certificate::from_pem(&pem).map_err(damaged)?;
        if cert.fingerprint() != remote.fingerprint {
            return Err(RemoteError::Damaged {
                path: cert_path.clone(),
                source: format!(
                    "the stored certificate has fingerprint {}, but remotes.toml pins {}",
                    cert.fingerprint(),
                    remote.fingerprint
                )
                .into(),
            });
        }
        let identity = self.client_identity()?;
        pinned_client(&host, port, cert, identity).map_err(damaged)
    }
}

fn pinned_client(
    host: &str,
    port: u16,
    cert: Certificate,
    identity: ClientIdentity,
) -> incus_api::Result<Client> {
    ClientBuilder::https(host, port)
        .pinned_certificate(cert)
        .identity(identity)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
}

fn check_name(name: &str) -> Result<(), RemoteError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(RemoteError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// `https://host[:port]` (or `host[:port]`) → host and port, 8443 by default.
fn parse_address(address: &str) -> Result<(String, u16), RemoteError> {
    let bad = |reason| RemoteError::InvalidAddress {
        address: address.to_owned(),
        reason,
    };
    let rest = match address.split_once("://") {
        Some(("https", rest)) => rest,
        Some(_) => return Err(bad("only https:// is supported")),
        None => address,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(bad("give only the host and port, without a path"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 address lacks its `]`"))?;
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(bad("unexpected text after the IPv6 address")),
        }
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    let port = match port {
        None => 8443,
        Some(p) => p
            .parse()
            .map_err(|_| bad("the port is not a number from 1 to 65535"))?,
    };
    if port == 0 {
        return Err(bad("the port is not a number from 1 to 65535"));
    }
    Ok((host.to_owned(), port))
}

fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

fn format_address(host: &str, port: u16) -> String {
    format!("https://{}:{port}", bracket_host(host))
}

/// Lowercase hex without separators or a `SHA256:` prefix.
fn normalize_fingerprint(fingerprint: &str) -> String {
    let trimmed = fingerprint.trim();
    let trimmed = trimmed
        .strip_prefix("SHA256:")
        .or_else(|| trimmed.strip_prefix("sha256:"))
        .unwrap_or(trimmed);
    trimmed
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_default_port() {
        assert_eq!(
            parse_address("https://10.0.0.1:8443").unwrap(),
            ("10.0.0.1".into(), 8443)
        );
        assert_eq!(
            parse_address("https://incus.example").unwrap(),
            ("incus.example".into(), 8443)
        );
        assert_eq!(
            parse_address("127.0.0.1:9443/").unwrap(),
            ("127.0.0.1".into(), 9443)
        );
        assert_eq!(
            parse_address("https://[::1]:8443").unwrap(),
            ("::1".into(), 8443)
        );
        assert_eq!(format_address("::1", 8443), "https://[::1]:8443");
        for bad in [
            "http://h:8443",
            "https://:8443",
            "https://h:x",
            "https://h:8443/path",
            "https://h:0",
        ] {
            let err = parse_address(bad).unwrap_err();
            assert!(
                err.to_string().contains("https://HOST:8443"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn fingerprints_normalize() {
        assert_eq!(normalize_fingerprint(" SHA256:AB:cd:EF "), "abcdef");
        assert_eq!(normalize_fingerprint("abcdef"), "abcdef");
    }

    #[test]
    fn names_are_checked() {
        check_name("edge-1_a").unwrap();
        assert!(check_name("").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn the_default_dir_follows_the_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(*v))
            }
        };
        assert_eq!(
            RemoteStore::default_dir(env(&[("CUL8ER_CONFIG_DIR", "/c"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/c")
        );
        assert_eq!(
            RemoteStore::default_dir(env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/x/cul8er")
        );
        assert_eq!(
            RemoteStore::default_dir(env(&[("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.config/cul8er")
        );
        assert!(RemoteStore::default_dir(env(&[])).is_err());
    }

    #[test]
    fn the_client_identity_is_generated_once_with_a_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = RemoteStore::new(dir.path().join("cfg"));
        let first = store.client_identity().unwrap();
        let second = store.client_identity().unwrap();
        assert_eq!(
            first.certificate().fingerprint(),
            second.certificate().fingerprint()
        );
        let key_mode = fs_err::metadata(dir.path().join("cfg/client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(key_mode & 0o777, 0o600);
        let dir_mode = fs_err::metadata(dir.path().join("cfg"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
    }

    #[test]
    fn unknown_remotes_say_how_to_add_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = RemoteStore::new(dir.path());
        assert!(store.list().unwrap().is_empty());
        let err = store.get("edge").unwrap_err();
        assert!(err.to_string().contains("cul8er remote add edge"), "{err}");
        let err = store.remove("edge").unwrap_err();
        assert!(matches!(err, RemoteError::NotFound { .. }), "{err}");
    }

    #[test]
    fn a_damaged_remotes_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("remotes.toml"), "remotes = 3").unwrap();
        let err = RemoteStore::new(dir.path()).list().unwrap_err();
        assert!(err.to_string().contains("remotes.toml"), "{err}");
    }
}
