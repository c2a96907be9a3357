//! Keeps the published `Topology` in step with `locdb`: loads it at start,
//! re-reads it every poll interval, and publishes a new snapshot only when
//! something changed. Pools are keyed by URL and reused across snapshots;
//! health is keyed by (group, no, url). A bad or unreachable master never
//! takes the service down: the last good snapshot stays in force.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::layout;
use super::model::{self, ClusterConfig, ConfigProblem};
use super::registry::Registry;
use super::{Group, Member, MemberHealth, Placement, Topology};
use crate::clock::Clock;
use crate::failover::{self, Marks};
use crate::metrics::Metrics;
use crate::partition::{HashMode, Partitioner};
use crate::store::{LocationStore, SqlStore, StoreError, StoreOptions};

type MemberKey = (u32, u32, String);

/// Owns the member pools and publishes topology snapshots.
pub struct ClusterWatcher {
    master: Arc<SqlStore>,
    /// Where members the layout shows lacking writes are recorded.
    marks: Arc<Marks>,
    opts: StoreOptions,
    hash_mode: HashMode,
    clock: Clock,
    metrics: Arc<Metrics>,
    stores: HashMap<String, Arc<SqlStore>>,
    health: HashMap<MemberKey, Arc<MemberHealth>>,
    config: Option<ClusterConfig>,
    problems: Vec<ConfigProblem>,
    tx: watch::Sender<Arc<Topology>>,
    reload_now: Arc<Notify>,
    /// Closing pools of members that left; shutdown awaits them.
    tasks: TaskTracker,
    /// Heartbeaten after every reload, when several instances may run.
    registry: Option<Arc<Registry>>,
    /// How long requests begun under one layout phase may still run: a
    /// phase is reported as served only that long after it was seen.
    drain: Duration,
    /// The layout epoch and phase seen last, and since when.
    seen_layout: Option<((i64, i32), tokio::time::Instant)>,
    /// The current epoch's owners (None before the first epoch is read:
    /// every configured group owns AoRs), and the placement published.
    owners: Option<Partitioner>,
    placement: Placement,
}

impl ClusterWatcher {
    /// Creates the watcher and its snapshot channel (empty until `reload`);
    /// it reads `locdb` from `master` and dates marks by `marks`' clock.
    pub fn new(
        master: Arc<SqlStore>,
        opts: StoreOptions,
        hash_mode: HashMode,
        marks: Arc<Marks>,
        metrics: Arc<Metrics>,
        tasks: TaskTracker,
    ) -> (Self, watch::Receiver<Arc<Topology>>) {
        let (tx, rx) = watch::channel(Arc::new(Topology::empty(Partitioner::new(hash_mode, []))));
        let w = Self {
            master,
            opts,
            hash_mode,
            clock: marks.clock(),
            marks,
            metrics,
            stores: HashMap::new(),
            health: HashMap::new(),
            config: None,
            problems: Vec::new(),
            tx,
            reload_now: Arc::new(Notify::new()),
            tasks,
            registry: None,
            drain: Duration::ZERO,
            seen_layout: None,
            owners: None,
            placement: Placement::default(),
        };
        (w, rx)
    }

    /// Notifying this makes the watcher re-read `locdb` at once (after this
    /// instance changed it) instead of at the next poll.
    pub fn reload_handle(&self) -> Arc<Notify> {
        self.reload_now.clone()
    }

    /// Heartbeats `registry` after every reload, dated by the reload's
    /// start (a peer that sees the heartbeat knows this instance has read
    /// everything `locdb` held then), and coordinates layout epochs with the
    /// other instances there. `drain` is how long a request may run: a
    /// layout phase counts as served once requests begun before it ended.
    pub fn heartbeat_into(&mut self, registry: Arc<Registry>, drain: Duration) {
        self.registry = Some(registry);
        self.drain = drain;
    }

    /// The master store.
    pub fn master(&self) -> &Arc<SqlStore> {
        &self.master
    }

