//! Generated types of the `locsvc.v1` gRPC API, plus the encoded file
//! descriptor set that the server publishes through gRPC reflection.

/// `locsvc.v1`: location (registrar), cluster administration and subscriber
/// credential services.
pub mod v1 {
    tonic::include_proto!("locsvc.v1");
}

/// A failed lookup of a `LookupMany` carries the status a `Lookup` would
/// have returned: code, message and details (ErrorInfo, BadRequest …).
impl From<tonic::Status> for v1::LookupFailure {
    fn from(s: tonic::Status) -> Self {
        Self {
            code: s.code() as i32,
            message: s.message().to_string(),
            details: s.details().to_vec(),
        }
    }
}

impl From<v1::LookupFailure> for tonic::Status {
    fn from(f: v1::LookupFailure) -> Self {
        tonic::Status::with_details(tonic::Code::from(f.code), f.message, f.details.into())
    }
}

/// Encoded `FileDescriptorSet` of every proto in this crate, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("locsvc_descriptor");

/// The `reason` of the `google.rpc.ErrorInfo` (domain [`reason::DOMAIN`])
/// every failed call carries; the error model at the top of
/// `locsvc/v1/location.proto` says which gRPC code and SIP answer each goes
/// with. The server sends only these; fronts match on them.
pub mod reason {
    /// ErrorInfo domain.
    pub const DOMAIN: &str = "locsvc.v1";
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    pub const INTERVAL_TOO_BRIEF: &str = "INTERVAL_TOO_BRIEF";
    pub const CSEQ_OUT_OF_ORDER: &str = "CSEQ_OUT_OF_ORDER";
    pub const TOO_MANY_CONTACTS: &str = "TOO_MANY_CONTACTS";
    pub const NO_HEALTHY_MEMBER: &str = "NO_HEALTHY_MEMBER";
    pub const OVERLOADED: &str = "OVERLOADED";
    pub const DEADLINE_EXCEEDED: &str = "DEADLINE_EXCEEDED";
    pub const UNKNOWN_TABLE: &str = "UNKNOWN_TABLE";
    pub const BAD_TOKEN: &str = "BAD_TOKEN";
    pub const ADMIN_TOKEN_REQUIRED: &str = "ADMIN_TOKEN_REQUIRED";
    pub const LAST_READABLE_MEMBER: &str = "LAST_READABLE_MEMBER";
    /// Draining this group would leave no group to own subscribers.
    pub const LAST_OWNING_GROUP: &str = "LAST_OWNING_GROUP";
    pub const UNKNOWN_MEMBER: &str = "UNKNOWN_MEMBER";
    pub const CREDENTIALS_UNAVAILABLE: &str = "CREDENTIALS_UNAVAILABLE";
    pub const INTERNAL: &str = "INTERNAL";
    /// This instance has not reached the master for most of its lease:
    /// others may have moved subscribers since; ask another instance.
    pub const LAYOUT_UNKNOWN: &str = "LAYOUT_UNKNOWN";

    /// Every reason, for tests that walk them all.
    pub const ALL: &[&str] = &[
        BAD_REQUEST,
        INTERVAL_TOO_BRIEF,
        CSEQ_OUT_OF_ORDER,
        TOO_MANY_CONTACTS,
        NO_HEALTHY_MEMBER,
        OVERLOADED,
        DEADLINE_EXCEEDED,
        UNKNOWN_TABLE,
        BAD_TOKEN,
        ADMIN_TOKEN_REQUIRED,
        LAST_READABLE_MEMBER,
        LAST_OWNING_GROUP,
        UNKNOWN_MEMBER,
        CREDENTIALS_UNAVAILABLE,
        INTERNAL,
        LAYOUT_UNKNOWN,
    ];
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_reason_is_documented_in_the_error_model() {
        let proto = include_str!("../locsvc/v1/location.proto");
        let model: String = proto
            .lines()
            .take_while(|l| !l.starts_with("package"))
            .collect::<Vec<_>>()
            .join("\n");
        for r in super::reason::ALL {
            assert!(
                model.contains(&format!("reason {r} ")) || model.contains(&format!("reason {r}\n")),
                "{r} is not in location.proto's error model"
            );
        }
    }
}
