//! Schema migrations, per dialect, embedded in the binary.
//!
//! Two scopes: `master` (the `locdb` table, and kamctl's `subscriber` and
//! `version` tables) and one scope per location table
//! (`table:<name>`, with its row in kamctl's `version` table), whose files
//! carry a `{table}` placeholder so extra tables (p_usrloc's `domain_db`)
//! get the same schema. Applied versions are
//! recorded in `locsvc_schema`; every statement is idempotent so two
//! instances migrating at once do no harm.

use sqlx::Row;

use super::{Dialect, SqlStore, StoreError, with_pool};

/// One migration file.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

macro_rules! migration {
    ($v:expr, $name:expr, $path:expr) => {
        Migration {
            version: $v,
            name: $name,
            sql: include_str!(concat!("../../../migrations/", $path)),
        }
    };
}

const MYSQL_MASTER: &[Migration] = &[
    migration!(1, "locdb", "mysql/master/0001_locdb.sql"),
    migration!(2, "subscriber", "mysql/master/0002_subscriber.sql"),
    migration!(3, "instances", "mysql/master/0003_instances.sql"),
    migration!(4, "layout", "mysql/master/0004_layout.sql"),
];
const POSTGRES_MASTER: &[Migration] = &[
    migration!(1, "locdb", "postgres/master/0001_locdb.sql"),
    migration!(2, "subscriber", "postgres/master/0002_subscriber.sql"),
    migration!(3, "instances", "postgres/master/0003_instances.sql"),
    migration!(4, "layout", "postgres/master/0004_layout.sql"),
];
const SQLITE_MASTER: &[Migration] = &[
    migration!(1, "locdb", "sqlite/master/0001_locdb.sql"),
    migration!(2, "subscriber", "sqlite/master/0002_subscriber.sql"),
    migration!(3, "instances", "sqlite/master/0003_instances.sql"),
    migration!(4, "layout", "sqlite/master/0004_layout.sql"),
];
const MYSQL_LOCATION: &[Migration] = &[
    migration!(1, "location", "mysql/location/0001_location.sql"),
    migration!(2, "kamailio version", "mysql/location/0002_version.sql"),
];
const POSTGRES_LOCATION: &[Migration] = &[
    migration!(1, "location", "postgres/location/0001_location.sql"),
    migration!(2, "kamailio version", "postgres/location/0002_version.sql"),
];
const SQLITE_LOCATION: &[Migration] = &[
    migration!(1, "location", "sqlite/location/0001_location.sql"),
    migration!(2, "kamailio version", "sqlite/location/0002_version.sql"),
];

/// What a set of migrations creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// The master's `locdb`.
    Master,
    /// A location table of this (validated) name.
    Table(&'a str),
}

fn migrations(dialect: Dialect, scope: Scope<'_>) -> &'static [Migration] {
    match (dialect, scope) {
        (Dialect::MySql, Scope::Master) => MYSQL_MASTER,
        (Dialect::Postgres, Scope::Master) => POSTGRES_MASTER,
        (Dialect::Sqlite, Scope::Master) => SQLITE_MASTER,
        (Dialect::MySql, Scope::Table(_)) => MYSQL_LOCATION,
        (Dialect::Postgres, Scope::Table(_)) => POSTGRES_LOCATION,
        (Dialect::Sqlite, Scope::Table(_)) => SQLITE_LOCATION,
    }
}

/// True when `name` is safe to splice into SQL as a table identifier.
pub fn valid_table_name(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=64).contains(&name.len())
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.eq_ignore_ascii_case("locdb")
        && !name.eq_ignore_ascii_case("locsvc_schema")
        && !name.eq_ignore_ascii_case("locsvc_instances")
        && !name.eq_ignore_ascii_case("locsvc_layout")
        && !name.eq_ignore_ascii_case("subscriber")
        && !name.eq_ignore_ascii_case("version")
}

