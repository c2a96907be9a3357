//! The SIP facade: the only module that knows which SIP library parses and
//! serializes messages (today `sipx-sip`, see DESIGN.md). Everything above it
//! sees plain Rust values (`String`, `u32`, `SocketAddr`) and a few opaque
//! message types, so the library can be swapped by rewriting this module.
//!
//! It owns: framing (datagram and stream, with size limits checked before
//! allocation), reading the headers a registrar and a stateless proxy need,
//! the edits a stateless proxy makes (Request-URI, Via, Route,
//! Max-Forwards), and building responses per RFC 3261 §8.2.6.
//! It does not own: registrar rules (locsvc), routing decisions (`forward`).

use std::net::IpAddr;

use bytes::Bytes;
use sipx_sip::headers::address::{ContactValue, Path, Route, To};
use sipx_sip::headers::misc::{CallId, Expires, MaxForwards};
use sipx_sip::{CSeq, Header, HeaderName, Limits, Message, ResponseBuilder, StatusCode, Uri, Via};

/// Largest SIP message accepted on any transport (checked before any
/// allocation of that size: a 12-byte `Content-Length` must not reserve memory).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Why bytes are not a SIP message. Such input is dropped (UDP) or closes
/// the connection (TCP): without a parsed Via there is nowhere to answer.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("message larger than a configured limit: {0}")]
    TooLarge(String),
    #[error("not a SIP message: {0}")]
    Malformed(String),
}

impl From<sipx_sip::error::ParseError> for ParseError {
    fn from(e: sipx_sip::error::ParseError) -> Self {
        match e {
            sipx_sip::error::ParseError::Limit { .. } => ParseError::TooLarge(e.to_string()),
            other => ParseError::Malformed(other.to_string()),
        }
    }
}

/// A header that is present but unusable, or missing when required: the
/// request gets a 400 whose reason phrase names the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    #[error("Missing {0} header")]
    Missing(&'static str),
    #[error("Bad {0} header")]
    Bad(&'static str),
}

fn limits() -> Limits {
    Limits {
        max_message_bytes: MAX_MESSAGE_BYTES,
        max_body_bytes: MAX_MESSAGE_BYTES,
        ..Limits::datagram()
    }
}

/// A parsed message: a request to handle or a response to relay.
#[derive(Debug)]
pub enum Parsed {
    Request(Request),
    Response(Response),
}

fn wrap(m: Message) -> Parsed {
    match m {
        Message::Request(r) => Parsed::Request(Request(r)),
        Message::Response(r) => Parsed::Response(Response(r)),
    }
}

/// Parses one datagram (RFC 3261 §18.3: one message per datagram; trailing
/// octets are ignored).
pub fn parse_datagram(buf: Bytes) -> Result<Parsed, ParseError> {
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge(format!("{} bytes", buf.len())));
    }
    Ok(wrap(sipx_sip::parse_datagram(buf, &limits())?))
}

/// Frames messages out of a TCP byte stream by Content-Length. An error is
/// fatal for the connection: framing is lost and guessing where the next
/// message starts is how a body becomes a request.
#[derive(Debug)]
pub struct StreamFramer(sipx_sip::StreamParser);

impl Default for StreamFramer {
    fn default() -> Self {
        Self(sipx_sip::StreamParser::new(limits()))
    }
}

impl StreamFramer {
    /// Appends bytes; returns the completed messages and how many CRLF pairs
    /// were seen between messages (RFC 5626 §4.4.1: CRLFCRLF is a ping).
    pub fn push(&mut self, chunk: &[u8]) -> Result<(Vec<Parsed>, usize), ParseError> {
        let msgs = self.0.push(chunk)?;
        let keepalives = self.0.take_keepalives();
        Ok((msgs.into_iter().map(wrap).collect(), keepalives))
    }

    /// Bytes buffered toward an incomplete message.
    pub fn pending(&self) -> usize {
        self.0.pending()
    }
}

/// The parts of a SIP URI routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UriView {
    pub scheme: String,
    pub user: Option<String>,
    /// Host without IPv6 brackets.
    pub host: String,
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// `transport` URI parameter, lower-cased.
    pub transport: Option<String>,
}

