//! The stateless forward itself (RFC 3261 §16.6, §16.11): loop checks, the
//! next hop resolved, `received`/`rport` stamped on the incoming Via, our
//! Via pushed, Max-Forwards lowered.
//!
//! Stateless means no transaction is kept: the branch of our Via is derived
//! from the incoming request, so a retransmission, the CANCEL and the ACK of
//! a non-2xx answer all take the same path and carry the same branch. Its
//! end is a MAC of the hop the response must return to (`hop_mac`).

use crate::envelope::{Inbound, Outbound, Transport};
use crate::hop_mac::{Hop, return_hop};
use crate::identity::BRANCH_PREFIX;
use crate::netaddr::resolve;
use crate::sip::{Request, UriView};
use crate::state::Core;

/// Why a request cannot be forwarded. The Display is the reason phrase of
/// the answer (an ACK gets none and is dropped instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unforwardable {
    /// It already went through us, or the next hop is this shim (§16.3 step 4).
    #[error("Loop Detected")]
    Loop,
    /// The next hop is not a URI.
    #[error("Unroutable Next Hop")]
    BadNextHop,
    /// The next hop's host has no address (or DNS was too slow).
    #[error("Next Hop Unresolvable")]
    Unresolvable,
    /// The top Via cannot be read back after stamping `received`/`rport`.
    #[error("Bad Via")]
    BadVia,
    /// Our Via cannot be pushed onto the request.
    #[error("Cannot Add Via")]
    CannotAddVia,
}

impl Unforwardable {
    /// The SIP status this is answered with.
    pub fn status(self) -> u16 {
        match self {
            Unforwardable::Loop => 482,
            Unforwardable::BadNextHop | Unforwardable::CannotAddVia => 500,
            Unforwardable::Unresolvable => 503,
            Unforwardable::BadVia => 400,
        }
    }
}

/// Forwards `req` to the host of `next_uri` (§16.6 steps 3, 8, 10, 11),
/// unless that would loop (§16.3 step 4).
pub async fn forward_to(
    core: &Core,
    mut req: Request,
    src: Inbound,
    max_forwards: u32,
    next_uri: &str,
) -> Vec<Outbound> {
    match prepare(core, &mut req, src, max_forwards, next_uri).await {
        Ok(out) => {
            core.metrics.forwarded(&req.method());
            vec![out]
        }
        Err(why) => {
            if why == Unforwardable::Loop {
                core.metrics.dropped("loop");
            }
            if req.method() == "ACK" {
                core.metrics.dropped("ack_unroutable");
            }
            // Built from the request as far as it was edited: the answer
            // echoes the Via we stamped.
            core.reply(&req, src, why.status(), &why.to_string(), &[])
        }
    }
}

/// Edits `req` for its next hop and says where it goes.
async fn prepare(
    core: &Core,
    req: &mut Request,
    src: Inbound,
    max_forwards: u32,
    next_uri: &str,
) -> Result<Outbound, Unforwardable> {
    // A request that already went through us comes back in a loop.
    if req
        .vias()
        .map(|vs| vs.iter().any(|v| core.identity.is_our_via(v)))
        .unwrap_or(false)
    {
        return Err(Unforwardable::Loop);
    }
    let next = UriView::parse(next_uri).ok_or(Unforwardable::BadNextHop)?;
    let transport = Transport::of_uri(&next);
    let default_port = if next.scheme == "sips" { 5061 } else { 5060 };
    let dest = resolve(&next.host, next.port.unwrap_or(default_port))
        .await
        .ok_or(Unforwardable::Unresolvable)?;
    if core.identity.is_self(dest) {
        // Forwarding to ourselves (by any of our addresses, 0.0.0.0
        // included) would loop until Max-Forwards runs out.
        return Err(Unforwardable::Loop);
    }
    req.stamp_top_via(src.peer);
    let back = req.top_via().map_err(|_| Unforwardable::BadVia)?;
    let (back_transport, back_host, back_port) = return_hop(&back);
    let branch = core.hop_key.seal(
        &derive_branch_id(req),
        &Hop {
            transport: &back_transport,
            host: &back_host,
            port: back_port,
        },
    );
    req.set_max_forwards(max_forwards.saturating_sub(1));
    req.push_via(&core.identity.our_via(transport, &branch))
        .map_err(|_| Unforwardable::CannotAddVia)?;
    Ok(Outbound {
        transport,
        dest,
        bytes: req.to_bytes(),
    })
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
