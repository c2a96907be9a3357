//! The one place where errors become gRPC statuses. Each status carries a
//! `google.rpc.ErrorInfo` (domain `locsvc.v1`) whose reason a SIP front maps
//! to a SIP response, and, for bad input, a `BadRequest` naming the field.
//! Storage internals are logged, never sent.

use std::collections::HashMap;

use locsvc_proto::reason;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::convert::FieldError;
use crate::credentials::InvalidField;
use crate::location::LocationError;
use crate::registrar::RegistrarError;
use crate::router::RouteError;
use crate::store::StoreError;

/// ErrorInfo domain.
pub const DOMAIN: &str = reason::DOMAIN;

/// Seconds a client should wait before retrying an UNAVAILABLE answer.
pub const RETRY_AFTER_SECS: u32 = 5;

fn status(code: Code, msg: String, reason: &str, meta: HashMap<String, String>) -> Status {
    let mut d = ErrorDetails::new();
    d.set_error_info(reason, DOMAIN, meta);
    Status::with_error_details(code, msg, d)
}

/// INVALID_ARGUMENT naming `field`.
pub fn invalid(field: &str, reason: &str) -> Status {
    let mut d = ErrorDetails::new();
    d.set_error_info(
        reason::BAD_REQUEST,
        DOMAIN,
        HashMap::from([("field".to_string(), field.to_string())]),
    );
    d.add_bad_request_violation(field, reason);
    Status::with_error_details(Code::InvalidArgument, format!("{field}: {reason}"), d)
}

impl From<FieldError> for Status {
    fn from(e: FieldError) -> Self {
        invalid(&e.field, &e.reason)
    }
}

fn unavailable(msg: String, reason: &str, group: Option<u32>) -> Status {
    let mut meta = HashMap::from([("retry_after".to_string(), RETRY_AFTER_SECS.to_string())]);
    if let Some(g) = group {
        meta.insert("group".into(), g.to_string());
    }
    status(Code::Unavailable, msg, reason, meta)
}

/// UNAVAILABLE for load shedding.
pub fn overloaded() -> Status {
    unavailable(
        "server overloaded, retry later".into(),
        reason::OVERLOADED,
        None,
    )
}

/// DEADLINE_EXCEEDED for a request that ran past its deadline.
pub fn deadline() -> Status {
    status(
        Code::DeadlineExceeded,
        "request deadline exceeded".into(),
        reason::DEADLINE_EXCEEDED,
        HashMap::new(),
    )
}

/// DEADLINE_EXCEEDED naming the group none of whose members answered in time.
fn deadline_in(group: u32) -> Status {
    status(
        Code::DeadlineExceeded,
        format!("no member of group {group} answered before the request's deadline"),
        reason::DEADLINE_EXCEEDED,
        HashMap::from([
            ("group".to_string(), group.to_string()),
            ("retry_after".to_string(), RETRY_AFTER_SECS.to_string()),
        ]),
    )
}

/// INTERNAL without details (they go to the log).
pub fn internal(what: &str) -> Status {
    status(
        Code::Internal,
        format!("internal error: {what}"),
        reason::INTERNAL,
        HashMap::new(),
    )
}

impl From<InvalidField> for Status {
    fn from(e: InvalidField) -> Self {
        invalid(e.field, &e.reason)
    }
}

/// UNAUTHENTICATED: no token, or one the server does not know.
pub fn unauthenticated() -> Status {
    status(
        Code::Unauthenticated,
        "missing or wrong bearer token".into(),
        reason::BAD_TOKEN,
        HashMap::new(),
    )
}

/// PERMISSION_DENIED for an administration call without the admin token.
pub fn admin_required(msg: &str) -> Status {
    status(
        Code::PermissionDenied,
        msg.to_string(),
        reason::ADMIN_TOKEN_REQUIRED,
        HashMap::new(),
    )
}

/// NOT_FOUND: `locdb` has no row (`group`, `no`).
pub fn unknown_member(group: u32, no: u32) -> Status {
    status(
        Code::NotFound,
        format!("no locdb row with id={group} and no={no}"),
        reason::UNKNOWN_MEMBER,
        HashMap::from([
            ("group".to_string(), group.to_string()),
            ("no".to_string(), no.to_string()),
        ]),
    )
}

/// NOT_FOUND: `locdb` has no (non-spare) row of `group`.
pub fn unknown_group(group: u32) -> Status {
    status(
        Code::NotFound,
        format!("no locdb member row with id={group}"),
        reason::UNKNOWN_MEMBER,
        HashMap::from([("group".to_string(), group.to_string())]),
    )
}

