//! The router's decisions with members whose timing the test controls: a
//! fake store per member that can hold its writes (a hung server) while
//! still answering reads, or fail them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::*;
use crate::cluster::{Group, Member, MemberConfig, MemberHealth, MemberStatus, Topology};
use crate::domain::{Binding, KeyPolicy, UnixTime};
use crate::partition::{HashMode, Partitioner};
use crate::store::{DbUrl, PoolSettings, StoreOptions, StoredBinding, TableStats, Which};

/// What a held write does once released.
#[derive(Clone, Copy, PartialEq)]
enum Release {
    Apply,
    Fail,
}

/// One member's database: bindings per AoR key, and a gate on writes.
#[derive(Default)]
struct FakeStore {
    rows: Mutex<HashMap<String, Vec<Binding>>>,
    /// Writes wait here while the member "hangs"; released last-in first.
    held: Mutex<Vec<oneshot::Sender<Release>>>,
    hanging: Mutex<Option<Release>>,
    /// Order in which writes were applied, by the first upserted contact
    /// (or "-" for a delete-only write).
    applied: Mutex<Vec<String>>,
    reads: Mutex<u32>,
    /// How reads behave: answer (default), never answer, or fail.
    dead_reads: Mutex<Option<Release>>,
}

impl FakeStore {
    fn hang(&self) {
        *self.hanging.lock().unwrap() = Some(Release::Apply);
    }

    /// Ends the hang: held writes go on (newest first, the worst order
    /// for a member that received them out of order), as `how`.
    fn release(&self, how: Release) {
        *self.hanging.lock().unwrap() = None;
        let held: Vec<_> = self.held.lock().unwrap().drain(..).rev().collect();
        for h in held {
            let _ = h.send(how);
        }
    }

    /// The server dies: reads never answer (`Apply`, a pool reconnecting
    /// to a killed server) or fail at once (`Fail`, a reset connection).
    fn kill_reads(&self, how: Release) {
        *self.dead_reads.lock().unwrap() = Some(how);
    }

    fn contacts(&self, aor: &Aor) -> Vec<String> {
        self.rows
            .lock()
            .unwrap()
            .get(aor.key())
            .map(|v| v.iter().map(|b| b.contact.clone()).collect())
            .unwrap_or_default()
    }
}

fn rejected() -> StoreError {
    StoreError::Rejected("not in the fake".into())
}

