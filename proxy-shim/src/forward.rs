//! Routing of every request but REGISTER: OPTIONS to the shim itself,
//! in-dialog requests to their Request-URI, and requests to a served AoR via
//! locsvc `Lookup` — forwarded statelessly (RFC 3261 §16.11) in proxy mode,
//! answered with 302 in redirect mode.
//!
//! Stateless means no transaction is kept: the branch of our Via is derived
//! from the incoming request, so a retransmission, the CANCEL and the ACK of
//! a non-2xx answer all take the same path and carry the same branch.

use std::net::SocketAddr;
use std::time::Instant;

use locsvc_proto::v1::Binding;

use crate::handler::{BRANCH_PREFIX, Core, Inbound, Outbound, TAG_PREFIX, Transport, resolve};
use crate::settings::Mode;
use crate::sip::{Request, UriView};

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, INFO, UPDATE, PRACK, REFER";

/// Handles one non-REGISTER request.
pub async fn handle(core: &Core, mut req: Request, src: Inbound) -> Vec<Outbound> {
    let method = req.method();
    let is_ack = method == "ACK";
    // Requests are never answered if they are ACKs (RFC 3261 §17.2.1 has
    // no response to an ACK).
    let reply = |req: &Request, code: u16, reason: &str, extra: &[(&str, String)]| {
        if is_ack {
            Vec::new()
        } else {
            core.reply(req, src, code, reason, extra)
        }
    };
    let (to_tag, bad_to) = match req.to() {
        Ok((_, tag)) => (tag, false),
        Err(_) => (None, true),
    };
    if bad_to {
        return reply(&req, 400, "Bad To header", &[]);
    }
    if is_ack && to_tag.as_deref().is_some_and(|t| t.starts_with(TAG_PREFIX)) {
        // The ACK of a non-2xx answer we generated: absorbed here.
        return Vec::new();
    }
    let max_forwards = match req.max_forwards() {
        Ok(m) => m,
        Err(p) => return reply(&req, 400, &p.to_string(), &[]),
    };
    if let Err(p) = req.call_id().and(req.cseq()) {
        return reply(&req, 400, &p.to_string(), &[]);
    }
    // Loose routing (§16.4): a Route naming us is ours to remove.
    let routes = match req.routes() {
        Ok(r) => r,
        Err(p) => return reply(&req, 400, &p.to_string(), &[]),
    };
    let mut routes = routes.as_slice();
    if let Some(first) = routes.first()
        && UriView::parse(first).is_some_and(|u| core.is_local(&u.host, u.port))
    {
        req.pop_route();
        routes = &routes[1..];
    }
    let Some(uri) = req.uri() else {
        return reply(&req, 416, "Unsupported URI Scheme", &[]);
    };
    let to_us = uri.user.is_none()
        && (core.is_local(&uri.host, uri.port)
            || (uri.ip.is_none()
                && !core.settings.domains.is_empty()
                && core.settings.serves(&uri.host)));
    if method == "OPTIONS" && (to_us || max_forwards == Some(0)) {
        return reply(
            &req,
            200,
            "OK",
            &[
                ("Allow", ALLOW.to_string()),
                ("Accept", "application/sdp".into()),
            ],
        );
    }
    if max_forwards == Some(0) {
        return reply(&req, 483, "Too Many Hops", &[]);
    }
    if let Some(next) = routes.first() {
        let next = next.clone();
        return forward_to(core, req, src, max_forwards, &next).await;
    }
    if to_tag.is_some() && uri.ip.is_some() && !core.is_local(&uri.host, uri.port) {
        // In-dialog request to a contact address: route by Request-URI.
        let target = req.uri_string();
        return forward_to(core, req, src, max_forwards, &target).await;
    }
    if to_us {
        return reply(&req, 404, "Not Found", &[]);
    }
    let Some(aor) = uri.aor() else {
        return reply(&req, 404, "Not Found", &[]);
    };
    if !core.settings.serves(&uri.host) {
        return reply(&req, 403, "Domain Not Served", &[]);
    }
    let started = Instant::now();
    let result = core.client.lookup(&aor).await;
    core.metrics
        .locsvc_call("lookup", result.is_ok(), started.elapsed().as_secs_f64());
    let bindings = match result {
        Ok(b) => b,
        Err(e) => {
            let (code, reason, extra) = e.sip();
            tracing::warn!(error = %e, aor, "lookup failed");
            return reply(&req, code, &reason, &extra);
        }
    };
    let Some(best) = bindings.first() else {
        return reply(&req, 404, "Not Found", &[]);
    };
    match core.mode() {
        Mode::Redirect => {
            if method == "CANCEL" {
                return reply(&req, 200, "OK", &[]);
            }
            let contacts: Vec<(&str, String)> = bindings
                .iter()
                .map(|b| {
                    let mut v = format!("<{}>", b.contact);
                    if let Some(q) = b.q {
                        v.push_str(&format!(";q={q:.2}"));
                    }
                    ("Contact", v)
                })
                .collect();
            reply(&req, 302, "Moved Temporarily", &contacts)
        }
        Mode::Proxy => {
            let contact = best.contact.clone();
            if let Err(p) = req.set_uri(&contact) {
                return reply(&req, 500, &format!("Stored contact unusable: {p}"), &[]);
            }
            let (next, path) = next_hop(best);
            if !path.is_empty()
                && let Err(p) = req.prepend_routes(&path)
            {
                return reply(&req, 500, &format!("Stored path unusable: {p}"), &[]);
            }
            forward_to(core, req, src, max_forwards, &next).await
        }
    }
}

