//! Failure accrual over a sliding window: "at least `threshold` errors in
//! the last `window`". Unlike p_usrloc's `errors` counter, old errors decay,
//! so sporadic failures spread over weeks never switch a member off.
//! Pure: time is passed in (milliseconds of a monotonic clock).

use std::collections::VecDeque;

/// Error timestamps of one member, at most `threshold` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorWindow {
    threshold: usize,
    window_ms: u64,
    times: VecDeque<u64>,
}

impl ErrorWindow {
    /// Trips at `threshold` errors within `window_ms`.
    pub fn new(threshold: u32, window_ms: u64) -> Self {
        let threshold = threshold.max(1) as usize;
        Self {
            threshold,
            window_ms,
            times: VecDeque::with_capacity(threshold),
        }
    }

    /// Records one error at `now`; returns whether the window has tripped.
    pub fn record(&mut self, now: u64) -> bool {
        if self.times.len() == self.threshold {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.tripped(now)
    }

    /// True when the last `threshold` errors all fell within the window.
    pub fn tripped(&self, now: u64) -> bool {
        self.times.len() == self.threshold
            && self
                .times
                .front()
                .is_some_and(|first| now.saturating_sub(*first) <= self.window_ms)
    }

    /// Errors within the window at `now`.
    pub fn count(&self, now: u64) -> u32 {
        self.times
            .iter()
            .filter(|t| now.saturating_sub(**t) <= self.window_ms)
            .count() as u32
    }

    /// Forgets every error.
    pub fn clear(&mut self) {
        self.times.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_only_when_threshold_errors_fall_in_the_window() {
        let mut w = ErrorWindow::new(3, 1000);
        assert!(!w.record(0));
        assert!(!w.record(500));
        assert!(w.record(999));
        assert_eq!(w.count(999), 3);
    }

    #[test]
    fn old_errors_decay_and_never_add_up() {
        let mut w = ErrorWindow::new(3, 1000);
        // One error a second for a long time: never three in one second.
        for t in 0..1000 {
            assert!(!w.record(t * 1001), "tripped at {t}");
        }
        assert_eq!(w.count(10_000_000), 0);
    }

    #[test]
    fn clearing_forgets_the_past() {
        let mut w = ErrorWindow::new(2, 1000);
        w.record(0);
        w.clear();
        assert!(!w.record(10));
        assert!(w.record(20));
    }
}