#[async_trait]
impl LocationStore for FakeStore {
    async fn load_aor(&self, _t: &str, aor: &Aor) -> Result<Vec<Binding>, StoreError> {
        *self.reads.lock().unwrap() += 1;
        let dead = *self.dead_reads.lock().unwrap();
        match dead {
            Some(Release::Apply) => std::future::pending::<()>().await,
            Some(Release::Fail) => return Err(StoreError::Unavailable("reset".into())),
            None => {}
        }
        Ok(self
            .rows
            .lock()
            .unwrap()
            .get(aor.key())
            .cloned()
            .unwrap_or_default())
    }
    async fn lookup(&self, t: &str, aor: &Aor, _now: UnixTime) -> Result<Vec<Binding>, StoreError> {
        self.load_aor(t, aor).await
    }
    async fn apply(
        &self,
        _t: &str,
        aor: &Aor,
        upserts: &[Binding],
        deletes: &[String],
    ) -> Result<(), StoreError> {
        let gate = self.hanging.lock().unwrap().map(|_| {
            let (tx, rx) = oneshot::channel();
            self.held.lock().unwrap().push(tx);
            rx
        });
        if let Some(rx) = gate
            && rx.await.unwrap_or(Release::Fail) == Release::Fail
        {
            return Err(StoreError::Timeout(Duration::from_millis(500)));
        }
        let mut rows = self.rows.lock().unwrap();
        let v = rows.entry(aor.key().to_string()).or_default();
        v.retain(|b| !deletes.contains(&b.ruid) && !upserts.iter().any(|u| u.ruid == b.ruid));
        v.extend(upserts.iter().cloned());
        self.applied.lock().unwrap().push(
            upserts
                .first()
                .map_or_else(|| "-".to_string(), |b| b.contact.clone()),
        );
        Ok(())
    }
    async fn remove(&self, _: &str, _: &Aor, _: Which<'_>) -> Result<u64, StoreError> {
        Err(rejected())
    }
    async fn sweep_expired(&self, _: &str, _: UnixTime, _: u32) -> Result<u64, StoreError> {
        Err(rejected())
    }
    async fn oldest_expiry(&self, _: &str) -> Result<Option<UnixTime>, StoreError> {
        Err(rejected())
    }
    async fn dump_page(
        &self,
        _: &str,
        _: i64,
        _: u32,
        _: UnixTime,
    ) -> Result<Vec<StoredBinding>, StoreError> {
        Err(rejected())
    }
    async fn stats(&self, _: &str, _: UnixTime) -> Result<TableStats, StoreError> {
        Err(rejected())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn copy_in(&self, _: &str, _: &[StoredBinding]) -> Result<(), StoreError> {
        Err(rejected())
    }
    async fn delete_ruids(&self, _: &str, _: &[String]) -> Result<(), StoreError> {
        Err(rejected())
    }
    async fn existing_ruids(&self, _: &str, _: &[String]) -> Result<Vec<String>, StoreError> {
        Err(rejected())
    }
    async fn probe(&self, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
}

struct Fixture {
    router: Router,
    /// The master the router records marks on (unmigrated unless a test
    /// migrates it).
    master: Arc<SqlStore>,
    group: Arc<Group>,
    stores: Vec<Arc<FakeStore>>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(grace: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<Arc<FakeStore>> = (0..2).map(|_| Arc::default()).collect();
        let members = stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                Arc::new(Member {
                    config: MemberConfig {
                        group: 1,
                        no: i as u32 + 1,
                        url: DbUrl::parse(&format!("sqlite://{}/m{i}.db", dir.path().display()))
                            .unwrap(),
                        status: MemberStatus::On,
                        errors: 0,
                        failover: 0,
                        spare: false,
                        rg: i as i64 + 1,
                    },
                    store: s.clone() as Arc<dyn LocationStore>,
                    health: Arc::new(MemberHealth::default()),
                    timers: Metrics::default().member_timers(1, i as u32 + 1),
                })
            })
            .collect();
        let group = Arc::new(Group { id: 1, members });
        // The master is only written to record marks; it stays unopened
        // (lazy pool) unless a test makes a member miss a write.
        let master = SqlStore::open(
            &DbUrl::parse(&format!("sqlite://{}/master.db", dir.path().display())).unwrap(),
            &StoreOptions {
                tables: Vec::new(),
                use_domain: true,
                pool: PoolSettings::default(),
                query_timeout: Duration::from_secs(1),
            },
        )
        .unwrap();
        let (_tx, topology) = watch::channel(Arc::new(Topology::empty(Partitioner::new(
            HashMode::Xxh3,
            [1],
        ))));
        let master = Arc::new(master);
        let master_handle = master.clone();
        let marks = Arc::new(Marks::new(
            master.clone(),
            Arc::new(|| 1_800_000_000),
            Arc::new(Metrics::new()),
            TaskTracker::new(),
        ));
        let router = Router::new(
            topology,
            master,
            HashMap::from([("location".to_string(), TableMode::Cluster)]),
            RouterSettings {
                stale_window: 3600,
                hedge_delay: Duration::from_millis(20),
                ack_grace: grace,
                poll_interval: Duration::from_millis(50),
            },
            Arc::new(Metrics::new()),
            marks,
            None,
        );
        Self {
            router,
            master: master_handle,
            group,
            stores,
            _dir: dir,
        }
    }

    fn target(&self) -> Target {
        Target::Group(self.group.clone())
    }

    fn member(&self, no: usize) -> &Arc<Member> {
        &self.group.members[no - 1]
    }

    /// Registers `contact` for `aor` (one upsert).
    async fn save(&self, aor: &Aor, contact: &str) -> Result<Vec<()>, RouteError> {
        let b = Binding::sample(contact, 1_800_003_600);
        self.apply(aor, vec![b], vec![]).await
    }

