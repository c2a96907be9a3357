//! The master's `locdb` table: reading the layout, and the conditional
//! updates failover and administration make (mark a missed write,
//! deactivate, re-admit, clear after a resync, promote a spare, set a
//! status). Each update is one statement (or one transaction) whose
//! conditions make concurrent instances agree: only one of them lands.

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::Row;

use super::dialect::PromoteSql;
use super::pool::Exclusive;
use super::rows::to_db_time;
use super::{SqlStore, StoreError, redact, with_pool};
use crate::domain::UnixTime;

/// One row of the master's `locdb` table, as stored (`failover` in UTC
/// whatever clock the table is written in).
#[derive(Debug, Clone, PartialEq)]
pub struct LocdbRow {
    pub id: i64,
    pub no: i64,
    pub url: String,
    pub status: i64,
    pub errors: i64,
    pub failover: NaiveDateTime,
    pub spare: i64,
    pub rg: i64,
    /// 1 on every member row of a group being drained (NULL reads as 0).
    pub leaving: i64,
}

/// What a spare promotion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// The spare at this (redacted) URL replaced the broken member.
    Promoted { spare: String },
    /// Another instance already replaced or switched off the member.
    AlreadyDone,
    /// No spare outside the group's risk groups is available.
    NoSpare,
}

/// `locdb.failover` of a member that holds everything: p_usrloc's shipped
/// default, "long ago".
pub const FAILOVER_RESET: NaiveDateTime = match chrono::NaiveDate::from_ymd_opt(1900, 1, 1) {
    Some(d) => match d.and_hms_opt(0, 0, 1) {
        Some(t) => t,
        None => NaiveDateTime::MIN,
    },
    None => NaiveDateTime::MIN,
};

/// The conditional `locdb` updates failover and administration make, as a
/// trait: failover's policies are unit-tested against a fake of it.
#[async_trait]
pub trait LocdbUpdates: Send + Sync + 'static {
    /// Records that the member in slot (`id`, `no`) missed writes at `at`,
    /// so every instance keeps reads off it (p_usrloc's "recent
    /// failover"); a later recorded miss is kept. Rows changed.
    async fn mark_failover(&self, id: u32, no: u32, at: UnixTime) -> Result<u64, StoreError>;

    /// Switches an `on` member off (failover level 1), adding `errors` to
    /// its counter. Returns 0 when another instance already did, or when no
    /// other member of the group is on.
    async fn deactivate(
        &self,
        id: u32,
        no: u32,
        url: &str,
        errors: u32,
        at: UnixTime,
    ) -> Result<u64, StoreError>;

    /// Switches an `off` member back on; it warms up (is not read) until it
    /// is known to be complete. Returns 0 when another instance already did.
    async fn readmit(&self, id: u32, no: u32, url: &str, at: UnixTime) -> Result<u64, StoreError>;

    /// Marks a member complete (resynced) unless a newer miss was recorded
    /// since `expected` was read. Returns 0 when it was.
    async fn clear_failover(
        &self,
        id: u32,
        no: u32,
        url: &str,
        expected: NaiveDateTime,
    ) -> Result<u64, StoreError>;

    /// Sets a member's status (a `MemberStatus` code) by operator request,
    /// dated `at`. Returns 0 when there is no such member.
    async fn set_status(
        &self,
        id: u32,
        no: u32,
        status: i64,
        at: UnixTime,
    ) -> Result<u64, StoreError>;

    /// Failover level 2: swaps broken member (`id`, `no`, `url`) for a spare
    /// whose risk group differs from every rg in `avoid_rgs` (the broken
    /// member's and its partners'), in one transaction, like p_usrloc's
    /// `db_failover` but with both risk groups checked. The broken row
    /// becomes an off spare; the spare takes its place, on, with a recent
    /// `failover` so it is resynced before it is read. Exactly once across
    /// instances: the first statement is conditional on the broken row.
    async fn promote_spare(
        &self,
        id: u32,
        no: u32,
        url: &str,
        avoid_rgs: &[i64],
        errors: u32,
        at: UnixTime,
    ) -> Result<Promotion, StoreError>;
}

