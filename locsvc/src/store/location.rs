//! `LocationStore` on SQL: each operation is one statement (or one
//! transaction) under the per-query deadline; AoR reads and writes go
//! through the coalescing queues when they are on.

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::Row;

use std::time::Duration;

use super::exec::{BULK_KEYS, BULK_ROWS, Change, bind_aor, bind_binding, timed, write_changes};
use super::rows::{decode_row, from_db_time, to_db_time};
use super::{LocationStore, SqlStore, StoreError, StoredBinding, TableStats, Which, with_pool};
use crate::domain::{Aor, Binding, UnixTime};

#[async_trait]
impl LocationStore for SqlStore {
    async fn load_aor(&self, table: &str, aor: &Aor) -> Result<Vec<Binding>, StoreError> {
        let sql = self.sql(table)?;
        if let Some(r) = self.reader(table, sql) {
            return r.submit(aor.clone()).await;
        }
        with_pool!(&self.pool, p => {
            let rows = self.timed(bind_aor!(sqlx::query(&sql.select_aor), sql, aor).fetch_all(p)).await?;
            rows.iter().map(|r| decode_row(r, false).map(|s| s.binding)).collect()
        })
    }

    async fn lookup(
        &self,
        table: &str,
        aor: &Aor,
        now: UnixTime,
    ) -> Result<Vec<Binding>, StoreError> {
        let sql = self.sql(table)?;
        if let Some(r) = self.reader(table, sql) {
            let mut rows = r.submit(aor.clone()).await?;
            rows.retain(|b| b.is_valid(now));
            return Ok(rows);
        }
        with_pool!(&self.pool, p => {
            let q = bind_aor!(sqlx::query(&sql.select_aor_valid), sql, aor).bind(to_db_time(now));
            let rows = self.timed(q.fetch_all(p)).await?;
            rows.iter().map(|r| decode_row(r, false).map(|s| s.binding)).collect()
        })
    }

    async fn apply(
        &self,
        table: &str,
        aor: &Aor,
        upserts: &[Binding],
        deletes: &[String],
    ) -> Result<(), StoreError> {
        let sql = self.sql(table)?;
        if let Some(w) = self.writer(table, sql) {
            return w.write(aor, upserts, deletes).await;
        }
        let change = Change {
            aor,
            upserts,
            deletes,
        };
        write_changes(&self.pool, sql, self.timeout, &[change]).await
    }

    async fn remove(&self, table: &str, aor: &Aor, which: Which<'_>) -> Result<u64, StoreError> {
        let sql = self.sql(table)?;
        with_pool!(&self.pool, p => {
            let done = match which {
                Which::Contact(c) => {
                    let q = bind_aor!(sqlx::query(&sql.delete_contact), sql, aor).bind(c);
                    self.timed(q.execute(p)).await?
                }
                Which::Ruid(r) => {
                    let q = bind_aor!(sqlx::query(&sql.delete_aor_ruid), sql, aor).bind(r);
                    self.timed(q.execute(p)).await?
                }
                Which::All => self.timed(bind_aor!(sqlx::query(&sql.delete_aor), sql, aor).execute(p)).await?,
            };
            Ok(done.rows_affected())
        })
    }

    async fn sweep_expired(
        &self,
        table: &str,
        before: UnixTime,
        batch: u32,
    ) -> Result<u64, StoreError> {
        let sql = self.sql(table)?;
        let before = to_db_time(before);
        with_pool!(&self.pool, p => {
            let mut q = sqlx::query(&sql.sweep);
            for _ in 0..sql.sweep_cutoffs {
                q = q.bind(before);
            }
            let q = q.bind(i64::from(batch));
            Ok(self.timed(q.execute(p)).await?.rows_affected())
        })
    }

    async fn oldest_expiry(&self, table: &str) -> Result<Option<UnixTime>, StoreError> {
        let sql = self.sql(table)?;
        with_pool!(&self.pool, p => {
            let row = self.timed(sqlx::query(&sql.oldest_expiry).fetch_optional(p)).await?;
            row.map(|r| r.try_get::<NaiveDateTime, _>(0).map(from_db_time))
                .transpose()
                .map_err(StoreError::from)
        })
    }

