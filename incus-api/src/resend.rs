//! Requests sent again when Incus fails them for a passing reason of its own, where the
//! failure shows that nothing was done (or that doing it again is harmless). Each use
//! names the failure it knows and how often to try; nothing else is retried.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

/// When a request is sent again.
pub(crate) struct Resend {
    /// Attempts in all, the first included.
    pub(crate) attempts: u32,
    /// The pause after the first failure; it doubles after each further one.
    pub(crate) first_pause: Duration,
    /// The failure that is passing and safe to send again.
    pub(crate) passing: fn(&Error) -> bool,
}

impl Resend {
    /// Runs `call`, and runs it again while it fails with [`Resend::passing`] and
    /// attempts are left.
    pub(crate) async fn run<T, F, Fut>(&self, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        let mut pause = self.first_pause;
        loop {
            match call().await {
                Err(error) if attempt < self.attempts && (self.passing)(&error) => {
                    tracing::debug!(attempt, %error, "Incus failed the request for a passing reason; sending it again");
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                    pause *= 2;
                }
                outcome => return outcome,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use http::Method;
    use tokio::time::Instant;

    use super::*;

    fn refused(status: u16, message: &str) -> Error {
        Error::Api {
            method: Method::POST,
            path: "/1.0/x".into(),
            status,
            message: message.into(),
        }
    }

    const POLICY: Resend = Resend {
        attempts: 3,
        first_pause: Duration::from_millis(100),
        passing: |e| e.api_message() == Some("passing"),
    };

    #[tokio::test(start_paused = true)]
    async fn a_passing_failure_is_sent_again_with_doubling_pauses() {
        let calls = AtomicU32::new(0);
        let begin = Instant::now();
        let result = POLICY
            .run(|| async {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                    Err(refused(500, "passing"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        assert_eq!(begin.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_run_out_and_other_failures_are_returned_at_once() {
        for (message, calls_made) in [("passing", POLICY.attempts), ("disk full", 1)] {
            let calls = AtomicU32::new(0);
            let error = POLICY
                .run(|| async {
                    calls.fetch_add(1, Ordering::Relaxed);
                    Err::<(), _>(refused(500, message))
                })
                .await
                .unwrap_err();
            assert_eq!(error.api_message(), Some(message));
            assert_eq!(calls.load(Ordering::Relaxed), calls_made, "{message}");
        }
    }
}
