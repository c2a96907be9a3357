//! kamctl's `subscriber` table (version 7): SIP digest credentials, on the
//! master or on an existing Kamailio database (`subscribers.url`). Written
//! once for the three dialects; every value is bound, never spliced.
//! Does not own input checks or which hash a front gets (`credentials`).

use std::time::Duration;

use sqlx::Row;

use super::exec::timed;
use super::{DbPool, DbUrl, Dialect, PoolSettings, StoreError, with_pool};
use crate::credentials::{Stored, ha1, ha1b};

/// One `subscriber` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriberRow {
    pub id: i64,
    pub username: String,
    pub domain: String,
    /// Plain text, as kamctl stores it; empty when only hashes are kept.
    pub password: String,
    pub ha1: String,
    pub ha1b: String,
}

impl<'a> From<&'a SubscriberRow> for Stored<'a> {
    fn from(r: &'a SubscriberRow) -> Self {
        Stored {
            username: &r.username,
            domain: &r.domain,
            password: &r.password,
            ha1: &r.ha1,
        }
    }
}

/// Statements, built once.
#[derive(Debug, Clone)]
struct SubscriberSql {
    get: String,
    list: String,
    list_domain: String,
    insert: String,
    upsert: String,
    update: String,
    delete: String,
}

impl SubscriberSql {
    fn new(d: Dialect) -> Self {
        let cols = format!(
            "{} AS id, username, domain, password, ha1, ha1b",
            d.int64("id")
        );
        let insert_cols = "INSERT INTO subscriber (username, domain, password, ha1, ha1b) \
                           VALUES (?, ?, ?, ?, ?)";
        Self {
            get: d.finish(&format!(
                "SELECT {cols} FROM subscriber WHERE username = ? AND domain = ?"
            )),
            list: d.finish(&format!(
                "SELECT {cols} FROM subscriber WHERE id > ? ORDER BY id LIMIT ?"
            )),
            list_domain: d.finish(&format!(
                "SELECT {cols} FROM subscriber WHERE id > ? AND domain = ? ORDER BY id LIMIT ?"
            )),
            insert: d.finish(&match d {
                Dialect::MySql => insert_cols.replacen("INSERT", "INSERT IGNORE", 1),
                Dialect::Postgres | Dialect::Sqlite => {
                    format!("{insert_cols} ON CONFLICT (username, domain) DO NOTHING")
                }
            }),
            upsert: d.finish(&match d {
                Dialect::MySql => format!(
                    "{insert_cols} ON DUPLICATE KEY UPDATE password = VALUES(password), \
                     ha1 = VALUES(ha1), ha1b = VALUES(ha1b)"
                ),
                Dialect::Postgres | Dialect::Sqlite => format!(
                    "{insert_cols} ON CONFLICT (username, domain) DO UPDATE SET \
                     password = excluded.password, ha1 = excluded.ha1, ha1b = excluded.ha1b"
                ),
            }),
            update: d.finish(
                "UPDATE subscriber SET password = ?, ha1 = ?, ha1b = ? \
                 WHERE username = ? AND domain = ?",
            ),
            delete: d.finish("DELETE FROM subscriber WHERE username = ? AND domain = ?"),
        }
    }
}

/// The credential store on one database.
#[derive(Debug, Clone)]
pub struct SubscriberStore {
    pool: DbPool,
    sql: SubscriberSql,
    timeout: Duration,
}

fn decode<R: Row>(r: &R) -> Result<SubscriberRow, sqlx::Error>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    String: for<'a> sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(SubscriberRow {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        domain: r.try_get("domain")?,
        password: r.try_get("password")?,
        ha1: r.try_get("ha1")?,
        ha1b: r.try_get("ha1b")?,
    })
}

impl SubscriberStore {
    /// The `subscriber` table reached through `pool` (the master's, or one
    /// of its own).
    pub fn new(pool: DbPool, query_timeout: Duration) -> Self {
        Self {
            sql: SubscriberSql::new(pool.dialect()),
            pool,
            timeout: query_timeout,
        }
    }

