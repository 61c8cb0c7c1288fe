//! The rollout's timing, apart from Incus: batches of `max-parallel`, canary weights,
//! pauses, and the sequencing of batches behind their gates.
//!
//! Everything here runs on `tokio::time`, so it is tested on a paused clock.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::topology::{CanaryStep, Pause};

/// Splits `items` into batches of at most `max_parallel` (0 counts as 1), in order.
#[must_use]
pub fn batches<T: Clone>(items: &[T], max_parallel: u32) -> Vec<Vec<T>> {
    let size = usize::try_from(max_parallel.max(1)).unwrap_or(usize::MAX);
    items.chunks(size).map(<[T]>::to_vec).collect()
}

/// The canary's traffic weights in order, ending at 100 even when the topology's
/// last step is lower (the last step always promotes).
#[must_use]
pub fn canary_weights(steps: &[CanaryStep]) -> Vec<u32> {
    let mut weights: Vec<u32> = steps.iter().map(|s| s.weight.min(100)).collect();
    if weights.last() != Some(&100) {
        weights.push(100);
    }
    weights
}

/// The per-backend weights that give a canary set exactly `weight` percent of the
/// traffic: `(on each canary backend, on each stable backend)`, reduced. With 3
/// canary and 3 stable backends, 10% is `(1, 9)`; with 1 canary and 4 stable, 10% is
/// `(4, 9)`. At 100 (or without stable backends) stable gets 0; at 0 the canary does.
#[must_use]
pub fn canary_backend_weights(weight: u32, canary: usize, stable: usize) -> (u32, u32) {
    let canary = u32::try_from(canary).unwrap_or(u32::MAX).max(1);
    let stable = u32::try_from(stable).unwrap_or(u32::MAX);
    match weight.min(100) {
        100 => (1, 0),
        _ if stable == 0 => (1, 0),
        0 => (0, 1),
        weight => {
            let (c, s) = (weight * stable, (100 - weight) * canary);
            let g = gcd(c, s);
            (c / g, s / g)
        }
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

/// How a pause ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseEnd {
    /// No pause, or its time has passed: go on.
    Elapsed,
    /// The operator cancelled (Ctrl-C) during the pause.
    Cancelled,
    /// A pause until promoted: the command ends here, the rollout recorded as paused.
    NeedsPromotion,
}

/// Waits out `pause`, unless `cancel` fires first.
pub async fn pause(pause: Option<Pause>, cancel: &CancellationToken) -> PauseEnd {
    match pause {
        None => PauseEnd::Elapsed,
        Some(Pause::UntilPromoted) => PauseEnd::NeedsPromotion,
        Some(Pause::For { duration }) => {
            tokio::select! {
                biased;
                () = cancel.cancelled() => PauseEnd::Cancelled,
                () = tokio::time::sleep(duration.to_std()) => PauseEnd::Elapsed,
            }
        }
    }
}

/// Waits out `delay` (a blue-green scale-down delay) in ticks of at most `tick`,
/// telling `on_tick` the time left at the start of each; ends early with
/// [`PauseEnd::Cancelled`] when `cancel` fires.
pub async fn countdown(
    delay: Duration,
    tick: Duration,
    cancel: &CancellationToken,
    mut on_tick: impl FnMut(Duration),
) -> PauseEnd {
    let until = tokio::time::Instant::now() + delay;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return PauseEnd::Elapsed;
        }
        on_tick(left);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return PauseEnd::Cancelled,
            () = tokio::time::sleep(left.min(tick.max(Duration::from_millis(1)))) => {}
        }
    }
}

/// How a sequence of batches ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchesEnd {
    /// Every batch passed.
    Passed,
    /// Batch `index` (from 0) failed for `reason`; later batches never started.
    Failed {
        /// The batch.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Cancelled before batch `index` started, or during it.
    Cancelled {
        /// The first batch not finished.
        index: usize,
    },
    /// The whole rollout's deadline passed during batch `index`.
    DeadlineExceeded {
        /// The batch.
        index: usize,
    },
}

