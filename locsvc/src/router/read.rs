//! Reads: one readable member, spread by AoR hash, hedged to the next when
//! slow, falling back on failure, and never a member that may lack an
//! acknowledged write of the AoR until it has confirmed it.

use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use super::{RECENT_ERROR_SECS, RouteError, Router, SINGLE_GROUP, StoreOp, Target, member_span};
use crate::cluster::{Group, Member};
use crate::store::StoreError;

impl Router {
    /// Runs `op` on one readable member of `target`, falling back to the
    /// others; `spread` picks which member goes first. With `key` (see
    /// `write_key`), a member that may lack an acknowledged write of that AoR
    /// is asked only once it has confirmed it. Answers by `deadline`.
    pub async fn read<T>(
        &self,
        target: &Target,
        spread: u64,
        key: Option<u64>,
        op: &StoreOp<'_, T>,
        deadline: Instant,
    ) -> Result<(T, u32), RouteError> {
        match timeout_at(deadline, self.read_any(target, spread, key, op)).await {
            Ok(r) => r,
            Err(_) => Err(RouteError::Deadline {
                group: target.group_id(),
            }),
        }
    }

    async fn read_any<T>(
        &self,
        target: &Target,
        spread: u64,
        key: Option<u64>,
        op: &StoreOp<'_, T>,
    ) -> Result<(T, u32), RouteError> {
        let group = match target {
            Target::Single(master) => {
                return op(master.clone()).await.map(|t| (t, 0)).map_err(|error| {
                    RouteError::AllFailed {
                        group: SINGLE_GROUP,
                        error,
                    }
                });
            }
            Target::Group(g) => g,
        };
        tracing::Span::current().record("group", group.id);
        let order = self.read_order(group, spread, key)?;
        let hedge = self.settings.hedge_delay;
        let run = |(m, owes): (Arc<Member>, bool)| {
            let span = member_span(&m, "read");
            async move {
                if owes
                    && let Some(k) = key
                    && !self.caught_up(&m, k).await
                {
                    // Marked as missing the write already; not a failure of
                    // the member's server, so nothing to record.
                    let e = StoreError::Unavailable("missed a write of this AoR".into());
                    return (m, Err(e), false);
                }
                let started = std::time::Instant::now();
                let r = op(m.store.clone()).await;
                m.timers.read.observe(started.elapsed().as_secs_f64());
                (m, r, true)
            }
            .instrument(span)
        };
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        let mut last_err = None;
        loop {
            if pending.is_empty() {
                if next == order.len() {
                    break;
                }
                pending.push(run(order[next].clone()));
                next += 1;
            }
            let done = if next < order.len() {
                match tokio::time::timeout(hedge, pending.next()).await {
                    Ok(d) => d,
                    Err(_) => {
                        // Slow answer: ask the next member too; first good one wins.
                        self.metrics.hedged_reads.inc();
                        pending.push(run(order[next].clone()));
                        next += 1;
                        continue;
                    }
                }
            } else {
                pending.next().await
            };
            match done {
                Some((m, Ok(t), _)) => return Ok((t, m.config.no)),
                Some((m, Err(e), record)) => {
                    if record {
                        self.record_error(&m, &e, "read", false);
                    }
                    last_err = Some(e);
                }
                None => break,
            }
        }
        Err(RouteError::AllFailed {
            group: group.id,
            error: last_err.unwrap_or_else(|| StoreError::Unavailable("no member tried".into())),
        })
    }

    /// The readable members of `group` in the order a read of the AoR `key`
    /// asks them, each with whether it still owes an acknowledged write of
    /// that AoR. Those holding every acknowledged write go first, spread by
    /// `spread`, with open circuits, recent failures and members this
    /// instance is sweeping (their expired rows' deletion competes with the
    /// read: a hedge may still reach them) last; those owing
    /// one follow, to be asked only once they confirmed it: when the only
    /// members that hold the write die (their reads hang or fail), the
    /// answer comes from a partner that finishes it a few milliseconds
    /// later, not from the caller's deadline. Without `key` (Dump, Stats,
    /// which cannot know which AoRs they need) the members lacking fewest
    /// acknowledged writes go first.
    fn read_order(
        &self,
        group: &Group,
        spread: u64,
        key: Option<u64>,
    ) -> Result<Vec<(Arc<Member>, bool)>, RouteError> {
        let members = self.readable_members(group);
        if members.is_empty() {
            return Err(RouteError::NoReadableMember { group: group.id });
        }
        let mut order: Vec<_> = members
            .into_iter()
            .map(|m| {
                let owes = key.is_some_and(|k| m.health.unconfirmed.is_behind(k));
                (m, owes)
            })
            .collect();
        let start = (spread % order.len() as u64) as usize;
        order.rotate_left(start);
        let now = (self.clock)();
        // Stable: keeps the spread among equals.
        order.sort_by_key(|(m, owes)| {
            (
                *owes,
                m.health.circuit.is_open(),
                key.is_none().then(|| m.health.unconfirmed.behind_aors()),
                m.health.failed_recently(now, RECENT_ERROR_SECS),
                m.health.is_sweeping(),
            )
        });
        Ok(order)
    }

    /// Waits until `m` has finished every unconfirmed write of the AoR `key`
    /// (bounded by the member's query deadline, and by the caller's);
    /// false when it failed one, so it may not serve the AoR.
    async fn caught_up(&self, m: &Member, key: u64) -> bool {
        while m.health.unconfirmed.is_behind(key) {
            match m.health.unconfirmed.finished(key) {
                Some(done) => done.await,
                None => break,
            }
        }
        // A failed write is marked before its slot is released.
        m.readable((self.clock)(), self.settings.stale_window)
    }
}
