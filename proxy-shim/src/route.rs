//! Where a request that is not a REGISTER goes: a pure decision over the
//! checked request, the source's trust and what names us; `forward` carries
//! it out. The shim is not a relay:
//!
//! - a Route is honoured only when it names us (then it is removed); any
//!   further Route, like any in-dialog request (the shim does not
//!   Record-Route, so dialogs do not pass through it), is relayed only for a
//!   trusted source (an edge proxy), else `403 Not relaying`;
//! - an out-of-dialog request is routed only to a served domain (through
//!   a locsvc Lookup); a foreign Request-URI gets `403 Not relaying`.
//!
//! An ACK is never answered (RFC 3261 §17): where another request would get
//! an error, an ACK is dropped.

use crate::sanity::Checked;
use crate::sip::UriView;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer an OPTIONS addressed to us (or out of hops) with 200.
    OptionsOk,
    /// Answer with an error.
    Reply(u16, &'static str),
    /// Drop without an answer (an ACK that cannot go anywhere, or the ACK
    /// of a non-2xx answer we generated).
    Drop(&'static str),
    /// Look up the AoR and forward to (or redirect at) its contacts;
    /// `pop_route` when the top Route named us.
    Lookup {
        /// The AoR to look up.
        aor: String,
        /// The top Route named us: remove it before forwarding.
        pop_route: bool,
    },
    /// Forward to `next` (a trusted source's route or in-dialog target);
    /// `pop_route` when the top Route named us.
    Relay {
        /// The next hop's URI.
        next: String,
        /// The top Route named us: remove it before forwarding.
        pop_route: bool,
    },
}

/// The request as routing sees it.
pub struct Facts<'a> {
    /// What the sanity checks established.
    pub checked: &'a Checked,
    /// The Route header values, top first.
    pub routes: &'a [String],
    /// The To tag starts with our prefix (an ACK of our own answer).
    pub our_to_tag: bool,
    /// The source is in `trusted`.
    pub trusted: bool,
}

/// Decides where a request goes. `is_us` tells whether host/port names this
/// shim; `serves` whether a domain is ours.
pub fn decide(
    f: &Facts<'_>,
    is_us: impl Fn(&str, Option<u16>) -> bool,
    serves: impl Fn(&str) -> bool,
) -> Decision {
    let c = f.checked;
    let is_ack = c.method == "ACK";
    let refuse = |code: u16, reason: &'static str| {
        if is_ack {
            Decision::Drop(reason)
        } else {
            Decision::Reply(code, reason)
        }
    };
    if is_ack && f.our_to_tag {
        return Decision::Drop("ack_of_our_answer");
    }
    // Loose routing (§16.4): a Route naming us is ours to remove.
    let ours = f
        .routes
        .first()
        .and_then(|r| UriView::parse(r))
        .is_some_and(|u| is_us(&u.host, u.port));
    let rest = if ours { &f.routes[1..] } else { f.routes };
    let uri = &c.uri;
    let to_us = uri.user.is_none() && (is_us(&uri.host, uri.port) || serves(&uri.host));
    if c.method == "OPTIONS" && rest.is_empty() && (to_us || c.max_forwards == 0) {
        return Decision::OptionsOk;
    }
    if c.max_forwards == 0 {
        return refuse(483, "Too Many Hops");
    }
    if let Some(next) = rest.first() {
        return if f.trusted {
            Decision::Relay {
                next: next.clone(),
                pop_route: ours,
            }
        } else {
            refuse(403, "Not relaying")
        };
    }
    if c.to_tag.is_some() {
        // In-dialog: only a trusted edge's dialogs pass through us.
        if !f.trusted || is_us(&uri.host, uri.port) {
            return refuse(403, "Not relaying");
        }
        return Decision::Relay {
            next: format_uri(uri),
            pop_route: ours,
        };
    }
    if to_us {
        return refuse(404, "Not Found");
    }
    if !serves(&uri.host) {
        return refuse(403, "Not relaying");
    }
    match uri.aor() {
        Some(aor) => Decision::Lookup {
            aor,
            pop_route: ours,
        },
        None => refuse(404, "Not Found"),
    }
}

