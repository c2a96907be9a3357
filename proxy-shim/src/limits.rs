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

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use crate::metrics::Metrics;
use crate::settings::{Cidr, Settings};

/// Sources tracked by the rate limiter at most. An entry costs about 150
/// bytes with both indexes, so the table stays under ~10 MiB even when a
/// spoofed-source flood makes every datagram a new source.
pub const MAX_SOURCES: usize = 65_536;
/// At most one summary line of dropped input per this interval.
pub const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// A TCP connection with no complete message or CRLFCRLF keep-alive for this
/// long is closed (RFC 5626 keep-alives arrive far more often). Partial bytes
/// do not count: they are bounded by `tcp_message_timeout_ms` instead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// The identity a limit is kept by: an IPv4 address, or the /64 of an IPv6
/// address (one subscriber's LAN gets a /64, and a host can pick any address
/// in it, so a /128 limit would be no limit at all).
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

/// What the rate limiter says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate (or the source is trusted, or the limit is off).
    Allow,
    /// Over the rate: dropped, and the source's ban (if `ban` > 0) starts now.
    Limited,
    /// Dropped: the source is banned.
    Banned,
}

/// Rate-limit parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RateConfig {
    /// Sustained messages per second per source; 0 turns the limit off.
    pub rate: u32,
    /// Messages a quiet source may send at once.
    pub burst: u32,
    /// How long a source that went over the rate is refused; zero = only
    /// the messages over the rate are dropped.
    pub ban: Duration,
    /// Sources tracked at most (see `MAX_SOURCES`).
    pub max_sources: usize,
    /// Sources that are never limited (edge proxies, SBCs).
    pub trusted: Vec<Cidr>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    banned_until: Option<Instant>,
    /// From this instant the entry is the same as a fresh one (bucket full,
    /// no ban), so it can be forgotten without changing any decision.
    forget_at: Instant,
}

/// A token bucket per source with a temporary ban (pike's model).
///
/// Memory is bounded: at most `max_sources` entries. Entries are forgotten
/// as soon as they are equivalent to a fresh one, and when the table is full
/// the entry closest to that point (the quietest, or the ban closest to its
/// end) is evicted. Both are O(log n) through an index ordered by
/// `forget_at`. A ban runs for `ban` from its start and is not extended; a
/// source that keeps flooding is banned again after `burst` more messages.
#[derive(Debug)]
pub struct RateLimiter {
    cfg: RateConfig,
    sources: HashMap<IpAddr, Bucket>,
    by_forget: BTreeSet<(Instant, IpAddr)>,
    evictions: u64,
}

impl RateLimiter {
    pub fn new(cfg: RateConfig) -> Self {
        Self {
            cfg,
            sources: HashMap::new(),
            by_forget: BTreeSet::new(),
            evictions: 0,
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.cfg.trusted.iter().any(|c| c.contains(ip))
    }

    /// Sources tracked now.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    /// Entries evicted because the table was full, since the start.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Whether `ip` is banned at `now` (does not count as a message).
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.sources
            .get(&source_key(ip))
            .and_then(|b| b.banned_until)
            .is_some_and(|until| now < until)
    }

    /// Counts one message from `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if self.cfg.rate == 0 || self.is_trusted(ip) {
            return Verdict::Allow;
        }
        self.forget_until(now);
        let key = source_key(ip);
        let burst = f64::from(self.cfg.burst.max(1));
        let rate = f64::from(self.cfg.rate);
        if !self.sources.contains_key(&key) {
            if self.sources.len() >= self.cfg.max_sources.max(1)
                && let Some(first) = self.by_forget.pop_first()
            {
                self.sources.remove(&first.1);
                self.evictions += 1;
            }
            self.sources.insert(
                key,
                Bucket {
                    tokens: burst,
                    at: now,
                    banned_until: None,
                    forget_at: now,
                },
            );
            self.by_forget.insert((now, key));
        }
        let Some(b) = self.sources.get_mut(&key) else {
            return Verdict::Allow;
        };
        if let Some(until) = b.banned_until {
            if now < until {
                return Verdict::Banned;
            }
            b.banned_until = None;
            b.tokens = burst;
            b.at = now;
        }
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.at = now;
        let verdict = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Verdict::Allow
        } else {
            if !self.cfg.ban.is_zero() {
                b.banned_until = Some(now + self.cfg.ban);
            }
            Verdict::Limited
        };
        let forget_at = match b.banned_until {
            Some(until) => until,
            None => now + Duration::from_secs_f64((burst - b.tokens) / rate),
        };
        if forget_at != b.forget_at {
            self.by_forget.remove(&(b.forget_at, key));
            b.forget_at = forget_at;
            self.by_forget.insert((forget_at, key));
        }
        verdict
    }

    /// Drops every entry that is equivalent to a fresh one at `now`.
    fn forget_until(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.by_forget.first() {
            if at > now {
                break;
            }
            self.by_forget.pop_first();
            self.sources.remove(&key);
        }
    }
}

