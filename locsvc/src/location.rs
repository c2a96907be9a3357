//! The location use cases behind the API: Save, Lookup, Remove, Dump and
//! Stats. Parses the AoR, serializes operations on one AoR, asks the
//! registrar what a REGISTER changes, and has the router apply it.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Mutex, MutexGuard, mpsc};
use tokio::time::{Instant, timeout_at};

use crate::aor_lock::{AorLockGuard, AorLocks};
use crate::clock::Clock;
use crate::cluster::layout::Phase;
use crate::domain::{Aor, AorError, Binding, KeyPolicy, SaveInput, UnixTime};
use crate::lookup_cache::LookupCache;
use crate::placement::{self, GroupWrite};
use crate::registrar::{self, RegistrarError, RegistrarPolicy};
use crate::router::{
    Hold, Route, RouteError, Router, TableMode, Target, WriteOp, spread_of, write_key,
};
use crate::store::{LocationStore, Removal, StoreError, StoredBinding, TableStats, Which};
use prometheus::IntCounter;

/// Why a location operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LocationError {
    #[error("invalid aor: {0}")]
    Aor(#[from] AorError),
    #[error(transparent)]
    Registrar(#[from] RegistrarError),
    #[error(transparent)]
    Route(#[from] RouteError),
}

/// The result of a Save.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    pub group: u32,
    /// Every current binding, best first.
    pub bindings: Vec<Binding>,
    /// The time the registrar decided at: remaining seconds count from it,
    /// so a REGISTER for 900 s is answered with 900 however long the write took.
    pub now: UnixTime,
}

/// One page of a Dump.
#[derive(Debug, Clone, PartialEq)]
pub struct DumpPage {
    pub group: u32,
    pub bindings: Vec<StoredBinding>,
}

/// Counts of one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupStats {
    pub group: u32,
    pub member: u32,
    pub stats: TableStats,
}

/// Striped locks serializing operations on one AoR within this instance, so
/// two concurrent REGISTERs cannot both read, then both write, and lose one
/// binding (p_usrloc has no locking, reference §7.1). Held until the write is
/// acknowledged; members still finishing it keep the AoR's order themselves
/// (`failover::unconfirmed`). Across instances, `aor_lock` adds a lock in the
/// master, held until every member has settled the write.
struct LocalLocks {
    stripes: Box<[Mutex<()>]>,
}

impl LocalLocks {
    fn new(n: usize) -> Self {
        Self {
            stripes: (0..n.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    /// The lock of the AoR with `key` (`write_key`), waited for until
    /// `deadline`.
    async fn lock(&self, key: u64, deadline: Instant) -> Option<MutexGuard<'_, ()>> {
        let stripe = &self.stripes[(key % self.stripes.len() as u64) as usize];
        timeout_at(deadline, stripe.lock()).await.ok()
    }
}

/// An AoR's rows where its route says they may be (`owner` and `previous`
/// only while it moves).
struct Rows {
    owner: Vec<Binding>,
    previous: Vec<Binding>,
    /// Both, as one (`placement::merge`).
    merged: Vec<Binding>,
}

/// An AoR's route and the locks held on it for one operation.
struct Locked<'a> {
    route: Route,
    key: u64,
    _local: MutexGuard<'a, ()>,
    cross: Option<Arc<AorLockGuard>>,
}

impl Locked<'_> {
    /// The cross-instance lock, for the write to keep until every member
    /// has it (or every instance knows which does not).
    fn hold(&self) -> Option<Hold> {
        self.cross.clone().map(|g| g as Hold)
    }
}

/// The location service.
pub struct LocationService {
    router: Router,
    locks: LocalLocks,
    cross: AorLocks,
    policy: RegistrarPolicy,
    key_policy: KeyPolicy,
    clock: Clock,
    /// Lookup answers kept for a bounded time; `None`: off. Every member
    /// write of an AoR drops its answer once the member has ended it
    /// (`forget`), in the member's task, so a caller that gave up early
    /// cannot leave an older answer behind.
    cache: Option<Arc<Cached>>,
}

/// The lookup cache and its two counters, resolved once.
struct Cached {
    cache: LookupCache,
    hits: IntCounter,
    misses: IntCounter,
}

