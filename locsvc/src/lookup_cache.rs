//! Lookup answers kept for a bounded time (`lookup_cache.ttl_ms`, off by
//! default), so a repeated Lookup of one AoR skips the database.
//!
//! Coherence: this instance's own writes of an AoR (Save, Remove, the
//! mover's carry) drop its entry as each member ends them, in the member's
//! task (so also when the caller gave up early), and a read that was under
//! way then cannot put its older answer back (a per-shard generation, taken
//! before the read, must still hold when the answer is stored). What another
//! writer (a second locsvc instance, a Kamailio p_usrloc node during a
//! migration) changes is seen at most `ttl` after it was acknowledged: an
//! entry's age counts from the moment its read *began*, so no entry can
//! outlive the write it missed by more than `ttl`. Empty answers are never
//! kept, so a new registration made elsewhere is seen at once; what the
//! bound covers is a binding removed or replaced elsewhere, and a second
//! contact added elsewhere to an AoR already cached here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::{Aor, Binding};

/// How many independently locked parts the cache has: enough that two
/// runtime threads rarely meet on one lock.
const SHARDS: usize = 64;

/// A cache of Lookup answers (`lookup_cache` module docs).
#[derive(Debug)]
pub struct LookupCache {
    ttl: Duration,
    per_shard: usize,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug, Default)]
struct Shard {
    /// Bumped by every invalidation in the shard; a fill taken before a
    /// bump is refused.
    generation: u64,
    /// By the AoR's `write_key`, so neither a hit nor an invalidation
    /// allocates; two AoRs sharing a key share one slot.
    entries: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    /// Whose answer this is: a lookup of another AoR with the same key
    /// must not get it.
    table: Box<str>,
    aor: Box<str>,
    /// When the read that produced the answer began.
    read_at: Instant,
    group: u32,
    bindings: Arc<[Binding]>,
}

/// Taken before a read whose answer may be stored (`LookupCache::fill`).
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    key: u64,
    generation: u64,
    read_at: Instant,
}

