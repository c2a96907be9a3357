//! Failover: detecting broken members and acting on it.
//!
//! Owns: the per-member detectors (`monitor`, fed by request errors from the
//! router and by active probes), the probe loop, and carrying out decisions
//! as conditional `locdb` updates on the master — so every instance sharing
//! the master sees the same picture, and when several instances decide the
//! same thing at once only one update lands. Does not own: which member a
//! request uses (router) or what `locdb` says (cluster watcher, which this
//! module nudges to reload right after a change).

pub mod accrual;
pub mod circuit;
pub mod health;
pub mod marks;
pub mod monitor;
pub mod resync;
#[cfg(test)]
mod tests;
pub mod unconfirmed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDateTime;

use futures::future::join_all;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::cluster::{Member, MemberStatus, Topology};
use crate::metrics::Metrics;
use crate::store::rows::to_db_time;
use crate::store::{LocdbUpdates, StoreError};
pub use circuit::Circuit;
pub use health::MemberHealth;
pub use marks::{Marks, layout_miss};
pub use monitor::{Decision, MonitorSettings, Observation};
pub use resync::{Progress, ResyncSettings};
pub use unconfirmed::Unconfirmed;

/// Failover settings.
#[derive(Debug, Clone, PartialEq)]
pub struct FailoverSettings {
    pub monitor: MonitorSettings,
    /// How often every member is probed.
    pub probe_interval: Duration,
    /// Table the probes query (a real indexed query, not a bare connect).
    pub probe_table: String,
    /// A read that has not answered after this long is also sent to the
    /// next member; the first good answer wins, so a hung member does not
    /// hold reads up.
    pub hedge_delay: Duration,
    /// Once one member took a write, how long the others get to confirm it
    /// before the caller is answered without them (they finish in the
    /// background; see `router`).
    pub ack_grace: Duration,
    /// While a member's circuit is open, how often it is probed (a probe
    /// that answers closes it; failed ones feed the detector).
    pub circuit_probe_interval: Duration,
    pub resync: ResyncSettings,
    /// 1: switch a failing member off; 2: replace it with a spare from
    /// another risk group, or switch it off when there is none (p_usrloc's
    /// `failover_level`).
    pub level: u8,
    /// Partitioned tables a resync copies.
    pub tables: Vec<String>,
    /// Seconds after which a member that missed writes cannot lack anything
    /// (the longest registration): the fallback when no resync is possible.
    pub window: i64,
}

impl Default for FailoverSettings {
    fn default() -> Self {
        Self {
            monitor: MonitorSettings::default(),
            probe_interval: Duration::from_secs(1),
            probe_table: "location".into(),
            hedge_delay: Duration::from_millis(50),
            ack_grace: Duration::from_millis(ACK_GRACE_MS),
            circuit_probe_interval: Duration::from_millis(100),
            resync: ResyncSettings::default(),
            level: 1,
            tables: vec!["location".into()],
            window: 3600,
        }
    }
}

/// Default `ack_grace`: above the spread between two healthy members'
/// confirmations of one write at any sustainable load (BENCHMARKS.md,
/// "acknowledge on the first member").
pub const ACK_GRACE_MS: u64 = 20;

type MemberKey = (u32, u32, String);

/// Whole seconds after a member's recorded miss (or re-admission) before it
/// is resynced.
const RESYNC_SETTLE_SECS: i64 = 1;

/// What one probe found.
struct ProbeResult {
    r: Result<(), StoreError>,
    took: Duration,
    /// The member's circuit epoch when the probe started.
    epoch: u64,
}

fn key(m: &Member) -> MemberKey {
    (
        m.config.group,
        m.config.no,
        m.config.url.expose().to_string(),
    )
}

/// The failover engine of one instance.
pub struct Failover {
    settings: FailoverSettings,
    monitors: Mutex<HashMap<MemberKey, monitor::Monitor>>,
    master: Arc<dyn LocdbUpdates>,
    marks: Arc<Marks>,
    clock: Clock,
    started: tokio::time::Instant,
    reload: Arc<Notify>,
    metrics: Arc<Metrics>,
    topology: watch::Receiver<Arc<Topology>>,
    /// Members kept on for want of a healthy partner, to reconsider.
    kept: Mutex<Vec<MemberKey>>,
    resyncing: AtomicBool,
    /// Unfinished resyncs: progress, cutoff, and the `failover` value they
    /// started from (a newer miss restarts them).
    resumable: Mutex<HashMap<MemberKey, (Progress, i64, NaiveDateTime)>>,
    /// Members whose open circuit is being probed.
    fast_probing: Mutex<std::collections::HashSet<MemberKey>>,
    /// Cancelled when `run` ends: stops those probes.
    stop: CancellationToken,
    /// Decisions, resyncs and probes running in the background; shutdown
    /// awaits them.
    tasks: TaskTracker,
}

