//! One connection pool per member URL, for whichever driver the URL names.
//! Pools connect lazily so an unreachable member never blocks start-up, and
//! every acquire is bounded so a hung server cannot hold a request forever.
//!
//! An idle connection is handed out without sqlx's default ping unless it
//! sat unused for `IDLE_PING`: under load that ping is one more round trip
//! per statement, and on a killed server the statement itself fails at once
//! (the socket is closed), whereas the ping's failure sends the pool into
//! reconnecting, which on a refused port retries until the acquire timeout.

use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::pool::PoolConnectionMetadata;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool};
use sqlx::postgres::{PgConnectOptions, PgPool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};

use super::{DbUrl, Dialect, StoreError};

/// Pool sizing, deadlines and write coalescing.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// Longest wait for a connection (including connecting to the server).
    pub acquire_timeout: Duration,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Most rows one group-commit transaction carries; 0 writes every
    /// REGISTER in its own statement.
    pub write_batch_rows: usize,
    /// Group-commit writers per table per database (SQLite: always 1, it
    /// has one writer anyway).
    pub batch_writers: usize,
    /// Most AoRs one coalesced read fetches (at most 64); 0 reads every AoR
    /// with its own query.
    pub read_batch_aors: usize,
    /// Coalescing readers per table per database.
    pub batch_readers: usize,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_millis(1000),
            idle_timeout: Duration::from_secs(300),
            // One writer and two readers per table per member coalesce the
            // most; more workers send more, smaller statements and lose
            // throughput (BENCHMARKS.md, "coalescing").
            write_batch_rows: 256,
            batch_writers: 1,
            read_batch_aors: 64,
            batch_readers: 2,
        }
    }
}

/// An idle connection older than this is pinged before use.
pub const IDLE_PING: Duration = Duration::from_secs(30);

/// `before_acquire`: pings only connections idle for `IDLE_PING` or more.
fn ping_if_idle<C: sqlx::Connection>(
    conn: &mut C,
    meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if meta.idle_for >= IDLE_PING {
            conn.ping().await?;
        }
        Ok(true)
    })
}

/// The pool options every driver shares, with at most `max` connections.
fn pool_options<DB: sqlx::Database>(s: &PoolSettings, max: u32) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(max)
        .test_before_acquire(false)
        .before_acquire(ping_if_idle)
        .acquire_timeout(s.acquire_timeout)
        .idle_timeout(s.idle_timeout)
}

/// A pool of one of the three drivers.
#[derive(Debug, Clone)]
pub enum DbPool {
    MySql(MySqlPool),
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$p` bound to the concrete pool, so shared logic is
/// written once and compiled per driver without generic sqlx bounds.
macro_rules! with_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::store::DbPool::MySql($p) => $body,
            $crate::store::DbPool::Postgres($p) => $body,
            $crate::store::DbPool::Sqlite($p) => $body,
        }
    };
}
pub(crate) use with_pool;

impl DbPool {
    /// Creates a pool for `url` without connecting yet.
    pub fn open_lazy(url: &DbUrl, s: &PoolSettings) -> Result<Self, StoreError> {
        let cfg = |e: sqlx::Error| StoreError::Config(super::url::redact(&e.to_string()));
        Ok(match url.dialect() {
            Dialect::MySql => {
                let o = MySqlConnectOptions::from_str(url.expose()).map_err(cfg)?;
                Self::MySql(pool_options(s, s.max_connections).connect_lazy_with(o))
            }
            Dialect::Postgres => {
                let o = PgConnectOptions::from_str(url.expose()).map_err(cfg)?;
                Self::Postgres(pool_options(s, s.max_connections).connect_lazy_with(o))
            }
            Dialect::Sqlite => {
                let o = SqliteConnectOptions::from_str(url.expose())
                    .map_err(cfg)?
                    .create_if_missing(true)
                    // WAL lets readers run while the single writer commits.
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(s.acquire_timeout);
                Self::Sqlite(pool_options(s, s.max_connections.min(8)).connect_lazy_with(o))
            }
        })
    }

    /// A pool for session locks on `url`: the server drops a session left
    /// idle for `server_idle` (so a lock whose holder vanished without a
    /// FIN does not outlive it for hours), and the pool retires idle
    /// sessions well before that. SQLite: a plain pool (no session locks).
    pub fn open_lazy_for_locks(
        url: &DbUrl,
        s: &PoolSettings,
        server_idle: Duration,
    ) -> Result<Self, StoreError> {
        let cfg = |e: sqlx::Error| StoreError::Config(super::url::redact(&e.to_string()));
        let secs = server_idle.as_secs().max(1);
        let s = &PoolSettings {
            idle_timeout: s.idle_timeout.min(server_idle / 2),
            ..s.clone()
        };
        Ok(match url.dialect() {
            Dialect::MySql => {
                let o = MySqlConnectOptions::from_str(url.expose()).map_err(cfg)?;
                let set = format!("SET SESSION wait_timeout = {secs}");
                let pool = pool_options(s, s.max_connections).after_connect(move |c, _| {
                    let set = set.clone();
                    Box::pin(async move {
                        sqlx::Executor::execute(c, set.as_str()).await?;
                        Ok(())
                    })
                });
                Self::MySql(pool.connect_lazy_with(o))
            }
            Dialect::Postgres => {
                let o = PgConnectOptions::from_str(url.expose()).map_err(cfg)?;
                let set = format!("SET idle_session_timeout = '{secs}s'");
                let pool = pool_options(s, s.max_connections).after_connect(move |c, _| {
                    let set = set.clone();
                    Box::pin(async move {
                        // PostgreSQL before 14 has no such setting: the
                        // lock then lives as long as the session.
                        let _ = sqlx::Executor::execute(c, set.as_str()).await;
                        Ok(())
                    })
                });
                Self::Postgres(pool.connect_lazy_with(o))
            }
            Dialect::Sqlite => Self::open_lazy(url, s)?,
        })
    }

    /// The driver's dialect.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::MySql(_) => Dialect::MySql,
            Self::Postgres(_) => Dialect::Postgres,
            Self::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Closes every connection; later calls fail with `Unavailable`.
    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }
}

/// A connection held for one transaction, closed instead of returned to
/// the pool when the work is cut off (by the statement deadline): a
/// cut-off `BEGIN` still reaches a hung server, which runs it when it
/// resumes, and sqlx, not knowing, would then hand out a connection whose
/// every later statement runs inside a transaction nobody commits (seen as
/// resync deletes that never became visible). Closing it makes the server
/// roll that transaction back.
pub struct Exclusive<DB: sqlx::Database> {
    conn: Option<sqlx::pool::PoolConnection<DB>>,
}

impl<DB: sqlx::Database> Exclusive<DB> {
    /// Takes a connection from `pool`.
    pub async fn acquire(pool: &sqlx::Pool<DB>) -> Result<Self, sqlx::Error> {
        Ok(Self {
            conn: Some(pool.acquire().await?),
        })
    }

    /// The connection, to begin the transaction on.
    pub fn conn(&mut self) -> &mut DB::Connection {
        self.conn.as_mut().expect("held until released or dropped")
    }

    /// The work ran to its end (committed, rolled back or failed): the
    /// connection goes back to the pool, which flushes any rollback.
    pub fn release(mut self) {
        self.conn.take();
    }
}

impl<DB: sqlx::Database> Drop for Exclusive<DB> {
    fn drop(&mut self) {
        if let Some(c) = self.conn.take() {
            // Detached and dropped: the socket closes, nothing is reused.
            drop(c.detach());
        }
    }
}
