//! Live `locdb` changes: picked up without a restart, bad rows reported
//! without taking the service down, expiry driven by an injected clock.

use std::time::Duration;

use locsvc::domain::{Aor, KeyPolicy};
use locsvc::store::LocationStore;
use locsvc::store::migrate::Scope;
use locsvc_proto::v1 as pb;

use crate::harness::*;

async fn master_sql(url: &str, sql: &str) {
    let mut c: sqlx::SqliteConnection = sqlx::Connection::connect(url).await.unwrap();
    sqlx::Executor::execute(&mut c, sql).await.unwrap();
}

/// Waits for the next published snapshot that satisfies `f`.
async fn wait_topology(app: &TestApp, what: &str, f: impl Fn(&locsvc::cluster::Topology) -> bool) {
    let mut rx = app.service.router().subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f(&rx.borrow_and_update()) {
        tokio::time::timeout_at(deadline, rx.changed())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
            .unwrap();
    }
}

async fn group_of(
    c: &mut locsvc_proto::v1::location_client::LocationClient<tonic::transport::Channel>,
    aor: &str,
) -> u32 {
    c.lookup(pb::LookupRequest {
        table: String::new(),
        aor: aor.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .group
}

#[tokio::test]
async fn a_new_group_takes_new_saves_without_a_restart_and_moves_one_in_n_plus_one() {
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 2).await;
    let app = TestApp::spawn(layout.settings()).await;
    let mut c = app.client().await;
    let aors: Vec<String> = (0..3000)
        .map(|i| format!("sip:user{i}@example.com"))
        .collect();
    let mut before = Vec::with_capacity(aors.len());
    for a in &aors {
        before.push(group_of(&mut c, a).await);
    }
    assert!(before.iter().all(|g| *g == 1 || *g == 2));

    // The operator adds group 3 with plain SQL.
    let mut urls = Vec::new();
    for no in 1..=2 {
        let url = fresh_db(Backend::Sqlite, layout.dir.path()).await;
        let s = open_store(&url, true);
        s.migrate(Scope::Table("location")).await.unwrap();
        urls.push(url.clone());
        master_sql(
            &layout.master_url,
            &format!("INSERT INTO locdb (id, no, url, status, spare, rg) VALUES (3, {no}, '{url}', 1, 0, {no})"),
        )
        .await;
    }
    wait_topology(&app, "group 3 is live", |t| t.groups.contains_key(&3)).await;

    let mut moved = 0;
    let mut moved_aor = None;
    for (a, b) in aors.iter().zip(&before) {
        let g = group_of(&mut c, a).await;
        if g != *b {
            assert_eq!(g, 3, "{a} may only move to the new group");
            moved += 1;
            moved_aor.get_or_insert(a.clone());
        }
    }
    let share = f64::from(moved) / aors.len() as f64;
    assert!((share - 1.0 / 3.0).abs() < 0.05, "moved share {share:.3}");

    let aor = moved_aor.unwrap();
    let r = c
        .save(register(&aor, "sip:moved@192.0.2.1", Some(600), "m", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.group, 3);
    let key = Aor::parse(&aor, KeyPolicy::default()).unwrap();
    for url in &urls {
        let rows = open_store(url, true)
            .load_aor("location", &key)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "new group member {url} holds the binding");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_locdb_edits_are_reported_and_the_service_keeps_serving() {
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 2).await;
    let app = TestApp::spawn(layout.settings()).await;
    let mut c = app.client().await;
    c.save(register(
        "sip:jane@example.com",
        "sip:j@192.0.2.1",
        Some(600),
        "j",
        1,
    ))
    .await
    .unwrap();

    master_sql(
        &layout.master_url,
        "INSERT INTO locdb (id, no, url, status) VALUES (9, 1, 'oracle://x/y', 1)",
    )
    .await;
    master_sql(
        &layout.master_url,
        "INSERT INTO locdb (id, no, url, status) VALUES (9, 2, 'sqlite:///tmp/x.db', 7)",
    )
    .await;
    master_sql(
        &layout.master_url,
        "UPDATE locdb SET url = 'nonsense' WHERE id = 1 AND no = 2",
    )
    .await;
    wait_topology(&app, "problems reported", |t| t.problems.len() >= 3).await;

    let topo = app.service.router().topology();
    let text: Vec<String> = topo.problems.iter().map(ToString::to_string).collect();
    assert!(
        text.iter()
            .any(|p| p.contains("id=9, no=1") && p.contains("oracle")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|p| p.contains("unknown status 7")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|p| p.contains("group 1") && p.contains("last valid")),
        "{text:?}"
    );
    assert_eq!(
        topo.groups.keys().copied().collect::<Vec<_>>(),
        [1, 2],
        "group 9 unused, group 1 kept"
    );
    assert_eq!(
        app.metrics.config_problems.get(),
        topo.problems.len() as i64
    );

    assert_eq!(
        lookup_contacts(&mut c, "sip:jane@example.com").await,
        ["sip:j@192.0.2.1"]
    );
    for i in 0..20 {
        c.save(register(
            &format!("sip:k{i}@example.com"),
            "sip:k@192.0.2.2",
            Some(600),
            "k",
            1,
        ))
        .await
        .expect("saves keep working");
    }
    app.stop().await;
}

#[tokio::test]
async fn expired_bindings_are_never_returned_and_the_sweeper_removes_them_from_every_member() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let clock = manual_clock();
    let mut settings = layout.settings();
    settings.expiry.batch = 10;
    settings.expiry.max_batches = 2;
    settings.expiry.interval = Duration::from_secs(3600);
    let app = TestApp::spawn_with_clock(settings, clock.clock()).await;
    let mut c = app.client().await;
    for i in 0..25 {
        c.save(register(
            &format!("sip:short{i}@example.com"),
            "sip:s@192.0.2.1",
            Some(60),
            "s",
            1,
        ))
        .await
        .unwrap();
    }
    c.save(register(
        "sip:long@example.com",
        "sip:l@192.0.2.1",
        Some(3600),
        "l",
        1,
    ))
    .await
    .unwrap();
    clock.advance(61);
    assert!(
        lookup_contacts(&mut c, "sip:short3@example.com")
            .await
            .is_empty()
    );
    assert_eq!(
        lookup_contacts(&mut c, "sip:long@example.com").await.len(),
        1
    );

    // Two members, 25 expired rows each, 2 batches of 10 per member and pass.
    let lag = || app.metrics.sweep_lag.with_label_values(&["location"]).get();
    clock.advance(20);
    let first = app.sweeper.sweep_once(clock.now()).await;
    assert_eq!((first.deleted, first.failures), (40, 0));
    // Five rows per member left behind, expired at save + 60 s, 21 s ago.
    assert_eq!(lag(), 21);
    assert_eq!(app.metrics.sweep_last_pass.get(), clock.now());
    let second = app.sweeper.sweep_once(clock.now()).await;
    assert_eq!(second.deleted, 10);
    assert_eq!(lag(), 0);
    assert_eq!(app.sweeper.sweep_once(clock.now()).await.deleted, 0);
    assert_eq!(app.metrics.contacts_swept.get(), 50);
    for url in &layout.members[0] {
        let s = open_store(url, true);
        let st = s.stats("location", 0).await.unwrap();
        assert_eq!(st.contacts, 1, "only the live binding is left on {url}");
    }
    app.stop().await;
}
