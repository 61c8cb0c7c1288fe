//! Background operations: typed values, waits with explicit deadlines, cancel.
//!
//! Incus keeps a finished operation for only five seconds, so a wait starts right
//! after the request, or follows an [`crate::events::EventStream`] opened before it.
//! `/1.0/operations/{id}/wait` answers HTTP 200 even when the operation failed or the
//! wait timed out, and its body differs between 6.0.4 (an error envelope) and newer
//! servers (the operation itself): both are handled here.

use std::collections::HashMap;
use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::request::{ApiRequest, encode_segment};
use crate::response::Envelope;

/// The status of an operation or an instance (`status_code`), by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// 100
    OperationCreated,
    /// 101
    Started,
    /// 102
    Stopped,
    /// 103
    Running,
    /// 104
    Cancelling,
    /// 105
    Pending,
    /// 106
    Starting,
    /// 107
    Stopping,
    /// 108
    Aborting,
    /// 109
    Freezing,
    /// 110
    Frozen,
    /// 111
    Thawed,
    /// 112
    Error,
    /// 113
    Ready,
    /// 200
    Success,
    /// 400
    Failure,
    /// 401
    Cancelled,
    /// A code this client does not know (newer servers may add some).
    Unknown(i64),
}

impl StatusCode {
    /// Maps a number to a status.
    #[must_use]
    pub fn from_code(code: i64) -> Self {
        match code {
            100 => Self::OperationCreated,
            101 => Self::Started,
            102 => Self::Stopped,
            103 => Self::Running,
            104 => Self::Cancelling,
            105 => Self::Pending,
            106 => Self::Starting,
            107 => Self::Stopping,
            108 => Self::Aborting,
            109 => Self::Freezing,
            110 => Self::Frozen,
            111 => Self::Thawed,
            112 => Self::Error,
            113 => Self::Ready,
            200 => Self::Success,
            400 => Self::Failure,
            401 => Self::Cancelled,
            other => Self::Unknown(other),
        }
    }

    /// The number.
    #[must_use]
    pub fn code(self) -> i64 {
        match self {
            Self::OperationCreated => 100,
            Self::Started => 101,
            Self::Stopped => 102,
            Self::Running => 103,
            Self::Cancelling => 104,
            Self::Pending => 105,
            Self::Starting => 106,
            Self::Stopping => 107,
            Self::Aborting => 108,
            Self::Freezing => 109,
            Self::Frozen => 110,
            Self::Thawed => 111,
            Self::Error => 112,
            Self::Ready => 113,
            Self::Success => 200,
            Self::Failure => 400,
            Self::Cancelled => 401,
            Self::Unknown(c) => c,
        }
    }

    /// Whether an operation with this status has finished (`>= 200`).
    #[must_use]
    pub fn is_final(self) -> bool {
        self.code() >= 200
    }
}

impl Default for StatusCode {
    fn default() -> Self {
        Self::Unknown(0)
    }
}

impl Serialize for StatusCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_i64(self.code())
    }
}

impl<'de> Deserialize<'de> for StatusCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Self::from_code(i64::deserialize(d)?))
    }
}

/// The class of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationClass {
    /// A background task.
    Task,
    /// Waits for websockets (streaming exec, migration).
    Websocket,
    /// A token (trust tokens, cluster join tokens).
    Token,
    /// A class this client does not know.
    #[serde(other)]
    Other,
}

/// An Incus operation (`/1.0/operations/{id}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operation {
    /// UUID.
    pub id: String,
    /// Task, websocket or token.
    pub class: OperationClass,
    /// What it does, e.g. `Creating instance`.
    #[serde(default)]
    pub description: String,
    /// RFC 3339 creation time.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339 time of the last change.
    #[serde(default)]
    pub updated_at: String,
    /// Status text.
    #[serde(default)]
    pub status: String,
    /// Status by number: decide on this, not on the text.
    #[serde(default)]
    pub status_code: StatusCode,
    /// Affected objects, by type, as URLs.
    #[serde(default)]
    pub resources: Option<HashMap<String, Vec<String>>>,
    /// Free-form, per operation type (progress, exec fds and return code, tokens).
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Whether it can be cancelled.
    #[serde(default)]
    pub may_cancel: bool,
    /// The failure message, when it failed.
    #[serde(default)]
    pub err: String,
    /// The cluster member running it (`none` when not clustered).
    #[serde(default)]
    pub location: String,
}

impl Operation {
    /// Whether it has finished.
    #[must_use]
    pub fn is_final(&self) -> bool {
        self.status_code.is_final()
    }

