//! The per-source message rate: a token bucket per source with a temporary
//! ban (Kamailio `pike`'s model), in bounded memory. Pure: the time is an
//! argument.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::settings::Cidr;

/// Sources tracked by the rate limiter at most. An entry costs about 150
/// bytes with both indexes, so the table stays under ~10 MiB even when a
/// spoofed-source flood makes every datagram a new source.
pub const MAX_SOURCES: usize = 65_536;

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
    /// A limiter tracking no source yet.
    pub fn new(cfg: RateConfig) -> Self {
        Self {
            cfg,
            sources: HashMap::new(),
            by_forget: BTreeSet::new(),
            evictions: 0,
        }
    }

    /// Whether `ip` is in `trusted` (never limited).
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
}