    async fn apply(
        &self,
        aor: &Aor,
        upserts: Vec<Binding>,
        deletes: Vec<String>,
    ) -> Result<Vec<()>, RouteError> {
        let (a, u, d) = (aor.clone(), Arc::new(upserts), Arc::new(deletes));
        let op: WriteOp<()> = Arc::new(move |s: Arc<dyn LocationStore>| {
            let (a, u, d) = (a.clone(), u.clone(), d.clone());
            Box::pin(async move { s.apply("location", &a, &u, &d).await })
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        self.router
            .write(
                &self.target(),
                write_key("location", aor),
                op,
                deadline,
                None,
            )
            .await
    }

    /// Looks `aor` up; `spread` 1 puts member 2 first.
    async fn read(&self, aor: &Aor, spread: u64) -> Result<(Vec<Binding>, u32), RouteError> {
        self.router
            .read(
                &self.target(),
                spread,
                Some(write_key("location", aor)),
                &|s: Arc<dyn LocationStore>| -> BoxFuture<'_, Result<Vec<Binding>, StoreError>> {
                    let a = aor.clone();
                    Box::pin(async move { s.load_aor("location", &a).await })
                },
                Instant::now() + Duration::from_secs(2),
            )
            .await
    }

    /// Waits until every member write has finished.
    async fn settle(&self) {
        self.router.background().close();
        self.router.background().wait().await;
    }
}

fn aor(s: &str) -> Aor {
    Aor::parse(s, KeyPolicy::default()).unwrap()
}

#[tokio::test]
async fn a_hung_member_neither_delays_the_answer_nor_serves_the_written_aor() {
    let f = Fixture::new(Duration::from_millis(5));
    let alice = aor("sip:alice@example.com");
    let bob = aor("sip:bob@example.com");
    f.stores[1].hang();
    // Answered while member 2 still holds the write (the test never releases
    // it before this returns, so waiting for it would hang the test).
    let done = f.save(&alice, "sip:alice@192.0.2.1").await.unwrap();
    assert_eq!(done.len(), 1, "only member 1 confirmed");
    let m2 = f.member(2);
    assert!(
        m2.health
            .unconfirmed
            .is_behind(write_key("location", &alice))
    );
    // Member 2 comes first for this spread, answers reads, and lacks the
    // write: it must not be asked about alice.
    let (rows, served_by) = f.read(&alice, 1).await.unwrap();
    assert_eq!(served_by, 1);
    assert_eq!(rows.len(), 1, "read-your-writes");
    assert_eq!(*f.stores[1].reads.lock().unwrap(), 0);
    // Other AoRs still read from member 2.
    assert_eq!(f.read(&bob, 1).await.unwrap().1, 2);
    // It confirms later: complete, readable again, no missed write.
    f.stores[1].release(Release::Apply);
    f.settle().await;
    assert!(
        !m2.health
            .unconfirmed
            .is_behind(write_key("location", &alice))
    );
    assert_eq!(m2.health.missed_write_at(), 0);
    assert_eq!(f.stores[1].contacts(&alice), ["sip:alice@192.0.2.1"]);
    assert_eq!(f.read(&alice, 1).await.unwrap().1, 2);
}

#[tokio::test]
async fn a_member_that_fails_after_the_answer_is_marked_as_missing_the_write() {
    let f = Fixture::new(Duration::from_millis(5));
    let alice = aor("sip:alice@example.com");
    f.stores[1].hang();
    f.save(&alice, "sip:alice@192.0.2.1").await.unwrap();
    f.stores[1].release(Release::Fail);
    f.settle().await;
    let m2 = f.member(2);
    assert!(m2.health.missed_write_at() > 0, "marked");
    assert!(!m2.readable(1_800_000_000, 3600), "not read until resynced");
    assert_eq!(f.read(&alice, 1).await.unwrap().1, 1);
}

#[tokio::test]
async fn writes_of_one_aor_reach_a_slow_member_in_their_order() {
    let f = Fixture::new(Duration::ZERO);
    let alice = aor("sip:alice@example.com");
    f.stores[1].hang();
    f.save(&alice, "sip:first@192.0.2.1").await.unwrap();
    f.save(&alice, "sip:second@192.0.2.1").await.unwrap();
    f.apply(&alice, vec![], vec!["r-sip:first@192.0.2.1".into()])
        .await
        .unwrap();
    // The fake releases held writes newest first: only the ordering in the
    // router keeps member 2 from applying them backwards.
    f.stores[1].release(Release::Apply);
    f.settle().await;
    let order = f.stores[1].applied.lock().unwrap().clone();
    assert_eq!(order, ["sip:first@192.0.2.1", "sip:second@192.0.2.1", "-"]);
    assert_eq!(f.stores[1].contacts(&alice), f.stores[0].contacts(&alice));
}

#[tokio::test]
async fn a_healthy_pair_confirms_within_the_grace_and_nobody_is_behind() {
    let f = Fixture::new(Duration::from_millis(200));
    let alice = aor("sip:alice@example.com");
    assert_eq!(f.save(&alice, "sip:a@192.0.2.1").await.unwrap().len(), 2);
    for no in [1, 2] {
        assert!(
            !f.member(no)
                .health
                .unconfirmed
                .is_behind(write_key("location", &alice))
        );
    }
    assert_eq!(f.router.metrics.write_confirm_spread.get_sample_count(), 1);
}

#[tokio::test]
async fn an_open_circuit_skips_the_member_and_marks_the_miss_unless_it_is_the_last() {
    let f = Fixture::new(Duration::from_millis(5));
    let alice = aor("sip:alice@example.com");
    f.member(2).health.circuit.open();
    assert_eq!(f.save(&alice, "sip:a@192.0.2.1").await.unwrap().len(), 1);
    f.settle().await;
    assert!(
        f.stores[1].contacts(&alice).is_empty(),
        "nothing sent to it"
    );
    assert!(f.member(2).health.missed_write_at() > 0);
    // Every circuit open: both are tried rather than refusing the write.
    let f = Fixture::new(Duration::from_millis(5));
    f.member(1).health.circuit.open();
    f.member(2).health.circuit.open();
    assert_eq!(f.save(&alice, "sip:a@192.0.2.1").await.unwrap().len(), 2);
}

#[tokio::test]
async fn nothing_confirmed_by_the_deadline_is_a_deadline_error_not_a_wait() {
    let f = Fixture::new(Duration::from_millis(5));
    let alice = aor("sip:alice@example.com");
    f.stores[0].hang();
    f.stores[1].hang();
    let (a, key) = (alice.clone(), write_key("location", &alice));
    let op: WriteOp<()> = Arc::new(move |s: Arc<dyn LocationStore>| {
        let a = a.clone();
        Box::pin(async move { s.apply("location", &a, &[], &["x".into()]).await })
    });
    let start = Instant::now();
    let deadline = start + Duration::from_millis(50);
    let e = f
        .router
        .write(&f.target(), key, op, deadline, None)
        .await
        .unwrap_err();
    assert!(matches!(e, RouteError::Deadline { group: 1 }), "{e}");
    assert!(start.elapsed() < Duration::from_millis(500));
    // Both later fail: nothing was taken, so nobody missed anything.
    f.stores[0].release(Release::Fail);
    f.stores[1].release(Release::Fail);
    f.settle().await;
    assert_eq!(f.member(1).health.missed_write_at(), 0);
    assert_eq!(f.member(2).health.missed_write_at(), 0);
}

#[tokio::test]
async fn a_write_only_an_unreadable_member_confirmed_makes_reads_wait_for_a_readable_one() {
    let f = Fixture::new(Duration::from_millis(5));
    let alice = aor("sip:alice@example.com");
    // Member 2 takes writes but is not read (it missed one: being resynced).
    f.member(2).health.mark_missed(1_800_000_000);
    f.stores[0].hang();
    assert_eq!(f.save(&alice, "sip:a@192.0.2.1").await.unwrap().len(), 1);
    let read = f.read(&alice, 0);
    tokio::pin!(read);
    assert!(
        futures::poll!(&mut read).is_pending(),
        "neither fails nor reads member 1 before it has the write"
    );
    f.stores[0].release(Release::Apply);
    let (rows, served_by) = read.await.unwrap();
    assert_eq!((rows.len(), served_by), (1, 1));
}

#[tokio::test]
async fn when_the_only_member_holding_a_write_dies_its_partner_serves_the_read_once_it_confirms() {
    for death in [Release::Apply, Release::Fail] {
        let f = Fixture::new(Duration::from_millis(5));
        let alice = aor("sip:alice@example.com");
        // Member 2 is slower than the grace: the caller is answered on
        // member 1's confirmation alone.
        f.stores[1].hang();
        f.save(&alice, "sip:a@192.0.2.1").await.unwrap();
        assert!(
            f.member(2)
                .health
                .unconfirmed
                .is_behind(write_key("location", &alice))
        );
        // Then member 1's server dies.
        f.stores[0].kill_reads(death);
        let read = f.read(&alice, 0);
        tokio::pin!(read);
        assert!(
            futures::poll!(&mut read).is_pending(),
            "member 2 is not read before it has the write"
        );
        f.stores[1].release(Release::Apply);
        // Answered by member 2 once it confirmed, long before the 2 s
        // deadline a read waiting on dead member 1 would end at.
        let (rows, served_by) = read.await.unwrap();
        assert_eq!((rows.len(), served_by), (1, 2));
    }
}

#[tokio::test]
async fn whole_group_reads_prefer_the_member_lacking_no_acknowledged_write() {
    let f = Fixture::new(Duration::from_millis(5));
    let alice = aor("sip:alice@example.com");
    assert_eq!(f.router.whole_group_member(&f.group).unwrap().config.no, 1);
    f.stores[0].hang();
    f.save(&alice, "sip:a@192.0.2.1").await.unwrap();
    // Member 1 (first by number) still lacks alice's write: a Dump or Stats
    // reads member 2, which has it.
    assert_eq!(f.router.whole_group_member(&f.group).unwrap().config.no, 2);
    f.stores[0].release(Release::Apply);
    f.settle().await;
    assert_eq!(f.router.whole_group_member(&f.group).unwrap().config.no, 1);
}

#[tokio::test]
async fn reads_go_to_the_partner_of_a_member_being_swept_and_back_after() {
    let f = Fixture::new(Duration::from_millis(5));
    let alice = aor("sip:alice@example.com");
    f.save(&alice, "sip:a@192.0.2.1").await.unwrap();
    f.settle().await;
    // Spread 0 puts member 1 first, spread 1 member 2.
    assert_eq!(f.read(&alice, 0).await.unwrap().1, 1);
    let mark = f.member(1).health.sweeping();
    for spread in 0..4 {
        let (rows, member) = f.read(&alice, spread).await.unwrap();
        assert_eq!((rows.len(), member), (1, 2), "spread {spread}");
    }
    drop(mark);
    assert_eq!(f.read(&alice, 0).await.unwrap().1, 1);
    // The only readable member serves even while it is swept.
    let _mark = f.member(1).health.sweeping();
    f.stores[1].kill_reads(Release::Fail);
    assert_eq!(f.read(&alice, 1).await.unwrap().1, 1);
}

/// Sends when dropped: a write let go of its hold.
struct Released(Mutex<Option<oneshot::Sender<()>>>);

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(tx) = self.0.lock().unwrap().take() {
            let _ = tx.send(());
        }
    }
}