    /// `Ok(self)` when it succeeded, [`Error::OperationFailed`] when it failed or was
    /// cancelled.
    ///
    /// # Errors
    /// When the operation is final and not a success.
    pub fn into_success(self) -> Result<Self> {
        match self.status_code {
            StatusCode::Success => Ok(self),
            s if s.is_final() => Err(Error::OperationFailed {
                id: self.id,
                description: self.description,
                status: self.status,
                message: self.err,
            }),
            _ => Ok(self),
        }
    }

    /// A metadata field.
    #[must_use]
    pub fn metadata_field(&self, key: &str) -> Option<&Value> {
        self.metadata.as_ref().and_then(|m| m.get(key))
    }
}

/// Longest single `/wait` request; waits longer than this loop.
const WAIT_SLICE_SECS: u64 = 30;

/// Typed handle on `/1.0/operations`.
#[derive(Debug, Clone)]
pub struct Operations {
    client: Client,
}

impl Operations {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// `GET /1.0/operations/{id}`.
    ///
    /// # Errors
    /// [`Error::is_not_found`] once the operation is gone (5 s after it finished).
    pub async fn get(&self, id: &str) -> Result<Operation> {
        self.client
            .get(format!("/1.0/operations/{}", encode_segment(id)))
            .await
    }

    /// All operations of the project, with their full objects.
    ///
    /// # Errors
    /// On any API or transport failure.
    pub async fn list(&self) -> Result<Vec<Operation>> {
        let map: HashMap<String, Vec<Operation>> = self
            .client
            .call_sync(ApiRequest::get("/1.0/operations").query("recursion", "1"))
            .await?
            .0;
        Ok(map.into_values().flatten().collect())
    }

    /// Cancels a running operation (`DELETE`), e.g. a pending trust token.
    ///
    /// # Errors
    /// When the operation cannot be cancelled or is gone.
    pub async fn cancel(&self, id: &str) -> Result<()> {
        self.client
            .call_unit(ApiRequest::new(
                Method::DELETE,
                format!("/1.0/operations/{}", encode_segment(id)),
            ))
            .await
    }

    /// Waits until the operation is final or `deadline` passes. Returns the final
    /// operation whatever its outcome; use [`Operation::into_success`] to turn failure
    /// into an error.
    ///
    /// On a client given an [`crate::operation_waiter::OperationWaiter`] (see
    /// [`Client::with_waiter`]) this goes through its shared events subscription;
    /// otherwise through `/wait` requests of at most 30 s. On 6.0.4 a failed
    /// operation comes back from `/wait` as an error body without the operation: the
    /// returned value then has status `Failure` and the message in `err`.
    ///
    /// # Errors
    /// [`Error::Timeout`] at the deadline; API errors (404 when it is gone).
    pub async fn wait(&self, op: &Operation, deadline: Instant) -> Result<Operation> {
        if op.is_final() {
            return Ok(op.clone());
        }
        match self.client.waiter() {
            Some(waiter) => waiter.wait(op, deadline).await,
            None => self.wait_polling(op, deadline).await,
        }
    }

    /// [`Operations::wait`] through `/wait` requests of at most 30 s.
    pub(crate) async fn wait_polling(
        &self,
        op: &Operation,
        deadline: Instant,
    ) -> Result<Operation> {
        if op.is_final() {
            return Ok(op.clone());
        }
        let path = format!("/1.0/operations/{}/wait", encode_segment(&op.id));
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(timeout_error(op));
            }
            let remaining = deadline - now;
            let secs = remaining.as_secs().clamp(1, WAIT_SLICE_SECS);
            let req = ApiRequest::get(path.clone()).query("timeout", secs.to_string());
            // The server answers within `secs`; the outer guard catches a stuck server.
            let guard = deadline.max(now + Duration::from_secs(secs)) + Duration::from_secs(5);
            let (method, p, env) =
                match tokio::time::timeout_at(guard, self.client.call_envelope(req)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(timeout_error(op)),
                };
            match interpret_wait(op, env) {
                WaitOutcome::Done(done) => return Ok(*done),
                WaitOutcome::Again => {}
                WaitOutcome::Error(env) => {
                    env.into_result(&method, &p)?;
                }
            }
        }
    }
}

pub(crate) fn timeout_error(op: &Operation) -> Error {
    Error::Timeout {
        what: format!("the operation {} ({})", op.id, op.description),
    }
}

pub(crate) enum WaitOutcome {
    Done(Box<Operation>),
    Again,
    Error(Envelope),
}

