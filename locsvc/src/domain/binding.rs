//! A registered contact (binding) and the inputs of one REGISTER.

/// Seconds since the Unix epoch, UTC. All times inside locsvc use it; the
/// stores convert to the `DATETIME`/`TIMESTAMP` columns at their border.
pub type UnixTime = i64;

/// A stored expiry at or before this instant (1970-01-02 00:00:00 UTC)
/// marks a permanent binding: Kamailio's usrloc stores `expires` = 0 for a
/// contact that never expires, written as the epoch in UTC or, without
/// `UTC_timestamps`, in the node's local time (up to 14 h either side).
pub const PERMANENT_UNTIL: UnixTime = 86_400;

/// One stored binding of an AoR (a row of the kamctl `location` table).
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Record unique id; kept across refreshes of the same contact.
    pub ruid: String,
    /// Contact URI, byte-exact as registered.
    pub contact: String,
    /// Absolute expiry; at or before [`PERMANENT_UNTIL`]: never.
    pub expires: UnixTime,
    /// q value, or `None` when the contact had none (stored as -1 like p_usrloc).
    pub q: Option<f32>,
    pub call_id: String,
    pub cseq: u32,
    /// Path header URIs (RFC 3327), in order.
    pub path: Vec<String>,
    /// NAT source address, when it differs from the contact.
    pub received: Option<String>,
    pub user_agent: String,
    pub socket: Option<String>,
    /// `+sip.instance` (RFC 5626), as sent.
    pub instance: Option<String>,
    /// `reg-id` (RFC 5626); 0 when absent.
    pub reg_id: u32,
    /// Allowed methods bit mask; `None` = all.
    pub methods: Option<u32>,
    pub flags: u32,
    pub cflags: u32,
    /// Last REGISTER that touched the binding.
    pub last_modified: UnixTime,
}

impl Binding {
    /// True while the binding has not expired at `now`.
    pub fn is_valid(&self, now: UnixTime) -> bool {
        self.expires > now || self.is_permanent()
    }

    /// True for a binding that never expires (Kamailio's `expires` = 0).
    pub fn is_permanent(&self) -> bool {
        self.expires <= PERMANENT_UNTIL
    }

    /// A binding with this identity and these times, every other field
    /// neutral (no q, Path, NAT, instance or flags): what tests, fixtures
    /// and bulk loads build on.
    pub fn new(ruid: &str, contact: &str, expires: UnixTime, last_modified: UnixTime) -> Self {
        Self {
            ruid: ruid.into(),
            contact: contact.into(),
            expires,
            q: None,
            call_id: format!("cid-{ruid}"),
            cseq: 1,
            path: vec![],
            received: None,
            user_agent: String::new(),
            socket: None,
            instance: None,
            reg_id: 0,
            methods: None,
            flags: 0,
            cflags: 0,
            last_modified,
        }
    }

    /// A binding of `contact` (ruid derived from it) expiring at `expires`,
    /// registered an hour earlier: for unit tests.
    #[cfg(test)]
    pub(crate) fn sample(contact: &str, expires: UnixTime) -> Self {
        Self::new(&format!("r-{contact}"), contact, expires, expires - 3600)
    }
}

/// One Contact of a REGISTER, as the front parsed it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContactInput {
    pub uri: String,
    /// The Contact's `expires` parameter.
    pub expires: Option<i64>,
    pub q: Option<f32>,
    pub instance: Option<String>,
    pub reg_id: u32,
    pub methods: Option<u32>,
    /// Where this contact is reached when it is not its own address (NAT
    /// detected for it by the SIP front); overrides the request's.
    pub received: Option<String>,
}

/// Everything one REGISTER says about an AoR's bindings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaveInput {
    pub contacts: Vec<ContactInput>,
    /// `Contact: *`.
    pub wildcard: bool,
    /// The Expires header.
    pub expires_header: Option<i64>,
    pub call_id: String,
    pub cseq: u32,
    pub path: Vec<String>,
    pub received: Option<String>,
    pub user_agent: String,
    pub socket: Option<String>,
    pub flags: u32,
    pub cflags: u32,
}
