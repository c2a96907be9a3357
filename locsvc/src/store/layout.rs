//! The master's `locsvc_layout` table: one row per layout epoch
//! (`cluster::layout`). Every change is one conditional statement, so when
//! several instances take the same step at once exactly one lands.

use sqlx::Row;

use super::{SqlStore, StoreError, with_pool};

/// One stored epoch, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRow {
    pub epoch: i64,
    pub owners: String,
    pub hash_mode: String,
    pub phase: i32,
    pub moving_acked: bool,
}

impl SqlStore {
    /// The newest epoch, if any.
    pub async fn current_layout(&self) -> Result<Option<LayoutRow>, StoreError> {
        let sql = "SELECT epoch, owners, hash_mode, phase, moving_acked FROM locsvc_layout \
                   ORDER BY epoch DESC LIMIT 1";
        let row = with_pool!(&self.pool, p => {
            match self.timed(sqlx::query(sql).fetch_optional(p)).await? {
                Some(r) => Some(LayoutRow {
                    epoch: r.try_get("epoch")?,
                    owners: r.try_get("owners")?,
                    hash_mode: r.try_get("hash_mode")?,
                    phase: r.try_get("phase")?,
                    moving_acked: r.try_get::<i32, _>("moving_acked")? != 0,
                }),
                None => None,
            }
        });
        Ok(row)
    }

    /// The owners and hash of epoch `epoch`, if it exists (the previous
    /// epoch's, while a change runs).
    pub async fn layout_owners(&self, epoch: i64) -> Result<Option<(String, String)>, StoreError> {
        let sql = self
            .dialect()
            .finish("SELECT owners, hash_mode FROM locsvc_layout WHERE epoch = ?");
        let owners = with_pool!(&self.pool, p => {
            match self.timed(sqlx::query(&sql).bind(epoch).fetch_optional(p)).await? {
                Some(r) => Some((r.try_get::<String, _>("owners")?, r.try_get::<String, _>("hash_mode")?)),
                None => None,
            }
        });
        Ok(owners)
    }

    /// Adds epoch `epoch` unless it exists (another instance started it
    /// first). True when this call added it.
    pub async fn start_layout(
        &self,
        epoch: i64,
        owners: &str,
        hash_mode: &str,
        phase: i32,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let d = self.dialect();
        let sql = d.finish(&d.insert_ignoring_duplicates(
            "locsvc_layout (epoch, owners, hash_mode, phase, started_ms, changed_ms)",
            "(?, ?, ?, ?, ?, ?)",
        ));
        let n = with_pool!(&self.pool, p => {
            let q = sqlx::query(&sql)
                .bind(epoch)
                .bind(owners)
                .bind(hash_mode)
                .bind(phase)
                .bind(now_ms)
                .bind(now_ms);
            self.timed(q.execute(p)).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Moves epoch `epoch` from phase `from` to `to`; true when this call
    /// did (false: another instance did, or the epoch is elsewhere).
    pub async fn advance_layout(
        &self,
        epoch: i64,
        from: i32,
        to: i32,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let sql = self.dialect().finish(
            "UPDATE locsvc_layout SET phase = ?, changed_ms = ? WHERE epoch = ? AND phase = ?",
        );
        let n = with_pool!(&self.pool, p => {
            let q = sqlx::query(&sql).bind(to).bind(now_ms).bind(epoch).bind(from);
            self.timed(q.execute(p)).await?.rows_affected()
        });
        Ok(n == 1)
    }

    /// Records that every live instance has served `Moving` in `epoch`.
    pub async fn ack_moving(&self, epoch: i64, now_ms: i64) -> Result<bool, StoreError> {
        let sql = self.dialect().finish(
            "UPDATE locsvc_layout SET moving_acked = 1, changed_ms = ? \
             WHERE epoch = ? AND phase = 1 AND moving_acked = 0",
        );
        let n = with_pool!(&self.pool, p => {
            let q = sqlx::query(&sql).bind(now_ms).bind(epoch);
            self.timed(q.execute(p)).await?.rows_affected()
        });
        Ok(n == 1)
    }
}
