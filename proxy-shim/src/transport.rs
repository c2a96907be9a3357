//! UDP and TCP transports: read bytes, frame and parse them through the
//! facade, hand messages to the `Core`, and send what it returns.
//!
//! The UDP receive loop never waits on locsvc: each request is handled in
//! its own task, bounded by a semaphore; when it is exhausted the request is
//! answered 503 at once instead of queueing. TCP connections are bounded
//! too, each with a bounded write queue and an idle timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{Core, Inbound, Outbound, Transport};
use crate::sip::{self, MAX_MESSAGE_BYTES, Parsed};

/// Concurrent TCP connections accepted.
const MAX_CONNECTIONS: usize = 1024;
/// Writes queued per TCP connection before further ones are dropped.
const WRITE_QUEUE: usize = 64;
/// A TCP connection silent this long is closed (RFC 5626 keep-alives
/// arrive far more often than this).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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

/// The UDP receive loop.
pub async fn serve_udp(
    socket: Arc<UdpSocket>,
    core: Arc<Core>,
    outbox: Outbox,
    limit: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let local = core.local;
    // One byte more than the limit, so an oversized datagram is detected
    // rather than silently truncated into something parsable.
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => return,
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
        let src = Inbound {
            transport: Transport::Udp,
            peer,
            local,
        };
        match sip::parse_datagram(Bytes::copy_from_slice(data)) {
            Ok(msg) => dispatch(&core, &outbox, &limit, &tasks, msg, src),
            Err(e) => {
                tracing::info!(%peer, bytes = n, error = %e, "unparsable datagram dropped");
                core.metrics.dropped(match e {
                    sip::ParseError::TooLarge(_) => "too_large",
                    sip::ParseError::Malformed(_) => "unparsable",
                });
            }
        }
    }
}

/// The TCP accept loop.
pub async fn serve_tcp(
    listener: TcpListener,
    core: Arc<Core>,
    outbox: Outbox,
    limit: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    continue;
                }
            },
        };
        let (core, outbox, limit, t2, stop) = (
            core.clone(),
            outbox.clone(),
            limit.clone(),
            tasks.clone(),
            stop.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            connection(stream, peer, core, outbox, limit, t2, stop).await;
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    core: Arc<Core>,
    outbox: Outbox,
    limit: Arc<Semaphore>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
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
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            _ = stop.cancelled() => break,
            r = tokio::time::timeout(IDLE_TIMEOUT, rd.read(&mut buf)) => match r {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => n,
                Err(_) => {
                    tracing::debug!(%peer, "idle TCP connection closed");
                    break;
                }
            },
        };
        match framer.push(buf.get(..n).unwrap_or(&[])) {
            Ok((msgs, keepalives)) => {
                // RFC 5626 §4.4.1: a CRLFCRLF ping (two CRLF pairs) gets a CRLF pong.
                for _ in 0..keepalives / 2 {
                    let _ = tx.try_send(Bytes::from_static(b"\r\n"));
                }
                for m in msgs {
                    dispatch(&core, &outbox, &limit, &tasks, m, src);
                }
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "TCP framing lost; closing the connection");
                core.metrics.dropped("tcp_framing");
                break;
            }
        }
    }
    outbox.unregister(peer);
    drop(tx);
    let _ = writer.await;
}
