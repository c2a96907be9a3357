//! The mover (docs/layout-changes.md): while a change of owners is in
//! `Moving`, walks every previous owner's valid rows in pages and carries
//! each AoR whose owner changed to its new group (`LocationService::carry`:
//! under the AoR's locks, the same rule as a REGISTER). When a pass that
//! began after every instance served `Moving` finds nothing left to carry,
//! it ends the epoch (`Done`): no old owner holds a moved AoR, and no
//! instance writes one there any more.
//!
//! One instance moves: the live instance with the smallest id. Two that
//! briefly disagree only repeat each other's work (a carry is idempotent
//! and serialized per AoR). A restart starts the pass over: what was moved
//! is gone from the old owners, so it costs a scan of what is left.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::cluster::layout::Phase;
use crate::cluster::{Member, Registry, Topology};
use crate::location::LocationService;
use crate::metrics::Metrics;
use crate::router::{RouteError, Target};
use crate::store::{SqlStore, StoreError};

/// How hard the mover works.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoverSettings {
    /// Rows read from an old owner per page.
    pub page: u32,
    /// Pause after each page, so a move never crowds out requests.
    pub pause: Duration,
    /// Deadline of one AoR's carry.
    pub carry_timeout: Duration,
}

impl Default for MoverSettings {
    fn default() -> Self {
        Self {
            page: 500,
            pause: Duration::from_millis(20),
            carry_timeout: Duration::from_secs(2),
        }
    }
}

/// Why a pass stopped short.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("carrying {aor}: {error}")]
    Carry { aor: String, error: String },
    #[error("the layout changed during the pass")]
    Changed,
}

/// How far the current pass is.
struct Progress {
    /// Valid rows on the old groups when the pass began.
    total: u64,
    started: tokio::time::Instant,
    scanned: std::sync::atomic::AtomicU64,
}

/// Carries moved AoRs to their new owners.
pub struct Mover {
    service: Arc<LocationService>,
    master: Arc<SqlStore>,
    registry: Arc<Registry>,
    tables: Vec<String>,
    settings: MoverSettings,
    metrics: Arc<Metrics>,
}