/// Reads a `/wait` answer of either server generation (brief 1.4).
pub(crate) fn interpret_wait(op: &Operation, env: Envelope) -> WaitOutcome {
    match env {
        Envelope::Sync { metadata, .. } => match serde_json::from_value::<Operation>(metadata) {
            Ok(o) if o.is_final() => WaitOutcome::Done(Box::new(o)),
            Ok(_) => WaitOutcome::Again,
            Err(_) => WaitOutcome::Error(Envelope::Error {
                http_status: 200,
                error_code: 500,
                message: "the wait answer does not carry a valid operation".into(),
            }),
        },
        Envelope::Error {
            http_status: 200,
            message,
            ..
        } => {
            if message.contains("context deadline exceeded") {
                WaitOutcome::Again
            } else {
                let mut failed = op.clone();
                failed.status_code = StatusCode::Failure;
                failed.status = "Failure".into();
                failed.err = message;
                WaitOutcome::Done(Box::new(failed))
            }
        }
        other @ Envelope::Error { .. } => WaitOutcome::Error(other),
        Envelope::Async(_) => WaitOutcome::Error(Envelope::Error {
            http_status: 200,
            error_code: 500,
            message: "a wait answered with a new operation".into(),
        }),
    }
}

/// An operation just started by a call, with the client that started it.
#[derive(Debug, Clone)]
pub struct PendingOperation {
    client: Client,
    op: Operation,
}

impl PendingOperation {
    pub(crate) fn new(client: Client, op: Operation) -> Self {
        Self { client, op }
    }

    /// The operation as returned by the call.
    #[must_use]
    pub fn operation(&self) -> &Operation {
        &self.op
    }

    /// Its id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.op.id
    }

    /// Waits for it to finish, with a deadline `timeout` from now, and requires success.
    ///
    /// # Errors
    /// [`Error::OperationFailed`] when it failed or was cancelled, [`Error::Timeout`] at
    /// the deadline.
    pub async fn wait(self, timeout: Duration) -> Result<Operation> {
        self.wait_until(Instant::now() + timeout)
            .await?
            .into_success()
    }

    /// Waits until `deadline` and returns the final operation whatever its outcome.
    ///
    /// # Errors
    /// [`Error::Timeout`] at the deadline; API and transport errors.
    pub async fn wait_until(&self, deadline: Instant) -> Result<Operation> {
        self.client.operations().wait(&self.op, deadline).await
    }

    /// Cancels it.
    ///
    /// # Errors
    /// When it cannot be cancelled.
    pub async fn cancel(&self) -> Result<()> {
        self.client.operations().cancel(&self.op.id).await
    }

    /// Gives back the operation.
    #[must_use]
    pub fn into_operation(self) -> Operation {
        self.op
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_codes_are_kept() {
        let s: StatusCode = serde_json::from_str("1234").unwrap();
        assert_eq!(s, StatusCode::Unknown(1234));
        assert!(s.is_final());
        assert_eq!(
            serde_json::to_string(&StatusCode::Cancelled).unwrap(),
            "401"
        );
        assert!(!StatusCode::Running.is_final());
    }

    fn running() -> Operation {
        serde_json::from_value(serde_json::json!({
            "id": "abc", "class": "task", "description": "Creating instance",
            "status": "Running", "status_code": 103
        }))
        .unwrap()
    }

    #[test]
    fn wait_on_604_error_body_is_a_failed_operation() {
        let env = Envelope::Error {
            http_status: 200,
            error_code: 400,
            message: "boom".into(),
        };
        match interpret_wait(&running(), env) {
            WaitOutcome::Done(o) => {
                assert_eq!(o.status_code, StatusCode::Failure);
                assert_eq!(o.err, "boom");
                assert!(o.into_success().unwrap_err().to_string().contains("boom"));
            }
            _ => panic!("expected Done"),
        }
    }

    #[test]
    fn wait_timeouts_of_both_generations_loop() {
        let old = Envelope::Error {
            http_status: 200,
            error_code: 500,
            message: "context deadline exceeded".into(),
        };
        assert!(matches!(
            interpret_wait(&running(), old),
            WaitOutcome::Again
        ));
        let new = Envelope::Sync {
            metadata: serde_json::to_value(running()).unwrap(),
            etag: None,
        };
        assert!(matches!(
            interpret_wait(&running(), new),
            WaitOutcome::Again
        ));
    }

    #[test]
    fn wait_404_is_an_error() {
        let env = Envelope::Error {
            http_status: 404,
            error_code: 404,
            message: "Operation not found".into(),
        };
        assert!(matches!(
            interpret_wait(&running(), env),
            WaitOutcome::Error(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_past_its_deadline_times_out_without_a_request() {
        let c = Client::unix("/nonexistent").unwrap();
        let deadline = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        let err = c.operations().wait(&running(), deadline).await.unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
    }
}
