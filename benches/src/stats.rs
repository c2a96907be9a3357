//! Outcome counting and latency percentiles shared by every subcommand:
//! one `Recorder` per worker (merged at the end, so recording never
//! contends), and a `Summary` that prints as text or as one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// Highest latency the histograms resolve, in microseconds (60 s); longer
/// samples are clamped to it (and still counted).
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Quantiles every report prints, with their labels.
pub const QUANTILES: [(&str, f64); 4] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
];

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits: 1 µs resolution up to ~1 ms, 0.1% relative above.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("static histogram bounds are valid")
}

/// Microseconds in `d`, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Counts and latencies of one kind of operation.
#[derive(Debug, Clone)]
pub struct Recorder {
    /// Latency of successful operations, in microseconds.
    pub latency: Histogram<u64>,
    pub ok: u64,
    /// Failed operations by gRPC code name (or store error kind).
    pub errors: BTreeMap<String, u64>,
    /// Failed operations by `code/REASON` when the server sent an ErrorInfo.
    pub reasons: BTreeMap<String, u64>,
    /// First message seen per error key, to show what went wrong.
    pub samples: BTreeMap<String, String>,
    /// Successful lookups that returned at least one binding.
    pub found: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            reasons: BTreeMap::new(),
            samples: BTreeMap::new(),
            found: 0,
        }
    }
}

impl Recorder {
    /// A success that took `took`.
    pub fn ok(&mut self, took: Duration) {
        self.ok += 1;
        self.latency.saturating_record(micros(took).max(1));
    }

    /// A failure under `key` (a gRPC code name), with an optional server
    /// reason and a message kept for the first occurrence.
    pub fn error(&mut self, key: &str, reason: Option<&str>, message: &str) {
        *self.errors.entry(key.to_string()).or_default() += 1;
        if let Some(r) = reason {
            *self.reasons.entry(format!("{key}/{r}")).or_default() += 1;
        }
        self.samples
            .entry(key.to_string())
            .or_insert_with(|| message.chars().take(300).collect());
    }

    /// Failed operations.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Every operation that finished (ok or not).
    pub fn finished(&self) -> u64 {
        self.ok + self.error_count()
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Recorder) {
        self.ok += other.ok;
        self.found += other.found;
        // Both histograms share bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.reasons {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &other.samples {
            self.samples.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }

    /// Latency quantiles and max in milliseconds (µs resolution), or None
    /// when nothing succeeded.
    pub fn latency_ms(&self) -> Option<Vec<(&'static str, f64)>> {
        if self.latency.is_empty() {
            return None;
        }
        let mut out: Vec<(&'static str, f64)> = QUANTILES
            .iter()
            .map(|(label, q)| (*label, us_to_ms(self.latency.value_at_quantile(*q))))
            .collect();
        out.push(("max", us_to_ms(self.latency.max())));
        out.push(("mean", self.latency.mean() / 1000.0));
        Some(out)
    }
}

/// Microseconds to milliseconds, exact to the microsecond.
pub fn us_to_ms(us: u64) -> f64 {
    // Latencies are far below 2^53 µs, so the conversion is exact.
    #[allow(clippy::cast_precision_loss)]
    let v = us as f64;
    v / 1000.0
}

/// Formats milliseconds with microsecond resolution.
pub fn fmt_ms(ms: f64) -> String {
    format!("{ms:.3}")
}

/// The JSON form of a recorder: counts, errors and latency.
pub fn recorder_json(r: &Recorder, elapsed: Duration) -> Value {
    let latency = r.latency_ms().map(|l| {
        l.into_iter()
            .map(|(k, v)| (k.replace('.', "_"), json!(round_us(v))))
            .collect::<serde_json::Map<_, _>>()
    });
    json!({
        "finished": r.finished(),
        "ok": r.ok,
        "errors": r.error_count(),
        "errors_by_code": r.errors,
        "errors_by_reason": r.reasons,
        "error_samples": r.samples,
        "ops_per_s": rate(r.finished(), elapsed),
        "latency_ms": latency,
    })
}

fn round_us(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// `n` per second over `elapsed` (0 when nothing elapsed).
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    #[allow(clippy::cast_precision_loss)]
    let n = n as f64;
    (n / secs * 10.0).round() / 10.0
}

/// One line: `p50 1.234  p90 ...  max ...` in ms, or `-` when empty.
pub fn latency_line(r: &Recorder) -> String {
    match r.latency_ms() {
        None => "-".to_string(),
        Some(l) => {
            let mut s = String::new();
            for (label, v) in l {
                if label == "mean" {
                    continue;
                }
                if !s.is_empty() {
                    s.push_str("  ");
                }
                let _ = write!(s, "{label} {}", fmt_ms(v));
            }
            s
        }
    }
}

/// `Code: n, Code: n` or `none`.
pub fn counts_line(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".to_string();
    }
    m.iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_reported_in_ms_with_microsecond_resolution() {
        let mut r = Recorder::default();
        for us in 1..=1000u64 {
            r.ok(Duration::from_micros(us));
        }
        let l = r.latency_ms().unwrap();
        let get = |k: &str| l.iter().find(|(label, _)| *label == k).unwrap().1;
        assert_eq!(fmt_ms(get("p50")), "0.500");
        assert_eq!(fmt_ms(get("p90")), "0.900");
        assert_eq!(fmt_ms(get("p99")), "0.990");
        assert_eq!(fmt_ms(get("p99.9")), "0.999");
        assert_eq!(fmt_ms(get("max")), "1.000");
        assert_eq!(
            latency_line(&r),
            "p50 0.500  p90 0.900  p99 0.990  p99.9 0.999  max 1.000"
        );
    }

    #[test]
    fn merging_adds_counts_errors_and_samples() {
        let mut a = Recorder::default();
        a.ok(Duration::from_millis(2));
        a.error("Unavailable", Some("OVERLOADED"), "first");
        let mut b = Recorder::default();
        b.ok(Duration::from_millis(4));
        b.found = 1;
        b.error("Unavailable", None, "second");
        b.error("DeadlineExceeded", None, "late");
        a.merge(&b);
        assert_eq!((a.ok, a.found, a.error_count(), a.finished()), (2, 1, 3, 5));
        assert_eq!(
            counts_line(&a.errors),
            "DeadlineExceeded: 1, Unavailable: 2"
        );
        assert_eq!(a.reasons["Unavailable/OVERLOADED"], 1);
        assert_eq!(a.samples["Unavailable"], "first");
        assert_eq!(a.latency.len(), 2);
    }

    #[test]
    fn an_empty_recorder_has_no_latency_and_rates_are_safe() {
        let r = Recorder::default();
        assert!(r.latency_ms().is_none());
        assert_eq!(latency_line(&r), "-");
        assert_eq!(rate(10, Duration::ZERO), 0.0);
        assert_eq!(rate(25, Duration::from_secs(2)), 12.5);
        let j = recorder_json(&r, Duration::from_secs(1));
        assert_eq!(j["latency_ms"], Value::Null);
    }
}
