//! HTTP Digest for SIP (RFC 3261 §22, RFC 7616, RFC 8760): challenges,
//! stateless nonces, and verification of an answer against a user's HA1.
//! Pure: time and credentials come in as arguments, so every rule is tested
//! without sockets or clocks.
//!
//! - **Nonces are stateless**: `<issued, hex seconds>.<salt>.<HMAC-SHA256(
//!   secret, issued | salt | realm), 128 bits hex>`, so any shim sharing the
//!   secret verifies any nonce, and a restart does not invalidate them; the
//!   salt makes each challenge's nonce unique (nonce counts are per nonce). A nonce
//!   older than its lifetime is answered with a fresh challenge carrying
//!   `stale=true` (the UA retries without asking the user).
//! - **Replay**: with `qop=auth`, each nonce's count (`nc`) must grow; the
//!   last count per nonce is kept in a bounded table for the nonce's life.
//!   Without the table's entry (another instance issued the nonce, or it
//!   was evicted) the first count seen is accepted.
//! - **Algorithms**: SHA-256 and MD5; the challenge offers the configured
//!   ones in order of preference (RFC 8760 §2.4). `qop=auth` is required.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use md5::Digest as _;

use sha2::Sha256;
use subtle::ConstantTimeEq;

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617), what most phones send.
    Md5,
    /// `SHA-256` (RFC 7616).
    Sha256,
}

