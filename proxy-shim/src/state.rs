//! `Core`, the state every handler of one shim shares: settings, the locsvc
//! client, metrics, what names us, the hop key and the authenticator; and
//! `reply`, the one way a response we generate leaves. What the handlers do
//! with it lives in `handler`, `register` and `forward`.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::envelope::{Inbound, Outbound};
use crate::hop_mac::HopKey;
use crate::identity::{Identity, TAG_PREFIX};
use crate::locsvc_client::LocsvcClient;
use crate::metrics::Metrics;
use crate::settings::{Mode, Settings};
use crate::sip::{self, Request};

/// Shared state of the request handlers.
#[derive(Debug)]
pub struct Core {
    /// The settings the shim was built with.
    pub settings: Settings,
    /// locsvc, over every configured instance.
    pub client: LocsvcClient,
    /// The shim's metrics.
    pub metrics: Arc<Metrics>,
    /// The bound and advertised addresses, and the Via we push.
    pub identity: Identity,
    /// Keys the MAC in our Via branches (`hop_mac`).
    pub hop_key: HopKey,
    /// Digest authentication (`auth`).
    pub auth: Authenticator,
}

impl Core {
    /// The state of a shim bound to `local`, with a fresh hop key.
    pub fn new(
        settings: Settings,
        client: LocsvcClient,
        metrics: Arc<Metrics>,
        local: SocketAddr,
    ) -> Self {
        let identity = Identity::new(local, settings.advertise.as_ref());
        let auth = Authenticator::new(&settings);
        Self {
            settings,
            client,
            metrics,
            identity,
            hop_key: HopKey::random(),
            auth,
        }
    }

    /// Proxy or redirect.
    pub fn mode(&self) -> Mode {
        self.settings.mode
    }

    /// Whether host:port names this shim (`Identity::is_local`).
    pub fn is_local(&self, host: &str, port: Option<u16>) -> bool {
        self.identity.is_local(host, port)
    }

    /// A response generated here, sent back where the request came from.
    /// An ACK gets none (RFC 3261 §17: there is no response to an ACK).
    pub fn reply(
        &self,
        req: &Request,
        src: Inbound,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
    ) -> Vec<Outbound> {
        let method = req.method();
        if method == "ACK" {
            return Vec::new();
        }
        let tag = to_tag(req);
        match sip::response(req, code, reason, &tag, extra) {
            Some(bytes) => {
                self.metrics.response(&method, code);
                vec![Outbound {
                    transport: src.transport,
                    dest: reply_destination(src),
                    bytes,
                }]
            }
            None => {
                self.metrics.dropped("unanswerable");
                tracing::info!(peer = %src.peer, code, "request lacks Via/From/To/Call-ID/CSeq; cannot answer");
                Vec::new()
            }
        }
    }
}

/// A To tag derived from the request, so a retransmission gets the same tag.
fn to_tag(req: &Request) -> String {
    let key = format!(
        "{}|{}|{}",
        req.call_id().unwrap_or_default(),
        req.from_tag().unwrap_or_default(),
        req.top_via()
            .ok()
            .and_then(|v| v.branch)
            .unwrap_or_default()
    );
    format!(
        "{TAG_PREFIX}{:016x}",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    )
}

/// Where a generated response goes: on the connection for TCP, and to the
/// packet's source address *and port* for UDP, as if every request had
/// asked for `rport` (RFC 3581). The Via port of a request without `rport`
/// would let a sender aim our answers at any port.
fn reply_destination(src: Inbound) -> SocketAddr {
    src.peer
}
