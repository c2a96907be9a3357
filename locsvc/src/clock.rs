//! Injected time: every component asks a `Clock` for "now", so tests control
//! expiry and staleness without sleeping (STYLE habit 7).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::UnixTime;

/// Source of the current Unix time in seconds.
pub type Clock = Arc<dyn Fn() -> UnixTime + Send + Sync>;

/// The system clock.
pub fn system() -> Clock {
    Arc::new(|| chrono::Utc::now().timestamp())
}

/// A clock that tests move by hand.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// Starts at `t`.
    pub fn new(t: UnixTime) -> Self {
        Self(Arc::new(AtomicI64::new(t)))
    }

    /// Moves time forward by `secs`.
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::AcqRel);
    }

    /// Current value.
    pub fn now(&self) -> UnixTime {
        self.0.load(Ordering::Acquire)
    }

    /// As a `Clock`.
    pub fn clock(&self) -> Clock {
        let inner = self.0.clone();
        Arc::new(move || inner.load(Ordering::Acquire))
    }
}
