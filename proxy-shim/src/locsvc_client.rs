//! The gRPC client to one or more locsvc instances: a deadline on every call
//! (well under SIP timer T1, so a UAC retransmission never races an answer
//! we are still waiting for), failover to the next instance when one is
//! unreachable or shedding load, and the classification of locsvc's
//! `ErrorInfo` reasons into what the SIP side answers.
//!
//! With `TlsClient` the channels use TLS (rustls, the CA given, no system
//! roots), with a client certificate for a locsvc that requires one.
//!
//! It does not retry a request locsvc *answered* (bad input, 423, CSeq): the
//! answer would be the same from any instance sharing the same databases.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::subscribers_client::SubscribersClient;
use locsvc_proto::v1::{Binding, GetCredentialsRequest, LookupRequest, SaveRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};
use tonic_types::StatusExt;

/// How long an instance that failed at the transport level is tried last.
const DOWN_FOR: Duration = Duration::from_secs(2);
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
    IntervalTooBrief { min_expires: u32 },
    /// FAILED_PRECONDITION / CSEQ_OUT_OF_ORDER: 400 (RFC 3261 §10.3 step 7).
    #[error("CSeq out of order")]
    CseqOutOfOrder,
    /// RESOURCE_EXHAUSTED / TOO_MANY_CONTACTS: 503 (what Kamailio answers).
    #[error("too many contacts")]
    TooManyContacts,
    /// Unreachable, overloaded, no healthy member, deadline: 503 + Retry-After.
    #[error("location service unavailable: {detail}")]
    Unavailable { retry_after: u32, detail: String },
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
fn worth_failover(s: &Status) -> bool {
    let reason = s.get_details_error_info().map(|i| i.reason);
    match s.code() {
        // No ErrorInfo: the channel itself failed (refused, reset, no route).
        Code::Unavailable => reason.is_none() || reason.as_deref() == Some("OVERLOADED"),
        Code::Unknown | Code::Cancelled => reason.is_none(),
        _ => false,
    }
}

