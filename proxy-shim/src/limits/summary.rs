//! The summary line of dropped input: counts, reported at most once per
//! interval so a flood cannot fill the disk (per-packet detail is DEBUG).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// At most one summary line of dropped input per this interval.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);

/// Counts of dropped input, reported at most once per interval so a flood
/// cannot fill the disk. The first event is reported at once.
#[derive(Debug)]
pub struct DropSummary {
    interval: Duration,
    last: Option<Instant>,
    counts: BTreeMap<&'static str, u64>,
}

impl DropSummary {
    /// A summary reported at most once per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            counts: BTreeMap::new(),
        }
    }

    /// Counts one event; returns the counts to report when one is due.
    pub fn note(&mut self, what: &'static str, now: Instant) -> Option<Vec<(&'static str, u64)>> {
        *self.counts.entry(what).or_insert(0) += 1;
        self.flush(now)
    }

    /// The counts since the last report, if any and if one is due at `now`.
    pub fn flush(&mut self, now: Instant) -> Option<Vec<(&'static str, u64)>> {
        if self.counts.is_empty()
            || self
                .last
                .is_some_and(|l| now.saturating_duration_since(l) < self.interval)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.counts).into_iter().collect())
    }
}

/// Writes one summary line: a warning when a flood limit was hit, else
/// (malformed input only) an info line.
pub fn log_summary(counts: &[(&'static str, u64)]) {
    let text = counts
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let flood = counts
        .iter()
        .any(|(k, _)| !matches!(*k, "unparsable" | "too_large" | "tcp_framing"));
    if flood {
        tracing::warn!(dropped = %text, "flood limits hit (at most one line per 10 s; per-packet detail at DEBUG)");
    } else {
        tracing::info!(dropped = %text, "malformed input dropped (at most one line per 10 s; per-packet detail at DEBUG)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_reports_the_first_event_then_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut s = DropSummary::new(Duration::from_secs(10));
        assert_eq!(s.flush(t0), None);
        assert_eq!(s.note("unparsable", t0), Some(vec![("unparsable", 1)]));
        for i in 0..1000u64 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(s.note("banned", at), None);
        }
        s.note("unparsable", t0 + Duration::from_secs(5));
        assert_eq!(s.flush(t0 + Duration::from_millis(9_999)), None);
        assert_eq!(
            s.flush(t0 + Duration::from_secs(10)),
            Some(vec![("banned", 1000), ("unparsable", 1)])
        );
        assert_eq!(s.flush(t0 + Duration::from_secs(30)), None);
    }
}
