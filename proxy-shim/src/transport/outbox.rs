//! The way out: UDP from the listening socket, TCP on the connection a peer
//! opened (the shim opens no outbound TCP connection).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::envelope::{Outbound, Transport};
use crate::metrics::Metrics;

/// Sends outbound messages.
#[derive(Debug, Clone)]
pub struct Outbox {
    udp: Arc<UdpSocket>,
    tcp: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>,
}

impl Outbox {
    /// An outbox sending UDP from `udp` and no TCP connection open yet.
    pub fn new(udp: Arc<UdpSocket>) -> Self {
        Self {
            udp,
            tcp: Arc::default(),
        }
    }

    /// Sends `out`, counting in `metrics` what cannot be sent.
    pub async fn send(&self, metrics: &Metrics, out: Outbound) {
        match out.transport {
            Transport::Udp => {
                if let Err(e) = self.udp.send_to(&out.bytes, out.dest).await {
                    tracing::debug!(dest = %out.dest, error = %e, "UDP send failed");
                    metrics.dropped("udp_send_failed");
                }
            }
            Transport::Tcp => {
                let tx = self.tcp.lock().ok().and_then(|m| m.get(&out.dest).cloned());
                match tx {
                    Some(tx) if tx.try_send(out.bytes).is_ok() => {}
                    _ => {
                        tracing::debug!(dest = %out.dest, "no open TCP connection (or its queue is full); dropped");
                        metrics.dropped("tcp_no_connection");
                    }
                }
            }
        }
    }

    /// Sends TCP messages to `peer` through `tx` from now on.
    pub(super) fn register(&self, peer: SocketAddr, tx: mpsc::Sender<Bytes>) {
        if let Ok(mut m) = self.tcp.lock() {
            m.insert(peer, tx);
        }
    }

    /// Forgets the connection to `peer`.
    pub(super) fn unregister(&self, peer: SocketAddr) {
        if let Ok(mut m) = self.tcp.lock() {
            m.remove(&peer);
        }
    }
}
