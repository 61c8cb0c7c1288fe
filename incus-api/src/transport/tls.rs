//! TLS for the HTTPS transport: the pinned server certificate, the client identity,
//! and the first-contact verifier that records the server certificate.
//!
//! Incus servers use self-signed certificates whose names rarely match the address a
//! client dials, so, like `incus remote add`, trust is a pin: the server must present
//! byte-for-byte the certificate recorded at first contact. The TLS 1.3 handshake
//! signature is still verified, so a server that merely replays the certificate without
//! its key is refused. Only ALPN `http/1.1` is offered, because Incus advertises `h2`
//! and websockets need HTTP/1.1.

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// The lowercase hex SHA-256 of a DER certificate: the fingerprint Incus shows.
#[must_use]
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A certificate in DER form, as pinned or recorded.
#[derive(Clone, PartialEq, Eq)]
pub struct Certificate {
    der: Vec<u8>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("fingerprint", &self.fingerprint())
            .finish()
    }
}

impl Certificate {
    /// Wraps DER bytes.
    #[must_use]
    pub fn from_der(der: Vec<u8>) -> Self {
        Self { der }
    }

    /// Reads the first certificate of a PEM text.
    ///
    /// # Errors
    /// When the text holds no PEM certificate.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let der =
            CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Certificate {
                what: "could not read a PEM certificate (expected a \"BEGIN CERTIFICATE\" block)"
                    .into(),
                source: Some(Box::new(e)),
            })?;
        Ok(Self::from_der(der.to_vec()))
    }

    /// The DER bytes.
    #[must_use]
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate as PEM text.
    #[must_use]
    pub fn to_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem
    }

    /// The lowercase hex SHA-256 fingerprint, as Incus shows it.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.der)
    }
}

/// The client's certificate and private key, presented to the server for trust.
#[derive(Clone)]
pub struct ClientIdentity {
    cert: CertificateDer<'static>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("fingerprint", &fingerprint(&self.cert))
            .finish_non_exhaustive()
    }
}

impl ClientIdentity {
    /// Reads a PEM certificate and a PEM private key (SEC1 `EC PRIVATE KEY` as Incus
    /// writes it, PKCS#8 as rcgen writes it, or RSA).
    ///
    /// # Errors
    /// When either text is not the expected PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert = Certificate::from_pem(cert_pem)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| Error::Certificate {
                what: "could not read the client private key (expected a PEM \"PRIVATE KEY\" \
                       or \"EC PRIVATE KEY\" block)"
                    .into(),
                source: Some(Box::new(e)),
            })?;
        Ok(Self {
            cert: CertificateDer::from(cert.der).into_owned(),
            key: Arc::new(key),
        })
    }

    /// The client certificate.
    #[must_use]
    pub fn certificate(&self) -> Certificate {
        Certificate::from_der(self.cert.to_vec())
    }
}

/// The pinned certificate did not match: carried through rustls to the connector,
/// which turns it into [`Error::CertificateMismatch`].
#[derive(Debug, thiserror::Error)]
#[error("server certificate {presented} is not the pinned certificate {pinned}")]
pub(crate) struct PinMismatch {
    pub(crate) pinned: String,
    pub(crate) presented: String,
}

/// How the server certificate is checked.
#[derive(Debug, Clone)]
pub(crate) enum ServerTrust {
    /// Must be byte-for-byte this certificate.
    Pinned(Certificate),
    /// Accept any, but record it (first contact only).
    Record(Arc<Mutex<Option<Certificate>>>),
}

#[derive(Debug)]
struct ServerVerifier {
    trust: ServerTrust,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            ServerTrust::Pinned(pinned) => {
                if pinned.der() == end_entity.as_ref() {
                    Ok(ServerCertVerified::assertion())
                } else {
                    Err(rustls::Error::InvalidCertificate(
                        rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                            PinMismatch {
                                pinned: pinned.fingerprint(),
                                presented: fingerprint(end_entity),
                            },
                        ))),
                    ))
                }
            }
            ServerTrust::Record(slot) => {
                let mut slot = slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                *slot = Some(Certificate::from_der(end_entity.to_vec()));
                Ok(ServerCertVerified::assertion())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Builds the rustls configuration: TLS 1.3 (what Incus requires), ALPN `http/1.1`,
/// the server check, and the client certificate when there is one.
pub(crate) fn client_config(
    trust: ServerTrust,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(ServerVerifier {
        trust,
        algorithms: provider.signature_verification_algorithms,
    });
    let builder =
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider) as Arc<CryptoProvider>)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| Error::Certificate {
                what: "the TLS library refused TLS 1.3 with the ring provider".into(),
                source: Some(Box::new(e)),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
            .map_err(|e| Error::Certificate {
                what: "the client certificate and key do not form a usable TLS identity".into(),
                source: Some(Box::new(e)),
            })?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Finds a [`PinMismatch`] in an error's source chain.
pub(crate) fn find_pin_mismatch(
    err: &(dyn std::error::Error + 'static),
) -> Option<(String, String)> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            e.downcast_ref::<rustls::Error>()
            && let Some(m) = other.0.downcast_ref::<PinMismatch>()
        {
            return Some((m.pinned.clone(), m.presented.clone()));
        }
        if let Some(m) = e.downcast_ref::<PinMismatch>() {
            return Some((m.pinned.clone(), m.presented.clone()));
        }
        // `io::Error::source` skips the wrapped error itself: step into it.
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            cur = Some(inner as &(dyn std::error::Error + 'static));
            continue;
        }
        cur = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_lowercase_hex_sha256() {
        assert_eq!(
            fingerprint(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn garbage_pem_is_an_error_not_a_panic() {
        let err = Certificate::from_pem("not a certificate").unwrap_err();
        assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");
    }
}