    /// Opens (lazily) the database at `url`.
    pub fn open(
        url: &DbUrl,
        pool: &PoolSettings,
        query_timeout: Duration,
    ) -> Result<Self, StoreError> {
        Ok(Self::new(DbPool::open_lazy(url, pool)?, query_timeout))
    }

    /// The row of `username`@`domain`.
    pub async fn get(
        &self,
        username: &str,
        domain: &str,
    ) -> Result<Option<SubscriberRow>, StoreError> {
        with_pool!(&self.pool, p => {
            let q = sqlx::query(&self.sql.get).bind(username).bind(domain);
            let row = timed(self.timeout, q.fetch_optional(p)).await?;
            Ok(row.as_ref().map(decode).transpose()?)
        })
    }

    /// At most `limit` rows with id > `after`, by id, of one domain or all.
    pub async fn list(
        &self,
        domain: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<SubscriberRow>, StoreError> {
        with_pool!(&self.pool, p => {
            let q = match domain {
                Some(d) => sqlx::query(&self.sql.list_domain).bind(after).bind(d),
                None => sqlx::query(&self.sql.list).bind(after),
            };
            let rows = timed(self.timeout, q.bind(i64::from(limit)).fetch_all(p)).await?;
            Ok(rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?)
        })
    }

    /// Adds `username`@`domain` with `password` and kamctl's hashes; false
    /// when it exists already (left unchanged).
    pub async fn insert(
        &self,
        username: &str,
        domain: &str,
        password: &str,
    ) -> Result<bool, StoreError> {
        self.write(&self.sql.insert, username, domain, password)
            .await
            .map(|n| n > 0)
    }

    /// Adds or replaces the credentials of `username`@`domain`.
    pub async fn upsert(
        &self,
        username: &str,
        domain: &str,
        password: &str,
    ) -> Result<(), StoreError> {
        self.write(&self.sql.upsert, username, domain, password)
            .await
            .map(|_| ())
    }

    /// Replaces the password (and hashes) of an existing subscriber; false
    /// when there is none.
    pub async fn set_password(
        &self,
        username: &str,
        domain: &str,
        password: &str,
    ) -> Result<bool, StoreError> {
        let (h, hb) = (
            ha1(username, domain, password),
            ha1b(username, domain, password),
        );
        let n = with_pool!(&self.pool, p => {
            let q = sqlx::query(&self.sql.update)
                .bind(password)
                .bind(&h)
                .bind(&hb)
                .bind(username)
                .bind(domain);
            // sqlx asks MySQL for matched, not changed, rows (FOUND_ROWS):
            // setting the same password again still counts.
            timed(self.timeout, q.execute(p)).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Deletes `username`@`domain`; false when there was none.
    pub async fn remove(&self, username: &str, domain: &str) -> Result<bool, StoreError> {
        let n = with_pool!(&self.pool, p => {
            let q = sqlx::query(&self.sql.delete).bind(username).bind(domain);
            timed(self.timeout, q.execute(p)).await?.rows_affected()
        });
        Ok(n > 0)
    }

    /// Closes the pool (only when it is the store's own).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn write(
        &self,
        sql: &str,
        username: &str,
        domain: &str,
        password: &str,
    ) -> Result<u64, StoreError> {
        let (h, hb) = (
            ha1(username, domain, password),
            ha1b(username, domain, password),
        );
        Ok(with_pool!(&self.pool, p => {
            let q = sqlx::query(sql)
                .bind(username)
                .bind(domain)
                .bind(password)
                .bind(&h)
                .bind(&hb);
            timed(self.timeout, q.execute(p)).await?.rows_affected()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_parameterized() {
        for d in [Dialect::MySql, Dialect::Postgres, Dialect::Sqlite] {
            let s = SubscriberSql::new(d);
            for (sql, binds) in [
                (&s.get, 2),
                (&s.list, 2),
                (&s.list_domain, 3),
                (&s.insert, 5),
                (&s.upsert, 5),
                (&s.update, 5),
                (&s.delete, 2),
            ] {
                let marks = if d == Dialect::Postgres {
                    sql.matches('$').count()
                } else {
                    sql.matches('?').count()
                };
                assert_eq!(marks, binds, "{sql}");
            }
        }
    }
}