/// The error left by an instance that `worth_failover` skipped. Such a
/// status means the channel failed (tonic reports a reset connection as
/// `Unknown: transport error`), so when no instance is left it is a 503 with
/// Retry-After, like an unreachable locsvc, never a 500.
fn channel_failure(s: &Status) -> LocsvcError {
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
    let reason = info.as_ref().map(|i| i.reason.as_str()).unwrap_or("");
    let meta = |k: &str| {
        info.as_ref()
            .and_then(|i| i.metadata.get(k))
            .and_then(|v| v.parse::<u32>().ok())
    };
    match (s.code(), reason) {
        (Code::InvalidArgument, "UNKNOWN_TABLE") => {
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
        (Code::FailedPrecondition, "INTERVAL_TOO_BRIEF") => LocsvcError::IntervalTooBrief {
            min_expires: meta("min_expires").unwrap_or(60),
        },
        (Code::FailedPrecondition, "CSEQ_OUT_OF_ORDER") => LocsvcError::CseqOutOfOrder,
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

/// An error and its sources on one line (tonic's own Display is only
/// "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn one_line(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    s.chars().take(120).collect()
}

#[derive(Debug)]
struct Instance {
    uri: String,
    client: LocationClient<Channel>,
    /// Digest credentials (same connection).
    subscribers: SubscribersClient<Channel>,
    down_until: Mutex<Option<Instant>>,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("bad locsvc address {uri}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("no locsvc address configured")]
    NoInstance,
    #[error(
        "locsvc address {uri} is https:// but no CA is configured (`locsvc_ca`; this build has no system trust roots)"
    )]
    HttpsWithoutCa { uri: String },
    #[error("TLS to locsvc at {uri}: {reason}")]
    Tls { uri: String, reason: String },
}

/// TLS to locsvc: the PEM contents (read by `load`) and the name to verify.
#[derive(Clone, Default)]
pub struct TlsClient {
    /// CA certificate(s) trusted for locsvc's server certificate.
    pub ca_pem: Vec<u8>,
    /// Client certificate and private key (mTLS), when locsvc wants one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Server name to verify instead of the URL's host.
    pub domain: Option<String>,
}

impl std::fmt::Debug for TlsClient {
    /// Never prints the private key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

/// A TLS file setting that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("`{setting}` {}: {reason}", path.display())]
pub struct TlsFileError {
    pub setting: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

impl TlsClient {
    /// Reads the PEM files the settings name; None when TLS is off
    /// (`locsvc_ca` unset). A missing, unreadable or non-PEM file is an
    /// error naming its setting and path.
    pub fn load(settings: &crate::settings::Settings) -> Result<Option<Self>, TlsFileError> {
        let Some(ca) = &settings.locsvc_ca else {
            return Ok(None);
        };
        let ca_pem = read_pem("locsvc_ca", ca, "CERTIFICATE-----")?;
        let identity = match (&settings.locsvc_cert, &settings.locsvc_key) {
            (Some(cert), Some(key)) => Some((
                read_pem("locsvc_cert", cert, "CERTIFICATE-----")?,
                read_pem("locsvc_key", key, "PRIVATE KEY-----")?,
            )),
            _ => None,
        };
        Ok(Some(Self {
            ca_pem,
            identity,
            domain: settings.locsvc_tls_domain.clone(),
        }))
    }

    fn config(&self, budget: Duration) -> ClientTlsConfig {
        let mut c = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(budget);
        if let Some((cert, key)) = &self.identity {
            c = c.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain {
            c = c.domain_name(d.clone());
        }
        c
    }
}

/// The file at `path`, which must hold a PEM block whose BEGIN line ends
/// with `marker` (rustls would otherwise ignore it silently and fail every
/// handshake later).
fn read_pem(setting: &'static str, path: &Path, marker: &str) -> Result<Vec<u8>, TlsFileError> {
    let err = |reason: String| TlsFileError {
        setting,
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| err(format!("cannot be read: {e}")))?;
    let text = String::from_utf8_lossy(&pem);
    let found = text
        .lines()
        .any(|l| l.trim().starts_with("-----BEGIN ") && l.trim().ends_with(marker));
    if !found {
        let what = marker.trim_end_matches('-').to_ascii_lowercase();
        return Err(err(format!("holds no PEM {what}")));
    }
    Ok(pem)
}

/// A client over several locsvc instances, tried in the configured order,
/// skipping (until `DOWN_FOR` has passed) those that just failed.
#[derive(Debug)]
pub struct LocsvcClient {
    instances: Vec<Instance>,
    budget: Duration,
    token: Option<String>,
    table: String,
}

impl LocsvcClient {
    /// Channels connect lazily, so the shim starts even when locsvc is not
    /// up yet (it answers 503 until it is). Plain HTTP/2: see `with_tls`.
    pub fn new(
        uris: &[String],
        budget: Duration,
        token: Option<String>,
        table: String,
    ) -> Result<Self, ClientError> {
        Self::with_tls(uris, budget, token, table, None)
    }

    /// `new`, over TLS when `tls` is given: every channel then uses it, an
    /// `http://` address being upgraded to `https://`. Without it an
    /// `https://` address is refused (no trust roots to verify with).
    pub fn with_tls(
        uris: &[String],
        budget: Duration,
        token: Option<String>,
        table: String,
        tls: Option<TlsClient>,
    ) -> Result<Self, ClientError> {
        if uris.is_empty() {
            return Err(ClientError::NoInstance);
        }
        let mut instances = Vec::new();
        for uri in uris {
            let uri = match (&tls, uri.strip_prefix("http://")) {
                (Some(_), Some(rest)) => format!("https://{rest}"),
                (None, _) if uri.starts_with("https://") => {
                    return Err(ClientError::HttpsWithoutCa { uri: uri.clone() });
                }
                _ => uri.clone(),
            };
            let mut ep = Endpoint::from_shared(uri.clone())
                .map_err(|e| ClientError::BadUri {
                    uri: uri.clone(),
                    reason: e.to_string(),
                })?
                .connect_timeout(budget)
                .timeout(budget)
                .tcp_nodelay(true);
            if let Some(t) = &tls {
                ep = ep
                    .tls_config(t.config(budget))
                    .map_err(|e| ClientError::Tls {
                        uri: uri.clone(),
                        reason: error_chain(&e),
                    })?;
            }
            let channel = ep.connect_lazy();
            instances.push(Instance {
                uri,
                client: LocationClient::new(channel.clone()),
                subscribers: SubscribersClient::new(channel),
                down_until: Mutex::new(None),
            });
        }
        Ok(Self {
            instances,
            budget,
            token,
            table,
        })
    }

    /// Instances in the order to try: healthy ones first, configured order.
    fn order(&self) -> Vec<&Instance> {
        let now = Instant::now();
        let down = |i: &Instance| {
            i.down_until
                .lock()
                .map(|d| d.is_some_and(|t| t > now))
                .unwrap_or(false)
        };
        let mut v: Vec<&Instance> = self.instances.iter().filter(|i| !down(i)).collect();
        v.extend(self.instances.iter().filter(|i| down(i)));
        v
    }

    fn request<T>(&self, msg: T, remaining: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(remaining);
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    /// Runs `call` on each instance in turn until one answers, within the
    /// whole budget (not per instance: the UAC's T1 does not restart).
    async fn with_failover<T, F, Fut>(&self, op: &'static str, call: F) -> Result<T, LocsvcError>
    where
        F: Fn(&Instance, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.budget;
        let mut last = None;
        for inst in self.order() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            match tokio::time::timeout(remaining, call(inst, remaining)).await {
                Ok(Ok(resp)) => {
                    if let Ok(mut d) = inst.down_until.lock() {
                        *d = None;
                    }
                    return Ok(resp.into_inner());
                }
                Ok(Err(status)) if worth_failover(&status) => {
                    tracing::warn!(locsvc = %inst.uri, op, code = ?status.code(), message = status.message(), "locsvc instance failed; trying the next");
                    if let Ok(mut d) = inst.down_until.lock() {
                        *d = Some(Instant::now() + DOWN_FOR);
                    }
                    last = Some(channel_failure(&status));
                }
                Ok(Err(status)) => return Err(classify(&status)),
                Err(_) => {
                    last = Some(LocsvcError::Unavailable {
                        retry_after: DEFAULT_RETRY_AFTER,
                        detail: format!("{op} timed out on {}", inst.uri),
                    });
                    break;
                }
            }
        }
        Err(last.unwrap_or(LocsvcError::Unavailable {
            retry_after: DEFAULT_RETRY_AFTER,
            detail: format!("{op}: no time left for any locsvc instance"),
        }))
    }

    /// Save (one REGISTER); returns every current binding.
    pub async fn save(&self, mut req: SaveRequest) -> Result<Vec<Binding>, LocsvcError> {
        req.table = self.table.clone();
        self.with_failover("save", |inst, t| {
            let (mut c, r) = (inst.client.clone(), self.request(req.clone(), t));
            async move { c.save(r).await }
        })
        .await
        .map(|r| r.bindings)
    }

    /// Lookup: valid bindings, best first.
    pub async fn lookup(&self, aor: &str) -> Result<Vec<Binding>, LocsvcError> {
        let req = LookupRequest {
            table: self.table.clone(),
            aor: aor.to_string(),
        };
        self.with_failover("lookup", |inst, t| {
            let (mut c, r) = (inst.client.clone(), self.request(req.clone(), t));
            async move { c.lookup(r).await }
        })
        .await
        .map(|r| r.bindings)
    }

    /// The HA1s of `username@domain` for `realm` (None: no such subscriber).
    pub async fn credentials(
        &self,
        username: &str,
        domain: &str,
        realm: &str,
    ) -> Result<Option<crate::digest::Ha1>, LocsvcError> {
        let req = GetCredentialsRequest {
            username: username.to_string(),
            domain: domain.to_string(),
            realm: realm.to_string(),
        };
        let r = self
            .with_failover("credentials", |inst, t| {
                let (mut c, r) = (inst.subscribers.clone(), self.request(req.clone(), t));
                async move { c.get_credentials(r).await }
            })
            .await?;
        Ok(r.found.then_some(crate::digest::Ha1 {
            md5: r.ha1_md5,
            sha256: r.ha1_sha256,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tonic_types::{ErrorDetails, StatusExt};

    fn status(code: Code, reason: &str, meta: &[(&str, &str)]) -> Status {
        let mut d = ErrorDetails::new();
        let meta: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        d.set_error_info(reason, "locsvc.v1", meta);
        Status::with_error_details(code, "m", d)
    }

    #[test]
    fn interval_too_brief_becomes_423_with_min_expires() {
        let e = classify(&status(
            Code::FailedPrecondition,
            "INTERVAL_TOO_BRIEF",
            &[("min_expires", "120")],
        ));
        assert_eq!(e, LocsvcError::IntervalTooBrief { min_expires: 120 });
        let (code, _, h) = e.sip();
        assert_eq!((code, h), (423, vec![("Min-Expires", "120".to_string())]));
    }

    #[test]
    fn cseq_out_of_order_and_bad_request_become_400_with_a_reason_phrase() {
        let e = classify(&status(Code::FailedPrecondition, "CSEQ_OUT_OF_ORDER", &[]));
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
            "NO_HEALTHY_MEMBER",
            &[("retry_after", "7")],
        ));
        assert_eq!(e.sip().2, vec![("Retry-After", "7".to_string())]);
        assert!(!worth_failover(&status(
            Code::Unavailable,
            "NO_HEALTHY_MEMBER",
            &[]
        )));
        assert!(worth_failover(&status(
            Code::Unavailable,
            "OVERLOADED",
            &[]
        )));
        assert!(worth_failover(&Status::unavailable("connection refused")));
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
            classify(&status(Code::ResourceExhausted, "TOO_MANY_CONTACTS", &[]))
                .sip()
                .0,
            503
        );
    }

    #[tokio::test]
    async fn an_unreachable_locsvc_is_unavailable_within_the_budget() {
        // Bind then drop: the port is (very likely) closed, so connect is refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let c = LocsvcClient::new(
            &[format!("http://127.0.0.1:{port}")],
            Duration::from_millis(300),
            None,
            String::new(),
        )
        .unwrap();
        let t = Instant::now();
        let e = c.lookup("sip:a@b").await.unwrap_err();
        assert!(matches!(e, LocsvcError::Unavailable { .. }), "{e:?}");
        assert!(t.elapsed() < Duration::from_millis(600));
    }

    #[test]
    fn an_https_address_needs_a_ca() {
        let e = LocsvcClient::new(
            &["https://127.0.0.1:1".into()],
            Duration::from_millis(300),
            None,
            String::new(),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::HttpsWithoutCa { .. }), "{e:?}");
        assert!(e.to_string().contains("locsvc_ca"), "{e}");
    }

    #[test]
    fn tls_files_are_read_and_a_missing_or_non_pem_one_is_named_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = |f: &str| dir.path().join(f);
        std::fs::write(
            path("ca.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        std::fs::write(path("key.txt"), "not a key\n").unwrap();
        let mut s = crate::settings::Settings::default();
        assert!(TlsClient::load(&s).unwrap().is_none(), "no CA, no TLS");
        s.locsvc_ca = Some(path("ca.pem"));
        s.locsvc_tls_domain = Some("locsvc.example.com".into());
        let t = TlsClient::load(&s).unwrap().unwrap();
        assert!(t.identity.is_none());
        assert_eq!(t.domain.as_deref(), Some("locsvc.example.com"));
        s.locsvc_cert = Some(path("missing.pem"));
        s.locsvc_key = Some(path("key.txt"));
        let e = TlsClient::load(&s).unwrap_err();
        assert_eq!(e.setting, "locsvc_cert");
        let text = e.to_string();
        assert!(
            text.contains("locsvc_cert") && text.contains("missing.pem"),
            "{text}"
        );
        s.locsvc_cert = Some(path("ca.pem"));
        let e = TlsClient::load(&s).unwrap_err().to_string();
        assert!(
            e.contains("locsvc_key") && e.contains("key.txt") && e.contains("no PEM private key"),
            "{e}"
        );
        s.locsvc_ca = Some(path("key.txt"));
        let e = TlsClient::load(&s).unwrap_err().to_string();
        assert!(
            e.contains("`locsvc_ca`") && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn with_a_ca_every_address_uses_tls_and_a_bad_key_is_refused_at_build() {
        let ca = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
        let tls = TlsClient {
            ca_pem: ca.clone(),
            ..TlsClient::default()
        };
        let c = LocsvcClient::with_tls(
            &["http://127.0.0.1:1".into(), "https://127.0.0.1:2".into()],
            Duration::from_millis(300),
            None,
            String::new(),
            Some(tls),
        )
        .unwrap();
        let uris: Vec<_> = c.instances.iter().map(|i| i.uri.as_str()).collect();
        assert_eq!(uris, ["https://127.0.0.1:1", "https://127.0.0.1:2"]);
        let bad_key = TlsClient {
            ca_pem: ca,
            identity: Some((
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec(),
                b"-----BEGIN PRIVATE KEY-----\n!!\n-----END PRIVATE KEY-----\n".to_vec(),
            )),
            domain: None,
        };
        let e = LocsvcClient::with_tls(
            &["https://127.0.0.1:1".into()],
            Duration::from_millis(300),
            None,
            String::new(),
            Some(bad_key),
        )
        .unwrap_err();
        assert!(matches!(e, ClientError::Tls { .. }), "{e:?}");
    }
}
