//! One storage test suite, expanded for MariaDB, PostgreSQL and SQLite.
//! Every test gets a fresh database on a real server.

use locsvc::domain::{Aor, Binding, KeyPolicy};
use locsvc::store::migrate::Scope;
use locsvc::store::{LocationStore, LocdbRow, LocdbUpdates, SqlStore, StoredBinding, Which};

use crate::harness::{Backend, fresh_db, locdb_row, open_store};

const T0: i64 = 1_800_000_000;

async fn store(backend: Backend, use_domain: bool) -> (SqlStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_db(backend, dir.path()).await;
    let s = open_store(&url, use_domain);
    s.migrate(Scope::Master).await.unwrap();
    s.migrate(Scope::Table("location")).await.unwrap();
    (s, dir)
}

fn aor(s: &str) -> Aor {
    Aor::parse(s, KeyPolicy::default()).unwrap()
}

fn binding(ruid: &str, contact: &str, expires: i64) -> Binding {
    Binding {
        cseq: 7,
        user_agent: "ua".into(),
        ..testkit::binding(ruid, contact, expires, T0)
    }
}

fn full_binding() -> Binding {
    Binding {
        ruid: "uloc-full".into(),
        contact: "sip:alice@[2001:db8::1]:5060;transport=tcp;ob".into(),
        expires: T0 + 3600,
        q: Some(0.5),
        call_id: "a84b4c76e66710@pc33.atlanta.com".into(),
        cseq: 2_147_483_647,
        path: vec![
            "<sip:edge1.example.com;lr>".into(),
            "<sip:edge2.example.com;lr;x=\"a,b\">".into(),
        ],
        received: Some("sip:198.51.100.7:40123".into()),
        user_agent: "Ünïcode phone 1.0 '; DROP TABLE location; --".into(),
        socket: Some("udp:192.0.2.1:5060".into()),
        instance: Some("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>".into()),
        reg_id: 2,
        methods: Some(0x1F),
        flags: 0x40,
        cflags: 0x80,
        last_modified: T0 - 5,
    }
}

async fn every_field_round_trips(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:alice@example.com");
    let full = full_binding();
    s.apply("location", &a, std::slice::from_ref(&full), &[])
        .await
        .unwrap();
    assert_eq!(s.load_aor("location", &a).await.unwrap(), vec![full]);
}

async fn upserts_are_keyed_by_ruid(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:bob@example.com");
    let mut x = binding("r1", "sip:bob@192.0.2.1", T0 + 60);
    s.apply("location", &a, std::slice::from_ref(&x), &[])
        .await
        .unwrap();
    x.contact = "sip:bob@192.0.2.2".into();
    x.expires = T0 + 120;
    x.q = Some(1.0);
    let y = binding("r2", "sip:bob@192.0.2.3", T0 + 60);
    s.apply("location", &a, &[x.clone(), y.clone()], &[])
        .await
        .unwrap();
    let mut got = s.load_aor("location", &a).await.unwrap();
    got.sort_by(|p, q| p.ruid.cmp(&q.ruid));
    assert_eq!(got, vec![x, y]);
}

async fn upserts_and_deletes_apply_together(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:carol@example.com");
    let x = binding("r1", "sip:c@192.0.2.1", T0 + 60);
    let y = binding("r2", "sip:c@192.0.2.2", T0 + 60);
    s.apply("location", &a, &[x.clone(), y], &[]).await.unwrap();
    let z = binding("r3", "sip:c@192.0.2.3", T0 + 60);
    s.apply(
        "location",
        &a,
        std::slice::from_ref(&z),
        &["r2".to_string()],
    )
    .await
    .unwrap();
    let mut got = s.load_aor("location", &a).await.unwrap();
    got.sort_by(|p, q| p.ruid.cmp(&q.ruid));
    assert_eq!(got, vec![x, z]);
}

async fn aors_are_kept_apart_by_user_and_domain(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a1 = aor("sip:dave@example.com");
    let a2 = aor("sip:dave@example.org");
    s.apply("location", &a1, &[binding("r1", "sip:d@1", T0 + 60)], &[])
        .await
        .unwrap();
    s.apply("location", &a2, &[binding("r2", "sip:d@2", T0 + 60)], &[])
        .await
        .unwrap();
    assert_eq!(s.load_aor("location", &a1).await.unwrap().len(), 1);
    assert_eq!(s.load_aor("location", &a2).await.unwrap()[0].ruid, "r2");
    assert_eq!(s.remove("location", &a1, Which::All).await.unwrap(), 1);
    assert_eq!(s.load_aor("location", &a2).await.unwrap().len(), 1);
}

