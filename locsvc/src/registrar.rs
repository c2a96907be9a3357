//! The registrar decision of RFC 3261 §10.3: given one REGISTER and every
//! stored row of its AoR, decide which bindings to insert, update and delete,
//! and which bindings the 200 OK lists.
//!
//! This module does not own storage, locking or SIP parsing. The caller reads
//! the AoR's rows, applies the returned [`SavePlan`] (under whatever per-AoR
//! serialisation the store offers), and renders the reply. The clock and new
//! ruids are passed in, so the same input always yields the same plan.

use std::cmp::Ordering;
use std::fmt;

use crate::domain::{Binding, ContactInput, SaveInput, UnixTime};

/// What to do when a contact asks for less than `min_expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinExpiresMode {
    /// Answer 423 Interval Too Brief with `Min-Expires` (RFC 3261 §10.3 step 7).
    Reject,
    /// Silently raise the interval to `min_expires` (Kamailio's default).
    Raise,
}

/// Registrar limits and defaults applied to every REGISTER.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistrarPolicy {
    /// Interval used when neither the Contact `expires` param nor the Expires header is present.
    pub default_expires: u32,
    /// Shortest accepted non-zero interval.
    pub min_expires: u32,
    /// Longest interval; larger values are clamped down. 0 = no limit.
    pub max_expires: u32,
    /// Whether a too-short interval is rejected or raised.
    pub min_expires_mode: MinExpiresMode,
    /// Most valid bindings an AoR may hold. 0 = no limit.
    pub max_contacts: u32,
    /// Seconds within which an equal CSeq on the same Call-ID is a retransmission.
    pub cseq_delay: u32,
}

impl Default for RegistrarPolicy {
    fn default() -> Self {
        Self {
            default_expires: 3600,
            min_expires: 60,
            max_expires: 3600,
            min_expires_mode: MinExpiresMode::Reject,
            max_contacts: 16,
            cseq_delay: 20,
        }
    }
}

/// Why a REGISTER is refused; nothing of it is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistrarError {
    /// 423: carries Min-Expires.
    IntervalTooBrief { min_expires: u32 },
    /// RFC 3261 §10.3 step 7: same Call-ID, CSeq not higher.
    CseqOutOfOrder {
        contact: String,
        stored: u32,
        received: u32,
    },
    /// `max_contacts` exceeded.
    TooManyContacts { max: u32 },
    /// A request that is malformed as a whole; `field` names the offending request field
    /// ("contacts", "expires", "wildcard", "contacts[3].expires", ...).
    Invalid { field: String, reason: String },
}

impl fmt::Display for RegistrarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::IntervalTooBrief { min_expires } => {
                write!(f, "interval too brief, Min-Expires is {min_expires}")
            }
            Self::CseqOutOfOrder {
                contact,
                stored,
                received,
            } => write!(
                f,
                "CSeq {received} is not higher than the stored CSeq {stored} of contact {contact}"
            ),
            Self::TooManyContacts { max } => {
                write!(f, "too many contacts, at most {max} are allowed")
            }
            Self::Invalid { field, reason } => write!(f, "invalid {field}: {reason}"),
        }
    }
}

impl std::error::Error for RegistrarError {}

/// Writes to apply for one REGISTER, and the answer to give.
#[derive(Debug, Clone, PartialEq)]
pub struct SavePlan {
    /// Complete rows to insert or update (keyed by ruid).
    pub upserts: Vec<Binding>,
    /// ruids to delete.
    pub deletes: Vec<String>,
    /// Every valid binding after the plan is applied, ordered by `order_bindings`.
    pub bindings: Vec<Binding>,
}

/// Decides the writes and the reply for one REGISTER against every stored row of its AoR.
///
/// `existing` must hold the AoR's rows, expired ones included, so that a
/// re-registration reuses their ruid. `new_ruid` is called once per binding
/// that the plan actually inserts, and only when the plan succeeds.
///
/// # Errors
///
/// Any [`RegistrarError`]; the request is then refused as a whole and
/// nothing of it may be applied.
pub fn plan_save(
    input: &SaveInput,
    existing: &[Binding],
    now: UnixTime,
    policy: &RegistrarPolicy,
    new_ruid: &mut dyn FnMut() -> String,
) -> Result<SavePlan, RegistrarError> {
    if input.wildcard {
        return plan_wildcard(input, existing, now);
    }
    if let Some(header) = input.expires_header
        && header < 0
    {
        return Err(invalid("expires", "must not be negative"));
    }
    if input.contacts.is_empty() {
        // RFC 3261 §10.3 step 6: without Contact, skip to step 8 and only list.
        return Ok(SavePlan {
            upserts: Vec::new(),
            deletes: Vec::new(),
            bindings: valid_ordered(existing, now),
        });
    }

    // RFC 3261 §10.3 step 7: a 423 skips the remaining steps and the updates
    // commit only if all succeed, so every interval is checked before any
    // binding is touched (and a 423 wins over a CSeq error of another contact).
    let intervals = input
        .contacts
        .iter()
        .enumerate()
        .map(|(index, contact)| contact_interval(index, contact, input.expires_header, policy))
        .collect::<Result<Vec<_>, _>>()?;

    let mut work = WorkingSet::new(existing, now);
    for (contact, &interval) in input.contacts.iter().zip(&intervals) {
        let Some(index) = work.find(contact, now) else {
            if interval > 0 {
                work.insert(new_binding(input, contact, interval, now, String::new()));
            }
            continue;
        };
        // Rows this request already wrote carry its own Call-ID and CSeq;
        // checking them again would turn a repeated contact into a
        // "retransmission" and drop the later instruction.
        let row = &work.rows[index];
        if !row.touched && row.binding.is_valid(now) {
            let verdict = check_cseq(&row.binding, input, &contact.uri, now, policy)?;
            if verdict == CseqVerdict::Retransmission {
                continue;
            }
        }
        if interval == 0 {
            work.remove(index);
        } else {
            let ruid = row.binding.ruid.clone();
            work.update(index, new_binding(input, contact, interval, now, ruid));
        }
    }

    work.check_max_contacts(policy.max_contacts, now)?;
    Ok(work.into_plan(now, new_ruid))
}

/// Best first: q descending, unspecified q (None) after every explicit q, then most recent
/// `last_modified` first, then ruid ascending for a deterministic order.
pub fn order_bindings(bindings: &mut [Binding]) {
    bindings.sort_by(compare_bindings);
}

