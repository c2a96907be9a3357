//! What names this shim, and the marks it leaves on what it sends: the
//! bound and advertised addresses that Routes, Request-URIs, Vias and next
//! hops are compared with, the Via we push, and the prefixes of our To tags
//! and Via branches. Pure but for `LocalAddrs`, which asks the kernel.

use std::net::{IpAddr, SocketAddr};

use crate::envelope::Transport;
use crate::netaddr::{self, LocalAddrs};
use crate::settings::Advertise;
use crate::sip::{self, ViaView};

/// Prefix of every To tag the shim puts on a response it generates, so the
/// ACK for such a (non-2xx) response is recognised and absorbed statelessly.
pub const TAG_PREFIX: &str = "ps-";
/// Prefix of every branch the shim puts in its own Via (after the RFC 3261
/// magic cookie), so responses are only relayed through a Via we added.
pub const BRANCH_PREFIX: &str = "z9hG4bK-ps-";

/// The addresses that name this shim.
#[derive(Debug)]
pub struct Identity {
    /// The bound address (UDP and TCP).
    pub local: SocketAddr,
    /// Host and port we put in our Via: the `advertise` setting, else the
    /// bound address. Both this and `local` name us in Routes and URIs.
    pub advertised: (String, u16),
    /// Which addresses are this host's (a 0.0.0.0 bind answers on all).
    pub local_addrs: LocalAddrs,
}

impl Identity {
    /// The identity of a shim bound to `local`; `advertise` without a port
    /// takes the bound one.
    pub fn new(local: SocketAddr, advertise: Option<&Advertise>) -> Self {
        let advertised = match advertise {
            Some(a) => (a.host.clone(), a.port.unwrap_or(local.port())),
            None => (local.ip().to_string(), local.port()),
        };
        Self {
            local,
            advertised,
            local_addrs: LocalAddrs::default(),
        }
    }

    /// Whether `v` is a Via we added: our branch prefix and our address.
    pub fn is_our_via(&self, v: &ViaView) -> bool {
        v.branch
            .as_deref()
            .is_some_and(|b| b.starts_with(BRANCH_PREFIX))
            && self.is_local(&v.host, v.port)
    }

    /// Whether host:port names this shim: the advertised name, the bound
    /// address, or, when bound to 0.0.0.0 / [::], any address of this host.
    pub fn is_local(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.trim_matches(['[', ']']);
        let port = port.unwrap_or(5060);
        let (adv_host, adv_port) = &self.advertised;
        let advertised = port == *adv_port
            && match (host.parse::<IpAddr>(), adv_host.parse::<IpAddr>()) {
                (Ok(a), Ok(b)) => a == b,
                (Err(_), Err(_)) => host.eq_ignore_ascii_case(adv_host),
                _ => false,
            };
        let Ok(ip) = host.parse::<IpAddr>() else {
            return advertised;
        };
        advertised || (port == self.local.port() && self.answers_on(ip))
    }

    /// Whether a datagram to `dest` would reach this shim.
    pub fn is_self(&self, dest: SocketAddr) -> bool {
        dest.port() == self.local.port() && self.answers_on(dest.ip())
    }

    fn answers_on(&self, ip: IpAddr) -> bool {
        let ip = netaddr::canonical(ip);
        if self.local.ip().is_unspecified() {
            self.local_addrs.is_local(ip)
        } else {
            ip == netaddr::canonical(self.local.ip()) || ip.is_unspecified()
        }
    }

    /// The Via we push on a forwarded request.
    pub fn our_via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {}:{};branch={branch}",
            transport.as_str().to_ascii_uppercase(),
            sip::bracket(&self.advertised.0),
            self.advertised.1
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(listen: &str, advertise: Option<&str>) -> Identity {
        let advertise = advertise.map(|a| a.parse::<Advertise>().expect("advertise"));
        Identity::new(listen.parse().expect("listen"), advertise.as_ref())
    }

    #[test]
    fn our_via_carries_the_advertised_host_and_the_bound_port_by_default() {
        let c = identity("0.0.0.0:5070", Some("203.0.113.5"));
        assert_eq!(
            c.our_via(Transport::Udp, "z9hG4bK-ps-1"),
            "SIP/2.0/UDP 203.0.113.5:5070;branch=z9hG4bK-ps-1"
        );
        let c = identity("0.0.0.0:5070", Some("sip.example.com:5080"));
        assert_eq!(
            c.our_via(Transport::Tcp, "z9hG4bK-ps-1"),
            "SIP/2.0/TCP sip.example.com:5080;branch=z9hG4bK-ps-1"
        );
        let c = identity("[::]:5070", Some("2001:db8::1"));
        assert_eq!(
            c.our_via(Transport::Udp, "b"),
            "SIP/2.0/UDP [2001:db8::1]:5070;branch=b"
        );
    }

    #[test]
    fn without_advertise_our_via_carries_the_bound_address() {
        let c = identity("127.0.0.1:5070", None);
        assert_eq!(
            c.our_via(Transport::Udp, "b"),
            "SIP/2.0/UDP 127.0.0.1:5070;branch=b"
        );
    }

    #[test]
    fn the_advertised_address_and_the_bound_one_both_name_us() {
        let c = identity("0.0.0.0:5070", Some("SIP.example.com"));
        assert!(c.is_local("sip.example.com", Some(5070)));
        assert!(!c.is_local("sip.example.com", Some(5060)));
        assert!(c.is_local("127.0.0.1", Some(5070)));
        assert!(!c.is_local("other.example.com", Some(5070)));
        let c = identity("10.0.0.2:5060", Some("203.0.113.5:5080"));
        assert!(c.is_local("203.0.113.5", Some(5080)));
        assert!(!c.is_local("203.0.113.5", None));
        assert!(c.is_local("10.0.0.2", None));
        // A response comes back through a Via naming the advertised address.
        let via = ViaView {
            transport: "UDP".into(),
            host: "203.0.113.5".into(),
            port: Some(5080),
            branch: Some(format!("{BRANCH_PREFIX}00")),
            rport: None,
            received: None,
        };
        assert!(c.is_our_via(&via));
    }
}
