//! The location statements both paths run: direct calls and the
//! coalescing queues (`batch`) read AoRs and write changes through these,
//! each under the per-query deadline.

use std::future::Future;
use std::time::Duration;

use super::dialect::{self, TableSql};
use super::pool::{self, DbPool, with_pool};
use super::rows::decode_row;
use super::{StoreError, StoredBinding};
use crate::domain::{Aor, Binding};

/// Every row of each of `aors`, one `IN` query per cached chunk size; each
/// row goes back to the AoRs that asked for it.
pub(super) async fn read_aors(
    pool: &DbPool,
    sql: &TableSql,
    timeout: Duration,
    aors: &[Aor],
) -> Result<Vec<Vec<Binding>>, StoreError> {
    let mut out: Vec<Vec<Binding>> = vec![Vec::new(); aors.len()];
    let mut at = 0;
    for n in dialect::chunks(aors.len(), dialect::MAX_READ_CHUNK) {
        let part = &aors[at..at + n];
        let stmt = sql.select_aors(n);
        let rows: Vec<StoredBinding> = with_pool!(pool, p => {
            let mut q = sqlx::query(&stmt);
            for a in part {
                q = q.bind(a.user());
            }
            if sql.use_domain {
                for a in part {
                    q = q.bind(a.domain().unwrap_or_default());
                }
            }
            let rows = timed(timeout, q.fetch_all(p)).await?;
            rows.iter().map(|r| decode_row(r, false)).collect::<Result<_, _>>()?
        });
        for row in rows {
            for (i, a) in part.iter().enumerate() {
                if sql.matches(&row.aor, a) {
                    out[at + i].push(row.binding.clone());
                }
            }
        }
        at += n;
    }
    Ok(out)
}

/// Binds one binding's `COLUMNS`, in order, onto a query.
macro_rules! bind_binding {
    ($q:expr, $aor:expr, $b:expr) => {
        $q.bind(&$b.ruid)
            .bind($aor.user())
            .bind($aor.domain())
            .bind(&$b.contact)
            .bind($b.received.as_deref())
            .bind($crate::store::rows::join_path(&$b.path))
            .bind($crate::store::rows::to_db_time($b.expires))
            .bind($b.q.unwrap_or($crate::store::rows::Q_UNSPECIFIED))
            .bind(&$b.call_id)
            .bind($b.cseq as i32)
            .bind($crate::store::rows::to_db_time($b.last_modified))
            .bind($b.flags as i32)
            .bind($b.cflags as i32)
            .bind(&$b.user_agent)
            .bind($b.socket.as_deref())
            .bind($b.methods.map(|m| m as i32))
            .bind($b.instance.as_deref())
            .bind($b.reg_id as i32)
    };
}

/// Binds the AoR filter (`username` [, `domain`]).
macro_rules! bind_aor {
    ($q:expr, $sql:expr, $aor:expr) => {{
        let q = $q.bind($aor.user());
        if $sql.use_domain {
            q.bind($aor.domain().unwrap_or_default())
        } else {
            q
        }
    }};
}
pub(super) use {bind_aor, bind_binding};

/// One REGISTER's changes to one AoR.
pub(super) struct Change<'a> {
    pub(super) aor: &'a Aor,
    pub(super) upserts: &'a [Binding],
    pub(super) deletes: &'a [String],
}

/// Rows per statement of a bulk copy: 18 binds a row stays far below every
/// dialect's limit on placeholders (SQLite 32,766; MySQL and PostgreSQL
/// 65,535), whatever batch a resync asks for.
pub(super) const BULK_ROWS: usize = 500;

/// Keys per statement of a bulk delete or existence check (one bind each).
pub(super) const BULK_KEYS: usize = 4000;

/// Runs `f` under `timeout`.
pub(crate) async fn timed<T>(
    timeout: Duration,
    f: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(StoreError::from),
        Err(_) => Err(StoreError::Timeout(timeout)),
    }
}

/// Writes `changes` (of distinct AoRs) atomically: upserts, then deletes,
/// each cut into cached statement sizes and sorted by ruid so concurrent
/// batches take row locks in one order (no deadlock between writers). One
/// statement runs alone; more run in one transaction.
pub(super) async fn write_changes(
    pool: &DbPool,
    sql: &TableSql,
    timeout: Duration,
    changes: &[Change<'_>],
) -> Result<(), StoreError> {
    let mut upserts: Vec<(&Aor, &Binding)> = changes
        .iter()
        .flat_map(|c| c.upserts.iter().map(move |b| (c.aor, b)))
        .collect();
    upserts.sort_unstable_by(|a, b| a.1.ruid.cmp(&b.1.ruid));
    let mut deletes: Vec<&String> = changes.iter().flat_map(|c| c.deletes).collect();
    deletes.sort_unstable();
    let (ups, dels) = (
        dialect::chunks(upserts.len(), dialect::MAX_CHUNK),
        dialect::chunks(deletes.len(), dialect::MAX_CHUNK),
    );
    let statements = ups.len() + dels.len();
    if statements == 0 {
        return Ok(());
    }
    with_pool!(pool, p => {
        timed(timeout, async {
            // A member must never hold half a REGISTER.
            let mut held = match statements {
                1 => None,
                _ => Some(pool::Exclusive::acquire(p).await?),
            };
            let done: Result<(), sqlx::Error> = async {
                let mut tx = match held.as_mut() {
                    Some(h) => Some(sqlx::Connection::begin(h.conn()).await?),
                    None => None,
                };
                let mut rest = &upserts[..];
                for n in ups {
                    let (now, later) = rest.split_at(n);
                    rest = later;
                    let stmt = sql.upsert(n);
                    let mut q = sqlx::query(&stmt);
                    for (aor, b) in now {
                        q = bind_binding!(q, aor, b);
                    }
                    match tx.as_mut() {
                        Some(tx) => q.execute(&mut **tx).await?,
                        None => q.execute(p).await?,
                    };
                }
                let mut rest = &deletes[..];
                for n in dels {
                    let (now, later) = rest.split_at(n);
                    rest = later;
                    let stmt = sql.delete_ruids(n);
                    let mut q = sqlx::query(&stmt);
                    for r in now {
                        q = q.bind(*r);
                    }
                    match tx.as_mut() {
                        Some(tx) => q.execute(&mut **tx).await?,
                        None => q.execute(p).await?,
                    };
                }
                if let Some(tx) = tx {
                    tx.commit().await?;
                }
                Ok(())
            }
            .await;
            if let Some(h) = held {
                h.release();
            }
            done
        })
        .await
    })
}
