//! The edits a stateless proxy makes to a request (RFC 3261 §16.6):
//! Request-URI, Max-Forwards, Via, Route. Each leaves every byte it does not
//! change as it arrived.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use sipx_sip::{Header, HeaderName, Uri};

use super::errors::HeaderProblem;
use super::headers::{edit_first_via, first_position, pop_first_value, set_header};
use super::request::Request;

impl Request {
    /// Retargets the request (§16.6 step 2 / §16.5).
    pub fn set_uri(&mut self, uri: &str) -> Result<(), HeaderProblem> {
        let uri = Uri::parse(Bytes::copy_from_slice(uri.as_bytes()))
            .map_err(|_| HeaderProblem::Bad("Contact"))?;
        self.0
            .set_uri(uri)
            .map_err(|_| HeaderProblem::Bad("Contact"))
    }

    /// Sets Max-Forwards (§16.6 step 3), where the received one stood.
    pub fn set_max_forwards(&mut self, n: u32) {
        set_header(&mut self.0.headers, HeaderName::MaxForwards, n.to_string());
    }

    /// Adds `received` (when the source IP differs from sent-by) and fills
    /// an empty `rport` on the topmost Via (RFC 3261 §18.2.1, RFC 3581), so
    /// responses find their way back by Via alone.
    pub fn stamp_top_via(&mut self, src: SocketAddr) {
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
        let at = first_position(&self.0.headers, &HeaderName::Via).unwrap_or(0);
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
        let at =
            first_position(&self.0.headers, &HeaderName::Route).unwrap_or(self.0.headers.len());
        for (i, u) in uris.iter().enumerate() {
            let h = Header::build(HeaderName::Route, format!("<{u}>"))
                .map_err(|_| HeaderProblem::Bad("Path"))?;
            self.0.headers.insert(at + i, h);
        }
        Ok(())
    }
}
