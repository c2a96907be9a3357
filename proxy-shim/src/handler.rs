//! The transport-independent core: one parsed message in, the datagrams or
//! stream writes to send out. Transports (`transport`) own sockets; this
//! module owns the decision of what to answer and where to send it, and
//! delegates REGISTER to `register` and everything else to `forward`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;

use crate::auth::{Authenticator, Gate};
use crate::hop_mac::{Hop, HopKey};
use crate::locsvc_client::LocsvcClient;
use crate::metrics::Metrics;
use crate::netaddr::LocalAddrs;
use crate::settings::{Mode, Settings};
use crate::sip::{self, Request, Response, ViaView};

/// Prefix of every To tag the shim puts on a response it generates, so the
/// ACK for such a (non-2xx) response is recognised and absorbed statelessly.
pub const TAG_PREFIX: &str = "ps-";
/// Prefix of every branch the shim puts in its own Via (after the RFC 3261
/// magic cookie), so responses are only relayed through a Via we added.
pub const BRANCH_PREFIX: &str = "z9hG4bK-ps-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
pub struct Inbound {
    pub transport: Transport,
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

/// Bytes to send, and where.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub transport: Transport,
    pub dest: SocketAddr,
    pub bytes: Bytes,
}

/// Shared state of the request handlers.
#[derive(Debug)]
pub struct Core {
    pub settings: Settings,
    pub client: LocsvcClient,
    pub metrics: Arc<Metrics>,
    /// The bound address (UDP and TCP).
    pub local: SocketAddr,
    /// Host and port we put in our Via: the `advertise` setting, else the
    /// bound address. Both this and `local` name us in Routes and URIs.
    pub advertised: (String, u16),
    /// Keys the MAC in our Via branches (`hop_mac`).
    pub hop_key: HopKey,
    /// Which addresses are this host's (a 0.0.0.0 bind answers on all).
    pub local_addrs: LocalAddrs,
    /// Digest authentication (`auth`).
    pub auth: Authenticator,
}

impl Core {
    pub fn new(
        settings: Settings,
        client: LocsvcClient,
        metrics: Arc<Metrics>,
        local: SocketAddr,
    ) -> Self {
        let advertised = match &settings.advertise {
            Some(a) => (a.host.clone(), a.port.unwrap_or(local.port())),
            None => (local.ip().to_string(), local.port()),
        };
        let auth = Authenticator::new(&settings);
        Self {
            settings,
            client,
            metrics,
            local,
            advertised,
            hop_key: HopKey::random(),
            local_addrs: LocalAddrs::default(),
            auth,
        }
    }

    pub fn mode(&self) -> Mode {
        self.settings.mode
    }

    /// Handles one request: sanity, authentication, then REGISTER goes to
    /// the registrar and the rest is routed.
    pub async fn handle_request(&self, req: Request, src: Inbound) -> Vec<Outbound> {
        let method = req.method();
        self.metrics.request(&method);
        let is_ack = method == "ACK";
        let checked = match crate::sanity::check(&req, self.settings.max_forwards, |h, p| {
            self.is_local(h, p)
        }) {
            Ok(c) => c,
            Err(_) if is_ack => return Vec::new(),
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
        if !self.is_our_via(&top) {
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
            transport: via_transport(&next),
            dest,
            bytes: resp.to_bytes(),
        })
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
        let ip = crate::netaddr::canonical(ip);
        if self.local.ip().is_unspecified() {
            self.local_addrs.is_local(ip)
        } else {
            ip == crate::netaddr::canonical(self.local.ip()) || ip.is_unspecified()
        }
    }