/// Valid bindings at `now`, ordered (what Lookup returns).
#[must_use]
pub fn valid_ordered(existing: &[Binding], now: UnixTime) -> Vec<Binding> {
    let mut valid: Vec<Binding> = existing
        .iter()
        .filter(|binding| binding.is_valid(now))
        .cloned()
        .collect();
    order_bindings(&mut valid);
    valid
}

fn compare_bindings(a: &Binding, b: &Binding) -> Ordering {
    let by_q = match (a.q, b.q) {
        // total_cmp keeps sort_by's total-order contract even for a NaN read from a store.
        (Some(qa), Some(qb)) => qb.total_cmp(&qa),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    };
    by_q.then_with(|| b.last_modified.cmp(&a.last_modified))
        .then_with(|| a.ruid.cmp(&b.ruid))
}

/// `Contact: *` (RFC 3261 §10.3 step 6): remove the whole AoR.
fn plan_wildcard(
    input: &SaveInput,
    existing: &[Binding],
    now: UnixTime,
) -> Result<SavePlan, RegistrarError> {
    // Reasons worded as Kamailio's registrar, which operators already grep for.
    if !input.contacts.is_empty() {
        return Err(invalid("wildcard", "more than 1 contact"));
    }
    if input.expires_header != Some(0) {
        return Err(invalid(
            "wildcard",
            "* used in contact and expires is not zero",
        ));
    }
    // RFC 3261 §10.3 step 6: a binding of the same Call-ID whose CSeq is not
    // lower than the request's makes the whole request fail. Expired rows are
    // already gone from the client's point of view, so they do not block it.
    if let Some(newer) = existing.iter().find(|binding| {
        binding.is_valid(now) && binding.call_id == input.call_id && binding.cseq >= input.cseq
    }) {
        return Err(RegistrarError::CseqOutOfOrder {
            contact: newer.contact.clone(),
            stored: newer.cseq,
            received: input.cseq,
        });
    }
    Ok(SavePlan {
        upserts: Vec::new(),
        deletes: existing
            .iter()
            .map(|binding| binding.ruid.clone())
            .collect(),
        bindings: Vec::new(),
    })
}

/// Seconds the contact asks for after policy, 0 meaning "remove".
fn contact_interval(
    index: usize,
    contact: &ContactInput,
    expires_header: Option<i64>,
    policy: &RegistrarPolicy,
) -> Result<i64, RegistrarError> {
    if contact.uri.is_empty() {
        return Err(invalid(
            format!("contacts[{index}].uri"),
            "must not be empty",
        ));
    }
    if let Some(q) = contact.q
        && !(0.0..=1.0).contains(&q)
    {
        return Err(invalid(
            format!("contacts[{index}].q"),
            "must be between 0 and 1",
        ));
    }
    // RFC 3261 §10.3 step 7 precedence: Contact param, then Expires header,
    // then the local default.
    let requested = match (contact.expires, expires_header) {
        (Some(param), _) if param < 0 => {
            return Err(invalid(
                format!("contacts[{index}].expires"),
                "must not be negative",
            ));
        }
        (Some(param), _) => param,
        // The header's sign was checked for the whole request.
        (None, Some(header)) => header,
        (None, None) => i64::from(policy.default_expires),
    };
    if requested == 0 {
        return Ok(0);
    }
    let min = i64::from(policy.min_expires);
    let mut interval = requested;
    if interval < min {
        match policy.min_expires_mode {
            MinExpiresMode::Reject => {
                return Err(RegistrarError::IntervalTooBrief {
                    min_expires: policy.min_expires,
                });
            }
            MinExpiresMode::Raise => interval = min,
        }
    }
    if policy.max_expires > 0 {
        interval = interval.min(i64::from(policy.max_expires));
    }
    Ok(interval)
}

#[derive(Debug, PartialEq, Eq)]
enum CseqVerdict {
    Apply,
    Retransmission,
}

/// RFC 3261 §10.3 step 7, with Kamailio's `cseq_delay` window for retransmissions.
fn check_cseq(
    stored: &Binding,
    input: &SaveInput,
    contact: &str,
    now: UnixTime,
    policy: &RegistrarPolicy,
) -> Result<CseqVerdict, RegistrarError> {
    // A new Call-ID means a new registration session (e.g. the UA rebooted):
    // its CSeq space is unrelated to the stored one.
    if stored.call_id != input.call_id || input.cseq > stored.cseq {
        return Ok(CseqVerdict::Apply);
    }
    let age = now.saturating_sub(stored.last_modified);
    if input.cseq == stored.cseq && age <= i64::from(policy.cseq_delay) {
        return Ok(CseqVerdict::Retransmission);
    }
    Err(RegistrarError::CseqOutOfOrder {
        contact: contact.to_owned(),
        stored: stored.cseq,
        received: input.cseq,
    })
}

fn new_binding(
    input: &SaveInput,
    contact: &ContactInput,
    interval: i64,
    now: UnixTime,
    ruid: String,
) -> Binding {
    Binding {
        ruid,
        contact: contact.uri.clone(),
        // Saturate: with max_expires = 0 a client may ask for any i64.
        expires: now.saturating_add(interval),
        q: contact.q,
        call_id: input.call_id.clone(),
        cseq: input.cseq,
        path: input.path.clone(),
        received: contact.received.clone().or_else(|| input.received.clone()),
        user_agent: input.user_agent.clone(),
        socket: input.socket.clone(),
        instance: contact.instance.clone(),
        reg_id: contact.reg_id,
        methods: contact.methods,
        flags: input.flags,
        cflags: input.cflags,
        last_modified: now,
    }
}