async fn without_domains_the_username_alone_is_the_key(b: Backend) {
    let (s, _d) = store(b, false).await;
    let policy = KeyPolicy {
        use_domain: false,
        case_sensitive: false,
    };
    let a = Aor::parse("sip:erin@example.com", policy).unwrap();
    s.apply("location", &a, &[binding("r1", "sip:e@1", T0 + 60)], &[])
        .await
        .unwrap();
    let other = Aor::parse("erin", policy).unwrap();
    assert_eq!(s.load_aor("location", &other).await.unwrap().len(), 1);
}

async fn lookup_returns_only_valid_rows(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:frank@example.com");
    s.apply(
        "location",
        &a,
        &[
            binding("old", "sip:f@1", T0 - 1),
            binding("now", "sip:f@2", T0),
            binding("new", "sip:f@3", T0 + 1),
        ],
        &[],
    )
    .await
    .unwrap();
    let got = s.lookup("location", &a, T0).await.unwrap();
    assert_eq!(
        got.iter().map(|b| b.ruid.as_str()).collect::<Vec<_>>(),
        ["new"]
    );
    assert_eq!(s.load_aor("location", &a).await.unwrap().len(), 3);
}

async fn remove_takes_one_contact_one_ruid_or_all(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:gina@example.com");
    let other = aor("sip:gus@example.com");
    s.apply(
        "location",
        &a,
        &[
            binding("r1", "sip:g@1", T0 + 60),
            binding("r2", "sip:g@2", T0 + 60),
            binding("r3", "sip:g@3", T0 + 60),
        ],
        &[],
    )
    .await
    .unwrap();
    s.apply(
        "location",
        &other,
        &[binding("o1", "sip:o@1", T0 + 60)],
        &[],
    )
    .await
    .unwrap();
    let remove =
        async |aor: &Aor, which: Which<'_>| s.remove("location", aor, which).await.unwrap();
    assert_eq!(remove(&a, Which::Contact("sip:g@9")).await, 0);
    assert_eq!(remove(&a, Which::Contact("sip:g@1")).await, 1);
    // A ruid is removed only under its own AoR.
    assert_eq!(remove(&a, Which::Ruid("o1")).await, 0);
    assert_eq!(remove(&a, Which::Ruid("r3")).await, 1);
    assert_eq!(s.load_aor("location", &a).await.unwrap()[0].ruid, "r2");
    assert_eq!(remove(&a, Which::All).await, 1);
    assert!(s.load_aor("location", &a).await.unwrap().is_empty());
    assert_eq!(s.load_aor("location", &other).await.unwrap().len(), 1);
}

async fn sweeping_deletes_expired_rows_in_bounded_batches(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:hank@example.com");
    let mut rows: Vec<Binding> = (0..25)
        .map(|i| binding(&format!("x{i}"), &format!("sip:h@{i}"), T0 - 10))
        .collect();
    rows.push(binding("live", "sip:h@live", T0 + 10));
    assert_eq!(s.oldest_expiry("location").await.unwrap(), None);
    // Permanent rows (Kamailio's 0) are not the sweep's business.
    let p = aor("sip:perm@example.com");
    s.apply("location", &p, &[binding("perm", "sip:p@1", 0)], &[])
        .await
        .unwrap();
    assert_eq!(s.oldest_expiry("location").await.unwrap(), None);
    rows[3].expires = T0 - 30;
    s.apply("location", &a, &rows, &[]).await.unwrap();
    // What the sweeper's lag is measured from: the earliest expiry.
    assert_eq!(s.oldest_expiry("location").await.unwrap(), Some(T0 - 30));
    assert_eq!(s.sweep_expired("location", T0, 10).await.unwrap(), 10);
    assert_eq!(s.sweep_expired("location", T0, 10).await.unwrap(), 10);
    assert_eq!(s.sweep_expired("location", T0, 10).await.unwrap(), 5);
    assert_eq!(s.sweep_expired("location", T0, 10).await.unwrap(), 0);
    let left = s.load_aor("location", &a).await.unwrap();
    assert_eq!(
        left.iter().map(|b| b.ruid.as_str()).collect::<Vec<_>>(),
        ["live"]
    );
    assert_eq!(s.oldest_expiry("location").await.unwrap(), Some(T0 + 10));
}

