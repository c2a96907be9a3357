//! UDP and TCP transports: read bytes, frame and parse them through the
//! facade, hand messages to the `Core`, and send what it returns.
//!
//! The UDP receive loop never waits on locsvc: each request is handled in
//! its own task, bounded by a semaphore; when it is exhausted the request is
//! answered 503 at once instead of queueing. Every message passes the
//! per-source rate limit first (`limits`); one over it is dropped without an
//! answer. The TCP accept loop never blocks: a connection over the global or
//! per-source cap is closed at once. Each connection has a bounded write
//! queue, an idle timeout, and a deadline to finish a message once started.
//! Per-packet drops are logged at DEBUG; `limits` writes the summary line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{Core, Inbound, Outbound, Transport};
use crate::limits::{Limits, SUMMARY_INTERVAL, TcpSlot};
use crate::sip::{self, MAX_MESSAGE_BYTES, Parsed};

/// Writes queued per TCP connection before further ones are dropped.
const WRITE_QUEUE: usize = 64;
/// Pause after a failed accept (EMFILE and the like), so the loop does not
/// spin on an error that persists until a connection closes.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Sends outbound messages: UDP from the listening socket, TCP on the
/// connection a peer opened (this slice does not open outbound TCP).
#[derive(Debug, Clone)]
pub struct Outbox {
    udp: Arc<UdpSocket>,
    tcp: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>,
}

impl Outbox {
    pub fn new(udp: Arc<UdpSocket>) -> Self {
        Self {
            udp,
            tcp: Arc::default(),
        }
    }

    pub async fn send(&self, core: &Core, out: Outbound) {
        match out.transport {
            Transport::Udp => {
                if let Err(e) = self.udp.send_to(&out.bytes, out.dest).await {
                    tracing::debug!(dest = %out.dest, error = %e, "UDP send failed");
                    core.metrics.dropped("udp_send_failed");
                }
            }
            Transport::Tcp => {
                let tx = self.tcp.lock().ok().and_then(|m| m.get(&out.dest).cloned());
                match tx {
                    Some(tx) if tx.try_send(out.bytes).is_ok() => {}
                    _ => {
                        tracing::debug!(dest = %out.dest, "no open TCP connection (or its queue is full); dropped");
                        core.metrics.dropped("tcp_no_connection");
                    }
                }
            }
        }
    }

    fn register(&self, peer: SocketAddr, tx: mpsc::Sender<Bytes>) {
        if let Ok(mut m) = self.tcp.lock() {
            m.insert(peer, tx);
        }
    }

    fn unregister(&self, peer: SocketAddr) {
        if let Ok(mut m) = self.tcp.lock() {
            m.remove(&peer);
        }
    }
}

/// Handles one parsed message in its own task, or answers 503 at once when
/// `max_in_flight` requests are already being handled.
fn dispatch(
    core: &Arc<Core>,
    outbox: &Outbox,
    limit: &Arc<Semaphore>,
    tasks: &TaskTracker,
    msg: Parsed,
    src: Inbound,
) {
    let permit = match limit.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if let Parsed::Request(req) = &msg
                && req.method() != "ACK"
            {
                core.metrics.overloaded();
                let out = core.reply(
                    req,
                    src,
                    503,
                    "Service Unavailable",
                    &[("Retry-After", "1".to_string())],
                );
                let (core, outbox) = (core.clone(), outbox.clone());
                tasks.spawn(async move {
                    for o in out {
                        outbox.send(&core, o).await;
                    }
                });
            } else {
                core.metrics.dropped("overloaded");
            }
            return;
        }
    };
    let (core, outbox) = (core.clone(), outbox.clone());
    let in_flight = core.metrics.in_flight_guard();
    tasks.spawn(async move {
        let _permit = permit;
        let _in_flight = in_flight;
        let out = match msg {
            Parsed::Request(req) => core.handle_request(req, src).await,
            Parsed::Response(resp) => core.handle_response(resp, src).await.into_iter().collect(),
        };
        for o in out {
            outbox.send(&core, o).await;
        }
    });
}

