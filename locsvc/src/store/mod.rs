//! Storage of bindings in SQL databases.
//!
//! Owns: the `LocationStore` trait the router talks to, its SQL
//! implementation for MySQL/MariaDB, PostgreSQL and SQLite (dialect
//! differences live in `dialect`; shared logic is written once and run per
//! driver through `with_pool!`), the master's `locdb` reads and writes,
//! kamctl's `subscriber` table (`subscriber`), and migrations. Does not
//! own: which member to use (router), health (failover),
//! or registrar rules.

mod advisory;
mod batch;
mod dialect;
mod error;
mod exec;
mod instances;
mod layout;
mod location;
mod locdb;
mod locdb_time;
pub mod migrate;
mod pool;
pub mod rows;
pub mod subscriber;
mod url;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;

pub use advisory::{AdvisoryLocks, HeldLock, LockError};
pub use batch::BatchStats;
use batch::Coalescer;
pub use dialect::{COLUMNS, Dialect, LocdbSql, TableSql};
pub use error::StoreError;
pub use instances::InstanceRow;
pub use layout::LayoutRow;
pub use locdb::{FAILOVER_RESET, LocdbRow, LocdbUpdates, Promotion};
pub use locdb_time::LocdbTime;
pub(crate) use pool::with_pool;
pub use pool::{DbPool, PoolSettings};
pub use rows::StoredBinding;
pub use url::{DbUrl, DbUrlError, redact};

use crate::domain::{Aor, Binding, UnixTime};

/// Counts of one location table on one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    pub contacts: u64,
    pub aors: u64,
}

/// Which bindings of an AoR a removal deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which<'a> {
    /// Every binding.
    All,
    /// The bindings of this contact URI.
    Contact(&'a str),
    /// The binding with this record id (Kamailio's `ruid`).
    Ruid(&'a str),
}

/// A [`Which`] that owns its text, for tasks that outlive the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    All,
    Contact(Arc<str>),
    Ruid(Arc<str>),
}

impl Removal {
    /// The selection, borrowed.
    pub fn which(&self) -> Which<'_> {
        match self {
            Self::All => Which::All,
            Self::Contact(c) => Which::Contact(c),
            Self::Ruid(r) => Which::Ruid(r),
        }
    }
}

impl From<Which<'_>> for Removal {
    fn from(w: Which<'_>) -> Self {
        match w {
            Which::All => Self::All,
            Which::Contact(c) => Self::Contact(c.into()),
            Which::Ruid(r) => Self::Ruid(r.into()),
        }
    }
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
    /// Deletes the bindings of `aor` that `which` selects; returns rows
    /// deleted.
    async fn remove(&self, table: &str, aor: &Aor, which: Which<'_>) -> Result<u64, StoreError>;
    /// Deletes at most `batch` rows that expired before `before`.
    async fn sweep_expired(
        &self,
        table: &str,
        before: UnixTime,
        batch: u32,
    ) -> Result<u64, StoreError>;
    /// The earliest expiry among rows that are not permanent (None: no
    /// such row); what the sweeper's lag is measured from.
    async fn oldest_expiry(&self, table: &str) -> Result<Option<UnixTime>, StoreError>;
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
    /// The same counts with a deadline of their own (`within`), not the
    /// per-statement one: counting a large table takes longer than a
    /// request may.
    async fn stats_within(
        &self,
        table: &str,
        now: UnixTime,
        within: Duration,
    ) -> Result<TableStats, StoreError> {
        let _ = within;
        self.stats(table, now).await
    }
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
    /// Where the coalescing queues report their time (None: nowhere).
    timers: Option<StageTimers>,
    /// The clock `locdb.failover` is written in (a master's setting).
    locdb_time: LocdbTime,
}

/// Histograms a store reports the stages of a coalesced request to, by
/// operation (`read`, `write`): the wait for a worker, then the statement.
#[derive(Debug, Clone)]
pub struct StageTimers {
    pub queued: prometheus::HistogramVec,
    pub statement: prometheus::HistogramVec,
    /// Requests per batch.
    pub batch: prometheus::HistogramVec,
}

impl StageTimers {
    /// The two histograms of `op`.
    fn of(&self, op: &str) -> batch::Timers {
        batch::Timers {
            queued: self.queued.with_label_values(&[op]),
            statement: self.statement.with_label_values(&[op]),
            batch: self.batch.with_label_values(&[op]),
        }
    }
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
            timers: None,
            locdb_time: LocdbTime::Utc,
        })
    }

    /// The same store reading and writing `locdb.failover` in `clock`.
    pub fn with_locdb_time(mut self, clock: LocdbTime) -> Self {
        self.locdb_time = clock;
        self
    }

    /// The same store reporting its queue and statement times to `t`
    /// (before its first request: the queues start then).
    pub fn with_timers(mut self, t: StageTimers) -> Self {
        self.timers = Some(t);
        self
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
                self.timers.as_ref().map(|t| t.of("read")),
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
                self.timers.as_ref().map(|t| t.of("write")),
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
        exec::timed(self.timeout, f).await
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
