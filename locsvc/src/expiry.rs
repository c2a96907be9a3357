//! Removes expired bindings. Lookups never return them anyway (they filter
//! on `expires > now`); the sweeper keeps tables from growing without bound,
//! which p_usrloc never does (reference §6).
//!
//! Every pass deletes, on every member that is on (and on the master for
//! single tables), rows that expired more than `grace` seconds ago, in
//! batches of `batch` rows so no statement holds locks for long, one
//! database server at a time (its members marked, so this instance reads
//! their partners meanwhile), at most `max_rows_per_sec` rows per second.
//! Deleting an expired row is idempotent, so several instances may sweep
//! the same databases. A pass does at most `max_batches` batches per member
//! and table, so a backlog is worked off over several passes while requests
//! keep flowing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::cluster::Member;
use crate::domain::UnixTime;
use crate::metrics::Metrics;
use crate::router::{Router, TableMode};
use crate::store::LocationStore;

/// The sweep's default rate: 1 M expired bindings (2 M rows on two
/// members) go in under 17 minutes, orders of magnitude above the expiry
/// rate of a healthy population, while lookups keep their latency.
pub const DEFAULT_MAX_ROWS_PER_SEC: u32 = 2000;

/// Sweeper settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSettings {
    pub interval: Duration,
    pub batch: u32,
    pub max_batches: u32,
    pub grace: i64,
    /// Rows deleted per second at most, over every member (0: no limit).
    pub max_rows_per_sec: u32,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            batch: 1000,
            max_batches: 100,
            grace: 0,
            max_rows_per_sec: DEFAULT_MAX_ROWS_PER_SEC,
        }
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepReport {
    pub deleted: u64,
    /// (member, table) pairs that failed; retried next pass.
    pub failures: u32,
}

/// The expiry task.
#[derive(Clone)]
pub struct Sweeper {
    router: Router,
    settings: SweepSettings,
    clock: Clock,
    metrics: Arc<Metrics>,
}

impl Sweeper {
    /// A sweeper over the router's current topology.
    pub fn new(
        router: Router,
        settings: SweepSettings,
        clock: Clock,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            router,
            settings,
            clock,
            metrics,
        }
    }

    /// One pass at time `now`.
    pub async fn sweep_once(&self, now: UnixTime) -> SweepReport {
        let before = now.saturating_sub(self.settings.grace);
        let mut report = SweepReport::default();
        let topo = self.router.topology();
        for (table, mode) in self.router.tables() {
            // The worst member's backlog: one lagging copy is enough to
            // keep a table growing.
            let mut lag = None;
            match mode {
                TableMode::Single => {
                    let master = self.router.master().clone();
                    lag = self
                        .sweep_store("master", master.as_ref(), table, before, &mut report)
                        .await;
                }
                TableMode::Cluster => {
                    // One member at a time (the loop awaits each), server by
                    // server, with every member on the same database server
                    // marked meanwhile: a server deleting (and purging and
                    // flushing behind it) is slow for all its databases, so
                    // this instance reads their partners on other servers.
                    let mut members: Vec<&Arc<Member>> = topo
                        .groups
                        .values()
                        .flat_map(|g| g.members.iter())
                        .filter(|m| m.writable())
                        .collect();
                    members.sort_by_key(|m| server_of(m));
                    for m in members {
                        let server = server_of(m);
                        let _marks: Vec<_> = topo
                            .groups
                            .values()
                            .flat_map(|g| g.members.iter())
                            .filter(|o| server_of(o) == server)
                            .map(|o| o.health.sweeping())
                            .collect();
                        let behind = self
                            .sweep_store(&m.label(), m.store.as_ref(), table, before, &mut report)
                            .await;
                        lag = lag.max(behind);
                    }
                }
            }
            // Unknown everywhere (no member answered): keep the last value.
            if let Some(lag) = lag {
                self.metrics
                    .sweep_lag
                    .with_label_values(&[table.as_str()])
                    .set(lag);
            }
        }
        self.metrics.sweep_last_pass.set((self.clock)());
        if report.deleted > 0 {
            tracing::debug!(deleted = report.deleted, "expired bindings swept");
        }
        report
    }

    /// Sweeps `table` on one store (at most `max_batches` batches); returns
    /// how many seconds its oldest expired row left behind had been expired
    /// at `before` (0 when none; None when that cannot be read now).
    async fn sweep_store(
        &self,
        label: &str,
        store: &dyn LocationStore,
        table: &str,
        before: UnixTime,
        report: &mut SweepReport,
    ) -> Option<i64> {
        for _ in 0..self.settings.max_batches {
            match store
                .sweep_expired(table, before, self.settings.batch)
                .await
            {
                Ok(n) => {
                    report.deleted += n;
                    self.metrics.contacts_swept.inc_by(n);
                    self.pace(n).await;
                    if n < u64::from(self.settings.batch) {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(member = %label, table, error = %e, "expiry sweep failed");
                    report.failures += 1;
                    break;
                }
            }
        }
        match store.oldest_expiry(table).await {
            Ok(Some(t)) if t < before => Some(before - t),
            Ok(_) => Some(0),
            Err(e) => {
                tracing::debug!(member = %label, table, error = %e, "cannot read the sweep's lag");
                None
            }
        }
    }

    /// Waits after a batch of `deleted` rows so the sweep stays within
    /// `max_rows_per_sec`. A database deleting flat out (and purging and
    /// flushing behind it) slows every query on its server and, on a
    /// shared machine, on its neighbours: the rate, not the batch size,
    /// decides what lookups feel (BENCHMARKS.md, "Sweep").
    async fn pace(&self, deleted: u64) {
        match self.settings.max_rows_per_sec {
            // Let request traffic in between batches.
            0 => tokio::task::yield_now().await,
            rate => {
                tokio::time::sleep(Duration::from_secs_f64(deleted as f64 / f64::from(rate))).await
            }
        }
    }

    /// Sweeps every interval until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let now = (self.clock)();
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.sweep_once(now) => {}
                    }
                }
            }
        }
    }
}

/// The database server a member lives on: its TCP endpoint, or (embedded
/// databases) its own URL.
fn server_of(m: &Member) -> String {
    match m.config.url.tcp_endpoint() {
        Some((host, port)) => format!("{host}:{port}"),
        None => m.config.url.expose().to_string(),
    }
}
