//! From a topology host to an Incus client.
//!
//! `host NAME` alone is the local daemon's unix socket (found as the `incus` command
//! finds it: `INCUS_SOCKET`, `INCUS_DIR`, then the standard paths); `socket=PATH` is
//! another unix socket; `remote=NAME` is a remote from the [`RemoteStore`], over TLS
//! with its pinned certificate. The host's `project` applies to every request;
//! [`for_member`] targets one member of an Incus cluster.

use std::collections::BTreeMap;

use incus_api::Client;

use crate::remote::{RemoteError, RemoteStore};
use crate::topology::{Endpoint, Host};

/// A host whose Incus cannot be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The local socket or the given socket cannot be used.
    #[error("host {host}: cannot set up a client for {endpoint}")]
    Client {
        /// The topology host.
        host: String,
        /// The socket or address.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: Box<incus_api::Error>,
    },
    /// The host names a remote that is not stored or cannot be used.
    #[error("host {host}: remote {remote} cannot be used")]
    Remote {
        /// The topology host.
        host: String,
        /// The remote's name.
        remote: String,
        /// What went wrong.
        #[source]
        source: Box<RemoteError>,
    },
}

/// A client for `host`, with the host's project applied.
///
/// Nothing is dialled yet: the first request connects.
///
/// # Errors
///
/// [`ConnectError::Client`] when no local socket exists, [`ConnectError::Remote`] when
/// the remote is unknown or its stored files are damaged.
pub fn connect(host: &Host, remotes: &RemoteStore) -> Result<Client, ConnectError> {
    connect_with_env(host, remotes, |name| std::env::var_os(name))
}

/// [`connect`] with the environment lookup for the local socket given explicitly.
///
/// # Errors
///
/// As [`connect`].
pub fn connect_with_env(
    host: &Host,
    remotes: &RemoteStore,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Client, ConnectError> {
    let client_error = |endpoint: String| {
        let host = host.name.clone();
        move |e: incus_api::Error| ConnectError::Client {
            host,
            endpoint,
            source: Box::new(e),
        }
    };
    let client = match &host.endpoint {
        Endpoint::Local => {
            let path = incus_api::transport::resolve_socket_path(env)
                .map_err(client_error("the local Incus socket".to_owned()))?;
            Client::unix(&path).map_err(client_error(path.display().to_string()))?
        }
        Endpoint::Socket { path } => Client::unix(path).map_err(client_error(path.clone()))?,
        Endpoint::Remote { remote } => {
            remotes
                .client(remote)
                .map_err(|source| ConnectError::Remote {
                    host: host.name.clone(),
                    remote: remote.clone(),
                    source: Box::new(source),
                })?
        }
    };
    Ok(match &host.project {
        Some(project) => client.project(project),
        None => client,
    })
}

/// `client` with every request placed on cluster member `member` (`?target=`).
#[must_use]
pub fn for_member(client: &Client, member: &str) -> Client {
    client.target(member)
}

/// Clients for every host of a topology, by host name, made once and shared (a
/// [`Client`] is cheap to clone and keeps its connections).
#[derive(Debug, Clone, Default)]
pub struct HostClients {
    clients: BTreeMap<String, Client>,
}

impl HostClients {
    /// Connects to every host in `hosts`.
    ///
    /// # Errors
    ///
    /// The first host that cannot be connected, as [`connect`].
    pub fn connect<'a>(
        hosts: impl IntoIterator<Item = &'a Host>,
        remotes: &RemoteStore,
    ) -> Result<Self, ConnectError> {
        let mut clients = BTreeMap::new();
        for host in hosts {
            clients.insert(host.name.clone(), connect(host, remotes)?);
        }
        Ok(Self { clients })
    }

    /// The client of the host named `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Client> {
        self.clients.get(name)
    }

    /// Every host's name and client.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Client)> {
        self.clients
            .iter()
            .map(|(name, client)| (name.as_str(), client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(endpoint: Endpoint, project: Option<&str>) -> Host {
        Host {
            name: "h".into(),
            endpoint,
            project: project.map(str::to_owned),
            platform: None,
            cluster: None,
        }
    }

    #[test]
    fn a_socket_host_gets_its_project() {
        let dir = tempfile::tempdir().unwrap();
        let store = RemoteStore::new(dir.path());
        let client = connect(
            &host(
                Endpoint::Socket {
                    path: "/run/other/unix.socket".into(),
                },
                Some("blue"),
            ),
            &store,
        )
        .unwrap();
        assert_eq!(client.project_name(), Some("blue"));
        assert!(
            client.endpoint().contains("/run/other/unix.socket"),
            "{}",
            client.endpoint()
        );
        assert_eq!(for_member(&client, "m2").target_name(), Some("m2"));
    }

    #[test]
    fn the_local_host_follows_incus_socket() {
        let dir = tempfile::tempdir().unwrap();
        let store = RemoteStore::new(dir.path());
        let client = connect_with_env(&host(Endpoint::Local, None), &store, |name| {
            (name == "INCUS_SOCKET").then(|| "/tmp/elsewhere.socket".into())
        })
        .unwrap();
        assert!(
            client.endpoint().contains("/tmp/elsewhere.socket"),
            "{}",
            client.endpoint()
        );
        assert_eq!(client.project_name(), None);
    }

    #[test]
    fn an_unknown_remote_names_the_host_and_the_remote() {
        let dir = tempfile::tempdir().unwrap();
        let store = RemoteStore::new(dir.path());
        let err = connect(
            &host(
                Endpoint::Remote {
                    remote: "edge1".into(),
                },
                None,
            ),
            &store,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "host h: remote edge1 cannot be used");
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("cul8er remote add edge1"), "{cause}");
    }
}
