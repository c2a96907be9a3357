//! The envelope of a message, whatever carried it: the transport, where it
//! came from (`Inbound`) and where bytes go (`Outbound`). Transports fill
//! and empty envelopes; handlers read and make them. This module depends on
//! neither, so both can use it.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::sip::{UriView, ViaView};

/// A transport the shim speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Datagrams.
    Udp,
    /// A connection, messages framed by Content-Length.
    Tcp,
}

impl Transport {
    /// The lower-case name, as in a `transport` URI parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }

    /// The transport a Via hop names; anything but TCP goes out over UDP,
    /// the only other transport we have.
    pub fn of_via(v: &ViaView) -> Self {
        if v.transport == "TCP" {
            Transport::Tcp
        } else {
            Transport::Udp
        }
    }

    /// The transport a URI asks for with `;transport=`, UDP by default.
    pub fn of_uri(u: &UriView) -> Self {
        match u.transport.as_deref() {
            Some("tcp") => Transport::Tcp,
            _ => Transport::Udp,
        }
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy)]
pub struct Inbound {
    /// The transport it arrived over.
    pub transport: Transport,
    /// The sender's address.
    pub peer: SocketAddr,
    /// Our address it arrived at.
    pub local: SocketAddr,
}

/// Bytes to send, and where.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The transport to send over.
    pub transport: Transport,
    /// The destination address.
    pub dest: SocketAddr,
    /// The whole message.
    pub bytes: Bytes,
}
