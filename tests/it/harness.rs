//! Shared test harness: real database servers from `scripts/testdb.sh`
//! (a missing server fails the test, never skips it), fresh databases per
//! test, and an in-process locsvc served on 127.0.0.1:0 with a real client.

use std::sync::Arc;
use std::time::Duration;

use locsvc::app::App;
use locsvc::clock::{Clock, ManualClock};
use locsvc::location::LocationService;
use locsvc::settings::Settings;
use locsvc::store::migrate::Scope;
use locsvc::store::{DbUrl, LocdbRow, PoolSettings, SqlStore, StoreOptions};
use locsvc_proto::v1 as pb;
use locsvc_proto::v1::location_client::LocationClient;
use tokio::sync::oneshot;
use tonic::transport::Channel;

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

/// A `locdb` row for member `no` of group `id`.
pub fn locdb_row(id: i64, no: i64, url: &str) -> LocdbRow {
    LocdbRow {
        id,
        no,
        url: url.to_string(),
        status: 1,
        errors: 0,
        failover: locsvc::store::FAILOVER_RESET,
        spare: 0,
        rg: no,
    }
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

/// Defaults for tests: ephemeral ports, fast polling, no metrics port.
pub fn test_settings(dir: &std::path::Path) -> Settings {
    let mut s = Settings {
        data_dir: dir.join("data"),
        ..Settings::default()
    };
    s.grpc.listen = "127.0.0.1:0".parse().unwrap();
    s.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    s.cluster.poll_interval = Duration::from_millis(100);
    s.cluster.query_timeout = Duration::from_secs(5);
    s
}

/// A running in-process locsvc.
pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub service: Arc<LocationService>,
    pub sweeper: locsvc::expiry::Sweeper,
    pub metrics: Arc<locsvc::metrics::Metrics>,
    stop: Option<oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<Result<(), locsvc::app::AppError>>>,
}

impl TestApp {
    /// Builds and serves `settings` with the system clock.
    pub async fn spawn(settings: Settings) -> Self {
        Self::spawn_with_clock(settings, locsvc::clock::system()).await
    }

    /// Builds and serves `settings` reading time from `clock`.
    pub async fn spawn_with_clock(settings: Settings, clock: Clock) -> Self {
        let app = App::build_with_clock(settings, clock)
            .await
            .expect("app builds");
        let (tx, rx) = oneshot::channel();
        let addr = app.grpc_addr();
        let metrics_addr = app.metrics_addr();
        let service = app.service();
        let sweeper = app.sweeper();
        let metrics = app.metrics();
        let join = tokio::spawn(app.run(async move {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics_addr,
            service,
            sweeper,
            metrics,
            stop: Some(tx),
            join: Some(join),
        }
    }

    /// A connected client (the listener is bound before `spawn` returns).
    pub async fn client(&self) -> LocationClient<Channel> {
        LocationClient::connect(format!("http://{}", self.addr))
            .await
            .expect("client connects")
    }

    /// Shuts down gracefully and waits for the app to stop.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(j) = self.join.take() {
            j.await.expect("app task").expect("app stops cleanly");
        }
    }
}

/// The Prometheus text the app serves on its metrics port.
pub async fn scrape(app: &TestApp) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(app.metrics_addr.expect("metrics enabled"))
        .await
        .unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A manual clock at a fixed, realistic time.
pub fn manual_clock() -> ManualClock {
    ManualClock::new(1_800_000_000)
}

/// A REGISTER of one contact.
pub fn register(
    aor: &str,
    contact: &str,
    expires: Option<i64>,
    call_id: &str,
    cseq: u32,
) -> pb::SaveRequest {
    pb::SaveRequest {
        aor: aor.into(),
        contacts: vec![pb::ContactSpec {
            uri: contact.into(),
            expires,
            ..Default::default()
        }],
        call_id: call_id.into(),
        cseq,
        user_agent: "it".into(),
        ..Default::default()
    }
}

/// Contacts of a Lookup, in order.
pub async fn lookup_contacts(c: &mut LocationClient<Channel>, aor: &str) -> Vec<String> {
    c.lookup(pb::LookupRequest {
        table: String::new(),
        aor: aor.into(),
    })
    .await
    .expect("lookup")
    .into_inner()
    .bindings
    .into_iter()
    .map(|b| b.contact)
    .collect()
}

/// Every binding in the cluster as (aor, contact, expires_at), sorted.
pub async fn dump_all(c: &mut LocationClient<Channel>) -> Vec<(String, String, i64)> {
    let mut s = c
        .dump(pb::DumpRequest::default())
        .await
        .expect("dump")
        .into_inner();
    let mut out = Vec::new();
    while let Some(p) = s.message().await.expect("dump page") {
        for b in p.bindings {
            let bb = b.binding.unwrap();
            out.push((b.aor, bb.contact, bb.expires_at));
        }
    }
    out.sort();
    out
}

/// Waits (bounded) until `f` holds; polls an observable state, never sleeps
/// a fixed time as synchronization.
pub async fn eventually<F: FnMut() -> bool>(what: &str, deadline: Duration, mut f: F) {
    let end = tokio::time::Instant::now() + deadline;
    while !f() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
