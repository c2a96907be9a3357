//! Carries out the routing decision (`route`) for every request but
//! REGISTER: OPTIONS to the shim itself, a trusted edge's routes and
//! dialogs, and requests to a served AoR via locsvc `Lookup` — forwarded
//! statelessly (RFC 3261 §16.11) in proxy mode, answered with 302 in
//! redirect mode.
//!
//! The decisions are pure (`route::decide`, then `target::after_lookup` for
//! what the bindings become); this module does their effects: the Lookup,
//! the answers, and the forward itself (`stateless`).

mod stateless;
mod target;

use std::time::Instant;

use locsvc_proto::v1::Binding;

use crate::envelope::{Inbound, Outbound};
use crate::identity::TAG_PREFIX;
use crate::locsvc_client::LocsvcError;
use crate::route::{self, Decision, Facts};
use crate::sanity::Checked;
use crate::sip::Request;
use crate::state::Core;
use target::Target;

const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, REGISTER, MESSAGE, SUBSCRIBE, NOTIFY, INFO, UPDATE, PRACK, REFER";

/// Handles one non-REGISTER request the pipeline has checked (`sanity`):
/// the routing decision (`route`), then its effect.
pub async fn handle(
    core: &Core,
    mut req: Request,
    src: Inbound,
    checked: Checked,
) -> Vec<Outbound> {
    let routes = match req.routes() {
        Ok(r) => r,
        Err(p) => return core.reply(&req, src, 400, &p.to_string(), &[]),
    };
    let max_forwards = checked.max_forwards;
    match decide(core, &checked, &routes, src) {
        Decision::OptionsOk => {
            let headers = [
                ("Allow", ALLOW.to_string()),
                ("Accept", "application/sdp".into()),
            ];
            core.reply(&req, src, 200, "OK", &headers)
        }
        Decision::Reply(code, reason) => core.reply(&req, src, code, reason, &[]),
        Decision::Drop(why) => {
            core.metrics.dropped(why);
            Vec::new()
        }
        Decision::Relay { next, pop_route } => {
            if pop_route {
                req.pop_route();
            }
            stateless::forward_to(core, req, src, max_forwards, &next).await
        }
        Decision::Lookup { aor, pop_route } => {
            if pop_route {
                req.pop_route();
            }
            lookup_and_route(core, req, src, max_forwards, &aor).await
        }
    }
}

/// The routing decision for a checked request from `src`.
fn decide(core: &Core, checked: &Checked, routes: &[String], src: Inbound) -> Decision {
    let facts = Facts {
        checked,
        routes,
        our_to_tag: checked
            .to_tag
            .as_deref()
            .is_some_and(|t| t.starts_with(TAG_PREFIX)),
        trusted: core.settings.trusts(src.peer.ip()),
    };
    route::decide(
        &facts,
        |h, p| core.is_local(h, p),
        |d| core.settings.serves(d),
    )
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
    let bindings = match lookup(core, aor).await {
        Ok(b) => b,
        Err(e) => {
            let (code, reason, extra) = e.sip();
            tracing::warn!(error = %e, aor, "lookup failed");
            return core.reply(&req, src, code, &reason, &extra);
        }
    };
    match target::after_lookup(core.mode(), &req.method(), &bindings) {
        Target::Answer(code, reason) => core.reply(&req, src, code, reason, &[]),
        Target::Redirect => {
            let contacts =
                target::redirect_contacts(&bindings, req.to_bytes().len(), src.transport);
            core.reply(&req, src, 302, "Moved Temporarily", &contacts)
        }
        Target::Forward {
            contact,
            next,
            path,
        } => {
            if let Err(p) = req.set_uri(&contact) {
                let reason = format!("Stored contact unusable: {p}");
                return core.reply(&req, src, 500, &reason, &[]);
            }
            if !path.is_empty()
                && let Err(p) = req.prepend_routes(&path)
            {
                let reason = format!("Stored path unusable: {p}");
                return core.reply(&req, src, 500, &reason, &[]);
            }
            stateless::forward_to(core, req, src, max_forwards, &next).await
        }
    }
}

/// locsvc `Lookup`, timed in the metrics.
async fn lookup(core: &Core, aor: &str) -> Result<Vec<Binding>, LocsvcError> {
    let started = Instant::now();
    let result = core.client.lookup(aor).await;
    core.metrics
        .locsvc_call("lookup", result.is_ok(), started.elapsed().as_secs_f64());
    result
}
