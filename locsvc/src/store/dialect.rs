//! The SQL that differs between MySQL/MariaDB, PostgreSQL and SQLite.
//! Statements are written once with `?` placeholders; `Dialect::finish`
//! rewrites them to `$n` for PostgreSQL. Everything that is the same in all
//! three stays in one place (`TableSql`).

use std::borrow::Cow;

use crate::domain::Aor;

/// A SQL dialect (and sqlx driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Dialect {
    MySql,
    Postgres,
    Sqlite,
}

impl Dialect {
    /// Rewrites `?` placeholders into this dialect's form.
    pub fn finish(self, sql: &str) -> String {
        if self != Self::Postgres {
            return sql.to_string();
        }
        let mut out = String::with_capacity(sql.len() + 16);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// `INSERT INTO {into} VALUES {values}` that skips a row whose key is
    /// there already.
    pub fn insert_ignoring_duplicates(self, into: &str, values: &str) -> String {
        match self {
            Self::MySql => format!("INSERT IGNORE INTO {into} VALUES {values}"),
            Self::Postgres | Self::Sqlite => {
                format!("INSERT INTO {into} VALUES {values} ON CONFLICT DO NOTHING")
            }
        }
    }

    /// `INSERT INTO {table} ({cols}) VALUES (?, …)` that, when a row with
    /// the same `key` exists, overwrites the columns in `update` instead.
    pub fn upsert_by_key(self, table: &str, cols: &[&str], key: &str, update: &[&str]) -> String {
        let marks = vec!["?"; cols.len()].join(", ");
        let insert = format!("INSERT INTO {table} ({}) VALUES ({marks})", cols.join(", "));
        let sql = match self {
            Self::MySql => {
                let sets: Vec<String> = update
                    .iter()
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect();
                format!("{insert} ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
            Self::Postgres | Self::Sqlite => {
                let sets: Vec<String> = update
                    .iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect();
                format!(
                    "{insert} ON CONFLICT ({key}) DO UPDATE SET {}",
                    sets.join(", ")
                )
            }
        };
        self.finish(&sql)
    }

    /// The column type of a UTC timestamp without zone.
    pub fn timestamp_type(self) -> &'static str {
        match self {
            Self::MySql => "DATETIME",
            Self::Postgres | Self::Sqlite => "TIMESTAMP WITHOUT TIME ZONE",
        }
    }

    /// `expr` cast to a 64-bit signed integer (decodes as i64 everywhere).
    pub fn int64(self, expr: &str) -> String {
        match self {
            Self::MySql => format!("CAST({expr} AS SIGNED)"),
            Self::Postgres => format!("CAST({expr} AS BIGINT)"),
            Self::Sqlite => format!("CAST({expr} AS INTEGER)"),
        }
    }

    /// Name used in logs, metrics and migration folders.
    pub fn name(self) -> &'static str {
        match self {
            Self::MySql => "mysql",
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// Columns locsvc reads and writes, in bind order (kamctl names).
pub const COLUMNS: [&str; 18] = [
    "ruid",
    "username",
    "domain",
    "contact",
    "received",
    "path",
    "expires",
    "q",
    "callid",
    "cseq",
    "last_modified",
    "flags",
    "cflags",
    "user_agent",
    "socket",
    "methods",
    "instance",
    "reg_id",
];

/// `domain::PERMANENT_UNTIL` as a timestamp literal (a constant, so inlined
/// rather than bound): rows expiring at or before it never expire.
pub const PERMANENT_UNTIL_SQL: &str = "'1970-01-02 00:00:00'";

/// Statements for one location table, built once per table at start-up so
/// no SQL is formatted on the request path (except multi-row batches).
#[derive(Debug, Clone)]
pub struct TableSql {
    dialect: Dialect,
    table: String,
    /// Every row of an AoR, expired ones included (the registrar needs them).
    pub select_aor: String,
    /// Valid rows of an AoR (`expires > ?`, or permanent).
    pub select_aor_valid: String,
    /// Upserts of 1, 2, 4, … `MAX_CHUNK` rows: every batch is cut into
    /// these sizes so the driver's prepared-statement cache keeps hitting.
    upserts: Vec<String>,
    /// Deletes by ruid, sized like `upserts`.
    deletes: Vec<String>,
    /// Every row of 1, 2, 4, … `MAX_READ_CHUNK` AoRs (coalesced reads).
    selects: Vec<String>,
    pub delete_aor: String,
    pub delete_contact: String,
    /// One binding of an AoR by ruid (never another AoR's).
    pub delete_aor_ruid: String,
    pub sweep: String,
    /// How many times `sweep` binds the cutoff before its batch size.
    pub sweep_cutoffs: usize,
    /// The earliest expiry of a row that is not permanent (the expires
    /// index's first entry: one probe, whatever the table's size).
    pub oldest_expiry: String,
    pub dump_page: String,
    pub count_contacts: String,
    pub count_aors: String,
    /// A cheap indexed query proving the table answers (health probe).
    pub probe: String,
    /// Whether AoR statements filter on `domain` too.
    pub use_domain: bool,
}

impl TableSql {
    /// Builds the statements for `table` (an identifier validated by the caller).
    pub fn new(dialect: Dialect, table: &str, use_domain: bool) -> Self {
        let cols = COLUMNS.join(", ");
        let aor_filter = if use_domain {
            "username = ? AND domain = ?"
        } else {
            "username = ?"
        };
        let f = |s: String| dialect.finish(&s);
        let perm = PERMANENT_UNTIL_SQL;
        // Valid at the bound time, or never expiring (Kamailio's 0).
        let valid = format!("(expires > ? OR expires <= {perm})");
        // Expired before the bound time, and not permanent.
        let expired = format!("expires < ? AND expires > {perm}");
        let sweep = match dialect {
            // MySQL has DELETE ... LIMIT; the expires index bounds the scan.
            Dialect::MySql => format!("DELETE FROM {table} WHERE {expired} LIMIT ?"),
            // Re-checking expires in the outer DELETE keeps a row that another
            // instance refreshed between the sub-select and the delete. The
            // ids are taken once (an InitPlan): `IN (... LIMIT ?)` may be
            // planned as a nested-loop semi-join that rescans the locking
            // LIMIT per outer row, and then deleted more than the batch
            // (seen once the permanent-row filter changed the estimates).
            Dialect::Postgres => format!(
                "DELETE FROM {table} WHERE {expired} AND id = ANY(ARRAY(\
                 SELECT id FROM {table} WHERE {expired} LIMIT ? FOR UPDATE SKIP LOCKED))"
            ),
            Dialect::Sqlite => format!(
                "DELETE FROM {table} WHERE {expired} AND id IN \
                 (SELECT id FROM {table} WHERE {expired} LIMIT ?)"
            ),
        };
        Self {
            dialect,
            table: table.to_string(),
            select_aor: f(format!("SELECT {cols} FROM {table} WHERE {aor_filter}")),
            select_aor_valid: f(format!(
                "SELECT {cols} FROM {table} WHERE {aor_filter} AND {valid}"
            )),
            upserts: chunk_sizes()
                .map(|n| Self::upsert_sql(dialect, table, n))
                .collect(),
            deletes: chunk_sizes()
                .map(|n| Self::delete_sql(dialect, table, n))
                .collect(),
            selects: chunk_sizes()
                .take_while(|n| *n <= MAX_READ_CHUNK)
                .map(|n| {
                    let marks = vec!["?"; n].join(", ");
                    let filter = if use_domain {
                        format!("username IN ({marks}) AND domain IN ({marks})")
                    } else {
                        format!("username IN ({marks})")
                    };
                    f(format!("SELECT {cols} FROM {table} WHERE {filter}"))
                })
                .collect(),
            delete_aor: f(format!("DELETE FROM {table} WHERE {aor_filter}")),
            delete_contact: f(format!(
                "DELETE FROM {table} WHERE {aor_filter} AND contact = ?"
            )),
            delete_aor_ruid: f(format!(
                "DELETE FROM {table} WHERE {aor_filter} AND ruid = ?"
            )),
            sweep: f(sweep),
            sweep_cutoffs: if dialect == Dialect::MySql { 1 } else { 2 },
            oldest_expiry: f(format!(
                "SELECT expires FROM {table} WHERE expires > {perm} ORDER BY expires LIMIT 1"
            )),
            dump_page: f(format!(
                "SELECT {id} AS row_id, {cols} FROM {table} WHERE id > ? AND {valid} \
                 ORDER BY id LIMIT ?",
                id = dialect.int64("id")
            )),
            count_contacts: f(format!("SELECT COUNT(*) FROM {table} WHERE {valid}")),
            count_aors: f(format!(
                "SELECT COUNT(*) FROM (SELECT DISTINCT username, domain FROM {table} \
                 WHERE {valid}) a"
            )),
            probe: f(format!("SELECT COUNT(*) FROM {table} WHERE ruid = ?")),
            use_domain,
        }
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// An upsert of `rows` rows keyed on the unique `ruid`.
    pub fn upsert(&self, rows: usize) -> Cow<'_, str> {
        match chunk_index(rows) {
            Some(i) => Cow::Borrowed(&self.upserts[i]),
            None => Cow::Owned(Self::upsert_sql(self.dialect, &self.table, rows)),
        }
    }

    /// An upsert of `rows` rows that never replaces a newer stored version
    /// (resync copies must not undo a refresh that raced with them).
    pub fn upsert_if_newer(&self, rows: usize) -> String {
        let t = &self.table;
        let cols = COLUMNS.join(", ");
        let one = format!("({})", vec!["?"; COLUMNS.len()].join(", "));
        let values = vec![one; rows].join(", ");
        let on_conflict = match self.dialect {
            Dialect::MySql => {
                // MySQL assigns left to right: compare before last_modified moves.
                let newer = format!("{t}.last_modified < VALUES(last_modified)");
                let mut sets: Vec<String> = COLUMNS
                    .iter()
                    .filter(|c| **c != "ruid" && **c != "last_modified")
                    .map(|c| format!("{c} = IF({newer}, VALUES({c}), {c})"))
                    .collect();
                sets.push("last_modified = GREATEST(last_modified, VALUES(last_modified))".into());
                format!("ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
            Dialect::Postgres | Dialect::Sqlite => format!(
                "ON CONFLICT (ruid) DO UPDATE SET {} WHERE {t}.last_modified < excluded.last_modified",
                COLUMNS
                    .iter()
                    .filter(|c| **c != "ruid")
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        self.dialect.finish(&format!(
            "INSERT INTO {t} ({cols}) VALUES {values} {on_conflict}"
        ))
    }

    /// Which of `n` ruids exist.
    pub fn existing_ruids(&self, n: usize) -> String {
        let marks = vec!["?"; n].join(", ");
        self.dialect.finish(&format!(
            "SELECT ruid FROM {} WHERE ruid IN ({marks})",
            self.table
        ))
    }

    /// Every row of `n` AoRs: binds `n` users, then (with domains) `n`
    /// domains. The cross product of both lists may return rows of other
    /// AoRs; the caller keeps the ones it asked for.
    pub fn select_aors(&self, n: usize) -> Cow<'_, str> {
        match chunk_index(n).filter(|_| n <= MAX_READ_CHUNK) {
            Some(i) => Cow::Borrowed(&self.selects[i]),
            None => panic!("select_aors: {n} is not a read chunk size"),
        }
    }

    /// Whether a row stored under `row` answers the AoR filter for `asked`,
    /// as the database compares: MySQL's default collations ignore case,
    /// PostgreSQL and SQLite compare bytes.
    pub fn matches(&self, row: &Aor, asked: &Aor) -> bool {
        let eq = |a: &str, b: &str| match self.dialect {
            Dialect::MySql => a.eq_ignore_ascii_case(b),
            Dialect::Postgres | Dialect::Sqlite => a == b,
        };
        eq(row.user(), asked.user())
            && (!self.use_domain
                || eq(
                    row.domain().unwrap_or_default(),
                    asked.domain().unwrap_or_default(),
                ))
    }

    /// A delete of `n` ruids.
    pub fn delete_ruids(&self, n: usize) -> Cow<'_, str> {
        match chunk_index(n) {
            Some(i) => Cow::Borrowed(&self.deletes[i]),
            None => Cow::Owned(Self::delete_sql(self.dialect, &self.table, n)),
        }
    }

    fn delete_sql(dialect: Dialect, table: &str, n: usize) -> String {
        if n == 1 {
            return dialect.finish(&format!("DELETE FROM {table} WHERE ruid = ?"));
        }
        let marks = vec!["?"; n].join(", ");
        dialect.finish(&format!("DELETE FROM {table} WHERE ruid IN ({marks})"))
    }

    fn upsert_sql(dialect: Dialect, table: &str, rows: usize) -> String {
        let cols = COLUMNS.join(", ");
        let one = format!("({})", vec!["?"; COLUMNS.len()].join(", "));
        let values = vec![one; rows].join(", ");
        let updated = COLUMNS.iter().filter(|c| **c != "ruid");
        let on_conflict = match dialect {
            Dialect::MySql => format!(
                "ON DUPLICATE KEY UPDATE {}",
                updated
                    .map(|c| format!("{c} = VALUES({c})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Dialect::Postgres | Dialect::Sqlite => format!(
                "ON CONFLICT (ruid) DO UPDATE SET {}",
                updated
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        dialect.finish(&format!(
            "INSERT INTO {table} ({cols}) VALUES {values} {on_conflict}"
        ))
    }
}

/// Largest multi-row statement of a write batch: 128 rows × 18 columns
/// stays far below every driver's placeholder limit (SQLite: 32,766).
pub const MAX_CHUNK: usize = 128;

/// Most AoRs of one coalesced read.
pub const MAX_READ_CHUNK: usize = 64;

/// 1, 2, 4, … `MAX_CHUNK`.
fn chunk_sizes() -> impl Iterator<Item = usize> {
    (0..=MAX_CHUNK.trailing_zeros()).map(|k| 1 << k)
}

/// Position of `n` in `chunk_sizes`, when it is one of them.
fn chunk_index(n: usize) -> Option<usize> {
    (n.is_power_of_two() && n <= MAX_CHUNK).then(|| n.trailing_zeros() as usize)
}

/// Cuts `n` rows into power-of-two statement sizes up to `max` (a power
/// of two), largest first (`max`es, then the binary digits of the rest): at
/// most `n / max + log2(max)` statements, each one a cached prepared
/// statement.
pub fn chunks(n: usize, max: usize) -> Vec<usize> {
    debug_assert!(max.is_power_of_two());
    let rest = n % max;
    std::iter::repeat_n(max, n / max)
        .chain(
            (0..max.trailing_zeros())
                .rev()
                .map(|k| 1usize << k)
                .filter(|b| rest & b != 0),
        )
        .collect()
}

/// Statements on the master's `locdb` table. Every state change is a
/// conditional update on (id, no, url) and the expected old state, so when
/// several locsvc instances decide the same thing only one write lands.
#[derive(Debug, Clone)]
pub struct LocdbSql {
    pub select_all: String,
    pub mark_failover: String,
    pub deactivate: String,
    pub readmit: String,
    pub clear_failover: String,
    pub set_status: String,
}

impl LocdbSql {
    /// Builds the `locdb` statements for `dialect`.
    pub fn new(dialect: Dialect) -> Self {
        let i = |c: &str| dialect.int64(c);
        Self {
            select_all: format!(
                "SELECT {id} AS id, {no} AS no, url, {status} AS status, {errors} AS errors, \
                 failover, {spare} AS spare, {rg} AS rg, {leaving} AS leaving \
                 FROM locdb ORDER BY id, no",
                leaving = i("COALESCE(leaving, 0)"),
                id = i("id"),
                no = i("no"),
                status = i("status"),
                errors = i("errors"),
                spare = i("spare"),
                rg = i("rg"),
            ),
                        // Never move `failover` backwards: it records the latest miss.
            // Keyed by the slot, not the URL: a write an instance with an
            // older snapshot sent to the slot's previous member (just
            // replaced by a spare) was missed by whoever holds it now.
            mark_failover: dialect.finish(&format!(
                "UPDATE locdb SET failover = {greatest}(failover, ?) WHERE id = ? AND no = ?",
                greatest = if dialect == Dialect::Sqlite { "MAX" } else { "GREATEST" }
            )),
            // Never the last member that is on: with every member off the
            // group is dead, so keeping a failing one can only help. The
            // derived table lets MySQL read the table it updates.
            deactivate: dialect.finish(
                "UPDATE locdb SET status = 0, failover = ?, errors = errors + ? \
                 WHERE id = ? AND no = ? AND url = ? AND status = 1 \
                 AND (SELECT COUNT(*) FROM (SELECT no FROM locdb WHERE id = ? AND no <> ? \
                      AND status = 1 AND spare = 0) others) > 0",
            ),
            readmit: dialect.finish(
                "UPDATE locdb SET status = 1, failover = ?, errors = 0 \
                 WHERE id = ? AND no = ? AND url = ? AND status = 0",
            ),
            clear_failover: dialect.finish(
                "UPDATE locdb SET failover = ? WHERE id = ? AND no = ? AND url = ? AND failover = ?",
            ),
            set_status: dialect.finish(
                "UPDATE locdb SET status = ?, failover = ? WHERE id = ? AND no = ?",
            ),
        }
    }
}

/// The statements of one spare promotion (failover level 2), in the order
/// its transaction runs them; `pick` filters `avoid_rgs` risk groups.
#[derive(Debug, Clone)]
pub struct PromoteSql {
    /// Locks the broken member's row if it is still on.
    pub check: String,
    /// Locks the first usable spare.
    pub pick: String,
    /// The highest `no` of the spare's group, to park it after.
    pub max_no: String,
    /// The broken member becomes an off spare in the spare's old slot.
    pub retire: String,
    /// The spare takes the broken member's slot.
    pub promote: String,
}

impl PromoteSql {
    /// For `dialect`, avoiding `avoid_rgs` risk groups.
    pub fn new(dialect: Dialect, avoid_rgs: usize) -> Self {
        let d = dialect;
        // SQLite locks the whole database for the transaction anyway.
        let lock = if d == Dialect::Sqlite {
            ""
        } else {
            " FOR UPDATE"
        };
        let rg_filter = if avoid_rgs == 0 {
            String::new()
        } else {
            format!(" AND rg NOT IN ({})", vec!["?"; avoid_rgs].join(", "))
        };
        Self {
            check: d.finish(&format!(
                "SELECT {} FROM locdb WHERE id = ? AND no = ? AND url = ? AND status = 1{lock}",
                d.int64("no")
            )),
            pick: d.finish(&format!(
                "SELECT {sid} AS id, {sno} AS no, url FROM locdb WHERE spare = 1 AND status = 1\
                 {rg_filter} ORDER BY id, no LIMIT 1{lock}",
                sid = d.int64("id"),
                sno = d.int64("no"),
            )),
            max_no: d.finish(&format!(
                "SELECT {} FROM locdb WHERE id = ?",
                d.int64("MAX(no)")
            )),
            retire: d.finish(
                "UPDATE locdb SET id = ?, no = ?, status = 0, spare = 1, failover = ?, \
                 errors = errors + ? WHERE id = ? AND no = ? AND url = ? AND status = 1",
            ),
            promote: d.finish(
                "UPDATE locdb SET id = ?, no = ?, spare = 0, status = 1, failover = ?, errors = 0 \
                 WHERE id = ? AND no = ? AND url = ? AND spare = 1 AND status = 1",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered_in_order() {
        assert_eq!(
            Dialect::Postgres.finish("a = ? AND b = ? LIMIT ?"),
            "a = $1 AND b = $2 LIMIT $3"
        );
        assert_eq!(Dialect::MySql.finish("a = ?"), "a = ?");
    }

    #[test]
    fn upserts_bind_every_column_for_every_row() {
        for d in [Dialect::MySql, Dialect::Postgres, Dialect::Sqlite] {
            let t = TableSql::new(d, "location", true);
            let sql = t.upsert(3);
            let marks = if d == Dialect::Postgres {
                sql.matches('$').count()
            } else {
                sql.matches('?').count()
            };
            assert_eq!(marks, 3 * COLUMNS.len(), "{sql}");
            assert!(sql.contains("ruid"));
        }
    }

    #[test]
    fn batches_are_cut_into_cached_statement_sizes() {
        for n in [0, 1, 2, 3, 7, 37, 127, 128, 129, 300, 1000] {
            let parts = chunks(n, MAX_CHUNK);
            assert_eq!(parts.iter().sum::<usize>(), n, "{n}: {parts:?}");
            assert!(parts.iter().all(|p| chunk_index(*p).is_some()), "{parts:?}");
            assert!(parts.windows(2).all(|w| w[0] >= w[1]), "{parts:?}");
        }
        assert_eq!(chunks(37, MAX_CHUNK), [32, 4, 1]);
        assert_eq!(chunks(100, MAX_READ_CHUNK), [64, 32, 4]);
        let t = TableSql::new(Dialect::Sqlite, "location", true);
        assert!(matches!(t.upsert(64), Cow::Borrowed(_)));
        assert!(matches!(t.delete_ruids(1), Cow::Borrowed(_)));
        assert!(matches!(t.upsert(3), Cow::Owned(_)));
        assert_eq!(t.delete_ruids(4).matches('?').count(), 4);
        assert_eq!(t.select_aors(8).matches('?').count(), 16);
        let no_domain = TableSql::new(Dialect::Postgres, "location", false);
        assert!(no_domain.select_aors(2).ends_with("username IN ($1, $2)"));
    }

    #[test]
    fn aor_filters_follow_use_domain() {
        let with = TableSql::new(Dialect::MySql, "location", true);
        let without = TableSql::new(Dialect::MySql, "location", false);
        assert!(with.select_aor.ends_with("username = ? AND domain = ?"));
        assert!(without.select_aor.ends_with("username = ?"));
    }
}
