//! Smooth weighted round-robin, as nginx does it.
//!
//! Each pick adds every eligible backend's weight to its running score, takes the
//! highest score and subtracts the total weight from it. Over every cycle of
//! `sum(weights)` picks each backend is chosen exactly `weight` times, and the picks are
//! spread out (5:1:1 gives `a a b a c a a`, not `a a a a a b c`), so a canary at 10%
//! sees 10% of every short window, not a burst.

use std::sync::Mutex;

/// The running scores of one service's backends.
#[derive(Debug, Default)]
pub struct SmoothWeightedRoundRobin {
    scores: Mutex<Vec<i64>>,
}

impl SmoothWeightedRoundRobin {
    /// Scores for `backends` backends, all starting at zero.
    #[must_use]
    pub fn new(backends: usize) -> Self {
        Self {
            scores: Mutex::new(vec![0; backends]),
        }
    }

    /// Picks the next backend among those with a weight above 0 for which `eligible`
    /// is true; `None` when there is none.
    pub fn pick(&self, weights: &[u32], mut eligible: impl FnMut(usize) -> bool) -> Option<usize> {
        let mut scores = self
            .scores
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if scores.len() != weights.len() {
            scores.resize(weights.len(), 0);
        }
        let mut total = 0_i64;
        let mut best: Option<usize> = None;
        for (i, &weight) in weights.iter().enumerate() {
            if weight == 0 || !eligible(i) {
                continue;
            }
            scores[i] += i64::from(weight);
            total += i64::from(weight);
            if best.is_none_or(|b| scores[i] > scores[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            scores[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_over_each_cycle_and_spread() {
        let rr = SmoothWeightedRoundRobin::new(3);
        let weights = [5, 1, 1];
        let picks: Vec<_> = (0..7)
            .map(|_| rr.pick(&weights, |_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        let mut counts = [0; 3];
        for _ in 0..7 * 100 {
            counts[rr.pick(&weights, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn zero_weight_and_ineligible_are_skipped() {
        let rr = SmoothWeightedRoundRobin::new(3);
        for _ in 0..10 {
            assert_eq!(rr.pick(&[0, 3, 1], |i| i != 2), Some(1));
        }
        assert_eq!(rr.pick(&[0, 0, 0], |_| true), None);
        assert_eq!(rr.pick(&[1, 1], |_| false), None);
    }
}
