//! Plain values read out of a message: a URI's routing parts (`UriView`),
//! a Via hop (`ViaView`) and a REGISTER's Contacts. Nothing here borrows
//! from the SIP library, so the layers above never see its types.

use std::net::IpAddr;

use bytes::Bytes;
use sipx_sip::{Uri, Via};

/// The parts of a SIP URI routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriView {
    /// The scheme, lower-cased (`sip`, `sips`).
    pub scheme: String,
    /// The user part, as written.
    pub user: Option<String>,
    /// Host without IPv6 brackets.
    pub host: String,
    /// The host when it is an IP address.
    pub ip: Option<IpAddr>,
    /// The port, when the URI gives one.
    pub port: Option<u16>,
    /// `transport` URI parameter, lower-cased.
    pub transport: Option<String>,
}

impl UriView {
    pub(super) fn of(uri: &Uri) -> Option<Self> {
        let host = uri.host()?;
        let ip = match host {
            sipx_sip::Host::Ip(ip) => Some(*ip),
            sipx_sip::Host::Name(_) => None,
        };
        Some(Self {
            scheme: String::from_utf8_lossy(uri.scheme().as_bytes()).to_ascii_lowercase(),
            user: uri.user().map(|u| String::from_utf8_lossy(u).into_owned()),
            host: String::from_utf8_lossy(&host.to_bytes()).into_owned(),
            ip,
            port: uri.port(),
            transport: uri
                .transport()
                .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase()),
        })
    }

    /// Parses a URI string (no angle brackets).
    pub fn parse(s: &str) -> Option<Self> {
        Self::of(&Uri::parse(Bytes::copy_from_slice(s.as_bytes())).ok()?)
    }

    /// `host` as written in a URI or Via (IPv6 bracketed).
    pub fn host_for_uri(&self) -> String {
        bracket(&self.host)
    }

    /// The address-of-record form `scheme:user@host` (no port, no params),
    /// which is what a registrar keys bindings by (RFC 3261 §10.3 step 5).
    pub fn aor(&self) -> Option<String> {
        let user = self.user.as_ref()?;
        Some(format!("{}:{}@{}", self.scheme, user, self.host_for_uri()))
    }
}

/// Writes an IPv6 literal with brackets, anything else as is.
pub fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// One Contact of a REGISTER, with the parameters locsvc stores.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactEntry {
    /// The URI without angle brackets or header parameters.
    pub uri: String,
    /// The `expires` parameter, when given.
    pub expires: Option<i64>,
    /// The `q` parameter, when given.
    pub q: Option<f32>,
    /// `+sip.instance` as sent (quotes removed), e.g. `<urn:uuid:...>`.
    pub instance: String,
    /// `reg-id` (RFC 5626), 0 when absent.
    pub reg_id: u32,
    /// The URI's routing parts; None for a URI without a host.
    pub view: Option<UriView>,
}

/// The Contact header field(s) of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Contacts {
    /// No Contact header (a REGISTER that only queries).
    Absent,
    /// `Contact: *` (RFC 3261 §10.2.2).
    Wildcard,
    /// One entry per contact, in order.
    List(Vec<ContactEntry>),
}

/// The topmost Via hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaView {
    /// Upper-cased transport, e.g. `UDP`.
    pub transport: String,
    /// The sent-by host.
    pub host: String,
    /// The sent-by port, when given.
    pub port: Option<u16>,
    /// The `branch` parameter, when present.
    pub branch: Option<String>,
    /// `rport` present without value = `Some(None)` (RFC 3581).
    pub rport: Option<Option<u16>>,
    /// The `received` parameter, when present.
    pub received: Option<String>,
}

impl ViaView {
    pub(super) fn of(v: &Via) -> Self {
        let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        Self {
            transport: s(&v.transport).to_ascii_uppercase(),
            host: s(&v.host.to_bytes()),
            port: v.port,
            branch: v.branch().map(s),
            rport: v
                .rport()
                .map(|p| p.and_then(|p| std::str::from_utf8(p).ok()?.parse().ok())),
            received: v.received().map(s),
        }
    }
}
