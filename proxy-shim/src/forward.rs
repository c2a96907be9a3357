//! Carries out the routing decision (`route`) for every request but
//! REGISTER: OPTIONS to the shim itself, a trusted edge's routes and
//! dialogs, and requests to a served AoR via locsvc `Lookup` — forwarded
//! statelessly (RFC 3261 §16.11) in proxy mode, answered with 302 in
//! redirect mode.
//!
//! Stateless means no transaction is kept: the branch of our Via is derived
//! from the incoming request, so a retransmission, the CANCEL and the ACK of
//! a non-2xx answer all take the same path and carry the same branch.

use std::time::Instant;

use locsvc_proto::v1::Binding;

use crate::handler::{BRANCH_PREFIX, Core, Inbound, Outbound, TAG_PREFIX, Transport, resolve};
use crate::hop_mac::Hop;
use crate::route::{self, Decision, Facts};
use crate::sanity;
use crate::settings::Mode;
use crate::sip::{Request, UriView};

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, INFO, UPDATE, PRACK, REFER";

/// Handles one non-REGISTER request the pipeline has checked (`sanity`):
/// the routing decision (`route`), then its effect.
pub async fn handle(
    core: &Core,
    mut req: Request,
    src: Inbound,
    checked: sanity::Checked,
) -> Vec<Outbound> {
    let is_ack = req.method() == "ACK";
    // Requests are never answered if they are ACKs (RFC 3261 §17.2.1 has
    // no response to an ACK).
    let reply = |req: &Request, code: u16, reason: &str, extra: &[(&str, String)]| {
        if is_ack {
            Vec::new()
        } else {
            core.reply(req, src, code, reason, extra)
        }
    };
    let routes = match req.routes() {
        Ok(r) => r,
        Err(p) => return reply(&req, 400, &p.to_string(), &[]),
    };
    let facts = Facts {
        checked: &checked,
        routes: &routes,
        our_to_tag: checked
            .to_tag
            .as_deref()
            .is_some_and(|t| t.starts_with(TAG_PREFIX)),
        trusted: core.settings.trusts(src.peer.ip()),
    };
    let decision = route::decide(
        &facts,
        |h, p| core.is_local(h, p),
        |d| core.settings.serves(d),
    );
    let mf = checked.max_forwards;
    match decision {
        Decision::OptionsOk => reply(
            &req,
            200,
            "OK",
            &[
                ("Allow", ALLOW.to_string()),
                ("Accept", "application/sdp".into()),
            ],
        ),
        Decision::Reply(code, reason) => reply(&req, code, reason, &[]),
        Decision::Drop(why) => {
            core.metrics.dropped(why);
            Vec::new()
        }
        Decision::Relay { next, pop_route } => {
            if pop_route {
                req.pop_route();
            }
            forward_to(core, req, src, mf, &next).await
        }
        Decision::Lookup { aor, pop_route } => {
            if pop_route {
                req.pop_route();
            }
            lookup_and_route(core, req, src, mf, &aor).await
        }
    }
}

/// Looks `aor` up and forwards to its best contact (proxy mode) or answers
/// 302 with its contacts (redirect mode).
async fn lookup_and_route(
    core: &Core,
    mut req: Request,
    src: Inbound,
    max_forwards: u32,
    aor: &str,
) -> Vec<Outbound> {
    let method = req.method();
    let is_ack = method == "ACK";
    let reply = |req: &Request, code: u16, reason: &str, extra: &[(&str, String)]| {
        if is_ack {
            Vec::new()
        } else {
            core.reply(req, src, code, reason, extra)
        }
    };
    let started = Instant::now();
    let result = core.client.lookup(aor).await;
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
            let contacts = redirect_contacts(&bindings, req.to_bytes().len(), src.transport);
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

/// Largest 302 sent over UDP: the contacts that fit in one unfragmented
/// datagram (RFC 3261 §18.1.1's 1300 bytes), best first, so an INVITE
/// cannot be turned into a large reflected answer.
const MAX_UDP_REDIRECT: usize = 1300;

/// The Contact rows of a 302, best first; over UDP only as many as keep
/// the answer within `MAX_UDP_REDIRECT` (the request's own size counts, as
/// the answer echoes its Via, From, To, Call-ID and CSeq).
fn redirect_contacts(
    bindings: &[Binding],
    request_len: usize,
    transport: Transport,
) -> Vec<(&'static str, String)> {
    let mut used = request_len;
    let mut out = Vec::new();
    for b in bindings {
        let mut v = format!("<{}>", b.contact);
        if let Some(q) = b.q {
            v.push_str(&format!(";q={q:.2}"));
        }
        used += "Contact: \r\n".len() + v.len();
        if transport == Transport::Udp && !out.is_empty() && used > MAX_UDP_REDIRECT {
            break;
        }
        out.push(("Contact", v));
    }
    out
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

/// The request-derived part of our Via branch (§16.11): the incoming top
/// Via's branch and sent-by, without the method, so a CANCEL and the ACK of
/// a non-2xx answer match the INVITE they belong to. For a pre-RFC 3261
/// branch, Call-ID, From tag and CSeq number are mixed in. The MAC of the
/// return hop follows it (`hop_mac`).
fn derive_branch_id(req: &Request) -> String {
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
        "{BRANCH_PREFIX}{:016x}-",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    )
}

/// Forwards `req` to the host of `next_uri` (§16.6 steps 3, 8, 10, 11),
/// unless that would loop (§16.3 step 4).
async fn forward_to(
    core: &Core,
    mut req: Request,
    src: Inbound,
    max_forwards: u32,
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
    // A request that already went through us comes back in a loop.
    if req
        .vias()
        .map(|vs| vs.iter().any(|v| core.is_our_via(v)))
        .unwrap_or(false)
    {
        core.metrics.dropped("loop");
        return fail(&req, 482, "Loop Detected");
    }
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
    if core.is_self(dest) {
        // Forwarding to ourselves (by any of our addresses, 0.0.0.0
        // included) would loop until Max-Forwards runs out.
        core.metrics.dropped("loop");
        return fail(&req, 482, "Loop Detected");
    }
    req.stamp_top_via(src.peer);
    let Ok(back) = req.top_via() else {
        return fail(&req, 400, "Bad Via");
    };
    let (back_transport, back_host, back_port) = crate::handler::return_hop(&back);
    let branch = core.hop_key.seal(
        &derive_branch_id(&req),
        &Hop {
            transport: &back_transport,
            host: &back_host,
            port: back_port,
        },
    );
    req.set_max_forwards(max_forwards.saturating_sub(1));
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
