//! The root tests' harness (`it`, and `faults` through a `#[path]`): real
//! database servers from `scripts/testdb.sh` (a missing server fails the
//! test, never skips it) and fresh databases per test. The in-process
//! locsvc, certificates, `eventually` and the builders come from `testkit`,
//! re-exported here so `use crate::harness::*` brings the whole harness.

use std::time::Duration;

use locsvc::clock::ManualClock;
use locsvc::settings::Settings;
use locsvc::store::migrate::Scope;
use locsvc::store::{DbUrl, PoolSettings, SqlStore, StoreOptions};
pub use testkit::*;

/// Which database server a test database lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    MariaDb1,
    MariaDb2,
    Postgres,
    Sqlite,
}

fn env_url(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the test databases with `eval \"$(scripts/testdb.sh up)\"` \
             or run the whole suite with `scripts/test` (a missing server is a failure, not a skip)"
        )
    })
}

/// A unique, valid database name.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Creates a fresh, empty database on `backend` and returns its URL.
/// SQLite files go under `dir`.
pub async fn fresh_db(backend: Backend, dir: &std::path::Path) -> String {
    let name = unique_name("lt");
    match backend {
        Backend::Sqlite => format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
        Backend::MariaDb1 | Backend::MariaDb2 => {
            let server = env_url(if backend == Backend::MariaDb1 {
                "LOCSVC_TEST_MYSQL1_URL"
            } else {
                "LOCSVC_TEST_MYSQL2_URL"
            });
            let mut c: sqlx::MySqlConnection = sqlx::Connection::connect(&server)
                .await
                .expect("connect to test MariaDB");
            sqlx::Executor::execute(&mut c, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create test database");
            format!("{}/{name}", server.trim_end_matches('/'))
        }
        Backend::Postgres => {
            let server = env_url("LOCSVC_TEST_PG_URL");
            let mut c: sqlx::PgConnection = sqlx::Connection::connect(&server)
                .await
                .expect("connect to test PostgreSQL");
            sqlx::Executor::execute(&mut c, format!("CREATE DATABASE {name}").as_str())
                .await
                .expect("create test database");
            let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
            format!("{base}/{name}")
        }
    }
}

/// Opens a store on `url` serving the `location` table.
pub fn open_store(url: &str, use_domain: bool) -> SqlStore {
    SqlStore::open(
        &DbUrl::parse(url).unwrap(),
        &StoreOptions {
            tables: vec!["location".to_string()],
            use_domain,
            pool: PoolSettings::default(),
            query_timeout: Duration::from_secs(5),
        },
    )
    .unwrap()
}

/// A cluster layout on real databases: a master and `groups` groups of two
/// members, each member on the given backends in turn.
pub struct Layout {
    pub dir: tempfile::TempDir,
    pub master_url: String,
    /// `members[g][m]` = URL of member m+1 of group g+1.
    pub members: Vec<Vec<String>>,
}

impl Layout {
    /// Creates and migrates the master and members and fills `locdb`.
    pub async fn create(master: Backend, member_backends: &[Backend], groups: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let master_url = fresh_db(master, dir.path()).await;
        let m = open_store(&master_url, true);
        m.migrate(Scope::Master).await.unwrap();
        let mut members = Vec::new();
        for g in 0..groups {
            let mut group = Vec::new();
            for (i, b) in member_backends.iter().enumerate() {
                let url = fresh_db(*b, dir.path()).await;
                let s = open_store(&url, true);
                s.migrate(Scope::Table("location")).await.unwrap();
                s.close().await;
                m.insert_locdb(&locdb_row(g as i64 + 1, i as i64 + 1, &url))
                    .await
                    .unwrap();
                group.push(url);
            }
            members.push(group);
        }
        m.close().await;
        Self {
            dir,
            master_url,
            members,
        }
    }

    /// Settings that use this layout, listening on ephemeral ports.
    pub fn settings(&self) -> Settings {
        let mut s = test_settings(self.dir.path());
        s.master_url = Some(DbUrl::parse(&self.master_url).unwrap());
        s
    }

    /// The master store.
    pub fn master(&self) -> SqlStore {
        open_store(&self.master_url, true)
    }
}

/// A manual clock at a fixed, realistic time.
pub fn manual_clock() -> ManualClock {
    ManualClock::new(1_800_000_000)
}