async fn sweep_all(st: &SqlStore) -> u64 {
    let mut n = 0;
    loop {
        let k = st.sweep_expired("location", T0, 7).await.unwrap();
        n += k;
        if k == 0 {
            return n;
        }
    }
}

async fn two_sweepers_at_once_delete_each_row_once(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:ivan@example.com");
    let rows: Vec<Binding> = (0..200)
        .map(|i| binding(&format!("x{i}"), &format!("sip:i@{i}"), T0 - 10))
        .collect();
    s.apply("location", &a, &rows, &[]).await.unwrap();
    let other = open_store(s.url().expose(), true);
    let (x, y) = tokio::join!(sweep_all(&s), sweep_all(&other));
    assert_eq!(x + y, 200);
    assert!(s.load_aor("location", &a).await.unwrap().is_empty());
}

async fn dump_pages_walk_every_valid_row_once(b: Backend) {
    let (s, _d) = store(b, true).await;
    for i in 0..23 {
        let a = aor(&format!("sip:u{i}@example.com"));
        s.apply(
            "location",
            &a,
            &[binding(&format!("r{i}"), "sip:x@1", T0 + 60)],
            &[],
        )
        .await
        .unwrap();
    }
    let a = aor("sip:gone@example.com");
    s.apply("location", &a, &[binding("gone", "sip:x@1", T0 - 60)], &[])
        .await
        .unwrap();
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = s.dump_page("location", after, 5, T0).await.unwrap();
        assert!(page.len() <= 5);
        if page.is_empty() {
            break;
        }
        assert!(page.windows(2).all(|w| w[0].row_id < w[1].row_id));
        after = page.last().unwrap().row_id;
        seen.extend(page.into_iter().map(|p| p.aor.key().to_string()));
    }
    seen.sort();
    let mut want: Vec<String> = (0..23).map(|i| format!("u{i}@example.com")).collect();
    want.sort();
    assert_eq!(seen, want);
}

async fn stats_count_valid_contacts_and_distinct_aors(b: Backend) {
    let (s, _d) = store(b, true).await;
    for (user, n) in [("a", 3), ("b", 1)] {
        let a = aor(&format!("sip:{user}@example.com"));
        let rows: Vec<Binding> = (0..n)
            .map(|i| binding(&format!("{user}{i}"), &format!("sip:{user}@{i}"), T0 + 60))
            .collect();
        s.apply("location", &a, &rows, &[]).await.unwrap();
    }
    let a = aor("sip:c@example.com");
    s.apply("location", &a, &[binding("c0", "sip:c@0", T0 - 1)], &[])
        .await
        .unwrap();
    let st = s.stats("location", T0).await.unwrap();
    assert_eq!((st.contacts, st.aors), (4, 2));
}

async fn permanent_rows_are_valid_listed_counted_and_never_swept(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:kam@example.com");
    // Kamailio's expires = 0 as a UTC node, a CET node and an EST node
    // write it, then an expired and a valid row.
    s.apply(
        "location",
        &a,
        &[
            binding("perm-utc", "sip:k@1", 0),
            binding("perm-cet", "sip:k@2", 3600),
            binding("perm-est", "sip:k@3", -5 * 3600),
            binding("old", "sip:k@4", T0 - 1),
            binding("new", "sip:k@5", T0 + 60),
        ],
        &[],
    )
    .await
    .unwrap();
    let mut got: Vec<String> = s
        .lookup("location", &a, T0)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.ruid)
        .collect();
    got.sort();
    assert_eq!(got, ["new", "perm-cet", "perm-est", "perm-utc"]);
    let st = s.stats("location", T0).await.unwrap();
    assert_eq!((st.contacts, st.aors), (4, 1));
    let page = s.dump_page("location", 0, 100, T0).await.unwrap();
    assert_eq!(page.len(), 4, "a dump (and the mover) sees them");
    assert_eq!(sweep_all(&s).await, 1, "only the expired row is swept");
    assert_eq!(s.load_aor("location", &a).await.unwrap().len(), 4);
}