/// Drops the cached answer of the AoR with `key` once a member has ended a
/// write of it (taken, failed or half applied), and refuses the answers of
/// reads begun before (`lookup_cache`).
fn forget(cache: Option<&Cached>, key: u64) {
    if let Some(c) = cache {
        c.cache.invalidate(key);
    }
}

fn new_ruid() -> String {
    format!("uloc-{}", uuid::Uuid::new_v4().simple())
}

impl LocationService {
    /// A service over `router`; `cross` serializes writes across instances.
    pub fn new(
        router: Router,
        cross: AorLocks,
        policy: RegistrarPolicy,
        key_policy: KeyPolicy,
        clock: Clock,
    ) -> Self {
        Self {
            router,
            locks: LocalLocks::new(4096),
            cross,
            policy,
            key_policy,
            clock,
            cache: None,
        }
    }

    /// This service with Lookup answers kept in `cache`.
    pub fn with_lookup_cache(mut self, cache: Option<LookupCache>) -> Self {
        let counted = &self.router.metrics().lookup_cache;
        self.cache = cache.map(|cache| {
            Arc::new(Cached {
                cache,
                hits: counted.with_label_values(&["hit"]),
                misses: counted.with_label_values(&["miss"]),
            })
        });
        self
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// The registrar policy.
    pub fn policy(&self) -> &RegistrarPolicy {
        &self.policy
    }

    /// Canonicalizes `aor` under this service's key policy.
    pub fn parse_aor(&self, aor: &str) -> Result<Aor, AorError> {
        Aor::parse(aor, self.key_policy)
    }

    /// Where `aor` lives, its write key, and its locks, taken by
    /// `deadline`: this instance's, then (when other instances may serve
    /// it) the master's, which the write's member tasks keep until they
    /// have all settled.
    async fn lock(
        &self,
        table: &str,
        aor: &Aor,
        deadline: Instant,
    ) -> Result<Locked<'_>, LocationError> {
        self.router.table_mode(table)?;
        let key = write_key(table, aor);
        // Routed once, after the locks (below); a timed-out wait names the
        // group as it stands then.
        let deadline_passed = || RouteError::Deadline {
            group: self.router.target(table, aor).map_or(0, |t| t.group_id()),
        };
        let waits = &self.router.metrics().stages;
        let started = std::time::Instant::now();
        let local = self
            .locks
            .lock(key, deadline)
            .await
            .ok_or_else(deadline_passed)?;
        let (local_took, started) = (started.elapsed(), std::time::Instant::now());
        waits.aor_lock_local.observe(local_took.as_secs_f64());
        let cross = self
            .cross
            .lock(key, deadline)
            .await
            .map_err(|_| deadline_passed())?;
        if cross.is_some() {
            waits
                .aor_lock_master
                .observe(started.elapsed().as_secs_f64());
        }
        // Routed only now: while this waited, the holder may have made a
        // member miss its write and waited for this instance to learn of it
        // (a fresher snapshot), which an earlier snapshot would not show.
        let route = self.router.route(table, aor)?;
        Ok(Locked {
            route,
            key,
            _local: local,
            cross,
        })
    }

