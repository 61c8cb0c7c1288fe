//! The one error type of the crate.
//!
//! Every failure says which layer it comes from: the connection (socket or TLS), the
//! HTTP exchange, the Incus API (with the status code and message Incus sent), the
//! decoding of a response, or a wait that ran out of time. Callers branch on meaning
//! with [`Error::is_not_found`], [`Error::is_conflict`] and
//! [`Error::is_precondition_failed`] instead of matching on text.

use std::fmt;

/// A boxed cause kept in `#[source]`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Anything that can go wrong when talking to Incus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Incus answered with an error response (`"type": "error"`).
    #[error("Incus refused {method} {path} (HTTP {status}): {message}")]
    Api {
        /// The HTTP method of the request.
        method: http::Method,
        /// The path and query of the request.
        path: String,
        /// The HTTP status of the response, or the `error_code` of the body when the
        /// response was an HTTP 200 carrying an error (the `/wait` quirk of 6.0.4).
        status: u16,
        /// The `error` text of the body.
        message: String,
    },

    /// The connection to the endpoint could not be set up.
    #[error("could not connect to Incus at {endpoint}")]
    Connect {
        /// The socket path or `host:port` dialled.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },

    /// The server presented a certificate that is not the pinned one.
    #[error(
        "the server at {endpoint} presented a certificate with SHA-256 fingerprint {presented}, \
         but the pinned certificate has fingerprint {pinned}; refusing to talk to it \
         (if the server certificate was replaced on purpose, fetch and pin the new one)"
    )]
    CertificateMismatch {
        /// The `host:port` dialled.
        endpoint: String,
        /// Fingerprint of the pinned certificate.
        pinned: String,
        /// Fingerprint of the certificate the server presented.
        presented: String,
    },

    /// Connecting took longer than the connector's timeout.
    #[error("timed out after {seconds:.1} s connecting to Incus at {endpoint}")]
    ConnectTimeout {
        /// The socket path or `host:port` dialled.
        endpoint: String,
        /// The timeout that ran out.
        seconds: f64,
    },

    /// The request was sent but the exchange failed (connection reset, broken body).
    #[error("the request {method} {path} to Incus failed")]
    Transport {
        /// The HTTP method of the request.
        method: http::Method,
        /// The path and query of the request.
        path: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },

    /// The response could not be understood.
    #[error("could not decode the response to {method} {path}: {detail}")]
    Decode {
        /// The HTTP method of the request.
        method: http::Method,
        /// The path and query of the request.
        path: String,
        /// What was wrong with it, including the HTTP status when relevant.
        detail: String,
        /// The JSON error, when the body was JSON of the wrong shape.
        #[source]
        source: Option<serde_json::Error>,
    },

    /// An operation finished in failure or was cancelled.
    #[error("the Incus operation {id} ({description}) ended with {status}: {message}")]
    OperationFailed {
        /// The operation id.
        id: String,
        /// The operation description, e.g. `Creating instance`.
        description: String,
        /// The final status, e.g. `Failure`.
        status: String,
        /// The `err` text of the operation.
        message: String,
    },

    /// A wait reached its deadline.
    #[error("timed out waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: String,
    },

    /// A websocket (events, exec) failed.
    #[error("the websocket {path} failed")]
    Websocket {
        /// The websocket path.
        path: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },

    /// An argument or configuration given to the client is not usable.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// The argument or setting concerned.
        what: String,
        /// What is wrong and what to do.
        detail: String,
    },

    /// A certificate, key or trust token could not be read or produced.
    #[error("{what}")]
    Certificate {
        /// What was being done.
        what: String,
        /// The cause, when there is one.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// The HTTP status Incus answered with, when the error came from the API.
    #[must_use]
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The message Incus sent, when the error came from the API.
    #[must_use]
    pub fn api_message(&self) -> Option<&str> {
        match self {
            Self::Api { message, .. } => Some(message),
            _ => None,
        }
    }

    /// Whether Incus said the object does not exist (HTTP 404).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// Whether Incus said the object already exists or is in a conflicting state.
    ///
    /// That is HTTP 409, but Incus 6.0 also reports some name collisions as a 500
    /// ("The profile already exists") or as a failed operation (a database `UNIQUE`
    /// constraint): those count too.
    #[must_use]
    pub fn is_conflict(&self) -> bool {
        let collision =
            |m: &str| m.contains("already exists") || m.contains("UNIQUE constraint failed");
        match self {
            Self::Api { status: 409, .. } => true,
            Self::Api { message, .. } | Self::OperationFailed { message, .. } => collision(message),
            _ => false,
        }
    }

    /// Whether an `If-Match` ETag no longer matched (HTTP 412): someone else changed
    /// the object since it was read.
    #[must_use]
    pub fn is_precondition_failed(&self) -> bool {
        self.status() == Some(412)
    }

    /// Whether the server refused the client's identity (HTTP 403, e.g. an untrusted
    /// TLS client certificate).
    #[must_use]
    pub fn is_forbidden(&self) -> bool {
        self.status() == Some(403)
    }

    /// Whether a wait ran out of time.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::ConnectTimeout { .. })
    }

    pub(crate) fn invalid(what: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::Invalid {
            what: what.into(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn decode(method: &http::Method, path: &str, detail: impl Into<String>) -> Self {
        Self::Decode {
            method: method.clone(),
            path: path.to_owned(),
            detail: detail.into(),
            source: None,
        }
    }
}

/// The result type of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, message: &str) -> Error {
        Error::Api {
            method: http::Method::POST,
            path: "/1.0/profiles".into(),
            status,
            message: message.into(),
        }
    }

    #[test]
    fn conflicts_are_recognised_whatever_the_status() {
        assert!(api(409, "x").is_conflict());
        assert!(
            api(
                500,
                "Error inserting \"p\" into database: The profile already exists"
            )
            .is_conflict()
        );
        assert!(!api(500, "Server is not clustered").is_conflict());
        assert!(api(404, "Instance not found").is_not_found());
        assert!(api(412, "ETag doesn't match").is_precondition_failed());
    }
}
