//! SIP digest credentials: input limits, kamctl's HA1 formulas, and which
//! hashes a SIP front gets for a realm. Pure; the rows live in
//! `store::subscriber`, the gRPC face in `grpc::subscribers`.
//!
//! kamctl computes, with realm = domain: `ha1 = MD5(username:domain:password)`
//! and `ha1b = MD5(username@domain:domain:password)` (for clients that put
//! the domain into the digest username), lower-case hex.

use md5::{Digest, Md5};
use sha2::Sha256;

/// Longest username and domain (kamctl column size, bytes).
pub const MAX_NAME: usize = 64;
/// Longest password (kamctl column size, bytes).
pub const MAX_PASSWORD: usize = 64;
/// Longest realm a front may ask for.
pub const MAX_REALM: usize = 128;

/// Input that cannot be a subscriber's credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidField {
    InvalidField {
        field,
        reason: reason.into(),
    }
}

/// A username or domain: 1..=64 bytes, no control characters.
pub fn check_name(field: &'static str, v: &str) -> Result<(), InvalidField> {
    if v.is_empty() || v.len() > MAX_NAME {
        return Err(invalid(field, format!("must be 1 to {MAX_NAME} bytes")));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// A password: 1..=64 bytes.
pub fn check_password(v: &str) -> Result<(), InvalidField> {
    if v.is_empty() || v.len() > MAX_PASSWORD {
        return Err(invalid(
            "password",
            format!("must be 1 to {MAX_PASSWORD} bytes"),
        ));
    }
    Ok(())
}

/// A realm: empty (= the domain) or up to 128 bytes, no control characters.
pub fn check_realm(v: &str) -> Result<(), InvalidField> {
    if v.len() > MAX_REALM {
        return Err(invalid(
            "realm",
            format!("must be at most {MAX_REALM} bytes"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(invalid("realm", "must not contain control characters"));
    }
    Ok(())
}

/// Splits `sip:user@domain` or `user@domain` (what the CLI takes).
pub fn split_aor(aor: &str) -> Result<(&str, &str), InvalidField> {
    let rest = aor
        .strip_prefix("sip:")
        .or_else(|| aor.strip_prefix("sips:"))
        .unwrap_or(aor);
    let (user, domain) = rest
        .rsplit_once('@')
        .ok_or_else(|| invalid("aor", "expected user@domain or sip:user@domain"))?;
    check_name("username", user)?;
    check_name("domain", domain)?;
    Ok((user, domain))
}

/// Lower-case hex of MD5(`a:b:c`).
pub fn md5_hex(a: &str, b: &str, c: &str) -> String {
    let mut h = Md5::new();
    for (i, part) in [a, b, c].iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(part.as_bytes());
    }
    format!("{:x}", h.finalize())
}

/// Lower-case hex of SHA-256(`a:b:c`) (RFC 7616).
pub fn sha256_hex(a: &str, b: &str, c: &str) -> String {
    let mut h = Sha256::new();
    h.update(format!("{a}:{b}:{c}").as_bytes());
    format!("{:x}", h.finalize())
}

/// kamctl's `ha1`: MD5(username:domain:password).
pub fn ha1(username: &str, domain: &str, password: &str) -> String {
    md5_hex(username, domain, password)
}

/// kamctl's `ha1b`: MD5(username@domain:domain:password).
pub fn ha1b(username: &str, domain: &str, password: &str) -> String {
    md5_hex(&format!("{username}@{domain}"), domain, password)
}

/// What a SIP front needs to check a digest for one realm. Never the
/// password.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DigestSecrets {
    /// MD5 HA1, hex; empty when it cannot be derived for this realm.
    pub ha1_md5: String,
    /// SHA-256 HA1, hex; empty without a stored password.
    pub ha1_sha256: String,
}

/// What a subscriber row holds that digest secrets are derived from.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub username: &'a str,
    pub domain: &'a str,
    /// Plain password; empty when the row holds only hashes.
    pub password: &'a str,
    /// kamctl's MD5 HA1 for `domain`.
    pub ha1: &'a str,
}

/// The HA1s of `row` for `realm` (empty realm = the row's domain). With a
/// stored password both are computed for the realm; without one (a
/// Kamailio row holding only hashes) the stored `ha1` serves its own
/// domain, and nothing else can be derived.
pub fn secrets_for(row: Stored<'_>, realm: &str) -> DigestSecrets {
    let realm = if realm.is_empty() { row.domain } else { realm };
    if !row.password.is_empty() {
        return DigestSecrets {
            ha1_md5: md5_hex(row.username, realm, row.password),
            ha1_sha256: sha256_hex(row.username, realm, row.password),
        };
    }
    // Realms compare like host names (RFC 3261 §22.1 suggests the domain).
    if realm.eq_ignore_ascii_case(row.domain) {
        return DigestSecrets {
            ha1_md5: row.ha1.to_ascii_lowercase(),
            ha1_sha256: String::new(),
        };
    }
    DigestSecrets::default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(password: &'a str, ha1: &'a str) -> Stored<'a> {
        Stored {
            username: "alice",
            domain: "example.com",
            password,
            ha1,
        }
    }

    #[test]
    fn kamctl_formulas_match_md5sum() {
        // `printf %s 'alice:example.com:secret' | md5sum` and friends.
        assert_eq!(
            ha1("alice", "example.com", "secret"),
            "b1726872c344b6dc8365b774f8fd6412"
        );
        assert_eq!(
            ha1b("alice", "example.com", "secret"),
            "c79656e4f06dbae9fdf6727654273c65"
        );
        assert_eq!(md5_hex("a", "b", "c"), "02cc8f08398a4f3113b554e8105ebe4c");
        assert_eq!(
            sha256_hex("a", "b", "c"),
            "b0ee04f880c4ff4261479e2e7822b7410aee4c7159f4185ad5b0d88a312b495e"
        );
    }

    #[test]
    fn a_password_serves_every_realm_and_a_bare_ha1_only_its_domain() {
        let p = row("secret", "");
        assert_eq!(
            secrets_for(p, "other.org").ha1_md5,
            md5_hex("alice", "other.org", "secret")
        );
        assert_eq!(
            secrets_for(p, "").ha1_md5,
            ha1("alice", "example.com", "secret")
        );
        assert_eq!(secrets_for(p, "").ha1_sha256.len(), 64);
        let h = row("", "ABCDEF0123456789abcdef0123456789");
        let s = secrets_for(h, "Example.COM");
        assert_eq!(s.ha1_md5, "abcdef0123456789abcdef0123456789");
        assert!(s.ha1_sha256.is_empty());
        assert_eq!(secrets_for(h, "other.org"), DigestSecrets::default());
    }

    #[test]
    fn names_are_bounded_and_free_of_control_characters() {
        assert!(check_name("username", "alice").is_ok());
        assert!(check_name("username", "").is_err());
        assert!(check_name("username", &"a".repeat(65)).is_err());
        assert!(check_name("domain", "exa\nmple.com").is_err());
        assert!(check_password(&"p".repeat(64)).is_ok());
        assert!(check_password(&"p".repeat(65)).is_err());
        assert!(check_realm("").is_ok());
        assert_eq!(
            split_aor("sip:bob@example.com").unwrap(),
            ("bob", "example.com")
        );
        assert_eq!(
            split_aor("bob@example.com").unwrap(),
            ("bob", "example.com")
        );
        assert_eq!(split_aor("bob").unwrap_err().field, "aor");
        assert_eq!(split_aor("@example.com").unwrap_err().field, "username");
    }
}
