//! The location use cases behind the API: Save, Lookup, Remove, Dump and
//! Stats. Parses the AoR, serializes operations on one AoR, asks the
//! registrar what a REGISTER changes, and has the router apply it.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{Mutex, MutexGuard, mpsc};
use xxhash_rust::xxh3::xxh3_64;

use crate::clock::Clock;
use crate::domain::{Aor, AorError, Binding, KeyPolicy, SaveInput, UnixTime};
use crate::registrar::{self, RegistrarError, RegistrarPolicy};
use crate::router::{RouteError, Router, TableMode, Target, spread_of};
use crate::store::{LocationStore, StoreError, StoredBinding, TableStats};

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
/// binding (p_usrloc has no locking, reference §7.1). Across instances the
/// per-row upserts keyed on ruid keep distinct contacts from overwriting
/// each other.
struct AorLocks {
    stripes: Box<[Mutex<()>]>,
}

impl AorLocks {
    fn new(n: usize) -> Self {
        Self {
            stripes: (0..n.max(1)).map(|_| Mutex::new(())).collect(),
        }
    }

    async fn lock(&self, table: &str, aor: &Aor) -> MutexGuard<'_, ()> {
        let h = xxh3_64(aor.key().as_bytes()) ^ xxh3_64(table.as_bytes());
        self.stripes[(h % self.stripes.len() as u64) as usize]
            .lock()
            .await
    }
}

/// The location service.
pub struct LocationService {
    router: Router,
    locks: AorLocks,
    policy: RegistrarPolicy,
    key_policy: KeyPolicy,
    clock: Clock,
}

fn new_ruid() -> String {
    format!("uloc-{}", uuid::Uuid::new_v4().simple())
}

impl LocationService {
    /// A service over `router`.
    pub fn new(
        router: Router,
        policy: RegistrarPolicy,
        key_policy: KeyPolicy,
        clock: Clock,
    ) -> Self {
        Self {
            router,
            locks: AorLocks::new(4096),
            policy,
            key_policy,
            clock,
        }
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

    /// Applies one REGISTER to `aor` (RFC 3261 §10.3).
    pub async fn save(
        &self,
        table: &str,
        aor: &str,
        input: &SaveInput,
    ) -> Result<Saved, LocationError> {
        let aor = &self.parse_aor(aor)?;
        let target = self.router.target(table, aor)?;
        let _guard = self.locks.lock(table, aor).await;
        let (existing, _) = self
            .router
            .read(
                &target,
                spread_of(aor),
                &|s: Arc<dyn LocationStore>| -> BoxFuture<'_, Result<Vec<Binding>, StoreError>> {
                    Box::pin(async move { s.load_aor(table, aor).await })
                },
            )
            .await?;
        let now = (self.clock)();
        let plan = registrar::plan_save(input, &existing, now, &self.policy, &mut new_ruid)?;
        if !plan.upserts.is_empty() || !plan.deletes.is_empty() {
            let (upserts, deletes) = (&plan.upserts, &plan.deletes);
            self.router
                .write(
                    &target,
                    &|s: Arc<dyn LocationStore>| -> BoxFuture<'_, Result<(), StoreError>> {
                        Box::pin(async move { s.apply(table, aor, upserts, deletes).await })
                    },
                )
                .await?;
        }
        Ok(Saved {
            group: target.group_id(),
            bindings: plan.bindings,
            now,
        })
    }

    /// Valid bindings of `aor`, best first.
    pub async fn lookup(
        &self,
        table: &str,
        aor: &str,
    ) -> Result<(u32, Vec<Binding>), LocationError> {
        let aor = &self.parse_aor(aor)?;
        let target = self.router.target(table, aor)?;
        let now = (self.clock)();
        let (rows, _) = self
            .router
            .read(
                &target,
                spread_of(aor),
                &|s: Arc<dyn LocationStore>| -> BoxFuture<'_, Result<Vec<Binding>, StoreError>> {
                    Box::pin(async move { s.lookup(table, aor, now).await })
                },
            )
            .await?;
        Ok((target.group_id(), registrar::valid_ordered(&rows, now)))
    }

    /// Removes one contact of `aor`, or all; returns (group, removed).
    pub async fn remove(
        &self,
        table: &str,
        aor: &str,
        contact: Option<&str>,
    ) -> Result<(u32, u64), LocationError> {
        let aor = &self.parse_aor(aor)?;
        let target = self.router.target(table, aor)?;
        let _guard = self.locks.lock(table, aor).await;
        let counts = self
            .router
            .write(
                &target,
                &|s: Arc<dyn LocationStore>| -> BoxFuture<'_, Result<u64, StoreError>> {
                    Box::pin(async move { s.remove(table, aor, contact).await })
                },
            )
            .await?;
        Ok((target.group_id(), counts.into_iter().max().unwrap_or(0)))
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
        tokio::spawn(async move {
            for target in targets {
                let gid = target.group_id();
                let store: Arc<dyn LocationStore> = match &target {
                    Target::Single(m) => m.clone(),
                    Target::Group(g) => match this.router.readable_members(g).first() {
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

    /// Contacts and AoRs per group of `table`.
    pub async fn stats(&self, table: &str) -> Result<Vec<GroupStats>, LocationError> {
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
                .read(&t, 0, &|s: Arc<dyn LocationStore>| -> BoxFuture<
                    '_,
                    Result<TableStats, StoreError>,
                > {
                    Box::pin(async move { s.stats(table, now).await })
                })
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
