//! Named locks in the master database, for serializing one AoR's Saves
//! across locsvc instances (`aor_lock` decides when). A held lock keeps its
//! connection: MySQL's `GET_LOCK` and PostgreSQL's session advisory locks
//! belong to the session. SQLite has none (one host, one instance).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::{MySql, Postgres};

use super::pool::{DbPool, Exclusive, PoolSettings};
use super::{DbUrl, StoreError};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another session held it for the whole wait.
    #[error("held elsewhere for {0:?}")]
    Busy(Duration),
    /// The master did not answer (or refused): no lock either way.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Named locks on one master database.
#[derive(Debug, Clone)]
pub struct AdvisoryLocks {
    pool: DbPool,
    /// Sessions checked out (holding or waiting for a lock), and the most
    /// there can be: a wait for a session that runs out while all are
    /// checked out is contention, otherwise the master is not answering.
    out: Arc<AtomicUsize>,
    max: usize,
}

/// One checked-out session counted in `AdvisoryLocks::out`.
pub struct Session<DB: sqlx::Database> {
    conn: Exclusive<DB>,
    _out: Out,
}

struct Out(Arc<AtomicUsize>);

impl Drop for Out {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<DB: sqlx::Database> Session<DB> {
    fn conn(&mut self) -> &mut DB::Connection {
        self.conn.conn()
    }

    /// Back to the pool (the session is clean: no lock, nothing pending).
    fn release(self) {
        self.conn.release();
    }
}

/// A lock holder's sessions are dropped by the server after this long idle.
const SERVER_IDLE: Duration = Duration::from_secs(120);

/// A lock taken, with the session that holds it. Release it with
/// [`HeldLock::release`]; dropping it closes the session, which releases
/// the lock too, at the cost of the connection.
pub enum HeldLock {
    MySql(Session<MySql>, i64),
    Postgres(Session<Postgres>, i64),
}

fn mysql_name(key: i64) -> String {
    format!("locsvc:{key:016x}")
}

/// PostgreSQL's SQLSTATE for `lock_timeout` expiring.
const PG_LOCK_NOT_AVAILABLE: &str = "55P03";

impl AdvisoryLocks {
    /// Locks on `url`'s database, or None when its dialect has no
    /// session locks (SQLite).
    pub fn open(url: &DbUrl, settings: &PoolSettings) -> Result<Option<Self>, StoreError> {
        let pool = DbPool::open_lazy_for_locks(url, settings, SERVER_IDLE)?;
        Ok(match pool {
            DbPool::Sqlite(_) => None,
            pool => Some(Self {
                pool,
                out: Arc::new(AtomicUsize::new(0)),
                max: settings.max_connections as usize,
            }),
        })
    }

