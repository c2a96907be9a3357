//! Failover's decisions without a master database: a fake `Master` records
//! every `locdb` update it is asked for; members are in-process SQLite
//! stores, so resyncs and merges copy real rows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;
use chrono::NaiveDateTime;
use tokio::sync::{Notify, watch};
use tokio_util::task::TaskTracker;

use super::*;
use crate::cluster::{Group, GroupConfig, MemberConfig, Topology};
use crate::domain::{Aor, Binding, KeyPolicy, UnixTime};
use crate::partition::{HashMode, Partitioner};
use crate::store::migrate::Scope;
use crate::store::{
    DbUrl, LocationStore, LocdbUpdates, PoolSettings, Promotion, SqlStore, StoreOptions,
};

const T0: UnixTime = 1_800_000_000;

/// One `locdb` update the engine asked for.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    Mark { no: u32, at: UnixTime },
    Deactivate { no: u32, errors: u32 },
    Readmit { no: u32 },
    Clear { no: u32, expected: NaiveDateTime },
    Promote { no: u32, avoid: Vec<i64> },
    Status { no: u32, status: i64 },
}

/// A master that records calls and answers as told.
#[derive(Default)]
struct FakeMaster {
    calls: Mutex<Vec<Call>>,
    down: Mutex<bool>,
    spare: Mutex<Option<String>>,
}

impl FakeMaster {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn answer(&self, c: Call) -> Result<u64, StoreError> {
        self.calls.lock().unwrap().push(c);
        if *self.down.lock().unwrap() {
            Err(StoreError::Unavailable("master down".into()))
        } else {
            Ok(1)
        }
    }
}

#[async_trait]
impl LocdbUpdates for FakeMaster {
    async fn mark_failover(&self, _g: u32, no: u32, at: UnixTime) -> Result<u64, StoreError> {
        self.answer(Call::Mark { no, at })
    }
    async fn deactivate(
        &self,
        _g: u32,
        no: u32,
        _url: &str,
        errors: u32,
        _at: UnixTime,
    ) -> Result<u64, StoreError> {
        self.answer(Call::Deactivate { no, errors })
    }
    async fn readmit(&self, _g: u32, no: u32, _: &str, _: UnixTime) -> Result<u64, StoreError> {
        self.answer(Call::Readmit { no })
    }
    async fn clear_failover(
        &self,
        _g: u32,
        no: u32,
        _url: &str,
        expected: NaiveDateTime,
    ) -> Result<u64, StoreError> {
        self.answer(Call::Clear { no, expected })
    }
    async fn set_status(
        &self,
        _g: u32,
        no: u32,
        status: i64,
        _: UnixTime,
    ) -> Result<u64, StoreError> {
        self.answer(Call::Status { no, status })
    }
    async fn promote_spare(
        &self,
        _g: u32,
        no: u32,
        _url: &str,
        avoid: &[i64],
        _errors: u32,
        _at: UnixTime,
    ) -> Result<Promotion, StoreError> {
        self.answer(Call::Promote {
            no,
            avoid: avoid.to_vec(),
        })?;
        Ok(match self.spare.lock().unwrap().clone() {
            Some(spare) => Promotion::Promoted { spare },
            None => Promotion::NoSpare,
        })
    }
}