    /// The rows of `aor` in `target`: every one (expired included, what
    /// the registrar matches) or, with `valid_at`, those still valid then.
    async fn load_rows(
        &self,
        table: &str,
        aor: &Aor,
        target: &Target,
        deadline: Instant,
        valid_at: Option<UnixTime>,
    ) -> Result<Vec<Binding>, LocationError> {
        let (rows, _) = self
            .router
            .read(
                target,
                spread_of(aor),
                Some(write_key(table, aor)),
                &|s: Arc<dyn LocationStore>| -> BoxFuture<'_, Result<Vec<Binding>, StoreError>> {
                    Box::pin(async move {
                        match valid_at {
                            None => s.load_aor(table, aor).await,
                            Some(now) => s.lookup(table, aor, now).await,
                        }
                    })
                },
                deadline,
            )
            .await?;
        Ok(rows)
    }

    /// The AoR's rows (`load_rows`) in its owner and, while it moves, in its
    /// previous owner, and their merge: what the registrar decides on. Both
    /// are read at once, which only a caller holding the AoR's lock may do
    /// (the mover cannot carry the AoR between the reads).
    async fn load_routed(
        &self,
        table: &str,
        aor: &Aor,
        route: &Route,
        deadline: Instant,
    ) -> Result<Rows, LocationError> {
        let owner = self.load_rows(table, aor, &route.target, deadline, None);
        let Some((old, _)) = &route.moving else {
            // Not moving: only `merged` is used.
            return Ok(Rows {
                merged: owner.await?,
                owner: Vec::new(),
                previous: Vec::new(),
            });
        };
        let previous = self.load_rows(table, aor, old, deadline, None);
        let (owner, previous) = tokio::try_join!(owner, previous)?;
        Ok(Rows {
            merged: placement::merge(owner.clone(), previous.clone()),
            owner,
            previous,
        })
    }

    /// Writes `w` to the AoR's rows in `target`.
    #[allow(clippy::too_many_arguments)]
    async fn write_rows(
        &self,
        table: &str,
        aor: &Aor,
        target: &Target,
        key: u64,
        w: GroupWrite,
        deadline: Instant,
        hold: Option<Hold>,
    ) -> Result<(), LocationError> {
        if w.is_empty() {
            return Ok(());
        }
        let (upserts, deletes) = (Arc::new(w.upserts), Arc::new(w.deletes));
        let (table, aor) = (Arc::<str>::from(table), aor.clone());
        let cache = self.cache.clone();
        let op: WriteOp<()> = Arc::new(move |s: Arc<dyn LocationStore>| {
            let (table, aor, cache) = (table.clone(), aor.clone(), cache.clone());
            let (upserts, deletes) = (upserts.clone(), deletes.clone());
            Box::pin(async move {
                let r = s.apply(&table, &aor, &upserts, &deletes).await;
                forget(cache.as_deref(), key);
                r
            })
        });
        self.router.write(target, key, op, deadline, hold).await?;
        Ok(())
    }

    /// The two halves of a write to a moving AoR: its owner's first, so a
    /// failure leaves at worst the write half applied, never a binding
    /// only in the group it was deleted from.
    #[allow(clippy::too_many_arguments)]
    async fn write_moving(
        &self,
        table: &str,
        aor: &Aor,
        locked: &Locked<'_>,
        old: &Target,
        to_owner: GroupWrite,
        to_old: GroupWrite,
        deadline: Instant,
    ) -> Result<(), LocationError> {
        let (owner, key) = (&locked.route.target, locked.key);
        self.write_rows(table, aor, owner, key, to_owner, deadline, locked.hold())
            .await?;
        self.write_rows(table, aor, old, key, to_old, deadline, locked.hold())
            .await
    }

    /// Applies one REGISTER to `aor` (RFC 3261 §10.3), answering by
    /// `deadline`. While the AoR moves to another group, the registrar
    /// decides on both copies merged, and `placement` says what each
    /// group gets; the owner is written first, so a failure leaves at worst
    /// an unacknowledged REGISTER half applied, never a binding lost.
    pub async fn save(
        &self,
        table: &str,
        aor: &str,
        input: &SaveInput,
        deadline: Instant,
    ) -> Result<Saved, LocationError> {
        let aor = &self.parse_aor(aor)?;
        let locked = self.lock(table, aor, deadline).await?;
        let (route, key) = (&locked.route, locked.key);
        let rows = self.load_routed(table, aor, route, deadline).await?;
        let now = (self.clock)();
        let mut plan = registrar::plan_save(input, &rows.merged, now, &self.policy, &mut new_ruid)?;
        let upserts = std::mem::take(&mut plan.upserts);
        let deletes = std::mem::take(&mut plan.deletes);
        match &route.moving {
            None => {
                let w = GroupWrite { upserts, deletes };
                self.write_rows(table, aor, &route.target, key, w, deadline, locked.hold())
                    .await?;
            }
            Some((old, phase)) => {
                let (to_owner, to_old) = placement::split_save(
                    *phase,
                    &rows.owner,
                    &rows.previous,
                    upserts,
                    deletes,
                    &plan.bindings,
                );
                self.write_moving(table, aor, &locked, old, to_owner, to_old, deadline)
                    .await?;
            }
        }
        Ok(Saved {
            group: route.target.group_id(),
            bindings: plan.bindings,
            now,
        })
    }

    /// Moves `aor`'s rows in `table` from its previous owner to its owner
    /// (the mover's step; the same rule as a REGISTER during `Moving`),
    /// under the AoR's locks. Returns whether it had rows to move.
    pub async fn carry(
        &self,
        table: &str,
        aor: &Aor,
        deadline: Instant,
    ) -> Result<bool, LocationError> {
        let locked = self.lock(table, aor, deadline).await?;
        let route = &locked.route;
        let Some((old, phase)) = &route.moving else {
            return Ok(false);
        };
        if *phase == Phase::Announced {
            return Ok(false);
        }
        let rows = self.load_routed(table, aor, route, deadline).await?;
        if rows.previous.is_empty() {
            return Ok(false);
        }
        let now = (self.clock)();
        let valid = registrar::valid_ordered(&rows.merged, now);
        let (to_owner, to_old) = placement::split_save(
            Phase::Moving,
            &rows.owner,
            &rows.previous,
            Vec::new(),
            Vec::new(),
            &valid,
        );
        self.write_moving(table, aor, &locked, old, to_owner, to_old, deadline)
            .await?;
        Ok(true)
    }

    /// Valid bindings of `aor`, best first, by `deadline`: from its owner,
    /// and while it moves, from its previous owner too, merged.
    pub async fn lookup(
        &self,
        table: &str,
        aor: &str,
        deadline: Instant,
    ) -> Result<(u32, Vec<Binding>), LocationError> {
        let aor = &self.parse_aor(aor)?;
        let route = self.router.route(table, aor)?;
        let now = (self.clock)();
        let valid = Some(now);
        let group = route.target.group_id();
        let rows = match &route.moving {
            None => {
                let rows = self.owner_rows(table, aor, &route.target, deadline, now);
                return Ok((group, rows.await?));
            }
            // A lookup holds no lock, so the mover may carry the AoR
            // between two reads. It writes the owner before it deletes from
            // the previous owner; reading in the opposite order, one after
            // the other, sees the rows in at least one of them (read at
            // once, the owner could be read before the carry and the
            // previous owner after it: a subscriber not found).
            Some((old, _)) => {
                let previous = self.load_rows(table, aor, old, deadline, valid).await?;
                let owner = self
                    .load_rows(table, aor, &route.target, deadline, valid)
                    .await?;
                placement::merge(owner, previous)
            }
        };
        Ok((group, registrar::valid_ordered(&rows, now)))
    }

    /// The valid bindings, best first, of `aor`, which is not moving: the
    /// lookup cache's answer when it holds one of this group, else read
    /// (and kept).
    async fn owner_rows(
        &self,
        table: &str,
        aor: &Aor,
        target: &Target,
        deadline: Instant,
        now: UnixTime,
    ) -> Result<Vec<Binding>, LocationError> {
        let Some(c) = &self.cache else {
            let rows = self.load_rows(table, aor, target, deadline, Some(now));
            return Ok(registrar::valid_ordered(&rows.await?, now));
        };
        let (key, group) = (write_key(table, aor), target.group_id());
        // An answer from before a layout change names the old group: read
        // again.
        if let Some((_, rows)) = c.cache.get(key, table, aor).filter(|(g, _)| *g == group) {
            c.hits.inc();
            return Ok(registrar::valid_ordered(&rows, now));
        }
        c.misses.inc();
        let ticket = c.cache.ticket(key);
        let rows = self
            .load_rows(table, aor, target, deadline, Some(now))
            .await?;
        c.cache.fill(ticket, table, aor, group, &rows);
        Ok(registrar::valid_ordered(&rows, now))
    }

    /// Removes one contact of `aor`, or all, by `deadline`; returns (group,
    /// removed). While the AoR moves, from both groups.
    pub async fn remove(
        &self,
        table: &str,
        aor: &str,
        which: Which<'_>,
        deadline: Instant,
    ) -> Result<(u32, u64), LocationError> {
        let aor = &self.parse_aor(aor)?;
        let locked = self.lock(table, aor, deadline).await?;
        let (route, key) = (&locked.route, locked.key);
        let (table, aor) = (Arc::<str>::from(table), aor.clone());
        let cache = self.cache.clone();
        let removal = Removal::from(which);
        let op: WriteOp<u64> = Arc::new(move |s: Arc<dyn LocationStore>| {
            let (table, aor, removal) = (table.clone(), aor.clone(), removal.clone());
            let cache = cache.clone();
            Box::pin(async move {
                let r = s.remove(&table, &aor, removal.which()).await;
                forget(cache.as_deref(), key);
                r
            })
        });
        let mut removed = 0;
        let targets =
            std::iter::once(&route.target).chain(route.moving.as_ref().map(|(old, _)| old));
        for target in targets {
            let counts = self
                .router
                .write(target, key, op.clone(), deadline, locked.hold())
                .await?;
            removed += counts.into_iter().max().unwrap_or(0);
        }
        Ok((route.target.group_id(), removed))
    }

    /// Streams every valid binding of `table` (one group, or all), a page at a
    /// time, through a bounded channel. Each group is read from one member
    /// (row ids are per member, so a page cursor cannot move between them).
    pub fn dump(
        self: &Arc<Self>,
        table: String,
        group: Option<u32>,
        page_size: u32,
    ) -> Result<mpsc::Receiver<Result<DumpPage, LocationError>>, LocationError> {
        let mode = self.router.table_mode(&table)?;
        let topo = self.router.topology();
        let targets: Vec<Target> = match mode {
            TableMode::Single => vec![Target::Single(self.router.master().clone())],
            TableMode::Cluster => match group {
                Some(g) => vec![Target::Group(
                    topo.groups
                        .get(&g)
                        .cloned()
                        .ok_or(RouteError::GroupMissing(g))?,
                )],
                None => topo.groups.values().cloned().map(Target::Group).collect(),
            },
        };
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        // Ends when the pages are out or the client is gone; shutdown
        // awaits it with the other background work.
        self.router.background().spawn(async move {
            for target in targets {
                let gid = target.group_id();
                let store: Arc<dyn LocationStore> = match &target {
                    Target::Single(m) => m.clone(),
                    Target::Group(g) => match this.router.whole_group_member(g) {
                        Some(m) => m.store.clone(),
                        None => {
                            let _ = tx
                                .send(Err(RouteError::NoReadableMember { group: gid }.into()))
                                .await;
                            return;
                        }
                    },
                };
                let mut after = 0;
                loop {
                    let now = (this.clock)();
                    let page = match store.dump_page(&table, after, page_size, now).await {
                        Ok(p) => p,
                        Err(error) => {
                            let _ = tx
                                .send(Err(RouteError::AllFailed { group: gid, error }.into()))
                                .await;
                            return;
                        }
                    };
                    let full = page.len() as u32 == page_size;
                    after = page.last().map_or(after, |b| b.row_id);
                    if !page.is_empty()
                        && tx
                            .send(Ok(DumpPage {
                                group: gid,
                                bindings: page,
                            }))
                            .await
                            .is_err()
                    {
                        return; // the client went away
                    }
                    if !full {
                        break;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Contacts and AoRs per group of `table`, by `deadline`.
    pub async fn stats(
        &self,
        table: &str,
        deadline: Instant,
    ) -> Result<Vec<GroupStats>, LocationError> {
        let mode = self.router.table_mode(table)?;
        let now = (self.clock)();
        let targets: Vec<Target> = match mode {
            TableMode::Single => vec![Target::Single(self.router.master().clone())],
            TableMode::Cluster => self
                .router
                .topology()
                .groups
                .values()
                .cloned()
                .map(Target::Group)
                .collect(),
        };
        let mut out = Vec::with_capacity(targets.len());
        for t in targets {
            let (stats, member) = self
                .router
                .read(
                    &t,
                    0,
                    None,
                    &|s: Arc<dyn LocationStore>| -> BoxFuture<'_, Result<TableStats, StoreError>> {
                        Box::pin(async move { s.stats(table, now).await })
                    },
                    deadline,
                )
                .await?;
            out.push(GroupStats {
                group: t.group_id(),
                member,
                stats,
            });
        }
        Ok(out)
    }

    /// The current time of this service's clock.
    pub fn now(&self) -> UnixTime {
        (self.clock)()
    }
}
