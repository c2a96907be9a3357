//! Removes expired bindings. Lookups never return them anyway (they filter
//! on `expires > now`); the sweeper keeps tables from growing without bound,
//! which p_usrloc never does (reference §6).
//!
//! Every pass deletes, on every member that is on (and on the master for
//! single tables), rows that expired more than `grace` seconds ago, in
//! batches of `batch` rows so no statement holds locks for long. Deleting an
//! expired row is idempotent, so several instances may sweep the same
//! databases. A pass does at most `max_batches` batches per member and
//! table, so a backlog is worked off over several passes while requests keep
//! flowing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::domain::UnixTime;
use crate::metrics::Metrics;
use crate::router::{Router, TableMode};
use crate::store::LocationStore;

/// Sweeper settings.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepSettings {
    pub interval: Duration,
    pub batch: u32,
    pub max_batches: u32,
    pub grace: i64,
}

impl Default for SweepSettings {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            batch: 1000,
            max_batches: 100,
            grace: 0,
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
                    // One member at a time (the loop awaits each), marked
                    // so this instance's reads go to its partners
                    // meanwhile.
                    for g in topo.groups.values() {
                        for m in g.members.iter().filter(|m| m.writable()) {
                            let _mark = m.health.sweeping();
                            let behind = self
                                .sweep_store(
                                    &m.label(),
                                    m.store.as_ref(),
                                    table,
                                    before,
                                    &mut report,
                                )
                                .await;
                            lag = lag.max(behind);
                        }
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
                    if n < u64::from(self.settings.batch) {
                        break;
                    }
                    // Let request traffic in between batches.
                    tokio::task::yield_now().await;
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