/// Splits a migration file into statements (comment lines dropped first, so
/// a `;` in a comment does not split).
fn statements(sql: &str, table: Option<&str>) -> Vec<String> {
    let body: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let body = match table {
        Some(t) => body.replace("{table}", t),
        None => body,
    };
    body.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// MySQL and SQLite have no `ADD COLUMN IF NOT EXISTS`: a column another
/// instance added meanwhile (or a half-applied migration) is not an error.
fn column_already_added(stmt: &str, e: &sqlx::Error) -> bool {
    stmt.starts_with("ALTER TABLE")
        && stmt.contains("ADD COLUMN")
        && e.to_string()
            .to_ascii_lowercase()
            .contains("duplicate column")
}

impl SqlStore {
    /// Applies every pending migration of `scope`; returns how many ran.
    pub async fn migrate(&self, scope: Scope<'_>) -> Result<usize, StoreError> {
        let (scope_name, table) = match scope {
            Scope::Master => ("master".to_string(), None),
            Scope::Table(t) => {
                if !valid_table_name(t) {
                    return Err(StoreError::Config(format!("invalid table name {t:?}")));
                }
                (format!("table:{t}"), Some(t))
            }
        };
        let d = self.dialect();
        let ts = d.timestamp_type();
        let create = format!(
            "CREATE TABLE IF NOT EXISTS locsvc_schema (scope VARCHAR(128) NOT NULL, \
             version INTEGER NOT NULL, name VARCHAR(255) NOT NULL, applied_at {ts} NOT NULL, \
             PRIMARY KEY (scope, version))"
        );
        let applied_sql = d.finish("SELECT version FROM locsvc_schema WHERE scope = ?");
        let record = d.finish(&d.insert_ignoring_duplicates(
            "locsvc_schema (scope, version, name, applied_at)",
            "(?, ?, ?, ?)",
        ));
        let now = chrono::Utc::now().naive_utc();
        let mut ran = 0;
        with_pool!(self.pool(), p => {
            sqlx::raw_sql(&create).execute(p).await?;
            let applied: Vec<i64> = sqlx::query(&applied_sql)
                .bind(&scope_name)
                .fetch_all(p)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>(0).or_else(|_| r.try_get::<i32, _>(0).map(i64::from)))
                .collect::<Result<_, _>>()?;
            for m in migrations(d, scope) {
                if applied.contains(&m.version) {
                    continue;
                }
                for stmt in statements(m.sql, table) {
                    match sqlx::raw_sql(&stmt).execute(p).await {
                        Err(e) if column_already_added(&stmt, &e) => {}
                        r => {
                            r?;
                        }
                    }
                }
                sqlx::query(&record)
                    .bind(&scope_name)
                    .bind(m.version as i32)
                    .bind(m.name)
                    .bind(now)
                    .execute(p)
                    .await?;
                ran += 1;
            }
        });
        Ok(ran)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers_only() {
        assert!(valid_table_name("location"));
        assert!(valid_table_name("location_attrs_2"));
        assert!(!valid_table_name(""));
        assert!(!valid_table_name("1location"));
        assert!(!valid_table_name("loc; DROP TABLE x"));
        assert!(!valid_table_name("loc`x"));
        assert!(!valid_table_name("locdb"));
        assert!(!valid_table_name(&"a".repeat(65)));
    }

    #[test]
    fn statements_skip_comments_and_fill_the_table_name() {
        let s = statements(
            "-- a; b\nCREATE TABLE {table} (x INT);\nCREATE INDEX i ON {table} (x);\n",
            Some("loc2"),
        );
        assert_eq!(
            s,
            vec!["CREATE TABLE loc2 (x INT)", "CREATE INDEX i ON loc2 (x)"]
        );
    }

    #[test]
    fn every_dialect_ships_both_scopes() {
        for d in [Dialect::MySql, Dialect::Postgres, Dialect::Sqlite] {
            for scope in [Scope::Master, Scope::Table("location")] {
                let ms = migrations(d, scope);
                assert!(!ms.is_empty());
                assert!(
                    ms.iter()
                        .all(|m| !statements(m.sql, Some("location")).is_empty())
                );
            }
        }
    }
}