async fn migrations_are_idempotent_and_locdb_round_trips(b: Backend) {
    let (s, _d) = store(b, true).await;
    assert_eq!(s.migrate(Scope::Master).await.unwrap(), 0);
    assert_eq!(s.migrate(Scope::Table("location")).await.unwrap(), 0);
    assert_eq!(s.migrate(Scope::Table("cfa")).await.unwrap(), 2);
    // What Kamailio's usrloc checks before it uses a table.
    assert_eq!(table_version(&s, "location").await, Some(9));
    assert_eq!(table_version(&s, "cfa").await, Some(9));
    let row = locdb_row(3, 2, "mysql://u:p@h/db");
    s.insert_locdb(&row).await.unwrap();
    assert_eq!(s.load_locdb().await.unwrap(), vec![row]);
    assert_eq!(s.mark_failover(3, 2, T0).await.unwrap(), 1);
    let got = s.load_locdb().await.unwrap();
    assert_eq!(got[0].failover.and_utc().timestamp(), T0);
    // Never backwards: an older miss leaves the newer one.
    s.mark_failover(3, 2, T0 - 100).await.unwrap();
    let got = s.load_locdb().await.unwrap();
    assert_eq!(got[0].failover.and_utc().timestamp(), T0);
    assert_eq!(s.mark_failover(3, 1, T0).await.unwrap(), 0, "no such slot");
}

async fn a_locdb_written_in_local_time_is_read_and_written_in_that_clock(b: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_db(b, dir.path()).await;
    let raw = open_store(&url, true);
    raw.migrate(Scope::Master).await.unwrap();
    let est = open_store(&url, true).with_locdb_time("-05:00".parse().unwrap());
    async fn stored(s: &SqlStore) -> i64 {
        s.load_locdb().await.unwrap()[0]
            .failover
            .and_utc()
            .timestamp()
    }
    // A Kamailio node on EST (no UTC_timestamps) recorded a failover at T0.
    let row = LocdbRow {
        failover: locsvc::store::rows::to_db_time(T0 - 5 * 3600),
        ..locdb_row(1, 2, "mysql://u:p@h/db")
    };
    raw.insert_locdb(&row).await.unwrap();
    assert_eq!(stored(&est).await, T0, "read as the UTC instant it was");
    // locsvc's own marks are written in the same clock, for Kamailio to read,
    // and the never-backwards condition compares within it.
    assert_eq!(est.mark_failover(1, 2, T0 + 60).await.unwrap(), 1);
    assert_eq!(stored(&raw).await, T0 + 60 - 5 * 3600);
    est.mark_failover(1, 2, T0 + 30).await.unwrap();
    assert_eq!(stored(&est).await, T0 + 60);
}

async fn deactivation_never_takes_the_last_member_that_is_on(b: Backend) {
    let (s, _d) = store(b, true).await;
    for no in 1..=2 {
        s.insert_locdb(&locdb_row(1, no, &format!("mysql://u@h{no}/db")))
            .await
            .unwrap();
    }
    assert_eq!(
        s.deactivate(1, 2, "mysql://u@h2/db", 7, T0).await.unwrap(),
        1
    );
    assert_eq!(
        s.deactivate(1, 2, "mysql://u@h2/db", 7, T0).await.unwrap(),
        0,
        "only once"
    );
    assert_eq!(
        s.deactivate(1, 1, "mysql://u@h1/db", 7, T0).await.unwrap(),
        0,
        "the last one stays on"
    );
    let rows = s.load_locdb().await.unwrap();
    assert_eq!((rows[0].status, rows[1].status, rows[1].errors), (1, 0, 7));
    assert_eq!(s.readmit(1, 2, "mysql://u@h2/db", T0 + 5).await.unwrap(), 1);
    let rows = s.load_locdb().await.unwrap();
    assert_eq!((rows[1].status, rows[1].errors), (1, 0));
    assert_eq!(rows[1].failover.and_utc().timestamp(), T0 + 5);
    let at = rows[1].failover;
    assert_eq!(
        s.clear_failover(1, 2, "mysql://u@h2/db", at).await.unwrap(),
        1
    );
    assert_eq!(
        s.clear_failover(1, 2, "mysql://u@h2/db", at).await.unwrap(),
        0,
        "a newer value is kept"
    );
}

