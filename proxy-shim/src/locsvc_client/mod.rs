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
//!
//! `status` classifies what locsvc answers; `tls` reads the TLS files.

mod status;
mod tls;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::subscribers_client::SubscribersClient;
use locsvc_proto::v1::{Binding, GetCredentialsRequest, LookupRequest, SaveRequest};
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use status::{channel_failure, worth_failover};

pub use status::{DEFAULT_RETRY_AFTER, LocsvcError, classify};
pub use tls::{TlsClient, TlsFileError};

/// How long an instance that failed at the transport level is tried last.
const DOWN_FOR: Duration = Duration::from_secs(2);

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
    /// An address that is no usable URI.
    #[error("bad locsvc address {uri}: {reason}")]
    BadUri {
        /// The address as configured.
        uri: String,
        /// Why it was refused.
        reason: String,
    },
    /// `locsvc` lists no address.
    #[error("no locsvc address configured")]
    NoInstance,
    /// An `https://` address without `locsvc_ca` to verify it with.
    #[error(
        "locsvc address {uri} is https:// but no CA is configured (`locsvc_ca`; this build has no system trust roots)"
    )]
    HttpsWithoutCa {
        /// The address as configured.
        uri: String,
    },
    /// The TLS settings could not be applied to this address.
    #[error("TLS to locsvc at {uri}: {reason}")]
    Tls {
        /// The address as configured.
        uri: String,
        /// Why TLS could not be set up.
        reason: String,
    },
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
            ruid: String::new(),
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
