//! Reading a request: the headers a registrar, a stateless proxy and the
//! digest step need, as plain values. The edits are in `edit`.

use bytes::Bytes;
use sipx_sip::headers::address::{ContactValue, Path, Route, To};
use sipx_sip::headers::misc::{CallId, Expires, MaxForwards};
use sipx_sip::{Address, CSeq, Message, Via};

use super::errors::HeaderProblem;
use super::headers::{every, header_name, optional, required, rows, text};
use super::views::{ContactEntry, Contacts, UriView, ViaView};

/// A SIP request, parsed lazily: a header is only interpreted when asked for.
#[derive(Debug, Clone)]
pub struct Request(pub(super) sipx_sip::Request);

impl Request {
    /// The method as written, e.g. `REGISTER`.
    pub fn method(&self) -> String {
        text(self.0.method.as_bytes())
    }

    /// The Request-URI as written.
    pub fn uri_string(&self) -> String {
        self.0.uri.to_string()
    }

    /// The Request-URI's routing parts (None: not a SIP URI with a host).
    pub fn uri(&self) -> Option<UriView> {
        UriView::of(&self.0.uri)
    }

    /// The To URI and its tag.
    pub fn to(&self) -> Result<(UriView, Option<String>), HeaderProblem> {
        let to: To = required(&self.0.headers, "To")?;
        let view = UriView::of(&to.uri).ok_or(HeaderProblem::Bad("To"))?;
        Ok((view, to.tag().map(text)))
    }

    /// The From URI.
    pub fn from_uri(&self) -> Result<UriView, HeaderProblem> {
        let from: sipx_sip::headers::address::From = required(&self.0.headers, "From")?;
        UriView::of(&from.uri).ok_or(HeaderProblem::Bad("From"))
    }

    /// Every row of header `name`, as written (e.g. several Authorization
    /// rows for different realms).
    pub fn header_rows(&self, name: &str) -> Vec<String> {
        rows(&self.0.headers, name)
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

    /// The Call-ID.
    pub fn call_id(&self) -> Result<String, HeaderProblem> {
        let c: CallId = required(&self.0.headers, "Call-ID")?;
        Ok(text(&c.0))
    }

    /// CSeq number and method.
    pub fn cseq(&self) -> Result<(u32, String), HeaderProblem> {
        let c: CSeq = required(&self.0.headers, "CSeq")?;
        Ok((c.sequence, text(c.method.as_bytes())))
    }

    /// The Expires header, if present.
    pub fn expires(&self) -> Result<Option<u32>, HeaderProblem> {
        Ok(optional::<Expires>(&self.0.headers, "Expires")?.map(|e| e.0))
    }

    /// Max-Forwards, if present.
    pub fn max_forwards(&self) -> Result<Option<u32>, HeaderProblem> {
        Ok(optional::<MaxForwards>(&self.0.headers, "Max-Forwards")?.map(|m| u32::from(m.0)))
    }

    /// The first value of a header, unfolded and trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.0.headers.value(&header_name(name)).map(|v| text(&v))
    }

    /// Whether a token-list header (`Supported`, `Require`) lists `token`
    /// in any of its rows, case-insensitively.
    pub fn lists_token(&self, name: &str, token: &str) -> bool {
        self.0.headers.get_all(&header_name(name)).any(|h| {
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
                ContactValue::Address(a) => list.push(contact_entry(&a)?),
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
        every(&self.0.headers, "Path", |p: Path| p.uri.to_string())
    }

    /// Route URIs, in order.
    pub fn routes(&self) -> Result<Vec<String>, HeaderProblem> {
        every(&self.0.headers, "Route", |r: Route| r.uri.to_string())
    }

    /// The topmost Via hop.
    pub fn top_via(&self) -> Result<ViaView, HeaderProblem> {
        required::<Via>(&self.0.headers, "Via").map(|v| ViaView::of(&v))
    }

    /// Every Via hop, top first (loop detection, RFC 3261 §16.3 step 4).
    pub fn vias(&self) -> Result<Vec<ViaView>, HeaderProblem> {
        every(&self.0.headers, "Via", |v: Via| ViaView::of(&v))
    }

    /// The request as bytes: what arrived, with our edits.
    pub fn to_bytes(&self) -> Bytes {
        Message::Request(self.0.clone()).to_bytes()
    }
}

/// One Contact address with the parameters locsvc stores; a parameter that
/// does not parse makes the whole Contact header bad.
fn contact_entry(a: &Address) -> Result<ContactEntry, HeaderProblem> {
    fn bad<E>(_: E) -> HeaderProblem {
        HeaderProblem::Bad("Contact")
    }
    let param = |n: &str| a.param(n).map(text);
    let expires = param("expires")
        .map(|v| v.trim().parse::<i64>())
        .transpose()
        .map_err(bad)?;
    let q = param("q")
        .map(|v| v.trim().parse::<f32>())
        .transpose()
        .map_err(bad)?;
    let reg_id = param("reg-id")
        .map(|v| v.trim().parse::<u32>())
        .transpose()
        .map_err(bad)?
        .unwrap_or(0);
    Ok(ContactEntry {
        uri: a.uri.to_string(),
        expires,
        q,
        instance: param("+sip.instance").unwrap_or_default(),
        reg_id,
        view: UriView::of(&a.uri),
    })
}
