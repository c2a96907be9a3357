//! NAT detection for a REGISTER, per contact: whether calls to a contact
//! must go to the address the REGISTER came from (`received`) instead of the
//! Contact address. Detected, not assumed: a REGISTER may come from someone
//! else than the contact it registers (RFC 3261 §10.2 third-party
//! registration, an edge proxy), and then the Contact is right.
//!
//! In `auto` mode a contact is behind NAT when
//! - the top Via's sent-by is not the packet's source (the UA wrote an
//!   address the packet did not come from: it sits behind a NAT; over TCP
//!   the address alone) and the contact is that same address the UA wrote,
//!   or
//! - the contact is a private address (RFC 1918, CGNAT, ULA, …) and the
//!   packet came from a public one.

use std::net::SocketAddr;

use crate::netaddr::is_private;
use crate::settings::NatMode;
use crate::sip::{UriView, ViaView};

/// The `received` value for a contact reached through `src`, or None when
/// the contact is reached at its own address.
pub fn received_for(
    mode: NatMode,
    contact: Option<&UriView>,
    via: &ViaView,
    src: SocketAddr,
    tcp: bool,
) -> Option<String> {
    let natted = match mode {
        NatMode::Never => false,
        NatMode::Always => true,
        NatMode::Auto => contact.is_some_and(|c| behind_nat(c, via, src, tcp)),
    };
    natted.then(|| {
        let mut r = format!(
            "sip:{}:{}",
            crate::sip::bracket(&src.ip().to_string()),
            src.port()
        );
        if tcp {
            r.push_str(";transport=tcp");
        }
        r
    })
}

fn behind_nat(c: &UriView, via: &ViaView, src: SocketAddr, tcp: bool) -> bool {
    let src_ip = crate::netaddr::canonical(src.ip());
    let via_port = via.port.unwrap_or(5060);
    let via_ip = via
        .host
        .trim_matches(['[', ']'])
        .parse()
        .ok()
        .map(crate::netaddr::canonical);
    // A name in sent-by cannot be compared with the source: no Via evidence.
    // A TCP connection's source port is always ephemeral (sent-by names the
    // listening port), so over TCP only the address counts.
    let via_natted = via_ip.is_some_and(|ip| ip != src_ip || (!tcp && via_port != src.port()));
    let default_port = if c.scheme == "sips" { 5061 } else { 5060 };
    let contact_is_sent_by = match (c.ip.map(crate::netaddr::canonical), via_ip) {
        (Some(cip), Some(vip)) => cip == vip && c.port.unwrap_or(default_port) == via_port,
        (None, None) => c.host.eq_ignore_ascii_case(&via.host),
        _ => false,
    };
    let private_from_public = c.ip.is_some_and(|ip| is_private(ip) && !is_private(src_ip));
    (via_natted && contact_is_sent_by) || private_from_public
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(host: &str, port: u16) -> ViaView {
        ViaView {
            transport: "UDP".into(),
            host: host.into(),
            port: Some(port),
            branch: Some("z9hG4bK-1".into()),
            rport: Some(None),
            received: None,
        }
    }

    fn at(uri: &str, v: &ViaView, src: &str) -> Option<String> {
        received_for(
            NatMode::Auto,
            UriView::parse(uri).as_ref(),
            v,
            src.parse().unwrap(),
            false,
        )
    }

    #[test]
    fn a_phone_behind_nat_is_reached_through_the_source() {
        let v = via("192.168.1.5", 5060);
        assert_eq!(
            at("sip:a@192.168.1.5:5060", &v, "203.0.113.1:40000").as_deref(),
            Some("sip:203.0.113.1:40000")
        );
    }

    #[test]
    fn a_third_party_registration_keeps_the_contact() {
        // An edge at 198.51.100.9 registers a phone reachable at its own
        // public address: sent-by is the source, so nothing is NATed.
        let v = via("198.51.100.9", 5060);
        assert_eq!(at("sip:a@203.0.113.50:5060", &v, "198.51.100.9:5060"), None);
        // Nor is a second contact pointing elsewhere.
        let natted_v = via("192.168.1.5", 5060);
        assert_eq!(
            at("sip:a@203.0.113.50:5060", &natted_v, "203.0.113.1:40000"),
            None,
            "a contact that is not the UA's own written address"
        );
    }

    #[test]
    fn a_private_contact_from_a_public_source_is_natted() {
        let v = via("203.0.113.1", 40000);
        assert!(at("sip:a@10.0.0.7:5062", &v, "203.0.113.1:40000").is_some());
        // Private to private (the same LAN, or loopback tests): no NAT.
        let v = via("10.0.0.7", 5062);
        assert_eq!(at("sip:a@10.0.0.7:5062", &v, "10.0.0.7:5062"), None);
    }

    #[test]
    fn over_tcp_the_ephemeral_source_port_is_no_evidence_but_the_address_is() {
        let tcp = |uri: &str, v: &ViaView, src: &str| {
            received_for(
                NatMode::Auto,
                UriView::parse(uri).as_ref(),
                v,
                src.parse().unwrap(),
                true,
            )
        };
        let v = via("198.51.100.4", 5060);
        assert_eq!(
            tcp("sip:a@198.51.100.4:5060", &v, "198.51.100.4:51234"),
            None
        );
        let v = via("192.168.1.5", 5060);
        assert!(tcp("sip:a@192.168.1.5:5060", &v, "203.0.113.1:51234").is_some());
    }

    #[test]
    fn modes_always_and_never_override_detection() {
        let v = via("198.51.100.9", 5060);
        let c = UriView::parse("sip:a@203.0.113.50").unwrap();
        let src = "198.51.100.9:5060".parse().unwrap();
        assert!(
            received_for(NatMode::Always, Some(&c), &v, src, true)
                .is_some_and(|r| r.ends_with(";transport=tcp"))
        );
        let v = via("192.168.1.5", 5060);
        let c = UriView::parse("sip:a@192.168.1.5").unwrap();
        assert_eq!(
            received_for(
                NatMode::Never,
                Some(&c),
                &v,
                "203.0.113.1:1".parse().unwrap(),
                false
            ),
            None
        );
    }
}
