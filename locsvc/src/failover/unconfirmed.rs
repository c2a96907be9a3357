//! Writes a member has not confirmed yet, per AoR.
//!
//! A write is acknowledged as soon as one member of the group took it; the
//! others finish in the background. Two things must then hold per member and
//! AoR (an AoR's rows live in one group, so per-AoR order is all that
//! matters):
//! - **order**: a later write of an AoR reaches a member only after the
//!   earlier one finished there (they could otherwise commit in the wrong
//!   order on a slow member and leave it with an older binding), so each
//!   write waits for its predecessor's `done`;
//! - **read-your-writes**: while a member still lacks a write that a caller
//!   was told succeeded, it must not answer reads of that AoR (`is_behind`).
//!
//! A slot exists while any write of the AoR is unfinished on the member and
//! is removed by the last one. A write that *fails* marks the member as
//! having missed a write before its slot goes away, so the member never
//! looks complete in between. Keys are 64-bit hashes of (table, AoR); a
//! collision only sends a read to the partner.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use tokio::sync::oneshot;

const SHARDS: usize = 32;

/// Most unfinished writes of one AoR a member may have queued: a member
/// slower than one AoR's writes is skipped (it misses them, and is marked)
/// rather than accumulating a chain of waiting writes without end.
pub const MAX_QUEUED_PER_AOR: u32 = 8;

/// Resolves when a write has finished on the member (either way).
pub type Done = Shared<BoxFuture<'static, ()>>;

struct Slot {
    /// Id of the newest write of this AoR on the member.
    tail: u64,
    /// Unfinished writes of this AoR on the member.
    queued: u32,
    done: Done,
    /// A caller was told a write of this AoR succeeded before this member
    /// confirmed it.
    behind: bool,
}

/// Unfinished writes of one member, by AoR key.
#[derive(Default)]
pub struct Unconfirmed {
    shards: [Mutex<HashMap<u64, Slot>>; SHARDS],
    next_id: AtomicU64,
    behind: AtomicI64,
}

impl std::fmt::Debug for Unconfirmed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unconfirmed")
            .field("behind", &self.behind_aors())
            .finish_non_exhaustive()
    }
}

/// One write in flight on one member; hand it to `finish` when the member
/// answered.
#[must_use = "a write that is never finished blocks later writes of its AoR"]
pub struct Ticket {
    key: u64,
    id: u64,
    done: oneshot::Sender<()>,
}

impl Unconfirmed {
    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.shards[(key % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new write of `key`; returns its ticket and, when an
    /// earlier write of the same AoR is still unfinished here, what to wait
    /// for before sending it. Call in dispatch order (it fixes the order).
    /// None when `MAX_QUEUED_PER_AOR` writes of the AoR are already waiting.
    pub fn enqueue(&self, key: u64) -> Option<(Ticket, Option<Done>)> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel::<()>();
        let done: Done = rx.map(|_| ()).boxed().shared();
        let prev = {
            let mut shard = self.shard(key);
            match shard.get_mut(&key) {
                Some(slot) if slot.queued >= MAX_QUEUED_PER_AOR => return None,
                Some(slot) => {
                    slot.tail = id;
                    slot.queued += 1;
                    Some(std::mem::replace(&mut slot.done, done))
                }
                None => {
                    shard.insert(
                        key,
                        Slot {
                            tail: id,
                            queued: 1,
                            done,
                            behind: false,
                        },
                    );
                    None
                }
            }
        };
        Some((Ticket { key, id, done: tx }, prev))
    }

    /// A caller was acknowledged while this member had not confirmed the
    /// write of `key`: keep reads of it away until the write finishes.
    /// False when nothing is unfinished (the write completed meanwhile).
    pub fn mark_behind(&self, key: u64) -> bool {
        let mut shard = self.shard(key);
        match shard.get_mut(&key) {
            Some(slot) => {
                if !slot.behind {
                    slot.behind = true;
                    self.behind.fetch_add(1, Ordering::AcqRel);
                }
                true
            }
            None => false,
        }
    }

    /// True when this member may lack an acknowledged write of `key`.
    pub fn is_behind(&self, key: u64) -> bool {
        self.shard(key).get(&key).is_some_and(|s| s.behind)
    }

    /// Resolves when the newest unfinished write of `key` has finished here;
    /// None when there is none.
    pub fn finished(&self, key: u64) -> Option<Done> {
        self.shard(key).get(&key).map(|s| s.done.clone())
    }

    /// AoRs this member may lack an acknowledged write of.
    pub fn behind_aors(&self) -> u64 {
        self.behind.load(Ordering::Acquire).max(0) as u64
    }

    /// The write of `t` finished on the member (after any missed-write mark
    /// for a failure was made): wakes the next write of the AoR, and forgets
    /// the AoR when this was the newest.
    pub fn finish(&self, t: Ticket) {
        let mut shard = self.shard(t.key);
        if let Some(slot) = shard.get_mut(&t.key) {
            slot.queued = slot.queued.saturating_sub(1);
            // Writes of an AoR finish in their order, so the newest one
            // finishing means none is left.
            if slot.tail == t.id
                && let Some(slot) = shard.remove(&t.key)
                && slot.behind
            {
                self.behind.fetch_sub(1, Ordering::AcqRel);
            }
        }
        drop(shard);
        let _ = t.done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_write_of_an_aor_waits_for_the_earlier_one() {
        let u = Unconfirmed::default();
        let (first, none) = u.enqueue(7).unwrap();
        assert!(none.is_none());
        let (second, prev) = u.enqueue(7).unwrap();
        let prev = prev.expect("waits for the first write");
        let (_other, unrelated) = u.enqueue(8).unwrap();
        assert!(unrelated.is_none(), "other AoRs do not wait");
        assert!(prev.clone().now_or_never().is_none());
        u.finish(first);
        assert!(prev.now_or_never().is_some());
        u.finish(second);
    }

    #[test]
    fn behind_lasts_until_the_newest_write_of_the_aor_finishes() {
        let u = Unconfirmed::default();
        let (a, _) = u.enqueue(1).unwrap();
        assert!(!u.is_behind(1), "in flight is not behind");
        assert!(u.mark_behind(1));
        assert!(u.is_behind(1));
        assert_eq!(u.behind_aors(), 1);
        let (b, _) = u.enqueue(1).unwrap();
        u.finish(a);
        assert!(u.is_behind(1), "a newer write is still unfinished");
        u.finish(b);
        assert!(!u.is_behind(1));
        assert_eq!(u.behind_aors(), 0);
        assert!(!u.mark_behind(1), "finished: nothing to mark");
    }

    #[test]
    fn a_member_slower_than_one_aors_writes_gets_no_endless_queue() {
        let u = Unconfirmed::default();
        let mut held: Vec<Ticket> = (0..MAX_QUEUED_PER_AOR)
            .map(|_| u.enqueue(3).unwrap().0)
            .collect();
        assert!(u.enqueue(3).is_none(), "full");
        assert!(u.enqueue(4).is_some(), "per AoR");
        u.finish(held.remove(0));
        assert!(u.enqueue(3).is_some(), "room again");
    }
}
