//! The UDP receive loop: one datagram, one message (RFC 3261 §18.3).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::net::UdpSocket;

use super::dispatch::Dispatcher;
use crate::envelope::{Inbound, Transport};
use crate::limits::SUMMARY_INTERVAL;
use crate::metrics::Stage;
use crate::sip::{self, MAX_MESSAGE_BYTES, ParseError};

/// The UDP receive loop. It also writes the dropped-input summary when one
/// is due, so counts are reported after a flood stops too.
pub async fn serve_udp(socket: Arc<UdpSocket>, d: Dispatcher) {
    let local = d.core.identity.local;
    let limits = &d.limits;
    // One byte more than the limit, so an oversized datagram is detected
    // rather than silently truncated into something parsable.
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let mut summary = tokio::time::interval(SUMMARY_INTERVAL);
    summary.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (n, peer) = tokio::select! {
            _ = d.stop.cancelled() => {
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
        let parsing = Instant::now();
        match sip::parse_datagram(Bytes::copy_from_slice(data)) {
            Ok(msg) => {
                d.core.metrics.stage(Stage::Parse, parsing.elapsed());
                d.dispatch(msg, src)
            }
            Err(e) => {
                tracing::debug!(%peer, bytes = n, error = %e, "unparsable datagram dropped");
                limits.dropped(drop_reason(&e), Instant::now());
            }
        }
    }
}

/// The `proxy_shim_dropped_total` reason of a datagram that did not parse.
fn drop_reason(e: &ParseError) -> &'static str {
    match e {
        ParseError::TooLarge(_) => "too_large",
        ParseError::Malformed(_) => "unparsable",
    }
}
