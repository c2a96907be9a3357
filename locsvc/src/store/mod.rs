//! Storage of bindings in SQL databases.
//!
//! Owns: the `LocationStore` trait the router talks to, its SQL
//! implementation for MySQL/MariaDB, PostgreSQL and SQLite (dialect
//! differences live in `dialect`; shared logic is written once and run per
//! driver through `with_pool!`), the master's `locdb` reads and writes,
//! kamctl's `subscriber` table (`subscriber`), and migrations. Does not
//! own: which member to use (router), health (failover),
//! or registrar rules.

mod batch;
mod dialect;
mod error;
mod locdb;
pub mod migrate;
mod pool;
pub mod rows;
pub mod subscriber;
mod url;

use std::collections::HashMap;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;

pub use batch::BatchStats;
use batch::Coalescer;
pub use dialect::{COLUMNS, Dialect, LocdbSql, TableSql};
pub use error::StoreError;
pub use locdb::{FAILOVER_RESET, LocdbRow, Promotion};
pub(crate) use pool::with_pool;
pub use pool::{DbPool, PoolSettings};
pub use rows::StoredBinding;
pub use url::{DbUrl, DbUrlError, redact};

use crate::domain::{Aor, Binding, UnixTime};
use rows::{Q_UNSPECIFIED, decode_row, join_path, to_db_time};

/// Counts of one location table on one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    pub contacts: u64,
    pub aors: u64,
}

/// Binding storage on one database (one group member, or the master for
/// `single` tables).
#[async_trait]
pub trait LocationStore: Send + Sync + 'static {
    /// Every row of `aor`, expired ones included (the registrar matches them).
    async fn load_aor(&self, table: &str, aor: &Aor) -> Result<Vec<Binding>, StoreError>;
    /// Rows of `aor` still valid at `now`, in no particular order.
    async fn lookup(
        &self,
        table: &str,
        aor: &Aor,
        now: UnixTime,
    ) -> Result<Vec<Binding>, StoreError>;
    /// Upserts `upserts` (keyed by ruid) and deletes `deletes`, atomically.
    async fn apply(
        &self,
        table: &str,
        aor: &Aor,
        upserts: &[Binding],
        deletes: &[String],
    ) -> Result<(), StoreError>;
    /// Deletes one contact of `aor`, or all of them; returns rows deleted.
    async fn remove(
        &self,
        table: &str,
        aor: &Aor,
        contact: Option<&str>,
    ) -> Result<u64, StoreError>;
    /// Deletes at most `batch` rows that expired before `before`.
    async fn sweep_expired(
        &self,
        table: &str,
        before: UnixTime,
        batch: u32,
    ) -> Result<u64, StoreError>;
    /// Valid rows with row id > `after`, ascending, at most `limit`.
    async fn dump_page(
        &self,
        table: &str,
        after: i64,
        limit: u32,
        now: UnixTime,
    ) -> Result<Vec<StoredBinding>, StoreError>;
    /// Valid contacts and distinct AoRs.
    async fn stats(&self, table: &str, now: UnixTime) -> Result<TableStats, StoreError>;
    /// A real round trip (`SELECT 1`).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Copies rows (of any AoRs) in, never replacing a newer version.
    async fn copy_in(&self, table: &str, rows: &[StoredBinding]) -> Result<(), StoreError>;
    /// Deletes rows by ruid.
    async fn delete_ruids(&self, table: &str, ruids: &[String]) -> Result<(), StoreError>;
    /// The subset of `ruids` present in `table`.
    async fn existing_ruids(
        &self,
        table: &str,
        ruids: &[String],
    ) -> Result<Vec<String>, StoreError>;
    /// An indexed query on `table`: proves the member answers real queries,
    /// not just connections (p_usrloc re-admits on connect alone and flaps).
    async fn probe(&self, table: &str) -> Result<(), StoreError>;
    /// A bare connection attempt to the server, bounded by the query
    /// deadline: a refused port is an error at once (the pool would retry
    /// it until its acquire timeout). Embedded databases are always
    /// reachable.
    async fn reachable(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The SQL implementation of `LocationStore` for one database.
#[derive(Debug)]
pub struct SqlStore {
    pool: DbPool,
    url: DbUrl,
    tables: HashMap<String, TableSql>,
    locdb: LocdbSql,
    timeout: Duration,
    /// Group-commit queues per table, started on first use (empty when
    /// write batching is off).
    writes: HashMap<String, OnceLock<Coalescer<batch::Writes>>>,
    /// Coalesced-read queues per table, likewise.
    reads: HashMap<String, OnceLock<Coalescer<batch::Reads>>>,
    /// Workers and batch bounds of both.
    batching: Batching,
}

/// Workers and most rows per batch, of writes and reads.
#[derive(Debug, Clone, Copy)]
struct Batching {
    writers: usize,
    write_rows: usize,
    readers: usize,
    read_aors: usize,
}

/// How a database is opened: the tables it serves and the pool and
/// statement settings.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreOptions {
    /// Location tables this database serves (none for the master's `locdb`
    /// alone, or for migrations).
    pub tables: Vec<String>,
    pub use_domain: bool,
    pub pool: PoolSettings,
    pub query_timeout: Duration,
}

impl StoreOptions {
    /// The same options serving `tables` instead.
    pub fn with_tables(&self, tables: Vec<String>) -> Self {
        Self {
            tables,
            ..self.clone()
        }
    }
}

