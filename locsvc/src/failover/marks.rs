//! Missed-write marks, the one place `locdb.failover` is written for them:
//! a member that lacks a write its partner took is kept from reads in this
//! instance at once (its health) and in every instance through `locdb`
//! (recorded in the background, at most once a second per member, and
//! re-sent by `reconcile` while the master was unreachable).

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::cluster::{GroupConfig, Member, MemberConfig, MemberStatus};
use crate::domain::UnixTime;
use crate::metrics::Metrics;
use crate::store::{LocdbUpdates, StoreError};

/// A `failover` at most this old already marks a member as lacking writes.
const RECENT_SECS: i64 = 60;

/// Whether a new layout shows member `m` lacking writes, and since when:
/// it holds a slot whose previous member (replaced by a spare, or its URL
/// edited) carries a miss this instance saw after the swap was recorded
/// (`slot_miss`, that member's last miss), or it was not on before, or is
/// new in an existing group (`previous`), and its `failover` is old (a
/// re-admission by a locsvc instance already set a recent one; only a hand
/// edit leaves it old). Its reads wait until a resync fills it, or the
/// window passes.
pub fn layout_miss(
    previous: Option<&GroupConfig>,
    m: &MemberConfig,
    slot_miss: Option<UnixTime>,
    now: UnixTime,
) -> Option<UnixTime> {
    if let Some(t) = slot_miss.filter(|t| *t > m.failover) {
        return Some(t);
    }
    let before = previous?
        .members
        .iter()
        .find(|p| p.no == m.no && p.url == m.url);
    let switched_on = match before {
        Some(b) => b.status != MemberStatus::On && m.status == MemberStatus::On,
        None => true,
    };
    (switched_on && m.failover <= now - RECENT_SECS).then_some(now)
}

/// Records missed writes, locally and in `locdb`.
pub struct Marks {
    pub(super) master: Arc<dyn LocdbUpdates>,
    pub(super) clock: Clock,
    pub(super) metrics: Arc<Metrics>,
    /// Recordings in flight; shutdown awaits them.
    pub(super) tasks: TaskTracker,
}

impl Marks {
    /// Marks recorded on `master`, spawned on `tasks`.
    pub fn new(
        master: Arc<dyn LocdbUpdates>,
        clock: Clock,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            master,
            clock,
            metrics,
            tasks,
        }
    }

    /// The clock marks are dated by.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// `m` failed, or was skipped for, a write a partner took: no reads of
    /// it until it is known complete again.
    pub fn missed_write(&self, m: &Arc<Member>) {
        let now = (self.clock)();
        m.health.mark_missed(now);
        self.metrics
            .member_missed_writes
            .with_label_values(&[&m.config.group.to_string(), &m.config.no.to_string()])
            .inc();
        if m.health.should_record_mark(now) {
            self.record_in_background(m, now, false);
        }
    }

    /// Makes sure `locdb` keeps reads off `m` for its latest miss: a mark
    /// this instance committed within `fresh_ms` that `locdb` still shows
    /// does (peers avoid the member for a whole stale window from it);
    /// otherwise records the miss now. Returns when (ms) the mark in
    /// effect was committed, or None if the master did not take it.
    pub async fn record_now(&self, m: &Arc<Member>, fresh_ms: i64) -> Option<i64> {
        let now = crate::cluster::registry::now_ms();
        if let Some(ms) = m.health.committed_mark_ms(m.config.failover, now, fresh_ms) {
            return Some(ms);
        }
        let (c, at) = (&m.config, m.health.missed_write_at());
        match self.master.mark_failover(c.group, c.no, at).await {
            Ok(_) => {
                let ms = crate::cluster::registry::now_ms();
                m.health.mark_committed(at, ms);
                Some(ms)
            }
            Err(e) => {
                tracing::warn!(member = %m.label(), error = %e, "cannot record missed write in locdb");
                None
            }
        }
    }

    /// The layout shows that member `no` of `group` lacks writes (switched
    /// on by hand, new in a group, or holding a slot whose previous member
    /// missed one; its health is marked already): records it as of `at`,
    /// so other instances keep reads off it too.
    pub async fn record_layout_miss(&self, group: u32, no: u32, at: UnixTime) {
        if let Err(e) = self.master.mark_failover(group, no, at).await {
            tracing::warn!(group, no, error = %e, "cannot record re-admission in locdb");
        }
    }

    /// Re-sends to `locdb` the missed writes it does not show yet (the
    /// master was unreachable when they happened): the queue of pending
    /// updates is the members' own unrecorded marks, so it is bounded and
    /// survives any number of master outages. At most once a second per
    /// member.
    pub fn reconcile(&self, members: &[Arc<Member>]) {
        let now = (self.clock)();
        for m in members.iter().filter(|m| m.unrecorded_miss()) {
            if m.health.should_record_mark(now) {
                let at = m.health.missed_write_at();
                // Every second while the master is down: quiet.
                self.record_in_background(m, at, true);
            }
        }
    }

    fn record_in_background(&self, m: &Arc<Member>, at: UnixTime, retry: bool) {
        let (master, m) = (self.master.clone(), m.clone());
        self.tasks.spawn(async move {
            let c = &m.config;
            let r: Result<u64, StoreError> = master.mark_failover(c.group, c.no, at).await;
            if r.is_ok() {
                m.health
                    .mark_committed(at, crate::cluster::registry::now_ms());
            }
            match r {
                Err(e) if retry => {
                    tracing::debug!(member = %m.label(), error = %e, "missed write still not recorded in locdb");
                }
                Err(e) => {
                    tracing::warn!(member = %m.label(), error = %e, "cannot record missed write in locdb");
                }
                Ok(_) => {}
            }
        });
    }
}