    /// A response generated here, sent back where the request came from.
    pub fn reply(
        &self,
        req: &Request,
        src: Inbound,
        code: u16,
        reason: &str,
        extra: &[(&str, String)],
    ) -> Vec<Outbound> {
        let tag = to_tag(req);
        match sip::response(req, code, reason, &tag, extra) {
            Some(bytes) => {
                self.metrics.response(&req.method(), code);
                vec![Outbound {
                    transport: src.transport,
                    dest: reply_destination(req, src),
                    bytes,
                }]
            }
            None => {
                self.metrics.dropped("unanswerable");
                tracing::info!(peer = %src.peer, code, "request lacks Via/From/To/Call-ID/CSeq; cannot answer");
                Vec::new()
            }
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

/// A To tag derived from the request, so a retransmission gets the same tag.
fn to_tag(req: &Request) -> String {
    let key = format!(
        "{}|{}|{}",
        req.call_id().unwrap_or_default(),
        req.from_tag().unwrap_or_default(),
        req.top_via()
            .ok()
            .and_then(|v| v.branch)
            .unwrap_or_default()
    );
    format!(
        "{TAG_PREFIX}{:016x}",
        xxhash_rust::xxh3::xxh3_64(key.as_bytes())
    )
}

/// Where a generated response goes: on the connection for TCP, and to the
/// packet's source address *and port* for UDP, as if every request had
/// asked for `rport` (RFC 3581). The Via port of a request without `rport`
/// would let a sender aim our answers at any port.
fn reply_destination(_req: &Request, src: Inbound) -> SocketAddr {
    src.peer
}

fn via_transport(v: &ViaView) -> Transport {
    if v.transport == "TCP" {
        Transport::Tcp
    } else {
        Transport::Udp
    }
}

/// Where a relayed response goes (transport, host, port): `received` (or
/// sent-by host), at `rport` (or sent-by port, or 5060).
pub fn return_hop(v: &ViaView) -> (String, String, u16) {
    let host = v.received.clone().unwrap_or_else(|| v.host.clone());
    let port = match v.rport {
        Some(Some(p)) => p,
        _ => v.port.unwrap_or(5060),
    };
    (v.transport.clone(), host, port)
}

/// Resolves a host to one address, bounded in time: DNS must never hold a
/// handler longer than the UAC's retransmission timer.
pub async fn resolve(host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.trim_matches(['[', ']']);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let lookup = tokio::net::lookup_host((host.to_string(), port));
    match tokio::time::timeout(std::time::Duration::from_millis(300), lookup).await {
        Ok(Ok(mut addrs)) => addrs.next(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Advertise;

    fn core(listen: &str, advertise: Option<&str>) -> Core {
        let settings = Settings {
            advertise: advertise.map(|a| a.parse::<Advertise>().expect("advertise")),
            ..Settings::default()
        };
        // Lazy channels: nothing connects in these tests.
        let client = LocsvcClient::new(
            &settings.locsvc,
            settings.locsvc_timeout,
            None,
            String::new(),
        )
        .expect("client");
        let local = listen.parse().expect("listen");
        Core::new(settings, client, Arc::new(Metrics::new()), local)
    }

    #[tokio::test]
    async fn our_via_carries_the_advertised_host_and_the_bound_port_by_default() {
        let c = core("0.0.0.0:5070", Some("203.0.113.5"));
        assert_eq!(
            c.our_via(Transport::Udp, "z9hG4bK-ps-1"),
            "SIP/2.0/UDP 203.0.113.5:5070;branch=z9hG4bK-ps-1"
        );
        let c = core("0.0.0.0:5070", Some("sip.example.com:5080"));
        assert_eq!(
            c.our_via(Transport::Tcp, "z9hG4bK-ps-1"),
            "SIP/2.0/TCP sip.example.com:5080;branch=z9hG4bK-ps-1"
        );
        let c = core("[::]:5070", Some("2001:db8::1"));
        assert_eq!(
            c.our_via(Transport::Udp, "b"),
            "SIP/2.0/UDP [2001:db8::1]:5070;branch=b"
        );
    }

    #[tokio::test]
    async fn without_advertise_our_via_carries_the_bound_address() {
        let c = core("127.0.0.1:5070", None);
        assert_eq!(
            c.our_via(Transport::Udp, "b"),
            "SIP/2.0/UDP 127.0.0.1:5070;branch=b"
        );
    }

    #[tokio::test]
    async fn the_advertised_address_and_the_bound_one_both_name_us() {
        let c = core("0.0.0.0:5070", Some("SIP.example.com"));
        assert!(c.is_local("sip.example.com", Some(5070)));
        assert!(!c.is_local("sip.example.com", Some(5060)));
        assert!(c.is_local("127.0.0.1", Some(5070)));
        assert!(!c.is_local("other.example.com", Some(5070)));
        let c = core("10.0.0.2:5060", Some("203.0.113.5:5080"));
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
