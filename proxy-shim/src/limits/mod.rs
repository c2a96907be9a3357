//! Flood limits of the SIP edge, modelled on Kamailio's `pike`: a per-source
//! message rate with a temporary ban, a per-source and a global cap on TCP
//! connections, a deadline to finish a TCP message, and a rate-limited
//! summary of what was dropped (per-packet logs are DEBUG only).
//!
//! The decisions are pure state machines that take the time as an argument
//! (`RateLimiter`, `ConnTable`, `StreamTimers`, `DropSummary`), so they are
//! tested without sockets or sleeping. `Limits` wraps them for the
//! transports, which only ask "may this pass?" and report what happened.
//!
//! Not here: answering (a limited message gets no answer, since answering a
//! flood amplifies it), the `max_in_flight` 503 (`transport`), and parsing.
//!
//! Each decision has its own module: `rate`, `conns`, `timers`, `summary`.

mod conns;
mod rate;
mod summary;
mod timers;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use crate::metrics::Metrics;
use crate::settings::Settings;
use summary::log_summary;

pub use conns::{ConnTable, Reject};
pub use rate::{MAX_SOURCES, RateConfig, RateLimiter, Verdict, source_key};
pub use summary::{DropSummary, SUMMARY_INTERVAL};
pub use timers::{Expiry, IDLE_TIMEOUT, StreamTimers};

/// Series of the limits, registered in the shim's registry.
#[derive(Debug, Clone)]
struct LimitMetrics {
    bans: IntCounter,
    sources: IntGauge,
    evictions: IntCounter,
    tcp_open: IntGauge,
    tcp_rejected: IntCounterVec,
    tcp_timeouts: IntCounterVec,
}

impl LimitMetrics {
    fn new(metrics: &Metrics) -> Self {
        let registry = metrics.registry();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry.register(c).expect("unique metric");
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            reg(Box::new(c.clone()));
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            reg(Box::new(g.clone()));
            g
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("static metric definition");
            reg(Box::new(c.clone()));
            c
        };
        Self {
            bans: counter(
                "proxy_shim_bans_total",
                "Sources banned for going over rate_limit",
            ),
            sources: gauge(
                "proxy_shim_rate_limit_sources",
                "Sources tracked by the rate limiter",
            ),
            evictions: counter(
                "proxy_shim_rate_limit_evictions_total",
                "Rate-limiter entries evicted because the table was full",
            ),
            tcp_open: gauge("proxy_shim_tcp_connections", "Open TCP connections"),
            tcp_rejected: counter_vec(
                "proxy_shim_tcp_rejected_total",
                "TCP connections closed at accept, by reason",
                "reason",
            ),
            tcp_timeouts: counter_vec(
                "proxy_shim_tcp_timeouts_total",
                "TCP connections closed by a timer: idle, or a message not finished in time",
                "kind",
            ),
        }
    }
}

/// Everything above, shared by the transports of one App.
#[derive(Debug)]
pub struct Limits {
    rate: Mutex<RateLimiter>,
    conns: Mutex<ConnTable>,
    summary: Mutex<DropSummary>,
    metrics: Arc<Metrics>,
    series: LimitMetrics,
    idle: Duration,
    message: Duration,
    /// Whether going over the rate bans (`ban_secs` > 0).
    bans: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent between statements; a panic elsewhere
    // must not turn the limits off.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Limits {
    /// Registers the limit series in `metrics`' registry: one per App.
    pub fn new(settings: &Settings, metrics: Arc<Metrics>) -> Self {
        let series = LimitMetrics::new(&metrics);
        Self {
            rate: Mutex::new(RateLimiter::new(RateConfig {
                rate: settings.rate_limit,
                burst: settings.rate_burst,
                ban: settings.ban,
                max_sources: MAX_SOURCES,
                trusted: settings.trusted.clone(),
            })),
            conns: Mutex::new(ConnTable::new(
                settings.tcp_max_connections,
                settings.tcp_max_per_source,
            )),
            summary: Mutex::new(DropSummary::new(SUMMARY_INTERVAL)),
            metrics,
            series,
            idle: IDLE_TIMEOUT,
            message: settings.tcp_message_timeout,
            bans: !settings.ban.is_zero(),
        }
    }

