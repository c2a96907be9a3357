//! Serializes one AoR's Saves and Removes across locsvc instances with a
//! named lock in the master (docs/layout-changes.md), so two REGISTERs for
//! one AoR through two instances cannot both read, then both write (CSeq
//! order, max-contacts). Taken after the in-process lock, only when another
//! instance serves the cluster (`auto`), and held until every member has
//! settled the write. A master that does not answer costs no request: the
//! operation goes on with the in-process lock only (counted), and the master
//! is not asked again for a pause.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::cluster::Peers;
use crate::metrics::Metrics;
use crate::store::{AdvisoryLocks, HeldLock, LockError};

/// When the master lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AorLockMode {
    /// While another instance is live in `locsvc_instances`.
    #[default]
    Auto,
    /// Always (a master with session locks: MySQL/MariaDB, PostgreSQL).
    Always,
    /// Never: one instance per cluster, or AoR affinity in front.
    Off,
}

impl FromStr for AorLockMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "off" => Ok(Self::Off),
            _ => Err(format!("{s:?} is not one of auto, always, off")),
        }
    }
}

/// How long the master is left alone after it failed to answer a lock.
const PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The other holder kept the lock past the caller's deadline.
#[derive(Debug, thiserror::Error)]
#[error("another instance held the AoR's lock past the deadline")]
pub struct LockBusy;

/// Cross-instance AoR locks.
pub struct AorLocks {
    mode: AorLockMode,
    locks: Option<AdvisoryLocks>,
    peers: watch::Receiver<Peers>,
    metrics: Arc<Metrics>,
    /// Statement deadline (lock and release round trips).
    timeout: Duration,
    paused_until: Mutex<Option<Instant>>,
    background: TaskTracker,
}

/// A master lock held for one operation; released (in the background) when
/// the last clone drops, i.e. when every member has settled the write.
pub struct AorLockGuard {
    held: Option<HeldLock>,
    timeout: Duration,
    background: TaskTracker,
}

impl Drop for AorLockGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take() {
            let timeout = self.timeout;
            self.background.spawn(held.release(timeout));
        }
    }
}

impl AorLocks {
    /// Locks on `locks` (None: a master without session locks, in-process
    /// locking only) under `mode`; releases run on `background`.
    pub fn new(
        mode: AorLockMode,
        locks: Option<AdvisoryLocks>,
        peers: watch::Receiver<Peers>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        background: TaskTracker,
    ) -> Self {
        Self {
            mode,
            locks,
            peers,
            metrics,
            timeout,
            paused_until: Mutex::new(None),
            background,
        }
    }

    fn wanted(&self) -> bool {
        match self.mode {
            AorLockMode::Off => false,
            AorLockMode::Always => true,
            AorLockMode::Auto => self.peers.borrow().any(),
        }
    }

    fn count(&self, result: &str) {
        self.metrics.aor_locks.with_label_values(&[result]).inc();
    }

    /// Takes the lock of the AoR with write key `key` when other instances
    /// may serve it, answering by `deadline`: Ok(None) when no lock is
    /// needed or the master could not be asked (in-process lock only).
    pub async fn lock(
        &self,
        key: u64,
        deadline: Instant,
    ) -> Result<Option<Arc<AorLockGuard>>, LockBusy> {
        let Some(locks) = self.locks.as_ref().filter(|_| self.wanted()) else {
            return Ok(None);
        };
        let now = Instant::now();
        {
            let mut paused = self.paused_until.lock().unwrap_or_else(|e| e.into_inner());
            match *paused {
                Some(until) if now < until => {
                    drop(paused);
                    self.count("fallback");
                    return Ok(None);
                }
                Some(_) => *paused = None,
                None => {}
            }
        }
        // Half the time left for the lock (a session, a holder, the
        // master's answer): the operation keeps the rest.
        let until = now + deadline.saturating_duration_since(now) / 2;
        match locks.acquire(key as i64, until).await {
            Ok(held) => {
                self.count("taken");
                Ok(Some(Arc::new(AorLockGuard {
                    held: Some(held),
                    timeout: self.timeout,
                    background: self.background.clone(),
                })))
            }
            Err(LockError::Busy(_)) => {
                self.count("busy");
                Err(LockBusy)
            }
            Err(LockError::Store(e)) => {
                self.count("fallback");
                tracing::warn!(
                    error = %e,
                    "master did not answer an AoR lock: serializing in this instance only for {PAUSE_AFTER_FAILURE:?}"
                );
                *self.paused_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(Instant::now() + PAUSE_AFTER_FAILURE);
                Ok(None)
            }
        }
    }
}
