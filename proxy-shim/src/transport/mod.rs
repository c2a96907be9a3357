//! UDP and TCP transports: read bytes, frame and parse them through the
//! facade, hand messages to the `Core`, and send what it returns.
//!
//! The receive loops never wait on locsvc: each message is handled in its
//! own task, bounded by a semaphore; when it is exhausted a request is
//! answered 503 at once instead of queueing (`dispatch`). What a message
//! sends waits for the previous message of its Call-ID to be sent, so a
//! dialog's messages leave in arrival order (`sequence`). Every message
//! passes the per-source rate limit first (`limits`); one over it is
//! dropped without an answer. The TCP accept loop never blocks: a
//! connection over the global or per-source cap is closed at once. Each
//! connection has a bounded write queue, an idle timeout, and a deadline to
//! finish a message once started. Per-packet drops are logged at DEBUG;
//! `limits` writes the summary line.

mod dispatch;
mod outbox;
mod sequence;
mod tcp;
mod udp;

pub use dispatch::Dispatcher;
pub use outbox::Outbox;
pub use sequence::Sequencer;
pub use tcp::serve_tcp;
pub use udp::serve_udp;