/// Runs `run(index)` for each of `count` batches, one after the other: a batch starts
/// only when the one before it passed (its gate includes min-healthy-time). Stops at
/// the first failure, at `cancel` (a batch in flight is dropped), or at `deadline`
/// for the whole sequence.
pub async fn run_batches<F, Fut>(
    count: usize,
    deadline: Option<Duration>,
    cancel: &CancellationToken,
    mut run: F,
) -> BatchesEnd
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let out_of_time = async {
        match deadline {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let mut out_of_time = std::pin::pin!(out_of_time);
    for index in 0..count {
        if cancel.is_cancelled() {
            return BatchesEnd::Cancelled { index };
        }
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return BatchesEnd::Cancelled { index },
            () = &mut out_of_time => return BatchesEnd::DeadlineExceeded { index },
            result = run(index) => result,
        };
        if let Err(reason) = result {
            return BatchesEnd::Failed { index, reason };
        }
    }
    BatchesEnd::Passed
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::time::Instant;

    use super::*;
    use crate::topology::Duration as TopoDuration;

    #[test]
    fn batches_follow_max_parallel() {
        let items = [1, 2, 3, 4, 5];
        assert_eq!(batches(&items, 2), vec![vec![1, 2], vec![3, 4], vec![5]]);
        assert_eq!(batches(&items, 0), batches(&items, 1));
        assert_eq!(batches(&items, 9), vec![items.to_vec()]);
        assert!(batches::<u8>(&[], 3).is_empty());
    }

    #[test]
    fn canary_weights_always_end_at_full_traffic() {
        let step = |weight| CanaryStep {
            weight,
            pause: None,
        };
        assert_eq!(
            canary_weights(&crate::topology::Canary::default().steps),
            [10, 25, 50, 100]
        );
        assert_eq!(canary_weights(&[step(20), step(60)]), [20, 60, 100]);
        assert_eq!(canary_weights(&[step(150)]), [100]);
    }

    #[test]
    fn canary_weights_per_backend_give_the_exact_share() {
        assert_eq!(canary_backend_weights(10, 3, 3), (1, 9));
        assert_eq!(canary_backend_weights(25, 3, 3), (1, 3));
        assert_eq!(canary_backend_weights(50, 3, 3), (1, 1));
        assert_eq!(canary_backend_weights(100, 3, 3), (1, 0));
        assert_eq!(canary_backend_weights(10, 1, 4), (4, 9));
        assert_eq!(canary_backend_weights(0, 2, 2), (0, 1));
        assert_eq!(canary_backend_weights(30, 2, 0), (1, 0));
        for (weight, canary, stable) in [(10, 1, 4), (25, 2, 5), (50, 4, 1), (1, 7, 3)] {
            let (c, s) = canary_backend_weights(weight, canary, stable);
            let (c_total, s_total) = (c * canary as u32, s * stable as u32);
            assert_eq!(
                c_total * 100,
                weight * (c_total + s_total),
                "{weight}% over {canary}+{stable}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_pause_waits_exactly_its_duration() {
        let cancel = CancellationToken::new();
        let begin = Instant::now();
        let end = pause(
            Some(Pause::For {
                duration: TopoDuration::from_secs(30),
            }),
            &cancel,
        )
        .await;
        assert_eq!(end, PauseEnd::Elapsed);
        assert_eq!(begin.elapsed(), Duration::from_secs(30));
        assert_eq!(pause(None, &cancel).await, PauseEnd::Elapsed);
        assert_eq!(
            pause(Some(Pause::UntilPromoted), &cancel).await,
            PauseEnd::NeedsPromotion
        );
        assert_eq!(begin.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn the_scale_down_countdown_ticks_and_ends_at_its_delay() {
        let cancel = CancellationToken::new();
        let begin = Instant::now();
        let mut told = Vec::new();
        let end = countdown(
            Duration::from_secs(25),
            Duration::from_secs(10),
            &cancel,
            |left| {
                told.push(left.as_secs());
            },
        )
        .await;
        assert_eq!(end, PauseEnd::Elapsed);
        assert_eq!(begin.elapsed(), Duration::from_secs(25));
        assert_eq!(told, [25, 15, 5]);
        let mut ticks = 0;
        let zero = countdown(Duration::ZERO, Duration::from_secs(10), &cancel, |_| {
            ticks += 1
        })
        .await;
        assert_eq!((zero, ticks), (PauseEnd::Elapsed, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn ctrl_c_ends_the_countdown_at_once() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let begin = Instant::now();
        let (end, ()) = tokio::join!(
            countdown(
                Duration::from_secs(60),
                Duration::from_secs(10),
                &cancel,
                |_| {}
            ),
            async {
                tokio::time::sleep(Duration::from_secs(12)).await;
                trigger.cancel();
            }
        );
        assert_eq!(end, PauseEnd::Cancelled);
        assert_eq!(begin.elapsed(), Duration::from_secs(12));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_a_pause_at_once() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let begin = Instant::now();
        let (end, ()) = tokio::join!(
            pause(
                Some(Pause::For {
                    duration: TopoDuration::from_secs(600),
                }),
                &cancel,
            ),
            async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                trigger.cancel();
            }
        );
        assert_eq!(end, PauseEnd::Cancelled);
        assert_eq!(begin.elapsed(), Duration::from_secs(5));
    }

    /// Batch gates that take 3 s each: each batch starts when the one before passed.
    #[tokio::test(start_paused = true)]
    async fn each_batch_starts_after_the_previous_gate_passed() {
        let begin = Instant::now();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let end = run_batches(3, None, &cancel, |index| {
            let starts = Arc::clone(&starts);
            async move {
                starts.lock().unwrap().push((index, begin.elapsed()));
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(())
            }
        })
        .await;
        assert_eq!(end, BatchesEnd::Passed);
        assert_eq!(
            *starts.lock().unwrap(),
            [
                (0, Duration::ZERO),
                (1, Duration::from_secs(3)),
                (2, Duration::from_secs(6))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_batch_starts_no_later_batch() {
        let cancel = CancellationToken::new();
        let ran = Arc::new(Mutex::new(Vec::new()));
        let end = run_batches(4, None, &cancel, |index| {
            let ran = Arc::clone(&ran);
            async move {
                ran.lock().unwrap().push(index);
                if index == 1 {
                    Err("gate failed".to_owned())
                } else {
                    Ok(())
                }
            }
        })
        .await;
        assert_eq!(
            end,
            BatchesEnd::Failed {
                index: 1,
                reason: "gate failed".into()
            }
        );
        assert_eq!(*ran.lock().unwrap(), [0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_rollout_deadline_stops_a_slow_batch() {
        let cancel = CancellationToken::new();
        let begin = Instant::now();
        let end = run_batches(3, Some(Duration::from_secs(10)), &cancel, |_| async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            Ok(())
        })
        .await;
        // Batches 0 and 1 pass at 4 s and 8 s; batch 2 would end at 12 s.
        assert_eq!(end, BatchesEnd::DeadlineExceeded { index: 2 });
        assert_eq!(begin.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_between_batches_starts_nothing_more() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        let end = run_batches(3, None, &cancel, move |index| {
            let trigger = trigger.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if index == 0 {
                    trigger.cancel();
                }
                Ok(())
            }
        })
        .await;
        assert_eq!(end, BatchesEnd::Cancelled { index: 1 });
    }
}