/// One group of two SQLite members, a fake master and an engine over them.
struct Fixture {
    master: Arc<FakeMaster>,
    engine: Arc<Failover>,
    topology: watch::Sender<Arc<Topology>>,
    now: Arc<AtomicI64>,
    tasks: TaskTracker,
    stores: Vec<Arc<dyn LocationStore>>,
    health: Vec<Arc<MemberHealth>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    async fn new(level: u8) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut stores: Vec<Arc<dyn LocationStore>> = Vec::new();
        for i in 1..=2 {
            let url = DbUrl::parse(&format!("sqlite://{}/m{i}.db", dir.path().display())).unwrap();
            let s = SqlStore::open(&url, &options()).unwrap();
            s.migrate(Scope::Table("location")).await.unwrap();
            stores.push(Arc::new(s));
        }
        let master = Arc::new(FakeMaster::default());
        let now = Arc::new(AtomicI64::new(T0));
        let clock_now = now.clone();
        let tasks = TaskTracker::new();
        let marks = Arc::new(Marks::new(
            master.clone(),
            Arc::new(move || clock_now.load(Ordering::Acquire)),
            Arc::new(Metrics::new()),
            tasks.clone(),
        ));
        let (topology, rx) = watch::channel(Arc::new(Topology::empty(Partitioner::new(
            HashMode::Xxh3,
            [1],
        ))));
        let engine = Arc::new(Failover::new(
            FailoverSettings {
                level,
                ..FailoverSettings::default()
            },
            marks,
            rx,
            Arc::new(Notify::new()),
        ));
        let f = Self {
            master,
            engine,
            topology,
            now,
            tasks,
            stores,
            health: (0..2).map(|_| Arc::default()).collect(),
            _dir: dir,
        };
        f.publish([0, 0]);
        f
    }

    /// Publishes the group with each member's `locdb.failover`.
    fn publish(&self, failover: [UnixTime; 2]) -> Arc<Topology> {
        let members = (0..2)
            .map(|i| {
                Arc::new(Member {
                    config: MemberConfig {
                        group: 1,
                        no: i as u32 + 1,
                        url: DbUrl::parse(&format!("sqlite://m{i}.db")).unwrap(),
                        status: MemberStatus::On,
                        errors: 0,
                        failover: failover[i],
                        spare: false,
                        rg: i as i64 + 1,
                    },
                    store: self.stores[i].clone(),
                    health: self.health[i].clone(),
                    timers: Metrics::default().member_timers(1, i as u32 + 1),
                })
            })
            .collect();
        let topo = Arc::new(Topology {
            generation: 1,
            partitioner: Partitioner::new(HashMode::Xxh3, [1]),
            placement: Default::default(),
            groups: BTreeMap::from([(1, Arc::new(Group { id: 1, members }))]),
            spares: Vec::new(),
            problems: Vec::new(),
        });
        self.topology.send_replace(topo.clone());
        topo
    }

    fn member(&self, no: usize) -> Arc<Member> {
        self.topology.borrow().groups[&1].members[no - 1].clone()
    }

    async fn register(&self, no: usize, user: &str) {
        let aor = Aor::parse(&format!("sip:{user}@example.com"), KeyPolicy::default()).unwrap();
        let b = Binding::sample(&format!("sip:{user}@192.0.2.1"), T0 + 3600);
        self.stores[no - 1]
            .apply("location", &aor, &[b], &[])
            .await
            .unwrap();
    }

    async fn contacts(&self, no: usize) -> usize {
        let s = self.stores[no - 1].stats("location", T0).await.unwrap();
        s.contacts as usize
    }

    /// Waits for the engine's background work (decisions, resyncs, marks).
    async fn settle(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }
}

fn options() -> StoreOptions {
    StoreOptions {
        tables: vec!["location".into()],
        use_domain: true,
        // A loaded test machine can hold SQLite's single writer longer
        // than the default acquire wait.
        pool: PoolSettings {
            acquire_timeout: std::time::Duration::from_secs(10),
            ..PoolSettings::default()
        },
        query_timeout: std::time::Duration::from_secs(10),
    }
}

#[tokio::test]
async fn a_failing_member_is_switched_off_only_while_its_partner_is_healthy() {
    let f = Fixture::new(1).await;
    // Member 1 never answered a probe: switching member 2 off could leave
    // the group with nothing (overload looks like this).
    f.engine.act(&f.member(2), Decision::Deactivate, 7).await;
    assert_eq!(f.master.calls(), vec![]);
    f.member(1)
        .health
        .record_probe(true, std::time::Duration::from_millis(1));
    f.engine.act(&f.member(2), Decision::Deactivate, 7).await;
    assert_eq!(
        f.master.calls(),
        vec![Call::Deactivate { no: 2, errors: 7 }]
    );
}

#[tokio::test]
async fn at_level_2_a_spare_from_another_risk_group_replaces_the_member_or_it_is_switched_off() {
    let f = Fixture::new(2).await;
    f.member(1)
        .health
        .record_probe(true, std::time::Duration::from_millis(1));
    // No spare outside risk groups 1 and 2: switched off instead.
    f.engine.act(&f.member(2), Decision::Deactivate, 5).await;
    assert_eq!(
        f.master.calls(),
        vec![
            Call::Promote {
                no: 2,
                avoid: vec![1, 2]
            },
            Call::Deactivate { no: 2, errors: 5 }
        ]
    );
    *f.master.spare.lock().unwrap() = Some("mysql://spare".into());
    f.master.calls.lock().unwrap().clear();
    f.engine.act(&f.member(2), Decision::Deactivate, 5).await;
    assert_eq!(
        f.master.calls(),
        vec![Call::Promote {
            no: 2,
            avoid: vec![1, 2]
        }]
    );
}

#[tokio::test]
async fn a_member_back_from_a_miss_is_resynced_from_its_partner_after_the_settle_second() {
    let f = Fixture::new(1).await;
    f.register(1, "alice").await;
    f.register(1, "bob").await;
    f.register(2, "stale").await; // removed on member 1 while 2 was away
    let topo = f.publish([0, T0]);
    // Within the miss's own second (and the next) statements may still be
    // landing on member 2: nothing is copied yet.
    f.now.store(T0 + RESYNC_SETTLE_SECS, Ordering::Release);
    f.engine.maybe_resync(&topo);
    f.settle().await;
    assert_eq!((f.contacts(2).await, f.master.calls()), (1, vec![]));
    f.now.store(T0 + RESYNC_SETTLE_SECS + 1, Ordering::Release);
    f.engine.maybe_resync(&topo);
    f.settle().await;
    assert_eq!(f.contacts(2).await, 2, "copied alice and bob, pruned stale");
    assert_eq!(
        f.master.calls(),
        vec![Call::Clear {
            no: 2,
            expected: to_db_time(T0)
        }]
    );
}