impl Mover {
    /// A mover of `tables` (the cluster's location tables).
    pub fn new(
        service: Arc<LocationService>,
        master: Arc<SqlStore>,
        registry: Arc<Registry>,
        tables: Vec<String>,
        settings: MoverSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            service,
            master,
            registry,
            tables,
            settings,
            metrics,
        }
    }

    /// Counts `rows` more scanned and updates the pass's progress and its
    /// ETA (the rate so far, over what is left).
    fn report(&self, p: &Progress, rows: u64) {
        use std::sync::atomic::Ordering;
        let scanned = p.scanned.fetch_add(rows, Ordering::AcqRel) + rows;
        self.metrics.mover_pass_scanned.set(scanned as i64);
        let elapsed = p.started.elapsed().as_secs_f64();
        if scanned > 0 {
            let left = p.total.saturating_sub(scanned) as f64;
            self.metrics
                .mover_eta_seconds
                .set((left * elapsed / scanned as f64).ceil() as i64);
        }
    }

    /// Whether this instance is the one that moves.
    fn elected(&self) -> bool {
        let me = self.registry.id();
        self.registry.everyone().iter().all(|i| i.id >= me)
    }

    /// Moves while an epoch is in `Moving`, until `shutdown`.
    pub async fn run(
        self,
        mut topology: watch::Receiver<Arc<Topology>>,
        shutdown: CancellationToken,
    ) {
        loop {
            let placement = topology.borrow_and_update().placement.clone();
            if placement.phase == Phase::Moving && self.elected() {
                match self.pass(placement.epoch, &topology, &shutdown).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(epoch = placement.epoch, error = %e, "move pass stopped; starting over")
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = topology.changed() => {}
                // Re-check who moves, and whether a clean pass may end it.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// One pass over every old owner; ends the epoch if the pass began
    /// after every instance served `Moving` and found nothing to carry.
    async fn pass(
        &self,
        epoch: i64,
        topology: &watch::Receiver<Arc<Topology>>,
        shutdown: &CancellationToken,
    ) -> Result<(), MoveError> {
        let acked = self
            .master
            .current_layout()
            .await?
            .is_some_and(|r| r.epoch == epoch && r.moving_acked);
        let olds: Vec<u32> = {
            let t = topology.borrow();
            t.placement
                .previous
                .as_ref()
                .map(|p| p.groups().to_vec())
                .unwrap_or_default()
        };
        let mut total = 0;
        for &g in &olds {
            for table in &self.tables {
                total += self.rows_in(g, table, topology).await?;
            }
        }
        let progress = Progress {
            total,
            started: tokio::time::Instant::now(),
            scanned: std::sync::atomic::AtomicU64::new(0),
        };
        self.metrics.mover_pass_rows.set(total as i64);
        self.metrics.mover_pass_scanned.set(0);
        self.metrics.mover_eta_seconds.set(-1);
        let mut carried = 0u64;
        for g in olds {
            for table in &self.tables {
                carried += self
                    .empty_group(epoch, g, table, topology, shutdown, &progress)
                    .await?;
            }
        }
        self.metrics.mover_pass_scanned.set(total as i64);
        self.metrics.mover_eta_seconds.set(0);
        tracing::info!(epoch, carried, acked, "move pass done");
        if acked && carried == 0 {
            let now = crate::cluster::registry::now_ms();
            if self
                .master
                .advance_layout(epoch, Phase::Moving.code(), Phase::Done.code(), now)
                .await?
            {
                tracing::info!(
                    epoch,
                    "every moved subscriber is with its new group: layout change done"
                );
            }
        }
        Ok(())
    }

    /// The member of group `g` to read it whole from (`whole_group_member`).
    fn reader(
        &self,
        g: u32,
        topology: &watch::Receiver<Arc<Topology>>,
    ) -> Result<Arc<Member>, MoveError> {
        let group = topology
            .borrow()
            .groups
            .get(&g)
            .cloned()
            .ok_or(RouteError::GroupMissing(g))?;
        Ok(self
            .service
            .router()
            .whole_group_member(&group)
            .ok_or(RouteError::NoReadableMember { group: g })?)
    }

    /// Valid rows of `table` in group `g` now (what a pass has to scan).
    async fn rows_in(
        &self,
        g: u32,
        table: &str,
        topology: &watch::Receiver<Arc<Topology>>,
    ) -> Result<u64, MoveError> {
        let member = self.reader(g, topology)?;
        Ok(member
            .store
            .stats(table, self.service.now())
            .await?
            .contacts)
    }

    /// Carries every AoR of `table` in group `g` whose owner changed;
    /// returns how many it carried.
    async fn empty_group(
        &self,
        epoch: i64,
        g: u32,
        table: &str,
        topology: &watch::Receiver<Arc<Topology>>,
        shutdown: &CancellationToken,
        progress: &Progress,
    ) -> Result<u64, MoveError> {
        let router = self.service.router();
        let mut after = 0;
        let mut carried = 0;
        loop {
            if shutdown.is_cancelled() || topology.borrow().placement.epoch != epoch {
                return Err(MoveError::Changed);
            }
            let member = self.reader(g, topology)?;
            let now = self.service.now();
            let page = member
                .store
                .dump_page(table, after, self.settings.page, now)
                .await?;
            let full = page.len() as u32 == self.settings.page;
            self.report(progress, page.len() as u64);
            after = page.last().map_or(after, |b| b.row_id);
            let mut aors: Vec<_> = page.into_iter().map(|b| b.aor).collect();
            aors.sort_by(|a, b| a.key().cmp(b.key()));
            aors.dedup_by(|a, b| a.key() == b.key());
            for aor in aors {
                let moving_from_g = match router.route(table, &aor)?.moving {
                    Some((Target::Group(old), _)) => old.id == g,
                    _ => false,
                };
                if !moving_from_g {
                    continue;
                }
                let deadline = tokio::time::Instant::now() + self.settings.carry_timeout;
                match self.service.carry(table, &aor, deadline).await {
                    Ok(true) => {
                        carried += 1;
                        self.metrics.mover_aors.inc();
                    }
                    Ok(false) => {}
                    Err(e) => {
                        return Err(MoveError::Carry {
                            aor: aor.key().to_string(),
                            error: e.to_string(),
                        });
                    }
                }
            }
            if !full {
                return Ok(carried);
            }
            tokio::time::sleep(self.settings.pause).await;
        }
    }
}
