//! Picks the members an operation runs on.
//!
//! Writes go to every writable member of the AoR's group at once and are
//! acknowledged when at least one took them; a member that failed while its
//! partner succeeded is marked as having missed a write, here and in
//! `locdb`, so it is not read until it is known to be complete again (p_usrloc
//! stops at the first failing member and loses the write; §8.4). Reads go to
//! one readable member, spread over the pair by AoR hash, and fall back to the
//! next. When no member is readable the request fails: serving possibly
//! stale bindings is worse than a 503 (STYLE: never fail open).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use futures::future::{BoxFuture, join_all};
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use xxhash_rust::xxh3::xxh3_64;

use crate::clock::Clock;
use crate::cluster::{Group, Member, Topology};
use crate::domain::Aor;
use crate::failover::{Failover, Observation};
use crate::metrics::Metrics;
use crate::store::{LocationStore, SqlStore, StoreError};

/// How a location table is stored (p_usrloc's `domain_db`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum TableMode {
    /// Partitioned over the location groups.
    Cluster,
    /// One table on the master database.
    Single,
}

/// Why an operation found no member to run on, or every member failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("location table {0:?} is not configured")]
    UnknownTable(String),
    #[error("no location group is configured")]
    NoGroups,
    #[error("group {0} is not configured (crc32-mod needs ids 1..N without holes)")]
    GroupMissing(u32),
    #[error("group {group} has no member that is on and up to date")]
    NoReadableMember { group: u32 },
    #[error("group {group} has no member that is on")]
    NoWritableMember { group: u32 },
    #[error("every member of group {group} failed: {error}")]
    AllFailed { group: u32, error: StoreError },
}

impl RouteError {
    /// The group concerned, when there is one.
    pub fn group(&self) -> Option<u32> {
        match self {
            Self::GroupMissing(g)
            | Self::NoReadableMember { group: g }
            | Self::NoWritableMember { group: g }
            | Self::AllFailed { group: g, .. } => Some(*g),
            _ => None,
        }
    }
}

/// Group id used for `single` tables (they live on the master).
pub const SINGLE_GROUP: u32 = 0;

/// Where an AoR's operations run.
pub enum Target {
    Group(Arc<Group>),
    Single(Arc<SqlStore>),
}

impl Target {
    /// Group id (0 for single tables).
    pub fn group_id(&self) -> u32 {
        match self {
            Self::Group(g) => g.id,
            Self::Single(_) => SINGLE_GROUP,
        }
    }
}

/// A store operation, run on one member; `'s` is what it borrows.
pub type StoreOp<'s, T> =
    dyn Fn(Arc<dyn LocationStore>) -> BoxFuture<'s, Result<T, StoreError>> + Send + Sync + 's;

/// Chooses members and runs store operations on them.
#[derive(Clone)]
pub struct Router {
    topology: watch::Receiver<Arc<Topology>>,
    master: Arc<SqlStore>,
    tables: Arc<HashMap<String, TableMode>>,
    stale_window: i64,
    clock: Clock,
    metrics: Arc<Metrics>,
    failover: Option<Arc<Failover>>,
}

/// Seconds during which a member that failed a request is tried last.
const RECENT_ERROR_SECS: i64 = 10;

impl Router {
    /// A router over the snapshots of `topology`; `failover`, when given,
    /// hears about every transport failure and sets the hedge delay.
    pub fn new(
        topology: watch::Receiver<Arc<Topology>>,
        master: Arc<SqlStore>,
        tables: HashMap<String, TableMode>,
        stale_window: i64,
        clock: Clock,
        metrics: Arc<Metrics>,
        failover: Option<Arc<Failover>>,
    ) -> Self {
        Self {
            topology,
            master,
            tables: Arc::new(tables),
            stale_window,
            clock,
            metrics,
            failover,
        }
    }

