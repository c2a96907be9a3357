//! The read deadlines of one TCP connection: idle between messages, and a
//! deadline to finish a message once its first byte arrived. Pure: the time
//! is an argument.

use std::time::{Duration, Instant};

/// A TCP connection with no complete message or CRLFCRLF keep-alive for this
/// long is closed (RFC 5626 keep-alives arrive far more often). Partial bytes
/// do not count: they are bounded by `tcp_message_timeout_ms` instead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a TCP connection timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// No complete message or keep-alive for `IDLE_TIMEOUT`.
    Idle,
    /// A message was started and not finished within `tcp_message_timeout_ms`.
    Message,
}

/// The read deadline of one TCP connection. Between messages it is the idle
/// deadline, renewed only by a complete message or a CRLFCRLF keep-alive.
/// From the first byte of a message to its last it is the message deadline,
/// so trickled bytes (a slowloris) renew nothing.
#[derive(Debug, Clone)]
pub struct StreamTimers {
    idle: Duration,
    message: Duration,
    idle_deadline: Instant,
    message_deadline: Option<Instant>,
}

impl StreamTimers {
    /// Timers of a connection opened at `now`.
    pub fn new(idle: Duration, message: Duration, now: Instant) -> Self {
        Self {
            idle,
            message,
            idle_deadline: now + idle,
            message_deadline: None,
        }
    }

    /// After bytes were framed at `now`: `completed` messages and `pings`
    /// keep-alives came out, and `pending` bytes wait for the rest of one.
    pub fn framed(&mut self, now: Instant, completed: usize, pings: usize, pending: usize) {
        if completed > 0 || pings > 0 {
            self.idle_deadline = now + self.idle;
        }
        if pending == 0 {
            self.message_deadline = None;
        } else if completed > 0 || self.message_deadline.is_none() {
            // A new message started in these bytes.
            self.message_deadline = Some(now + self.message);
        }
    }

    /// When the connection is closed unless more is framed, and why.
    pub fn deadline(&self) -> (Instant, Expiry) {
        match self.message_deadline {
            Some(d) => (d, Expiry::Message),
            None => (self.idle_deadline, Expiry::Idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trickled_bytes_do_not_renew_a_deadline_but_messages_and_pings_do() {
        let t0 = Instant::now();
        let (idle, msg) = (Duration::from_secs(300), Duration::from_secs(10));
        let mut s = StreamTimers::new(idle, msg, t0);
        assert_eq!(s.deadline(), (t0 + idle, Expiry::Idle));
        // A message starts: the message deadline applies from its first byte...
        s.framed(t0 + Duration::from_secs(1), 0, 0, 1);
        assert_eq!(
            s.deadline(),
            (t0 + Duration::from_secs(11), Expiry::Message)
        );
        // ...and one more byte at a time does not move it.
        for i in 2..10 {
            s.framed(
                t0 + Duration::from_secs(i),
                0,
                0,
                usize::try_from(i).unwrap_or(0),
            );
        }
        assert_eq!(
            s.deadline(),
            (t0 + Duration::from_secs(11), Expiry::Message)
        );
        // Completed: idle again, renewed from the end of the message.
        let t9 = t0 + Duration::from_secs(9);
        s.framed(t9, 1, 0, 0);
        assert_eq!(s.deadline(), (t9 + idle, Expiry::Idle));
        // A message completed and the next one started in the same read.
        let t20 = t0 + Duration::from_secs(20);
        s.framed(t20, 1, 0, 40);
        assert_eq!(s.deadline(), (t20 + msg, Expiry::Message));
        s.framed(t20 + Duration::from_secs(1), 1, 0, 0);
        // A keep-alive renews the idle deadline; nothing else does.
        let t100 = t0 + Duration::from_secs(100);
        s.framed(t100, 0, 2, 0);
        assert_eq!(s.deadline(), (t100 + idle, Expiry::Idle));
        s.framed(t100 + Duration::from_secs(50), 0, 0, 0);
        assert_eq!(s.deadline(), (t100 + idle, Expiry::Idle));
    }
}
