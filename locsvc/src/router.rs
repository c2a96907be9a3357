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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout_at};
use tokio_util::task::TaskTracker;
use tracing::Instrument;
use xxhash_rust::xxh3::xxh3_64;

use crate::clock::Clock;
use crate::cluster::{Group, Member, Topology};
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
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            stale_window: 3600,
            hedge_delay: Duration::from_millis(50),
            ack_grace: Duration::from_millis(ACK_GRACE_MS),
        }
    }
}

/// Default `ack_grace`: above the spread between two healthy members'
/// confirmations of one write at any sustainable load (BENCHMARKS.md,
/// "acknowledge on the first member").
pub const ACK_GRACE_MS: u64 = 20;

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

    /// The master store (single tables live there).
    pub fn master(&self) -> &Arc<SqlStore> {
        &self.master
    }

    /// Runs `op` on one readable member of `target`, falling back to the
    /// others; `spread` picks which member goes first. With `key` (see
    /// `write_key`), members that may lack an acknowledged write of that AoR
    /// are never asked. Answers by `deadline`.
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
                    let e = StoreError::Unavailable("missed a write of this AoR".into());
                    return (m, Err(e));
                }
                let r = op(m.store.clone()).await;
                (m, r)
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
                Some((m, Ok(t))) => return Ok((t, m.config.no)),
                Some((m, Err(e))) => {
                    self.record_error(&m, &e, "read", false);
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
    /// `spread`, with open circuits and recent failures last; those owing
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

    /// Runs `op` on every writable member of `target` at once and answers
    /// with the results of the members that confirmed, as soon as one did
    /// and the others had `ack_grace` to follow, or by `deadline`. `key`
    /// (see `write_key`) names the AoR, for write order and read-your-writes.
    /// The members that have not answered yet finish in the background.
    pub async fn write<T: Send + 'static>(
        &self,
        target: &Target,
        key: u64,
        op: WriteOp<T>,
        deadline: Instant,
    ) -> Result<Vec<T>, RouteError> {
        let group = match target {
            Target::Single(master) => {
                return match timeout_at(deadline, op(master.clone())).await {
                    Ok(r) => r.map(|t| vec![t]).map_err(|error| RouteError::AllFailed {
                        group: SINGLE_GROUP,
                        error,
                    }),
                    Err(_) => Err(RouteError::Deadline {
                        group: SINGLE_GROUP,
                    }),
                };
            }
            Target::Group(g) => g,
        };
        let writable: Vec<Arc<Member>> = group
            .members
            .iter()
            .filter(|m| m.writable())
            .cloned()
            .collect();
        if writable.is_empty() {
            return Err(RouteError::NoWritableMember { group: group.id });
        }
        tracing::Span::current().record("group", group.id);
        let sent = self.dispatch(&writable, key, &op);
        let mut rx = sent.results;
        let mut answered = vec![false; writable.len()];
        let (mut oks, mut errors) = (Vec::new(), Vec::new());
        let mut until = deadline;
        while let Ok(Some((i, r))) = timeout_at(until, rx.recv()).await {
            answered[i] = true;
            match r {
                Ok(t) => {
                    if oks.is_empty() {
                        until = deadline.min(Instant::now() + self.settings.ack_grace);
                    }
                    oks.push(t);
                }
                Err(e) => errors.push(e),
            }
        }
        if !oks.is_empty() {
            for (i, m) in writable.iter().enumerate() {
                if sent.running[i] && !answered[i] && m.health.unconfirmed.mark_behind(key) {
                    self.metrics
                        .writes_acked_before_member
                        .with_label_values(&[&m.config.group.to_string(), &m.config.no.to_string()])
                        .inc();
                }
            }
            return Ok(oks);
        }
        if sent.running.iter().zip(&answered).all(|(r, a)| !r || *a) {
            // Nothing was acknowledged, so no member is behind another.
            let error = errors
                .into_iter()
                .max_by_key(|e| e.is_transport())
                .unwrap_or_else(|| {
                    StoreError::Unavailable("no member could be sent the write".into())
                });
            return Err(RouteError::AllFailed {
                group: group.id,
                error,
            });
        }
        Err(RouteError::Deadline { group: group.id })
    }

    /// Starts `op` on each of `members` in a task of its own (skipping those
    /// whose circuit is open while another's is closed: they miss the
    /// write), and settles the missed-write bookkeeping as answers come.
    fn dispatch<T: Send + 'static>(
        &self,
        members: &[Arc<Member>],
        key: u64,
        op: &WriteOp<T>,
    ) -> Dispatched<T> {
        // Never skip every member: with all circuits open, all are tried.
        let skip_open = members.iter().any(|m| !m.health.circuit.is_open());
        let outcome = Arc::new(Outcome::new(members.len()));
        let (tx, results) = mpsc::unbounded_channel();
        let mut running = vec![false; members.len()];
        for (i, m) in members.iter().enumerate() {
            if skip_open && m.health.circuit.is_open() {
                self.metrics
                    .circuit_skips
                    .with_label_values(&[&m.config.group.to_string(), &m.config.no.to_string()])
                    .inc();
                outcome.settle(self, m, false);
                continue;
            }
            // Enqueued here, in dispatch order: that order is the member's.
            let Some((ticket, earlier)) = m.health.unconfirmed.enqueue(key) else {
                tracing::debug!(member = %m.label(), "too many unfinished writes of one AoR: skipped");
                outcome.settle(self, m, false);
                continue;
            };
            running[i] = true;
            let write = op(m.store.clone());
            let (this, m, outcome, tx) = (self.clone(), m.clone(), outcome.clone(), tx.clone());
            let span = member_span(&m, "write");
            self.background.spawn(
                async move {
                    if let Some(earlier) = earlier {
                        earlier.await;
                    }
                    let r = write.await;
                    // Marks come before the ticket ends: a failed member never
                    // looks complete in between.
                    let partner_took_it = outcome.settle(&this, &m, r.is_ok());
                    if let Err(e) = &r {
                        this.record_error(&m, e, "write", partner_took_it);
                    }
                    m.health.unconfirmed.finish(ticket);
                    let _ = tx.send((i, r));
                }
                .instrument(span),
            );
        }
        Dispatched { running, results }
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

/// The members a write was started on, and where their answers arrive.
struct Dispatched<T> {
    /// Per member: whether the write was sent (false: skipped, circuit open).
    running: Vec<bool>,
    results: mpsc::UnboundedReceiver<(usize, Result<T, StoreError>)>,
}

/// What the members of one write answered so far: a member that failed is
/// marked as having missed the write as soon as a partner is known to have
/// taken it (when every member fails, nobody is behind anybody).
struct Outcome {
    state: Mutex<OutcomeState>,
}

struct OutcomeState {
    succeeded: bool,
    /// Failed before any success: marked when one arrives.
    failed: Vec<Arc<Member>>,
    /// Members yet to answer, and when the first confirmed, for the
    /// confirmation-spread histogram.
    left: usize,
    first_ok: Option<Instant>,
    all_ok: bool,
    pair: bool,
}

impl Outcome {
    fn new(members: usize) -> Self {
        Self {
            state: Mutex::new(OutcomeState {
                succeeded: false,
                failed: Vec::new(),
                left: members,
                first_ok: None,
                all_ok: true,
                pair: members > 1,
            }),
        }
    }

    /// Records `m`'s answer; true when some member of the write succeeded.
    fn settle(&self, router: &Router, m: &Arc<Member>, ok: bool) -> bool {
        let (behind, spread, succeeded) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.left = s.left.saturating_sub(1);
            s.all_ok &= ok;
            let behind = if ok {
                s.succeeded = true;
                s.first_ok.get_or_insert_with(Instant::now);
                std::mem::take(&mut s.failed)
            } else if s.succeeded {
                vec![m.clone()]
            } else {
                s.failed.push(m.clone());
                Vec::new()
            };
            let spread = (s.left == 0 && s.all_ok && s.pair)
                .then(|| s.first_ok.map(|t| t.elapsed()))
                .flatten();
            (behind, spread, s.succeeded)
        };
        for m in &behind {
            router.marks.missed_write(m);
        }
        if let Some(d) = spread {
            router.metrics.write_confirm_spread.observe(d.as_secs_f64());
        }
        succeeded
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

#[cfg(test)]
mod tests;
