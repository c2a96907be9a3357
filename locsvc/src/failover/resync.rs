//! Resync: fills a member that missed writes from its up-to-date partner, so
//! it can be read again without waiting for every binding it lacks to
//! expire (p_usrloc waits `expire_time`, or forever after its stale-cache
//! quirk, reference §4).
//!
//! The member keeps taking every write while this runs. Two passes per table:
//! - copy: every valid row of the partner is upserted, never over a newer
//!   version (a refresh that raced with the copy wins);
//! - prune: rows the partner no longer has are deleted, but only rows last
//!   modified at or before `cutoff`, the member's recorded miss
//!   (`locdb.failover`). Later rows came from the live write fan-out, which
//!   reached the member since; the caller starts a resync only after that
//!   second has passed, so no row written during the resync is in range.
//!
//! It is bounded (batches of `batch` rows), throttled (`pause` between
//! batches) and resumable (`Progress` survives a failed batch; the next
//! attempt continues where it stopped). Afterwards the caller clears
//! `locdb.failover` only if no newer miss was recorded meanwhile.

use std::time::Duration;

use crate::domain::UnixTime;
use crate::metrics::ResyncMeter;
use crate::store::{LocationStore, StoreError};

/// Resync throttling.
#[derive(Debug, Clone, PartialEq)]
pub struct ResyncSettings {
    pub batch: u32,
    pub pause: Duration,
}

impl Default for ResyncSettings {
    fn default() -> Self {
        Self {
            batch: 500,
            pause: Duration::from_millis(2),
        }
    }
}

/// Where a resync stands, so a failed attempt resumes instead of restarting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    table: usize,
    pruning: bool,
    after: i64,
    /// Rows copied and pruned so far.
    pub copied: u64,
    pub pruned: u64,
}

/// Runs (or resumes) a resync of `target` from `source` over `tables`.
/// `cutoff` is the recorded miss (see above); `None` copies without pruning
/// (a merge, when neither member is known complete). `now` filters expired
/// rows. Each page copied is counted on `meter` (the target's series).
#[allow(clippy::too_many_arguments)]
pub async fn resync(
    source: &dyn LocationStore,
    target: &dyn LocationStore,
    tables: &[String],
    cutoff: Option<UnixTime>,
    now: UnixTime,
    s: &ResyncSettings,
    p: &mut Progress,
    meter: &ResyncMeter,
) -> Result<(), StoreError> {
    // Back to 0 however the resync ends (an error, shutdown mid-page).
    let _active = svc_base::metrics::InFlight::enter(&meter.active);
    while let Some(table) = tables.get(p.table) {
        let page = if p.pruning {
            target.dump_page(table, p.after, s.batch, now).await?
        } else {
            source.dump_page(table, p.after, s.batch, now).await?
        };
        let Some(last) = page.last().map(|r| r.row_id) else {
            // Pass done: copy → prune (unless merging) → next table.
            if p.pruning || cutoff.is_none() {
                p.table += 1;
                p.pruning = false;
            } else {
                p.pruning = true;
            }
            p.after = 0;
            continue;
        };
        if p.pruning {
            let old: Vec<String> = page
                .iter()
                .filter(|r| cutoff.is_some_and(|c| r.binding.last_modified <= c))
                .map(|r| r.binding.ruid.clone())
                .collect();
            let present = source.existing_ruids(table, &old).await?;
            let gone: Vec<String> = old.into_iter().filter(|r| !present.contains(r)).collect();
            target.delete_ruids(table, &gone).await?;
            p.pruned += gone.len() as u64;
        } else {
            target.copy_in(table, &page).await?;
            p.copied += page.len() as u64;
            meter.rows.inc_by(page.len() as u64);
        }
        meter.last_progress.set(chrono::Utc::now().timestamp());
        p.after = last;
        tokio::time::sleep(s.pause).await;
    }
    Ok(())
}
