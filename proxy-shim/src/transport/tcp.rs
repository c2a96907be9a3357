//! The TCP accept loop and one task per connection: framing by
//! Content-Length, CRLF keep-alives (RFC 5626 §4.4.1), a bounded write
//! queue, and the deadlines of `limits::StreamTimers`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::dispatch::Dispatcher;
use crate::envelope::{Inbound, Transport};
use crate::limits::{StreamTimers, TcpSlot};
use crate::sip::{Parsed, StreamFramer};

/// Writes queued per TCP connection before further ones are dropped.
const WRITE_QUEUE: usize = 64;
/// Pause after a failed accept (EMFILE and the like), so the loop does not
/// spin on an error that persists until a connection closes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Bytes read from a connection at once.
const READ_CHUNK: usize = 16 * 1024;

/// The TCP accept loop. It never waits for a free slot: a connection over
/// `tcp_max_connections`, over `tcp_max_per_source`, or from a banned source
/// is closed as soon as it is accepted, so a full table cannot stop the
/// loop from serving the next source once a slot frees up.
pub async fn serve_tcp(listener: TcpListener, d: Dispatcher) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = d.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept failed");
                    d.limits.dropped("tcp_accept_failed", Instant::now());
                    tokio::select! {
                        _ = d.stop.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                    continue;
                }
            },
        };
        let Ok(slot) = d.limits.open_tcp(peer.ip(), Instant::now()) else {
            // Dropping the stream closes it; nothing is read or answered.
            drop(stream);
            continue;
        };
        let conn = d.clone();
        d.tasks.spawn(async move {
            connection(stream, peer, slot, conn).await;
        });
    }
}

/// Reads one connection until the peer closes it, a timer expires, framing
/// is lost, the source goes over its rate, or the shim stops.
async fn connection(stream: TcpStream, peer: SocketAddr, slot: TcpSlot, d: Dispatcher) {
    let _slot = slot;
    let _ = stream.set_nodelay(true);
    let (mut rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    d.outbox.register(peer, tx.clone());
    let writer = spawn_writer(wr, rx);
    let mut conn = Connection {
        src: Inbound {
            transport: Transport::Tcp,
            peer,
            local: d.core.identity.local,
        },
        framer: StreamFramer::default(),
        timers: d.limits.stream_timers(Instant::now()),
        odd_pair: 0,
        tx,
        d,
    };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let (deadline, expiry) = conn.timers.deadline();
        let n = tokio::select! {
            _ = conn.d.stop.cancelled() => break,
            r = tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => {
                    conn.d.limits.timed_out(peer.ip(), expiry, Instant::now());
                    break;
                }
            },
        };
        if !conn.received(buf.get(..n).unwrap_or(&[])) {
            break;
        }
    }
    conn.d.outbox.unregister(peer);
    drop(conn);
    let _ = writer.await;
}

/// Writes what the connection's queue holds until every sender is gone.
fn spawn_writer(mut wr: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    })
}

/// The reading side of one connection.
struct Connection {
    src: Inbound,
    framer: StreamFramer,
    timers: StreamTimers,
    /// A CRLF pair left over from the last read: a CRLFCRLF ping split
    /// across two reads is still one ping.
    odd_pair: usize,
    /// The connection's write queue (pongs; answers go through the outbox).
    tx: mpsc::Sender<Bytes>,
    d: Dispatcher,
}

impl Connection {
    /// Frames `chunk` and dispatches what it completes; false when the
    /// connection must close.
    fn received(&mut self, chunk: &[u8]) -> bool {
        let peer = self.src.peer;
        let (msgs, keepalives) = match self.framer.push(chunk) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TCP framing lost; closing the connection");
                self.d.limits.dropped("tcp_framing", Instant::now());
                return false;
            }
        };
        let now = Instant::now();
        let pings = self.pings(msgs.is_empty(), keepalives);
        self.timers
            .framed(now, msgs.len(), pings, self.framer.pending());
        // RFC 5626 §4.4.1: a CRLFCRLF ping (two CRLF pairs) gets a CRLF pong.
        for _ in 0..pings {
            let _ = self.tx.try_send(Bytes::from_static(b"\r\n"));
        }
        self.dispatch_all(msgs, now)
    }

    /// Pings in `keepalives` CRLF pairs; an odd pair before a message is
    /// part of nothing, one alone may complete a ping in the next read.
    fn pings(&mut self, no_message: bool, keepalives: usize) -> usize {
        let pairs = if no_message {
            self.odd_pair + keepalives
        } else {
            keepalives
        };
        self.odd_pair = pairs % 2;
        pairs / 2
    }

    /// Dispatches `msgs` while the source stays within its rate; false
    /// when it does not.
    fn dispatch_all(&self, msgs: Vec<Parsed>, now: Instant) -> bool {
        for m in msgs {
            if !self.d.limits.admit(self.src.peer.ip(), now) {
                // A stream has no way to drop one message and go on
                // meaningfully: the peer would wait for an answer.
                return false;
            }
            self.d.dispatch(m, self.src);
        }
        true
    }
}