    async fn dump_page(
        &self,
        table: &str,
        after: i64,
        limit: u32,
        now: UnixTime,
    ) -> Result<Vec<StoredBinding>, StoreError> {
        let sql = self.sql(table)?;
        with_pool!(&self.pool, p => {
            let q = sqlx::query(&sql.dump_page)
                .bind(after)
                .bind(to_db_time(now))
                .bind(i64::from(limit));
            let rows = self.timed(q.fetch_all(p)).await?;
            rows.iter().map(|r| decode_row(r, true)).collect()
        })
    }

    async fn stats(&self, table: &str, now: UnixTime) -> Result<TableStats, StoreError> {
        self.stats_within(table, now, self.timeout).await
    }

    async fn stats_within(
        &self,
        table: &str,
        now: UnixTime,
        within: Duration,
    ) -> Result<TableStats, StoreError> {
        let sql = self.sql(table)?;
        let now = to_db_time(now);
        let (contacts, aors): (i64, i64) = with_pool!(&self.pool, p => {
            let c = timed(within, sqlx::query_scalar(&sql.count_contacts).bind(now).fetch_one(p)).await?;
            let a = timed(within, sqlx::query_scalar(&sql.count_aors).bind(now).fetch_one(p)).await?;
            (c, a)
        });
        Ok(TableStats {
            contacts: contacts.max(0) as u64,
            aors: aors.max(0) as u64,
        })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        with_pool!(&self.pool, p => {
            self.timed(sqlx::query("SELECT 1").execute(p)).await?;
        });
        Ok(())
    }

    async fn copy_in(&self, table: &str, rows: &[StoredBinding]) -> Result<(), StoreError> {
        let sql = self.sql(table)?;
        for part in rows.chunks(BULK_ROWS) {
            let stmt = sql.upsert_if_newer(part.len());
            with_pool!(&self.pool, p => {
                let mut q = sqlx::query(&stmt);
                for r in part {
                    q = bind_binding!(q, r.aor, r.binding);
                }
                self.timed(q.execute(p)).await?;
            });
        }
        Ok(())
    }

    async fn delete_ruids(&self, table: &str, ruids: &[String]) -> Result<(), StoreError> {
        let sql = self.sql(table)?;
        for part in ruids.chunks(BULK_KEYS) {
            let stmt = sql.delete_ruids(part.len());
            with_pool!(&self.pool, p => {
                let mut q = sqlx::query(&stmt);
                for r in part {
                    q = q.bind(r);
                }
                self.timed(q.execute(p)).await?;
            });
        }
        Ok(())
    }

    async fn existing_ruids(
        &self,
        table: &str,
        ruids: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let sql = self.sql(table)?;
        let mut found = Vec::new();
        for part in ruids.chunks(BULK_KEYS) {
            let stmt = sql.existing_ruids(part.len());
            let mut got: Vec<String> = with_pool!(&self.pool, p => {
                let mut q = sqlx::query_scalar(&stmt);
                for r in part {
                    q = q.bind(r);
                }
                self.timed(q.fetch_all(p)).await?
            });
            found.append(&mut got);
        }
        Ok(found)
    }

    async fn reachable(&self) -> Result<(), StoreError> {
        let Some((host, port)) = self.url.tcp_endpoint() else {
            return Ok(());
        };
        match tokio::time::timeout(
            self.timeout,
            tokio::net::TcpStream::connect((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Unavailable(format!("connect: {e}"))),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    async fn probe(&self, table: &str) -> Result<(), StoreError> {
        let sql = self.sql(table)?;
        with_pool!(&self.pool, p => {
            let _: i64 = self.timed(sqlx::query_scalar(&sql.probe).bind("").fetch_one(p)).await?;
        });
        Ok(())
    }
}