/// The instance with the angle brackets of `+sip.instance="<urn:...>"` removed,
/// or `None` when there is nothing left to match on.
fn instance_key(instance: Option<&str>) -> Option<&str> {
    let instance = instance?;
    let instance = instance.strip_prefix('<').unwrap_or(instance);
    let instance = instance.strip_suffix('>').unwrap_or(instance);
    (!instance.is_empty()).then_some(instance)
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> RegistrarError {
    RegistrarError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// One row of the AoR as this request sees it.
struct Row {
    binding: Binding,
    /// False for rows this request inserts; they get a ruid only at the end.
    stored: bool,
    /// Written by this request (goes to `upserts`).
    touched: bool,
    /// Valid before the request, so that reviving an expired row counts as an addition.
    was_valid: bool,
}

/// The AoR as it will be after the contacts processed so far, so that a
/// contact repeated in one request acts on the result of the earlier one.
struct WorkingSet {
    rows: Vec<Row>,
    deletes: Vec<String>,
}

impl WorkingSet {
    fn new(existing: &[Binding], now: UnixTime) -> Self {
        let rows = existing
            .iter()
            .map(|binding| Row {
                binding: binding.clone(),
                stored: true,
                touched: false,
                was_valid: binding.is_valid(now),
            })
            .collect();
        Self {
            rows,
            deletes: Vec::new(),
        }
    }

    /// The row this contact refers to. RFC 5626 §6: with an instance, the
    /// flow is identified by (instance, reg-id) and the URI may change;
    /// otherwise by the contact URI, byte-exact like p_usrloc's CONTACT_ONLY.
    /// Should several rows qualify (a store filled by racing writers), the
    /// valid, most recently modified one wins.
    fn find(&self, contact: &ContactInput, now: UnixTime) -> Option<usize> {
        let wanted = instance_key(contact.instance.as_deref());
        let matches = |binding: &Binding| match wanted {
            Some(instance) => {
                instance_key(binding.instance.as_deref()) == Some(instance)
                    && binding.reg_id == contact.reg_id
            }
            None => binding.contact == contact.uri,
        };
        self.rows
            .iter()
            .enumerate()
            .filter(|(_, row)| matches(&row.binding))
            .fold(None, |best: Option<(usize, &Row)>, (index, row)| {
                let rank = |row: &Row| (row.binding.is_valid(now), row.binding.last_modified);
                match best {
                    Some((_, kept)) if rank(kept) >= rank(row) => best,
                    _ => Some((index, row)),
                }
            })
            .map(|(index, _)| index)
    }

    fn insert(&mut self, binding: Binding) {
        self.rows.push(Row {
            binding,
            stored: false,
            touched: true,
            was_valid: false,
        });
    }

    fn update(&mut self, index: usize, binding: Binding) {
        if let Some(row) = self.rows.get_mut(index) {
            row.binding = binding;
            row.touched = true;
        }
    }

    /// A row inserted earlier in this request simply vanishes: the store never saw it.
    fn remove(&mut self, index: usize) {
        if index < self.rows.len() {
            let row = self.rows.remove(index);
            if row.stored {
                self.deletes.push(row.binding.ruid);
            }
        }
    }

    /// Only growth is refused, so that a UA can always refresh or shrink an
    /// AoR that a lowered limit left over-full.
    fn check_max_contacts(&self, max: u32, now: UnixTime) -> Result<(), RegistrarError> {
        if max == 0 {
            return Ok(());
        }
        let valid = self.rows.iter().filter(|row| row.binding.is_valid(now));
        let adds = valid.clone().any(|row| !row.was_valid);
        let over = u32::try_from(valid.count()).map_or(true, |count| count > max);
        if adds && over {
            return Err(RegistrarError::TooManyContacts { max });
        }
        Ok(())
    }

    fn into_plan(mut self, now: UnixTime, new_ruid: &mut dyn FnMut() -> String) -> SavePlan {
        for row in self.rows.iter_mut().filter(|row| !row.stored) {
            row.binding.ruid = new_ruid();
        }
        let upserts = self
            .rows
            .iter()
            .filter(|row| row.touched)
            .map(|row| row.binding.clone())
            .collect();
        let mut bindings: Vec<Binding> = self
            .rows
            .into_iter()
            .map(|row| row.binding)
            .filter(|binding| binding.is_valid(now))
            .collect();
        order_bindings(&mut bindings);
        SavePlan {
            upserts,
            deletes: self.deletes,
            bindings,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_700_000_000;

    /// A row as the store would return it: registered ten minutes ago with CSeq 1.
    fn stored(ruid: &str, contact: &str, expires_in: i64) -> Binding {
        Binding {
            call_id: "call-1".to_owned(),
            user_agent: "old-ua".to_owned(),
            ..Binding::new(ruid, contact, NOW + expires_in, NOW - 600)
        }
    }

    fn contact(uri: &str) -> ContactInput {
        ContactInput {
            uri: uri.to_owned(),
            ..ContactInput::default()
        }
    }

    fn contact_expiring(uri: &str, expires: i64) -> ContactInput {
        ContactInput {
            expires: Some(expires),
            ..contact(uri)
        }
    }

    fn flow(uri: &str, instance: &str, reg_id: u32) -> ContactInput {
        ContactInput {
            instance: Some(instance.to_owned()),
            reg_id,
            ..contact(uri)
        }
    }

    /// The next REGISTER of the stored rows' dialog: same Call-ID, CSeq 2.
    fn register(contacts: Vec<ContactInput>) -> SaveInput {
        SaveInput {
            contacts,
            call_id: "call-1".to_owned(),
            cseq: 2,
            user_agent: "new-ua".to_owned(),
            ..SaveInput::default()
        }
    }

    fn wildcard(expires_header: Option<i64>) -> SaveInput {
        SaveInput {
            wildcard: true,
            expires_header,
            ..register(Vec::new())
        }
    }

    fn plan_with(
        input: &SaveInput,
        existing: &[Binding],
        policy: &RegistrarPolicy,
    ) -> Result<SavePlan, RegistrarError> {
        let mut issued = 0;
        let mut new_ruid = || {
            issued += 1;
            format!("new-{issued}")
        };
        plan_save(input, existing, NOW, policy, &mut new_ruid)
    }

    fn plan(input: &SaveInput, existing: &[Binding]) -> Result<SavePlan, RegistrarError> {
        plan_with(input, existing, &RegistrarPolicy::default())
    }

    fn accepted(input: &SaveInput, existing: &[Binding]) -> SavePlan {
        match plan(input, existing) {
            Ok(plan) => plan,
            Err(error) => panic!("REGISTER refused: {error}"),
        }
    }

    fn accepted_with(
        input: &SaveInput,
        existing: &[Binding],
        policy: &RegistrarPolicy,
    ) -> SavePlan {
        match plan_with(input, existing, policy) {
            Ok(plan) => plan,
            Err(error) => panic!("REGISTER refused: {error}"),
        }
    }

    fn ruids(bindings: &[Binding]) -> Vec<&str> {
        bindings
            .iter()
            .map(|binding| binding.ruid.as_str())
            .collect()
    }

    fn contacts_of(bindings: &[Binding]) -> Vec<&str> {
        bindings
            .iter()
            .map(|binding| binding.contact.as_str())
            .collect()
    }

    fn no_writes(plan: &SavePlan) -> bool {
        plan.upserts.is_empty() && plan.deletes.is_empty()
    }

    fn invalid_field(result: Result<SavePlan, RegistrarError>) -> String {
        match result {
            Err(RegistrarError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    // --- policy -----------------------------------------------------------

    #[test]
    fn the_default_policy_rejects_brief_intervals_and_keeps_kamailio_limits() {
        let policy = RegistrarPolicy::default();
        assert_eq!(policy.default_expires, 3600);
        assert_eq!(policy.min_expires, 60);
        assert_eq!(policy.max_expires, 3600);
        assert_eq!(policy.min_expires_mode, MinExpiresMode::Reject);
        assert_eq!(policy.max_contacts, 16);
        assert_eq!(policy.cseq_delay, 20);
    }

    // --- insert, refresh, remove ------------------------------------------

    #[test]
    fn a_first_registration_inserts_a_complete_binding_with_a_fresh_ruid() {
        let input = SaveInput {
            contacts: vec![ContactInput {
                uri: "sip:alice@10.0.0.1:5060".to_owned(),
                expires: Some(300),
                q: Some(0.5),
                instance: Some("<urn:uuid:1>".to_owned()),
                reg_id: 1,
                methods: Some(0x3f),
                received: None,
            }],
            wildcard: false,
            expires_header: None,
            call_id: "call-9".to_owned(),
            cseq: 7,
            path: vec!["<sip:edge;lr>".to_owned()],
            received: Some("sip:192.0.2.1:4000".to_owned()),
            user_agent: "phone/1.0".to_owned(),
            socket: Some("udp:10.0.0.254:5060".to_owned()),
            flags: 4,
            cflags: 8,
        };
        let plan = accepted(&input, &[]);
        let expected = Binding {
            ruid: "new-1".to_owned(),
            contact: "sip:alice@10.0.0.1:5060".to_owned(),
            expires: NOW + 300,
            q: Some(0.5),
            call_id: "call-9".to_owned(),
            cseq: 7,
            path: vec!["<sip:edge;lr>".to_owned()],
            received: Some("sip:192.0.2.1:4000".to_owned()),
            user_agent: "phone/1.0".to_owned(),
            socket: Some("udp:10.0.0.254:5060".to_owned()),
            instance: Some("<urn:uuid:1>".to_owned()),
            reg_id: 1,
            methods: Some(0x3f),
            flags: 4,
            cflags: 8,
            last_modified: NOW,
        };
        assert_eq!(plan.upserts, vec![expected.clone()]);
        assert!(plan.deletes.is_empty());
        assert_eq!(plan.bindings, vec![expected]);
    }

    #[test]
    fn a_contacts_own_received_wins_over_the_requests() {
        let natted = ContactInput {
            received: Some("sip:198.51.100.7:40123".to_owned()),
            ..contact("sip:a@10.0.0.5:5060")
        };
        let third_party = contact("sip:a@203.0.113.9:5060");
        let input = register(vec![natted, third_party]);
        let plan = accepted(&input, &[]);
        let received: Vec<Option<&str>> =
            plan.upserts.iter().map(|b| b.received.as_deref()).collect();
        assert_eq!(received, [Some("sip:198.51.100.7:40123"), None]);
    }

    #[test]
    fn a_refresh_keeps_the_ruid_and_moves_the_expiry() {
        let existing = [stored("r1", "sip:a@h", 100)];
        let input = SaveInput {
            path: vec!["<sip:p;lr>".to_owned()],
            ..register(vec![ContactInput {
                q: Some(0.7),
                ..contact_expiring("sip:a@h", 1800)
            }])
        };
        let plan = accepted(&input, &existing);
        assert_eq!(ruids(&plan.upserts), ["r1"]);
        let refreshed = &plan.upserts[0];
        assert_eq!(refreshed.expires, NOW + 1800);
        assert_eq!(refreshed.cseq, 2);
        assert_eq!(refreshed.q, Some(0.7));
        assert_eq!(refreshed.user_agent, "new-ua");
        assert_eq!(refreshed.path, ["<sip:p;lr>"]);
        assert_eq!(refreshed.last_modified, NOW);
        assert!(plan.deletes.is_empty());
        assert_eq!(plan.bindings, plan.upserts);
    }

    #[test]
    fn the_contact_expires_param_wins_over_the_expires_header() {
        let input = SaveInput {
            expires_header: Some(900),
            ..register(vec![contact_expiring("sip:a@h", 120)])
        };
        assert_eq!(accepted(&input, &[]).upserts[0].expires, NOW + 120);
    }

    #[test]
    fn the_expires_header_applies_when_the_contact_has_no_param() {
        let input = SaveInput {
            expires_header: Some(900),
            ..register(vec![contact("sip:a@h"), contact_expiring("sip:b@h", 120)])
        };
        let plan = accepted(&input, &[]);
        let expiries: Vec<_> = plan.upserts.iter().map(|b| b.expires - NOW).collect();
        assert_eq!(expiries, [900, 120]);
    }

    #[test]
    fn the_default_expires_applies_when_neither_param_nor_header_is_present() {
        let policy = RegistrarPolicy {
            default_expires: 1234,
            ..RegistrarPolicy::default()
        };
        let plan = accepted_with(&register(vec![contact("sip:a@h")]), &[], &policy);
        assert_eq!(plan.upserts[0].expires, NOW + 1234);
    }

    #[test]
    fn expires_zero_removes_a_matching_binding() {
        let existing = [stored("r1", "sip:a@h", 100), stored("r2", "sip:b@h", 100)];
        let plan = accepted(&register(vec![contact_expiring("sip:a@h", 0)]), &existing);
        assert!(plan.upserts.is_empty());
        assert_eq!(plan.deletes, ["r1"]);
        assert_eq!(ruids(&plan.bindings), ["r2"]);
    }

    #[test]
    fn an_expires_zero_header_removes_every_contact_without_a_param() {
        let existing = [stored("r1", "sip:a@h", 100), stored("r2", "sip:b@h", 100)];
        let input = SaveInput {
            expires_header: Some(0),
            ..register(vec![contact("sip:a@h"), contact_expiring("sip:b@h", 600)])
        };
        let plan = accepted(&input, &existing);
        assert_eq!(plan.deletes, ["r1"]);
        assert_eq!(ruids(&plan.upserts), ["r2"]);
    }

    #[test]
    fn removing_an_unknown_contact_writes_nothing_and_still_succeeds() {
        let existing = [stored("r1", "sip:a@h", 100)];
        let plan = accepted(&register(vec![contact_expiring("sip:x@h", 0)]), &existing);
        assert!(no_writes(&plan));
        assert_eq!(ruids(&plan.bindings), ["r1"]);
    }

    // --- min / max expires ------------------------------------------------

    #[test]
    fn a_too_brief_interval_is_answered_with_min_expires_in_reject_mode() {
        let result = plan(&register(vec![contact_expiring("sip:a@h", 59)]), &[]);
        assert_eq!(
            result,
            Err(RegistrarError::IntervalTooBrief { min_expires: 60 })
        );
    }

    #[test]
    fn one_too_brief_contact_refuses_the_whole_request() {
        let existing = [stored("r1", "sip:a@h", 100)];
        let input = register(vec![
            contact_expiring("sip:a@h", 0),
            contact_expiring("sip:b@h", 3600),
            contact_expiring("sip:c@h", 10),
        ]);
        assert_eq!(
            plan(&input, &existing),
            Err(RegistrarError::IntervalTooBrief { min_expires: 60 })
        );
    }

    #[test]
    fn a_too_brief_interval_wins_over_an_out_of_order_cseq() {
        let existing = [stored("r1", "sip:a@h", 100)];
        let input = SaveInput {
            cseq: 0,
            ..register(vec![
                contact_expiring("sip:a@h", 3600),
                contact_expiring("sip:b@h", 1),
            ])
        };
        assert_eq!(
            plan(&input, &existing),
            Err(RegistrarError::IntervalTooBrief { min_expires: 60 })
        );
    }

    #[test]
    fn a_too_brief_interval_is_raised_to_the_minimum_in_raise_mode() {
        let policy = RegistrarPolicy {
            min_expires_mode: MinExpiresMode::Raise,
            ..RegistrarPolicy::default()
        };
        let plan = accepted_with(
            &register(vec![contact_expiring("sip:a@h", 1)]),
            &[],
            &policy,
        );
        assert_eq!(plan.upserts[0].expires, NOW + 60);
    }

    #[test]
    fn an_interval_equal_to_min_expires_is_accepted_as_is() {
        let plan = accepted(&register(vec![contact_expiring("sip:a@h", 60)]), &[]);
        assert_eq!(plan.upserts[0].expires, NOW + 60);
    }

    #[test]
    fn a_removal_is_never_too_brief() {
        let existing = [stored("r1", "sip:a@h", 100)];
        let plan = accepted(&register(vec![contact_expiring("sip:a@h", 0)]), &existing);
        assert_eq!(plan.deletes, ["r1"]);
    }

    #[test]
    fn a_long_interval_is_clamped_to_max_expires() {
        let plan = accepted(&register(vec![contact_expiring("sip:a@h", 999_999)]), &[]);
        assert_eq!(plan.upserts[0].expires, NOW + 3600);
    }

    #[test]
    fn a_zero_max_expires_means_no_upper_limit() {
        let policy = RegistrarPolicy {
            max_expires: 0,
            ..RegistrarPolicy::default()
        };
        let plan = accepted_with(
            &register(vec![contact_expiring("sip:a@h", 999_999)]),
            &[],
            &policy,
        );
        assert_eq!(plan.upserts[0].expires, NOW + 999_999);
    }

    #[test]
    fn a_huge_unlimited_interval_saturates_instead_of_overflowing() {
        let policy = RegistrarPolicy {
            max_expires: 0,
            ..RegistrarPolicy::default()
        };
        let plan = accepted_with(
            &register(vec![contact_expiring("sip:a@h", i64::MAX)]),
            &[],
            &policy,
        );
        assert_eq!(plan.upserts[0].expires, UnixTime::MAX);
    }

    // --- malformed requests -----------------------------------------------

    #[test]
    fn a_negative_contact_expires_is_invalid_and_names_the_contact() {
        let input = register(vec![
            contact_expiring("sip:a@h", 60),
            contact_expiring("sip:b@h", -1),
        ]);
        assert_eq!(invalid_field(plan(&input, &[])), "contacts[1].expires");
    }

    #[test]
    fn a_negative_expires_header_is_invalid() {
        let input = SaveInput {
            expires_header: Some(-5),
            ..register(vec![contact_expiring("sip:a@h", 60)])
        };
        assert_eq!(invalid_field(plan(&input, &[])), "expires");
    }

    #[test]
    fn an_empty_contact_uri_is_invalid() {
        let input = register(vec![contact("sip:a@h"), contact("")]);
        assert_eq!(invalid_field(plan(&input, &[])), "contacts[1].uri");
    }

    #[test]
    fn a_q_outside_zero_to_one_is_invalid() {
        for q in [-0.1, 1.5, f32::NAN] {
            let input = register(vec![ContactInput {
                q: Some(q),
                ..contact("sip:a@h")
            }]);
            assert_eq!(invalid_field(plan(&input, &[])), "contacts[0].q");
        }
    }

    // --- wildcard -----------------------------------------------------------

    #[test]
    fn a_wildcard_with_expires_zero_deletes_every_row_including_expired_ones() {
        let existing = [stored("r1", "sip:a@h", 100), stored("r2", "sip:b@h", -100)];
        let plan = accepted(&wildcard(Some(0)), &existing);
        assert!(plan.upserts.is_empty());
        assert_eq!(plan.deletes, ["r1", "r2"]);
        assert!(plan.bindings.is_empty());
    }

    #[test]
    fn a_wildcard_with_other_contacts_is_invalid() {
        let input = SaveInput {
            contacts: vec![contact("sip:a@h")],
            ..wildcard(Some(0))
        };
        assert_eq!(
            plan(&input, &[]),
            Err(RegistrarError::Invalid {
                field: "wildcard".to_owned(),
                reason: "more than 1 contact".to_owned(),
            })
        );
    }

    #[test]
    fn a_wildcard_with_a_non_zero_expires_is_invalid() {
        for header in [Some(3600), Some(-1)] {
            assert_eq!(
                plan(&wildcard(header), &[]),
                Err(RegistrarError::Invalid {
                    field: "wildcard".to_owned(),
                    reason: "* used in contact and expires is not zero".to_owned(),
                })
            );
        }
    }

    #[test]
    fn a_wildcard_without_an_expires_header_is_invalid() {
        assert_eq!(invalid_field(plan(&wildcard(None), &[])), "wildcard");
    }

    #[test]
    fn a_wildcard_fails_when_a_binding_of_its_call_id_has_a_cseq_not_lower() {
        for stored_cseq in [2, 3] {
            let existing = [
                stored("r1", "sip:a@h", 100),
                Binding {
                    cseq: stored_cseq,
                    ..stored("r2", "sip:b@h", 100)
                },
            ];
            assert_eq!(
                plan(&wildcard(Some(0)), &existing),
                Err(RegistrarError::CseqOutOfOrder {
                    contact: "sip:b@h".to_owned(),
                    stored: stored_cseq,
                    received: 2,
                })
            );
        }
    }

    #[test]
    fn a_wildcard_ignores_the_cseq_of_other_call_ids_and_of_expired_bindings() {
        let existing = [
            Binding {
                cseq: 50,
                call_id: "other".to_owned(),
                ..stored("r1", "sip:a@h", 100)
            },
            Binding {
                cseq: 50,
                ..stored("r2", "sip:b@h", -1)
            },
        ];
        let plan = accepted(&wildcard(Some(0)), &existing);
        assert_eq!(plan.deletes, ["r1", "r2"]);
    }

    #[test]
    fn a_wildcard_on_an_empty_aor_succeeds_without_writes() {
        let plan = accepted(&wildcard(Some(0)), &[]);
        assert!(no_writes(&plan));
        assert!(plan.bindings.is_empty());
    }

    // --- Call-ID / CSeq ---------------------------------------------------

    #[test]
    fn a_retransmission_within_cseq_delay_is_skipped_silently() {
        let existing = [Binding {
            cseq: 2,
            last_modified: NOW - 20,
            ..stored("r1", "sip:a@h", 100)
        }];
        let input = register(vec![contact_expiring("sip:a@h", 0)]);
        let plan = accepted(&input, &existing);
        assert!(no_writes(&plan));
        assert_eq!(ruids(&plan.bindings), ["r1"]);
    }

    #[test]
    fn a_retransmitted_contact_does_not_stop_the_other_contacts() {
        let existing = [Binding {
            cseq: 2,
            last_modified: NOW - 5,
            ..stored("r1", "sip:a@h", 100)
        }];
        let input = register(vec![contact("sip:a@h"), contact("sip:b@h")]);
        let plan = accepted(&input, &existing);
        assert_eq!(ruids(&plan.upserts), ["new-1"]);
        assert_eq!(contacts_of(&plan.upserts), ["sip:b@h"]);
    }

    #[test]
    fn an_equal_cseq_after_cseq_delay_is_out_of_order() {
        let existing = [Binding {
            cseq: 2,
            last_modified: NOW - 21,
            ..stored("r1", "sip:a@h", 100)
        }];
        assert_eq!(
            plan(&register(vec![contact("sip:a@h")]), &existing),
            Err(RegistrarError::CseqOutOfOrder {
                contact: "sip:a@h".to_owned(),
                stored: 2,
                received: 2,
            })
        );
    }

    #[test]
    fn a_lower_cseq_on_the_same_call_id_is_out_of_order() {
        let existing = [Binding {
            cseq: 5,
            last_modified: NOW,
            ..stored("r1", "sip:a@h", 100)
        }];
        assert_eq!(
            plan(&register(vec![contact("sip:a@h")]), &existing),
            Err(RegistrarError::CseqOutOfOrder {
                contact: "sip:a@h".to_owned(),
                stored: 5,
                received: 2,
            })
        );
    }

    #[test]
    fn a_stale_removal_is_out_of_order_too() {
        let existing = [Binding {
            cseq: 5,
            ..stored("r1", "sip:a@h", 100)
        }];
        let result = plan(&register(vec![contact_expiring("sip:a@h", 0)]), &existing);
        assert!(matches!(
            result,
            Err(RegistrarError::CseqOutOfOrder { stored: 5, .. })
        ));
    }

    #[test]
    fn an_out_of_order_contact_refuses_the_contacts_before_it() {
        let existing = [Binding {
            cseq: 5,
            ..stored("r1", "sip:b@h", 100)
        }];
        let input = register(vec![contact("sip:a@h"), contact("sip:b@h")]);
        assert!(matches!(
            plan(&input, &existing),
            Err(RegistrarError::CseqOutOfOrder { .. })
        ));
    }

    #[test]
    fn a_different_call_id_overwrites_whatever_its_cseq() {
        let existing = [Binding {
            cseq: 500,
            last_modified: NOW,
            ..stored("r1", "sip:a@h", 100)
        }];
        let input = SaveInput {
            call_id: "rebooted".to_owned(),
            cseq: 1,
            ..register(vec![contact("sip:a@h")])
        };
        let plan = accepted(&input, &existing);
        assert_eq!(ruids(&plan.upserts), ["r1"]);
        assert_eq!(plan.upserts[0].call_id, "rebooted");
        assert_eq!(plan.upserts[0].cseq, 1);
    }

    #[test]
    fn an_expired_match_reuses_its_ruid_without_a_cseq_check() {
        let existing = [Binding {
            cseq: 500,
            ..stored("r1", "sip:a@h", -10)
        }];
        let plan = accepted(&register(vec![contact("sip:a@h")]), &existing);
        assert_eq!(ruids(&plan.upserts), ["r1"]);
        assert_eq!(plan.upserts[0].expires, NOW + 3600);
        assert_eq!(ruids(&plan.bindings), ["r1"]);
    }

    #[test]
    fn removing_an_expired_match_deletes_its_row() {
        let existing = [stored("r1", "sip:a@h", -10)];
        let plan = accepted(&register(vec![contact_expiring("sip:a@h", 0)]), &existing);
        assert_eq!(plan.deletes, ["r1"]);
        assert!(plan.bindings.is_empty());
    }

    // --- identity: contact URI, instance and reg-id -------------------------

    #[test]
    fn a_contact_without_instance_matches_its_uri_byte_exact() {
        let existing = [stored("r1", "sip:a@h", 100)];
        let plan = accepted(&register(vec![contact("sip:A@h")]), &existing);
        assert_eq!(ruids(&plan.upserts), ["new-1"]);
        assert_eq!(contacts_of(&plan.bindings), ["sip:A@h", "sip:a@h"]);
    }

    #[test]
    fn a_new_contact_uri_of_the_same_instance_and_reg_id_keeps_the_ruid() {
        let existing = [Binding {
            instance: Some("<urn:uuid:1>".to_owned()),
            reg_id: 1,
            ..stored("r1", "sip:a@10.0.0.1", 100)
        }];
        let input = register(vec![flow("sip:a@10.0.0.2", "<urn:uuid:1>", 1)]);
        let plan = accepted(&input, &existing);
        assert_eq!(ruids(&plan.upserts), ["r1"]);
        assert!(plan.deletes.is_empty());
        assert_eq!(contacts_of(&plan.bindings), ["sip:a@10.0.0.2"]);
    }

    #[test]
    fn instance_matching_ignores_the_angle_brackets_only() {
        let existing = [Binding {
            instance: Some("<urn:uuid:abc>".to_owned()),
            ..stored("r1", "sip:a@h", 100)
        }];
        let same = accepted(
            &register(vec![flow("sip:b@h", "urn:uuid:abc", 0)]),
            &existing,
        );
        assert_eq!(ruids(&same.upserts), ["r1"]);
        let other_case = accepted(
            &register(vec![flow("sip:b@h", "urn:uuid:ABC", 0)]),
            &existing,
        );
        assert_eq!(ruids(&other_case.upserts), ["new-1"]);
    }

    #[test]
    fn a_different_reg_id_is_a_separate_binding() {
        let existing = [Binding {
            instance: Some("<urn:uuid:1>".to_owned()),
            reg_id: 1,
            ..stored("r1", "sip:a@h", 100)
        }];
        let plan = accepted(
            &register(vec![flow("sip:a@h", "<urn:uuid:1>", 2)]),
            &existing,
        );
        assert_eq!(ruids(&plan.upserts), ["new-1"]);
        assert!(plan.deletes.is_empty());
        assert_eq!(plan.bindings.len(), 2);
    }

    #[test]
    fn a_contact_with_an_instance_does_not_match_a_row_by_uri_alone() {
        let existing = [stored("r1", "sip:a@h", 100)];
        let plan = accepted(
            &register(vec![flow("sip:a@h", "<urn:uuid:1>", 0)]),
            &existing,
        );
        assert_eq!(ruids(&plan.upserts), ["new-1"]);
    }

    #[test]
    fn an_empty_instance_falls_back_to_matching_the_uri() {
        let existing = [stored("r1", "sip:a@h", 100)];
        let plan = accepted(&register(vec![flow("sip:a@h", "<>", 0)]), &existing);
        assert_eq!(ruids(&plan.upserts), ["r1"]);
    }

    #[test]
    fn among_duplicate_rows_the_valid_most_recent_one_is_matched() {
        let existing = [
            stored("r-expired", "sip:a@h", -1),
            Binding {
                last_modified: NOW - 60,
                ..stored("r-recent", "sip:a@h", 100)
            },
            stored("r-older", "sip:a@h", 100),
        ];
        let plan = accepted(&register(vec![contact_expiring("sip:a@h", 0)]), &existing);
        assert_eq!(plan.deletes, ["r-recent"]);
    }

    // --- several contacts in one request ------------------------------------

    #[test]
    fn a_contact_listed_twice_is_upserted_once_with_its_last_value() {
        let input = register(vec![
            contact_expiring("sip:a@h", 600),
            contact_expiring("sip:a@h", 1200),
        ]);
        let plan = accepted(&input, &[stored("r1", "sip:a@h", 100)]);
        assert_eq!(ruids(&plan.upserts), ["r1"]);
        assert_eq!(plan.upserts[0].expires, NOW + 1200);
        let fresh = accepted(&input, &[]);
        assert_eq!(ruids(&fresh.upserts), ["new-1"]);
        assert_eq!(fresh.upserts[0].expires, NOW + 1200);
    }

    #[test]
    fn a_contact_registered_then_removed_in_one_request_writes_nothing() {
        let input = register(vec![
            contact_expiring("sip:a@h", 600),
            contact_expiring("sip:a@h", 0),
        ]);
        let mut issued = 0;
        let plan = plan_save(&input, &[], NOW, &RegistrarPolicy::default(), &mut || {
            issued += 1;
            String::from("unused")
        });
        assert_eq!(
            plan,
            Ok(SavePlan {
                upserts: Vec::new(),
                deletes: Vec::new(),
                bindings: Vec::new(),
            })
        );
        assert_eq!(issued, 0);
    }

    #[test]
    fn a_stored_contact_refreshed_then_removed_in_one_request_is_only_deleted() {
        let input = register(vec![
            contact_expiring("sip:a@h", 600),
            contact_expiring("sip:a@h", 0),
        ]);
        let plan = accepted(&input, &[stored("r1", "sip:a@h", 100)]);
        assert!(plan.upserts.is_empty());
        assert_eq!(plan.deletes, ["r1"]);
        assert!(plan.bindings.is_empty());
    }

    #[test]
    fn a_stored_contact_removed_then_registered_again_gets_a_new_ruid() {
        let input = register(vec![
            contact_expiring("sip:a@h", 0),
            contact_expiring("sip:a@h", 600),
        ]);
        let plan = accepted(&input, &[stored("r1", "sip:a@h", 100)]);
        assert_eq!(plan.deletes, ["r1"]);
        assert_eq!(ruids(&plan.upserts), ["new-1"]);
        assert_eq!(ruids(&plan.bindings), ["new-1"]);
    }

    #[test]
    fn ruids_are_drawn_only_when_the_request_succeeds() {
        let policy = RegistrarPolicy {
            max_contacts: 1,
            ..RegistrarPolicy::default()
        };
        let mut issued = 0;
        let result = plan_save(
            &register(vec![contact("sip:a@h"), contact("sip:b@h")]),
            &[],
            NOW,
            &policy,
            &mut || {
                issued += 1;
                String::from("unused")
            },
        );
        assert_eq!(result, Err(RegistrarError::TooManyContacts { max: 1 }));
        assert_eq!(issued, 0);
    }

    // --- max_contacts -------------------------------------------------------

    fn full_aor(count: usize) -> Vec<Binding> {
        (0..count)
            .map(|n| stored(&format!("r{n}"), &format!("sip:{n}@h"), 100))
            .collect()
    }

    fn limited(max_contacts: u32) -> RegistrarPolicy {
        RegistrarPolicy {
            max_contacts,
            ..RegistrarPolicy::default()
        }
    }

    #[test]
    fn an_insert_over_max_contacts_fails_and_applies_nothing() {
        let input = register(vec![contact("sip:0@h"), contact("sip:new@h")]);
        assert_eq!(
            plan_with(&input, &full_aor(3), &limited(3)),
            Err(RegistrarError::TooManyContacts { max: 3 })
        );
    }

    #[test]
    fn a_refresh_at_max_contacts_succeeds() {
        let input = register(vec![contact("sip:0@h"), contact("sip:2@h")]);
        let plan = accepted_with(&input, &full_aor(3), &limited(3));
        assert_eq!(ruids(&plan.upserts), ["r0", "r2"]);
    }

    #[test]
    fn refreshing_or_shrinking_an_aor_already_over_the_limit_succeeds() {
        let refresh = register(vec![contact("sip:0@h")]);
        assert!(plan_with(&refresh, &full_aor(5), &limited(3)).is_ok());
        let shrink = register(vec![contact_expiring("sip:0@h", 0)]);
        assert!(plan_with(&shrink, &full_aor(5), &limited(3)).is_ok());
    }

    #[test]
    fn replacing_a_contact_at_the_limit_succeeds() {
        let input = register(vec![contact_expiring("sip:0@h", 0), contact("sip:new@h")]);
        let plan = accepted_with(&input, &full_aor(3), &limited(3));
        assert_eq!(plan.deletes, ["r0"]);
        assert_eq!(ruids(&plan.upserts), ["new-1"]);
    }

    #[test]
    fn expired_rows_do_not_count_toward_max_contacts() {
        let mut existing = full_aor(2);
        existing.push(stored("old", "sip:old@h", -1));
        let plan = accepted_with(
            &register(vec![contact("sip:new@h")]),
            &existing,
            &limited(3),
        );
        assert_eq!(plan.bindings.len(), 3);
    }

    #[test]
    fn reviving_an_expired_binding_counts_as_an_addition() {
        let mut existing = full_aor(3);
        existing.push(stored("old", "sip:old@h", -1));
        assert_eq!(
            plan_with(
                &register(vec![contact("sip:old@h")]),
                &existing,
                &limited(3)
            ),
            Err(RegistrarError::TooManyContacts { max: 3 })
        );
    }

    #[test]
    fn a_zero_max_contacts_means_no_limit() {
        let plan = accepted_with(
            &register(vec![contact("sip:new@h")]),
            &full_aor(40),
            &limited(0),
        );
        assert_eq!(plan.bindings.len(), 41);
    }

    // --- queries, expiry and order -----------------------------------------

    #[test]
    fn a_register_without_contacts_is_a_query_that_writes_nothing() {
        let existing = [
            Binding {
                q: Some(0.1),
                ..stored("r1", "sip:a@h", 100)
            },
            stored("r2", "sip:b@h", -100),
            Binding {
                q: Some(0.9),
                ..stored("r3", "sip:c@h", 100)
            },
        ];
        let plan = accepted(&register(Vec::new()), &existing);
        assert!(no_writes(&plan));
        assert_eq!(ruids(&plan.bindings), ["r3", "r1"]);
    }

    #[test]
    fn untouched_expired_rows_are_neither_returned_nor_deleted() {
        let existing = [stored("r1", "sip:a@h", -100), stored("r2", "sip:b@h", 100)];
        let plan = accepted(&register(vec![contact("sip:c@h")]), &existing);
        assert!(plan.deletes.is_empty());
        assert_eq!(ruids(&plan.upserts), ["new-1"]);
        assert_eq!(ruids(&plan.bindings), ["new-1", "r2"]);
    }

    #[test]
    fn a_permanent_binding_is_kept_and_counted_and_a_register_of_it_gives_it_an_expiry() {
        // Kamailio's expires = 0, and the epoch as a CET node writes it.
        let permanent = |ruid: &str, contact: &str, at: i64| Binding {
            call_id: "call-1".to_owned(),
            ..Binding::new(ruid, contact, at, NOW - 600)
        };
        let existing = [
            permanent("p0", "sip:p0@h", 0),
            permanent("p1", "sip:p1@h", 3600),
        ];
        let plan = accepted(&register(vec![contact("sip:c@h")]), &existing);
        assert!(plan.deletes.is_empty());
        assert_eq!(ruids(&plan.upserts), ["new-1"]);
        assert_eq!(plan.bindings.len(), 3, "both permanent ones still bound");
        let refreshed = accepted(&register(vec![contact("sip:p0@h")]), &existing);
        assert_eq!(ruids(&refreshed.upserts), ["p0"]);
        assert!(!refreshed.upserts[0].is_permanent());
        assert!(refreshed.upserts[0].expires > NOW);
    }

    #[test]
    fn a_binding_expiring_exactly_now_is_no_longer_valid() {
        let existing = [stored("r1", "sip:a@h", 0), stored("r2", "sip:b@h", 1)];
        assert_eq!(ruids(&valid_ordered(&existing, NOW)), ["r2"]);
    }

    #[test]
    fn bindings_are_ordered_by_q_descending_with_unspecified_q_last() {
        let mut bindings = vec![
            stored("none", "sip:n@h", 100),
            Binding {
                q: Some(0.0),
                ..stored("zero", "sip:z@h", 100)
            },
            Binding {
                q: Some(1.0),
                ..stored("one", "sip:o@h", 100)
            },
            Binding {
                q: Some(0.5),
                ..stored("half", "sip:h@h", 100)
            },
        ];
        order_bindings(&mut bindings);
        assert_eq!(ruids(&bindings), ["one", "half", "zero", "none"]);
    }

    #[test]
    fn equal_q_puts_the_newest_binding_first_then_orders_by_ruid() {
        let mut bindings = vec![
            Binding {
                last_modified: NOW - 10,
                ..stored("b", "sip:1@h", 100)
            },
            Binding {
                last_modified: NOW - 10,
                ..stored("a", "sip:2@h", 100)
            },
            Binding {
                last_modified: NOW,
                ..stored("c", "sip:3@h", 100)
            },
        ];
        order_bindings(&mut bindings);
        assert_eq!(ruids(&bindings), ["c", "a", "b"]);
    }

    #[test]
    fn valid_ordered_drops_expired_bindings_and_orders_the_rest() {
        let existing = [
            stored("r1", "sip:a@h", 100),
            Binding {
                q: Some(0.9),
                ..stored("r2", "sip:b@h", -1)
            },
            Binding {
                q: Some(0.2),
                ..stored("r3", "sip:c@h", 100)
            },
        ];
        assert_eq!(ruids(&valid_ordered(&existing, NOW)), ["r3", "r1"]);
    }

    #[test]
    fn errors_render_as_readable_messages() {
        let cases = [
            (
                RegistrarError::IntervalTooBrief { min_expires: 60 },
                "interval too brief, Min-Expires is 60",
            ),
            (
                RegistrarError::CseqOutOfOrder {
                    contact: "sip:a@h".to_owned(),
                    stored: 5,
                    received: 2,
                },
                "CSeq 2 is not higher than the stored CSeq 5 of contact sip:a@h",
            ),
            (
                RegistrarError::TooManyContacts { max: 16 },
                "too many contacts, at most 16 are allowed",
            ),
            (
                invalid("contacts[3].expires", "must not be negative"),
                "invalid contacts[3].expires: must not be negative",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }
}