/// Why a new TCP connection was closed at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// `tcp_max_connections` are open.
    TableFull,
    /// The source has `tcp_max_per_source` open.
    PerSource,
    /// The source is banned by the rate limiter.
    Banned,
}

impl Reject {
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::TableFull => "table_full",
            Reject::PerSource => "per_source",
            Reject::Banned => "banned",
        }
    }
}

/// Open TCP connections, in total and per source (`source_key`).
#[derive(Debug)]
pub struct ConnTable {
    max_total: usize,
    max_per_source: usize,
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

impl ConnTable {
    pub fn new(max_total: usize, max_per_source: usize) -> Self {
        Self {
            max_total,
            max_per_source,
            total: 0,
            per_source: HashMap::new(),
        }
    }

    /// Takes a slot for `ip`, or says why not. Trusted sources skip the
    /// per-source cap (an edge proxy may hold many), never the global one.
    pub fn open(&mut self, ip: IpAddr, trusted: bool) -> Result<(), Reject> {
        if self.total >= self.max_total {
            return Err(Reject::TableFull);
        }
        let n = self.per_source.entry(source_key(ip)).or_insert(0);
        if !trusted && *n >= self.max_per_source {
            return Err(Reject::PerSource);
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    pub fn close(&mut self, ip: IpAddr) {
        let key = source_key(ip);
        if let Some(n) = self.per_source.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_source.remove(&key);
            }
            self.total = self.total.saturating_sub(1);
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

/// Why a TCP connection timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No complete message or keep-alive for `IDLE_TIMEOUT`.
    Idle,
    /// A message was started and not finished within `tcp_message_timeout_ms`.
    Message,
}

/// The read deadline of one TCP connection. Between messages it is the idle
/// deadline, renewed only by a complete message or a CRLFCRLF keep-alive.
/// From the first byte of a message to its last it is the message deadline,
/// so trickled bytes (a slowloris) renew nothing.
#[derive(Debug, Clone)]
pub struct StreamTimers {
    idle: Duration,
    message: Duration,
    idle_deadline: Instant,
    message_deadline: Option<Instant>,
}

impl StreamTimers {
    pub fn new(idle: Duration, message: Duration, now: Instant) -> Self {
        Self {
            idle,
            message,
            idle_deadline: now + idle,
            message_deadline: None,
        }
    }

    /// After bytes were framed at `now`: `completed` messages and `pings`
    /// keep-alives came out, and `pending` bytes wait for the rest of one.
    pub fn framed(&mut self, now: Instant, completed: usize, pings: usize, pending: usize) {
        if completed > 0 || pings > 0 {
            self.idle_deadline = now + self.idle;
        }
        if pending == 0 {
            self.message_deadline = None;
        } else if completed > 0 || self.message_deadline.is_none() {
            // A new message started in these bytes.
            self.message_deadline = Some(now + self.message);
        }
    }

    /// When the connection is closed unless more is framed, and why.
    pub fn deadline(&self) -> (Instant, Expiry) {
        match self.message_deadline {
            Some(d) => (d, Expiry::Message),
            None => (self.idle_deadline, Expiry::Idle),
        }
    }
}

/// Counts of dropped input, reported at most once per interval so a flood
/// cannot fill the disk. The first event is reported at once.
#[derive(Debug)]
pub struct DropSummary {
    interval: Duration,
    last: Option<Instant>,
    counts: BTreeMap<&'static str, u64>,
}

impl DropSummary {
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

fn log_summary(counts: &[(&'static str, u64)]) {
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

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn limiter(rate: u32, burst: u32, ban_secs: u64) -> RateLimiter {
        RateLimiter::new(RateConfig {
            rate,
            burst,
            ban: Duration::from_secs(ban_secs),
            max_sources: MAX_SOURCES,
            trusted: vec!["192.0.2.0/24".parse().expect("cidr")],
        })
    }

    #[test]
    fn a_source_gets_its_burst_then_the_rate_then_a_ban_that_ends() {
        let t0 = Instant::now();
        let mut l = limiter(10, 5, 60);
        let a = ip("203.0.113.1");
        for _ in 0..5 {
            assert_eq!(l.check(a, t0), Verdict::Allow);
        }
        // 100 ms refill one token at 10/s.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.check(a, t1), Verdict::Allow);
        assert_eq!(l.check(a, t1), Verdict::Limited);
        assert!(l.is_banned(a, t1));
        // Banned for 60 s whatever the refill would have allowed.
        assert_eq!(l.check(a, t1 + Duration::from_secs(30)), Verdict::Banned);
        assert_eq!(
            l.check(a, t1 + Duration::from_millis(59_999)),
            Verdict::Banned
        );
        // The ban is not extended by the dropped messages; it ends with a full burst.
        let t2 = t1 + Duration::from_secs(60);
        assert!(!l.is_banned(a, t2));
        for _ in 0..5 {
            assert_eq!(l.check(a, t2), Verdict::Allow);
        }
        assert_eq!(l.check(a, t2), Verdict::Limited);
    }

    #[test]
    fn one_flooding_source_does_not_limit_another() {
        let t0 = Instant::now();
        let mut l = limiter(10, 5, 60);
        for _ in 0..6 {
            l.check(ip("203.0.113.1"), t0);
        }
        assert_eq!(l.check(ip("203.0.113.1"), t0), Verdict::Banned);
        assert_eq!(l.check(ip("203.0.113.2"), t0), Verdict::Allow);
    }

    #[test]
    fn a_steady_source_at_the_rate_is_never_limited() {
        let t0 = Instant::now();
        let mut l = limiter(50, 100, 60);
        let a = ip("203.0.113.1");
        // 60 s at exactly 50/s after a full burst.
        for _ in 0..100 {
            assert_eq!(l.check(a, t0), Verdict::Allow);
        }
        for i in 1..=3000u32 {
            let t = t0 + Duration::from_millis(u64::from(i) * 20);
            assert_eq!(l.check(a, t), Verdict::Allow, "message {i}");
        }
    }

    #[test]
    fn ipv6_sources_are_limited_by_their_64_and_mapped_ipv4_as_ipv4() {
        let t0 = Instant::now();
        let mut l = limiter(1, 2, 60);
        assert_eq!(l.check(ip("2001:db8:1:2::1"), t0), Verdict::Allow);
        assert_eq!(l.check(ip("2001:db8:1:2::ffff"), t0), Verdict::Allow);
        assert_eq!(l.check(ip("2001:db8:1:2:aaaa::9"), t0), Verdict::Limited);
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Verdict::Allow);
        assert_eq!(l.check(ip("198.51.100.7"), t0), Verdict::Allow);
        assert_eq!(l.check(ip("::ffff:198.51.100.7"), t0), Verdict::Allow);
        assert_eq!(l.check(ip("198.51.100.7"), t0), Verdict::Limited);
    }

    #[test]
    fn trusted_sources_and_a_zero_rate_are_never_limited() {
        let t0 = Instant::now();
        let mut l = limiter(1, 1, 60);
        for _ in 0..1000 {
            assert_eq!(l.check(ip("192.0.2.200"), t0), Verdict::Allow);
            assert_eq!(l.check(ip("::ffff:192.0.2.9"), t0), Verdict::Allow);
        }
        assert_eq!(l.tracked(), 0);
        let mut off = limiter(0, 1, 60);
        for _ in 0..1000 {
            assert_eq!(off.check(ip("203.0.113.1"), t0), Verdict::Allow);
        }
    }

    #[test]
    fn without_a_ban_only_the_messages_over_the_rate_are_dropped() {
        let t0 = Instant::now();
        let mut l = limiter(10, 1, 0);
        let a = ip("203.0.113.1");
        assert_eq!(l.check(a, t0), Verdict::Allow);
        assert_eq!(l.check(a, t0), Verdict::Limited);
        assert!(!l.is_banned(a, t0));
        assert_eq!(l.check(a, t0 + Duration::from_millis(100)), Verdict::Allow);
    }

    #[test]
    fn memory_is_bounded_quiet_entries_are_forgotten_and_bans_outlive_newcomers() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(RateConfig {
            rate: 10,
            burst: 2,
            ban: Duration::from_secs(60),
            max_sources: 4,
            trusted: Vec::new(),
        });
        let flooder = ip("203.0.113.1");
        for _ in 0..3 {
            l.check(flooder, t0);
        }
        assert!(l.is_banned(flooder, t0));
        // A spoofed-source flood: every message a new source.
        for i in 0..1000u32 {
            let src = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.check(src, t0 + Duration::from_millis(1));
            assert!(l.tracked() <= 4);
        }
        assert!(l.evictions() > 0);
        // The ban ends later than any newcomer's entry becomes forgettable,
        // so the newcomers were evicted, not the ban.
        assert!(l.is_banned(flooder, t0 + Duration::from_secs(1)));
        // Once refilled, entries are forgotten without an eviction.
        let evictions = l.evictions();
        l.check(ip("198.51.100.1"), t0 + Duration::from_secs(61));
        assert_eq!(l.tracked(), 1);
        assert_eq!(l.evictions(), evictions);
    }

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
        for (k, v) in [
            ("rate_limit", "-1"),
            ("rate_burst", "0"),
            ("ban_secs", "forever"),
            ("tcp_max_connections", "0"),
            ("tcp_max_per_source", "x"),
            ("tcp_message_timeout_ms", "0"),
        ] {
            l.set(k, vec![v.into()]);
        }
        let e = l.resolve().expect_err("invalid").to_string();
        for k in [
            "rate_limit",
            "rate_burst",
            "ban_secs",
            "tcp_max_connections",
            "tcp_max_per_source",
            "tcp_message_timeout_ms",
        ] {
            assert!(e.contains(&format!("`{k}`")), "{k} missing in {e}");
        }
    }

    #[test]
    fn the_connection_table_caps_per_source_and_in_total_and_gives_slots_back() {
        let mut t = ConnTable::new(3, 2);
        let (a, b, c) = (ip("203.0.113.1"), ip("203.0.113.2"), ip("203.0.113.3"));
        assert_eq!(t.open(a, false), Ok(()));
        assert_eq!(t.open(a, false), Ok(()));
        assert_eq!(t.open(a, false), Err(Reject::PerSource));
        assert_eq!(t.open(b, false), Ok(()));
        assert_eq!(t.open(c, false), Err(Reject::TableFull));
        t.close(a);
        assert_eq!(t.open(c, false), Ok(()));
        assert_eq!(t.total(), 3);
        let mut trusted = ConnTable::new(10, 1);
        for _ in 0..5 {
            assert_eq!(trusted.open(a, true), Ok(()));
        }
        // Closing a source that holds nothing changes nothing.
        t.close(ip("198.51.100.1"));
        assert_eq!(t.total(), 3);
    }

    #[test]
    fn trickled_bytes_do_not_renew_a_deadline_but_messages_and_pings_do() {
        let t0 = Instant::now();
        let (idle, msg) = (Duration::from_secs(300), Duration::from_secs(10));
        let mut s = StreamTimers::new(idle, msg, t0);
        assert_eq!(s.deadline(), (t0 + idle, Expiry::Idle));
        // A message starts: the message deadline applies from its first byte...
        s.framed(t0 + Duration::from_secs(1), 0, 0, 1);
        assert_eq!(
            s.deadline(),
            (t0 + Duration::from_secs(11), Expiry::Message)
        );
        // ...and one more byte at a time does not move it.
        for i in 2..10 {
            s.framed(
                t0 + Duration::from_secs(i),
                0,
                0,
                usize::try_from(i).unwrap_or(0),
            );
        }
        assert_eq!(
            s.deadline(),
            (t0 + Duration::from_secs(11), Expiry::Message)
        );
        // Completed: idle again, renewed from the end of the message.
        let t9 = t0 + Duration::from_secs(9);
        s.framed(t9, 1, 0, 0);
        assert_eq!(s.deadline(), (t9 + idle, Expiry::Idle));
        // A message completed and the next one started in the same read.
        let t20 = t0 + Duration::from_secs(20);
        s.framed(t20, 1, 0, 40);
        assert_eq!(s.deadline(), (t20 + msg, Expiry::Message));
        s.framed(t20 + Duration::from_secs(1), 1, 0, 0);
        // A keep-alive renews the idle deadline; nothing else does.
        let t100 = t0 + Duration::from_secs(100);
        s.framed(t100, 0, 2, 0);
        assert_eq!(s.deadline(), (t100 + idle, Expiry::Idle));
        s.framed(t100 + Duration::from_secs(50), 0, 0, 0);
        assert_eq!(s.deadline(), (t100 + idle, Expiry::Idle));
    }

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
