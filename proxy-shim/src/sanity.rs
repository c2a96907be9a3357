//! The sanity pass every request goes through before it is routed (like
//! Kamailio's `sanity` and `maxfwd` modules): the headers every answer and
//! every routing decision rely on must be there and agree with each other.
//! Pure: a parsed request in, its checked facts or a 400 out.

use crate::sip::{HeaderProblem, Request, UriView};

/// A request refused before it reaches routing or locsvc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The SIP status to answer with.
    pub code: u16,
    /// The reason phrase, naming what is wrong.
    pub reason: String,
}

impl Refusal {
    /// A refusal with `code` and a reason phrase.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

impl From<HeaderProblem> for Refusal {
    fn from(p: HeaderProblem) -> Self {
        Refusal::new(400, p.to_string())
    }
}

/// What the checks established about a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The request method.
    pub method: String,
    /// The Request-URI (sip or sips).
    pub uri: UriView,
    /// The To URI.
    pub to: UriView,
    /// The To tag: present means the request is inside a dialog.
    pub to_tag: Option<String>,
    /// Max-Forwards as received (70 when absent, RFC 3261 §16.6 step 3),
    /// lowered to the configured cap.
    pub max_forwards: u32,
}

/// Checks `req`. `is_us` tells whether a URI host (and port) names this
/// shim; `cap` is the highest Max-Forwards let through.
pub fn check(
    req: &Request,
    cap: u32,
    is_us: impl Fn(&str, Option<u16>) -> bool,
) -> Result<Checked, Refusal> {
    let method = req.method();
    req.top_via()?;
    req.call_id()?;
    let (to, to_tag) = req.to()?;
    let (_, cseq_method) = req.cseq()?;
    // RFC 3261 §8.1.1.5: the CSeq method matches the request's.
    if !cseq_method.eq_ignore_ascii_case(&method) {
        return Err(Refusal::new(400, "CSeq Method Mismatch"));
    }
    let Some(uri) = req.uri() else {
        return Err(Refusal::new(416, "Unsupported URI Scheme"));
    };
    if !matches!(uri.scheme.as_str(), "sip" | "sips") {
        return Err(Refusal::new(416, "Unsupported URI Scheme"));
    }
    if method == "REGISTER" {
        // §10.2: the Request-URI names the registrar's domain, no user part;
        // a phone configured with the registrar's address sends that instead.
        let domain_ok = uri.host.eq_ignore_ascii_case(&to.host) || is_us(&uri.host, uri.port);
        if uri.user.is_some() || !domain_ok {
            return Err(Refusal::new(400, "Request-URI Does Not Match To Domain"));
        }
    }
    let max_forwards = req.max_forwards()?.unwrap_or(70).min(cap);
    Ok(Checked {
        method,
        uri,
        to,
        to_tag,
        max_forwards,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::{Parsed, parse_datagram};

    fn req(head: &str) -> Request {
        let text = format!("{head}\r\nContent-Length: 0\r\n\r\n");
        match parse_datagram(bytes::Bytes::from(text)).expect("parses") {
            Parsed::Request(r) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn register(uri: &str, to: &str, cseq: &str) -> Request {
        req(&format!(
            "REGISTER {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1\r\n\
             From: <{to}>;tag=a\r\nTo: <{to}>\r\nCall-ID: c1\r\nCSeq: {cseq}\r\nMax-Forwards: 70"
        ))
    }

    fn not_us(_: &str, _: Option<u16>) -> bool {
        false
    }

    #[test]
    fn the_cseq_method_must_be_the_request_method() {
        let r = register("sip:example.com", "sip:a@example.com", "1 INVITE");
        assert_eq!(check(&r, 70, not_us).unwrap_err().code, 400);
        let r = register("sip:example.com", "sip:a@example.com", "1 REGISTER");
        assert!(check(&r, 70, not_us).is_ok());
    }

    #[test]
    fn a_register_request_uri_names_the_to_domain_or_us() {
        let r = register("sip:other.org", "sip:a@example.com", "1 REGISTER");
        assert_eq!(check(&r, 70, not_us).unwrap_err().code, 400);
        let r = register("sip:a@example.com", "sip:a@example.com", "1 REGISTER");
        assert_eq!(check(&r, 70, not_us).unwrap_err().code, 400, "no user part");
        let r = register("sip:192.0.2.9:5070", "sip:a@example.com", "1 REGISTER");
        assert!(check(&r, 70, |h, p| h == "192.0.2.9" && p == Some(5070)).is_ok());
    }

    #[test]
    fn max_forwards_is_capped_and_defaults_to_70() {
        let invite = |mf: &str| {
            req(&format!(
                "INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-2\r\n\
                 From: <sip:a@example.com>;tag=a\r\nTo: <sip:b@example.com>\r\nCall-ID: c2\r\n\
                 CSeq: 1 INVITE{mf}"
            ))
        };
        assert_eq!(
            check(&invite("\r\nMax-Forwards: 255"), 70, not_us)
                .unwrap()
                .max_forwards,
            70
        );
        assert_eq!(
            check(&invite("\r\nMax-Forwards: 5"), 70, not_us)
                .unwrap()
                .max_forwards,
            5
        );
        assert_eq!(check(&invite(""), 20, not_us).unwrap().max_forwards, 20);
    }

    #[test]
    fn a_missing_header_or_a_foreign_scheme_is_refused() {
        let r = req(
            "OPTIONS sip:x@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-3\r\n\
             From: <sip:a@example.com>;tag=a\r\nTo: <sip:x@example.com>\r\nCSeq: 1 OPTIONS",
        );
        assert_eq!(check(&r, 70, not_us).unwrap_err().code, 400, "no Call-ID");
        let r = req(
            "OPTIONS tel:+15551234 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK-4\r\n\
             From: <sip:a@example.com>;tag=a\r\nTo: <sip:x@example.com>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS",
        );
        assert_eq!(check(&r, 70, not_us).unwrap_err().code, 416);
    }
}
