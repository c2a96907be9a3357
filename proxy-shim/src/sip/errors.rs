//! What can be wrong with input: bytes that are no SIP message
//! (`ParseError`), and a header a request needs that is missing or
//! unusable (`HeaderProblem`).

/// Why bytes are not a SIP message. Such input is dropped (UDP) or closes
/// the connection (TCP): without a parsed Via there is nowhere to answer.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Over a size or count limit; the text says which.
    #[error("message larger than a configured limit: {0}")]
    TooLarge(String),
    /// Does not parse as SIP; the text says where.
    #[error("not a SIP message: {0}")]
    Malformed(String),
}

impl From<sipx_sip::error::ParseError> for ParseError {
    fn from(e: sipx_sip::error::ParseError) -> Self {
        match e {
            sipx_sip::error::ParseError::Limit { .. } => ParseError::TooLarge(e.to_string()),
            other => ParseError::Malformed(other.to_string()),
        }
    }
}

/// A header that is present but unusable, or missing when required: the
/// request gets a 400 whose reason phrase names the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderProblem {
    /// The named header is required but absent.
    #[error("Missing {0} header")]
    Missing(&'static str),
    /// The named header is present but unusable.
    #[error("Bad {0} header")]
    Bad(&'static str),
}