impl Failover {
    /// An engine acting on the master `marks` records on, with its clock,
    /// metrics and task tracker; `reload` asks the watcher to re-read
    /// `locdb` at once after a change.
    pub fn new(
        settings: FailoverSettings,
        marks: Arc<Marks>,
        topology: watch::Receiver<Arc<Topology>>,
        reload: Arc<Notify>,
    ) -> Self {
        Self {
            settings,
            monitors: Mutex::new(HashMap::new()),
            master: marks.master.clone(),
            clock: marks.clock.clone(),
            started: tokio::time::Instant::now(),
            reload,
            metrics: marks.metrics.clone(),
            tasks: marks.tasks.clone(),
            marks,
            topology,
            kept: Mutex::new(Vec::new()),
            resyncing: AtomicBool::new(false),
            resumable: Mutex::new(HashMap::new()),
            fast_probing: Mutex::new(std::collections::HashSet::new()),
            stop: CancellationToken::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &FailoverSettings {
        &self.settings
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Feeds one observation of `member`; carries out any decision in the
    /// background.
    pub fn observe(self: &Arc<Self>, member: &Arc<Member>, o: Observation) {
        let decision = {
            let mut monitors = self.monitors.lock().unwrap_or_else(|e| e.into_inner());
            let m = monitors.entry(key(member)).or_insert_with(|| {
                monitor::Monitor::new(self.settings.monitor, member.config.status)
            });
            m.set_status(member.config.status);
            let d = m.observe(o, self.now_ms());
            (d, m.total_errors())
        };
        if let (d @ (Decision::Deactivate | Decision::Readmit), errors) = decision {
            let this = self.clone();
            let member = member.clone();
            self.tasks
                .spawn(async move { this.act(&member, d, errors).await });
        }
    }

    /// True when another member of `member`'s group is on, up to date and
    /// answered its last probe: only then is switching `member` off a gain.
    /// Under overload every member is slow; without this rule the detector
    /// could switch off the healthy one first and leave only the dead one.
    fn partner_healthy(&self, member: &Member) -> bool {
        let topo = self.topology.borrow().clone();
        let now = (self.clock)();
        topo.groups.get(&member.config.group).is_some_and(|g| {
            g.members.iter().any(|o| {
                o.config.no != member.config.no
                    && o.readable(now, self.settings.window)
                    && o.health.last_probe().is_some_and(|(ok, _)| ok)
            })
        })
    }

    async fn act(&self, member: &Member, d: Decision, errors: u32) {
        let c = &member.config;
        let now = (self.clock)();
        if d == Decision::Deactivate && !self.partner_healthy(member) {
            self.metrics
                .failover_actions
                .with_label_values(&["deactivate", "kept_last"])
                .inc();
            tracing::warn!(member = %member.label(), errors, "failing, but no healthy partner: keeping it on");
            // Decided again after the next probe round, not on every error.
            self.kept
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(key(member));
            return;
        }
        if d == Decision::Deactivate && self.settings.level >= 2 {
            match self.promote(member, errors, now).await {
                Ok(true) => return,
                Ok(false) => {} // no spare: switch it off instead
                Err(e) => {
                    tracing::error!(member = %member.label(), error = %e, "cannot promote a spare");
                    self.metrics
                        .failover_actions
                        .with_label_values(&["promote", "master_error"])
                        .inc();
                    let mut monitors = self.monitors.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(m) = monitors.get_mut(&key(member)) {
                        m.retry();
                    }
                    return;
                }
            }
        }
        let r = match d {
            Decision::Deactivate => {
                self.master
                    .deactivate(c.group, c.no, c.url.expose(), errors, now)
                    .await
            }
            Decision::Readmit => {
                self.master
                    .readmit(c.group, c.no, c.url.expose(), now)
                    .await
            }
            Decision::Keep => return,
        };
        let what = if d == Decision::Deactivate {
            "deactivate"
        } else {
            "readmit"
        };
        match r {
            Ok(n) => {
                self.metrics
                    .failover_actions
                    .with_label_values(&[what, if n > 0 { "done" } else { "already_done" }])
                    .inc();
                tracing::warn!(member = %member.label(), action = what, errors, applied = n > 0, "failover");
                self.reload.notify_one();
            }
            Err(e) => {
                // The master is unreachable: allow the decision again so the
                // next observation retries it.
                self.metrics
                    .failover_actions
                    .with_label_values(&[what, "master_error"])
                    .inc();
                tracing::error!(member = %member.label(), action = what, error = %e, "cannot record failover in locdb");
                let mut monitors = self.monitors.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = monitors.get_mut(&key(member)) {
                    m.retry();
                }
            }
        }
    }

    /// An operator's status change (SetStatus): dated now like the
    /// engine's own changes, and applied by this instance at once. Rows
    /// changed (0: no such member).
    pub async fn set_status(
        &self,
        group: u32,
        no: u32,
        status: MemberStatus,
    ) -> Result<u64, StoreError> {
        let n = self
            .master
            .set_status(group, no, status.code(), (self.clock)())
            .await?;
        if n > 0 {
            self.reload.notify_one();
        }
        Ok(n)
    }

    /// Replaces `member` with a spare; Ok(false) when there is none.
    async fn promote(&self, member: &Member, errors: u32, now: i64) -> Result<bool, StoreError> {
        let c = &member.config;
        let topo = self.topology.borrow().clone();
        let mut avoid: Vec<i64> = topo
            .groups
            .get(&c.group)
            .map(|g| g.members.iter().map(|m| m.config.rg).collect())
            .unwrap_or_default();
        avoid.push(c.rg);
        avoid.sort_unstable();
        avoid.dedup();
        match self
            .master
            .promote_spare(c.group, c.no, c.url.expose(), &avoid, errors, now)
            .await?
        {
            crate::store::Promotion::Promoted { spare } => {
                self.metrics
                    .failover_actions
                    .with_label_values(&["promote", "done"])
                    .inc();
                tracing::warn!(member = %member.label(), spare, "failover: spare promoted");
                self.reload.notify_one();
                Ok(true)
            }
            crate::store::Promotion::AlreadyDone => {
                self.metrics
                    .failover_actions
                    .with_label_values(&["promote", "already_done"])
                    .inc();
                self.reload.notify_one();
                Ok(true)
            }
            crate::store::Promotion::NoSpare => {
                tracing::warn!(member = %member.label(), "no spare outside the group's risk groups");
                Ok(false)
            }
        }
    }

    /// Probes every group member once, concurrently.
    pub async fn probe_once(self: &Arc<Self>, topo: &Topology) {
        let members: Vec<Arc<Member>> = topo
            .groups
            .values()
            .flat_map(|g| g.members.iter().cloned())
            .filter(|m| m.config.status != MemberStatus::Maintenance)
            .collect();
        {
            // Forget detectors of members that left the layout.
            let live: std::collections::HashSet<MemberKey> =
                members.iter().map(|m| key(m)).collect();
            let kept = std::mem::take(&mut *self.kept.lock().unwrap_or_else(|e| e.into_inner()));
            let mut monitors = self.monitors.lock().unwrap_or_else(|e| e.into_inner());
            monitors.retain(|k, _| live.contains(k));
            for k in kept {
                if let Some(m) = monitors.get_mut(&k) {
                    m.retry();
                }
            }
        }
        let results = join_all(members.iter().map(|m| self.probe(m))).await;
        self.marks.reconcile(&members);
        for (m, result) in members.iter().zip(results) {
            self.record_probe(m, result);
        }
    }

    /// One probe of `m`: a real query; while its circuit is open, a plain
    /// connection attempt first, so a refused port fails at once instead of
    /// the pool retrying until its acquire timeout.
    async fn probe(&self, m: &Member) -> ProbeResult {
        let epoch = m.health.circuit.probe_epoch();
        let start = tokio::time::Instant::now();
        let table = self.settings.probe_table.as_str();
        let r = if m.health.circuit.is_open() {
            match m.store.reachable().await {
                Ok(()) => m.store.probe(table).await,
                Err(e) => Err(e),
            }
        } else {
            m.store.probe(table).await
        };
        ProbeResult {
            r,
            took: start.elapsed(),
            epoch,
        }
    }

    /// Feeds a probe's outcome to the member's health, circuit and detector.
    fn record_probe(self: &Arc<Self>, m: &Arc<Member>, p: ProbeResult) {
        m.health.record_probe(p.r.is_ok(), p.took);
        let o = match p.r {
            Ok(()) => {
                if m.health.circuit.close_after_probe(p.epoch) {
                    tracing::info!(member = %m.label(), "circuit closed: the member answers again");
                }
                Observation::ProbeOk
            }
            Err(e) => {
                tracing::debug!(member = %m.label(), error = %e, "probe failed");
                Observation::ProbeFailed
            }
        };
        self.observe(m, o);
    }

    /// `member`'s circuit just opened: probe it every
    /// `circuit_probe_interval` until a probe answers (closing the circuit),
    /// it is no longer `on`, or shutdown. Failed probes feed the detector,
    /// so a dead member is switched off sooner than the regular round would.
    pub fn circuit_opened(self: &Arc<Self>, member: &Arc<Member>) {
        let k = key(member);
        if !self
            .fast_probing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(k.clone())
        {
            return;
        }
        let (this, m) = (self.clone(), member.clone());
        self.tasks.spawn(async move {
            let mut tick = tokio::time::interval(this.settings.circuit_probe_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = this.stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if !m.health.circuit.is_open() || !this.still_on(&m) {
                    break;
                }
                let p = this.probe(&m).await;
                let answered = p.r.is_ok();
                this.record_probe(&m, p);
                if answered {
                    break;
                }
            }
            this.fast_probing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&k);
        });
    }

    /// True when the current snapshot still has `m` (same slot and URL) `on`.
    fn still_on(&self, m: &Member) -> bool {
        let topo = self.topology.borrow().clone();
        let k = key(m);
        topo.groups.get(&m.config.group).is_some_and(|g| {
            g.members
                .iter()
                .any(|o| key(o) == k && o.config.status == MemberStatus::On)
        })
    }

    /// Starts a resync of one member that is on but not readable, from a
    /// readable partner, unless one is already running.
    pub fn maybe_resync(self: &Arc<Self>, topo: &Topology) {
        if self.resyncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let now = (self.clock)();
        let w = self.settings.window;
        let job = topo.groups.values().find_map(|g| {
            let target = g
                .members
                .iter()
                .find(|m| m.writable() && !m.readable(now, w) && !m.unrecorded_miss())?;
            let source = g.members.iter().find(|m| m.readable(now, w))?;
            Some((source.clone(), target.clone()))
        });
        let Some((source, target)) = job else {
            // A group whose every `on` member may lack writes (a double
            // fault) would stay unreadable for the whole window: merge them.
            let stuck = topo.groups.values().find_map(|g| {
                let on: Vec<Arc<Member>> =
                    g.members.iter().filter(|m| m.writable()).cloned().collect();
                let none_readable = !g.members.iter().any(|m| m.readable(now, w));
                let recorded = on.iter().all(|m| !m.unrecorded_miss());
                (none_readable && recorded && !on.is_empty()).then_some(on)
            });
            match stuck {
                Some(members) => {
                    let this = self.clone();
                    self.tasks.spawn(async move {
                        this.merge_members(&members).await;
                        this.resyncing.store(false, Ordering::Release);
                    });
                }
                None => self.resyncing.store(false, Ordering::Release),
            }
            return;
        };
        let this = self.clone();
        self.tasks.spawn(async move {
            this.resync_member(&source, &target).await;
            this.resyncing.store(false, Ordering::Release);
        });
    }

    async fn resync_member(&self, source: &Member, target: &Member) {
        let k = key(target);
        let c = &target.config;
        let expected = to_db_time(c.failover);
        let now = (self.clock)();
        if now <= c.failover.saturating_add(RESYNC_SETTLE_SECS) {
            // Rows of the miss's own second may still be arriving through the
            // live fan-out, and a server that was hung executes the statements
            // it had received (timed out here long ago) when it resumes: let
            // them land first, so the prune pass removes what they bring back.
            return;
        }
        let (mut progress, cutoff) = {
            let mut r = self.resumable.lock().unwrap_or_else(|e| e.into_inner());
            match r.remove(&k) {
                Some((p, cutoff, exp)) if exp == expected => (p, cutoff),
                _ => (Progress::default(), c.failover),
            }
        };
        let started = tokio::time::Instant::now();
        let copied = resync::resync(
            source.store.as_ref(),
            target.store.as_ref(),
            &self.settings.tables,
            Some(cutoff),
            now,
            &self.settings.resync,
            &mut progress,
            &self.metrics.resync.of(c.group, c.no),
        )
        .await;
        let outcome = match copied {
            Ok(()) => {
                self.master
                    .clear_failover(c.group, c.no, c.url.expose(), expected)
                    .await
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(1) => {
                self.metrics
                    .failover_actions
                    .with_label_values(&["resync", "done"])
                    .inc();
                tracing::info!(
                    member = %target.label(),
                    from = %source.label(),
                    copied = progress.copied,
                    pruned = progress.pruned,
                    took_ms = started.elapsed().as_millis() as u64,
                    "resync done; member readable again"
                );
                self.reload.notify_one();
            }
            Ok(_) => {
                self.metrics
                    .failover_actions
                    .with_label_values(&["resync", "superseded"])
                    .inc();
                tracing::info!(member = %target.label(), "a newer missed write was recorded; resync starts over");
            }
            Err(e) => {
                self.metrics
                    .failover_actions
                    .with_label_values(&["resync", "error"])
                    .inc();
                tracing::warn!(member = %target.label(), error = %e, copied = progress.copied, "resync paused; it resumes where it stopped");
                let mut r = self.resumable.lock().unwrap_or_else(|e| e.into_inner());
                r.insert(k, (progress, cutoff, expected));
            }
        }
    }

    /// Makes every member of `members` (all `on`, none known complete) hold
    /// the union of their bindings, newest version of each, then marks them
    /// readable. Without a complete member there is no truth to prune
    /// against, so a binding removed during the double fault may come back
    /// until it expires: a bounded staleness, chosen over keeping the group
    /// unreadable for a whole registration window.
    async fn merge_members(&self, members: &[Arc<Member>]) {
        let now = (self.clock)();
        if members.iter().any(|m| now <= m.config.failover) {
            return; // let the miss's own second pass first
        }
        let label = members.first().map(|m| m.config.group).unwrap_or_default();
        let mut progress = Progress::default();
        for a in members {
            for b in members.iter().filter(|b| b.config.no != a.config.no) {
                let mut p = Progress::default();
                let r = resync::resync(
                    a.store.as_ref(),
                    b.store.as_ref(),
                    &self.settings.tables,
                    None,
                    now,
                    &self.settings.resync,
                    &mut p,
                    &self.metrics.resync.of(b.config.group, b.config.no),
                )
                .await;
                if let Err(e) = r {
                    self.metrics
                        .failover_actions
                        .with_label_values(&["merge", "error"])
                        .inc();
                    tracing::warn!(group = label, error = %e, "merge paused; it restarts next round");
                    return;
                }
                progress.copied += p.copied;
            }
        }
        for m in members {
            let c = &m.config;
            match self
                .master
                .clear_failover(c.group, c.no, c.url.expose(), to_db_time(c.failover))
                .await
            {
                Ok(1) => m.health.settle_marks(c.failover),
                Ok(_) => return, // a newer miss: merge again next round
                Err(e) => {
                    tracing::warn!(member = %m.label(), error = %e, "cannot mark merged member complete");
                    return;
                }
            }
        }
        self.metrics
            .failover_actions
            .with_label_values(&["merge", "done"])
            .inc();
        tracing::warn!(
            group = label,
            members = members.len(),
            copied = progress.copied,
            "no member was known complete: merged them; removed bindings may reappear until they expire"
        );
        self.reload.notify_one();
    }

    /// Probes every `probe_interval` until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        topology: watch::Receiver<Arc<Topology>>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.settings.probe_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {
                    let topo = topology.borrow().clone();
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = self.probe_once(&topo) => {}
                    }
                    self.maybe_resync(&topo);
                    self.report_readable(&topo);
                }
            }
        }
        self.stop.cancel();
    }

    /// Publishes which members reads may go to (`locsvc_member_readable`).
    fn report_readable(&self, topo: &Topology) {
        let now = (self.clock)();
        // Only the members of the current layout.
        self.metrics.member_readable.reset();
        for m in topo.groups.values().flat_map(|g| g.members.iter()) {
            let c = &m.config;
            self.metrics
                .member_readable
                .with_label_values(&[&c.group.to_string(), &c.no.to_string()])
                .set(i64::from(m.readable(now, self.settings.window)));
        }
    }
}
