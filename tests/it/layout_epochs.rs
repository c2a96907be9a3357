//! Layout epochs in `locsvc_layout` (docs/layout-changes.md): the first
//! instance records the groups that own AoRs; a change of groups in `locdb`
//! starts one new epoch (however many instances see it), which advances a
//! phase only once every live instance serves the current one.

use std::time::Duration;

use locsvc::store::{LayoutRow, SqlStore};

use crate::harness::*;

async fn layout_is(master: &SqlStore, what: &str, f: impl Fn(&LayoutRow) -> bool) {
    eventually(
        what,
        Duration::from_secs(30),
        async || matches!(master.current_layout().await, Ok(Some(r)) if f(&r)),
    )
    .await;
}

/// Adds group `id` (two fresh members on `backend`) to `layout`'s `locdb`.
async fn add_group(layout: &Layout, id: i64, backend: Backend) {
    let master = layout.master();
    for no in 1..=2 {
        let url = fresh_db(backend, layout.dir.path()).await;
        let s = open_store(&url, true);
        s.migrate(locsvc::store::migrate::Scope::Table("location"))
            .await
            .unwrap();
        s.close().await;
        master.insert_locdb(&locdb_row(id, no, &url)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_one_epoch_that_advances_once_every_instance_serves_it() {
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    let mut settings = layout.settings();
    // A phase counts as served one request deadline after it was seen.
    settings.grpc.request_timeout = Duration::from_millis(300);
    let a = TestApp::spawn(settings.clone()).await;
    let master = layout.master();
    layout_is(&master, "epoch 1: groups 1 and 2, done", |r| {
        (r.epoch, r.owners.as_str(), r.phase) == (1, "1,2", 2)
    })
    .await;
    let b = TestApp::spawn(settings).await;

    add_group(&layout, 3, Backend::MariaDb2).await;
    layout_is(
        &master,
        "epoch 2: groups 1 to 3, moving, every instance served it",
        |r| (r.epoch, r.owners.as_str(), r.phase, r.moving_acked) == (2, "1,2,3", 1, true),
    )
    .await;
    // Both instances saw the change; one started the epoch.
    assert_eq!(
        master.layout_owners(3).await.unwrap(),
        None,
        "one new epoch"
    );
    let rows = master.instances().await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|i| (i.epoch, i.phase) == (2, 1)),
        "each reports what it serves: {rows:?}"
    );
    for app in [&a, &b] {
        assert_eq!(app.metrics.layout_epoch.get(), 2);
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_instance_holds_the_phase_back() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    let mut settings = layout.settings();
    settings.grpc.request_timeout = Duration::from_millis(300);
    let a = TestApp::spawn(settings.clone()).await;
    let master = layout.master();
    layout_is(&master, "epoch 1 done", |r| (r.epoch, r.phase) == (1, 2)).await;
    // A peer that registered and fell silent (within its lease): it never
    // reports serving the new epoch, so the change waits for it.
    let now = locsvc::cluster::registry::now_ms();
    master
        .put_instance(&locsvc::store::InstanceRow {
            id: "silent".into(),
            host: "elsewhere".into(),
            started_ms: now,
            seen_ms: now + 60_000,
            newest_peer_ms: now + 60_000,
            epoch: 1,
            phase: 2,
        })
        .await
        .unwrap();
    add_group(&layout, 3, Backend::MariaDb2).await;
    layout_is(&master, "epoch 2 announced", |r| {
        (r.epoch, r.phase) == (2, 0)
    })
    .await;
    eventually(
        "this instance serves epoch 2",
        Duration::from_secs(10),
        async || {
            master
                .instances()
                .await
                .unwrap()
                .iter()
                .any(|i| i.id != "silent" && (i.epoch, i.phase) == (2, 0))
        },
    )
    .await;
    // Several polls later, still announced: the silent peer holds it.
    let polls = || {
        a.metrics
            .config_reloads
            .with_label_values(&["unchanged"])
            .get()
    };
    let from = polls();
    eventually("five more polls", Duration::from_secs(10), async || {
        polls() >= from + 5
    })
    .await;
    let r = master.current_layout().await.unwrap().unwrap();
    assert_eq!((r.epoch, r.phase), (2, 0), "held back by the silent peer");
    // Once it reports the epoch, the phase moves on.
    master
        .put_instance(&locsvc::store::InstanceRow {
            id: "silent".into(),
            host: "elsewhere".into(),
            started_ms: now,
            seen_ms: now + 60_000,
            newest_peer_ms: now + 60_000,
            epoch: 2,
            phase: 0,
        })
        .await
        .unwrap();
    layout_is(&master, "epoch 2 moving", |r| (r.epoch, r.phase) == (2, 1)).await;
    a.stop().await;
}
