//! What a Lookup's bindings become, decided without I/O: 404 when there are
//! none; in redirect mode a 302 listing them best first (a CANCEL, which
//! has nothing to redirect, gets 200); in proxy mode the best contact, with
//! the next hop and the route set it is reached through.

use locsvc_proto::v1::Binding;

use crate::envelope::Transport;
use crate::settings::Mode;

/// Where a looked-up request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Answer with this status and reason phrase.
    Answer(u16, &'static str),
    /// Answer 302 with the bindings (`redirect_contacts`).
    Redirect,
    /// Retarget to `contact` and forward to `next`, with `path` pre-loaded
    /// as Route (RFC 3327 §5.3).
    Forward {
        contact: String,
        next: String,
        path: Vec<String>,
    },
}

/// What `bindings` (best first) mean for a `method` request in `mode`.
pub fn after_lookup(mode: Mode, method: &str, bindings: &[Binding]) -> Target {
    let Some(best) = bindings.first() else {
        return Target::Answer(404, "Not Found");
    };
    match mode {
        Mode::Redirect if method == "CANCEL" => Target::Answer(200, "OK"),
        Mode::Redirect => Target::Redirect,
        Mode::Proxy => {
            let (next, path) = next_hop(best);
            Target::Forward {
                contact: best.contact.clone(),
                next,
                path,
            }
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
pub fn redirect_contacts(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, received: &str, path: &[&str]) -> Binding {
        Binding {
            contact: contact.into(),
            received: received.into(),
            path: path.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn no_binding_is_404_and_a_cancel_in_redirect_mode_is_200() {
        assert_eq!(
            after_lookup(Mode::Proxy, "INVITE", &[]),
            Target::Answer(404, "Not Found")
        );
        let b = [binding("sip:a@192.0.2.1", "", &[])];
        assert_eq!(
            after_lookup(Mode::Redirect, "CANCEL", &b),
            Target::Answer(200, "OK")
        );
        assert_eq!(after_lookup(Mode::Redirect, "INVITE", &b), Target::Redirect);
    }

    #[test]
    fn the_next_hop_is_the_first_path_then_received_then_the_contact() {
        let forward = |b: Binding| after_lookup(Mode::Proxy, "INVITE", &[b]);
        assert_eq!(
            forward(binding(
                "sip:a@10.0.0.1",
                "sip:203.0.113.1:4000",
                &["sip:p1;lr", "sip:p2;lr"]
            )),
            Target::Forward {
                contact: "sip:a@10.0.0.1".into(),
                next: "sip:p1;lr".into(),
                path: vec!["sip:p1;lr".into(), "sip:p2;lr".into()],
            }
        );
        let Target::Forward { next, path, .. } =
            forward(binding("sip:a@10.0.0.1", "sip:203.0.113.1:4000", &[]))
        else {
            panic!("not a forward");
        };
        assert_eq!((next.as_str(), path.len()), ("sip:203.0.113.1:4000", 0));
        let Target::Forward { next, .. } = forward(binding("sip:a@10.0.0.1", "", &[])) else {
            panic!("not a forward");
        };
        assert_eq!(next, "sip:a@10.0.0.1");
    }

    #[test]
    fn a_udp_redirect_keeps_the_contacts_that_fit_and_always_the_best_one() {
        let many: Vec<Binding> = (0..100)
            .map(|i| binding(&format!("sip:user{i}@192.0.2.{i}:5060"), "", &[]))
            .collect();
        let udp = redirect_contacts(&many, 400, Transport::Udp);
        let size: usize = udp.iter().map(|(_, v)| v.len() + 11).sum();
        assert!(size + 400 <= MAX_UDP_REDIRECT && udp.len() < 100);
        assert_eq!(udp[0].1, "<sip:user0@192.0.2.0:5060>");
        assert_eq!(redirect_contacts(&many, 400, Transport::Tcp).len(), 100);
        assert_eq!(redirect_contacts(&many[..1], 5000, Transport::Udp).len(), 1);
    }
}
