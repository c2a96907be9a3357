//! The master's `locsvc_instances` table: which locsvc instances serve the
//! cluster, since when, when each was last heard of, and what it has seen
//! (docs/layout-changes.md). One row per running instance.

use sqlx::Row;

use super::{SqlStore, StoreError, with_pool};

/// One row of `locsvc_instances`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    /// A fresh UUID per process.
    pub id: String,
    /// Host name, for operators.
    pub host: String,
    /// When the instance registered (ms since the Unix epoch, its clock).
    pub started_ms: i64,
    /// Its last heartbeat.
    pub seen_ms: i64,
    /// The newest `started_ms` it saw in its last read of the table.
    pub newest_peer_ms: i64,
    /// The layout epoch and phase it serves.
    pub epoch: i64,
    pub phase: i32,
}

const COLUMNS: &[&str] = &[
    "id",
    "host",
    "started_ms",
    "seen_ms",
    "newest_peer_ms",
    "epoch",
    "phase",
];

impl SqlStore {
    /// Writes `row` whole: registers the instance, or heartbeats it (and
    /// re-registers it if its row was removed meanwhile).
    pub async fn put_instance(&self, row: &InstanceRow) -> Result<(), StoreError> {
        let sql = self
            .dialect()
            .upsert_by_key("locsvc_instances", COLUMNS, "id", &COLUMNS[1..]);
        with_pool!(&self.pool, p => {
            let q = sqlx::query(&sql)
                .bind(&row.id)
                .bind(&row.host)
                .bind(row.started_ms)
                .bind(row.seen_ms)
                .bind(row.newest_peer_ms)
                .bind(row.epoch)
                .bind(row.phase);
            self.timed(q.execute(p)).await?;
        });
        Ok(())
    }

    /// Every registered instance, live or not.
    pub async fn instances(&self) -> Result<Vec<InstanceRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM locsvc_instances ORDER BY id",
            COLUMNS.join(", ")
        );
        let rows = with_pool!(&self.pool, p => {
            let rows = self.timed(sqlx::query(&sql).fetch_all(p)).await?;
            rows.iter()
                .map(|r| {
                    Ok(InstanceRow {
                        id: r.try_get("id")?,
                        host: r.try_get("host")?,
                        started_ms: r.try_get("started_ms")?,
                        seen_ms: r.try_get("seen_ms")?,
                        newest_peer_ms: r.try_get("newest_peer_ms")?,
                        epoch: r.try_get("epoch")?,
                        phase: r.try_get("phase")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?
        });
        Ok(rows)
    }

    /// Removes the row of instance `id` (its graceful shutdown, or an
    /// operator forgetting a dead one). Rows removed.
    pub async fn remove_instance(&self, id: &str) -> Result<u64, StoreError> {
        let sql = self
            .dialect()
            .finish("DELETE FROM locsvc_instances WHERE id = ?");
        let n = with_pool!(&self.pool, p => {
            self.timed(sqlx::query(&sql).bind(id).execute(p)).await?.rows_affected()
        });
        Ok(n)
    }
}