#[tokio::test]
async fn a_held_write_a_member_missed_keeps_its_hold_until_the_miss_is_in_locdb() {
    use crate::store::migrate::Scope;
    let f = Fixture::new(Duration::from_millis(5));
    // The fixture's master, with the group's rows this time.
    let master = f.master.clone();
    master.migrate(Scope::Master).await.unwrap();
    for no in 1..=2 {
        let m = &f.member(no).config;
        master
            .insert_locdb(&crate::store::LocdbRow {
                id: 1,
                no: no as i64,
                url: m.url.expose().to_string(),
                status: 1,
                errors: 0,
                failover: crate::store::FAILOVER_RESET,
                spare: 0,
                rg: m.rg,
                leaving: 0,
            })
            .await
            .unwrap();
    }
    let (registry, _) = crate::cluster::Registry::register(
        master.clone(),
        Duration::from_secs(60),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let router = f.router.clone().with_registry(registry);
    let alice = aor("sip:alice@example.com");
    f.stores[1].hang();
    let (released, gone) = oneshot::channel();
    let hold: Hold = Arc::new(Released(Mutex::new(Some(released))));
    let a = alice.clone();
    let op: WriteOp<()> = Arc::new(move |s: Arc<dyn LocationStore>| {
        let a = a.clone();
        let b = vec![Binding::sample("sip:a@192.0.2.1", 1_800_003_600)];
        Box::pin(async move { s.apply("location", &a, &b, &[]).await })
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    let key = write_key("location", &alice);
    // Member 1 takes it; the caller is answered; the hold stays.
    router
        .write(&f.target(), key, op, deadline, Some(hold))
        .await
        .unwrap();
    let mut gone = gone;
    assert!(matches!(
        gone.try_recv(),
        Err(oneshot::error::TryRecvError::Empty)
    ));
    // Member 2 fails it: the hold goes only once the miss is in locdb, for
    // every instance to see (alone here: no peer to wait for).
    f.stores[1].release(Release::Fail);
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("the hold is let go")
        .unwrap();
    let rows = master.load_locdb().await.unwrap();
    let m2 = rows.iter().find(|r| r.no == 2).unwrap();
    assert!(m2.failover > crate::store::FAILOVER_RESET, "{m2:?}");
}
