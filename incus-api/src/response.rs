//! The one choke point that turns an HTTP response into a value or an error.
//!
//! Every Incus JSON response has the same envelope (`sync`, `async` or `error`). The
//! body decides, not the HTTP status alone: `/1.0/operations/{id}/wait` on 6.0.4 sends
//! an error body with HTTP 200. A body that is not JSON, is cut short, or has an
//! unknown `type` is a [`Error::Decode`], never a panic.

use http::{HeaderMap, Method, StatusCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::operations::Operation;

/// A decoded envelope.
#[derive(Debug)]
pub(crate) enum Envelope {
    /// `type: sync`: the metadata, and the ETag and Location headers when present.
    Sync {
        metadata: Value,
        etag: Option<String>,
    },
    /// `type: async`: the operation that was started.
    Async(Box<Operation>),
    /// `type: error`, or an error status with a non-JSON body.
    Error {
        http_status: u16,
        error_code: u16,
        message: String,
    },
}

#[derive(Deserialize)]
struct RawEnvelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    error_code: i64,
    #[serde(default)]
    error: String,
    #[serde(default)]
    metadata: Value,
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(200)]);
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    clean.trim().to_owned()
}

/// Decodes a whole response body.
pub(crate) fn decode_envelope(
    method: &Method,
    path: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Envelope> {
    let raw: RawEnvelope = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            if status.is_client_error() || status.is_server_error() {
                return Ok(Envelope::Error {
                    http_status: status.as_u16(),
                    error_code: status.as_u16(),
                    message: format!(
                        "{} (the body was not an Incus JSON response: {:?})",
                        status.canonical_reason().unwrap_or("error"),
                        snippet(body)
                    ),
                });
            }
            return Err(Error::Decode {
                method: method.clone(),
                path: path.to_owned(),
                detail: format!(
                    "HTTP {status} with a body that is not an Incus JSON envelope ({} bytes, starting {:?})",
                    body.len(),
                    snippet(body)
                ),
                source: Some(e),
            });
        }
    };
    match raw.kind.as_str() {
        "error" => {
            let code = u16::try_from(raw.error_code).unwrap_or(0);
            Ok(Envelope::Error {
                http_status: status.as_u16(),
                error_code: if code == 0 { status.as_u16() } else { code },
                message: raw.error,
            })
        }
        "sync" if status.is_success() => Ok(Envelope::Sync {
            metadata: raw.metadata,
            etag: etag(headers),
        }),
        "async" if status.is_success() => {
            let op =
                serde_json::from_value::<Operation>(raw.metadata).map_err(|e| Error::Decode {
                    method: method.clone(),
                    path: path.to_owned(),
                    detail: "the async response does not carry a valid operation".into(),
                    source: Some(e),
                })?;
            Ok(Envelope::Async(Box::new(op)))
        }
        "sync" | "async" => Ok(Envelope::Error {
            http_status: status.as_u16(),
            error_code: status.as_u16(),
            message: format!("a {} response came with HTTP {status}", raw.kind),
        }),
        other => Err(Error::decode(
            method,
            path,
            format!("unknown response type {other:?} (expected sync, async or error)"),
        )),
    }
}

fn etag(headers: &HeaderMap) -> Option<String> {
    headers
        .get(http::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_matches('"').to_owned())
}

/// A sync envelope whose metadata decodes straight into `T`.
#[derive(Deserialize)]
struct TypedSync<T> {
    #[serde(rename = "type")]
    kind: String,
    metadata: T,
}

/// The one-pass decoding of a successful sync answer: its metadata as `T`, and the
/// ETag. `None` for anything else (an error or async envelope, metadata that does not
/// fit `T`, a body that is not JSON); [`decode_envelope`] then explains what it is.
/// (Decoding into a `Value` first and then into `T` costs twice the time: 0.19 ms
/// instead of 0.11 ms for the 13 KB answer of `GET /1.0`.)
pub(crate) fn decode_sync<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
) -> Option<(T, Option<String>)> {
    let typed: TypedSync<T> = serde_json::from_slice(body).ok()?;
    (typed.kind == "sync").then(|| (typed.metadata, etag(headers)))
}