    /// Counts one message from `ip`; false = drop it without an answer.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        let verdict = {
            let mut r = lock(&self.rate);
            let before = r.evictions();
            let v = r.check(ip, now);
            // Under the lock, so concurrent callers never count twice.
            self.series
                .sources
                .set(i64::try_from(r.tracked()).unwrap_or(i64::MAX));
            self.series.evictions.inc_by(r.evictions() - before);
            v
        };
        match verdict {
            Verdict::Allow => true,
            Verdict::Limited => {
                if self.bans {
                    self.series.bans.inc();
                }
                tracing::debug!(source = %ip, banned = self.bans, "over rate_limit: dropped");
                self.dropped("rate_limited", now);
                false
            }
            Verdict::Banned => {
                tracing::debug!(source = %ip, "banned source: dropped");
                self.dropped("banned", now);
                false
            }
        }
    }

    /// Counts input dropped for `reason` in `proxy_shim_dropped_total` and
    /// in the summary line.
    pub fn dropped(&self, reason: &'static str, now: Instant) {
        self.metrics.dropped(reason);
        self.note(reason, now);
    }

    /// Counts an event in the summary line only.
    fn note(&self, what: &'static str, now: Instant) {
        let report = lock(&self.summary).note(what, now);
        if let Some(r) = report {
            log_summary(&r);
        }
    }

    /// Logs what was dropped since the last summary, if one is due.
    pub fn flush_summary(&self, now: Instant) {
        let report = lock(&self.summary).flush(now);
        if let Some(r) = report {
            log_summary(&r);
        }
    }

    /// A slot for a new TCP connection from `ip`, or why it is refused.
    pub fn open_tcp(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<TcpSlot, Reject> {
        let (trusted, banned) = {
            let r = lock(&self.rate);
            (r.is_trusted(ip), r.is_banned(ip, now))
        };
        let opened = if banned {
            Err(Reject::Banned)
        } else {
            lock(&self.conns).open(ip, trusted)
        };
        match opened {
            Ok(()) => {
                self.series.tcp_open.inc();
                Ok(TcpSlot {
                    limits: self.clone(),
                    ip,
                })
            }
            Err(why) => {
                self.series
                    .tcp_rejected
                    .with_label_values(&[why.as_str()])
                    .inc();
                tracing::debug!(source = %ip, reason = why.as_str(), "TCP connection refused at accept");
                self.note(
                    match why {
                        Reject::TableFull => "tcp_table_full",
                        Reject::PerSource => "tcp_per_source",
                        Reject::Banned => "tcp_banned",
                    },
                    now,
                );
                Err(why)
            }
        }
    }

    /// Read deadlines for a connection opened at `now`.
    pub fn stream_timers(&self, now: Instant) -> StreamTimers {
        StreamTimers::new(self.idle, self.message, now)
    }

    /// Counts a connection closed by its timer.
    pub fn timed_out(&self, ip: IpAddr, why: Expiry, now: Instant) {
        let kind = match why {
            Expiry::Idle => "idle",
            Expiry::Message => "message",
        };
        self.series.tcp_timeouts.with_label_values(&[kind]).inc();
        tracing::debug!(source = %ip, kind, "TCP connection timed out");
        if why == Expiry::Message {
            self.note("tcp_message_timeout", now);
        }
    }

    /// Open TCP connections.
    pub fn tcp_connections(&self) -> usize {
        lock(&self.conns).total()
    }
}

/// One open TCP connection's slot, given back when dropped.
#[derive(Debug)]
pub struct TcpSlot {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        lock(&self.limits.conns).close(self.ip);
        self.limits.series.tcp_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_settings_parse_from_every_layer_and_every_bad_one_is_reported() {
        use crate::settings::Layers;
        let d = Settings::default();
        assert_eq!(
            (d.rate_limit, d.rate_burst, d.ban),
            (50, 100, Duration::from_secs(60))
        );
        assert_eq!((d.tcp_max_connections, d.tcp_max_per_source), (1024, 32));
        assert_eq!(d.tcp_message_timeout, Duration::from_secs(10));
        let mut l = Layers::default();
        l.toml(
            "domains = [\"example.com\"]\nrate_limit = 0\nban_secs = 5\ntcp_max_per_source = 4",
            "f.toml",
        );
        l.env([
            ("PROXY_SHIM_RATE_BURST".to_string(), "7".to_string()),
            (
                "PROXY_SHIM_TCP_MESSAGE_TIMEOUT_MS".to_string(),
                "250".to_string(),
            ),
        ]);
        l.set("tcp_max_connections", vec!["9".into()]);
        let s = l.resolve().expect("valid");
        assert_eq!(
            (s.rate_limit, s.rate_burst, s.ban),
            (0, 7, Duration::from_secs(5))
        );
        assert_eq!((s.tcp_max_connections, s.tcp_max_per_source), (9, 4));
        assert_eq!(s.tcp_message_timeout, Duration::from_millis(250));
        let mut l = Layers::default();
        l.set("domains", vec!["example.com".into()]);
        let bad = [
            ("rate_limit", "-1"),
            ("rate_burst", "0"),
            ("ban_secs", "forever"),
            ("tcp_max_connections", "0"),
            ("tcp_max_per_source", "x"),
            ("tcp_message_timeout_ms", "0"),
        ];
        for (k, v) in bad {
            l.set(k, vec![v.into()]);
        }
        let e = l.resolve().expect_err("invalid").to_string();
        for (k, _) in bad {
            assert!(e.contains(&format!("`{k}`")), "{k} missing in {e}");
        }
    }
}
