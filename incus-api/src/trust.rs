//! Remote trust: first contact, trust tokens, and the client certificate.
//!
//! The flow of `incus remote add NAME TOKEN`: decode the token (base64 JSON with the
//! server's fingerprint, its addresses and a one-time secret), fetch the certificate
//! each address presents and require its SHA-256 to equal the token's fingerprint,
//! pin it, then present our client certificate with the token so the server trusts
//! it. Client certificates are ECDSA P-384, valid ten years, as Incus makes them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientBuilder};
use crate::error::{Error, Result};
use crate::request::ApiRequest;
use crate::transport::Connector;
use crate::transport::tls::{self, Certificate, ClientIdentity, ServerTrust};

/// Connects once to `host:port` and returns the certificate the server presented,
/// without trusting it: show its [`Certificate::fingerprint`] to the user or compare
/// it with a trust token before pinning it.
///
/// # Errors
/// When the server cannot be reached or the handshake fails.
pub async fn fetch_server_certificate(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Certificate> {
    let slot = Arc::new(Mutex::new(None));
    let config = tls::client_config(ServerTrust::Record(Arc::clone(&slot)), None)?;
    let connector = Connector::tls(host, port, config, timeout)?;
    let _stream = connector.dial().await?;
    let cert = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    cert.ok_or_else(|| Error::Certificate {
        what: format!(
            "the server at {} presented no certificate",
            connector.endpoint()
        ),
        source: None,
    })
}

/// A decoded trust token (`incus config trust add`).
#[derive(Clone, Serialize, Deserialize)]
pub struct TrustToken {
    /// The name the certificate will get.
    #[serde(default)]
    pub client_name: String,
    /// SHA-256 fingerprint of the server certificate.
    pub fingerprint: String,
    /// `host:port` addresses of the server.
    pub addresses: Vec<String>,
    /// One-time secret.
    pub secret: String,
    /// Expiry, when the server sets one.
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(skip)]
    raw: String,
}