    /// Takes the lock named by `key` by `until` (a session, then the lock).
    /// A holder that keeps it past then: Busy. A master that does not
    /// answer by then: a store error.
    pub async fn acquire(
        &self,
        key: i64,
        until: tokio::time::Instant,
    ) -> Result<HeldLock, LockError> {
        let limit = until.saturating_duration_since(tokio::time::Instant::now());
        match &self.pool {
            DbPool::MySql(p) => {
                let mut c = self.session(p, until, limit).await?;
                let wait = left(until);
                let got = bounded(
                    until,
                    limit,
                    sqlx::query_scalar::<_, Option<i64>>("SELECT GET_LOCK(?, ?)")
                        .bind(mysql_name(key))
                        .bind(wait.as_secs_f64())
                        .fetch_one(c.conn()),
                )
                .await?;
                match got {
                    Some(1) => Ok(HeldLock::MySql(c, key)),
                    _ => {
                        c.release();
                        Err(LockError::Busy(limit))
                    }
                }
            }
            DbPool::Postgres(p) => {
                let mut c = self.session(p, until, limit).await?;
                // Uncontended (the common case): one round trip.
                let free = bounded(
                    until,
                    limit,
                    sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                        .bind(key)
                        .fetch_one(c.conn()),
                )
                .await?;
                if free {
                    return Ok(HeldLock::Postgres(c, key));
                }
                // lock_timeout bounds the wait on the server, so a lock
                // given up here is never taken later by an orphaned wait.
                let wait = left(until);
                let ms = format!("{}ms", wait.as_millis().max(1));
                bounded(
                    until,
                    limit,
                    sqlx::query("SELECT set_config('lock_timeout', $1, false)")
                        .bind(ms)
                        .execute(c.conn()),
                )
                .await?;
                let locked = sqlx::query("SELECT pg_advisory_lock($1)")
                    .bind(key)
                    .execute(c.conn());
                match tokio::time::timeout_at(until, locked).await {
                    Ok(Ok(_)) => Ok(HeldLock::Postgres(c, key)),
                    Ok(Err(sqlx::Error::Database(e)))
                        if e.code().as_deref() == Some(PG_LOCK_NOT_AVAILABLE) =>
                    {
                        c.release();
                        Err(LockError::Busy(limit))
                    }
                    Ok(Err(e)) => Err(StoreError::from(e).into()),
                    Err(_) => Err(StoreError::Timeout(limit).into()),
                }
            }
            DbPool::Sqlite(_) => {
                Err(StoreError::Config("SQLite has no session locks".into()).into())
            }
        }
    }
}

/// How long the server may wait for the lock once a session is at hand:
/// three fifths of what is left, so a "busy" answer comes back before
/// `until` even from a slow master (a late one would read as the master
/// not answering, and drop serialization instead of waiting).
fn left(until: tokio::time::Instant) -> Duration {
    until.saturating_duration_since(tokio::time::Instant::now()) * 3 / 5
}

/// `f` by `until`; past it the master did not answer. A statement cut off
/// here leaves its session closed, not pooled (`Exclusive`): a late
/// GET_LOCK dies with it.
async fn bounded<T>(
    until: tokio::time::Instant,
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, LockError> {
    match tokio::time::timeout_at(until, f).await {
        Ok(r) => r.map_err(|e| StoreError::from(e).into()),
        Err(_) => Err(StoreError::Timeout(limit).into()),
    }
}

impl AdvisoryLocks {
    /// A session of `pool` by `until`, counted while out.
    async fn session<DB: sqlx::Database>(
        &self,
        pool: &sqlx::Pool<DB>,
        until: tokio::time::Instant,
        limit: Duration,
    ) -> Result<Session<DB>, LockError> {
        match tokio::time::timeout_at(until, Exclusive::acquire(pool)).await {
            Ok(Ok(conn)) => {
                self.out.fetch_add(1, Ordering::AcqRel);
                Ok(Session {
                    conn,
                    _out: Out(self.out.clone()),
                })
            }
            Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_)
                if self.out.load(Ordering::Acquire) >= self.max =>
            {
                Err(LockError::Busy(limit))
            }
            Ok(Err(e)) => Err(StoreError::from(e).into()),
            Err(_) => Err(StoreError::Timeout(limit).into()),
        }
    }
}

impl HeldLock {
    /// Releases the lock and returns the session to the pool; a session
    /// that cannot confirm the release is closed, which releases it too.
    pub async fn release(self, timeout: Duration) {
        match self {
            Self::MySql(mut c, key) => {
                let done = sqlx::query("DO RELEASE_LOCK(?)")
                    .bind(mysql_name(key))
                    .execute(c.conn());
                if let Ok(Ok(_)) = tokio::time::timeout(timeout, done).await {
                    c.release();
                }
            }
            Self::Postgres(mut c, key) => {
                let done = sqlx::query("SELECT pg_advisory_unlock($1)")
                    .bind(key)
                    .execute(c.conn());
                if let Ok(Ok(_)) = tokio::time::timeout(timeout, done).await {
                    c.release();
                }
            }
        }
    }
}
