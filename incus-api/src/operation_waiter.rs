//! Waiting on many operations through one shared `/1.0/events` subscription, as the Go
//! client does (`client/operations.go`: one events websocket per client and project,
//! a handler per waiting operation, and a `GET` of the operation after registering so
//! that one that ended first is not missed).
//!
//! An [`OperationWaiter`] subscribes to operation events of all projects once; a task
//! it owns reads them and wakes whoever waits for an operation when it becomes final.
//! It remembers the last [`RECENT_FINAL`] final operations it saw, so a wait that
//! starts after its operation has ended is answered at once, even after Incus has
//! forgotten the operation (five seconds after it ends).
//!
//! When the subscription ends (the daemon restarts, the connection breaks), waits go
//! on with `/1.0/operations/{id}/wait`, as they do on a client without a waiter.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::StreamExt as _;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::Result;
use crate::events::{EventStream, EventType};
use crate::operations::{Operation, timeout_error};

/// How many final operations a waiter remembers.
pub const RECENT_FINAL: usize = 1024;

/// One events subscription that resolves the waits of many operations. Cheap to clone;
/// the subscription closes when the last clone (and every client using it) is gone.
///
/// Get one with [`Client::operation_waiter`]; use it directly with
/// [`OperationWaiter::wait`], or give it to a client with [`Client::with_waiter`] so
/// that every wait of that client ([`crate::PendingOperation::wait`],
/// [`crate::operations::Operations::wait`]) goes through it.
#[derive(Clone)]
pub struct OperationWaiter {
    inner: Arc<WaiterInner>,
}

struct WaiterInner {
    /// The client waits fall back on (it has no waiter itself).
    client: Client,
    state: Arc<Mutex<WaiterState>>,
    /// The task reading the subscription; dropping the waiter stops it.
    _reader: JoinSet<()>,
}

#[derive(Default)]
struct WaiterState {
    waiting: HashMap<String, Vec<oneshot::Sender<Operation>>>,
    recent: HashMap<String, Operation>,
    recent_order: VecDeque<String>,
    /// Why the subscription ended, once it has.
    ended: Option<String>,
}

impl WaiterState {
    fn finished(&mut self, op: Operation) {
        if let Some(senders) = self.waiting.remove(&op.id) {
            for s in senders {
                let _ = s.send(op.clone());
            }
        }
        if self.recent.insert(op.id.clone(), op.clone()).is_none() {
            self.recent_order.push_back(op.id);
            while self.recent_order.len() > RECENT_FINAL {
                if let Some(old) = self.recent_order.pop_front() {
                    self.recent.remove(&old);
                }
            }
        }
    }

    fn end(&mut self, why: String) {
        // Dropping the senders wakes every waiter, which then falls back to `/wait`.
        self.waiting.clear();
        self.ended = Some(why);
    }
}

impl std::fmt::Debug for OperationWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.inner.state);
        f.debug_struct("OperationWaiter")
            .field("endpoint", &self.inner.client.endpoint())
            .field("waiting", &state.waiting.len())
            .field("ended", &state.ended)
            .finish_non_exhaustive()
    }
}