/// The Request-URI's routing part, as the next hop of an in-dialog relay.
fn format_uri(u: &UriView) -> String {
    let mut s = format!("{}:{}", u.scheme, u.host_for_uri());
    if let Some(p) = u.port {
        s.push_str(&format!(":{p}"));
    }
    if let Some(t) = &u.transport {
        s.push_str(&format!(";transport={t}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(method: &str, uri: &str, to_tag: Option<&str>, mf: u32) -> Checked {
        Checked {
            method: method.into(),
            uri: UriView::parse(uri).unwrap(),
            to: UriView::parse("sip:b@example.com").unwrap(),
            to_tag: to_tag.map(str::to_string),
            max_forwards: mf,
        }
    }

    fn decide_for(c: &Checked, routes: &[&str], trusted: bool) -> Decision {
        let routes: Vec<String> = routes.iter().map(|s| s.to_string()).collect();
        decide(
            &Facts {
                checked: c,
                routes: &routes,
                our_to_tag: false,
                trusted,
            },
            |h, p| h == "192.0.2.10" && p.unwrap_or(5060) == 5060,
            |d| d == "example.com",
        )
    }

    #[test]
    fn a_foreign_route_or_request_uri_is_not_relayed_for_an_untrusted_source() {
        let inv = checked("INVITE", "sip:x@evil.test", None, 70);
        assert_eq!(
            decide_for(&inv, &["sip:127.0.0.2:46200;lr"], false),
            Decision::Reply(403, "Not relaying")
        );
        assert_eq!(
            decide_for(&inv, &[], false),
            Decision::Reply(403, "Not relaying")
        );
        // Our own Route is removed, and then a served AoR is looked up.
        let served = checked("INVITE", "sip:b@example.com", None, 70);
        assert_eq!(
            decide_for(&served, &["sip:192.0.2.10;lr"], false),
            Decision::Lookup {
                aor: "sip:b@example.com".into(),
                pop_route: true
            }
        );
        // Our Route followed by a foreign one is still a relay.
        assert_eq!(
            decide_for(&served, &["sip:192.0.2.10;lr", "sip:evil.test;lr"], false),
            Decision::Reply(403, "Not relaying")
        );
    }

    #[test]
    fn in_dialog_requests_pass_only_for_trusted_sources() {
        let bye = checked("BYE", "sip:127.0.0.2:46201", Some("t1"), 70);
        assert_eq!(
            decide_for(&bye, &[], false),
            Decision::Reply(403, "Not relaying")
        );
        assert_eq!(
            decide_for(&bye, &[], true),
            Decision::Relay {
                next: "sip:127.0.0.2:46201".into(),
                pop_route: false
            }
        );
        let ack = checked("ACK", "sip:127.0.0.2:46201", Some("t1"), 70);
        assert!(matches!(decide_for(&ack, &[], false), Decision::Drop(_)));
    }

    #[test]
    fn a_trusted_edge_may_route_through_us() {
        let inv = checked("INVITE", "sip:x@elsewhere.net", None, 70);
        assert_eq!(
            decide_for(&inv, &["sip:192.0.2.10;lr", "sip:edge2.net;lr"], true),
            Decision::Relay {
                next: "sip:edge2.net;lr".into(),
                pop_route: true
            }
        );
    }

    #[test]
    fn hops_options_and_unknown_targets() {
        let inv = checked("INVITE", "sip:b@example.com", None, 0);
        assert_eq!(
            decide_for(&inv, &[], false),
            Decision::Reply(483, "Too Many Hops")
        );
        let opt = checked("OPTIONS", "sip:192.0.2.10", None, 70);
        assert_eq!(decide_for(&opt, &[], false), Decision::OptionsOk);
        let opt = checked("OPTIONS", "sip:example.com", None, 70);
        assert_eq!(decide_for(&opt, &[], false), Decision::OptionsOk);
        let inv = checked("INVITE", "sip:example.com", None, 70);
        assert_eq!(
            decide_for(&inv, &[], false),
            Decision::Reply(404, "Not Found")
        );
    }
}