async fn copies_never_replace_a_newer_row(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = aor("sip:copy@example.com");
    let mut newer = binding("r1", "sip:new@1", T0 + 600);
    newer.last_modified = T0 + 10;
    s.apply("location", &a, std::slice::from_ref(&newer), &[])
        .await
        .unwrap();
    let stored = |b: Binding| locsvc::store::StoredBinding {
        row_id: 0,
        aor: a.clone(),
        binding: b,
    };
    let mut older = binding("r1", "sip:old@1", T0 + 60);
    older.last_modified = T0;
    let fresh = binding("r2", "sip:fresh@1", T0 + 60);
    s.copy_in("location", &[stored(older), stored(fresh.clone())])
        .await
        .unwrap();
    let mut got = s.load_aor("location", &a).await.unwrap();
    got.sort_by(|x, y| x.ruid.cmp(&y.ruid));
    assert_eq!(got, vec![newer.clone(), fresh]);
    let mut newest = newer.clone();
    newest.last_modified = T0 + 20;
    newest.contact = "sip:newest@1".into();
    s.copy_in("location", &[stored(newest.clone())])
        .await
        .unwrap();
    assert_eq!(
        s.load_aor("location", &a)
            .await
            .unwrap()
            .iter()
            .find(|x| x.ruid == "r1"),
        Some(&newest)
    );
    assert_eq!(
        s.existing_ruids("location", &["r2".into(), "zz".into()])
            .await
            .unwrap(),
        ["r2"]
    );
    s.delete_ruids("location", &["r2".into()]).await.unwrap();
    assert_eq!(s.load_aor("location", &a).await.unwrap().len(), 1);
}

async fn a_spare_from_another_risk_group_replaces_a_member_exactly_once(b: Backend) {
    use locsvc::store::Promotion;
    let (s, _d) = store(b, true).await;
    let row = |no: i64, url: &str, rg: i64, spare: i64| {
        let mut r = locdb_row(1, no, url);
        r.rg = rg;
        r.spare = spare;
        r
    };
    for r in [
        row(1, "m://a", 1, 0),
        row(2, "m://b", 2, 0),
        row(3, "m://same-rg", 2, 1),
        row(4, "m://other-rg", 3, 1),
    ] {
        s.insert_locdb(&r).await.unwrap();
    }
    let got = s
        .promote_spare(1, 2, "m://b", &[1, 2], 9, T0)
        .await
        .unwrap();
    assert_eq!(
        got,
        Promotion::Promoted {
            spare: "m://other-rg".into()
        }
    );
    assert_eq!(
        s.promote_spare(1, 2, "m://b", &[1, 2], 9, T0)
            .await
            .unwrap(),
        Promotion::AlreadyDone
    );
    let rows = s.load_locdb().await.unwrap();
    let at = |no: i64| rows.iter().find(|r| r.no == no).unwrap().clone();
    assert_eq!(
        (at(2).url.as_str(), at(2).status, at(2).spare, at(2).errors),
        ("m://other-rg", 1, 0, 0)
    );
    assert_eq!(
        at(2).failover.and_utc().timestamp(),
        T0,
        "the spare is resynced before it is read"
    );
    assert_eq!(
        (at(5).url.as_str(), at(5).status, at(5).spare, at(5).errors),
        ("m://b", 0, 1, 9)
    );
    assert!(rows.iter().all(|r| r.no != 4));
    // Only spares that are on and outside both risk groups qualify.
    assert_eq!(
        s.promote_spare(1, 2, "m://other-rg", &[1, 3], 0, T0)
            .await
            .unwrap(),
        Promotion::Promoted {
            spare: "m://same-rg".into()
        }
    );
    assert_eq!(
        s.promote_spare(1, 1, "m://a", &[1, 2], 0, T0)
            .await
            .unwrap(),
        Promotion::NoSpare
    );
    assert_eq!(
        s.load_locdb()
            .await
            .unwrap()
            .iter()
            .find(|r| r.no == 1)
            .unwrap()
            .status,
        1,
        "untouched"
    );
}

