//! End to end: a real locsvc served on loopback, driven by the generated
//! gRPC client, on the embedded SQLite layout and on real MariaDB and
//! PostgreSQL layouts.

use std::time::Duration;

use locsvc_proto::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::harness::*;

/// A wait's description written only when the wait fails, so it shows what
/// the condition saw last rather than what was known when the wait began.
struct Lazy<F>(F);

impl<F: Fn() -> String> std::fmt::Display for Lazy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// The user-visible flow every backend must support.
async fn register_lookup_remove_round_trip(app: &TestApp) {
    let mut c = app.client().await;
    let aor = "sip:Alice@Example.com";
    let r = c
        .save(pb::SaveRequest {
            aor: aor.into(),
            contacts: vec![
                contact("sip:alice@192.0.2.10:5060", Some(600), Some(0.5)),
                contact("sip:alice@192.0.2.11:5060", None, None),
                contact("sip:alice@192.0.2.12:5060", Some(300), Some(0.9)),
            ],
            expires: Some(1200),
            call_id: "call-1".into(),
            cseq: 1,
            path: vec!["<sip:edge.example.com;lr>".into()],
            received: "sip:198.51.100.7:40123".into(),
            user_agent: "it-phone".into(),
            ..Default::default()
        })
        .await
        .expect("save")
        .into_inner();
    let order: Vec<&str> = r.bindings.iter().map(|b| b.contact.as_str()).collect();
    assert_eq!(
        order,
        [
            "sip:alice@192.0.2.12:5060",
            "sip:alice@192.0.2.10:5060",
            "sip:alice@192.0.2.11:5060"
        ],
        "q descending, unspecified q last"
    );
    let b = &r.bindings[2];
    assert!(
        (1199..=1200).contains(&b.expires_in),
        "Expires header applies: {}",
        b.expires_in
    );
    assert_eq!(b.path, ["<sip:edge.example.com;lr>"]);
    assert_eq!(b.received, "sip:198.51.100.7:40123");
    assert_eq!(b.q, None);

    let l = c
        .lookup(pb::LookupRequest {
            table: String::new(),
            aor: "alice@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.group, r.group, "the canonical key finds the same group");
    assert_eq!(
        l.bindings.iter().map(|b| &b.contact).collect::<Vec<_>>(),
        r.bindings.iter().map(|b| &b.contact).collect::<Vec<_>>()
    );
    assert_eq!(l.bindings[0].ruid, r.bindings[0].ruid);

    let dump = dump_all(&mut c).await;
    assert_eq!(dump.len(), 3);
    assert!(dump.iter().all(|(a, _, _)| a == "alice@example.com"));
    let stats = c
        .stats(pb::StatsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.contacts, stats.aors), (3, 1));

    let removed = c
        .remove(pb::RemoveRequest {
            table: String::new(),
            aor: aor.into(),
            contact: "sip:alice@192.0.2.10:5060".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(removed.removed, 1);
    assert_eq!(lookup_contacts(&mut c, aor).await.len(), 2);

    // By record id, as Kamailio's lookup/unregister by ruid.
    let first = &r.bindings[0];
    let by_ruid = c
        .lookup(pb::LookupRequest {
            aor: aor.into(),
            ruid: first.ruid.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        by_ruid
            .bindings
            .iter()
            .map(|b| &b.contact)
            .collect::<Vec<_>>(),
        [&first.contact]
    );
    let by_ruid = |contact: &str| pb::RemoveRequest {
        aor: aor.into(),
        contact: contact.into(),
        ruid: first.ruid.clone(),
        ..Default::default()
    };
    let both = c.remove(by_ruid(&first.contact)).await.unwrap_err();
    assert_eq!(both.code(), tonic::Code::InvalidArgument);
    assert!(both.message().contains("ruid"), "{both:?}");
    let removed = c.remove(by_ruid("")).await.unwrap().into_inner();
    assert_eq!(removed.removed, 1);
    assert_eq!(lookup_contacts(&mut c, aor).await.len(), 1);
    c.remove(pb::RemoveRequest {
        table: String::new(),
        aor: aor.into(),
        contact: String::new(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(lookup_contacts(&mut c, aor).await.is_empty());
}

#[tokio::test]
async fn the_census_counts_contacts_and_aors_per_group() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.cluster.census_interval = Duration::from_millis(100);
    let app = TestApp::spawn(settings).await;
    let mut c = app.client().await;
    for (user, contacts) in [("ann", 2), ("bob", 1), ("cy", 1), ("dee", 1)] {
        let contacts = (0..contacts)
            .map(|i| pb::ContactSpec {
                uri: format!("sip:{user}@192.0.2.{i}"),
                ..Default::default()
            })
            .collect();
        c.save(pb::SaveRequest {
            aor: format!("sip:{user}@example.com"),
            contacts,
            call_id: format!("census-{user}"),
            cseq: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let m = &app.metrics;
    let sum = |contacts: bool| {
        let g = if contacts {
            &m.group_contacts
        } else {
            &m.group_aors
        };
        ["1", "2"]
            .iter()
            .map(|group| g.with_label_values(&["location", group]).get())
            .sum::<i64>()
    };
    eventually(
        "the census counted 5 contacts of 4 AoRs",
        Duration::from_secs(10),
        async || sum(true) == 5 && sum(false) == 4,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_embedded_sqlite_layout_serves_a_full_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let app = TestApp::spawn(test_settings(dir.path())).await;
    register_lookup_remove_round_trip(&app).await;
    assert!(dir.path().join("data/master.db").exists());
    assert!(dir.path().join("data/group2-member2.db").exists());
    let text = app.scrape().await;
    assert!(text.contains("200 OK"), "{text}");
    assert!(
        text.contains(r#"locsvc_rpc_requests_total{code="Ok",method="Save"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"locsvc_member_status{group="2",member="2"} 1"#),
        "{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_mariadb_layout_serves_a_full_round_trip_and_writes_both_members() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    let app = TestApp::spawn(layout.settings()).await;
    register_lookup_remove_round_trip(&app).await;
    let mut c = app.client().await;
    let r = c
        .save(register(
            "sip:bob@example.com",
            "sip:bob@192.0.2.20",
            Some(600),
            "b1",
            1,
        ))
        .await
        .unwrap()
        .into_inner();
    let aor = locsvc::domain::Aor::parse("sip:bob@example.com", Default::default()).unwrap();
    for url in &layout.members[r.group as usize - 1] {
        let s = open_store(url, true);
        let rows = locsvc::store::LocationStore::load_aor(&s, "location", &aor)
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "member {url:?} holds the binding");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_postgres_layout_serves_a_full_round_trip() {
    let layout = Layout::create(
        Backend::Postgres,
        &[Backend::Postgres, Backend::MariaDb2],
        2,
    )
    .await;
    let app = TestApp::spawn(layout.settings()).await;
    register_lookup_remove_round_trip(&app).await;
    app.stop().await;
}

async fn sqlite_conn(url: &str) -> sqlx::SqliteConnection {
    sqlx::Connection::connect(url)
        .await
        .expect("open sqlite member")
}

fn reason(s: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    let i = s.get_details_error_info().expect("error info detail");
    (i.reason, i.metadata)
}

#[tokio::test]
async fn registrar_refusals_carry_what_a_sip_front_needs() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.registrar.max_contacts = 2;
    let app = TestApp::spawn(settings).await;
    let mut c = app.client().await;
    let aor = "sip:carol@example.com";

    let e = c
        .save(register(aor, "sip:c@192.0.2.1", Some(10), "x", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let (r, meta) = reason(&e);
    assert_eq!(
        (r.as_str(), meta["min_expires"].as_str()),
        ("INTERVAL_TOO_BRIEF", "60")
    );

    c.save(register(aor, "sip:c@192.0.2.1", Some(600), "x", 5))
        .await
        .unwrap();
    let e = c
        .save(register(aor, "sip:c@192.0.2.1", Some(600), "x", 4))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(reason(&e).0, "CSEQ_OUT_OF_ORDER");
    // An equal CSeq right away is a retransmission: 200 with the bindings.
    let retrans = c
        .save(register(aor, "sip:c@192.0.2.1", Some(600), "x", 5))
        .await
        .unwrap();
    assert_eq!(retrans.into_inner().bindings.len(), 1);

    c.save(register(aor, "sip:c@192.0.2.2", Some(600), "y", 1))
        .await
        .unwrap();
    let e = c
        .save(register(aor, "sip:c@192.0.2.3", Some(600), "z", 1))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert_eq!(reason(&e).1["max_contacts"], "2");

    let wild = pb::SaveRequest {
        aor: aor.into(),
        wildcard: true,
        expires: Some(0),
        call_id: "w".into(),
        cseq: 1,
        ..Default::default()
    };
    assert!(c.save(wild).await.unwrap().into_inner().bindings.is_empty());
    assert!(lookup_contacts(&mut c, aor).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_invalid_argument_naming_the_field_and_changes_nothing() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        2,
    )
    .await;
    let app = TestApp::spawn(layout.settings()).await;
    let mut c = app.client().await;
    let good = register(
        "sip:dave@example.com",
        "sip:dave@192.0.2.1",
        Some(600),
        "d",
        1,
    );
    c.save(good.clone()).await.unwrap();
    let before = dump_all(&mut c).await;

    let with = |f: &dyn Fn(&mut pb::SaveRequest)| {
        let mut r = good.clone();
        r.cseq = 2;
        f(&mut r);
        r
    };
    let cases: Vec<(&str, pb::SaveRequest)> = vec![
        ("aor", with(&|r| r.aor = String::new())),
        ("aor", with(&|r| r.aor = "   ".into())),
        ("aor", with(&|r| r.aor = "http://dave@example.com".into())),
        ("aor", with(&|r| r.aor = "sip:dave@exa mple.com".into())),
        (
            "aor",
            with(&|r| r.aor = "sip:dave@example.com'; DROP TABLE location; --".into()),
        ),
        (
            "aor",
            with(&|r| r.aor = format!("sip:{}@example.com", "d".repeat(65))),
        ),
        ("aor", with(&|r| r.aor = "sip:dave".into())),
        (
            "contacts[0].uri",
            with(&|r| r.contacts[0].uri = "not a uri".into()),
        ),
        (
            "contacts[0].uri",
            with(&|r| r.contacts[0].uri = String::new()),
        ),
        (
            "contacts[0].uri",
            with(&|r| r.contacts[0].uri = format!("sip:{}@h", "x".repeat(600))),
        ),
        (
            "contacts[0].expires",
            with(&|r| r.contacts[0].expires = Some(-1)),
        ),
        (
            "contacts[0].expires",
            with(&|r| r.contacts[0].expires = Some(1 << 40)),
        ),
        ("expires", with(&|r| r.expires = Some(-3600))),
        ("contacts[0].q", with(&|r| r.contacts[0].q = Some(1.01))),
        ("contacts[0].q", with(&|r| r.contacts[0].q = Some(-0.5))),
        (
            "contacts",
            with(&|r| r.contacts = vec![r.contacts[0].clone(); 10_000]),
        ),
        ("call_id", with(&|r| r.call_id = "c".repeat(300))),
        ("call_id", with(&|r| r.call_id = String::new())),
        ("cseq", with(&|r| r.cseq = u32::MAX)),
        ("received", with(&|r| r.received = "r".repeat(200))),
        ("socket", with(&|r| r.socket = "s".repeat(100))),
        (
            "path",
            with(&|r| r.path = vec!["<sip:p.example.com;lr>".into(); 40]),
        ),
        (
            "contacts[0].instance",
            with(&|r| r.contacts[0].instance = "i".repeat(300)),
        ),
        ("wildcard", with(&|r| r.wildcard = true)),
        (
            "table",
            with(&|r| r.table = "location; DROP TABLE locdb".into()),
        ),
    ];
    for (field, req) in cases {
        let e = c.save(req).await.expect_err(field);
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        let violations = e
            .get_details_bad_request()
            .expect("bad request detail")
            .field_violations;
        assert_eq!(violations[0].field, field, "{e:?}");
    }
    let e = c
        .lookup(pb::LookupRequest {
            table: String::new(),
            aor: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // In a LookupMany, a bad lookup fails alone, with the same status and
    // details a Lookup gets; too many lookups fail the call.
    let lookup = |aor: &str| pb::LookupRequest {
        aor: aor.into(),
        ..Default::default()
    };
    let outcomes = c
        .lookup_many(pb::LookupManyRequest {
            lookups: vec![
                lookup("sip:dave@example.com"),
                lookup(""),
                lookup("sip:nobody@example.com"),
            ],
        })
        .await
        .expect("lookup many")
        .into_inner()
        .outcomes;
    use pb::lookup_outcome::Outcome;
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert!(
        matches!(&outcomes[0].outcome, Some(Outcome::Found(f)) if !f.bindings.is_empty()),
        "{outcomes:?}"
    );
    let Some(Outcome::Failed(failed)) = &outcomes[1].outcome else {
        panic!("{outcomes:?}");
    };
    let status = tonic::Status::from(failed.clone());
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_error_info().map(|i| i.reason),
        Some(locsvc_proto::reason::BAD_REQUEST.to_string())
    );
    assert_eq!(
        status
            .get_details_bad_request()
            .expect("bad request detail")
            .field_violations[0]
            .field,
        "aor"
    );
    assert!(
        matches!(&outcomes[2].outcome, Some(Outcome::Found(f)) if f.bindings.is_empty()),
        "{outcomes:?}"
    );
    let e = c
        .lookup_many(pb::LookupManyRequest {
            lookups: vec![lookup("sip:dave@example.com"); 1001],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.get_details_bad_request().unwrap().field_violations[0].field,
        "lookups"
    );
    let e = c
        .remove(pb::RemoveRequest {
            table: String::new(),
            aor: "sip:dave@example.com".into(),
            contact: "garbage contact".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(dump_all(&mut c).await, before, "stored data untouched");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_registers_for_one_aor_lose_no_binding() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let mut settings = layout.settings();
    settings.registrar.max_contacts = 64;
    let app = TestApp::spawn(settings).await;
    let aor = "sip:erin@example.com";
    let mut tasks = Vec::new();
    for i in 0..32 {
        let mut c = app.client().await;
        tasks.push(tokio::spawn(async move {
            c.save(register(
                aor,
                &format!("sip:erin@192.0.2.{i}"),
                Some(600),
                &format!("call-{i}"),
                1,
            ))
            .await
            .map(|_| ())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every concurrent save succeeds");
    }
    let mut c = app.client().await;
    assert_eq!(lookup_contacts(&mut c, aor).await.len(), 32);
    app.stop().await;
}

#[tokio::test]
async fn a_member_that_missed_a_write_is_not_read_until_it_cannot_lack_anything() {
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 1).await;
    let clock = manual_clock();
    let mut settings = layout.settings();
    // No probe round after the first, hence no resync: this test is about
    // the window rule alone (resync has its own tests).
    settings.failover.probe_interval = Duration::from_secs(3600);
    let window = settings.stale_window();
    let app = TestApp::spawn_with_clock(settings, clock.clock()).await;
    let mut c = app.client().await;
    // Member 2 refuses writes (its table is away): the database answers "no".
    let mut conn = sqlite_conn(&layout.members[0][1]).await;
    sqlx::Executor::execute(&mut conn, "ALTER TABLE location RENAME TO location_away")
        .await
        .unwrap();
    let aor = "sip:frank@example.com";
    c.save(register(aor, "sip:frank@192.0.2.1", Some(600), "f", 1))
        .await
        .expect("acknowledged by member 1 alone");
    // The table comes back; member 2 now lacks the binding.
    sqlx::Executor::execute(&mut conn, "ALTER TABLE location_away RENAME TO location")
        .await
        .unwrap();
    drop(conn);
    let m2 = open_store(&layout.members[0][1], true);
    let key = locsvc::domain::Aor::parse(aor, Default::default()).unwrap();
    assert!(
        locsvc::store::LocationStore::load_aor(&m2, "location", &key)
            .await
            .unwrap()
            .is_empty()
    );
    for _ in 0..20 {
        assert_eq!(lookup_contacts(&mut c, aor).await, ["sip:frank@192.0.2.1"]);
    }
    let missed = app
        .metrics
        .member_missed_writes
        .with_label_values(&["1", "2"])
        .get();
    assert_eq!(missed, 1);
    // Every instance learns it through locdb.failover.
    let master = layout.master();
    let t = clock.now();
    let started = std::time::Instant::now();
    let last_rows = std::cell::RefCell::new(Vec::new());
    eventually(
        Lazy(|| {
            format!(
                "locdb.failover of member 2 to record the missed write at {t}; rows after {:?}: {:?}",
                started.elapsed(),
                last_rows.borrow()
            )
        }),
        Duration::from_secs(5),
        async || {
            let rows = master.load_locdb().await.unwrap();
            let recorded = rows
                .iter()
                .any(|r| r.no == 2 && r.failover.and_utc().timestamp() == t);
            *last_rows.borrow_mut() = rows;
            recorded
        },
    )
    .await;
    // Member 1 missed nothing: its "long ago" stays untouched.
    let m1 = &master.load_locdb().await.unwrap()[0];
    assert_eq!((m1.no, m1.failover), (1, locsvc::store::FAILOVER_RESET));
    let group = app.service.router().topology().groups[&1].clone();
    assert_eq!(app.service.router().readable_members(&group).len(), 1);
    clock.advance(window + 1);
    // The poll republishes once the failover column reached the snapshot;
    // after the window both members are readable again.
    eventually(
        "member 2 readable again after the window",
        Duration::from_secs(10),
        async || {
            let g = app.service.router().topology().groups[&1].clone();
            app.service.router().readable_members(&g).len() == 2
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn the_bearer_token_guards_the_api_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.grpc.token = Some("s3cret".into());
    let app = TestApp::spawn(settings).await;
    let mut c = app.client().await;
    let e = c
        .lookup(pb::LookupRequest {
            table: String::new(),
            aor: "sip:a@b.c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(pb::LookupRequest {
        table: String::new(),
        aor: "sip:a@b.c".into(),
        ..Default::default()
    });
    req.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert!(c.lookup(req).await.is_ok());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "locsvc.v1.Location".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    app.stop().await;
}

#[tokio::test]
async fn overload_is_refused_at_once_with_unavailable() {
    let layout = Layout::create(Backend::Sqlite, &[Backend::Sqlite, Backend::Sqlite], 1).await;
    let mut settings = layout.settings();
    settings.grpc.max_in_flight = 1;
    settings.cluster.pool.acquire_timeout = Duration::from_secs(10);
    let app = TestApp::spawn(settings).await;
    // Hold the write lock of both members so the first Save waits inside.
    let mut locks = Vec::new();
    for url in &layout.members[0] {
        let mut conn = sqlite_conn(url).await;
        sqlx::Executor::execute(&mut conn, "BEGIN IMMEDIATE")
            .await
            .unwrap();
        locks.push(conn);
    }
    let mut c1 = app.client().await;
    let first = tokio::spawn(async move {
        c1.save(register(
            "sip:gina@example.com",
            "sip:g@192.0.2.1",
            Some(600),
            "g",
            1,
        ))
        .await
    });
    let gauge = app.metrics.rpc_in_flight.clone();
    eventually(
        "the first save is in flight",
        Duration::from_secs(10),
        async || gauge.get() == 1,
    )
    .await;
    let mut c2 = app.client().await;
    let started = std::time::Instant::now();
    let e = c2
        .lookup(pb::LookupRequest {
            table: String::new(),
            aor: "sip:hank@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(reason(&e).0, "OVERLOADED");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused without queueing"
    );
    drop(locks);
    first
        .await
        .unwrap()
        .expect("the first save completes once the lock is released");
    assert_eq!(app.metrics.rpc_shed.get(), 1);
    app.stop().await;
}

#[tokio::test]
async fn crc32_mode_places_aors_where_kamailio_p_usrloc_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(dir.path());
    settings.cluster.hash = locsvc::partition::HashMode::Crc32Mod;
    settings.cluster.key_policy.use_domain = false;
    let app = TestApp::spawn(settings).await;
    let mut c = app.client().await;
    // Reference §2, verified against Kamailio with two groups.
    for (aor, group) in [
        ("sip:alice@example.com", 2),
        ("sip:bob@example.com", 1),
        ("Alice", 2),
    ] {
        let r = c
            .save(register(aor, "sip:x@192.0.2.1", Some(600), aor, 1))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.group, group, "{aor}");
    }
    app.stop().await;
}

#[tokio::test]
async fn tls_and_a_bearer_token_protect_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::create(dir.path());
    let mut settings = test_settings(dir.path());
    settings.grpc.tls_cert = Some(pki.server_cert.clone());
    settings.grpc.tls_key = Some(pki.server_key.clone());
    settings.grpc.token = Some("t0ken".into());
    let app = TestApp::spawn(settings).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", app.addr.port()))
            .unwrap()
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(pki.ca_certificate())
                    .domain_name("localhost"),
            )
            .unwrap()
            .connect()
            .await
            .expect("TLS handshake");
    let mut c = locsvc_proto::v1::location_client::LocationClient::new(channel);
    let mut req = tonic::Request::new(register(
        "sip:tls@example.com",
        "sip:t@192.0.2.1",
        Some(600),
        "t",
        1,
    ));
    req.metadata_mut()
        .insert("authorization", "Bearer t0ken".parse().unwrap());
    assert_eq!(c.save(req).await.unwrap().into_inner().bindings.len(), 1);
    // A plaintext client gets nothing out of the TLS port.
    let plain_ok = match LocationClientPlain::connect(format!("http://{}", app.addr)).await {
        Ok(mut p) => p
            .lookup(pb::LookupRequest {
                table: String::new(),
                aor: "sip:tls@example.com".into(),
                ..Default::default()
            })
            .await
            .is_ok(),
        Err(_) => false,
    };
    assert!(!plain_ok);
    app.stop().await;
}

type LocationClientPlain =
    locsvc_proto::v1::location_client::LocationClient<tonic::transport::Channel>;