fn lock(state: &Mutex<WaiterState>) -> std::sync::MutexGuard<'_, WaiterState> {
    // Plain inserts and removals: the state stays consistent across a panic.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl OperationWaiter {
    /// Subscribes to the operation events of all projects on `client`'s server.
    pub(crate) async fn subscribe(client: &Client) -> Result<Self> {
        let client = client.without_waiter();
        let stream = client
            .events()
            .subscribe_all_projects(&[EventType::Operation])
            .await?;
        let state = Arc::new(Mutex::new(WaiterState::default()));
        let mut reader = JoinSet::new();
        reader.spawn(read_events(stream, Arc::clone(&state)));
        Ok(Self {
            inner: Arc::new(WaiterInner {
                client,
                state,
                _reader: reader,
            }),
        })
    }

    /// Waits until `op` is final or `deadline` passes; returns the final operation
    /// whatever its outcome (see [`Operation::into_success`]).
    ///
    /// The operation should have started after the waiter subscribed; one that
    /// started earlier is still found while Incus keeps it (a `GET` after
    /// registering), like the Go client does.
    ///
    /// # Errors
    /// [`crate::Error::Timeout`] at the deadline; API errors (404 when the operation
    /// ended unseen more than five seconds ago).
    pub async fn wait(&self, op: &Operation, deadline: Instant) -> Result<Operation> {
        if op.is_final() {
            return Ok(op.clone());
        }
        let Some(registration) = self.register(&op.id) else {
            return self.fallback(op, deadline).await;
        };
        let mut registration = match registration {
            Registered::Done(done) => return Ok(*done),
            Registered::Waiting(r) => r,
        };
        // Race guard: the operation may have ended before the subscription saw it.
        match self.inner.client.operations().get(&op.id).await {
            Ok(now) if now.is_final() => return Ok(now),
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
        let Some(rx) = registration.rx.as_mut() else {
            return self.fallback(op, deadline).await;
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(done)) => Ok(done),
            // The subscription ended: go on the plain way.
            Ok(Err(_)) => self.fallback(op, deadline).await,
            Err(_) => Err(timeout_error(op)),
        }
    }

    /// Whether the subscription is still live (when not, waits use `/wait`).
    #[must_use]
    pub fn is_live(&self) -> bool {
        lock(&self.inner.state).ended.is_none()
    }

    /// `None` when the subscription has ended.
    fn register(&self, id: &str) -> Option<Registered> {
        let mut state = lock(&self.inner.state);
        if state.ended.is_some() {
            return None;
        }
        if let Some(done) = state.recent.get(id) {
            return Some(Registered::Done(Box::new(done.clone())));
        }
        let (tx, rx) = oneshot::channel();
        state.waiting.entry(id.to_owned()).or_default().push(tx);
        Some(Registered::Waiting(Registration {
            id: id.to_owned(),
            rx: Some(rx),
            state: Arc::clone(&self.inner.state),
        }))
    }

    async fn fallback(&self, op: &Operation, deadline: Instant) -> Result<Operation> {
        self.inner
            .client
            .operations()
            .wait_polling(op, deadline)
            .await
    }
}

enum Registered {
    Done(Box<Operation>),
    Waiting(Registration),
}

/// A registered interest in one operation; dropping it unregisters.
struct Registration {
    id: String,
    rx: Option<oneshot::Receiver<Operation>>,
    state: Arc<Mutex<WaiterState>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        drop(self.rx.take());
        let mut state = lock(&self.state);
        if let Some(senders) = state.waiting.get_mut(&self.id) {
            senders.retain(|s| !s.is_closed());
            if senders.is_empty() {
                state.waiting.remove(&self.id);
            }
        }
    }
}

/// Reads the subscription until it ends, waking the waiters of final operations.
async fn read_events(mut stream: EventStream, state: Arc<Mutex<WaiterState>>) {
    let why = loop {
        match stream.next().await {
            Some(Ok(ev)) => {
                if let Some(op) = ev.operation()
                    && op.is_final()
                {
                    lock(&state).finished(op.clone());
                }
            }
            // A frame that does not decode is one event lost, not the stream.
            Some(Err(e @ crate::Error::Decode { .. })) => {
                tracing::warn!(error = %e, "operation event skipped");
            }
            Some(Err(e)) => break e.to_string(),
            None => break "the events stream closed".to_owned(),
        }
    };
    tracing::debug!(reason = %why, "operation waiter: subscription ended; waits use /wait");
    lock(&state).end(why);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, code: i64) -> Operation {
        serde_json::from_value(serde_json::json!({
            "id": id, "class": "task", "status_code": code
        }))
        .unwrap()
    }

    #[test]
    fn final_operations_wake_their_waiters_and_are_remembered() {
        let mut state = WaiterState::default();
        let (tx, mut rx) = oneshot::channel();
        state.waiting.entry("a".into()).or_default().push(tx);
        state.finished(op("a", 200));
        assert_eq!(rx.try_recv().unwrap().id, "a");
        assert!(state.waiting.is_empty());
        assert!(state.recent.contains_key("a"));
    }

    #[test]
    fn the_memory_of_final_operations_is_bounded() {
        let mut state = WaiterState::default();
        for i in 0..RECENT_FINAL + 10 {
            state.finished(op(&i.to_string(), 200));
        }
        assert_eq!(state.recent.len(), RECENT_FINAL);
        assert_eq!(state.recent_order.len(), RECENT_FINAL);
        assert!(!state.recent.contains_key("0"));
        assert!(state.recent.contains_key(&(RECENT_FINAL + 9).to_string()));
    }

    #[test]
    fn an_ended_subscription_wakes_everyone() {
        let mut state = WaiterState::default();
        let (tx, mut rx) = oneshot::channel::<Operation>();
        state.waiting.entry("a".into()).or_default().push(tx);
        state.end("gone".into());
        assert!(rx.try_recv().is_err());
        assert_eq!(state.ended.as_deref(), Some("gone"));
    }
}