    /// Reads `locdb` and publishes a new snapshot if anything changed.
    /// Returns whether a snapshot was published.
    pub async fn reload(&mut self) -> Result<bool, StoreError> {
        let rows = match self.master.load_locdb().await {
            Ok(r) => r,
            Err(e) => {
                self.metrics.master_up.set(0);
                self.metrics
                    .config_reloads
                    .with_label_values(&["error"])
                    .inc();
                return Err(e);
            }
        };
        self.metrics.master_up.set(1);
        let (config, problems) = model::build(&rows, self.config.as_ref());
        if problems != self.problems {
            for p in &problems {
                tracing::error!(problem = %p, "locdb problem");
            }
            if problems.is_empty() && !self.problems.is_empty() {
                tracing::info!("locdb problems resolved");
            }
        }
        self.metrics.config_problems.set(problems.len() as i64);
        if self.config.as_ref() == Some(&config) && problems == self.problems {
            self.metrics
                .config_reloads
                .with_label_values(&["unchanged"])
                .inc();
            return Ok(false);
        }
        self.publish(config, problems).await;
        self.metrics
            .config_reloads
            .with_label_values(&["changed"])
            .inc();
        Ok(true)
    }

    async fn publish(&mut self, config: ClusterConfig, problems: Vec<ConfigProblem>) {
        let now = (self.clock)();
        let previous = self.config.take();
        let mut groups = std::collections::BTreeMap::new();
        let mut live_urls = HashSet::new();
        let mut live_keys = HashSet::new();
        let mut to_mark = Vec::new();
        // Members that left `locdb` (a promoted spare's old slot, a deleted
        // group) must not keep reporting their last status.
        self.metrics.member_status.reset();
        for (id, g) in &config.groups {
            let prev_group = previous.as_ref().and_then(|p| p.groups.get(id));
            let mut members = Vec::with_capacity(g.members.len());
            for m in &g.members {
                let raw = m.url.expose().to_string();
                let store = match self.store_for(m) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(group = id, no = m.no, error = %e, "cannot open member pool");
                        continue;
                    }
                };
                live_urls.insert(raw.clone());
                let key = (m.group, m.no, raw);
                live_keys.insert(key.clone());
                let health = self.health.entry(key).or_default().clone();
                health.settle_marks(m.failover);
                let slot_miss = prev_group
                    .and_then(|pg| pg.members.iter().find(|p| p.no == m.no && p.url != m.url))
                    .and_then(|old| {
                        let k = (m.group, m.no, old.url.expose().to_string());
                        self.health.get(&k).map(|h| h.missed_write_at())
                    });
                if let Some(at) = failover::layout_miss(prev_group, m, slot_miss, now) {
                    health.mark_missed(at);
                    to_mark.push(m.clone());
                }
                let store: Arc<dyn LocationStore> = store;
                members.push(Arc::new(Member {
                    config: m.clone(),
                    store,
                    health,
                    timers: self.metrics.member_timers(m.group, m.no),
                }));
                self.metrics
                    .member_status
                    .with_label_values(&[&id.to_string(), &m.no.to_string()])
                    .set(m.status.code());
            }
            groups.insert(*id, Arc::new(Group { id: *id, members }));
        }
        for kept in self.keep_placed_groups(&mut groups) {
            // Their pools and health stay too.
            for m in &kept.members {
                self.metrics
                    .member_status
                    .with_label_values(&[&kept.id.to_string(), &m.config.no.to_string()])
                    .set(m.config.status.code());
                let raw = m.config.url.expose().to_string();
                live_keys.insert((m.config.group, m.config.no, raw.clone()));
                live_urls.insert(raw);
            }
        }
        self.forget_gone(&live_urls, &live_keys);
        let generation = self.tx.borrow().generation + 1;
        let partitioner = self
            .owners
            .clone()
            .unwrap_or_else(|| Partitioner::new(self.hash_mode, config.groups.keys().copied()));
        let topo = Topology {
            generation,
            partitioner,
            placement: self.placement.clone(),
            groups,
            spares: config.spares.clone(),
            problems: problems.clone(),
        };
        tracing::info!(
            generation,
            groups = topo.groups.len(),
            problems = problems.len(),
            "cluster layout loaded"
        );
        self.tx.send_replace(Arc::new(topo));
        self.config = Some(config);
        self.problems = problems;
        for m in to_mark {
            self.marks.record_layout_miss(m.group, m.no, now).await;
        }
    }

    /// Groups that own AoRs in the current or the previous epoch stay in
    /// the snapshot even when their rows left `locdb`: their subscribers
    /// are there until the layout has moved them (drain a group, then
    /// delete it). Their last definition is kept, and the removal reported.
    /// Returns the groups so kept.
    fn keep_placed_groups(
        &self,
        groups: &mut std::collections::BTreeMap<u32, Arc<Group>>,
    ) -> Vec<Arc<Group>> {
        let mut kept = Vec::new();
        let placed = self
            .owners
            .iter()
            .chain(self.placement.previous.iter())
            .flat_map(|p| p.groups().to_vec());
        let before = self.tx.borrow().clone();
        for id in placed {
            if groups.contains_key(&id) {
                continue;
            }
            if let Some(g) = before.groups.get(&id) {
                tracing::error!(
                    group = id,
                    "group removed from locdb while it holds subscribers; kept until they are moved \
                     (drain it first: set leaving = 1 on its rows)"
                );
                groups.insert(id, g.clone());
                kept.push(g.clone());
            }
        }
        kept
    }

    /// Closes, in the background, the pools of members that left the
    /// layout, and forgets the health of slots that did.
    fn forget_gone(&mut self, live_urls: &HashSet<String>, live_keys: &HashSet<MemberKey>) {
        let gone: Vec<String> = self
            .stores
            .keys()
            .filter(|u| !live_urls.contains(*u))
            .cloned()
            .collect();
        for u in gone {
            if let Some(s) = self.stores.remove(&u) {
                self.tasks.spawn(async move { s.close().await });
            }
        }
        self.health.retain(|k, _| live_keys.contains(k));
    }

    fn store_for(&mut self, m: &model::MemberConfig) -> Result<Arc<SqlStore>, StoreError> {
        let raw = m.url.expose().to_string();
        if let Some(s) = self.stores.get(&raw) {
            return Ok(s.clone());
        }
        let s =
            Arc::new(SqlStore::open(&m.url, &self.opts)?.with_timers(self.metrics.stage_timers()));
        self.stores.insert(raw, s.clone());
        Ok(s)
    }

    /// Reads the layout (starting the first epoch if there is none) and
    /// routes by it; for start-up, before the first request.
    pub async fn coordinate_now(&mut self) -> Result<(), StoreError> {
        match self.registry.clone() {
            Some(r) => self.coordinate(&r).await,
            None => Ok(()),
        }
    }

    /// Takes the layout's next step, if this instance sees one (one
    /// conditional statement: when several instances take it at once, one
    /// lands), and reports the phase this instance serves.
    async fn coordinate(&mut self, registry: &Registry) -> Result<(), StoreError> {
        let wanted = self
            .config
            .as_ref()
            .map(ClusterConfig::owners_wanted)
            .unwrap_or_default();
        let current = self.layout().await?;
        let now = super::registry::now_ms();
        let step = layout::next_step(
            current.as_ref(),
            &wanted,
            self.hash_mode,
            &registry.everyone(),
        );
        let hash = |h: HashMode| h.to_string();
        let took = match &step {
            layout::Step::Bootstrap { owners, hash: h } => {
                let text = layout::owners_text(owners);
                self.master
                    .start_layout(1, &text, &hash(*h), layout::Phase::Done.code(), now)
                    .await?
            }
            layout::Step::Start {
                epoch,
                owners,
                hash: h,
            } => {
                let text = layout::owners_text(owners);
                self.master
                    .start_layout(
                        *epoch,
                        &text,
                        &hash(*h),
                        layout::Phase::Announced.code(),
                        now,
                    )
                    .await?
            }
            layout::Step::Advance { epoch, from } => {
                self.master
                    .advance_layout(*epoch, from.code(), from.code() + 1, now)
                    .await?
            }
            layout::Step::AckMoving { epoch } => self.master.ack_moving(*epoch, now).await?,
            layout::Step::Wait => false,
        };
        if took {
            tracing::info!(?step, "layout step taken");
        }
        let current = if took { self.layout().await? } else { current };
        if let Some(e) = current {
            self.place(&e).await?;
            self.metrics.layout_epoch.set(e.epoch);
            self.metrics.layout_phase.set(i64::from(e.phase.code()));
            self.report_serving(registry, (e.epoch, e.phase.code()));
        }
        Ok(())
    }

    /// Routes by epoch `e` from now on: its owners, and while its change
    /// runs, the previous epoch's too. Publishes a new snapshot when that
    /// changed anything.
    async fn place(&mut self, e: &layout::Epoch) -> Result<(), StoreError> {
        if (self.placement.epoch, self.placement.phase) == (e.epoch, e.phase) {
            return Ok(());
        }
        let previous = match e.phase {
            layout::Phase::Done => None,
            _ => match self.master.layout_owners(e.epoch - 1).await? {
                Some((owners, hash)) => {
                    match (layout::parse_owners(&owners), hash.parse::<HashMode>()) {
                        (Some(o), Ok(h)) => Some(Partitioner::new(h, o)),
                        _ => {
                            return Err(StoreError::Decode(format!(
                                "locsvc_layout epoch {} is unreadable",
                                e.epoch - 1
                            )));
                        }
                    }
                }
                None => None,
            },
        };
        self.owners = Some(Partitioner::new(e.hash, e.owners.iter().copied()));
        self.placement = Placement {
            epoch: e.epoch,
            phase: e.phase,
            previous,
        };
        tracing::info!(epoch = e.epoch, phase = %e.phase, owners = ?e.owners, "routing by layout epoch");
        let now = self.tx.borrow().clone();
        let mut groups = now.groups.clone();
        // A group deleted from `locdb` and kept while it was placed is let
        // go once it no longer is (its pools close with the next reload).
        let configured = |id: &u32| {
            self.config
                .as_ref()
                .is_some_and(|c| c.groups.contains_key(id))
        };
        let placed: Vec<u32> = self
            .owners
            .iter()
            .chain(self.placement.previous.iter())
            .flat_map(|p| p.groups().to_vec())
            .collect();
        groups.retain(|id, _| configured(id) || placed.contains(id));
        let topo = Topology {
            generation: now.generation + 1,
            partitioner: self.owners.clone().expect("set above"),
            placement: self.placement.clone(),
            groups,
            spares: now.spares.clone(),
            problems: now.problems.clone(),
        };
        self.tx.send_replace(Arc::new(topo));
        Ok(())
    }

    /// The current epoch, if `locsvc_layout` has one this instance can read.
    async fn layout(&self) -> Result<Option<layout::Epoch>, StoreError> {
        let Some(row) = self.master.current_layout().await? else {
            return Ok(None);
        };
        let parsed = (
            layout::parse_owners(&row.owners),
            row.hash_mode.parse::<HashMode>().ok(),
            layout::Phase::from_code(row.phase),
        );
        match parsed {
            (Some(owners), Some(hash), Some(phase)) => Ok(Some(layout::Epoch {
                epoch: row.epoch,
                owners,
                hash,
                phase,
                moving_acked: row.moving_acked,
            })),
            _ => Err(StoreError::Decode(format!(
                "locsvc_layout epoch {} is unreadable: owners {:?}, hash {:?}, phase {}",
                row.epoch, row.owners, row.hash_mode, row.phase
            ))),
        }
    }

    /// Reports `seen` as served once requests begun before it was seen
    /// have ended (`drain`).
    fn report_serving(&mut self, registry: &Registry, seen: (i64, i32)) {
        let now = tokio::time::Instant::now();
        let since = match self.seen_layout {
            Some((s, since)) if s == seen => since,
            _ => {
                self.seen_layout = Some((seen, now));
                now
            }
        };
        if now.duration_since(since) >= self.drain {
            registry.serve(seen.0, seen.1);
        }
    }

    /// Every member store, for migrations.
    pub fn member_stores(&self) -> Vec<Arc<SqlStore>> {
        self.stores.values().cloned().collect()
    }

    /// Re-reads `locdb` every `interval` until `shutdown`, then closes pools.
    pub async fn run(mut self, interval: Duration, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let reload_now = self.reload_now.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
                _ = reload_now.notified() => {}
            }
            let started = super::registry::now_ms();
            if let Err(e) = self.reload().await {
                tracing::warn!(error = %e, "cannot read locdb; keeping the last good layout");
                continue;
            }
            if let Some(r) = self.registry.clone() {
                if let Err(e) = r.beat(started).await {
                    tracing::warn!(error = %e, "cannot heartbeat in locsvc_instances");
                } else if let Err(e) = self.coordinate(&r).await {
                    tracing::warn!(error = %e, "cannot read or advance locsvc_layout");
                }
            }
        }
        for s in self.stores.values() {
            s.close().await;
        }
        self.master.close().await;
    }
}