async fn sql_metacharacters_are_stored_verbatim(b: Backend) {
    let (s, _d) = store(b, true).await;
    let a = Aor::parse("sip:o%27brien%22%3B--@example.com", KeyPolicy::default()).unwrap();
    assert_eq!(a.user(), "o'brien\";--");
    let mut x = binding("r'1", "sip:x@1;p='a';--", T0 + 60);
    x.call_id = "'); DELETE FROM location; --".into();
    s.apply("location", &a, std::slice::from_ref(&x), &[])
        .await
        .unwrap();
    let other = aor("sip:bystander@example.com");
    s.apply(
        "location",
        &other,
        &[binding("r2", "sip:y@1", T0 + 60)],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(s.load_aor("location", &a).await.unwrap(), vec![x]);
    assert_eq!(s.load_aor("location", &other).await.unwrap().len(), 1);
}

async fn concurrent_registers_are_group_committed_and_all_land(b: Backend) {
    let (s, _d) = store(b, true).await;
    let aors: Vec<Aor> = (0..48)
        .map(|i| aor(&format!("sip:gc{i}@example.com")))
        .collect();
    // Eight AoRs hold an old binding that their REGISTER replaces.
    for (i, a) in aors.iter().enumerate().take(8) {
        let old = binding(&format!("old-{i}"), "sip:old@192.0.2.9", T0 + 60);
        s.apply("location", a, &[old], &[]).await.unwrap();
    }
    let new: Vec<Binding> = (0..48)
        .map(|i| {
            binding(
                &format!("new-{i}"),
                &format!("sip:gc{i}@192.0.2.1"),
                T0 + 60,
            )
        })
        .collect();
    let deletes: Vec<Vec<String>> = (0..48)
        .map(|i| {
            if i < 8 {
                vec![format!("old-{i}")]
            } else {
                vec![]
            }
        })
        .collect();
    let before = s
        .batch_stats("location")
        .expect("batching is on by default");
    let results = futures::future::join_all((0..48).map(|i| {
        s.apply(
            "location",
            &aors[i],
            std::slice::from_ref(&new[i]),
            &deletes[i],
        )
    }))
    .await;
    for r in results {
        r.expect("every REGISTER of the batch is acknowledged");
    }
    for (i, a) in aors.iter().enumerate() {
        assert_eq!(
            s.load_aor("location", a).await.unwrap(),
            vec![new[i].clone()]
        );
    }
    let after = s.batch_stats("location").unwrap();
    assert_eq!(after.requests - before.requests, 48);
    assert!(
        after.batches - before.batches < 48,
        "48 concurrent REGISTERs took {} commits",
        after.batches - before.batches
    );
}

/// `table_version` of `table` in kamctl's `version` table.
async fn table_version(s: &SqlStore, table: &str) -> Option<i64> {
    use locsvc::store::DbPool;
    const SQL: &str = "SELECT table_version FROM version WHERE table_name = ";
    match s.pool() {
        DbPool::Sqlite(p) => sqlx::query_scalar(&format!("{SQL}?"))
            .bind(table)
            .fetch_optional(p)
            .await
            .unwrap(),
        DbPool::MySql(p) => sqlx::query_scalar::<_, u32>(&format!("{SQL}?"))
            .bind(table)
            .fetch_optional(p)
            .await
            .unwrap()
            .map(i64::from),
        DbPool::Postgres(p) => sqlx::query_scalar::<_, i32>(&format!("{SQL}$1"))
            .bind(table)
            .fetch_optional(p)
            .await
            .unwrap()
            .map(i64::from),
    }
}

/// Makes the database refuse any row whose contact is `contact`.
async fn refuse_contact(s: &SqlStore, contact: &str) {
    use locsvc::store::DbPool;
    match s.pool() {
        DbPool::Sqlite(p) => sqlx::raw_sql(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON location WHEN NEW.contact = '{contact}' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        ))
        .execute(p)
        .await
        .map(|_| ()),
        DbPool::MySql(p) => sqlx::raw_sql(&format!(
            "CREATE TRIGGER refuse BEFORE INSERT ON location FOR EACH ROW BEGIN \
             IF NEW.contact = '{contact}' THEN \
             SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; END IF; END"
        ))
        .execute(p)
        .await
        .map(|_| ()),
        DbPool::Postgres(p) => sqlx::raw_sql(&format!(
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN \
             IF NEW.contact = '{contact}' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse BEFORE INSERT ON location FOR EACH ROW EXECUTE FUNCTION refuse()"
        ))
        .execute(p)
        .await
        .map(|_| ()),
    }
    .unwrap();
}

