//! Picks the members an operation runs on.
//!
//! Writes go to every writable member of the AoR's group at once, each in a
//! task of its own, and the caller is answered as soon as one member took
//! the write and the others had `ack_grace` to follow: a dead or hung member
//! costs callers nothing. The others finish in the background (bounded by
//! the per-query deadline); a member that fails while a partner succeeded is
//! marked as having missed a write, here and in `locdb`, so it is not read
//! until it is known to be complete again (p_usrloc stops at the first
//! failing member and loses the write; §8.4). Until a member confirms a write
//! whose caller was already answered, it does not serve reads of that AoR
//! (read-your-writes), and later writes of the AoR reach it in order.
//!
//! Reads go to one readable member, spread over the pair by AoR hash, are
//! hedged to the next when slow, and fall back on failure. When no member is
//! readable the request fails: serving possibly stale bindings is worse than
//! a 503 (STYLE: never fail open). Every wait is bounded by the caller's
//! deadline, so an answer (or a typed error) always comes before it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use xxhash_rust::xxh3::xxh3_64;

use crate::clock::Clock;
use crate::cluster::layout::Phase;
use crate::cluster::{Group, Member, Registry, Topology};
use crate::domain::Aor;
use crate::failover::{Failover, Marks, Observation};
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
    #[error(
        "this instance has not reached the master for {0:?}: another may have moved subscribers since"
    )]
    LayoutUnknown(Duration),
    #[error("no member of group {group} answered before the request's deadline")]
    Deadline { group: u32 },
}

impl RouteError {
    /// The group concerned, when there is one.
    pub fn group(&self) -> Option<u32> {
        match self {
            Self::GroupMissing(g)
            | Self::NoReadableMember { group: g }
            | Self::NoWritableMember { group: g }
            | Self::AllFailed { group: g, .. }
            | Self::Deadline { group: g } => Some(*g),
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

/// A write, run on every writable member; owns what it needs, because the
/// members that have not answered when the caller is acknowledged finish in
/// the background.
pub type WriteOp<T> =
    Arc<dyn Fn(Arc<dyn LocationStore>) -> BoxFuture<'static, Result<T, StoreError>> + Send + Sync>;

/// Something a write keeps alive until every member has it or every
/// instance knows which does not: the AoR's cross-instance lock
/// (`aor_lock`), opaque here.
pub type Hold = Arc<dyn std::any::Any + Send + Sync>;

/// Where an AoR's rows are.
pub struct Route {
    /// Its owner: reads go here first, writes end up here.
    pub target: Target,
    /// While a change of owners moves the AoR: its previous owner, and the
    /// phase of the change (`placement`).
    pub moving: Option<(Target, Phase)>,
}

/// How the router waits on members.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouterSettings {
    /// Seconds after a missed write during which a member is not read (the
    /// longest registration).
    pub stale_window: i64,
    /// A read that has not answered after this long is also sent to the
    /// next member; the first good answer wins.
    pub hedge_delay: Duration,
    /// Once one member took a write, how long the others get to confirm it
    /// before the caller is answered without them.
    pub ack_grace: Duration,
    /// How often every instance re-reads `locdb` (bounds the wait for peers
    /// to learn of a recorded miss).
    pub poll_interval: Duration,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            stale_window: 3600,
            hedge_delay: Duration::from_millis(50),
            ack_grace: Duration::from_millis(ACK_GRACE_MS),
            poll_interval: Duration::from_secs(2),
        }
    }
}

/// Default `ack_grace` (owned by failover, whose settings carry it).
pub use crate::failover::ACK_GRACE_MS;

/// Chooses members and runs store operations on them.
#[derive(Clone)]
pub struct Router {
    topology: watch::Receiver<Arc<Topology>>,
    master: Arc<SqlStore>,
    tables: Arc<HashMap<String, TableMode>>,
    settings: RouterSettings,
    clock: Clock,
    metrics: Arc<Metrics>,
    /// Where a member that missed a write is marked.
    marks: Arc<Marks>,
    failover: Option<Arc<Failover>>,
    /// Member writes still running after their caller was answered.
    background: TaskTracker,
    /// The other instances, for held writes that a member missed.
    registry: Option<Arc<Registry>>,
}

/// Seconds during which a member that failed a request is tried last.
const RECENT_ERROR_SECS: i64 = 10;

impl Router {
    /// A router over the snapshots of `topology`, with the clock of
    /// `marks`; `failover`, when given, hears about every transport failure.
    pub fn new(
        topology: watch::Receiver<Arc<Topology>>,
        master: Arc<SqlStore>,
        tables: HashMap<String, TableMode>,
        settings: RouterSettings,
        metrics: Arc<Metrics>,
        marks: Arc<Marks>,
        failover: Option<Arc<Failover>>,
    ) -> Self {
        Self {
            topology,
            master,
            tables: Arc::new(tables),
            settings,
            clock: marks.clock(),
            metrics,
            marks,
            failover,
            background: TaskTracker::new(),
            registry: None,
        }
    }