    /// The current snapshot.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// A receiver that sees every new snapshot (tests await `changed()`).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.topology.clone()
    }

    /// The mode of `table`, if configured.
    pub fn table_mode(&self, table: &str) -> Result<TableMode, RouteError> {
        self.tables
            .get(table)
            .copied()
            .ok_or_else(|| RouteError::UnknownTable(table.to_string()))
    }

    /// Configured tables and their modes.
    pub fn tables(&self) -> &HashMap<String, TableMode> {
        &self.tables
    }

    /// Where `aor` lives in `table`.
    pub fn target(&self, table: &str, aor: &Aor) -> Result<Target, RouteError> {
        if self.table_mode(table)? == TableMode::Single {
            return Ok(Target::Single(self.master.clone()));
        }
        let topo = self.topology();
        let gid = topo
            .partitioner
            .group_for(aor.key())
            .ok_or(RouteError::NoGroups)?;
        topo.groups
            .get(&gid)
            .cloned()
            .map(Target::Group)
            .ok_or(RouteError::GroupMissing(gid))
    }

    /// Members of `group` that may be read now, in `no` order.
    pub fn readable_members(&self, group: &Group) -> Vec<Arc<Member>> {
        let now = (self.clock)();
        group
            .members
            .iter()
            .filter(|m| m.readable(now, self.stale_window))
            .cloned()
            .collect()
    }

    /// The master store (single tables live there).
    pub fn master(&self) -> &Arc<SqlStore> {
        &self.master
    }

    /// Runs `op` on one readable member of `target`, falling back to the
    /// others; `spread` picks which member goes first.
    pub async fn read<T>(
        &self,
        target: &Target,
        spread: u64,
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
        let mut order = self.readable_members(group);
        if order.is_empty() {
            return Err(RouteError::NoReadableMember { group: group.id });
        }
        let start = (spread % order.len() as u64) as usize;
        order.rotate_left(start);
        // Members that failed lately go last (stable: keeps the spread).
        let now = (self.clock)();
        order.sort_by_key(|m| m.health.failed_recently(now, RECENT_ERROR_SECS));
        let hedge = self
            .failover
            .as_ref()
            .map_or(std::time::Duration::MAX, |f| f.settings().hedge_delay);
        let run = |m: Arc<Member>| async move {
            let r = op(m.store.clone()).await;
            (m, r)
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
                Some((m, Ok(t))) => return Ok((t, m.config.no)),
                Some((m, Err(e))) => {
                    self.record_error(&m, &e, "read");
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

    /// Runs `op` on every writable member of `target` at once. Succeeds with
    /// the successful results when at least one member took the write.
    pub async fn write<T: Send>(
        &self,
        target: &Target,
        op: &StoreOp<'_, T>,
    ) -> Result<Vec<T>, RouteError> {
        let group = match target {
            Target::Single(master) => {
                return op(master.clone()).await.map(|t| vec![t]).map_err(|error| {
                    RouteError::AllFailed {
                        group: SINGLE_GROUP,
                        error,
                    }
                });
            }
            Target::Group(g) => g,
        };
        let writable: Vec<&Arc<Member>> = group.members.iter().filter(|m| m.writable()).collect();
        if writable.is_empty() {
            return Err(RouteError::NoWritableMember { group: group.id });
        }
        let results = join_all(writable.iter().map(|m| op(m.store.clone()))).await;
        let mut ok = Vec::with_capacity(results.len());
        let mut failed = Vec::new();
        for (m, r) in writable.iter().zip(results) {
            match r {
                Ok(t) => ok.push(t),
                Err(e) => {
                    self.record_error(m, &e, "write");
                    failed.push((*m, e));
                }
            }
        }
        if ok.is_empty() {
            // Nothing was acknowledged, so no member is behind another.
            let error = failed
                .into_iter()
                .map(|(_, e)| e)
                .max_by_key(|e| e.is_transport())
                .unwrap_or_else(|| StoreError::Unavailable("no member tried".into()));
            return Err(RouteError::AllFailed {
                group: group.id,
                error,
            });
        }
        for (m, _) in failed {
            self.missed_write(m);
        }
        Ok(ok)
    }

    fn record_error(&self, m: &Arc<Member>, e: &StoreError, op: &str) {
        let kind = if e.is_transport() {
            m.health.count_transport_error((self.clock)());
            if let Some(f) = &self.failover {
                f.observe(m, Observation::RequestFailed);
            }
            "transport"
        } else if matches!(e, StoreError::Backlog(_)) {
            "backlog"
        } else {
            "rejected"
        };
        self.metrics
            .member_errors
            .with_label_values(&[&m.config.group.to_string(), &m.config.no.to_string(), kind])
            .inc();
        if kind == "backlog" {
            // Overload shows in the metrics; a log line per request would
            // add to it.
            tracing::debug!(member = %m.label(), op, error = %e, "member operation failed");
        } else {
            tracing::warn!(member = %m.label(), op, error = %e, "member operation failed");
        }
    }

    /// Keeps reads off `m` until it is complete again, in this instance at
    /// once and in every instance through `locdb.failover`.
    fn missed_write(&self, m: &Arc<Member>) {
        let now = (self.clock)();
        m.health.mark_missed(now);
        self.metrics
            .member_missed_writes
            .with_label_values(&[&m.config.group.to_string(), &m.config.no.to_string()])
            .inc();
        if m.health.should_record_mark(now) {
            let master = self.master.clone();
            let m = m.clone();
            tokio::spawn(async move {
                let c = &m.config;
                if let Err(e) = master.mark_failover(c.group, c.no, now).await {
                    tracing::warn!(member = %m.label(), error = %e, "cannot record missed write in locdb");
                }
            });
        }
    }
}

/// A stable number derived from an AoR, to spread its reads.
pub fn spread_of(aor: &Aor) -> u64 {
    xxh3_64(aor.key().as_bytes()) >> 32
}
