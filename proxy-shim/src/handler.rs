//! The transport-independent pipeline: one parsed message in, the datagrams
//! or stream writes to send out. A request goes through `sanity` and `auth`,
//! then to `register` (REGISTER) or `forward` (everything else); a response
//! is relayed back along its Via path. Transports (`transport`) own the
//! sockets; the shared state is `state::Core`.

use crate::auth::Gate;
use crate::envelope::{Inbound, Outbound, Transport};
use crate::hop_mac::{Hop, return_hop};
use crate::netaddr::resolve;
use crate::sip::{Request, Response};
use crate::state::Core;
use tracing::Instrument;

/// The status code of a response's bytes; None for a request.
fn status_code(bytes: &[u8]) -> Option<u16> {
    let code = bytes.strip_prefix(b"SIP/2.0 ")?.get(..3)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

impl Core {
    /// Handles one request in its trace span (the root of the request's
    /// trace; the locsvc calls below it carry it on).
    pub async fn handle_request(&self, req: Request, src: Inbound) -> Vec<Outbound> {
        // Debug level: it exists only when traces (or debug logs) are on.
        let span = tracing::debug_span!(
            "sip",
            otel.name = tracing::field::Empty,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            sip.method = tracing::field::Empty,
            sip.call_id = tracing::field::Empty,
            sip.status_code = tracing::field::Empty,
            client.address = %src.peer.ip(),
            client.port = src.peer.port(),
            network.transport = src.transport.as_str(),
        );
        if span.is_disabled() {
            return self.handle_request_in(req, src).await;
        }
        let method = req.method();
        span.record("otel.name", format!("SIP {method}"));
        span.record("sip.method", method.as_str());
        if let Ok(id) = req.call_id() {
            span.record("sip.call_id", id.as_str());
        }
        let out = self
            .handle_request_in(req, src)
            .instrument(span.clone())
            .await;
        if let Some(code) = out.iter().find_map(|o| status_code(&o.bytes)) {
            span.record("sip.status_code", code);
            if code >= 500 {
                span.record("otel.status_code", "error");
            }
        }
        out
    }

    /// Handles one request: sanity, authentication, then REGISTER goes to
    /// the registrar and the rest is routed.
    async fn handle_request_in(&self, req: Request, src: Inbound) -> Vec<Outbound> {
        let method = req.method();
        self.metrics.request(&method);
        let checked = match crate::sanity::check(&req, self.settings.max_forwards, |h, p| {
            self.is_local(h, p)
        }) {
            Ok(c) => c,
            Err(r) => return self.reply(&req, src, r.code, &r.reason, &[]),
        };
        let trusted = self.settings.trusts(src.peer.ip());
        if let Gate::Answer(code, reason, headers) = self
            .auth
            .check(&self.settings, &self.client, &self.metrics, &req, trusted)
            .await
        {
            return self.reply(&req, src, code, reason, &headers);
        }
        if method == "REGISTER" {
            crate::register::handle(self, &req, src, &checked).await
        } else {
            crate::forward::handle(self, req, src, checked).await
        }
    }

    /// Relays a response back along its Via path (RFC 3261 §16.7 steps 3
    /// and 9; a stateless proxy keeps no transaction to match it against),
    /// only when our Via's MAC vouches for the hop it goes back to.
    pub async fn handle_response(&self, mut resp: Response, src: Inbound) -> Option<Outbound> {
        let top = resp.top_via().ok()?;
        if !self.identity.is_our_via(&top) {
            tracing::debug!(peer = %src.peer, status = resp.status(), "response not through our Via; dropped");
            self.metrics.dropped("response_not_ours");
            return None;
        }
        resp.pop_via();
        let Ok(next) = resp.top_via() else {
            self.metrics.dropped("response_no_next_via");
            return None;
        };
        let (transport, host, port) = return_hop(&next);
        let hop = Hop {
            transport: &transport,
            host: &host,
            port,
        };
        if !top
            .branch
            .as_deref()
            .is_some_and(|b| self.hop_key.verify(b, &hop))
        {
            tracing::debug!(peer = %src.peer, status = resp.status(), "response whose return hop we did not seal; dropped");
            self.metrics.dropped("response_forged");
            return None;
        }
        let dest = resolve(&host, port).await?;
        self.metrics.relayed(resp.status());
        Some(Outbound {
            transport: Transport::of_via(&next),
            dest,
            bytes: resp.to_bytes(),
        })
    }
}
