//! Address-of-record canonicalization: turns what a SIP front sends
//! (`sip:Alice@Example.COM;transport=tcp`, `alice@example.com`, `alice`) into
//! the key that is hashed and stored, the way Kamailio's registrar builds it
//! (reference §2: user part URL-unescaped, `@domain` when domains are used,
//! lower-cased), so locsvc and p_usrloc agree on where an AoR lives.

use percent_encoding::percent_decode_str;

/// Longest user part accepted: the kamctl `username` column is VARCHAR(64).
pub const MAX_USER_LEN: usize = 64;
/// Longest domain accepted: the kamctl `domain` column is VARCHAR(64).
pub const MAX_DOMAIN_LEN: usize = 64;
/// Longest raw AoR string accepted before any parsing.
pub const MAX_AOR_INPUT_LEN: usize = 1024;

/// How AoR keys are built (p_usrloc's `use_domain` and `case_sensitive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyPolicy {
    /// Key is `user@domain` (true) or the user part alone (false).
    pub use_domain: bool,
    /// Keep the user part's case; the domain is always lower-cased.
    pub case_sensitive: bool,
}

impl Default for KeyPolicy {
    fn default() -> Self {
        Self {
            use_domain: true,
            case_sensitive: false,
        }
    }
}

/// A canonical address-of-record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aor {
    user: String,
    domain: Option<String>,
    key: String,
}

/// Why an AoR string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AorError {
    #[error("aor is empty")]
    Empty,
    #[error("aor is longer than {MAX_AOR_INPUT_LEN} bytes")]
    TooLong,
    #[error("unsupported URI scheme {0:?} (expected sip: or sips:)")]
    Scheme(String),
    #[error("aor has an empty user part")]
    EmptyUser,
    #[error("user part is longer than {MAX_USER_LEN} bytes")]
    UserTooLong,
    #[error("user part has an invalid escape or control character")]
    BadUser,
    #[error("aor has no domain, but keys include the domain (use_domain)")]
    MissingDomain,
    #[error("domain is longer than {MAX_DOMAIN_LEN} bytes")]
    DomainTooLong,
    #[error("domain {0:?} is not a valid host name or IP address")]
    BadDomain(String),
}

impl Aor {
    /// Parses and canonicalizes `input` under `policy`.
    pub fn parse(input: &str, policy: KeyPolicy) -> Result<Self, AorError> {
        if input.len() > MAX_AOR_INPUT_LEN {
            return Err(AorError::TooLong);
        }
        let mut s = input.trim();
        if s.is_empty() {
            return Err(AorError::Empty);
        }
        if let Some(inner) = s.strip_prefix('<').and_then(|r| r.strip_suffix('>')) {
            s = inner.trim();
        }
        if let Some(colon) = s.find(':') {
            // A colon before any '@' is a scheme, unless it is a password
            // separator ("user:pw@host"), which has no scheme letters only.
            let scheme = &s[..colon];
            let at = s.find('@');
            if at.is_none_or(|at| colon < at) && is_scheme_like(scheme) {
                if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
                    s = &s[colon + 1..];
                } else {
                    return Err(AorError::Scheme(scheme.to_ascii_lowercase()));
                }
            }
        }
        let (userinfo, hostpart) = match s.find('@') {
            Some(at) => (&s[..at], Some(&s[at + 1..])),
            None => (strip_uri_tail(s), None),
        };
        // "user:password" never belongs to the key.
        let user_raw = userinfo.split(':').next().unwrap_or_default();
        if user_raw.is_empty() {
            return Err(AorError::EmptyUser);
        }
        let user = percent_decode_str(user_raw)
            .decode_utf8()
            .map_err(|_| AorError::BadUser)?;
        if user.chars().any(|c| c.is_control()) || user.contains('@') && hostpart.is_none() {
            return Err(AorError::BadUser);
        }
        let user = if policy.case_sensitive {
            user.into_owned()
        } else {
            user.to_lowercase()
        };
        if user.len() > MAX_USER_LEN {
            return Err(AorError::UserTooLong);
        }
        let domain = match hostpart {
            Some(h) => Some(parse_host(strip_uri_tail(h))?),
            None => None,
        };
        let domain = if policy.use_domain {
            Some(domain.ok_or(AorError::MissingDomain)?)
        } else {
            None
        };
        let key = match &domain {
            Some(d) => format!("{user}@{d}"),
            None => user.clone(),
        };
        Ok(Self { user, domain, key })
    }

    /// Rebuilds an AoR from stored `username`/`domain` columns.
    pub fn from_stored(user: String, domain: Option<String>) -> Self {
        let key = match &domain {
            Some(d) if !d.is_empty() => format!("{user}@{d}"),
            _ => user.clone(),
        };
        let domain = domain.filter(|d| !d.is_empty());
        Self { user, domain, key }
    }

    /// The user part, as stored in `username`.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The domain, as stored in `domain` (None when domains are not used).
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The partition key and display form: `user` or `user@domain`.
    pub fn key(&self) -> &str {
        &self.key
    }
}

