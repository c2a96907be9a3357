//! kamctl's `subscriber` table on MariaDB, PostgreSQL and SQLite: the
//! master migration creates it (version 7), the store writes kamctl's
//! hashes, and a row Kamailio wrote with only `ha1` still serves.

use std::time::Duration;

use locsvc::credentials::secrets_for;
use locsvc::store::migrate::Scope;
use locsvc::store::subscriber::SubscriberStore;
use locsvc::store::{DbPool, SqlStore};

use crate::harness::{Backend, fresh_db, open_store};

// Computed outside locsvc:
//   printf %s 'alice:example.com:secret' | md5sum
pub const HA1: &str = "b1726872c344b6dc8365b774f8fd6412";
//   printf %s 'alice@example.com:example.com:secret' | md5sum
pub const HA1B: &str = "c79656e4f06dbae9fdf6727654273c65";
//   printf %s 'alice:other.org:secret' | md5sum
pub const HA1_OTHER_REALM: &str = "b472be8ec7fbef1097a907b43aba191e";
//   printf %s 'alice:example.com:secret' | sha256sum
pub const HA1_SHA256: &str = "ed8925b20f9a77b8f8f8d5f8e4467fe32b866f7208ab9e4b20595e9821a0fdee";

async fn store(b: Backend) -> (SqlStore, SubscriberStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_db(b, dir.path()).await;
    let master = open_store(&url, true);
    master.migrate(Scope::Master).await.unwrap();
    let subs = SubscriberStore::new(master.pool().clone(), Duration::from_secs(5));
    (master, subs, dir)
}

