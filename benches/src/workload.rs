//! What each operation of a run does and when it is sent: user naming, the
//! Save/Lookup mix, CSeq numbering, and the open-loop schedule. Pure and
//! deterministic (given the seed), so it is unit-tested without a server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// SplitMix64: a fast, well-mixed 64-bit hash of `x` (also a good PRNG
/// when fed a counter).
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform value in [0, 1) from 64 random bits.
pub fn unit(bits: u64) -> f64 {
    // The top 53 bits fit an f64 mantissa exactly.
    #[allow(clippy::cast_precision_loss)]
    let v = (bits >> 11) as f64;
    v / (1u64 << 53) as f64
}

/// How subscribers are named: `{prefix}{i}@{domain}`, each with one contact
/// `sip:{prefix}{i}@{contact_host}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Users {
    pub prefix: String,
    pub domain: String,
    pub contact_host: String,
}

impl Users {
    /// The user part of subscriber `i`.
    pub fn user(&self, i: u64) -> String {
        format!("{}{i}", self.prefix)
    }

    /// The AoR of subscriber `i`, as a SIP front sends it.
    pub fn aor(&self, i: u64) -> String {
        format!("sip:{}{i}@{}", self.prefix, self.domain)
    }

    /// The one contact subscriber `i` registers.
    pub fn contact(&self, i: u64) -> String {
        format!("sip:{}{i}@{}", self.prefix, self.contact_host)
    }
}

/// Which operations a run sends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mix {
    Save,
    Lookup,
    /// Saves with this probability, lookups otherwise.
    Mixed {
        save_ratio: f64,
    },
}

/// Which subscriber a lookup asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Order {
    /// Uniformly random over the users (seeded, reproducible).
    Random,
    /// 0, 1, 2, ... wrapping around.
    Sequential,
}

/// The kind of one operation (also the index of its recorder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Save = 0,
    Lookup = 1,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Save => "save",
            Self::Lookup => "lookup",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One planned operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub kind: Kind,
    /// Subscriber index.
    pub user: u64,
    /// CSeq of a Save (0 for lookups).
    pub cseq: u32,
}

/// Highest CSeq locsvc accepts (RFC 3261: below 2^31).
pub const MAX_CSEQ: u64 = (1 << 31) - 1;

/// Turns operation numbers into operations. Thread-safe: workers of a
/// closed loop share it.
///
/// Saves cycle over the users in order, so the k-th Save of user `i` in a
/// run carries CSeq k: every refresh is in order (RFC 3261 §10.3 step 7)
/// as long as two Saves of one user are not in flight at once, which holds
/// whenever the concurrency is below `users`. With `fresh`, every Save is a
/// subscriber never used before in this run (`first`, `first + 1`, ...).
#[derive(Debug)]
pub struct Planner {
    mix: Mix,
    users: u64,
    fresh: bool,
    first: u64,
    order: Order,
    seed: u64,
    saves: AtomicU64,
    lookups: AtomicU64,
}

impl Planner {
    /// `users` must be at least 1.
    pub fn new(mix: Mix, users: u64, fresh: bool, first: u64, order: Order, seed: u64) -> Self {
        Self {
            mix,
            users: users.max(1),
            fresh,
            first,
            order,
            seed,
            saves: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
        }
    }

    /// Operation number `n` of the run.
    pub fn plan(&self, n: u64) -> Op {
        let save = match self.mix {
            Mix::Save => true,
            Mix::Lookup => false,
            Mix::Mixed { save_ratio } => {
                unit(splitmix64(
                    self.seed ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03),
                )) < save_ratio
            }
        };
        if save {
            let s = self.saves.fetch_add(1, Ordering::Relaxed);
            if self.fresh {
                return Op {
                    kind: Kind::Save,
                    user: self.first.saturating_add(s),
                    cseq: 1,
                };
            }
            let cseq = (s / self.users + 1).min(MAX_CSEQ);
            return Op {
                kind: Kind::Save,
                user: self.first.saturating_add(s % self.users),
                cseq: u32::try_from(cseq).unwrap_or(u32::MAX),
            };
        }
        let l = self.lookups.fetch_add(1, Ordering::Relaxed);
        let i = match self.order {
            Order::Sequential => l % self.users,
            Order::Random => {
                splitmix64(self.seed.wrapping_add(l.wrapping_mul(0x9E37))) % self.users
            }
        };
        Op {
            kind: Kind::Lookup,
            user: self.first.saturating_add(i),
            cseq: 0,
        }
    }
}

/// The fixed send schedule of an open loop: operation `k` is due `k / rate`
/// seconds after the start, whatever happened to earlier operations, and its
/// latency is measured from that time (no coordinated omission).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    rate: f64,
}

impl Schedule {
    /// `rate` operations per second (must be > 0).
    pub fn new(rate: f64) -> Self {
        Self { rate }
    }