#[tokio::test]
async fn a_group_with_no_complete_member_gets_the_union_of_both() {
    let f = Fixture::new(1).await;
    f.register(1, "alice").await;
    f.register(2, "bob").await;
    let topo = f.publish([T0, T0]);
    f.now.store(T0 + 1, Ordering::Release);
    f.engine.maybe_resync(&topo);
    f.settle().await;
    assert_eq!((f.contacts(1).await, f.contacts(2).await), (2, 2));
    let mut calls = f.master.calls();
    calls.sort_by_key(|c| format!("{c:?}"));
    let expected = to_db_time(T0);
    assert_eq!(
        calls,
        vec![
            Call::Clear { no: 1, expected },
            Call::Clear { no: 2, expected }
        ]
    );
}

#[tokio::test]
async fn missed_writes_reach_locdb_once_a_second_and_again_after_a_master_outage() {
    let f = Fixture::new(1).await;
    *f.master.down.lock().unwrap() = true;
    let m2 = f.member(2);
    f.engine.marks.missed_write(&m2);
    f.engine.marks.missed_write(&m2);
    f.settle().await;
    // A storm of failed writes is one update a second, not one each.
    assert_eq!(f.master.calls(), vec![Call::Mark { no: 2, at: T0 }]);
    assert!(
        !m2.readable(T0, 3600),
        "kept from reads in this instance at once"
    );
    f.now.store(T0 + 1, Ordering::Release);
    *f.master.down.lock().unwrap() = false;
    f.engine.marks.reconcile(&[f.member(1), m2.clone()]);
    f.settle().await;
    // Only the member with an unrecorded miss, dated when it happened.
    assert_eq!(
        f.master.calls(),
        vec![Call::Mark { no: 2, at: T0 }, Call::Mark { no: 2, at: T0 }]
    );
    // Once `locdb` shows it, nothing is re-sent.
    f.publish([0, T0]);
    m2.health.settle_marks(T0);
    f.now.store(T0 + 2, Ordering::Release);
    f.engine.marks.reconcile(&[f.member(1), f.member(2)]);
    f.settle().await;
    assert_eq!(f.master.calls().len(), 2);
}

#[tokio::test]
async fn readmissions_and_operator_changes_are_updates_on_the_master() {
    let f = Fixture::new(1).await;
    f.engine.act(&f.member(2), Decision::Readmit, 0).await;
    let n = f
        .engine
        .set_status(1, 2, MemberStatus::Maintenance)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(
        f.master.calls(),
        vec![
            Call::Readmit { no: 2 },
            Call::Status {
                no: 2,
                status: MemberStatus::Maintenance.code()
            }
        ]
    );
}

#[test]
fn a_layout_change_marks_members_that_must_lack_writes() {
    let cfg = |no: u32, url: &str, status: MemberStatus, failover: UnixTime| MemberConfig {
        group: 1,
        no,
        url: DbUrl::parse(url).unwrap(),
        status,
        errors: 0,
        failover,
        spare: false,
        rg: 1,
    };
    let old = T0 - 3600;
    let before = GroupConfig {
        id: 1,
        members: vec![
            cfg(1, "sqlite://a.db", MemberStatus::On, old),
            cfg(2, "sqlite://b.db", MemberStatus::Off, old),
        ],
        leaving: false,
    };
    let on_by_hand = cfg(2, "sqlite://b.db", MemberStatus::On, old);
    assert_eq!(layout_miss(Some(&before), &on_by_hand, None, T0), Some(T0));
    // A locsvc re-admission recorded a recent `failover` already.
    let readmitted = cfg(2, "sqlite://b.db", MemberStatus::On, T0 - 5);
    assert_eq!(layout_miss(Some(&before), &readmitted, None, T0), None);
    let new_member = cfg(3, "sqlite://c.db", MemberStatus::On, old);
    assert_eq!(layout_miss(Some(&before), &new_member, None, T0), Some(T0));
    // The first layout an instance loads: nothing to compare with.
    assert_eq!(layout_miss(None, &on_by_hand, None, T0), None);
    let unchanged = cfg(1, "sqlite://a.db", MemberStatus::On, old);
    assert_eq!(layout_miss(Some(&before), &unchanged, None, T0), None);
    // A spare took slot 1 (recorded at T0 - 5), and this instance saw the
    // slot's previous member miss a write later: the spare lacks it too.
    let spare = cfg(1, "sqlite://s.db", MemberStatus::On, T0 - 5);
    assert_eq!(
        layout_miss(Some(&before), &spare, Some(T0 - 2), T0),
        Some(T0 - 2)
    );
    assert_eq!(layout_miss(Some(&before), &spare, Some(T0 - 9), T0), None);
}