impl LookupCache {
    /// A cache keeping answers for `ttl`, at most `capacity` AoRs; `None`
    /// when `ttl` is zero (off).
    pub fn new(ttl: Duration, capacity: usize) -> Option<Self> {
        if ttl.is_zero() || capacity == 0 {
            return None;
        }
        Some(Self {
            ttl,
            per_shard: capacity.div_ceil(SHARDS),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
        })
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // A panic while holding a shard leaves only cached answers behind,
        // which are as good as before it.
        self.shards[(key % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The kept answer for `aor` in `table` (`key` is its `write_key`):
    /// its group and bindings (still to be filtered by expiry), if younger
    /// than the ttl.
    pub fn get(&self, key: u64, table: &str, aor: &Aor) -> Option<(u32, Arc<[Binding]>)> {
        let shard = self.shard(key);
        let e = shard.entries.get(&key)?;
        (e.read_at.elapsed() < self.ttl && *e.table == *table && *e.aor == *aor.key())
            .then(|| (e.group, e.bindings.clone()))
    }

    /// A ticket for a read of the AoR with `key` that begins now.
    pub fn ticket(&self, key: u64) -> Ticket {
        Ticket {
            key,
            generation: self.shard(key).generation,
            read_at: Instant::now(),
        }
    }

    /// Keeps the answer of the read `ticket` was taken for, unless its
    /// shard was invalidated since or the answer is empty (never kept: a
    /// registration made elsewhere must be found at once).
    pub fn fill(&self, ticket: Ticket, table: &str, aor: &Aor, group: u32, bindings: &[Binding]) {
        if bindings.is_empty() {
            return;
        }
        let ttl = self.ttl;
        let mut shard = self.shard(ticket.key);
        if shard.generation != ticket.generation {
            return;
        }
        if shard.entries.len() >= self.per_shard && !shard.entries.contains_key(&ticket.key) {
            shard.entries.retain(|_, e| e.read_at.elapsed() < ttl);
            if shard.entries.len() >= self.per_shard {
                return;
            }
        }
        shard.entries.insert(
            ticket.key,
            Entry {
                table: table.into(),
                aor: aor.key().into(),
                read_at: ticket.read_at,
                group,
                bindings: bindings.into(),
            },
        );
    }

    /// Forgets the answer of the AoR with `key` and refuses every fill of
    /// its shard whose ticket is older than this call.
    pub fn invalidate(&self, key: u64) {
        let mut shard = self.shard(key);
        shard.generation = shard.generation.wrapping_add(1);
        shard.entries.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyPolicy;
    use crate::router::write_key;

    fn aor(s: &str) -> Aor {
        Aor::parse(s, KeyPolicy::default()).unwrap()
    }

    fn binding(contact: &str) -> Binding {
        Binding::new(
            &format!("r-{contact}"),
            contact,
            2_000_000_000,
            1_000_000_000,
        )
    }

    fn cache(ttl: Duration) -> LookupCache {
        LookupCache::new(ttl, 1024).unwrap()
    }

    #[test]
    fn zero_ttl_is_off() {
        assert!(LookupCache::new(Duration::ZERO, 10).is_none());
        assert!(LookupCache::new(Duration::from_secs(1), 0).is_none());
    }

    #[test]
    fn a_filled_answer_is_returned_for_its_aor_and_table_only() {
        let c = cache(Duration::from_secs(60));
        let (a, b) = (aor("sip:alice@example.com"), aor("sip:bob@example.com"));
        let (ka, kb) = (write_key("location", &a), write_key("location", &b));
        let t = c.ticket(ka);
        c.fill(t, "location", &a, 7, &[binding("sip:a@10.0.0.1")]);
        let (group, got) = c.get(ka, "location", &a).unwrap();
        assert_eq!((group, got[0].contact.as_str()), (7, "sip:a@10.0.0.1"));
        assert!(c.get(kb, "location", &b).is_none());
        assert!(
            c.get(ka, "location", &b).is_none(),
            "another AoR whose key is the same"
        );
        assert!(c.get(write_key("other", &a), "other", &a).is_none());
    }

    #[test]
    fn an_empty_answer_is_not_kept() {
        let c = cache(Duration::from_secs(60));
        let a = aor("sip:alice@example.com");
        let k = write_key("location", &a);
        c.fill(c.ticket(k), "location", &a, 1, &[]);
        assert!(c.get(k, "location", &a).is_none());
    }

    #[test]
    fn an_invalidation_drops_the_entry_and_refuses_a_read_begun_before_it() {
        let c = cache(Duration::from_secs(60));
        let a = aor("sip:alice@example.com");
        let k = write_key("location", &a);
        c.fill(c.ticket(k), "location", &a, 1, &[binding("sip:old@h")]);
        // A read begins, a write ends and invalidates, the read's older
        // answer arrives: it must not be kept.
        let ticket = c.ticket(k);
        c.invalidate(k);
        assert!(c.get(k, "location", &a).is_none());
        c.fill(ticket, "location", &a, 1, &[binding("sip:old@h")]);
        assert!(c.get(k, "location", &a).is_none());
        // A read begun after the write is kept.
        c.fill(c.ticket(k), "location", &a, 1, &[binding("sip:new@h")]);
        assert_eq!(c.get(k, "location", &a).unwrap().1[0].contact, "sip:new@h");
    }

    #[test]
    fn an_answer_ages_from_when_its_read_began() {
        let c = cache(Duration::from_millis(50));
        let a = aor("sip:alice@example.com");
        let k = write_key("location", &a);
        let mut ticket = c.ticket(k);
        ticket.read_at = ticket
            .read_at
            .checked_sub(Duration::from_millis(60))
            .unwrap();
        // The read began longer than the ttl ago: its answer is already too old.
        c.fill(ticket, "location", &a, 1, &[binding("sip:a@h")]);
        assert!(c.get(k, "location", &a).is_none());
    }

    #[test]
    fn a_full_shard_keeps_what_it_has_and_refuses_more() {
        let c = LookupCache::new(Duration::from_secs(60), SHARDS).unwrap();
        let mut kept = 0;
        for i in 0..(4 * SHARDS) {
            let a = aor(&format!("sip:u{i}@example.com"));
            let k = write_key("location", &a);
            c.fill(c.ticket(k), "location", &a, 1, &[binding("sip:x@h")]);
            kept += usize::from(c.get(k, "location", &a).is_some());
        }
        let stored: usize = c
            .shards
            .iter()
            .map(|s| s.lock().unwrap().entries.len())
            .sum();
        assert_eq!(stored, kept);
        assert!(
            stored <= SHARDS,
            "{stored} entries for a capacity of {SHARDS}"
        );
    }
}
