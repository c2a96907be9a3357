//! What one instance knows of a member's health, kept across snapshots:
//! missed-write marks and when they were recorded in `locdb`, transport
//! errors, probes, the circuit and the unconfirmed writes, and the rule
//! that turns them into "may serve reads".

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::{Circuit, Unconfirmed};
use crate::domain::UnixTime;

/// Health a member accumulates across snapshots.
#[derive(Debug, Default)]
pub struct MemberHealth {
    /// When the member last missed a write its partner took (0 = never).
    missed_write_at: AtomicI64,
    /// Transport failures and timeouts seen by this instance.
    transport_errors: AtomicU64,
    /// When this instance last recorded a missed write in `locdb`.
    last_mark_at: AtomicI64,
    /// When (ms) this instance last saw a mark of this member committed in
    /// `locdb`, and the miss (seconds) it covered.
    mark_committed_ms: AtomicI64,
    mark_covers: AtomicI64,
    /// When the last transport failure happened (0 = never).
    last_error_at: AtomicI64,
    /// Latency of the last probe, microseconds.
    last_probe_micros: AtomicU64,
    /// Whether the last probe succeeded.
    last_probe_ok: AtomicBool,
    /// Expiry sweeps of this instance running on the member now.
    sweeping: AtomicU32,
    /// Whether requests may be sent to the member now.
    pub circuit: Circuit,
    /// Writes the member has not confirmed yet, per AoR.
    pub unconfirmed: Unconfirmed,
}

impl MemberHealth {
    /// Holds everything its partners hold, as far as we know, given the
    /// member's `locdb.failover` (`recorded`): no missed write (here or
    /// recorded) within `window` seconds. After `window` (the longest
    /// registration) every binding it missed has expired anyway —
    /// p_usrloc's `expire_time` rule.
    pub fn complete(&self, recorded: UnixTime, now: UnixTime, window: i64) -> bool {
        let recent = |t: UnixTime| t > 0 && now < t.saturating_add(window);
        let missed_lately =
            recent(recorded) || (self.unrecorded_miss(recorded) && recent(self.missed_write_at()));
        !missed_lately
    }

    /// A missed write this instance saw that `recorded` (`locdb.failover`
    /// as last read) does not cover yet.
    pub fn unrecorded_miss(&self, recorded: UnixTime) -> bool {
        // 0 means "never": it must not read as a miss after the pre-1970
        // `failover` of a pristine layout (1900-01-01).
        let t = self.missed_write_at();
        t > 0 && t > recorded
    }

    /// Records that the member missed a write at `now`.
    pub fn mark_missed(&self, now: UnixTime) {
        self.missed_write_at.fetch_max(now, Ordering::AcqRel);
    }

    /// A mark covering the miss at `missed` (seconds) was committed in
    /// `locdb` at `at_ms`.
    pub fn mark_committed(&self, missed: UnixTime, at_ms: i64) {
        self.mark_committed_ms.fetch_max(at_ms, Ordering::AcqRel);
        self.mark_covers.fetch_max(missed, Ordering::AcqRel);
    }

    /// When (ms) this instance committed a mark of the member in `locdb`
    /// that is still in effect there as `recorded` (the member's
    /// `locdb.failover` as last read; a resync clears it) and younger than
    /// `fresh_ms`: every instance that read `locdb` since keeps reads off
    /// the member for a stale window, whatever it misses meanwhile.
    pub fn committed_mark_ms(&self, recorded: UnixTime, now_ms: i64, fresh_ms: i64) -> Option<i64> {
        let ms = self.mark_committed_ms.load(Ordering::Acquire);
        let covers = self.mark_covers.load(Ordering::Acquire);
        (ms > 0 && covers > 0 && recorded >= covers && now_ms - ms < fresh_ms).then_some(ms)
    }

    /// When the member last missed a write (0 = never).
    pub fn missed_write_at(&self) -> UnixTime {
        self.missed_write_at.load(Ordering::Acquire)
    }

    /// Counts one transport failure at `now`.
    pub fn count_transport_error(&self, now: UnixTime) -> u64 {
        self.last_error_at.fetch_max(now, Ordering::AcqRel);
        self.transport_errors.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// True when a transport failure happened in the last `secs` seconds.
    pub fn failed_recently(&self, now: UnixTime, secs: i64) -> bool {
        let t = self.last_error_at.load(Ordering::Acquire);
        t > 0 && now - t < secs
    }

    /// Records a probe's outcome and latency.
    pub fn record_probe(&self, ok: bool, took: Duration) {
        self.last_probe_ok.store(ok, Ordering::Release);
        self.last_probe_micros.store(
            took.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Release,
        );
    }

    /// Outcome and latency of the last probe (None before the first).
    pub fn last_probe(&self) -> Option<(bool, Duration)> {
        let us = self.last_probe_micros.load(Ordering::Acquire);
        (us > 0).then(|| {
            (
                self.last_probe_ok.load(Ordering::Acquire),
                Duration::from_micros(us),
            )
        })
    }

    /// Forgets local missed-write marks that `locdb.failover` (at
    /// `recorded`) already covers, so the shared value alone decides.
    pub fn settle_marks(&self, recorded: UnixTime) {
        let t = self.missed_write_at.load(Ordering::Acquire);
        if t > 0 && t <= recorded {
            let _ =
                self.missed_write_at
                    .compare_exchange(t, 0, Ordering::AcqRel, Ordering::Acquire);
            // The next miss must reach `locdb` even within the same second.
            self.last_mark_at.store(0, Ordering::Release);
        }
    }

    /// Marks the member as being swept until the guard drops: reads
    /// prefer its partners meanwhile (see `Router::read_order`).
    pub fn sweeping(&self) -> SweepMark<'_> {
        self.sweeping.fetch_add(1, Ordering::AcqRel);
        SweepMark(&self.sweeping)
    }

    /// This instance is deleting expired rows on the member right now.
    pub fn is_sweeping(&self) -> bool {
        self.sweeping.load(Ordering::Acquire) > 0
    }

    /// Transport failures so far.
    pub fn transport_errors(&self) -> u64 {
        self.transport_errors.load(Ordering::Acquire)
    }

    /// True at most once per second: whether to write the miss to `locdb`
    /// now (a storm of failed writes must not become a storm of updates).
    pub fn should_record_mark(&self, now: UnixTime) -> bool {
        let last = self.last_mark_at.load(Ordering::Acquire);
        last < now
            && self
                .last_mark_at
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }
}

/// Held while a sweep runs on a member (`MemberHealth::sweeping`).
pub struct SweepMark<'a>(&'a AtomicU32);

impl Drop for SweepMark<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
