//! Storage errors, split by what the caller does next (STYLE habit 4):
//! a member that is unreachable or slow counts toward failover; a database
//! that answered "no" does not; a row we cannot decode is a bug or a schema
//! mismatch.

use std::time::Duration;

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// Transport failed: connection refused or reset, pool exhausted, server
    /// shutting down. Counts toward failover.
    #[error("database unreachable: {0}")]
    Unavailable(String),
    /// No answer within the per-query deadline. Counts toward failover.
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    /// The write waited out its deadline in locsvc's own group-commit queue
    /// and was never sent: locsvc is overloaded, not the database. Does not
    /// count toward failover (the member still missed the write).
    #[error("write still queued in locsvc after {0:?}: overloaded")]
    Backlog(Duration),
    /// The database answered and refused the statement (constraint, syntax,
    /// missing table). Does not count toward failover.
    #[error("database refused the statement: {0}")]
    Rejected(String),
    /// A row or value could not be decoded: schema mismatch or a bug.
    #[error("cannot decode database row: {0}")]
    Decode(String),
    /// The database URL or options are unusable.
    #[error("bad database configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// True for failures that say the member is unhealthy (transport, timeout).
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Timeout(_))
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match e {
            E::Io(_)
            | E::Tls(_)
            | E::Protocol(_)
            | E::PoolTimedOut
            | E::PoolClosed
            | E::WorkerCrashed => Self::Unavailable(e.to_string()),
            E::Database(db) => {
                if database_error_means_unavailable(db.as_ref()) {
                    Self::Unavailable(db.to_string())
                } else {
                    Self::Rejected(db.to_string())
                }
            }
            E::Configuration(_) => Self::Config(e.to_string()),
            _ => Self::Decode(e.to_string()),
        }
    }
}

/// Database-reported errors that are really about availability: the server
/// is going away, out of connections, or (SQLite) locked by another writer.
fn database_error_means_unavailable(db: &dyn sqlx::error::DatabaseError) -> bool {
    let code = db.code();
    let code = code.as_deref().unwrap_or_default();
    matches!(
        code,
        // MySQL/MariaDB SQLSTATE 08S01 (comm link failure), HY000 with
        // shutdown/too-many-connections texts are covered by message below.
        "08S01" | "08004" | "08006" | "08003" | "08001"
        // PostgreSQL: admin/crash shutdown, cannot connect now, too many connections.
        | "57P01" | "57P02" | "57P03" | "53300"
        // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and extended codes.
        | "5" | "6" | "261" | "517" | "262"
    ) || {
        let m = db.message().to_ascii_lowercase();
        m.contains("server shutdown")
            || m.contains("too many connections")
            || m.contains("server has gone away")
            || m.contains("lost connection")
    }
}