impl SqlStore {
    /// Opens (lazily) the database at `url` as `o` says.
    pub fn open(url: &DbUrl, o: &StoreOptions) -> Result<Self, StoreError> {
        let (tables, use_domain, pool, query_timeout) =
            (&o.tables, o.use_domain, &o.pool, o.query_timeout);
        let dialect = url.dialect();
        let batching = Batching {
            // SQLite has one writer anyway.
            writers: match dialect {
                Dialect::Sqlite => 1,
                _ => pool.batch_writers,
            },
            write_rows: pool.write_batch_rows,
            readers: pool.batch_readers,
            read_aors: pool.read_batch_aors.min(dialect::MAX_READ_CHUNK),
        };
        Ok(Self {
            pool: DbPool::open_lazy(url, pool)?,
            url: url.clone(),
            tables: tables
                .iter()
                .map(|t| (t.clone(), TableSql::new(dialect, t, use_domain)))
                .collect(),
            locdb: LocdbSql::new(dialect),
            timeout: query_timeout,
            writes: lazy_cells(tables, batching.write_rows > 0),
            reads: lazy_cells(tables, batching.read_aors > 0),
            batching,
        })
    }

    /// The URL (redacted when displayed).
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.pool.dialect()
    }

    /// The pool, for migrations and tests.
    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// Group-commit figures of `table` (None when write batching is off
    /// or no write happened yet).
    pub fn batch_stats(&self, table: &str) -> Option<BatchStats> {
        self.writes.get(table)?.get().map(Coalescer::stats)
    }

    /// Coalesced-read figures of `table`, likewise.
    pub fn read_batch_stats(&self, table: &str) -> Option<BatchStats> {
        self.reads.get(table)?.get().map(Coalescer::stats)
    }

    /// The coalesced-read queue of `table`, when reads are coalesced.
    fn reader(&self, table: &str, sql: &TableSql) -> Option<&Coalescer<batch::Reads>> {
        let cell = self.reads.get(table)?;
        Some(cell.get_or_init(|| {
            let (workers, rows) = (self.batching.readers, self.batching.read_aors);
            Coalescer::start(
                batch::Reads(self.table_on(sql)),
                self.timeout,
                workers,
                rows,
            )
        }))
    }

    /// The group-commit queue of `table`, when writes are coalesced.
    fn writer(&self, table: &str, sql: &TableSql) -> Option<&Coalescer<batch::Writes>> {
        let cell = self.writes.get(table)?;
        Some(cell.get_or_init(|| {
            let (workers, rows) = (self.batching.writers, self.batching.write_rows);
            Coalescer::start(
                batch::Writes(self.table_on(sql)),
                self.timeout,
                workers,
                rows,
            )
        }))
    }

    fn table_on(&self, sql: &TableSql) -> batch::TableOn {
        batch::TableOn {
            pool: self.pool.clone(),
            sql: sql.clone(),
            timeout: self.timeout,
        }
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn sql(&self, table: &str) -> Result<&TableSql, StoreError> {
        self.tables
            .get(table)
            .ok_or_else(|| StoreError::Rejected(format!("table {table:?} is not configured")))
    }

    /// Runs `f` under the per-query deadline.
    async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        timed(self.timeout, f).await
    }
}

/// One empty cell per table when `on`, none otherwise.
fn lazy_cells<T>(tables: &[String], on: bool) -> HashMap<String, OnceLock<T>> {
    if on {
        tables
            .iter()
            .map(|t| (t.clone(), OnceLock::new()))
            .collect()
    } else {
        HashMap::new()
    }
}

/// Every row of each of `aors`, one `IN` query per cached chunk size; each
/// row goes back to the AoRs that asked for it.
async fn read_aors(
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
            .bind(join_path(&$b.path))
            .bind(to_db_time($b.expires))
            .bind($b.q.unwrap_or(Q_UNSPECIFIED))
            .bind(&$b.call_id)
            .bind($b.cseq as i32)
            .bind(to_db_time($b.last_modified))
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

/// One REGISTER's changes to one AoR.
struct Change<'a> {
    aor: &'a Aor,
    upserts: &'a [Binding],
    deletes: &'a [String],
}

/// Rows per statement of a bulk copy: 18 binds a row stays far below every
/// dialect's limit on placeholders (SQLite 32,766; MySQL and PostgreSQL
/// 65,535), whatever batch a resync asks for.
const BULK_ROWS: usize = 500;

/// Keys per statement of a bulk delete or existence check (one bind each).
const BULK_KEYS: usize = 4000;

/// Runs `f` under `timeout`.
async fn timed<T>(
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
async fn write_changes(
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
            let mut tx = if statements > 1 { Some(p.begin().await?) } else { None };
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
        })
        .await
    })
}

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

    async fn remove(
        &self,
        table: &str,
        aor: &Aor,
        contact: Option<&str>,
    ) -> Result<u64, StoreError> {
        let sql = self.sql(table)?;
        with_pool!(&self.pool, p => {
            let done = match contact {
                Some(c) => {
                    let q = bind_aor!(sqlx::query(&sql.delete_contact), sql, aor).bind(c);
                    self.timed(q.execute(p)).await?
                }
                None => self.timed(bind_aor!(sqlx::query(&sql.delete_aor), sql, aor).execute(p)).await?,
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
            let q = sqlx::query(&sql.sweep).bind(before);
            let q = match self.dialect() {
                Dialect::MySql => q.bind(i64::from(batch)),
                Dialect::Postgres | Dialect::Sqlite => q.bind(before).bind(i64::from(batch)),
            };
            Ok(self.timed(q.execute(p)).await?.rows_affected())
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
        let sql = self.sql(table)?;
        let now = to_db_time(now);
        let (contacts, aors): (i64, i64) = with_pool!(&self.pool, p => {
            let c = self.timed(sqlx::query_scalar(&sql.count_contacts).bind(now).fetch_one(p)).await?;
            let a = self.timed(sqlx::query_scalar(&sql.count_aors).bind(now).fetch_one(p)).await?;
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