impl Algorithm {
    /// The token used in `algorithm=`.
    pub fn token(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Sha256 => "SHA-256",
        }
    }

    /// Parses `MD5` / `SHA-256` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "MD5" => Some(Self::Md5),
            "SHA-256" => Some(Self::Sha256),
            _ => None,
        }
    }

    /// Lower-case hex of the hash of `data`.
    pub fn hex(self, data: &str) -> String {
        let bytes: Vec<u8> = match self {
            Self::Md5 => md5::Md5::digest(data.as_bytes()).to_vec(),
            Self::Sha256 => sha2::Sha256::digest(data.as_bytes()).to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The fields of an `Authorization` / `Proxy-Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Credentials {
    /// `username`: the user part of the AoR.
    pub username: String,
    /// `realm`: the domain the credentials are for.
    pub realm: String,
    /// `nonce`: as our challenge gave it.
    pub nonce: String,
    /// `uri`: the digest-uri the response was computed over.
    pub uri: String,
    /// `response`: the client's hash, lower-case hex.
    pub response: String,
    /// `algorithm`: MD5 when absent.
    pub algorithm: Option<String>,
    /// `cnonce`: the client's nonce, with `qop`.
    pub cnonce: Option<String>,
    /// `qop`: `auth` when the client chose one.
    pub qop: Option<String>,
    /// `nc`: the nonce count (hex), with `qop`.
    pub nc: Option<String>,
}

/// Parses `Digest k=v, k="v", …`; None when it is not a Digest header or a
/// required field is missing.
pub fn parse_authorization(value: &str) -> Option<Credentials> {
    let rest = value.trim();
    let (scheme, params) = rest.split_once(char::is_whitespace)?;
    if !scheme.eq_ignore_ascii_case("Digest") {
        return None;
    }
    let mut c = Credentials::default();
    for (k, v) in params_of(params) {
        match k.to_ascii_lowercase().as_str() {
            "username" => c.username = v,
            "realm" => c.realm = v,
            "nonce" => c.nonce = v,
            "uri" => c.uri = v,
            "response" => c.response = v.to_ascii_lowercase(),
            "algorithm" => c.algorithm = Some(v),
            "cnonce" => c.cnonce = Some(v),
            "qop" => c.qop = Some(v),
            "nc" => c.nc = Some(v),
            _ => {}
        }
    }
    let required = [&c.username, &c.realm, &c.nonce, &c.uri, &c.response];
    required.iter().all(|f| !f.is_empty()).then_some(c)
}

/// `k=v` pairs of a comma-separated list, quotes removed (a quoted value may
/// hold commas and escaped quotes).
fn params_of(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            return out;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            // Skip to the next comma.
            for c in chars.by_ref() {
                if c == ',' {
                    break;
                }
            }
        } else {
            value = chars
                .by_ref()
                .take_while(|c| *c != ',')
                .collect::<String>()
                .trim()
                .to_string();
        }
        out.push((key, value));
    }
}

/// What checking an answer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The user proved knowledge of the password.
    Ok,
    /// A nonce we issued but too old: challenge again with `stale=true`.
    Stale,
    /// Wrong password, forged or replayed nonce, unusable fields: challenge
    /// again (without `stale`).
    Rejected(&'static str),
}

/// HA1s of one user for one realm, as the credential store gives them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ha1 {
    /// The MD5 HA1, lower-case hex.
    pub md5: String,
    /// Empty when only an MD5 hash is stored.
    pub sha256: String,
}

/// Issues and checks nonces for one shim (or several sharing `secret`).
pub struct Digest {
    secret: Vec<u8>,
    /// Seconds a nonce is accepted.
    lifetime: u64,
    /// Last nonce-count seen per nonce, with the nonce's issue time.
    counts: Mutex<HashMap<String, (u64, u32)>>,
    max_tracked: usize,
    /// Makes nonces distinct: a random start, counted up.
    salt: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Digest")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl Digest {
    /// Nonces keyed with `secret`, accepted for `lifetime` seconds; at most
    /// `max_tracked` nonces' counts are remembered.
    pub fn new(secret: &[u8], lifetime: u64, max_tracked: usize) -> Self {
        Self {
            secret: secret.to_vec(),
            lifetime,
            counts: Mutex::new(HashMap::new()),
            max_tracked: max_tracked.max(1),
            salt: std::sync::atomic::AtomicU64::new({
                let mut b = [0u8; 8];
                // A fixed start would only repeat nonces across instances
                // (still valid, only their counts could clash).
                let _ = getrandom::getrandom(&mut b);
                u64::from_le_bytes(b)
            }),
        }
    }

    fn mac(&self, issued: u64, salt: &str, realm: &str) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).expect("any key length");
        m.update(format!("{issued:x}|{salt}|{realm}").as_bytes());
        m.finalize().into_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A fresh nonce for `realm` at `now` (Unix seconds).
    pub fn nonce(&self, realm: &str, now: u64) -> String {
        let salt = format!(
            "{:x}",
            self.salt.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        format!("{now:x}.{salt}.{}", self.mac(now, &salt, realm))
    }

    /// The challenge header values, one per algorithm of `algorithms` (in
    /// that order: most preferred first), sharing one nonce.
    pub fn challenges(
        &self,
        realm: &str,
        algorithms: &[Algorithm],
        now: u64,
        stale: bool,
    ) -> Vec<String> {
        let nonce = self.nonce(realm, now);
        algorithms
            .iter()
            .map(|a| {
                let mut v = format!(
                    "Digest realm=\"{realm}\", nonce=\"{nonce}\", qop=\"auth\", algorithm={}",
                    a.token()
                );
                if stale {
                    v.push_str(", stale=true");
                }
                v
            })
            .collect()
    }

    /// Checks `c` (for a request with `method`) against the user's `ha1` at
    /// `now`. The realm must be `realm` (the one we challenged with).
    pub fn verify(
        &self,
        c: &Credentials,
        method: &str,
        realm: &str,
        ha1: &Ha1,
        now: u64,
    ) -> Verdict {
        if c.realm != realm {
            return Verdict::Rejected("realm");
        }
        let mut parts = c.nonce.splitn(3, '.');
        let (Some(issued_hex), Some(salt), Some(mac)) = (parts.next(), parts.next(), parts.next())
        else {
            return Verdict::Rejected("nonce");
        };
        let Ok(issued) = u64::from_str_radix(issued_hex, 16) else {
            return Verdict::Rejected("nonce");
        };
        if !bool::from(
            self.mac(issued, salt, realm)
                .as_bytes()
                .ct_eq(mac.as_bytes()),
        ) {
            return Verdict::Rejected("nonce");
        }
        let algorithm = match c.algorithm.as_deref() {
            None => Algorithm::Md5,
            Some(a) => match Algorithm::parse(a) {
                Some(a) => a,
                None => return Verdict::Rejected("algorithm"),
            },
        };
        let (Some(qop), Some(nc), Some(cnonce)) = (&c.qop, &c.nc, &c.cnonce) else {
            return Verdict::Rejected("qop");
        };
        if !qop.eq_ignore_ascii_case("auth") {
            return Verdict::Rejected("qop");
        }
        let Ok(count) = u32::from_str_radix(nc, 16) else {
            return Verdict::Rejected("nc");
        };
        let ha1 = match algorithm {
            Algorithm::Md5 => &ha1.md5,
            Algorithm::Sha256 => &ha1.sha256,
        };
        if ha1.is_empty() {
            return Verdict::Rejected("algorithm");
        }
        let ha2 = algorithm.hex(&format!("{method}:{}", c.uri));
        let expected = algorithm.hex(&format!("{ha1}:{}:{nc}:{cnonce}:{qop}:{ha2}", c.nonce));
        if !bool::from(expected.as_bytes().ct_eq(c.response.as_bytes())) {
            return Verdict::Rejected("response");
        }
        // Only a correct answer reaches here: a stale nonce is worth a
        // silent retry, a replayed count is not.
        if now > issued.saturating_add(self.lifetime) || issued > now.saturating_add(60) {
            return Verdict::Stale;
        }
        if !self.fresh_count(&c.nonce, issued, count, now) {
            return Verdict::Rejected("replay");
        }
        Verdict::Ok
    }

    /// Records `count` for `nonce`; false when it is not above the last one.
    fn fresh_count(&self, nonce: &str, issued: u64, count: u32, now: u64) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, last)) = counts.get(nonce)
            && count <= *last
        {
            return false;
        }
        if counts.len() >= self.max_tracked && !counts.contains_key(nonce) {
            let lifetime = self.lifetime;
            counts.retain(|_, (t, _)| now <= t.saturating_add(lifetime));
            if counts.len() >= self.max_tracked {
                // Still full of live nonces: drop the oldest half.
                let mut ts: Vec<u64> = counts.values().map(|(t, _)| *t).collect();
                ts.sort_unstable();
                let cut = ts[ts.len() / 2];
                counts.retain(|_, (t, _)| *t > cut);
            }
        }
        counts.insert(nonce.to_string(), (issued, count));
        true
    }
}

/// kamctl's HA1s for a password (realm = the domain): what the credential
/// store returns; here for tests and the CLI's expectations.
pub fn ha1_of(username: &str, realm: &str, password: &str) -> Ha1 {
    Ha1 {
        md5: Algorithm::Md5.hex(&format!("{username}:{realm}:{password}")),
        sha256: Algorithm::Sha256.hex(&format!("{username}:{realm}:{password}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    /// What a UA computes: the answer to `challenge` for `password`.
    fn answer(d: &Digest, alg: Algorithm, password: &str, nc: u32, nonce: &str) -> Credentials {
        let ha1 = alg.hex(&format!("alice:example.com:{password}"));
        let ha2 = alg.hex("REGISTER:sip:example.com");
        let nc = format!("{nc:08x}");
        let response = alg.hex(&format!("{ha1}:{nonce}:{nc}:c0ffee:auth:{ha2}"));
        let _ = d;
        Credentials {
            username: "alice".into(),
            realm: "example.com".into(),
            nonce: nonce.into(),
            uri: "sip:example.com".into(),
            response,
            algorithm: Some(alg.token().into()),
            cnonce: Some("c0ffee".into()),
            qop: Some("auth".into()),
            nc: Some(nc),
        }
    }

    fn digest() -> Digest {
        Digest::new(b"shared secret", 300, 1000)
    }

    #[test]
    fn a_correct_answer_passes_with_either_algorithm_and_a_wrong_password_does_not() {
        let d = digest();
        let ha1 = ha1_of("alice", "example.com", "s3cret");
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let nonce = d.nonce("example.com", NOW);
            let ok = answer(&d, alg, "s3cret", 1, &nonce);
            assert_eq!(
                d.verify(&ok, "REGISTER", "example.com", &ha1, NOW + 1),
                Verdict::Ok
            );
            let wrong = answer(&d, alg, "guess", 1, &nonce);
            assert_eq!(
                d.verify(&wrong, "REGISTER", "example.com", &ha1, NOW + 1),
                Verdict::Rejected("response")
            );
        }
        // Another method or realm does not match.
        let nonce = d.nonce("example.com", NOW);
        let ok = answer(&d, Algorithm::Md5, "s3cret", 1, &nonce);
        assert_ne!(
            d.verify(&ok, "INVITE", "example.com", &ha1, NOW),
            Verdict::Ok
        );
        assert_ne!(
            d.verify(&ok, "REGISTER", "other.org", &ha1, NOW),
            Verdict::Ok
        );
    }

    #[test]
    fn nonces_are_stateless_expire_as_stale_and_cannot_be_forged() {
        let a = digest();
        let b = Digest::new(b"shared secret", 300, 1000);
        let ha1 = ha1_of("alice", "example.com", "s3cret");
        let nonce = a.nonce("example.com", NOW);
        let c = answer(&a, Algorithm::Sha256, "s3cret", 1, &nonce);
        assert_eq!(
            b.verify(&c, "REGISTER", "example.com", &ha1, NOW),
            Verdict::Ok,
            "another instance"
        );
        assert_eq!(
            a.verify(&c, "REGISTER", "example.com", &ha1, NOW + 301),
            Verdict::Stale
        );
        let forged = format!("{:x}.1.{}", NOW, "0".repeat(32));
        let c = answer(&a, Algorithm::Sha256, "s3cret", 1, &forged);
        assert_eq!(
            a.verify(&c, "REGISTER", "example.com", &ha1, NOW),
            Verdict::Rejected("nonce")
        );
        let other_key = Digest::new(b"another secret", 300, 1000);
        let nonce = other_key.nonce("example.com", NOW);
        let c = answer(&a, Algorithm::Md5, "s3cret", 1, &nonce);
        assert_eq!(
            a.verify(&c, "REGISTER", "example.com", &ha1, NOW),
            Verdict::Rejected("nonce")
        );
    }

    #[test]
    fn two_users_challenged_in_the_same_second_get_distinct_nonces() {
        let d = digest();
        assert_ne!(d.nonce("example.com", NOW), d.nonce("example.com", NOW));
    }

    #[test]
    fn a_replayed_nonce_count_is_rejected() {
        let d = digest();
        let ha1 = ha1_of("alice", "example.com", "s3cret");
        let nonce = d.nonce("example.com", NOW);
        let first = answer(&d, Algorithm::Md5, "s3cret", 1, &nonce);
        assert_eq!(
            d.verify(&first, "REGISTER", "example.com", &ha1, NOW),
            Verdict::Ok
        );
        assert_eq!(
            d.verify(&first, "REGISTER", "example.com", &ha1, NOW),
            Verdict::Rejected("replay")
        );
        let second = answer(&d, Algorithm::Md5, "s3cret", 2, &nonce);
        assert_eq!(
            d.verify(&second, "REGISTER", "example.com", &ha1, NOW),
            Verdict::Ok
        );
    }

    #[test]
    fn sha256_needs_a_sha256_ha1_and_qop_auth_is_required() {
        let d = digest();
        let md5_only = Ha1 {
            md5: ha1_of("alice", "example.com", "s3cret").md5,
            sha256: String::new(),
        };
        let nonce = d.nonce("example.com", NOW);
        let c = answer(&d, Algorithm::Sha256, "s3cret", 1, &nonce);
        assert_eq!(
            d.verify(&c, "REGISTER", "example.com", &md5_only, NOW),
            Verdict::Rejected("algorithm")
        );
        let mut no_qop = answer(&d, Algorithm::Md5, "s3cret", 1, &nonce);
        no_qop.qop = None;
        assert_eq!(
            d.verify(&no_qop, "REGISTER", "example.com", &md5_only, NOW),
            Verdict::Rejected("qop")
        );
    }

    #[test]
    fn authorization_headers_parse_with_quotes_commas_and_case() {
        let c = parse_authorization(
            "Digest username=\"alice\",realm=\"example.com\", nonce=\"5f.ab\", \
             uri=\"sip:example.com\", response=\"ABCDEF\", algorithm=MD5, \
             cnonce=\"x,y\", qop=auth, nc=00000001, opaque=\"\"",
        )
        .unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.cnonce.as_deref(), Some("x,y"));
        assert_eq!(c.response, "abcdef");
        assert_eq!(c.nc.as_deref(), Some("00000001"));
        assert!(parse_authorization("Basic YWxpY2U6cw==").is_none());
        assert!(
            parse_authorization("Digest username=\"a\"").is_none(),
            "fields missing"
        );
        assert!(parse_authorization("").is_none());
        let quoted = parse_authorization(
            "Digest username=\"a\\\"b\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"00\"",
        )
        .unwrap();
        assert_eq!(quoted.username, "a\"b");
    }

    #[test]
    fn the_challenge_offers_each_algorithm_in_the_order_given() {
        let d = digest();
        let ch = d.challenges(
            "example.com",
            &[Algorithm::Sha256, Algorithm::Md5],
            NOW,
            true,
        );
        assert!(ch[0].contains("algorithm=SHA-256") && ch[1].contains("algorithm=MD5"));
        assert!(
            ch.iter()
                .all(|c| c.contains("qop=\"auth\"") && c.ends_with("stale=true"))
        );
    }

    #[test]
    fn ha1s_match_independently_computed_values() {
        // printf %s 'alice:example.com:secret' | md5sum (and sha256sum)
        let h = ha1_of("alice", "example.com", "secret");
        assert_eq!(h.md5, "b1726872c344b6dc8365b774f8fd6412");
        assert_eq!(
            h.sha256,
            "ed8925b20f9a77b8f8f8d5f8e4467fe32b866f7208ab9e4b20595e9821a0fdee"
        );
    }
}
