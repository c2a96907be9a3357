//! Named locks in the master database, for serializing one AoR's Saves
//! across locsvc instances (`aor_lock` decides when). A held lock keeps its
//! connection: MySQL's `GET_LOCK` and PostgreSQL's session advisory locks
//! belong to the session. SQLite has none (one host, one instance).

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
}

/// A lock taken, with the session that holds it. Release it with
/// [`HeldLock::release`]; dropping it closes the session, which releases
/// the lock too, at the cost of the connection.
pub enum HeldLock {
    MySql(Exclusive<MySql>, i64),
    Postgres(Exclusive<Postgres>, i64),
}

fn mysql_name(key: i64) -> String {
    format!("locsvc:{key:016x}")
}

/// PostgreSQL's SQLSTATE for `lock_timeout` expiring.
const PG_LOCK_NOT_AVAILABLE: &str = "55P03";

impl AdvisoryLocks {
    /// Locks on `url`'s database, or None when its dialect has no
    /// session locks (SQLite).
    pub fn open(url: &DbUrl, pool: &PoolSettings) -> Result<Option<Self>, StoreError> {
        let pool = DbPool::open_lazy(url, pool)?;
        Ok(match pool {
            DbPool::Sqlite(_) => None,
            pool => Some(Self { pool }),
        })
    }

    /// Takes the lock named by `key`, waiting at most `wait` for another
    /// holder to release it and `limit` in all (connecting included).
    pub async fn acquire(
        &self,
        key: i64,
        wait: Duration,
        limit: Duration,
    ) -> Result<HeldLock, LockError> {
        let until = tokio::time::Instant::now() + limit;
        match &self.pool {
            DbPool::MySql(p) => {
                let mut c = session(p, until, wait, limit).await?;
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
                        Err(LockError::Busy(wait))
                    }
                }
            }
            DbPool::Postgres(p) => {
                let mut c = session(p, until, wait, limit).await?;
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
                        Err(LockError::Busy(wait))
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

/// What is left of the wait once a session is at hand: the time to
/// `until` less a margin for the answer to come back.
fn left(until: tokio::time::Instant) -> Duration {
    let rest = until.saturating_duration_since(tokio::time::Instant::now());
    rest.saturating_sub((rest / 5).max(Duration::from_millis(2)))
}

/// A session of `pool` by `until`. Waiting in vain while the pool has
/// sessions open means they are all in use (each holding or waiting for a
/// lock): contention, Busy. With none open, the master is not reachable.
async fn session<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    until: tokio::time::Instant,
    wait: Duration,
    limit: Duration,
) -> Result<Exclusive<DB>, LockError> {
    let all_busy = || pool.size() > 0;
    match tokio::time::timeout_at(until, Exclusive::acquire(pool)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) if all_busy() => Err(LockError::Busy(wait)),
        Ok(Err(e)) => Err(StoreError::from(e).into()),
        Err(_) => Err(StoreError::Timeout(limit).into()),
    }
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