    /// When operation `k` is due, relative to the start.
    pub fn offset(&self, k: u64) -> Duration {
        // Exact enough: at k = 10^9 the error is well under a microsecond.
        #[allow(clippy::cast_precision_loss)]
        let secs = k as f64 / self.rate;
        Duration::from_secs_f64(secs)
    }
}

/// Whether row `i` is one of the `fraction` share that is already expired,
/// spread evenly: exactly floor(n * fraction) of rows 0..n are.
pub fn is_expired(i: u64, fraction: f64) -> bool {
    if fraction <= 0.0 {
        return false;
    }
    if fraction >= 1.0 {
        return true;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let before = |k: u64| (k as f64 * fraction).floor() as u64;
    before(i + 1) > before(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Users {
        Users {
            prefix: "u".into(),
            domain: "example.com".into(),
            contact_host: "192.0.2.10:5060".into(),
        }
    }

    #[test]
    fn users_are_named_from_prefix_index_and_domain() {
        let u = users();
        assert_eq!(u.user(7), "u7");
        assert_eq!(u.aor(7), "sip:u7@example.com");
        assert_eq!(u.contact(7), "sip:u7@192.0.2.10:5060");
    }

    #[test]
    fn saves_cycle_over_users_with_increasing_cseq() {
        let p = Planner::new(Mix::Save, 3, false, 0, Order::Random, 1);
        let ops: Vec<(u64, u32)> = (0..7)
            .map(|n| p.plan(n))
            .map(|o| (o.user, o.cseq))
            .collect();
        assert_eq!(
            ops,
            [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (2, 2), (0, 3)]
        );
    }

    #[test]
    fn fresh_saves_never_repeat_a_user() {
        let p = Planner::new(Mix::Save, 3, true, 100, Order::Random, 1);
        let users: Vec<u64> = (0..5).map(|n| p.plan(n).user).collect();
        assert_eq!(users, [100, 101, 102, 103, 104]);
        assert!((0..5).all(|n| p.plan(n).cseq == 1));
    }

    #[test]
    fn lookups_stay_within_the_users_in_either_order() {
        let seq = Planner::new(Mix::Lookup, 4, false, 0, Order::Sequential, 1);
        let got: Vec<u64> = (0..6).map(|n| seq.plan(n).user).collect();
        assert_eq!(got, [0, 1, 2, 3, 0, 1]);
        let rnd = Planner::new(Mix::Lookup, 10, false, 0, Order::Random, 42);
        let mut seen = [false; 10];
        for n in 0..1000 {
            let op = rnd.plan(n);
            assert_eq!(op.kind, Kind::Lookup);
            seen[usize::try_from(op.user).unwrap()] = true;
        }
        assert!(seen.iter().all(|s| *s), "every user is drawn: {seen:?}");
    }

    #[test]
    fn mixed_runs_follow_the_save_ratio_and_number_saves_on_their_own() {
        let p = Planner::new(
            Mix::Mixed { save_ratio: 0.25 },
            1000,
            false,
            0,
            Order::Random,
            7,
        );
        let ops: Vec<Op> = (0..10_000).map(|n| p.plan(n)).collect();
        let saves: Vec<&Op> = ops.iter().filter(|o| o.kind == Kind::Save).collect();
        assert!((2300..2700).contains(&saves.len()), "{}", saves.len());
        // Saves still walk the users in order, whatever lookups are interleaved.
        assert!(
            saves
                .iter()
                .take(1000)
                .enumerate()
                .all(|(i, o)| o.user == i as u64)
        );
        let all = Planner::new(
            Mix::Mixed { save_ratio: 1.0 },
            10,
            false,
            0,
            Order::Random,
            7,
        );
        assert!((0..100).all(|n| all.plan(n).kind == Kind::Save));
        let none = Planner::new(
            Mix::Mixed { save_ratio: 0.0 },
            10,
            false,
            0,
            Order::Random,
            7,
        );
        assert!((0..100).all(|n| none.plan(n).kind == Kind::Lookup));
    }

    #[test]
    fn the_schedule_spaces_operations_evenly_from_the_start() {
        let s = Schedule::new(1000.0);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(3), Duration::from_millis(3));
        assert_eq!(s.offset(1500), Duration::from_millis(1500));
        let third = Schedule::new(3.0);
        assert_eq!(third.offset(1).as_nanos(), 333_333_333);
        assert_eq!(third.offset(3), Duration::from_secs(1));
    }

    #[test]
    fn expired_rows_are_an_exact_evenly_spread_share() {
        let count = |f: f64| (0..1000).filter(|&i| is_expired(i, f)).count();
        assert_eq!(count(0.0), 0);
        assert_eq!(count(0.1), 100);
        assert_eq!(count(0.5), 500);
        assert_eq!(count(1.0), 1000);
        let first: Vec<u64> = (0..20).filter(|&i| is_expired(i, 0.25)).collect();
        assert_eq!(first, [3, 7, 11, 15, 19]);
    }

    #[test]
    fn unit_values_stay_in_the_half_open_interval() {
        assert_eq!(unit(0), 0.0);
        assert!(unit(u64::MAX) < 1.0);
    }
}
