//! Address facts the routing rules need, pure where possible: CIDR ranges
//! (`trusted`), private and public addresses (NAT detection), whether an
//! address is this host's own (loop prevention, also behind a 0.0.0.0 bind),
//! and a host name turned into an address within a bounded time.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

/// An address range, `addr/len` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| ())?)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| ())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = len.unwrap_or(max);
        if len > max {
            return Err(());
        }
        Ok(Self { net, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

impl Cidr {
    /// Whether `ip` lies in this range (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), self.len),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], len: u8) -> bool {
    let (whole, bits) = ((len / 8) as usize, len % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    bits == 0 || {
        let mask = 0xffu8 << (8 - bits);
        a[whole] & mask == b[whole] & mask
    }
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`, what a dual-stack socket reports)
/// as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Addresses that are not routable on the Internet: RFC 1918, CGNAT
/// (100.64/10), link-local, loopback, unique-local IPv6. A Contact in such a
/// range sent from a public source is behind NAT.
pub fn is_private(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private()
                || a.is_loopback()
                || a.is_link_local()
                || a.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            let s = a.segments();
            a.is_loopback()
                || a.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
        }
    }
}

/// Whether an address belongs to this host: the kernel lets a socket bind
/// only to its own addresses (and to the unspecified one, which also
/// reaches this host). Answers are cached; the set of a host's addresses
/// changes rarely and a stale answer errs on one request.
#[derive(Debug, Default)]
pub struct LocalAddrs {
    cache: Mutex<HashMap<IpAddr, bool>>,
}

/// Most addresses remembered; past it the cache starts over (a flood of
/// distinct next hops must not grow memory).
const CACHE_MAX: usize = 4096;

impl LocalAddrs {
    /// True when packets to `ip` reach this host.
    pub fn is_local(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        if ip.is_unspecified() || ip.is_loopback() {
            return true;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = cache.get(&ip) {
            return *v;
        }
        let local = std::net::UdpSocket::bind((ip, 0)).is_ok();
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(ip, local);
        local
    }
}

/// The unspecified address of `ip`'s family.
pub fn unspecified_like(ip: IpAddr) -> IpAddr {
    if ip.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

/// Longest a DNS lookup may take: well under the UAC's T1 (500 ms).
const RESOLVE_TIMEOUT: Duration = Duration::from_millis(300);

/// Resolves a host to one address, bounded in time: DNS must never hold a
/// handler longer than the UAC's retransmission timer.
pub async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let lookup = tokio::net::lookup_host((host.to_string(), port));
    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(mut addrs)) => addrs.next(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match_by_prefix() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(c.contains(ip("::ffff:10.1.0.9")), "v4-mapped counts");
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "2001:db8::/33".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:7fff::1")));
        assert!(!v6.contains(ip("2001:db8:8000::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "host",
            "10.0.0.0/x",
            "10.0.0/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn private_ranges_are_recognised() {
        for p in [
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "127.0.0.1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.0.1",
        ] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in ["203.0.113.1", "8.8.8.8", "100.128.0.1", "2001:db8::1"] {
            assert!(!is_private(ip(p)), "{p}");
        }
    }

    #[test]
    fn this_hosts_addresses_are_local_and_others_are_not() {
        let l = LocalAddrs::default();
        assert!(l.is_local(ip("127.0.0.1")));
        assert!(l.is_local(ip("127.0.0.2")), "all of 127/8 reaches us");
        assert!(l.is_local(ip("0.0.0.0")));
        assert!(l.is_local(ip("::")));
        // TEST-NET-3 is never assigned to a test machine.
        assert!(!l.is_local(ip("203.0.113.77")));
    }
}