/// A bind value of a `locdb` update, in statement order.
enum Arg<'a> {
    Time(UnixTime),
    Naive(NaiveDateTime),
    Int(i64),
    /// A group id or member number (`INT` columns).
    Key(u32),
    Text(&'a str),
}

impl SqlStore {
    /// Every `locdb` row, ordered by id and no.
    pub async fn load_locdb(&self) -> Result<Vec<LocdbRow>, StoreError> {
        let sql = &self.locdb.select_all;
        let rows = with_pool!(&self.pool, p => {
            let rows = self.timed(sqlx::query(sql).fetch_all(p)).await?;
            rows.iter()
                .map(|r| {
                    Ok(LocdbRow {
                        id: r.try_get("id")?,
                        no: r.try_get("no")?,
                        url: r.try_get("url")?,
                        status: r.try_get("status")?,
                        errors: r.try_get("errors")?,
                        failover: self.locdb_time.to_utc(r.try_get("failover")?),
                        spare: r.try_get("spare")?,
                        rg: r.try_get("rg")?,
                        leaving: r.try_get("leaving")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Marks every row of group `id` leaving (or not); rows changed.
    pub async fn set_leaving(&self, id: u32, leaving: bool) -> Result<u64, StoreError> {
        let sql = self
            .dialect()
            .finish("UPDATE locdb SET leaving = ? WHERE id = ? AND spare = 0");
        let n = with_pool!(&self.pool, p => {
            let q = sqlx::query(&sql).bind(i16::from(leaving)).bind(id as i32);
            self.timed(q.execute(p)).await?.rows_affected()
        });
        Ok(n)
    }

    /// Adds one `locdb` row (used to seed the embedded layout and by tests).
    pub async fn insert_locdb(&self, row: &LocdbRow) -> Result<(), StoreError> {
        let sql = self.dialect().finish(
            "INSERT INTO locdb (id, no, url, status, errors, failover, spare, rg, leaving) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        with_pool!(&self.pool, p => {
            let q = sqlx::query(&sql)
                .bind(row.id as i32)
                .bind(row.no as i32)
                .bind(&row.url)
                .bind(row.status as i32)
                .bind(row.errors as i32)
                .bind(self.locdb_time.to_stored(row.failover))
                .bind(row.spare as i32)
                .bind(row.rg as i32)
                .bind(row.leaving as i16);
            self.timed(q.execute(p)).await?;
        });
        Ok(())
    }

    /// Runs a `locdb` update with `args` bound in order; rows changed.
    async fn locdb_update(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let done = with_pool!(&self.pool, p => {
            let mut q = sqlx::query(sql);
            for a in args {
                q = match a {
                    Arg::Time(t) => q.bind(self.locdb_time.to_stored(to_db_time(*t))),
                    Arg::Naive(t) => q.bind(self.locdb_time.to_stored(*t)),
                    Arg::Int(i) => q.bind(*i),
                    Arg::Key(k) => q.bind(*k as i32),
                    Arg::Text(t) => q.bind(*t),
                };
            }
            self.timed(q.execute(p)).await?.rows_affected()
        });
        Ok(done)
    }
}

#[async_trait]
impl LocdbUpdates for SqlStore {
    async fn mark_failover(&self, id: u32, no: u32, at: UnixTime) -> Result<u64, StoreError> {
        // Keyed by the slot, not the URL: see `LocdbSql::mark_failover`.
        let args = [Arg::Time(at), Arg::Key(id), Arg::Key(no)];
        self.locdb_update(&self.locdb.mark_failover, &args).await
    }

    async fn deactivate(
        &self,
        id: u32,
        no: u32,
        url: &str,
        errors: u32,
        at: UnixTime,
    ) -> Result<u64, StoreError> {
        let args = [
            Arg::Time(at),
            Arg::Int(i64::from(errors)),
            Arg::Key(id),
            Arg::Key(no),
            Arg::Text(url),
            // The "another member is on" sub-select.
            Arg::Key(id),
            Arg::Key(no),
        ];
        self.locdb_update(&self.locdb.deactivate, &args).await
    }

    async fn readmit(&self, id: u32, no: u32, url: &str, at: UnixTime) -> Result<u64, StoreError> {
        let args = [Arg::Time(at), Arg::Key(id), Arg::Key(no), Arg::Text(url)];
        self.locdb_update(&self.locdb.readmit, &args).await
    }

    async fn clear_failover(
        &self,
        id: u32,
        no: u32,
        url: &str,
        expected: NaiveDateTime,
    ) -> Result<u64, StoreError> {
        let args = [
            Arg::Naive(FAILOVER_RESET),
            Arg::Key(id),
            Arg::Key(no),
            Arg::Text(url),
            Arg::Naive(expected),
        ];
        self.locdb_update(&self.locdb.clear_failover, &args).await
    }

    async fn set_status(
        &self,
        id: u32,
        no: u32,
        status: i64,
        at: UnixTime,
    ) -> Result<u64, StoreError> {
        let args = [
            Arg::Key(status as u32),
            Arg::Time(at),
            Arg::Key(id),
            Arg::Key(no),
        ];
        self.locdb_update(&self.locdb.set_status, &args).await
    }

    async fn promote_spare(
        &self,
        id: u32,
        no: u32,
        url: &str,
        avoid_rgs: &[i64],
        errors: u32,
        at: UnixTime,
    ) -> Result<Promotion, StoreError> {
        let sql = PromoteSql::new(self.dialect(), avoid_rgs.len());
        let at = self.locdb_time.to_stored(to_db_time(at));
        with_pool!(&self.pool, p => {
            self.timed(async {
                let mut held = Exclusive::acquire(p).await?;
                // Early returns roll back; the connection is released after.
                let r = async {
                    let mut tx = sqlx::Connection::begin(held.conn()).await?;
                    let still: Option<i64> = sqlx::query_scalar(&sql.check)
                        .bind(id as i32)
                        .bind(no as i32)
                        .bind(url)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if still.is_none() {
                        tx.rollback().await?;
                        return Ok(Promotion::AlreadyDone);
                    }
                    let mut q = sqlx::query(&sql.pick);
                    for rg in avoid_rgs {
                        q = q.bind(*rg as i32);
                    }
                    let Some(row) = q.fetch_optional(&mut *tx).await? else {
                        tx.rollback().await?;
                        return Ok(Promotion::NoSpare);
                    };
                    let (sid, sno, surl): (i64, i64, String) =
                        (row.try_get("id")?, row.try_get("no")?, row.try_get("url")?);
                    let top: Option<i64> = sqlx::query_scalar(&sql.max_no).bind(sid as i32).fetch_one(&mut *tx).await?;
                    let new_no = top.unwrap_or(sno) + 1;
                    let moved = sqlx::query(&sql.retire)
                        .bind(sid as i32)
                        .bind(new_no as i32)
                        .bind(at)
                        .bind(i64::from(errors))
                        .bind(id as i32)
                        .bind(no as i32)
                        .bind(url)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if moved == 0 {
                        tx.rollback().await?;
                        return Ok(Promotion::AlreadyDone);
                    }
                    let taken = sqlx::query(&sql.promote)
                        .bind(id as i32)
                        .bind(no as i32)
                        .bind(at)
                        .bind(sid as i32)
                        .bind(sno as i32)
                        .bind(&surl)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if taken == 0 {
                        tx.rollback().await?;
                        return Ok(Promotion::NoSpare);
                    }
                    tx.commit().await?;
                    Ok(Promotion::Promoted { spare: redact(&surl) })
                }
                .await;
                held.release();
                r
            })
            .await
        })
    }
}