impl Envelope {
    /// Turns an error envelope into [`Error::Api`], keeping others.
    pub(crate) fn into_result(self, method: &Method, path: &str) -> Result<Self> {
        match self {
            Self::Error {
                http_status,
                error_code,
                message,
            } => Err(Error::Api {
                method: method.clone(),
                path: path.to_owned(),
                status: if http_status == 200 {
                    error_code
                } else {
                    http_status
                },
                message,
            }),
            other => Ok(other),
        }
    }

    /// The metadata of a sync response, typed.
    pub(crate) fn into_sync<T: DeserializeOwned>(
        self,
        method: &Method,
        path: &str,
    ) -> Result<(T, Option<String>)> {
        match self.into_result(method, path)? {
            Self::Sync { metadata, etag } => {
                let v = serde_json::from_value(metadata).map_err(|e| Error::Decode {
                    method: method.clone(),
                    path: path.to_owned(),
                    detail: format!("the metadata is not a valid {}", short_type_name::<T>()),
                    source: Some(e),
                })?;
                Ok((v, etag))
            }
            Self::Async(op) => Err(Error::decode(
                method,
                path,
                format!(
                    "expected a sync response, got the operation {} ({})",
                    op.id, op.description
                ),
            )),
            Self::Error { .. } => unreachable_error(method, path),
        }
    }

    /// The operation of an async response.
    pub(crate) fn into_operation(self, method: &Method, path: &str) -> Result<Operation> {
        match self.into_result(method, path)? {
            Self::Async(op) => Ok(*op),
            Self::Sync { .. } => Err(Error::decode(
                method,
                path,
                "expected an async response (an operation), got a sync one",
            )),
            Self::Error { .. } => unreachable_error(method, path),
        }
    }
}

fn unreachable_error<T>(method: &Method, path: &str) -> Result<T> {
    Err(Error::decode(
        method,
        path,
        "internal: error envelope after conversion",
    ))
}

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn dec(status: u16, body: &str) -> Result<Envelope> {
        decode_envelope(
            &Method::GET,
            "/1.0/x",
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn one_pass_decoding_takes_only_sync_answers_that_fit() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::ETAG, "\"abc\"".parse().unwrap());
        let ok = br#"{"type":"sync","status":"Success","metadata":{"name":"web"}}"#;
        let (v, etag) = decode_sync::<HashMap<String, String>>(&headers, ok).unwrap();
        assert_eq!(v["name"], "web");
        assert_eq!(etag.as_deref(), Some("abc"));
        // Everything else goes the long way, which names the problem.
        let error = br#"{"type":"error","error_code":404,"error":"not found","metadata":null}"#;
        assert!(decode_sync::<Option<String>>(&headers, error).is_none());
        let not_fitting = br#"{"type":"sync","metadata":["a"]}"#;
        assert!(decode_sync::<HashMap<String, String>>(&headers, not_fitting).is_none());
        assert!(decode_sync::<Value>(&headers, br#"{"type":"sync","metadata":{"na"#).is_none());
        let op = br#"{"type":"async","metadata":{"id":"x","class":"task"}}"#;
        assert!(decode_sync::<Value>(&headers, op).is_none());
    }

    #[test]
    fn truncated_json_is_a_decode_error() {
        let err = dec(200, r#"{"type":"sync","metadata":{"na"#).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        assert!(err.to_string().contains("/1.0/x"), "{err}");
    }

    #[test]
    fn non_json_error_body_keeps_the_status() {
        let env = dec(400, "Bad Request\n").unwrap();
        let err = env.into_result(&Method::GET, "/1.0/events").unwrap_err();
        assert_eq!(err.status(), Some(400));
        assert!(err.to_string().contains("Bad Request"), "{err}");
    }

    #[test]
    fn unknown_type_is_rejected() {
        let err = dec(200, r#"{"type":"surprise"}"#).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn json_that_is_not_an_object_is_rejected() {
        assert!(dec(200, "[1,2,3]").is_err());
        assert!(dec(200, "null").is_err());
        assert!(dec(200, "").is_err());
    }

    #[test]
    fn error_in_http_200_uses_the_error_code() {
        let env = dec(
            200,
            r#"{"type":"error","error_code":500,"error":"context deadline exceeded"}"#,
        )
        .unwrap();
        let err = env.into_result(&Method::GET, "/w").unwrap_err();
        assert_eq!(err.status(), Some(500));
    }
}
