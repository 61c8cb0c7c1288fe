//! TLS termination: certificates from PEM files, chosen by SNI, swapped in place.
//!
//! Each TLS listener has one [`SniResolver`]; reloading reads every file again and
//! swaps the whole set atomically, so a handshake sees either the old set or the new
//! one, and a file that fails to load leaves the old set serving.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// A certificate or key that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read (the source names it).
    #[error("cannot read a TLS file")]
    Read(#[source] std::io::Error),
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: String,
    },
    /// rustls refused the key or the configuration.
    #[error("{path}: the key is not usable")]
    Key {
        /// The key file.
        path: PathBuf,
        /// The reason.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the protocol configuration.
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
}

#[derive(Debug)]
struct CertSet {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: Vec<(String, Arc<CertifiedKey>)>,
    default: Arc<CertifiedKey>,
}

/// Picks a certificate by SNI from a set that can be replaced while serving.
#[derive(Debug)]
pub struct SniResolver {
    certs: ArcSwap<CertSet>,
}

impl SniResolver {
    /// Loads every certificate of `config`.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file that failed.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        Ok(Self {
            certs: ArcSwap::from_pointee(load_set(config)?),
        })
    }

    /// Reads the files again and swaps them in; on error the old set keeps serving.
    ///
    /// # Errors
    /// A [`TlsError`] naming the file that failed.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        self.certs.store(Arc::new(load_set(config)?));
        Ok(())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        let Some(name) = hello.server_name() else {
            return Some(certs.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = certs.exact.get(&name) {
            return Some(key.clone());
        }
        let parent = name.split_once('.').map(|(_, rest)| rest);
        for (suffix, key) in &certs.wildcard {
            if parent == Some(suffix.as_str()) {
                return Some(key.clone());
            }
        }
        Some(certs.default.clone())
    }
}

fn load_set(config: &TlsConfig) -> Result<CertSet, TlsError> {
    let mut exact = HashMap::new();
    let mut wildcard = Vec::new();
    let mut default = None;
    for cert in &config.certificates {
        let key = Arc::new(load_certified_key(&cert.cert, &cert.key)?);
        default.get_or_insert_with(|| key.clone());
        for name in &cert.server_names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix("*.") {
                Some(suffix) => wildcard.push((suffix.to_owned(), key.clone())),
                None => {
                    exact.insert(name, key.clone());
                }
            }
        }
    }
    let default = default.ok_or_else(|| TlsError::Pem {
        path: PathBuf::from("tls.certificates"),
        what: "no certificate is configured".to_owned(),
    })?;
    Ok(CertSet {
        exact,
        wildcard,
        default,
    })
}

fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let pem = fs_err::read(cert_path).map_err(TlsError::Read)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: cert_path.to_owned(),
            what: format!("not a PEM certificate chain ({e})"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: cert_path.to_owned(),
            what: "holds no CERTIFICATE block".to_owned(),
        });
    }
    let pem = fs_err::read(key_path).map_err(TlsError::Read)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        path: key_path.to_owned(),
        what: format!("holds no PKCS#8, PKCS#1 or SEC1 private key ({e})"),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|source| TlsError::Key {
            path: key_path.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|source| TlsError::Key {
        path: key_path.to_owned(),
        source,
    })?;
    Ok(certified)
}

/// A TLS acceptor offering h2 and http/1.1 by ALPN, with certificates from `resolver`.
///
/// # Errors
/// [`TlsError::Config`] if rustls refuses the protocol versions (it does not with ring).
pub(crate) fn acceptor(resolver: Arc<SniResolver>) -> Result<TlsAcceptor, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
