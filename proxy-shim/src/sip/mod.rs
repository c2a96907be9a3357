//! The SIP facade: the only module that knows which SIP library parses and
//! serializes messages (today `sipx-sip`, see DESIGN.md). Everything above it
//! sees plain Rust values (`String`, `u32`, `SocketAddr`) and a few opaque
//! message types, so the library can be swapped by rewriting this module.
//!
//! It owns: framing (datagram and stream, with size limits checked before
//! allocation: `parse`), reading the headers a registrar and a stateless
//! proxy need (`request`, into the plain values of `views`), the edits a
//! stateless proxy makes (Request-URI, Via, Route, Max-Forwards: `edit`),
//! and building responses per RFC 3261 §8.2.6 (`response`); `headers` holds
//! the row-level reads and edits they share. It does not own: registrar
//! rules (locsvc), routing decisions (`route`, `forward`).

mod edit;
mod errors;
mod headers;
mod parse;
mod request;
mod response;
mod views;

pub use errors::{HeaderProblem, ParseError};
pub use parse::{MAX_MESSAGE_BYTES, Parsed, StreamFramer, parse_datagram};
pub use request::Request;
pub use response::{Response, response};
pub use views::{ContactEntry, Contacts, UriView, ViaView, bracket};

#[cfg(test)]
mod tests;
