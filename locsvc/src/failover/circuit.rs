//! The per-member circuit: whether requests may be sent to a member at all.
//!
//! It opens at the first transport failure of a request (refused, reset,
//! timed out), so no further work queues behind a member the detector is
//! about to switch off, and only a probe that *started* after the opening
//! and answered closes it again: a probe already in flight when the member
//! broke proves nothing. The router never lets every writable member of a
//! group be skipped this way (the last one is always tried), so an overload
//! that slows every member cannot turn into a refusal of every request.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Open/closed state of one member's circuit, shared across snapshots.
#[derive(Debug, Default)]
pub struct Circuit {
    open: AtomicBool,
    /// Bumped at every opening: a probe carries the epoch it started in.
    epoch: AtomicU64,
}

impl Circuit {
    /// True while requests should not be sent to the member.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// Opens the circuit; true when this call opened it (it was closed).
    pub fn open(&self) -> bool {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        !self.open.swap(true, Ordering::AcqRel)
    }

    /// The epoch a probe starting now belongs to.
    pub fn probe_epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// A probe that started in `epoch` answered: closes the circuit unless
    /// it was (re)opened after the probe started. True when this call
    /// closed it.
    pub fn close_after_probe(&self, epoch: u64) -> bool {
        if self.epoch.load(Ordering::Acquire) != epoch {
            return false;
        }
        self.open.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_and_a_later_probe_closes_it() {
        let c = Circuit::default();
        assert!(!c.is_open());
        assert!(c.open(), "first failure opens");
        assert!(!c.open(), "already open");
        let e = c.probe_epoch();
        assert!(c.close_after_probe(e));
        assert!(!c.is_open());
        assert!(!c.close_after_probe(e), "already closed");
    }

    #[test]
    fn a_probe_that_started_before_the_failure_does_not_close_it() {
        let c = Circuit::default();
        let before = c.probe_epoch();
        c.open();
        assert!(!c.close_after_probe(before));
        assert!(c.is_open());
    }
}
