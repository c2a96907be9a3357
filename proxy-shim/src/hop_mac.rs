//! Our Via branch authenticates the hop a response will be relayed to.
//!
//! A stateless proxy keeps no transaction, so a response is relayed by its
//! Via path alone: whoever sends us a response whose top Via is ours could
//! otherwise make us deliver it to any address named in the second Via
//! (including into another client's TCP connection). The branch we put in our
//! Via therefore ends in a MAC, keyed with a secret of this process, over
//! the branch's own id and the destination the response must go back to
//! (transport, host, port of the stamped previous hop). A response whose
//! second Via does not produce the same MAC is dropped.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::sip::ViaView;

/// Hex digits of the MAC kept in the branch (64 bits: forging one takes
/// 2^63 tries on average, each one a datagram we count and drop).
const MAC_HEX: usize = 16;

/// The key of this process.
#[derive(Clone)]
pub struct HopKey([u8; 32]);

impl std::fmt::Debug for HopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKey(***)")
    }
}

/// Where a relayed response goes: transport and address as the Via says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop<'a> {
    /// The Via's transport, upper-case (`UDP`, `TCP`).
    pub transport: &'a str,
    /// `received`, else the sent-by host.
    pub host: &'a str,
    /// `rport`, else the sent-by port, else 5060.
    pub port: u16,
}

/// Where a relayed response goes (transport, host, port) according to the
/// Via below ours: `received` (or sent-by host), at `rport` (or sent-by
/// port, or 5060). Sealing and verifying both derive the hop here, so they
/// cannot disagree.
pub fn return_hop(v: &ViaView) -> (String, String, u16) {
    let host = v.received.clone().unwrap_or_else(|| v.host.clone());
    let port = match v.rport {
        Some(Some(p)) => p,
        _ => v.port.unwrap_or(5060),
    };
    (v.transport.clone(), host, port)
}

impl HopKey {
    /// A fresh random key. Responses to requests forwarded before a restart
    /// no longer verify, which costs at most a retransmission.
    pub fn random() -> Self {
        let mut k = [0u8; 32];
        // Without an OS random source nothing here can be trusted anyway.
        getrandom::getrandom(&mut k).expect("the OS provides random bytes");
        Self(k)
    }

    /// A fixed key (tests).
    pub fn from_bytes(k: [u8; 32]) -> Self {
        Self(k)
    }

    fn mac(&self, id: &str, hop: &Hop<'_>) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("any key length");
        for part in [
            id.as_bytes(),
            b"|",
            hop.transport.to_ascii_uppercase().as_bytes(),
            b"|",
            hop.host.to_ascii_lowercase().as_bytes(),
            b"|",
            hop.port.to_string().as_bytes(),
        ] {
            m.update(part);
        }
        let tag = m.finalize().into_bytes();
        tag.iter()
            .take(MAC_HEX / 2)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// `id` (the branch's request-derived part) followed by the MAC of
    /// `back` (where the response must return).
    pub fn seal(&self, id: &str, back: &Hop<'_>) -> String {
        format!("{id}{}", self.mac(id, back))
    }

    /// Whether `branch` (as `seal` built it) was made by us for a response
    /// going back to `back`.
    pub fn verify(&self, branch: &str, back: &Hop<'_>) -> bool {
        let Some(split) = branch.len().checked_sub(MAC_HEX) else {
            return false;
        };
        let Some((id, mac)) = branch
            .is_char_boundary(split)
            .then(|| branch.split_at(split))
        else {
            return false;
        };
        bool::from(self.mac(id, back).as_bytes().ct_eq(mac.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(host: &str, port: u16) -> Hop<'_> {
        Hop {
            transport: "UDP",
            host,
            port,
        }
    }

    #[test]
    fn a_sealed_branch_verifies_only_for_its_own_return_hop_and_key() {
        let k = HopKey::from_bytes([7; 32]);
        let b = k.seal("z9hG4bK-ps-0123456789abcdef-", &hop("198.51.100.7", 40123));
        assert!(k.verify(&b, &hop("198.51.100.7", 40123)));
        assert!(!k.verify(&b, &hop("198.51.100.8", 40123)), "other host");
        assert!(!k.verify(&b, &hop("198.51.100.7", 40124)), "other port");
        let tcp = Hop {
            transport: "TCP",
            ..hop("198.51.100.7", 40123)
        };
        assert!(!k.verify(&b, &tcp), "other transport");
        assert!(!HopKey::from_bytes([8; 32]).verify(&b, &hop("198.51.100.7", 40123)));
        for junk in ["", "z9hG4bK-ps-", "é", "z9hG4bK-ps-00000000000000000000"] {
            assert!(!k.verify(junk, &hop("198.51.100.7", 40123)), "{junk:?}");
        }
    }
}
