//! Thread-per-core serving: N threads, each with its own single-threaded tokio runtime.
//!
//! A proxied request wakes three tasks (client connection, backend connection, client
//! again). On a work-stealing runtime those wakes often cross threads, and the futex
//! round trips cost more than the proxying itself: measured here, two work-stealing
//! threads served no more than one. So accepted connections are handed to a worker,
//! which serves them to the end, and each worker has its own backend connection pools
//! (see [`worker_index`]); a request never leaves its thread.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Work for a worker: built inside the worker's runtime (so sockets register with its
/// I/O driver), then run there to completion.
pub(crate) type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

thread_local! {
    static WORKER: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running the caller (0 outside workers).
pub(crate) fn worker_index() -> usize {
    WORKER.with(Cell::get)
}

/// The worker threads. Dropping the pool ends them and whatever they still serve.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    senders: Vec<mpsc::UnboundedSender<Job>>,
}

impl WorkerPool {
    /// Starts `count` worker threads.
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(count);
        for index in 0..count {
            let (sender, mut receiver) = mpsc::unbounded_channel::<Job>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::thread::Builder::new()
                .name(format!("cul8er-proxy-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(index));
                    runtime.block_on(async move {
                        let mut running = JoinSet::new();
                        loop {
                            tokio::select! {
                                job = receiver.recv() => match job {
                                    Some(job) => { running.spawn(job()); }
                                    None => break,
                                },
                                Some(_) = running.join_next(), if !running.is_empty() => {}
                            }
                        }
                    });
                })?;
            senders.push(sender);
        }
        Ok(Self { senders })
    }

    /// How many workers there are.
    pub(crate) fn len(&self) -> usize {
        self.senders.len()
    }

    /// Hands a job to worker `index` (modulo the count).
    pub(crate) fn dispatch_to(&self, index: usize, job: Job) {
        let index = index % self.senders.len();
        if self.senders[index].send(job).is_err() {
            tracing::error!(
                worker = index,
                "a worker thread is gone; connection dropped"
            );
        }
    }
}
