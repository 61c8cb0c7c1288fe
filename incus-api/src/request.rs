//! Requests as values, built apart from any I/O.
//!
//! An `ApiRequest` is a method, a path, a query and a body. The [`crate::Client`]
//! adds its project and target scope and sends it; tests can inspect a request
//! without a server.

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use serde::Serialize;

use crate::error::{BoxError, Error, Result};

/// The body type sent by the client.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Percent-encodes one path segment (instance names are safe, but image aliases may
/// contain `/` and file paths travel in the query).
#[must_use]
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What a request carries.
pub(crate) enum RequestBody {
    Empty,
    Json(Bytes),
    Raw(Body),
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("Empty"),
            Self::Json(b) => write!(f, "Json({})", String::from_utf8_lossy(b)),
            Self::Raw(_) => f.write_str("Raw(..)"),
        }
    }
}

/// One request to the Incus API, before the client's scope is applied.
#[derive(Debug)]
pub(crate) struct ApiRequest {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: Vec<(String, String)>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: RequestBody,
}

impl ApiRequest {
    pub(crate) fn new(method: Method, path: impl Into<String>) -> Self {
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: RequestBody::Empty,
        }
    }

    pub(crate) fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub(crate) fn query(mut self, key: &str, value: impl Into<String>) -> Self {
        self.query.push((key.to_owned(), value.into()));
        self
    }

    pub(crate) fn has_query(&self, key: &str) -> bool {
        self.query.iter().any(|(k, _)| k == key)
    }

    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Result<Self> {
        let v = HeaderValue::from_str(value).map_err(|_| {
            Error::invalid(
                format!("header {name}"),
                format!("{value:?} cannot be sent in an HTTP header"),
            )
        })?;
        self.headers.insert(HeaderName::from_static(name), v);
        Ok(self)
    }

    pub(crate) fn json(mut self, body: &impl Serialize) -> Result<Self> {
        let bytes = serde_json::to_vec(body).map_err(|e| {
            Error::invalid(
                "request body",
                format!("could not serialise it to JSON: {e}"),
            )
        })?;
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.body = RequestBody::Json(Bytes::from(bytes));
        Ok(self)
    }

    pub(crate) fn raw(mut self, content_type: &'static str, body: Body) -> Self {
        self.headers
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        self.body = RequestBody::Raw(body);
        self
    }

    /// Whether the body is streamed rather than held in memory.
    pub(crate) fn has_streamed_body(&self) -> bool {
        matches!(self.body, RequestBody::Raw(_))
    }

    /// The path with its query, as sent and as shown in errors.
    pub(crate) fn path_and_query(&self) -> String {
        if self.query.is_empty() {
            self.path.clone()
        } else {
            let q = serde_urlencoded::to_string(&self.query).unwrap_or_default();
            format!("{}?{q}", self.path)
        }
    }

    /// Turns the value into an `http::Request` for the given authority.
    pub(crate) fn into_http(
        self,
        authority: &str,
        user_agent: &HeaderValue,
    ) -> Result<http::Request<Body>> {
        let pq = self.path_and_query();
        let uri = format!("http://{authority}{pq}");
        let mut builder = http::Request::builder()
            .method(self.method.clone())
            .uri(&uri)
            .header(http::header::USER_AGENT, user_agent.clone());
        if let Some(h) = builder.headers_mut() {
            h.extend(self.headers);
        }
        let body = match self.body {
            RequestBody::Empty => empty_body(),
            RequestBody::Json(b) => full_body(b),
            RequestBody::Raw(b) => b,
        };
        builder.body(body).map_err(|e| {
            Error::invalid("request", format!("{uri} is not a valid request URI: {e}"))
        })
    }
}

pub(crate) fn empty_body() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn full_body(bytes: impl Into<Bytes>) -> Body {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(encode_segment("web-1"), "web-1");
        assert_eq!(encode_segment("app/v1"), "app%2Fv1");
        assert_eq!(encode_segment("a b?"), "a%20b%3F");
    }

    #[test]
    fn query_is_url_encoded_in_order() {
        let r = ApiRequest::get("/1.0/instances")
            .query("recursion", "1")
            .query("filter", "name eq web-.*");
        assert_eq!(
            r.path_and_query(),
            "/1.0/instances?recursion=1&filter=name+eq+web-.*"
        );
    }

    #[test]
    fn json_body_sets_content_type() {
        let r = ApiRequest::new(Method::POST, "/1.0/profiles")
            .json(&serde_json::json!({"name": "p"}))
            .unwrap();
        assert_eq!(r.headers[CONTENT_TYPE], "application/json");
        let http = r
            .into_http("incus", &HeaderValue::from_static("ua"))
            .unwrap();
        assert_eq!(http.uri(), "http://incus/1.0/profiles");
        assert_eq!(http.headers()[http::header::USER_AGENT], "ua");
    }

    #[test]
    fn bad_header_value_is_an_error() {
        let err = ApiRequest::get("/x")
            .header("x-incus-uid", "a\nb")
            .unwrap_err();
        assert!(err.to_string().contains("x-incus-uid"), "{err}");
    }
}