    /// Held writes that a member missed wait on `registry` for every other
    /// instance to learn of the miss.
    pub fn with_registry(mut self, registry: Arc<Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// The current snapshot.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.borrow().clone()
    }

    /// A receiver that sees every new snapshot (tests await `changed()`).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Topology>> {
        self.topology.clone()
    }

    /// Member writes that outlive their request; shutdown closes and
    /// awaits it so no write is cut off halfway through the group.
    pub fn background(&self) -> &TaskTracker {
        &self.background
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
        Ok(self.route(table, aor)?.target)
    }

    /// Where `aor` lives in `table`, and, while a change of owners moves
    /// it, where it lived before (its rows may be in either).
    pub fn route(&self, table: &str, aor: &Aor) -> Result<Route, RouteError> {
        if let Some(r) = &self.registry
            && let Some(silent) = r.out_of_touch()
        {
            return Err(RouteError::LayoutUnknown(silent));
        }
        if self.table_mode(table)? == TableMode::Single {
            return Ok(Route {
                target: Target::Single(self.master.clone()),
                moving: None,
            });
        }
        let topo = self.topology();
        let group = |gid: u32| {
            topo.groups
                .get(&gid)
                .cloned()
                .map(Target::Group)
                .ok_or(RouteError::GroupMissing(gid))
        };
        let gid = topo
            .partitioner
            .group_for(aor.key())
            .ok_or(RouteError::NoGroups)?;
        let moving = match &topo.placement.previous {
            Some(before) => match before.group_for(aor.key()) {
                Some(old) if old != gid => Some((group(old)?, topo.placement.phase)),
                _ => None,
            },
            None => None,
        };
        Ok(Route {
            target: group(gid)?,
            moving,
        })
    }

    /// The readable member of `group` to read it whole from (a Dump): the
    /// one lacking fewest acknowledged writes.
    pub fn whole_group_member(&self, group: &Group) -> Option<Arc<Member>> {
        self.readable_members(group)
            .into_iter()
            .min_by_key(|m| m.health.unconfirmed.behind_aors())
    }

    /// Members of `group` that may be read now, in `no` order.
    pub fn readable_members(&self, group: &Group) -> Vec<Arc<Member>> {
        let now = (self.clock)();
        group
            .members
            .iter()
            .filter(|m| m.readable(now, self.settings.stale_window))
            .cloned()
            .collect()
    }

    /// The metrics it reports to.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The master store (single tables live there).
    pub fn master(&self) -> &Arc<SqlStore> {
        &self.master
    }

    /// Counts a failed operation on `m`. The circuit opens on a broken
    /// connection, and on a timeout only when the partner took the same
    /// write (`partner_took_it`): a member slower than its partner by the
    /// whole statement deadline is hung; every member timing out is
    /// overload, and opening circuits then would only shift the load.
    fn record_error(&self, m: &Arc<Member>, e: &StoreError, op: &str, partner_took_it: bool) {
        let (group, no) = (m.config.group.to_string(), m.config.no.to_string());
        let kind = if e.is_transport() {
            m.health.count_transport_error((self.clock)());
            let broken = matches!(e, StoreError::Unavailable(_)) || partner_took_it;
            if broken && m.health.circuit.open() {
                self.metrics
                    .circuit_opened
                    .with_label_values(&[&group, &no])
                    .inc();
                tracing::warn!(member = %m.label(), op, error = %e, "circuit open: no requests to this member until a probe answers");
                if let Some(f) = &self.failover {
                    f.circuit_opened(m);
                }
            }
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
            .with_label_values(&[&group, &no, kind])
            .inc();
        if kind == "backlog" {
            // Overload shows in the metrics; a log line per request would
            // add to it.
            tracing::debug!(member = %m.label(), op, error = %e, "member operation failed");
        } else {
            tracing::warn!(member = %m.label(), op, error = %e, "member operation failed");
        }
    }
}

/// The span of one operation on one member (inside the RPC's span, so a
/// member's error is logged with its AoR and group).
fn member_span(m: &Member, op: &'static str) -> tracing::Span {
    tracing::debug_span!("member", group = m.config.group, no = m.config.no, op)
}

/// The key of `aor` in `table` for write order and read-your-writes.
pub fn write_key(table: &str, aor: &Aor) -> u64 {
    xxh3_64(aor.key().as_bytes()) ^ xxh3_64(table.as_bytes()).rotate_left(1)
}

/// A stable number derived from an AoR, to spread its reads.
pub fn spread_of(aor: &Aor) -> u64 {
    xxh3_64(aor.key().as_bytes()) >> 32
}

mod read;
#[cfg(test)]
mod tests;
mod write;
