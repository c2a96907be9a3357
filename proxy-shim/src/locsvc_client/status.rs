//! What a locsvc status means for the SIP side: the `ErrorInfo` reasons of
//! `locsvc_proto::reason` classified into `LocsvcError`, each with the SIP
//! answer it becomes, and whether another instance might answer differently.

use locsvc_proto::reason;
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// Retry-After we suggest when locsvc gave none or was unreachable.
pub const DEFAULT_RETRY_AFTER: u32 = 5;

/// What went wrong with a locsvc call, split by what the SIP side answers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocsvcError {
    /// INVALID_ARGUMENT / BAD_REQUEST: 400 with this reason phrase.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// FAILED_PRECONDITION / INTERVAL_TOO_BRIEF: 423 + Min-Expires.
    #[error("interval too brief (min {min_expires})")]
    IntervalTooBrief {
        /// The shortest expiry locsvc accepts (the Min-Expires value).
        min_expires: u32,
    },
    /// FAILED_PRECONDITION / CSEQ_OUT_OF_ORDER: 400 (RFC 3261 §10.3 step 7).
    #[error("CSeq out of order")]
    CseqOutOfOrder,
    /// RESOURCE_EXHAUSTED / TOO_MANY_CONTACTS: 503 (what Kamailio answers).
    #[error("too many contacts")]
    TooManyContacts,
    /// Unreachable, overloaded, no healthy member, deadline: 503 + Retry-After.
    #[error("location service unavailable: {detail}")]
    Unavailable {
        /// Seconds for Retry-After.
        retry_after: u32,
        /// What failed, for the log.
        detail: String,
    },
    /// Anything else (INTERNAL, UNAUTHENTICATED, unknown table): 500.
    #[error("location service fault: {0}")]
    Internal(String),
}

impl LocsvcError {
    /// SIP status, reason phrase and extra headers for this error.
    pub fn sip(&self) -> (u16, String, Vec<(&'static str, String)>) {
        match self {
            LocsvcError::BadRequest(r) => (400, r.clone(), vec![]),
            LocsvcError::IntervalTooBrief { min_expires } => (
                423,
                "Interval Too Brief".into(),
                vec![("Min-Expires", min_expires.to_string())],
            ),
            LocsvcError::CseqOutOfOrder => (400, "CSeq Out Of Order".into(), vec![]),
            LocsvcError::TooManyContacts => (503, "Too Many Contacts".into(), vec![]),
            LocsvcError::Unavailable { retry_after, .. } => (
                503,
                "Service Unavailable".into(),
                vec![("Retry-After", retry_after.to_string())],
            ),
            LocsvcError::Internal(_) => (500, "Server Internal Error".into(), vec![]),
        }
    }
}

/// Whether another instance might answer differently.
pub(super) fn worth_failover(s: &Status) -> bool {
    let why = s.get_details_error_info().map(|i| i.reason);
    match s.code() {
        // No ErrorInfo: the channel itself failed (refused, reset, no route).
        // OVERLOADED: another is less busy; LAYOUT_UNKNOWN: another is in
        // touch with the master.
        Code::Unavailable => {
            why.is_none()
                || why.as_deref() == Some(reason::OVERLOADED)
                || why.as_deref() == Some(reason::LAYOUT_UNKNOWN)
        }
        Code::Unknown | Code::Cancelled => why.is_none(),
        _ => false,
    }
}

/// The error left by an instance that `worth_failover` skipped. Such a
/// status means the channel failed (tonic reports a reset connection as
/// `Unknown: transport error`), so when no instance is left it is a 503 with
/// Retry-After, like an unreachable locsvc, never a 500.
pub(super) fn channel_failure(s: &Status) -> LocsvcError {
    match classify(s) {
        LocsvcError::Internal(detail) => LocsvcError::Unavailable {
            retry_after: DEFAULT_RETRY_AFTER,
            detail,
        },
        other => other,
    }
}

/// Maps a locsvc status to what the SIP side does next.
pub fn classify(s: &Status) -> LocsvcError {
    let info = s.get_details_error_info();
    let why = info.as_ref().map(|i| i.reason.as_str()).unwrap_or("");
    let meta = |k: &str| {
        info.as_ref()
            .and_then(|i| i.metadata.get(k))
            .and_then(|v| v.parse::<u32>().ok())
    };
    match (s.code(), why) {
        (Code::InvalidArgument, reason::UNKNOWN_TABLE) => {
            LocsvcError::Internal(format!("unknown table: {}", s.message()))
        }
        (Code::InvalidArgument, _) => {
            let field = s
                .get_details_bad_request()
                .and_then(|b| b.field_violations.into_iter().next());
            // The reason phrase is free text on the wire: keep it one
            // printable line so no input can inject a header.
            let phrase = match field {
                Some(f) => format!("Bad {}: {}", f.field, f.description),
                None => format!("Bad Request: {}", s.message()),
            };
            LocsvcError::BadRequest(one_line(&phrase))
        }
        (Code::FailedPrecondition, reason::INTERVAL_TOO_BRIEF) => LocsvcError::IntervalTooBrief {
            min_expires: meta("min_expires").unwrap_or(60),
        },
        (Code::FailedPrecondition, reason::CSEQ_OUT_OF_ORDER) => LocsvcError::CseqOutOfOrder,
        (Code::ResourceExhausted, _) => LocsvcError::TooManyContacts,
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, _) => {
            LocsvcError::Unavailable {
                retry_after: meta("retry_after").unwrap_or(DEFAULT_RETRY_AFTER),
                detail: format!("{:?}: {}", s.code(), s.message()),
            }
        }
        (code, _) => LocsvcError::Internal(format!("{code:?}: {}", s.message())),
    }
}

