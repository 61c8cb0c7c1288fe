//! The `/1.0/events` websocket as a [`Stream`] of typed events.
//!
//! Open the stream *before* starting an operation you want to follow: Incus forgets an
//! operation five seconds after it ends, and a fast one can finish before a late
//! listener connects. [`EventStream::wait_operation`] follows one operation on a stream
//! opened earlier, with a race-guard `GET` after subscribing, as the Go client does.
//! Events to one listener are not ordered on 6.0.4: decide on `status_code`, not on
//! arrival order.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::operations::{Operation, timeout_error};
use crate::request::ApiRequest;
use crate::transport::Stream as Conn;

/// The event types to subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Lifecycle events (instance-created, instance-started, ...).
    Lifecycle,
    /// Operation changes.
    Operation,
    /// Daemon log records (admin only): those at or above the daemon's log level,
    /// which is `warning` unless incusd runs with `--verbose` (info) or `--debug`.
    Logging,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Lifecycle => "lifecycle",
            Self::Operation => "operation",
            Self::Logging => "logging",
        }
    }
}

/// A lifecycle event's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LifecycleEvent {
    /// E.g. `instance-started`.
    pub action: String,
    /// The object's URL, e.g. `/1.0/instances/web`.
    #[serde(default)]
    pub source: String,
    /// Action-specific details.
    #[serde(default)]
    pub context: Option<HashMap<String, Value>>,
    /// Who asked.
    #[serde(default)]
    pub requestor: Option<Value>,
    /// The object's name (absent on some actions: see [`LifecycleEvent::object_name`]).
    #[serde(default)]
    pub name: Option<String>,
    /// The project.
    #[serde(default)]
    pub project: Option<String>,
}

impl LifecycleEvent {
    /// The object's name: `name`, or the last segment of `source` without its query.
    #[must_use]
    pub fn object_name(&self) -> &str {
        if let Some(n) = self.name.as_deref().filter(|n| !n.is_empty()) {
            return n;
        }
        let path = self.source.split('?').next().unwrap_or("");
        path.rsplit('/').next().unwrap_or("")
    }
}

/// A logging event's metadata.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LoggingEvent {
    /// The message.
    #[serde(default)]
    pub message: String,
    /// `debug`, `info`, `warning`, `error`.
    #[serde(default)]
    pub level: String,
    /// Structured fields.
    #[serde(default)]
    pub context: HashMap<String, Value>,
}

/// What an event carries.
#[derive(Debug, Clone)]
pub enum EventPayload {
    /// `type: lifecycle`.
    Lifecycle(LifecycleEvent),
    /// `type: operation`: the operation's full current state.
    Operation(Box<Operation>),
    /// `type: logging`.
    Logging(LoggingEvent),
    /// Any other type, kept raw.
    Other {
        /// The type.
        kind: String,
        /// The metadata.
        metadata: Value,
    },
}

/// One event.
#[derive(Debug, Clone)]
pub struct Event {
    /// RFC 3339 time.
    pub timestamp: String,
    /// The cluster member that produced it.
    pub location: String,
    /// The project.
    pub project: String,
    /// The typed payload.
    pub payload: EventPayload,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    timestamp: String,
    #[serde(default)]
    location: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    metadata: Value,
}

impl Event {
    /// Decodes one event frame.
    ///
    /// # Errors
    /// When the frame is not an event of the expected shape.
    pub fn from_json(bytes: &[u8]) -> std::result::Result<Self, serde_json::Error> {
        let raw: RawEvent = serde_json::from_slice(bytes)?;
        let payload = match raw.kind.as_str() {
            "lifecycle" => EventPayload::Lifecycle(serde_json::from_value(raw.metadata)?),
            "operation" => EventPayload::Operation(Box::new(serde_json::from_value(raw.metadata)?)),
            "logging" => EventPayload::Logging(serde_json::from_value(raw.metadata)?),
            _ => EventPayload::Other {
                kind: raw.kind,
                metadata: raw.metadata,
            },
        };
        Ok(Self {
            timestamp: raw.timestamp,
            location: raw.location,
            project: raw.project,
            payload,
        })
    }

    /// The lifecycle payload, if this is a lifecycle event.
    #[must_use]
    pub fn lifecycle(&self) -> Option<&LifecycleEvent> {
        match &self.payload {
            EventPayload::Lifecycle(l) => Some(l),
            _ => None,
        }
    }

    /// The operation, if this is an operation event.
    #[must_use]
    pub fn operation(&self) -> Option<&Operation> {
        match &self.payload {
            EventPayload::Operation(o) => Some(o),
            _ => None,
        }
    }
}

/// Typed handle on `/1.0/events`.
#[derive(Debug, Clone)]
pub struct Events {
    client: Client,
}

impl Events {
    pub(crate) fn new(client: Client) -> Self {
        Self { client }
    }

