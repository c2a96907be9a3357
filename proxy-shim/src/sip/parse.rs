//! Framing and parsing: one datagram, or messages out of a TCP byte stream,
//! with the size limits checked before anything that size is allocated.

use bytes::Bytes;
use sipx_sip::{Limits, Message};

use super::errors::ParseError;
use super::request::Request;
use super::response::Response;

/// Largest SIP message accepted on any transport (checked before any
/// allocation of that size: a 12-byte `Content-Length` must not reserve memory).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

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
    /// A request, to handle.
    Request(Request),
    /// A response, to relay.
    Response(Response),
}

impl Parsed {
    /// The Call-ID as written, if any: which dialog the message belongs to.
    pub fn call_id_bytes(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        let headers = match self {
            Self::Request(r) => &r.0.headers,
            Self::Response(r) => &r.0.headers,
        };
        headers.value(&sipx_sip::HeaderName::CallId)
    }
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