/// `s` as one printable line of at most 120 characters.
fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.chars().take(120).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::ErrorDetails;

    fn status(code: Code, why: &str, meta: &[(&str, &str)]) -> Status {
        let mut d = ErrorDetails::new();
        let meta: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.set_error_info(why, reason::DOMAIN, meta);
        Status::with_error_details(code, "m", d)
    }

    #[test]
    fn interval_too_brief_becomes_423_with_min_expires() {
        let e = classify(&status(
            Code::FailedPrecondition,
            reason::INTERVAL_TOO_BRIEF,
            &[("min_expires", "120")],
        ));
        assert_eq!(e, LocsvcError::IntervalTooBrief { min_expires: 120 });
        let (code, _, h) = e.sip();
        assert_eq!((code, h), (423, vec![("Min-Expires", "120".to_string())]));
    }

    #[test]
    fn cseq_out_of_order_and_bad_request_become_400_with_a_reason_phrase() {
        let e = classify(&status(
            Code::FailedPrecondition,
            reason::CSEQ_OUT_OF_ORDER,
            &[],
        ));
        assert_eq!(e.sip().0, 400);
        let mut d = ErrorDetails::new();
        d.add_bad_request_violation("contacts[0].q", "must be between 0 and 1\r\nX: y");
        let e = classify(&Status::with_error_details(Code::InvalidArgument, "m", d));
        let (code, phrase, _) = e.sip();
        assert_eq!(code, 400);
        assert!(phrase.starts_with("Bad contacts[0].q: must be between 0 and 1"));
        assert!(!phrase.contains('\n'));
    }

    #[test]
    fn overload_and_no_healthy_member_become_503_with_retry_after() {
        let e = classify(&status(
            Code::Unavailable,
            reason::NO_HEALTHY_MEMBER,
            &[("retry_after", "7")],
        ));
        assert_eq!(e.sip().2, vec![("Retry-After", "7".to_string())]);
        assert!(!worth_failover(&status(
            Code::Unavailable,
            reason::NO_HEALTHY_MEMBER,
            &[]
        )));
        assert!(worth_failover(&status(
            Code::Unavailable,
            reason::OVERLOADED,
            &[]
        )));
        assert!(worth_failover(&Status::unavailable("connection refused")));
        // An instance out of touch with the master: another may be in touch.
        assert!(worth_failover(&status(
            Code::Unavailable,
            reason::LAYOUT_UNKNOWN,
            &[]
        )));
    }

    #[test]
    fn a_reset_channel_becomes_503_with_retry_after_not_500() {
        let reset = Status::unknown("transport error");
        assert!(worth_failover(&reset));
        let (code, _, extra) = channel_failure(&reset).sip();
        assert_eq!(code, 503);
        assert_eq!(extra, [("Retry-After", DEFAULT_RETRY_AFTER.to_string())]);
    }

    #[test]
    fn internal_and_unauthenticated_become_500() {
        assert_eq!(classify(&Status::internal("x")).sip().0, 500);
        assert_eq!(classify(&Status::unauthenticated("x")).sip().0, 500);
        assert_eq!(
            classify(&status(
                Code::ResourceExhausted,
                reason::TOO_MANY_CONTACTS,
                &[]
            ))
            .sip()
            .0,
            503
        );
    }
}