/// The UDP receive loop. It also writes the dropped-input summary when one
/// is due, so counts are reported after a flood stops too.
pub async fn serve_udp(
    socket: Arc<UdpSocket>,
    core: Arc<Core>,
    outbox: Outbox,
    limit: Arc<Semaphore>,
    limits: Arc<Limits>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let local = core.local;
    // One byte more than the limit, so an oversized datagram is detected
    // rather than silently truncated into something parsable.
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => {
                limits.flush_summary(Instant::now());
                return;
            }
            _ = summary.tick() => {
                limits.flush_summary(Instant::now());
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable from an earlier send surfaces here on
                    // some platforms; it says nothing about this socket.
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        let data = buf.get(..n).unwrap_or(&[]);
        if data.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            // RFC 5626 §4.4.2 keep-alives over UDP are STUN; bare CRLFs are noise.
            continue;
        }
        // Before parsing: a flood of junk is as much a flood as one of requests.
        if !limits.admit(peer.ip(), Instant::now()) {
            continue;
        }
        let src = Inbound {
            transport: Transport::Udp,
            peer,
            local,
        };
        match sip::parse_datagram(Bytes::copy_from_slice(data)) {
            Ok(msg) => dispatch(&core, &outbox, &limit, &tasks, msg, src),
            Err(e) => {
                tracing::debug!(%peer, bytes = n, error = %e, "unparsable datagram dropped");
                limits.dropped(
                    match e {
                        sip::ParseError::TooLarge(_) => "too_large",
                        sip::ParseError::Malformed(_) => "unparsable",
                    },
                    Instant::now(),
                );
            }
        }
    }
}

/// The TCP accept loop. It never waits for a free slot: a connection over
/// `tcp_max_connections`, over `tcp_max_per_source`, or from a banned source
/// is closed as soon as it is accepted, so a full table cannot stop the
/// loop from serving the next source once a slot frees up.
pub async fn serve_tcp(
    listener: TcpListener,
    core: Arc<Core>,
    outbox: Outbox,
    limit: Arc<Semaphore>,
    limits: Arc<Limits>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept failed");
                    limits.dropped("tcp_accept_failed", Instant::now());
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                    continue;
                }
            },
        };
        let slot = match limits.open_tcp(peer.ip(), Instant::now()) {
            Ok(slot) => slot,
            Err(_) => {
                // Dropping the stream closes it; nothing is read or answered.
                drop(stream);
                continue;
            }
        };
        let (core, outbox, limit, limits2, t2, stop) = (
            core.clone(),
            outbox.clone(),
            limit.clone(),
            limits.clone(),
            tasks.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            connection(stream, peer, slot, core, outbox, limit, limits2, t2, stop).await;
        });
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: TcpSlot,
    core: Arc<Core>,
    outbox: Outbox,
    limit: Arc<Semaphore>,
    limits: Arc<Limits>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let _slot = slot;
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
    outbox.register(peer, tx.clone());
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if wr.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    let src = Inbound {
        transport: Transport::Tcp,
        peer,
        local: core.local,
    };
    let mut framer = sip::StreamFramer::default();
    let mut timers = limits.stream_timers(Instant::now());
    // A CRLF pair left over from the last read: a CRLFCRLF ping split
    // across two reads is still one ping.
    let mut odd_pair = 0;
    let mut buf = vec![0u8; 16 * 1024];
    'conn: loop {
        let (deadline, expiry) = timers.deadline();
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            r = tokio::time::timeout_at(deadline.into(), rd.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => {
                    limits.timed_out(peer.ip(), expiry, Instant::now());
                    break;
                }
            },
        };
        match framer.push(buf.get(..n).unwrap_or(&[])) {
            Ok((msgs, keepalives)) => {
                let now = Instant::now();
                let pairs = if msgs.is_empty() {
                    odd_pair + keepalives
                } else {
                    keepalives
                };
                odd_pair = pairs % 2;
                let pings = pairs / 2;
                timers.framed(now, msgs.len(), pings, framer.pending());
                // RFC 5626 §4.4.1: a CRLFCRLF ping (two CRLF pairs) gets a CRLF pong.
                for _ in 0..pings {
                    let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                }
                for m in msgs {
                    if !limits.admit(peer.ip(), now) {
                        // A stream has no way to drop one message and go on
                        // meaningfully: the peer would wait for an answer.
                        break 'conn;
                    }
                    dispatch(&core, &outbox, &limit, &tasks, m, src);
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "TCP framing lost; closing the connection");
                limits.dropped("tcp_framing", Instant::now());
                break;
            }
        }
    }
    outbox.unregister(peer);
    drop(tx);
    let _ = writer.await;
}