    /// Subscribes to `types` in the client's project (all types when empty).
    ///
    /// # Errors
    /// When the websocket cannot be opened (403 for `logging` without admin rights,
    /// 404 for an unknown project).
    pub async fn subscribe(&self, types: &[EventType]) -> Result<EventStream> {
        self.open(types, false).await
    }

    /// Subscribes to `types` in all projects.
    ///
    /// # Errors
    /// As [`Events::subscribe`].
    pub async fn subscribe_all_projects(&self, types: &[EventType]) -> Result<EventStream> {
        self.open(types, true).await
    }

    async fn open(&self, types: &[EventType], all_projects: bool) -> Result<EventStream> {
        let mut req = ApiRequest::get("/1.0/events");
        if !types.is_empty() {
            let list: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            req = req.query("type", list.join(","));
        }
        if all_projects {
            req = req.query("all-projects", "true");
        }
        let ws = self.client.websocket(req).await?;
        Ok(EventStream {
            ws,
            client: self.client.clone(),
            held: VecDeque::new(),
            done: false,
        })
    }
}

/// A live subscription: a [`Stream`] of events. Poll it steadily: the server drops
/// listeners that stop answering its pings.
#[derive(Debug)]
pub struct EventStream {
    ws: WebSocketStream<Conn>,
    client: Client,
    /// Events read by [`EventStream::wait_operation`] that were not for it: the
    /// stream yields them before reading further.
    held: VecDeque<Event>,
    done: bool,
}

impl Stream for EventStream {
    type Item = Result<Event>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(ev) = self.held.pop_front() {
            return Poll::Ready(Some(Ok(ev)));
        }
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            let msg = match self.ws.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::Websocket {
                        path: "/1.0/events".into(),
                        source: Box::new(e),
                    })));
                }
                Poll::Ready(Some(Ok(m))) => m,
            };
            let bytes = match msg {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                Message::Close(_) => {
                    self.done = true;
                    return Poll::Ready(None);
                }
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            if bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Poll::Ready(Some(Event::from_json(&bytes).map_err(|e| Error::Decode {
                method: http::Method::GET,
                path: "/1.0/events".into(),
                detail: format!(
                    "an event frame is not a valid event ({:?})",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
                source: Some(e),
            })));
        }
    }
}

impl EventStream {
    /// Follows `op` on this stream (which must include operation events and have been
    /// opened before the operation started) until it is final or `deadline` passes.
    /// Returns the final operation whatever its outcome.
    ///
    /// Events read meanwhile that are not this operation's end stay queued and are
    /// yielded by the stream afterwards, so nothing is lost to the wait.
    ///
    /// After subscribing it fetches the operation once, so an operation that ended
    /// before the first event is still seen. If the stream closes, it falls back to
    /// `/wait`.
    ///
    /// # Errors
    /// [`Error::Timeout`] at the deadline; stream and API errors.
    pub async fn wait_operation(&mut self, op: &Operation, deadline: Instant) -> Result<Operation> {
        if op.is_final() {
            return Ok(op.clone());
        }
        match self.client.operations().get(&op.id).await {
            Ok(now) if now.is_final() => return Ok(now),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        loop {
            let next = match tokio::time::timeout_at(deadline, self.read_live()).await {
                Ok(n) => n,
                Err(_) => return Err(timeout_error(op)),
            };
            match next {
                Some(Ok(ev)) => {
                    if let Some(o) = ev.operation()
                        && o.id == op.id
                        && o.is_final()
                    {
                        return Ok(o.clone());
                    }
                    self.held.push_back(ev);
                }
                Some(Err(e)) => return Err(e),
                None => return self.client.operations().wait(op, deadline).await,
            }
        }
    }

    /// The next event from the socket, skipping held ones (they stay queued).
    async fn read_live(&mut self) -> Option<Result<Event>> {
        let held = std::mem::take(&mut self.held);
        let next = self.next().await;
        let mut newly = std::mem::replace(&mut self.held, held);
        self.held.append(&mut newly);
        next
    }

    /// Closes the subscription.
    ///
    /// # Errors
    /// When the close handshake fails.
    pub async fn close(mut self) -> Result<()> {
        self.ws.close(None).await.map_err(|e| Error::Websocket {
            path: "/1.0/events".into(),
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_name_falls_back_to_source() {
        let l = LifecycleEvent {
            action: "instance-snapshot-created".into(),
            source: "/1.0/instances/web/snapshots/s0?project=p".into(),
            ..LifecycleEvent::default()
        };
        assert_eq!(l.object_name(), "s0");
    }

    #[test]
    fn malformed_event_is_an_error() {
        assert!(Event::from_json(br#"{"type":"operation","metadata":{"id":5}}"#).is_err());
        assert!(Event::from_json(b"{").is_err());
    }
}