impl UriView {
    fn of(uri: &Uri) -> Option<Self> {
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
    pub expires: Option<i64>,
    pub q: Option<f32>,
    /// `+sip.instance` as sent (quotes removed), e.g. `<urn:uuid:...>`.
    pub instance: String,
    pub reg_id: u32,
    pub view: Option<UriView>,
}

/// The Contact header field(s) of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Contacts {
    Absent,
    /// `Contact: *` (RFC 3261 §10.2.2).
    Wildcard,
    List(Vec<ContactEntry>),
}

/// The topmost Via hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaView {
    /// Upper-cased transport, e.g. `UDP`.
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    /// `rport` present without value = `Some(None)` (RFC 3581).
    pub rport: Option<Option<u16>>,
    pub received: Option<String>,
}

impl ViaView {
    fn of(v: &Via) -> Self {
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn header_name(name: &str) -> HeaderName {
    HeaderName::parse(&Bytes::copy_from_slice(name.as_bytes()))
}

/// A SIP request, parsed lazily: a header is only interpreted when asked for.
#[derive(Debug, Clone)]
pub struct Request(sipx_sip::Request);

impl Request {
    /// The method as written, e.g. `REGISTER`.
    pub fn method(&self) -> String {
        text(self.0.method.as_bytes())
    }

    pub fn uri_string(&self) -> String {
        self.0.uri.to_string()
    }

    pub fn uri(&self) -> Option<UriView> {
        UriView::of(&self.0.uri)
    }

    /// The To URI and its tag.
    pub fn to(&self) -> Result<(UriView, Option<String>), HeaderProblem> {
        let to = self
            .0
            .headers
            .typed::<To>()
            .ok_or(HeaderProblem::Missing("To"))?
            .map_err(|_| HeaderProblem::Bad("To"))?;
        let view = UriView::of(&to.uri).ok_or(HeaderProblem::Bad("To"))?;
        Ok((view, to.tag().map(text)))
    }

    /// The From URI.
    pub fn from_uri(&self) -> Result<UriView, HeaderProblem> {
        let from = self
            .0
            .headers
            .typed::<sipx_sip::headers::address::From>()
            .ok_or(HeaderProblem::Missing("From"))?
            .map_err(|_| HeaderProblem::Bad("From"))?;
        UriView::of(&from.uri).ok_or(HeaderProblem::Bad("From"))
    }

    /// Every row of header `name`, as written (e.g. several Authorization
    /// rows for different realms).
    pub fn header_rows(&self, name: &str) -> Vec<String> {
        self.0
            .headers
            .get_all(&header_name(name))
            .map(|h| text(&h.value()))
            .collect()
    }

    /// The From tag, if any.
    pub fn from_tag(&self) -> Option<String> {
        let from = self
            .0
            .headers
            .typed::<sipx_sip::headers::address::From>()?
            .ok()?;
        from.tag().map(text)
    }

    pub fn call_id(&self) -> Result<String, HeaderProblem> {
        let c = self
            .0
            .headers
            .typed::<CallId>()
            .ok_or(HeaderProblem::Missing("Call-ID"))?
            .map_err(|_| HeaderProblem::Bad("Call-ID"))?;
        Ok(text(&c.0))
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Result<(u32, String), HeaderProblem> {
        let c = self
            .0
            .headers
            .typed::<CSeq>()
            .ok_or(HeaderProblem::Missing("CSeq"))?
            .map_err(|_| HeaderProblem::Bad("CSeq"))?;
        Ok((c.sequence, text(c.method.as_bytes())))
    }

    pub fn expires(&self) -> Result<Option<u32>, HeaderProblem> {
        self.0
            .headers
            .typed::<Expires>()
            .map(|r| r.map(|e| e.0).map_err(|_| HeaderProblem::Bad("Expires")))
            .transpose()
    }

    pub fn max_forwards(&self) -> Result<Option<u32>, HeaderProblem> {
        self.0
            .headers
            .typed::<MaxForwards>()
            .map(|r| {
                r.map(|m| u32::from(m.0))
                    .map_err(|_| HeaderProblem::Bad("Max-Forwards"))
            })
            .transpose()
    }

    /// The first value of a header, unfolded and trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.0.headers.value(&header_name(name)).map(|v| text(&v))
    }

    /// Whether a token-list header (`Supported`, `Require`) lists `token`
    /// in any of its rows, case-insensitively.
    pub fn lists_token(&self, name: &str, token: &str) -> bool {
        let name = header_name(name);
        self.0.headers.get_all(&name).any(|h| {
            text(&h.value())
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    }

    /// Every Contact, comma-joined and folded rows included, in wire order.
    pub fn contacts(&self) -> Result<Contacts, HeaderProblem> {
        let mut list = Vec::new();
        let mut wildcard = false;
        for c in self.0.headers.typed_all::<ContactValue>() {
            match c.map_err(|_| HeaderProblem::Bad("Contact"))? {
                ContactValue::Wildcard => wildcard = true,
                ContactValue::Address(a) => {
                    let param = |n: &str| a.param(n).map(text);
                    let expires = param("expires")
                        .map(|v| v.trim().parse::<i64>())
                        .transpose()
                        .map_err(|_| HeaderProblem::Bad("Contact"))?;
                    let q = param("q")
                        .map(|v| v.trim().parse::<f32>())
                        .transpose()
                        .map_err(|_| HeaderProblem::Bad("Contact"))?;
                    let reg_id = param("reg-id")
                        .map(|v| v.trim().parse::<u32>())
                        .transpose()
                        .map_err(|_| HeaderProblem::Bad("Contact"))?
                        .unwrap_or(0);
                    list.push(ContactEntry {
                        uri: a.uri.to_string(),
                        expires,
                        q,
                        instance: param("+sip.instance").unwrap_or_default(),
                        reg_id,
                        view: UriView::of(&a.uri),
                    });
                }
            }
        }
        // RFC 3261 §10.3 step 6: `*` must be the only Contact.
        match (wildcard, list.is_empty()) {
            (true, true) => Ok(Contacts::Wildcard),
            (true, false) => Err(HeaderProblem::Bad("Contact")),
            (false, true) => Ok(Contacts::Absent),
            (false, false) => Ok(Contacts::List(list)),
        }
    }

    /// Path URIs (RFC 3327), every row and comma-joined value, in order.
    pub fn path(&self) -> Result<Vec<String>, HeaderProblem> {
        self.0
            .headers
            .typed_all::<Path>()
            .map(|p| {
                p.map(|p| p.uri.to_string())
                    .map_err(|_| HeaderProblem::Bad("Path"))
            })
            .collect()
    }

    /// Route URIs, in order.
    pub fn routes(&self) -> Result<Vec<String>, HeaderProblem> {
        self.0
            .headers
            .typed_all::<Route>()
            .map(|p| {
                p.map(|p| p.uri.to_string())
                    .map_err(|_| HeaderProblem::Bad("Route"))
            })
            .collect()
    }

    pub fn top_via(&self) -> Result<ViaView, HeaderProblem> {
        let v = self
            .0
            .headers
            .typed::<Via>()
            .ok_or(HeaderProblem::Missing("Via"))?
            .map_err(|_| HeaderProblem::Bad("Via"))?;
        Ok(ViaView::of(&v))
    }

    /// Every Via hop, top first (loop detection, RFC 3261 §16.3 step 4).
    pub fn vias(&self) -> Result<Vec<ViaView>, HeaderProblem> {
        self.0
            .headers
            .typed_all::<Via>()
            .map(|v| {
                v.map(|v| ViaView::of(&v))
                    .map_err(|_| HeaderProblem::Bad("Via"))
            })
            .collect()
    }

    // ---- edits a stateless proxy makes (RFC 3261 §16.6) ----

    /// Retargets the request (§16.6 step 2 / §16.5).
    pub fn set_uri(&mut self, uri: &str) -> Result<(), HeaderProblem> {
        let uri = Uri::parse(Bytes::copy_from_slice(uri.as_bytes()))
            .map_err(|_| HeaderProblem::Bad("Contact"))?;
        self.0
            .set_uri(uri)
            .map_err(|_| HeaderProblem::Bad("Contact"))
    }

    pub fn set_max_forwards(&mut self, n: u32) {
        set_header(&mut self.0.headers, HeaderName::MaxForwards, n.to_string());
    }

    /// Adds `received` (when the source IP differs from sent-by) and fills
    /// an empty `rport` on the topmost Via (RFC 3261 §18.2.1, RFC 3581), so
    /// responses find their way back by Via alone.
    pub fn stamp_top_via(&mut self, src: std::net::SocketAddr) {
        let Ok(top) = self.top_via() else { return };
        let src_ip = src.ip().to_string();
        let differs = top.host.parse::<IpAddr>().ok() != Some(src.ip());
        let wants_rport = top.rport == Some(None);
        if !differs && !wants_rport {
            return;
        }
        edit_first_via(&mut self.0.headers, |hop| {
            let mut parts: Vec<String> = hop
                .split(';')
                .filter(|p| {
                    let n = p.trim().to_ascii_lowercase();
                    !(n == "rport" || n.starts_with("received=") || n.starts_with("received "))
                })
                .map(str::to_string)
                .collect();
            if differs || wants_rport {
                parts.push(format!("received={src_ip}"));
            }
            if wants_rport {
                parts.push(format!("rport={}", src.port()));
            }
            parts.join(";")
        });
    }

    /// Pushes a Via on top (§16.6 step 8).
    pub fn push_via(&mut self, value: &str) -> Result<(), HeaderProblem> {
        let h = Header::build(HeaderName::Via, value.to_string())
            .map_err(|_| HeaderProblem::Bad("Via"))?;
        let at = self
            .0
            .headers
            .iter()
            .position(|h| h.name() == &HeaderName::Via)
            .unwrap_or(0);
        self.0.headers.insert(at, h);
        Ok(())
    }

    /// Removes the topmost Route URI (loose routing, §16.4: a Route naming us).
    pub fn pop_route(&mut self) {
        pop_first_value(&mut self.0.headers, &HeaderName::Route);
    }

    /// Pre-loads a route set before any existing Route (RFC 3327 §5.3:
    /// the stored Path becomes the route to the contact).
    pub fn prepend_routes(&mut self, uris: &[String]) -> Result<(), HeaderProblem> {
        let at = self
            .0
            .headers
            .iter()
            .position(|h| h.name() == &HeaderName::Route)
            .unwrap_or(self.0.headers.len());
        for (i, u) in uris.iter().enumerate() {
            let h = Header::build(HeaderName::Route, format!("<{u}>"))
                .map_err(|_| HeaderProblem::Bad("Path"))?;
            self.0.headers.insert(at + i, h);
        }
        Ok(())
    }

    pub fn to_bytes(&self) -> Bytes {
        Message::Request(self.0.clone()).to_bytes()
    }
}

fn set_header(headers: &mut sipx_sip::Headers, name: HeaderName, value: String) {
    let at = headers.iter().position(|h| h.name() == &name);
    if let Ok(h) = Header::build(name.clone(), value) {
        headers.remove_all(&name);
        match at {
            Some(i) => headers.insert(i, h),
            None => headers.push(h),
        }
    }
}

/// Replaces the first row of `name` with `new` (None removes the row),
/// keeping its position.
fn replace_first_row(headers: &mut sipx_sip::Headers, name: &HeaderName, new: Option<Header>) {
    let Some(at) = headers.iter().position(|h| h.name() == name) else {
        return;
    };
    let mut i = 0usize;
    headers.retain(|_| {
        let keep = i != at;
        i += 1;
        keep
    });
    if let Some(h) = new {
        headers.insert(at, h);
    }
}

/// Applies `f` to the first hop of the first Via row; the other hops of
/// that row go back out exactly as they arrived.
fn edit_first_via(headers: &mut sipx_sip::Headers, f: impl FnOnce(&str) -> String) {
    let Some(row) = headers.get(&HeaderName::Via).map(|h| text(&h.value())) else {
        return;
    };
    let end = sipx_sip::headers::via::first_hop_end(row.as_bytes());
    let (first, rest) = row.split_at(end.min(row.len()));
    let value = format!("{}{rest}", f(first.trim_end()));
    if let Ok(h) = Header::build(HeaderName::Via, value) {
        replace_first_row(headers, &HeaderName::Via, Some(h));
    }
}

/// Removes the first value of a list header (the first hop of its first row).
fn pop_first_value(headers: &mut sipx_sip::Headers, name: &HeaderName) {
    let Some(row) = headers.get(name).map(|h| text(&h.value())) else {
        return;
    };
    let end = sipx_sip::headers::via::first_hop_end(row.as_bytes());
    let rest = row.get(end..).unwrap_or("").trim_start_matches(',').trim();
    let new = if rest.is_empty() {
        None
    } else {
        Header::build(name.clone(), rest.to_string()).ok()
    };
    replace_first_row(headers, name, new);
}

/// A SIP response being relayed back along the Via path.
#[derive(Debug, Clone)]
pub struct Response(sipx_sip::Response);

impl Response {
    pub fn status(&self) -> u16 {
        self.0.status.code()
    }

    pub fn top_via(&self) -> Result<ViaView, HeaderProblem> {
        let v = self
            .0
            .headers
            .typed::<Via>()
            .ok_or(HeaderProblem::Missing("Via"))?
            .map_err(|_| HeaderProblem::Bad("Via"))?;
        Ok(ViaView::of(&v))
    }

    /// Removes our Via (§16.7 step 3).
    pub fn pop_via(&mut self) {
        pop_first_value(&mut self.0.headers, &HeaderName::Via);
    }

    pub fn to_bytes(&self) -> Bytes {
        Message::Response(self.0.clone()).to_bytes()
    }

    /// The CSeq method (tests and metrics).
    pub fn cseq_method(&self) -> Option<String> {
        let c = self.0.headers.typed::<CSeq>()?.ok()?;
        Some(text(c.method.as_bytes()))
    }

    /// Every Contact value of the response, as written (tests).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let name = header_name(name);
        self.0
            .headers
            .get_all(&name)
            .map(|h| text(&h.value()))
            .collect()
    }
}

/// Builds a response to `req` (RFC 3261 §8.2.6): Via, From, To, Call-ID and
/// CSeq copied, a To tag added when missing (`to_tag`), then `extra` headers.
/// Returns None when the request lacks a header every response must echo;
/// such a request cannot be answered and is dropped.
pub fn response(
    req: &Request,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[(&str, String)],
) -> Option<Bytes> {
    let status = StatusCode::new(code)?;
    let mut b = ResponseBuilder::to_request(&req.0, status, reason.to_string()).ok()?;
    if code > 100 && req.to().ok()?.1.is_none() {
        let to = req.0.headers.value(&HeaderName::To).map(|v| text(&v))?;
        b = b
            .set_header(&HeaderName::To, format!("{to};tag={to_tag}"))
            .ok()?;
    }
    for (name, value) in extra {
        b = b.header(header_name(name), value.clone()).ok()?;
    }
    Some(Message::Response(b.build()).to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "REGISTER sip:example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:alice@example.com>\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
Call-ID: c1@h\r\n\
CSeq: 7 REGISTER\r\n\
Contact: <sip:alice@[2001:db8::1]:5060;transport=udp>;expires=60;q=0.5;+sip.instance=\"<urn:uuid:00000000-0000-0000-0000-000000000001>\";reg-id=1, \"Al, B\" <sip:alice@192.0.2.1>;q=1.0\r\n\
Contact: sip:alice@192.0.2.2;expires=30,\r\n <sip:alice@192.0.2.3>\r\n\
Path: <sip:p1.example.com;lr>,<sip:p2.example.com;lr>\r\n\
Path: <sip:p3.example.com;lr>\r\n\
Supported: path\r\n\
Expires: 600\r\n\
Content-Length: 0\r\n\r\n";

    fn request(s: &str) -> Request {
        match parse_datagram(Bytes::copy_from_slice(s.as_bytes())) {
            Ok(Parsed::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn contacts(r: &Request) -> Vec<ContactEntry> {
        match r.contacts() {
            Ok(Contacts::List(l)) => l,
            other => panic!("no contact list: {other:?}"),
        }
    }

    #[test]
    fn comma_joined_and_folded_contact_rows_yield_every_contact_in_order() {
        let r = request(REG);
        let uris: Vec<_> = contacts(&r).into_iter().map(|c| c.uri).collect();
        assert_eq!(
            uris,
            [
                "sip:alice@[2001:db8::1]:5060;transport=udp",
                "sip:alice@192.0.2.1",
                "sip:alice@192.0.2.2",
                "sip:alice@192.0.2.3"
            ]
        );
    }

    #[test]
    fn contact_parameters_expires_q_instance_and_reg_id_are_read() {
        let c = contacts(&request(REG));
        assert_eq!(c[0].expires, Some(60));
        assert_eq!(c[0].q, Some(0.5));
        assert_eq!(
            c[0].instance,
            "<urn:uuid:00000000-0000-0000-0000-000000000001>"
        );
        assert_eq!(c[0].reg_id, 1);
        assert_eq!(c[1].q, Some(1.0));
        assert_eq!(c[2].expires, Some(30));
        assert_eq!(c[3].expires, None);
    }

    #[test]
    fn an_ipv6_contact_keeps_its_brackets_and_exposes_the_address() {
        let c = contacts(&request(REG));
        let v = c[0].view.clone().unwrap();
        assert_eq!(v.host, "2001:db8::1");
        assert_eq!(v.host_for_uri(), "[2001:db8::1]");
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.transport.as_deref(), Some("udp"));
        let via = request(REG).top_via().unwrap();
        assert_eq!(via.host, "2001:db8::1");
        assert_eq!(via.rport, Some(None));
    }

    #[test]
    fn multiple_path_rows_and_comma_joined_paths_keep_their_order() {
        let r = request(REG);
        assert_eq!(
            r.path().unwrap(),
            [
                "sip:p1.example.com;lr",
                "sip:p2.example.com;lr",
                "sip:p3.example.com;lr"
            ]
        );
        assert!(r.lists_token("Supported", "path"));
        assert!(!r.lists_token("Supported", "outbound"));
    }

    #[test]
    fn contact_star_is_a_wildcard_and_star_with_addresses_is_bad() {
        let star = REG
            .replace(
                "Contact: <sip:alice@[2001",
                "Contact: *\r\nX-Old: <sip:alice@[2001",
            )
            .replace(
                "Contact: sip:alice@192.0.2.2;expires=30,\r\n <sip:alice@192.0.2.3>\r\n",
                "",
            );
        assert_eq!(request(&star).contacts(), Ok(Contacts::Wildcard));
        let mixed = REG.replace("Contact: sip:alice@192.0.2.2", "Contact: *\r\nY: x");
        assert_eq!(
            request(&mixed).contacts(),
            Err(HeaderProblem::Bad("Contact"))
        );
    }

    #[test]
    fn a_register_without_contact_is_a_query() {
        let q = REG
            .lines()
            .filter(|l| !l.starts_with("Contact") && !l.starts_with(" <sip"))
            .map(|l| format!("{l}\r\n"))
            .collect::<String>()
            + "\r\n";
        assert_eq!(request(&q).contacts(), Ok(Contacts::Absent));
    }

    #[test]
    fn a_parsed_message_reserializes_byte_for_byte() {
        assert_eq!(request(REG).to_bytes().as_ref(), REG.as_bytes());
    }

    #[test]
    fn to_call_id_cseq_and_expires_are_read() {
        let r = request(REG);
        let (to, tag) = r.to().unwrap();
        assert_eq!(to.aor().unwrap(), "sip:alice@example.com");
        assert_eq!(tag, None);
        assert_eq!(r.call_id().unwrap(), "c1@h");
        assert_eq!(r.cseq().unwrap(), (7, "REGISTER".to_string()));
        assert_eq!(r.expires().unwrap(), Some(600));
        assert_eq!(r.max_forwards().unwrap(), Some(70));
    }

    #[test]
    fn a_malformed_contact_is_a_bad_header_not_a_drop() {
        let r = request(&REG.replace("Contact: sip:alice@192.0.2.2", "Contact: <sip:"));
        assert_eq!(r.contacts(), Err(HeaderProblem::Bad("Contact")));
        let r = request(&REG.replace("q=0.5", "q=high"));
        assert_eq!(r.contacts(), Err(HeaderProblem::Bad("Contact")));
    }

    #[test]
    fn a_declared_body_above_the_limit_is_refused_before_allocation() {
        let big = "REGISTER sip:e SIP/2.0\r\nContent-Length: 999999999\r\n\r\n";
        let mut f = StreamFramer::default();
        assert!(matches!(
            f.push(big.as_bytes()),
            Err(ParseError::TooLarge(_))
        ));
        let huge = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            parse_datagram(Bytes::from(huge)),
            Err(ParseError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_is_not_a_message() {
        assert!(parse_datagram(Bytes::from_static(b"\x00\xffhello")).is_err());
        assert!(parse_datagram(Bytes::from_static(b"")).is_err());
    }

    #[test]
    fn the_stream_framer_splits_by_content_length_and_counts_keepalives() {
        let invite = "INVITE sip:bob@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bKx\r\nTo: <sip:bob@example.com>\r\nFrom: <sip:a@b>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 5\r\n\r\nhello";
        let stream = format!("\r\n\r\n{REG}{invite}");
        let mut f = StreamFramer::default();
        let (mut msgs, mut pings) = (Vec::new(), 0);
        for chunk in stream.as_bytes().chunks(7) {
            let (m, k) = f.push(chunk).unwrap();
            msgs.extend(m);
            pings += k;
        }
        assert_eq!(msgs.len(), 2);
        assert_eq!(pings, 2);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn a_response_echoes_via_from_to_call_id_cseq_and_adds_a_to_tag() {
        let r = request(REG);
        let out = response(
            &r,
            423,
            "Interval Too Brief",
            "tag9",
            &[("Min-Expires", "60".into())],
        )
        .unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            text.starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
            "{text}"
        );
        assert!(text.contains("Via: SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1;rport\r\n"));
        assert!(
            text.contains("To: <sip:alice@example.com>;tag=tag9\r\n"),
            "{text}"
        );
        assert!(text.contains("From: <sip:alice@example.com>;tag=a1\r\n"));
        assert!(text.contains("Call-ID: c1@h\r\n"));
        assert!(text.contains("CSeq: 7 REGISTER\r\n"));
        assert!(text.contains("Min-Expires: 60\r\n"));
    }

    #[test]
    fn stamping_the_top_via_adds_received_and_fills_rport() {
        let mut r = request(REG);
        r.stamp_top_via("198.51.100.7:40123".parse().unwrap());
        let v = r.top_via().unwrap();
        assert_eq!(v.received.as_deref(), Some("198.51.100.7"));
        assert_eq!(v.rport, Some(Some(40123)));
        assert_eq!(v.branch.as_deref(), Some("z9hG4bK1"));
    }

    #[test]
    fn a_pushed_via_goes_on_top_and_popping_it_restores_the_previous_hop() {
        let mut r = request(REG);
        r.push_via("SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKps1")
            .unwrap();
        assert_eq!(r.top_via().unwrap().branch.as_deref(), Some("z9hG4bKps1"));
        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKps1, SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKa\r\nTo: <sip:a@b>;tag=2\r\nFrom: <sip:a@b>;tag=1\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n".to_string();
        let Ok(Parsed::Response(mut resp)) = parse_datagram(Bytes::from(resp)) else {
            panic!("response");
        };
        resp.pop_via();
        let v = resp.top_via().unwrap();
        assert_eq!(
            (v.host.as_str(), v.branch.as_deref()),
            ("10.0.0.1", Some("z9hG4bKa"))
        );
    }

    #[test]
    fn a_retargeted_request_keeps_the_rest_of_its_start_line() {
        let mut r = request(REG);
        r.set_uri("sip:alice@192.0.2.9:5070").unwrap();
        r.set_max_forwards(69);
        r.prepend_routes(&["sip:p1.example.com;lr".into()]).unwrap();
        let text = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert!(text.starts_with("REGISTER sip:alice@192.0.2.9:5070 SIP/2.0\r\n"));
        assert!(text.contains("Max-Forwards: 69\r\n"));
        assert_eq!(r.routes().unwrap(), ["sip:p1.example.com;lr"]);
        r.pop_route();
        assert!(r.routes().unwrap().is_empty());
    }
}