/// An administration change a database did not take: UNAVAILABLE when it
/// was unreachable or slow, INTERNAL (details logged) when it refused.
pub fn admin_store(what: &str, e: StoreError) -> Status {
    if e.is_transport() {
        tracing::warn!(error = %e, "{what}: database unavailable");
        return master_unavailable(what);
    }
    tracing::error!(error = %e, "{what}: database refused");
    internal(what)
}

/// UNAVAILABLE: the master database did not take an administration change.
pub fn master_unavailable(what: &str) -> Status {
    unavailable(
        format!("the master database did not take {what}; retry"),
        reason::NO_HEALTHY_MEMBER,
        None,
    )
}

/// FAILED_PRECONDITION: the change would leave `group` with no readable
/// member (`force` overrides).
pub fn last_readable_member(group: u32, no: u32) -> Status {
    status(
        Code::FailedPrecondition,
        format!(
            "member {group}/{no} is the last readable member of group {group}; \
             its subscribers would fail until another is read again (force to do it anyway)"
        ),
        reason::LAST_READABLE_MEMBER,
        HashMap::from([
            ("group".to_string(), group.to_string()),
            ("no".to_string(), no.to_string()),
        ]),
    )
}

/// FAILED_PRECONDITION: draining `group` would leave no group to own
/// subscribers.
pub fn last_owning_group(group: u32) -> Status {
    status(
        Code::FailedPrecondition,
        format!(
            "group {group} is the last group not leaving: nobody could take its subscribers; \
             add a group first (groups add) or undo another drain"
        ),
        reason::LAST_OWNING_GROUP,
        HashMap::from([("group".to_string(), group.to_string())]),
    )
}

/// A failure of the credential database: UNAVAILABLE when it is
/// unreachable or slow, INTERNAL (details logged) when it refused.
pub fn credential_store(e: StoreError) -> Status {
    if e.is_transport() {
        tracing::warn!(error = %e, "credential database unavailable");
        let meta = HashMap::from([("retry_after".to_string(), RETRY_AFTER_SECS.to_string())]);
        return status(
            Code::Unavailable,
            "credential database unavailable, retry later".into(),
            reason::CREDENTIALS_UNAVAILABLE,
            meta,
        );
    }
    tracing::error!(error = %e, "credential database refused an operation");
    internal("credential storage error")
}

impl From<LocationError> for Status {
    fn from(e: LocationError) -> Self {
        match e {
            LocationError::Aor(e) => invalid("aor", &e.to_string()),
            LocationError::Registrar(r) => match r {
                RegistrarError::Invalid { field, reason } => invalid(&field, &reason),
                RegistrarError::IntervalTooBrief { min_expires } => status(
                    Code::FailedPrecondition,
                    format!("interval too brief; Min-Expires: {min_expires}"),
                    reason::INTERVAL_TOO_BRIEF,
                    HashMap::from([("min_expires".to_string(), min_expires.to_string())]),
                ),
                RegistrarError::CseqOutOfOrder {
                    contact,
                    stored,
                    received,
                } => status(
                    Code::FailedPrecondition,
                    format!("CSeq {received} is not above {stored} for contact {contact}"),
                    reason::CSEQ_OUT_OF_ORDER,
                    HashMap::from([("stored_cseq".to_string(), stored.to_string())]),
                ),
                RegistrarError::TooManyContacts { max } => status(
                    Code::ResourceExhausted,
                    format!("more than {max} contacts for this AoR"),
                    reason::TOO_MANY_CONTACTS,
                    HashMap::from([("max_contacts".to_string(), max.to_string())]),
                ),
            },
            LocationError::Route(r) => route(r),
        }
    }
}

