//! The per-member failure detector: a pure state machine fed with request
//! errors and probe results, answering what the cluster should do. It never
//! touches a socket or the clock, so every transition is tested directly.
//!
//! - An `on` member goes down when its error window trips (request errors
//!   and probe failures both count) or after `down_after` probe failures in
//!   a row. The monitor then asks once for `Deactivate` until the member's
//!   configured status changes.
//! - An `off` member comes back only after `up_after` successful probes in a
//!   row — a real query, not a bare connect, so a server that accepts
//!   connections but fails queries does not flap (p_usrloc flaps, §5.3).
//! - Maintenance (status 2) is the operator's: nothing is ever decided.

use super::accrual::ErrorWindow;
use crate::cluster::MemberStatus;

/// What happened to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A request failed in transport (refused, reset, timed out).
    RequestFailed,
    /// A health probe answered correctly.
    ProbeOk,
    /// A health probe failed or timed out.
    ProbeFailed,
}

/// What the monitor asks the cluster to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing.
    Keep,
    /// Take the member out (failover level 1 or 2).
    Deactivate,
    /// Bring an `off` member back (it then warms up before it is read).
    Readmit,
}

/// Detector settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonitorSettings {
    /// Errors within `error_window_ms` that take a member down.
    pub error_threshold: u32,
    pub error_window_ms: u64,
    /// Consecutive failed probes that take a member down.
    pub down_after: u32,
    /// Consecutive good probes that bring an `off` member back.
    pub up_after: u32,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            error_threshold: 5,
            error_window_ms: 10_000,
            down_after: 3,
            up_after: 3,
        }
    }
}

/// The detector of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Monitor {
    settings: MonitorSettings,
    status: MemberStatus,
    errors: ErrorWindow,
    probe_failures: u32,
    probe_successes: u32,
    /// A decision was made and is waiting for `locdb` to reflect it.
    decided: bool,
    /// Errors since the last status change (written to `locdb.errors`).
    total_errors: u32,
}

impl Monitor {
    /// A detector for a member currently in `status`.
    pub fn new(settings: MonitorSettings, status: MemberStatus) -> Self {
        Self {
            settings,
            status,
            errors: ErrorWindow::new(settings.error_threshold, settings.error_window_ms),
            probe_failures: 0,
            probe_successes: 0,
            decided: false,
            total_errors: 0,
        }
    }

    /// The configured status changed (a new `locdb` snapshot): start over.
    pub fn set_status(&mut self, status: MemberStatus) {
        if status != self.status {
            *self = Self::new(self.settings, status);
        }
    }

    /// A decision could not be carried out (master down): allow it again.
    pub fn retry(&mut self) {
        self.decided = false;
    }

    /// Errors counted since the last status change.
    pub fn total_errors(&self) -> u32 {
        self.total_errors
    }

    /// Consecutive failed probes.
    pub fn probe_failures(&self) -> u32 {
        self.probe_failures
    }

    /// Feeds one observation at `now_ms`.
    pub fn observe(&mut self, o: Observation, now_ms: u64) -> Decision {
        match self.status {
            MemberStatus::Maintenance => Decision::Keep,
            MemberStatus::On => {
                let tripped = match o {
                    Observation::ProbeOk => {
                        self.probe_failures = 0;
                        false
                    }
                    Observation::RequestFailed => {
                        self.total_errors = self.total_errors.saturating_add(1);
                        self.errors.record(now_ms)
                    }
                    Observation::ProbeFailed => {
                        self.total_errors = self.total_errors.saturating_add(1);
                        self.probe_failures += 1;
                        let t = self.errors.record(now_ms);
                        t || self.probe_failures >= self.settings.down_after
                    }
                };
                self.decide(tripped, Decision::Deactivate)
            }
            MemberStatus::Off => {
                match o {
                    Observation::ProbeOk => self.probe_successes += 1,
                    Observation::ProbeFailed => self.probe_successes = 0,
                    Observation::RequestFailed => {}
                }
                self.decide(
                    self.probe_successes >= self.settings.up_after,
                    Decision::Readmit,
                )
            }
        }
    }

