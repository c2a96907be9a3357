//! Protobuf ⇄ domain conversions, with the input checks of the API edge.
//! Limits follow the kamctl column sizes, so nothing valid here can be
//! refused or truncated by a database.

use locsvc_proto::v1 as pb;

use crate::domain::{Binding, ContactInput, SaveInput, UnixTime};
use crate::store::{StoredBinding, Which};

/// Contacts accepted in one Save.
pub const MAX_CONTACTS_PER_REQUEST: usize = 128;
/// Largest expires value: SIP delta-seconds are 32-bit (RFC 3261 §25.1).
pub const MAX_EXPIRES: i64 = u32::MAX as i64;
/// Largest CSeq number (RFC 3261 §8.1.1.5: less than 2^31).
pub const MAX_CSEQ: u32 = (1 << 31) - 1;
/// Default location table.
pub const DEFAULT_TABLE: &str = "location";

/// A request field that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// The table name of a request ("" means the default).
pub fn table(t: &str) -> &str {
    if t.is_empty() { DEFAULT_TABLE } else { t }
}

fn check_len(field: &str, v: &str, max: usize) -> Result<(), FieldError> {
    if v.len() > max {
        return Err(FieldError::new(field, format!("longer than {max} bytes")));
    }
    if v.chars().any(|c| c.is_control()) {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(())
}

/// A contact URI: sip/sips/tel scheme, no spaces, at most 512 bytes.
fn check_uri(field: &str, uri: &str) -> Result<(), FieldError> {
    if uri.is_empty() {
        return Err(FieldError::new(field, "is empty"));
    }
    check_len(field, uri, 512)?;
    let scheme = uri.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    let rest_ok = uri.split_once(':').is_some_and(|(_, r)| {
        !r.is_empty() && !r.contains(char::is_whitespace) && !r.contains(['<', '>', '"'])
    });
    match scheme.as_deref() {
        Some("sip" | "sips" | "tel") if rest_ok => Ok(()),
        _ => Err(FieldError::new(field, "is not a sip:, sips: or tel: URI")),
    }
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Truncates at a char boundary (the User-Agent is informational; refusing
/// a REGISTER because a phone's User-Agent is long would help nobody).
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Validates a Save request's REGISTER fields.
pub fn save_input(r: &pb::SaveRequest) -> Result<SaveInput, FieldError> {
    if r.contacts.len() > MAX_CONTACTS_PER_REQUEST {
        return Err(FieldError::new(
            "contacts",
            format!("more than {MAX_CONTACTS_PER_REQUEST} contacts"),
        ));
    }
    let writes = !r.contacts.is_empty() || r.wildcard;
    if writes && r.call_id.is_empty() {
        return Err(FieldError::new("call_id", "is required"));
    }
    check_len("call_id", &r.call_id, 255)?;
    if r.cseq > MAX_CSEQ {
        return Err(FieldError::new("cseq", "must be below 2^31"));
    }
    if r.expires.is_some_and(|e| !(0..=MAX_EXPIRES).contains(&e)) {
        return Err(FieldError::new("expires", "must be between 0 and 2^32-1"));
    }
    for (i, p) in r.path.iter().enumerate() {
        if p.is_empty() {
            return Err(FieldError::new(format!("path[{i}]"), "is empty"));
        }
        check_len(&format!("path[{i}]"), p, 512)?;
    }
    let path_len: usize = r.path.iter().map(|p| p.len() + 1).sum();
    if path_len > 513 {
        return Err(FieldError::new("path", "longer than 512 bytes in all"));
    }
    check_len("received", &r.received, 128)?;
    check_len("socket", &r.socket, 64)?;
    if r.user_agent.chars().any(|c| c.is_control()) {
        return Err(FieldError::new("user_agent", "contains control characters"));
    }
    let mut contacts = Vec::with_capacity(r.contacts.len());
    for (i, c) in r.contacts.iter().enumerate() {
        let f = |name: &str| format!("contacts[{i}].{name}");
        check_uri(&f("uri"), &c.uri)?;
        if c.expires.is_some_and(|e| !(0..=MAX_EXPIRES).contains(&e)) {
            return Err(FieldError::new(
                f("expires"),
                "must be between 0 and 2^32-1",
            ));
        }
        if c.q.is_some_and(|q| !(0.0..=1.0).contains(&q)) {
            return Err(FieldError::new(f("q"), "must be between 0 and 1"));
        }
        check_len(&f("instance"), &c.instance, 255)?;
        if c.reg_id > i32::MAX as u32 {
            return Err(FieldError::new(f("reg_id"), "must be below 2^31"));
        }
        check_len(&f("received"), &c.received, 128)?;
        contacts.push(ContactInput {
            uri: c.uri.clone(),
            expires: c.expires,
            q: c.q,
            instance: opt(&c.instance),
            reg_id: c.reg_id,
            methods: c.methods,
            received: opt(&c.received),
        });
    }
    Ok(SaveInput {
        contacts,
        wildcard: r.wildcard,
        expires_header: r.expires,
        call_id: r.call_id.clone(),
        cseq: r.cseq,
        path: r.path.clone(),
        received: opt(&r.received),
        user_agent: truncate(&r.user_agent, 255),
        socket: opt(&r.socket),
        flags: r.flags,
        cflags: r.cflags,
    })
}

/// Validates a record id (kamctl `ruid` is 64 bytes).
pub fn ruid(r: &str) -> Result<&str, FieldError> {
    check_len("ruid", r, 64)?;
    Ok(r)
}

/// What a Remove request deletes: one contact, one ruid, or everything.
pub fn removal(r: &pb::RemoveRequest) -> Result<Which<'_>, FieldError> {
    match (r.contact.as_str(), r.ruid.as_str()) {
        ("", "") => Ok(Which::All),
        (c, "") => {
            check_uri("contact", c)?;
            Ok(Which::Contact(c))
        }
        ("", id) => Ok(Which::Ruid(ruid(id)?)),
        _ => Err(FieldError::new("ruid", "give contact or ruid, not both")),
    }
}

/// `expires_in` of a permanent binding: the largest delta-seconds a 32-bit
/// signed SIP stack reads (about 68 years).
pub const PERMANENT_EXPIRES_IN: i64 = i32::MAX as i64;

/// A domain binding as returned to clients.
pub fn binding(b: &Binding, now: UnixTime) -> pb::Binding {
    let permanent = b.is_permanent();
    pb::Binding {
        contact: b.contact.clone(),
        expires_in: if permanent {
            PERMANENT_EXPIRES_IN
        } else {
            (b.expires - now).max(0)
        },
        expires_at: if permanent { 0 } else { b.expires },
        permanent,
        q: b.q,
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        path: b.path.clone(),
        received: b.received.clone().unwrap_or_default(),
        user_agent: b.user_agent.clone(),
        socket: b.socket.clone().unwrap_or_default(),
        instance: b.instance.clone().unwrap_or_default(),
        reg_id: b.reg_id,
        methods: b.methods,
        flags: b.flags,
        cflags: b.cflags,
        ruid: b.ruid.clone(),
        last_modified: b.last_modified,
    }
}

/// A dumped binding with its AoR.
pub fn aor_binding(s: &StoredBinding, now: UnixTime) -> pb::AorBinding {
    pb::AorBinding {
        aor: s.aor.key().to_string(),
        binding: Some(binding(&s.binding, now)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_permanent_binding_goes_out_flagged_with_the_longest_expiry() {
        let now = 1_800_000_000;
        let permanent = binding(&Binding::new("r", "sip:a@h", 0, now), now);
        assert!(permanent.permanent);
        assert_eq!(
            (permanent.expires_in, permanent.expires_at),
            (PERMANENT_EXPIRES_IN, 0)
        );
        let ordinary = binding(&Binding::new("r", "sip:a@h", now + 60, now), now);
        assert!(!ordinary.permanent);
        assert_eq!((ordinary.expires_in, ordinary.expires_at), (60, now + 60));
    }

    fn req() -> pb::SaveRequest {
        pb::SaveRequest {
            aor: "sip:alice@example.com".into(),
            contacts: vec![pb::ContactSpec {
                uri: "sip:alice@192.0.2.1:5060".into(),
                ..Default::default()
            }],
            call_id: "c1".into(),
            cseq: 1,
            ..Default::default()
        }
    }

    fn field_of(r: pb::SaveRequest) -> String {
        save_input(&r).unwrap_err().field
    }

    #[test]
    fn a_plain_register_converts() {
        let i = save_input(&req()).unwrap();
        assert_eq!(i.contacts[0].uri, "sip:alice@192.0.2.1:5060");
        assert_eq!(i.received, None);
    }

    #[test]
    fn each_bad_field_is_named() {
        let mut r = req();
        r.contacts[0].expires = Some(-1);
        assert_eq!(field_of(r), "contacts[0].expires");
        let mut r = req();
        r.contacts[0].expires = Some(MAX_EXPIRES + 1);
        assert_eq!(field_of(r), "contacts[0].expires");
        let mut r = req();
        r.expires = Some(-5);
        assert_eq!(field_of(r), "expires");
        let mut r = req();
        r.contacts[0].q = Some(1.5);
        assert_eq!(field_of(r), "contacts[0].q");
        let mut r = req();
        r.contacts[0].q = Some(f32::NAN);
        assert_eq!(field_of(r), "contacts[0].q");
        let mut r = req();
        r.contacts[0].uri = "not a uri".into();
        assert_eq!(field_of(r), "contacts[0].uri");
        let mut r = req();
        r.contacts[0].uri = format!("sip:{}@x", "a".repeat(600));
        assert_eq!(field_of(r), "contacts[0].uri");
        let mut r = req();
        r.contacts = vec![r.contacts[0].clone(); MAX_CONTACTS_PER_REQUEST + 1];
        assert_eq!(field_of(r), "contacts");
        let mut r = req();
        r.call_id = String::new();
        assert_eq!(field_of(r), "call_id");
        let mut r = req();
        r.cseq = 1 << 31;
        assert_eq!(field_of(r), "cseq");
        let mut r = req();
        r.received = "x".repeat(129);
        assert_eq!(field_of(r), "received");
        let mut r = req();
        r.path = vec!["<sip:p;lr>".into(); 60];
        assert_eq!(field_of(r), "path");
        let mut r = req();
        r.call_id = "a\r\nb".into();
        assert_eq!(field_of(r), "call_id");
    }

    #[test]
    fn a_long_user_agent_is_truncated_not_refused() {
        let mut r = req();
        r.user_agent = "é".repeat(200);
        let i = save_input(&r).unwrap();
        assert!(i.user_agent.len() <= 255);
        assert!(i.user_agent.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_query_needs_no_call_id() {
        let mut r = req();
        r.contacts.clear();
        r.call_id.clear();
        assert!(save_input(&r).is_ok());
    }
}