/// Runs fixed test SQL (no input) on `pool`.
async fn exec(pool: &DbPool, sql: &str) {
    match pool {
        DbPool::MySql(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        DbPool::Postgres(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
        DbPool::Sqlite(p) => sqlx::raw_sql(sql).execute(p).await.map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar_i64(pool: &DbPool, sql: &str) -> i64 {
    match pool {
        DbPool::MySql(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        DbPool::Postgres(p) => sqlx::query_scalar(sql).fetch_one(p).await,
        DbPool::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await,
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn upsert_writes_kamctl_ha1_and_ha1b_for_a_known_triple(b: Backend) {
    let (_m, s, _d) = store(b).await;
    s.upsert("alice", "example.com", "secret").await.unwrap();
    let row = s
        .get("alice", "example.com")
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(
        (row.password.as_str(), row.ha1.as_str(), row.ha1b.as_str()),
        ("secret", HA1, HA1B)
    );
    let own = secrets_for((&row).into(), "");
    assert_eq!(
        (own.ha1_md5.as_str(), own.ha1_sha256.as_str()),
        (HA1, HA1_SHA256)
    );
    assert_eq!(
        secrets_for((&row).into(), "other.org").ha1_md5,
        HA1_OTHER_REALM
    );
    // An upsert replaces password and both hashes.
    s.upsert("alice", "example.com", "n3w").await.unwrap();
    let row = s.get("alice", "example.com").await.unwrap().unwrap();
    assert_eq!(row.password, "n3w");
    assert_ne!(row.ha1, HA1);
    assert_ne!(row.ha1b, HA1B);
    assert!(s.get("alice", "example.org").await.unwrap().is_none());
}

async fn insert_set_password_and_remove_report_what_they_found(b: Backend) {
    let (_m, s, _d) = store(b).await;
    assert!(!s.set_password("bob", "example.com", "x").await.unwrap());
    assert!(s.insert("bob", "example.com", "one").await.unwrap());
    assert!(!s.insert("bob", "example.com", "two").await.unwrap());
    assert_eq!(
        s.get("bob", "example.com").await.unwrap().unwrap().password,
        "one",
        "a second add changes nothing"
    );
    assert!(
        s.set_password("bob", "example.com", "secret")
            .await
            .unwrap()
    );
    // The same password again still finds the row (matched, not changed).
    assert!(
        s.set_password("bob", "example.com", "secret")
            .await
            .unwrap()
    );
    let row = s.get("bob", "example.com").await.unwrap().unwrap();
    assert_eq!(
        row.ha1,
        locsvc::credentials::ha1("bob", "example.com", "secret")
    );
    assert!(s.remove("bob", "example.com").await.unwrap());
    assert!(!s.remove("bob", "example.com").await.unwrap());
    assert!(s.get("bob", "example.com").await.unwrap().is_none());
}

async fn a_kamailio_row_with_only_ha1_serves_its_own_domain(b: Backend) {
    let (m, s, _d) = store(b).await;
    // What kamctl writes with STORE_PLAINTEXT_PW=0.
    exec(
        m.pool(),
        &format!(
            "INSERT INTO subscriber (username, domain, ha1, ha1b) \
             VALUES ('alice', 'example.com', '{HA1}', '{HA1B}')"
        ),
    )
    .await;
    let row = s.get("alice", "example.com").await.unwrap().unwrap();
    assert!(row.password.is_empty());
    let own = secrets_for((&row).into(), "example.com");
    assert_eq!(own.ha1_md5, HA1);
    assert!(own.ha1_sha256.is_empty(), "no password, no SHA-256");
    let other = secrets_for((&row).into(), "other.org");
    assert!(other.ha1_md5.is_empty() && other.ha1_sha256.is_empty());
}

async fn list_pages_in_table_order_and_filters_by_domain(b: Backend) {
    let (_m, s, _d) = store(b).await;
    for i in 0..5 {
        s.insert(&format!("u{i}"), "a.example", "pw").await.unwrap();
        s.insert(&format!("u{i}"), "b.example", "pw").await.unwrap();
    }
    let first = s.list(None, 0, 4).await.unwrap();
    assert_eq!(first.len(), 4);
    let rest = s.list(None, first[3].id, 100).await.unwrap();
    assert_eq!(rest.len(), 6);
    assert!(rest.iter().all(|r| r.id > first[3].id));
    let b_only = s.list(Some("b.example"), 0, 100).await.unwrap();
    assert_eq!(b_only.len(), 5);
    assert!(b_only.iter().all(|r| r.domain == "b.example"));
}

async fn the_master_migration_records_subscriber_version_7_once(b: Backend) {
    let (m, _s, _d) = store(b).await;
    assert_eq!(m.migrate(Scope::Master).await.unwrap(), 0);
    let int = match b {
        Backend::MariaDb1 | Backend::MariaDb2 => "SIGNED",
        Backend::Postgres | Backend::Sqlite => "BIGINT",
    };
    let v = scalar_i64(
        m.pool(),
        &format!(
            "SELECT CAST(table_version AS {int}) FROM version WHERE table_name = 'subscriber'"
        ),
    )
    .await;
    assert_eq!(v, 7);
    let n = scalar_i64(
        m.pool(),
        "SELECT COUNT(*) FROM version WHERE table_name = 'subscriber'",
    )
    .await;
    assert_eq!(n, 1);
}

async fn sql_metacharacters_in_credentials_are_stored_verbatim(b: Backend) {
    let (_m, s, _d) = store(b).await;
    let (user, domain, pw) = (
        "o'brien\\x",
        "ex%ample_.com",
        "p'; DROP TABLE subscriber; --",
    );
    s.upsert(user, domain, pw).await.unwrap();
    let row = s.get(user, domain).await.unwrap().unwrap();
    assert_eq!(
        (
            row.username.as_str(),
            row.domain.as_str(),
            row.password.as_str()
        ),
        (user, domain, pw)
    );
    assert!(
        s.list(Some("ex_ample%.com"), 0, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

macro_rules! subscriber_suite {
    ($($backend:ident => $variant:expr),* $(,)?) => {
        $(
            mod $backend {
                use super::*;
                const B: Backend = $variant;
                #[tokio::test] async fn upsert_writes_kamctl_ha1_and_ha1b_for_a_known_triple() { super::upsert_writes_kamctl_ha1_and_ha1b_for_a_known_triple(B).await }
                #[tokio::test] async fn insert_set_password_and_remove_report_what_they_found() { super::insert_set_password_and_remove_report_what_they_found(B).await }
                #[tokio::test] async fn a_kamailio_row_with_only_ha1_serves_its_own_domain() { super::a_kamailio_row_with_only_ha1_serves_its_own_domain(B).await }
                #[tokio::test] async fn list_pages_in_table_order_and_filters_by_domain() { super::list_pages_in_table_order_and_filters_by_domain(B).await }
                #[tokio::test] async fn the_master_migration_records_subscriber_version_7_once() { super::the_master_migration_records_subscriber_version_7_once(B).await }
                #[tokio::test] async fn sql_metacharacters_in_credentials_are_stored_verbatim() { super::sql_metacharacters_in_credentials_are_stored_verbatim(B).await }
            }
        )*
    };
}

subscriber_suite! {
    mariadb => Backend::MariaDb1,
    postgres => Backend::Postgres,
    sqlite => Backend::Sqlite,
}