impl std::fmt::Display for Aor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)
    }
}

fn is_scheme_like(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// Drops URI parameters and headers (`;transport=tcp`, `?subject=x`).
fn strip_uri_tail(s: &str) -> &str {
    let end = s.find([';', '?']).unwrap_or(s.len());
    &s[..end]
}

/// Lower-cases a host and drops its port; accepts names, IPv4 and `[IPv6]`.
fn parse_host(h: &str) -> Result<String, AorError> {
    let host = if let Some(rest) = h.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or_else(|| AorError::BadDomain(h.to_string()))?;
        let v6 = &rest[..end];
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| AorError::BadDomain(h.to_string()))?;
        format!("[{}]", v6.to_ascii_lowercase())
    } else {
        let name = h.rsplit_once(':').map_or(h, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                h
            }
        });
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(AorError::BadDomain(h.to_string()));
        }
        name.to_ascii_lowercase()
    };
    if host.len() > MAX_DOMAIN_LEN {
        return Err(AorError::DomainTooLong);
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: KeyPolicy = KeyPolicy {
        use_domain: true,
        case_sensitive: false,
    };
    const USER_ONLY: KeyPolicy = KeyPolicy {
        use_domain: false,
        case_sensitive: false,
    };

    #[test]
    fn scheme_params_port_and_case_are_dropped_from_the_key() {
        let a = Aor::parse("sip:Alice@Example.COM:5060;transport=tcp", DOMAIN).unwrap();
        assert_eq!(a.key(), "alice@example.com");
        assert_eq!(a.user(), "alice");
        assert_eq!(a.domain(), Some("example.com"));
    }

    #[test]
    fn angle_brackets_sips_and_passwords_are_accepted() {
        let a = Aor::parse(" <sips:bob:secret@example.com> ", DOMAIN).unwrap();
        assert_eq!(a.key(), "bob@example.com");
    }

    #[test]
    fn the_user_part_is_url_unescaped_like_kamailio() {
        let a = Aor::parse("sip:%61lice@example.com", DOMAIN).unwrap();
        assert_eq!(a.key(), "alice@example.com");
    }

    #[test]
    fn without_use_domain_the_key_is_the_user_alone() {
        assert_eq!(
            Aor::parse("sip:alice@example.com", USER_ONLY)
                .unwrap()
                .key(),
            "alice"
        );
        let a = Aor::parse("alice", USER_ONLY).unwrap();
        assert_eq!(a.key(), "alice");
        assert_eq!(a.domain(), None);
    }

    #[test]
    fn case_sensitive_keeps_the_user_case_but_not_the_domain_case() {
        let p = KeyPolicy {
            use_domain: true,
            case_sensitive: true,
        };
        assert_eq!(
            Aor::parse("sip:Alice@EXAMPLE.com", p).unwrap().key(),
            "Alice@example.com"
        );
    }

    #[test]
    fn ipv6_hosts_keep_their_brackets() {
        let a = Aor::parse("sip:alice@[2001:DB8::1]:5060", DOMAIN).unwrap();
        assert_eq!(a.key(), "alice@[2001:db8::1]");
    }

    #[test]
    fn bad_aors_are_refused_with_a_reason() {
        assert_eq!(Aor::parse("", DOMAIN), Err(AorError::Empty));
        assert_eq!(Aor::parse("   ", DOMAIN), Err(AorError::Empty));
        assert_eq!(
            Aor::parse("http://x@y", DOMAIN),
            Err(AorError::Scheme("http".into()))
        );
        assert_eq!(
            Aor::parse("sip:@example.com", DOMAIN),
            Err(AorError::EmptyUser)
        );
        assert_eq!(Aor::parse("alice", DOMAIN), Err(AorError::MissingDomain));
        assert_eq!(
            Aor::parse("sip:a%00b@x.com", DOMAIN),
            Err(AorError::BadUser)
        );
        assert_eq!(
            Aor::parse("sip:a%ffb@x.com", DOMAIN),
            Err(AorError::BadUser)
        );
        assert!(matches!(
            Aor::parse("sip:alice@exa mple.com", DOMAIN),
            Err(AorError::BadDomain(_))
        ));
        assert!(matches!(
            Aor::parse("sip:alice@x.com'; DROP TABLE location; --", DOMAIN),
            Err(AorError::BadDomain(_))
        ));
        assert_eq!(
            Aor::parse(&format!("sip:{}@x.com", "a".repeat(65)), DOMAIN),
            Err(AorError::UserTooLong)
        );
        assert_eq!(
            Aor::parse(&"a".repeat(2000), DOMAIN),
            Err(AorError::TooLong)
        );
    }

    #[test]
    fn stored_columns_rebuild_the_same_key() {
        let a = Aor::parse("sip:alice@example.com", DOMAIN).unwrap();
        let b = Aor::from_stored("alice".into(), Some("example.com".into()));
        assert_eq!(a, b);
    }
}