    fn decide(&mut self, condition: bool, d: Decision) -> Decision {
        if condition && !self.decided {
            self.decided = true;
            d
        } else {
            Decision::Keep
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::*;

    fn monitor(status: MemberStatus) -> Monitor {
        Monitor::new(MonitorSettings::default(), status)
    }

    #[test]
    fn a_burst_of_request_errors_takes_an_on_member_down_once() {
        let mut m = monitor(MemberStatus::On);
        let got: Vec<Decision> = (0..8).map(|t| m.observe(RequestFailed, t * 10)).collect();
        assert_eq!(&got[..4], &[Decision::Keep; 4]);
        assert_eq!(got[4], Decision::Deactivate);
        assert!(
            got[5..].iter().all(|d| *d == Decision::Keep),
            "asked only once"
        );
        assert_eq!(m.total_errors(), 8);
    }

    #[test]
    fn sparse_errors_decay_and_never_take_a_member_down() {
        let mut m = monitor(MemberStatus::On);
        for t in 0..100 {
            assert_eq!(m.observe(RequestFailed, t * 5_000), Decision::Keep);
        }
    }

    #[test]
    fn consecutive_probe_failures_take_a_member_down_even_without_traffic() {
        let mut m = monitor(MemberStatus::On);
        assert_eq!(m.observe(ProbeFailed, 0), Decision::Keep);
        assert_eq!(m.observe(ProbeFailed, 60_000), Decision::Keep);
        assert_eq!(m.observe(ProbeFailed, 120_000), Decision::Deactivate);
    }

    #[test]
    fn a_good_probe_resets_the_probe_failure_run() {
        let mut m = monitor(MemberStatus::On);
        m.observe(ProbeFailed, 0);
        m.observe(ProbeFailed, 60_000);
        m.observe(ProbeOk, 120_000);
        assert_eq!(m.observe(ProbeFailed, 180_000), Decision::Keep);
    }

    #[test]
    fn an_off_member_comes_back_only_after_consecutive_good_probes() {
        let mut m = monitor(MemberStatus::Off);
        assert_eq!(m.observe(ProbeOk, 0), Decision::Keep);
        assert_eq!(m.observe(ProbeOk, 1), Decision::Keep);
        assert_eq!(m.observe(ProbeFailed, 2), Decision::Keep);
        assert_eq!(m.observe(ProbeOk, 3), Decision::Keep);
        assert_eq!(m.observe(ProbeOk, 4), Decision::Keep);
        assert_eq!(m.observe(ProbeOk, 5), Decision::Readmit);
        assert_eq!(m.observe(ProbeOk, 6), Decision::Keep);
    }

    #[test]
    fn a_server_that_connects_but_fails_queries_stays_off() {
        // Probes run a real query, so such a server reports ProbeFailed.
        let mut m = monitor(MemberStatus::Off);
        for t in 0..50 {
            assert_eq!(m.observe(ProbeFailed, t), Decision::Keep);
        }
    }

    #[test]
    fn maintenance_is_never_decided_automatically() {
        let mut m = monitor(MemberStatus::Maintenance);
        for t in 0..20 {
            assert_eq!(m.observe(ProbeFailed, t), Decision::Keep);
            assert_eq!(m.observe(ProbeOk, t), Decision::Keep);
        }
    }

    #[test]
    fn a_status_change_starts_over_and_a_failed_action_can_be_retried() {
        let mut m = monitor(MemberStatus::On);
        for t in 0..5 {
            m.observe(RequestFailed, t);
        }
        assert_eq!(m.observe(RequestFailed, 6), Decision::Keep);
        m.retry();
        assert_eq!(m.observe(RequestFailed, 7), Decision::Deactivate);
        m.set_status(MemberStatus::Off);
        assert_eq!(m.total_errors(), 0);
        m.set_status(MemberStatus::On);
        assert_eq!(m.observe(RequestFailed, 8), Decision::Keep);
    }
}
