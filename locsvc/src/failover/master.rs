//! What failover writes to the master's `locdb`, behind a trait: every
//! change is a conditional update keyed by (group, no, url), so instances
//! sharing the master agree and a raced decision lands once. The engine's
//! policies are tested against a fake; `SqlStore` is the real one.

use async_trait::async_trait;
use chrono::NaiveDateTime;

use crate::domain::UnixTime;
use crate::store::{Promotion, SqlStore, StoreError};

/// The `locdb` updates failover makes.
#[async_trait]
pub trait Master: Send + Sync + 'static {
    /// Records that member `no` of `group` missed a write at `at` (kept
    /// when a later one is recorded already). Rows changed.
    async fn mark_failover(&self, group: u32, no: u32, at: UnixTime) -> Result<u64, StoreError>;

    /// Switches the member at `url` off, with its error count. Rows changed
    /// (0: another instance did it, or the slot changed).
    async fn deactivate(
        &self,
        group: u32,
        no: u32,
        url: &str,
        errors: u32,
        at: UnixTime,
    ) -> Result<u64, StoreError>;

    /// Switches the member at `url` back on, as lacking writes since `at`.
    async fn readmit(
        &self,
        group: u32,
        no: u32,
        url: &str,
        at: UnixTime,
    ) -> Result<u64, StoreError>;

    /// Marks the member complete, unless its `failover` is no longer
    /// `expected` (a newer miss was recorded meanwhile). Rows changed.
    async fn clear_failover(
        &self,
        group: u32,
        no: u32,
        url: &str,
        expected: NaiveDateTime,
    ) -> Result<u64, StoreError>;

    /// An operator sets member `no` of `group` to `status` (a
    /// `MemberStatus` code) at `at`. Rows changed (0: no such member).
    async fn set_status(
        &self,
        group: u32,
        no: u32,
        status: i64,
        at: UnixTime,
    ) -> Result<u64, StoreError>;

    /// Replaces the member at `url` with a spare outside `avoid_rgs`.
    async fn promote_spare(
        &self,
        group: u32,
        no: u32,
        url: &str,
        avoid_rgs: &[i64],
        errors: u32,
        at: UnixTime,
    ) -> Result<Promotion, StoreError>;
}

#[async_trait]
impl Master for SqlStore {
    async fn mark_failover(&self, group: u32, no: u32, at: UnixTime) -> Result<u64, StoreError> {
        SqlStore::mark_failover(self, group, no, at).await
    }

    async fn deactivate(
        &self,
        group: u32,
        no: u32,
        url: &str,
        errors: u32,
        at: UnixTime,
    ) -> Result<u64, StoreError> {
        SqlStore::deactivate(self, group, no, url, errors, at).await
    }

    async fn readmit(
        &self,
        group: u32,
        no: u32,
        url: &str,
        at: UnixTime,
    ) -> Result<u64, StoreError> {
        SqlStore::readmit(self, group, no, url, at).await
    }

    async fn clear_failover(
        &self,
        group: u32,
        no: u32,
        url: &str,
        expected: NaiveDateTime,
    ) -> Result<u64, StoreError> {
        SqlStore::clear_failover(self, group, no, url, expected).await
    }

    async fn set_status(
        &self,
        group: u32,
        no: u32,
        status: i64,
        at: UnixTime,
    ) -> Result<u64, StoreError> {
        SqlStore::set_status(self, group, no, status, at).await
    }

    async fn promote_spare(
        &self,
        group: u32,
        no: u32,
        url: &str,
        avoid_rgs: &[i64],
        errors: u32,
        at: UnixTime,
    ) -> Result<Promotion, StoreError> {
        SqlStore::promote_spare(self, group, no, url, avoid_rgs, errors, at).await
    }
}