impl std::fmt::Debug for TrustToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustToken")
            .field("client_name", &self.client_name)
            .field("fingerprint", &self.fingerprint)
            .field("addresses", &self.addresses)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl TrustToken {
    /// Decodes a token string.
    ///
    /// # Errors
    /// When it is not base64 JSON with a fingerprint, addresses and a secret.
    pub fn decode(token: &str) -> Result<Self> {
        let token = token.trim();
        let bad = |detail: &str| Error::Certificate {
            what: format!(
                "the trust token is not valid: {detail}; copy the whole token printed by `incus config trust add`"
            ),
            source: None,
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(token)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(token))
            .map_err(|_| bad("it is not base64"))?;
        let mut parsed: Self = serde_json::from_slice(&bytes)
            .map_err(|_| bad("it does not hold the expected JSON"))?;
        if parsed.fingerprint.is_empty() || parsed.addresses.is_empty() || parsed.secret.is_empty()
        {
            return Err(bad("its fingerprint, addresses or secret is missing"));
        }
        parsed.raw = token.to_owned();
        Ok(parsed)
    }

    /// The token string as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

/// Splits `host:port` (`[v6]:port` too).
fn split_address(addr: &str) -> Result<(String, u16)> {
    let bad = || Error::invalid("server address", format!("{addr:?} is not host:port"));
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok((
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
    ))
}

/// Tries the token's addresses in order, fetching each one's certificate and checking
/// it against the token's fingerprint. Returns the first address that matches, with
/// its certificate.
///
/// # Errors
/// [`Error::CertificateMismatch`] when an address presents another certificate (and
/// none matches); the last connection error when none can be reached.
pub async fn verify_token_server(
    token: &TrustToken,
    timeout: Duration,
) -> Result<(String, u16, Certificate)> {
    let mut last = None;
    for addr in &token.addresses {
        let (host, port) = split_address(addr)?;
        match fetch_server_certificate(&host, port, timeout).await {
            Ok(cert) if cert.fingerprint().eq_ignore_ascii_case(&token.fingerprint) => {
                return Ok((host, port, cert));
            }
            Ok(cert) => {
                last = Some(Error::CertificateMismatch {
                    endpoint: addr.clone(),
                    pinned: token.fingerprint.clone(),
                    presented: cert.fingerprint(),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| Error::invalid("trust token", "it lists no address")))
}

/// The whole `remote add` flow: verify the server against the token, pin its
/// certificate, present `identity` with the token, and check that the server now
/// trusts us. Returns the pinned, trusted client.
///
/// # Errors
/// On a fingerprint mismatch, an unreachable server, a used or expired token, or when
/// the server still does not trust the client afterwards.
pub async fn add_remote_with_token(
    token: &TrustToken,
    identity: ClientIdentity,
    timeout: Duration,
) -> Result<Client> {
    let (host, port, cert) = verify_token_server(token, timeout).await?;
    let client = ClientBuilder::https(host, port)
        .pinned_certificate(cert)
        .identity(identity)
        .connect_timeout(timeout)
        .build()?;
    let info = client.server().get().await?;
    if !info.is_trusted() {
        client
            .call_unit(
                ApiRequest::new(Method::POST, "/1.0/certificates").json(
                    &serde_json::json!({ "trust_token": token.as_str(), "type": "client" }),
                )?,
            )
            .await?;
        let info = client.server().get().await?;
        if !info.is_trusted() {
            return Err(Error::Certificate {
                what: format!(
                    "the server at {} accepted the trust token but still does not trust this client",
                    client.endpoint()
                ),
                source: None,
            });
        }
    }
    Ok(client)
}

/// A freshly generated client certificate and key, in PEM.
#[derive(Clone)]
pub struct GeneratedIdentity {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The PKCS#8 private key (PEM). Store it with mode 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for GeneratedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedIdentity").finish_non_exhaustive()
    }
}

impl GeneratedIdentity {
    /// The identity to give a client.
    ///
    /// # Errors
    /// Never for a generated identity; kept fallible like [`ClientIdentity::from_pem`].
    pub fn identity(&self) -> Result<ClientIdentity> {
        ClientIdentity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

/// Generates a client certificate as Incus does: ECDSA P-384, `O=Linux Containers`,
/// `CN=common_name`, client-auth usage, valid from today for ten years.
///
/// # Errors
/// When key generation fails.
pub fn generate_client_certificate(common_name: &str) -> Result<GeneratedIdentity> {
    let fail = |e: rcgen::Error| Error::Certificate {
        what: "could not generate the client certificate".into(),
        source: Some(Box::new(e)),
    };
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Linux Containers");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    // From yesterday (a client clock a little behind is fine) for ten years.
    let today = time::OffsetDateTime::now_utc().date();
    let from = today.previous_day().unwrap_or(today);
    params.not_before = from.midnight().assume_utc();
    params.not_after = from
        .replace_year(from.year() + 10)
        .unwrap_or_else(|_| from.saturating_add(time::Duration::days(3652)))
        .midnight()
        .assume_utc();
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.is_ca = rcgen::IsCa::NoCa;
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok(GeneratedIdentity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip() {
        let json = r#"{"client_name":"c","fingerprint":"ab","addresses":["127.0.0.1:8443"],"secret":"s","expires_at":"0001-01-01T00:00:00Z"}"#;
        let tok = base64::engine::general_purpose::STANDARD.encode(json);
        let t = TrustToken::decode(&tok).unwrap();
        assert_eq!(t.addresses, vec!["127.0.0.1:8443"]);
        assert_eq!(t.as_str(), tok);
        assert!(!format!("{t:?}").contains("\"s\""));
    }

    #[test]
    fn bad_tokens_say_what_is_wrong() {
        let e = TrustToken::decode("%%%").unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        let tok = base64::engine::general_purpose::STANDARD
            .encode(r#"{"fingerprint":"","addresses":[],"secret":""}"#);
        let e = TrustToken::decode(&tok).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }

    #[test]
    fn addresses_split() {
        assert_eq!(
            split_address("127.0.0.1:8443").unwrap(),
            ("127.0.0.1".into(), 8443)
        );
        assert_eq!(split_address("[::1]:8443").unwrap(), ("::1".into(), 8443));
        assert!(split_address("nohost").is_err());
    }

    #[test]
    fn generated_certificate_is_a_usable_p384_identity() {
        let g = generate_client_certificate("test@host").unwrap();
        assert!(g.cert_pem.contains("BEGIN CERTIFICATE"));
        let id = g.identity().unwrap();
        assert_eq!(id.certificate().fingerprint().len(), 64);
        tls::client_config(ServerTrust::Record(Arc::new(Mutex::new(None))), Some(&id)).unwrap();
    }
}
