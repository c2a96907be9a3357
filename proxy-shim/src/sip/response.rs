//! Responses: the ones we relay back along the Via path, and the ones we
//! generate for a request (RFC 3261 §8.2.6).

use bytes::Bytes;
use sipx_sip::{CSeq, HeaderName, Message, ResponseBuilder, StatusCode, Via};

use super::errors::HeaderProblem;
use super::headers::{header_name, pop_first_value, required, rows, text};
use super::request::Request;
use super::views::ViaView;

/// A SIP response being relayed back along the Via path.
#[derive(Debug, Clone)]
pub struct Response(pub(super) sipx_sip::Response);

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.status.code()
    }

    /// The topmost Via hop (ours, when the response is for us to relay).
    pub fn top_via(&self) -> Result<ViaView, HeaderProblem> {
        required::<Via>(&self.0.headers, "Via").map(|v| ViaView::of(&v))
    }

    /// Removes our Via (§16.7 step 3).
    pub fn pop_via(&mut self) {
        pop_first_value(&mut self.0.headers, &HeaderName::Via);
    }

    /// The response as bytes: what arrived, with our edits.
    pub fn to_bytes(&self) -> Bytes {
        Message::Response(self.0.clone()).to_bytes()
    }

    /// The CSeq method (tests and metrics).
    pub fn cseq_method(&self) -> Option<String> {
        let c = self.0.headers.typed::<CSeq>()?.ok()?;
        Some(text(c.method.as_bytes()))
    }

    /// Every value of header `name`, as written (tests).
    pub fn header_values(&self, name: &str) -> Vec<String> {
        rows(&self.0.headers, name)
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