/// Where a request for this binding goes first: the first Path hop (the
/// route set, RFC 3327 §5.3), else `received` (NAT, the address the
/// REGISTER really came from), else the contact itself.
fn next_hop(b: &Binding) -> (String, Vec<String>) {
    if let Some(first) = b.path.first() {
        return (first.clone(), b.path.clone());
    }
    if !b.received.is_empty() {
        return (b.received.clone(), Vec::new());
    }
    (b.contact.clone(), Vec::new())
}

/// The branch of our Via, derived from the incoming request (§16.11): the
/// incoming top Via's branch and sent-by, without the method, so a CANCEL
/// and the ACK of a non-2xx answer match the INVITE they belong to. For a
/// pre-RFC 3261 branch, Call-ID, From tag and CSeq number are mixed in.
fn derive_branch(req: &Request) -> String {
    let via = req.top_via().ok();
    let mut key = String::new();
    if let Some(v) = &via {
        key.push_str(&format!(
            "{}|{}|{:?}|",
            v.branch.as_deref().unwrap_or(""),
            v.host,
            v.port
        ));
    }
    let rfc3261 = via
        .as_ref()
        .and_then(|v| v.branch.as_deref())
        .is_some_and(|b| b.starts_with("z9hG4bK"));
    if !rfc3261 {
        key.push_str(&format!(
            "{}|{}|{}|{}",
            req.call_id().unwrap_or_default(),
            req.from_tag().unwrap_or_default(),
            req.cseq().map(|c| c.0).unwrap_or(0),
            req.uri_string()
        ));
    }
    format!(
        "{BRANCH_PREFIX}{:016x}",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    )
}

/// Forwards `req` to the host of `next_uri` (§16.6 steps 3, 8, 10, 11).
async fn forward_to(
    core: &Core,
    mut req: Request,
    src: Inbound,
    max_forwards: Option<u32>,
    next_uri: &str,
) -> Vec<Outbound> {
    let is_ack = req.method() == "ACK";
    let fail = |req: &Request, code: u16, reason: &str| {
        if is_ack {
            core.metrics.dropped("ack_unroutable");
            Vec::new()
        } else {
            core.reply(req, src, code, reason, &[])
        }
    };
    let Some(next) = UriView::parse(next_uri) else {
        return fail(&req, 500, "Unroutable Next Hop");
    };
    let transport = match next.transport.as_deref() {
        Some("tcp") => Transport::Tcp,
        _ => Transport::Udp,
    };
    let default_port = if next.scheme == "sips" { 5061 } else { 5060 };
    let Some(dest) = resolve(&next.host, next.port.unwrap_or(default_port)).await else {
        return fail(&req, 503, "Next Hop Unresolvable");
    };
    if is_self(core, dest) {
        // Forwarding to ourselves would loop until Max-Forwards runs out.
        return fail(&req, 482, "Loop Detected");
    }
    let branch = derive_branch(&req);
    req.stamp_top_via(src.peer);
    req.set_max_forwards(max_forwards.map_or(70, |m| m.saturating_sub(1)));
    if req.push_via(&core.our_via(transport, &branch)).is_err() {
        return fail(&req, 500, "Cannot Add Via");
    }
    core.metrics.forwarded(&req.method());
    vec![Outbound {
        transport,
        dest,
        bytes: req.to_bytes(),
    }]
}

fn is_self(core: &Core, dest: SocketAddr) -> bool {
    core.is_local(&dest.ip().to_string(), Some(dest.port()))
}