fn route(r: RouteError) -> Status {
    let group = r.group();
    match r {
        RouteError::UnknownTable(t) => {
            let mut d = ErrorDetails::new();
            d.set_error_info(
                reason::UNKNOWN_TABLE,
                DOMAIN,
                HashMap::from([("table".to_string(), t.clone())]),
            );
            d.add_bad_request_violation("table", format!("location table {t:?} is not configured"));
            Status::with_error_details(
                Code::InvalidArgument,
                format!("table: {t:?} is not configured"),
                d,
            )
        }
        RouteError::AllFailed {
            error: StoreError::Backlog(_),
            ..
        } => unavailable(
            "writes are queued beyond their deadline: overloaded, retry later".into(),
            reason::OVERLOADED,
            group,
        ),
        RouteError::Deadline { group } => deadline_in(group),
        RouteError::LayoutUnknown(silent) => unavailable(
            RouteError::LayoutUnknown(silent).to_string(),
            reason::LAYOUT_UNKNOWN,
            None,
        ),
        RouteError::AllFailed { group, error } if !error.is_transport() => {
            tracing::error!(group, %error, "storage refused an operation on every member");
            internal(&format!("storage error in group {group}"))
        }
        RouteError::AllFailed { group, error } => {
            // The driver's text (hosts, ports, SQL) stays in the log.
            tracing::warn!(group, %error, "every member of the group failed");
            unavailable(
                format!("every member of group {group} failed; retry later"),
                reason::NO_HEALTHY_MEMBER,
                Some(group),
            )
        }
        other => unavailable(other.to_string(), reason::NO_HEALTHY_MEMBER, group),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(s: &Status) -> (String, HashMap<String, String>) {
        let i = s.get_details_error_info().expect("error info");
        (i.reason, i.metadata)
    }

    #[test]
    fn an_overloaded_write_queue_is_unavailable_not_internal() {
        let s: Status = LocationError::Route(RouteError::AllFailed {
            group: 2,
            error: StoreError::Backlog(std::time::Duration::from_millis(500)),
        })
        .into();
        assert_eq!(s.code(), Code::Unavailable);
        let (reason, meta) = info(&s);
        assert_eq!(reason, "OVERLOADED");
        assert!(meta.contains_key("retry_after"));
    }

    #[test]
    fn interval_too_brief_carries_min_expires() {
        let s: Status =
            LocationError::Registrar(RegistrarError::IntervalTooBrief { min_expires: 60 }).into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        let (reason, meta) = info(&s);
        assert_eq!(reason, "INTERVAL_TOO_BRIEF");
        assert_eq!(meta["min_expires"], "60");
    }

    #[test]
    fn a_guarded_status_change_names_the_group_and_member() {
        let s = last_readable_member(2, 1);
        assert_eq!(s.code(), Code::FailedPrecondition);
        let (reason, meta) = info(&s);
        assert_eq!(reason, "LAST_READABLE_MEMBER");
        assert_eq!((meta["group"].as_str(), meta["no"].as_str()), ("2", "1"));
        let s = credential_store(StoreError::Rejected("secret detail".into()));
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret detail"));
    }

    #[test]
    fn bad_input_names_the_field() {
        let s: Status = FieldError {
            field: "contacts[2].q".into(),
            reason: "must be between 0 and 1".into(),
        }
        .into();
        assert_eq!(s.code(), Code::InvalidArgument);
        let v = s.get_details_bad_request().unwrap().field_violations;
        assert_eq!(v[0].field, "contacts[2].q");
    }

    #[test]
    fn members_too_slow_for_the_callers_deadline_is_deadline_exceeded_with_retry_after() {
        let s = route(RouteError::Deadline { group: 3 });
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let (reason, meta) = info(&s);
        assert_eq!(reason, "DEADLINE_EXCEEDED");
        assert_eq!(meta["group"], "3");
        assert!(meta.contains_key("retry_after"));
    }

    #[test]
    fn no_status_carries_the_drivers_text() {
        let s = route(RouteError::AllFailed {
            group: 1,
            error: StoreError::Unavailable("connect to 10.1.2.3:3306 refused".into()),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("10.1.2.3"), "{}", s.message());
        assert_eq!(info(&s).0, reason::NO_HEALTHY_MEMBER);
    }

    #[test]
    fn every_status_built_here_uses_a_documented_reason() {
        let statuses = [
            invalid("aor", "bad"),
            overloaded(),
            deadline(),
            internal("x"),
            unauthenticated(),
            master_unavailable("the change"),
            unknown_member(1, 2),
            route(RouteError::Deadline { group: 1 }),
            route(RouteError::UnknownTable("t".into())),
            route(RouteError::NoReadableMember { group: 1 }),
            LocationError::Registrar(RegistrarError::TooManyContacts { max: 1 }).into(),
            LocationError::Registrar(RegistrarError::IntervalTooBrief { min_expires: 60 }).into(),
        ];
        for s in statuses {
            let (r, _) = info(&s);
            assert!(
                reason::ALL.contains(&r.as_str()),
                "{r} is not in reason::ALL"
            );
        }
    }

    #[test]
    fn transport_failures_are_unavailable_and_refusals_internal() {
        let s = route(RouteError::AllFailed {
            group: 2,
            error: StoreError::Timeout(std::time::Duration::from_millis(5)),
        });
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(info(&s).1["group"], "2");
        let s = route(RouteError::AllFailed {
            group: 2,
            error: StoreError::Rejected("Table 'x.location' doesn't exist".into()),
        });
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("doesn't exist"));
    }
}
