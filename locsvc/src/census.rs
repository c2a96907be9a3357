//! Contacts and AoRs per group, counted every `cluster.census_interval_ms`
//! on one readable member of each group for the `locsvc_group_contacts`
//! and `locsvc_group_aors` gauges. A count is a full scan of the table, so
//! it has a deadline of its own (half the interval) instead of the
//! per-statement one, and a failed count is logged, never held against
//! the member (it is not a request).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::router::{Router, TableMode};

/// The periodic count.
pub struct Census {
    router: Router,
    interval: Duration,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// The (table, group) series set by the last pass.
    series: Mutex<BTreeSet<(String, String)>>,
}

impl Census {
    /// A census over the router's current topology every `interval`.
    pub fn new(router: Router, interval: Duration, clock: Clock, metrics: Arc<Metrics>) -> Self {
        Self {
            router,
            interval,
            clock,
            metrics,
            series: Mutex::default(),
        }
    }

    /// Counts every group of every clustered table once; sets the gauges
    /// and drops those of groups no longer in the layout.
    pub async fn count_once(&self) {
        let now = (self.clock)();
        let within = self.interval / 2;
        let topo = self.router.topology();
        let (contacts, aors) = (&self.metrics.group_contacts, &self.metrics.group_aors);
        let mut seen = BTreeSet::new();
        for (table, mode) in self.router.tables() {
            if *mode != TableMode::Cluster {
                continue;
            }
            for g in topo.groups.values() {
                let group = g.id.to_string();
                seen.insert((table.clone(), group.clone()));
                let Some(m) = self.router.whole_group_member(g) else {
                    continue;
                };
                match m.store.stats_within(table, now, within).await {
                    Ok(st) => {
                        let labels = [table.as_str(), group.as_str()];
                        contacts.with_label_values(&labels).set(st.contacts as i64);
                        aors.with_label_values(&labels).set(st.aors as i64);
                    }
                    Err(e) => {
                        tracing::warn!(member = %m.label(), %table, error = %e, "census count failed")
                    }
                }
            }
        }
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        for (table, group) in series.difference(&seen) {
            for gauge in [contacts, aors] {
                let _ = gauge.remove_label_values(&[table, group]);
            }
        }
        *series = seen;
    }

    /// Counts every interval until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.count_once() => {}
                    }
                }
            }
        }
    }
}
