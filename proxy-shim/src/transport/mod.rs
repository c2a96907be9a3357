//! UDP and TCP transports: read bytes, frame and parse them through the
//! facade, hand messages to the `Core`, and send what it returns.
//!
//! The receive loops never wait on locsvc: each message is handled in its
//! own task, bounded by a semaphore; when it is exhausted a request is
//! answered 503 at once instead of queueing (`dispatch`). Every message
//! passes the per-source rate limit first (`limits`); one over it is
//! dropped without an answer. The TCP accept loop never blocks: a
//! connection over the global or per-source cap is closed at once. Each
//! connection has a bounded write queue, an idle timeout, and a deadline to
//! finish a message once started. Per-packet drops are logged at DEBUG;
//! `limits` writes the summary line.

mod dispatch;
mod outbox;
mod tcp;
mod udp;

pub use dispatch::Dispatcher;
pub use outbox::Outbox;
pub use tcp::serve_tcp;
pub use udp::serve_udp;