async fn a_refused_register_fails_alone_not_its_batch(b: Backend) {
    let (s, _d) = store(b, true).await;
    refuse_contact(&s, "sip:refused@192.0.2.66").await;
    let aors: Vec<Aor> = (0..16)
        .map(|i| aor(&format!("sip:rf{i}@example.com")))
        .collect();
    let new: Vec<Binding> = (0..16)
        .map(|i| {
            let contact = if i == 5 {
                "sip:refused@192.0.2.66".to_string()
            } else {
                format!("sip:rf{i}@192.0.2.1")
            };
            binding(&format!("rf-{i}"), &contact, T0 + 60)
        })
        .collect();
    let results = futures::future::join_all(
        (0..16).map(|i| s.apply("location", &aors[i], std::slice::from_ref(&new[i]), &[])),
    )
    .await;
    for (i, r) in results.into_iter().enumerate() {
        let stored = s.load_aor("location", &aors[i]).await.unwrap();
        if i == 5 {
            let e = r.expect_err("the refused row is reported");
            assert!(!e.is_transport(), "a refusal is not a member failure: {e}");
            assert!(stored.is_empty());
        } else {
            r.unwrap_or_else(|e| panic!("REGISTER {i} shares a batch with the refused one: {e}"));
            assert_eq!(stored, vec![new[i].clone()]);
        }
    }
}

async fn concurrent_reads_are_coalesced_and_each_gets_its_own_rows(b: Backend) {
    let (s, _d) = store(b, true).await;
    // Same users in two domains, so the IN lists' cross product returns
    // rows of AoRs nobody asked for; an AoR with an expired row; one with
    // nothing.
    let mut expected = Vec::new();
    for i in 0..12 {
        for d in ["a.example.com", "b.example.com"] {
            let a = aor(&format!("sip:u{i}@{d}"));
            let x = binding(
                &format!("{i}-{d}"),
                &format!("sip:u{i}@{d}.invalid"),
                T0 + 60,
            );
            s.apply("location", &a, std::slice::from_ref(&x), &[])
                .await
                .unwrap();
            expected.push((a, vec![x]));
        }
    }
    let old = aor("sip:old@a.example.com");
    let expired = binding("old", "sip:old@192.0.2.8", T0 - 1);
    s.apply("location", &old, std::slice::from_ref(&expired), &[])
        .await
        .unwrap();
    expected.push((aor("sip:nobody@a.example.com"), vec![]));
    let before = s.read_batch_stats("location");
    let lookups =
        futures::future::join_all(expected.iter().map(|(a, _)| s.lookup("location", a, T0)));
    let loads = futures::future::join_all([
        s.load_aor("location", &old),
        s.lookup("location", &old, T0),
        // The same AoR twice in one batch.
        s.load_aor("location", &old),
    ]);
    let (lookups, loads) = futures::join!(lookups, loads);
    for ((a, want), got) in expected.iter().zip(lookups) {
        assert_eq!(&got.unwrap(), want, "{a}");
    }
    let loads: Vec<_> = loads.into_iter().map(Result::unwrap).collect();
    assert_eq!(loads, [vec![expired.clone()], vec![], vec![expired]]);
    let after = s
        .read_batch_stats("location")
        .expect("reads are coalesced by default");
    let (requests, batches) = (
        after.requests - before.map_or(0, |b| b.requests),
        after.batches - before.map_or(0, |b| b.batches),
    );
    assert_eq!(requests, 28);
    assert!(
        batches < requests,
        "{requests} concurrent reads took {batches} queries"
    );
}

async fn unconfigured_tables_are_refused_before_any_sql(b: Backend) {
    let (s, _d) = store(b, true).await;
    let err = s.load_aor("nope", &aor("sip:a@b.c")).await.unwrap_err();
    assert!(!err.is_transport(), "{err}");
}

/// A resync batch far above any placeholder limit (18 binds a row).
async fn bulk_copies_and_deletes_are_cut_below_placeholder_limits(b: Backend) {
    let (s, _d) = store(b, true).await;
    let rows: Vec<StoredBinding> = (0..5000)
        .map(|i| StoredBinding {
            row_id: 0,
            aor: aor(&format!("sip:bulk{i}@example.com")),
            binding: binding(
                &format!("bulk-{i}"),
                &format!("sip:bulk{i}@192.0.2.1"),
                T0 + 3600,
            ),
        })
        .collect();
    s.copy_in("location", &rows).await.unwrap();
    let mut ruids: Vec<String> = rows.iter().map(|r| r.binding.ruid.clone()).collect();
    ruids.extend((0..4000).map(|i| format!("absent-{i}")));
    let present = s.existing_ruids("location", &ruids).await.unwrap();
    assert_eq!(present.len(), 5000);
    s.delete_ruids("location", &ruids).await.unwrap();
    assert_eq!(s.stats("location", T0).await.unwrap().contacts, 0);
}

