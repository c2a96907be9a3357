//! Read-your-writes with a member that hangs on writes but still answers
//! reads: a real MariaDB member whose `location` table another session holds
//! under `LOCK TABLES … READ`. The Save is acknowledged by the partner alone;
//! the Lookup right after it must not be served by the locked member, even
//! for an AoR whose reads go to that member first.

use std::time::Duration;

use locsvc::domain::{Aor, KeyPolicy};
use locsvc::router::spread_of;
use sqlx::Connection;

use crate::harness::*;

/// An AoR whose reads try member 2 first (spread picks the second of two).
fn aor_read_from_member_2_first() -> String {
    (0..)
        .map(|i| format!("sip:ryw{i}@example.com"))
        .find(|a| spread_of(&Aor::parse(a, KeyPolicy::default()).unwrap()) % 2 == 1)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_after_an_acknowledged_save_never_reads_the_member_still_writing_it() {
    let layout = Layout::create(
        Backend::MariaDb1,
        &[Backend::MariaDb1, Backend::MariaDb2],
        1,
    )
    .await;
    let mut settings = layout.settings();
    // Long enough that the locked member's write is still waiting when the
    // lookup runs, however slow the machine.
    settings.cluster.query_timeout = Duration::from_secs(10);
    let app = TestApp::spawn(settings).await;
    let mut c = app.client().await;
    let aor = aor_read_from_member_2_first();
    let old = "sip:ryw@192.0.2.1";
    c.save(register(&aor, old, Some(600), "ryw", 1))
        .await
        .unwrap();

    // Member 2 now blocks writes and keeps answering reads.
    let mut lock: sqlx::MySqlConnection = Connection::connect(&layout.members[0][1]).await.unwrap();
    sqlx::query("LOCK TABLES location READ")
        .execute(&mut lock)
        .await
        .unwrap();
    let early = || {
        app.metrics
            .writes_acked_before_member
            .with_label_values(&["1", "2"])
            .get()
    };
    let early_before = early();
    let new = "sip:ryw@192.0.2.2";
    let started = std::time::Instant::now();
    c.save(register(&aor, new, Some(600), "ryw", 2))
        .await
        .expect("acknowledged by member 1 alone");
    let acked_in = started.elapsed();
    // Both contacts (in either order: saved within the same second, they
    // tie on "newest first").
    let mut seen = lookup_contacts(&mut c, &aor).await;
    seen.sort();
    assert_eq!(
        seen,
        vec![old.to_string(), new.to_string()],
        "the lookup sees the acknowledged write"
    );
    let group = app.service.router().topology().groups[&1].clone();
    assert_eq!(
        early() - early_before,
        1,
        "answered before member 2 confirmed"
    );

    // Member 2 takes the write once unlocked, and is complete: read again,
    // never marked as having missed anything.
    sqlx::query("UNLOCK TABLES")
        .execute(&mut lock)
        .await
        .unwrap();
    let key =
        locsvc::router::write_key("location", &Aor::parse(&aor, KeyPolicy::default()).unwrap());
    eventually(
        "member 2 confirms the write",
        Duration::from_secs(10),
        async || !group.members[1].health.unconfirmed.is_behind(key),
    )
    .await;
    assert_eq!(group.members[1].health.missed_write_at(), 0);
    assert_eq!(app.service.router().readable_members(&group).len(), 2);
    let m2 = open_store(&layout.members[0][1], true);
    let rows = locsvc::store::LocationStore::lookup(
        &m2,
        "location",
        &Aor::parse(&aor, KeyPolicy::default()).unwrap(),
        chrono::Utc::now().timestamp(),
    )
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "member 2 holds both contacts");
    eprintln!("RYW: Save acknowledged in {acked_in:?} while member 2 was locked");
    app.stop().await;
}