macro_rules! store_suite {
    ($($backend:ident => $variant:expr),* $(,)?) => {
        $(
            mod $backend {
                use super::*;
                const B: Backend = $variant;
                #[tokio::test] async fn every_field_round_trips() { super::every_field_round_trips(B).await }
                #[tokio::test] async fn upserts_are_keyed_by_ruid() { super::upserts_are_keyed_by_ruid(B).await }
                #[tokio::test] async fn upserts_and_deletes_apply_together() { super::upserts_and_deletes_apply_together(B).await }
                #[tokio::test] async fn aors_are_kept_apart_by_user_and_domain() { super::aors_are_kept_apart_by_user_and_domain(B).await }
                #[tokio::test] async fn without_domains_the_username_alone_is_the_key() { super::without_domains_the_username_alone_is_the_key(B).await }
                #[tokio::test] async fn lookup_returns_only_valid_rows() { super::lookup_returns_only_valid_rows(B).await }
                #[tokio::test] async fn remove_takes_one_contact_one_ruid_or_all() { super::remove_takes_one_contact_one_ruid_or_all(B).await }
                #[tokio::test] async fn sweeping_deletes_expired_rows_in_bounded_batches() { super::sweeping_deletes_expired_rows_in_bounded_batches(B).await }
                #[tokio::test] async fn two_sweepers_at_once_delete_each_row_once() { super::two_sweepers_at_once_delete_each_row_once(B).await }
                #[tokio::test] async fn dump_pages_walk_every_valid_row_once() { super::dump_pages_walk_every_valid_row_once(B).await }
                #[tokio::test] async fn stats_count_valid_contacts_and_distinct_aors() { super::stats_count_valid_contacts_and_distinct_aors(B).await }
                #[tokio::test] async fn permanent_rows_are_valid_listed_counted_and_never_swept() { super::permanent_rows_are_valid_listed_counted_and_never_swept(B).await }
                #[tokio::test] async fn migrations_are_idempotent_and_locdb_round_trips() { super::migrations_are_idempotent_and_locdb_round_trips(B).await }
                #[tokio::test] async fn a_locdb_written_in_local_time_is_read_and_written_in_that_clock() { super::a_locdb_written_in_local_time_is_read_and_written_in_that_clock(B).await }
                #[tokio::test] async fn deactivation_never_takes_the_last_member_that_is_on() { super::deactivation_never_takes_the_last_member_that_is_on(B).await }
                #[tokio::test] async fn copies_never_replace_a_newer_row() { super::copies_never_replace_a_newer_row(B).await }
                #[tokio::test] async fn a_spare_from_another_risk_group_replaces_a_member_exactly_once() { super::a_spare_from_another_risk_group_replaces_a_member_exactly_once(B).await }
                #[tokio::test] async fn sql_metacharacters_are_stored_verbatim() { super::sql_metacharacters_are_stored_verbatim(B).await }
                #[tokio::test] async fn unconfigured_tables_are_refused_before_any_sql() { super::unconfigured_tables_are_refused_before_any_sql(B).await }
                #[tokio::test] async fn concurrent_registers_are_group_committed_and_all_land() { super::concurrent_registers_are_group_committed_and_all_land(B).await }
                                #[tokio::test] async fn a_refused_register_fails_alone_not_its_batch() { super::a_refused_register_fails_alone_not_its_batch(B).await }
                #[tokio::test] async fn concurrent_reads_are_coalesced_and_each_gets_its_own_rows() { super::concurrent_reads_are_coalesced_and_each_gets_its_own_rows(B).await }
                #[tokio::test] async fn bulk_copies_and_deletes_are_cut_below_placeholder_limits() { super::bulk_copies_and_deletes_are_cut_below_placeholder_limits(B).await }
            }
        )*
    };
}

store_suite! {
    mariadb => Backend::MariaDb1,
    postgres => Backend::Postgres,
    sqlite => Backend::Sqlite,
}
