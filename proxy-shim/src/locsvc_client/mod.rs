//! The gRPC client to one or more locsvc instances: a deadline on every call
//! (well under SIP timer T1, so a UAC retransmission never races an answer
//! we are still waiting for), failover to the next instance when one is
//! unreachable or shedding load, and the classification of locsvc's
//! `ErrorInfo` reasons into what the SIP side answers.
//!
//! With `TlsClient` the connections are tonic channels over TLS (rustls, the
//! CA given, no system roots), with a client certificate for a locsvc that
//! requires one; without, hyper's HTTP/2 client (`transport`).
//!
//! It does not retry a request locsvc *answered* (bad input, 423, CSeq): the
//! answer would be the same from any instance sharing the same databases.
//!
//! Lookups leave in `LookupMany` calls: those that arrive while earlier
//! calls are in flight are coalesced into the next one (`batch`), each
//! still with its own deadline, span and answer.
//!
//! `status` classifies what locsvc answers; `tls` reads the TLS files;
//! `transport` is the connection to one instance.

mod batch;
mod status;
mod tls;
mod transport;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::lookup_outcome::Outcome;
use locsvc_proto::v1::subscribers_client::SubscribersClient;
use locsvc_proto::v1::{
    Binding, GetCredentialsRequest, LookupManyRequest, LookupManyResponse, LookupRequest,
    SaveRequest,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tracing::Instrument;

use batch::Batcher;
use transport::Transport;

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
    /// The URI's host and port, for trace spans.
    host: String,
    port: u16,
    client: LocationClient<Transport>,
    /// Digest credentials (same connection).
    subscribers: SubscribersClient<Transport>,
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

/// How lookups are coalesced into `LookupMany` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    /// Most lookups in one call; 0: every lookup is a `Lookup` call of its
    /// own.
    pub max_items: usize,
    /// Calls in flight at once before lookups wait to be coalesced.
    pub max_calls: usize,
}

impl Batching {
    /// The batcher these limits make; None when batching is off.
    fn batcher(self) -> Option<Batcher<Waiting>> {
        (self.max_items > 0).then(|| Batcher::new(self.max_items, self.max_calls))
    }
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_items: 64,
            max_calls: 2,
        }
    }
}

/// A client over several locsvc instances, tried in the configured order,
/// skipping (until `DOWN_FOR` has passed) those that just failed.
#[derive(Debug, Clone)]
pub struct LocsvcClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    instances: Vec<Instance>,
    budget: Duration,
    token: Option<String>,
    table: String,
    /// None: batching off.
    batcher: Option<Batcher<Waiting>>,
    /// locsvc answered `LookupMany` with UNIMPLEMENTED (an older
    /// version): lookups go one per call from then on.
    batch_unsupported: AtomicBool,
}

/// A lookup waiting for its `LookupMany` answer.
#[derive(Debug)]
struct Waiting {
    req: LookupRequest,
    deadline: Instant,
    /// The lookup's client span (its trace context is in `req`).
    span: tracing::Span,
    tx: oneshot::Sender<Result<Vec<Binding>, LocsvcError>>,
}

/// Why `with_failover` gave up.
enum Failure {
    /// An instance answered with this status (not worth trying another).
    Answered(Status),
    /// No instance answered in time.
    Unreached(LocsvcError),
}

impl Failure {
    fn into_error(self) -> LocsvcError {
        match self {
            Failure::Answered(s) => classify(&s),
            Failure::Unreached(e) => e,
        }
    }
}

/// Owns one call slot of the batcher; when dropped (the call ended, or
/// its task was cancelled) the lookups that gathered meanwhile go on in a
/// task of their own, so the lookup that made the call is answered first.
struct Slot(Arc<Inner>);

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(batcher) = &self.0.batcher else {
            return;
        };
        if let Some(next) = batcher.next() {
            let inner = self.0.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move { inner.run_slot(next).await });
                }
                // No runtime (shutting down): their waiters see the drop.
                Err(_) => drop(next),
            }
        }
    }
}

impl LocsvcClient {
    /// Connections are made on first use, so the shim starts even when
    /// locsvc is not up yet (it answers 503 until it is). Plain HTTP/2
    /// (`transport`): see `with_tls`.
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
            let mut ep = Endpoint::from_shared(uri.clone()).map_err(|e| ClientError::BadUri {
                uri: uri.clone(),
                reason: e.to_string(),
            })?;
            if let Some(t) = &tls {
                ep = ep
                    .connect_timeout(budget)
                    .timeout(budget)
                    .tcp_nodelay(true)
                    .tls_config(t.config(budget))
                    .map_err(|e| ClientError::Tls {
                        uri: uri.clone(),
                        reason: error_chain(&e),
                    })?;
            }
            let host = ep.uri().host().unwrap_or_default().to_string();
            let default_port = if ep.uri().scheme_str() == Some("https") {
                443
            } else {
                80
            };
            let port = ep.uri().port_u16().unwrap_or(default_port);
            let origin = ep.uri().clone();
            let transport = match tls {
                Some(_) => Transport::Channel(ep.connect_lazy()),
                None => Transport::direct(budget),
            };
            instances.push(Instance {
                uri,
                host,
                port,
                client: LocationClient::with_origin(transport.clone(), origin.clone()),
                subscribers: SubscribersClient::with_origin(transport, origin),
                down_until: Mutex::new(None),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                instances,
                budget,
                token,
                table,
                batcher: Batching::default().batcher(),
                batch_unsupported: AtomicBool::new(false),
            }),
        })
    }

    /// This client with lookups coalesced as `batching` says (default:
    /// `Batching::default()`). Call before the client is cloned.
    pub fn with_batching(mut self, batching: Batching) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.batcher = batching.batcher();
        }
        self
    }

    /// Save (one REGISTER); returns every current binding.
    pub async fn save(&self, mut req: SaveRequest) -> Result<Vec<Binding>, LocsvcError> {
        let inner = &self.inner;
        req.table = inner.table.clone();
        let deadline = Instant::now() + inner.budget;
        inner
            .with_failover(("locsvc.v1.Location", "Save"), deadline, true, |inst, t| {
                let (mut c, r) = (inst.client.clone(), inner.request(req.clone(), t));
                async move { c.save(r).await }
            })
            .await
            .map(|(r, _)| r.bindings)
            .map_err(Failure::into_error)
    }

    /// Lookup: valid bindings, best first.
    pub async fn lookup(&self, aor: &str) -> Result<Vec<Binding>, LocsvcError> {
        let req = LookupRequest {
            table: self.inner.table.clone(),
            aor: aor.to_string(),
            ..LookupRequest::default()
        };
        let deadline = Instant::now() + self.inner.budget;
        match &self.inner.batcher {
            Some(batcher) if !self.inner.batch_unsupported.load(Ordering::Relaxed) => {
                self.lookup_batched(batcher, req, deadline).await
            }
            _ => self.inner.lookup_single(req, deadline).await,
        }
    }

    /// A lookup through the batcher: sent now (this task makes the call)
    /// or with the next call a finishing one starts.
    async fn lookup_batched(
        &self,
        batcher: &Batcher<Waiting>,
        mut req: LookupRequest,
        deadline: Instant,
    ) -> Result<Vec<Binding>, LocsvcError> {
        let span = svc_base::rpc_span!(
            tracing::Level::DEBUG,
            "locsvc_call",
            server.address = tracing::field::Empty,
            server.port = tracing::field::Empty,
        );
        svc_base::telemetry::name_rpc_span(&span, "locsvc.v1.Location", "Lookup", "client");
        req.trace_context = span.in_scope(svc_base::telemetry::context_map);
        let (tx, rx) = oneshot::channel();
        let waiting = Waiting {
            req,
            deadline,
            span: span.clone(),
            tx,
        };
        if let Some(batch) = batcher.submit(waiting) {
            let slot = Slot(self.inner.clone());
            self.inner.run_batch(batch).await;
            drop(slot);
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            // The call carrying it was cancelled (shutdown).
            Ok(Err(_)) => Err(LocsvcError::Unavailable {
                retry_after: DEFAULT_RETRY_AFTER,
                detail: "Lookup abandoned".into(),
            }),
            Err(_) => {
                svc_base::telemetry::record_grpc_status(&span, Code::DeadlineExceeded);
                Err(LocsvcError::Unavailable {
                    retry_after: DEFAULT_RETRY_AFTER,
                    detail: "Lookup: no answer from locsvc in time".into(),
                })
            }
        }
    }

    /// The HA1s of `username@domain` for `realm` (None: no such subscriber).
    pub async fn credentials(
        &self,
        username: &str,
        domain: &str,
        realm: &str,
    ) -> Result<Option<crate::digest::Ha1>, LocsvcError> {
        let inner = &self.inner;
        let req = GetCredentialsRequest {
            username: username.to_string(),
            domain: domain.to_string(),
            realm: realm.to_string(),
        };
        let deadline = Instant::now() + inner.budget;
        let (r, _) = inner
            .with_failover(
                ("locsvc.v1.Subscribers", "GetCredentials"),
                deadline,
                true,
                |inst, t| {
                    let (mut c, r) = (inst.subscribers.clone(), inner.request(req.clone(), t));
                    async move { c.get_credentials(r).await }
                },
            )
            .await
            .map_err(Failure::into_error)?;
        Ok(r.found.then_some(crate::digest::Ha1 {
            md5: r.ha1_md5,
            sha256: r.ha1_sha256,
        }))
    }
}

impl Inner {
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

    /// A call's request: its deadline, the token, and the current span's
    /// trace context (the attempt's span, when traces are on).
    fn request<T>(&self, msg: T, remaining: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(remaining);
        if let Some(t) = &self.token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            r.metadata_mut().insert("authorization", v);
        }
        svc_base::telemetry::inject(r.metadata_mut());
        r
    }

    /// Runs `call` on each instance in turn until one answers, by
    /// `deadline` (the whole budget, not per instance: the UAC's T1 does not
    /// restart). Each attempt is a client span of `rpc` (service, method)
    /// in the trace when `traced`. Returns the answer and the instance
    /// that gave it.
    async fn with_failover<T, F, Fut>(
        &self,
        rpc: (&'static str, &'static str),
        deadline: Instant,
        traced: bool,
        call: F,
    ) -> Result<(T, &Instance), Failure>
    where
        F: Fn(&Instance, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let op = rpc.1;
        let mut last = None;
        for inst in self.order() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let span = if traced {
                let span = svc_base::rpc_span!(
                    tracing::Level::DEBUG,
                    "locsvc_call",
                    server.address = %inst.host,
                    server.port = inst.port,
                );
                svc_base::telemetry::name_rpc_span(&span, rpc.0, rpc.1, "client");
                span
            } else {
                tracing::Span::none()
            };
            // Built in the span: the request carries its trace context.
            let attempt = span.in_scope(|| call(inst, remaining));
            let answered = tokio::time::timeout(remaining, attempt.instrument(span.clone())).await;
            let code = match &answered {
                Ok(Ok(_)) => tonic::Code::Ok,
                Ok(Err(status)) => status.code(),
                Err(_) => tonic::Code::DeadlineExceeded,
            };
            svc_base::telemetry::record_grpc_status(&span, code);
            match answered {
                Ok(Ok(resp)) => {
                    if let Ok(mut d) = inst.down_until.lock() {
                        *d = None;
                    }
                    return Ok((resp.into_inner(), inst));
                }
                Ok(Err(status)) if worth_failover(&status) => {
                    tracing::warn!(locsvc = %inst.uri, op, code = ?status.code(), message = status.message(), "locsvc instance failed; trying the next");
                    if let Ok(mut d) = inst.down_until.lock() {
                        *d = Some(Instant::now() + DOWN_FOR);
                    }
                    last = Some(channel_failure(&status));
                }
                Ok(Err(status)) => return Err(Failure::Answered(status)),
                Err(_) => {
                    last = Some(LocsvcError::Unavailable {
                        retry_after: DEFAULT_RETRY_AFTER,
                        detail: format!("{op} timed out on {}", inst.uri),
                    });
                    break;
                }
            }
        }
        Err(Failure::Unreached(last.unwrap_or(
            LocsvcError::Unavailable {
                retry_after: DEFAULT_RETRY_AFTER,
                detail: format!("{op}: no time left for any locsvc instance"),
            },
        )))
    }

    /// One `Lookup` call (with failover) for one lookup.
    async fn lookup_single(
        &self,
        req: LookupRequest,
        deadline: Instant,
    ) -> Result<Vec<Binding>, LocsvcError> {
        self.with_failover(
            ("locsvc.v1.Location", "Lookup"),
            deadline,
            true,
            |inst, t| {
                let (mut c, r) = (inst.client.clone(), self.request(req.clone(), t));
                async move { c.lookup(r).await }
            },
        )
        .await
        .map(|(r, _)| r.bindings)
        .map_err(Failure::into_error)
    }

    /// Runs batches on one call slot until nothing waits.
    async fn run_slot(self: Arc<Self>, mut batch: Vec<Waiting>) {
        let Some(batcher) = &self.batcher else {
            return;
        };
        loop {
            self.run_batch(batch).await;
            match batcher.next() {
                Some(next) => batch = next,
                None => return,
            }
        }
    }

    /// One `LookupMany` call for `batch`; every lookup in it is answered.
    async fn run_batch(&self, batch: Vec<Waiting>) {
        // A lookup whose caller gave up (its deadline passed) is not sent.
        let batch: Vec<Waiting> = batch.into_iter().filter(|w| !w.tx.is_closed()).collect();
        let Some(deadline) = batch.iter().map(|w| w.deadline).max() else {
            return;
        };
        if self.batch_unsupported.load(Ordering::Relaxed) {
            // Queued before locsvc said it has no LookupMany.
            futures::future::join_all(batch.into_iter().map(|w| self.retry_alone(w))).await;
            return;
        }
        let lookups: Vec<LookupRequest> = batch.iter().map(|w| w.req.clone()).collect();
        let answered = self
            .with_failover(
                ("locsvc.v1.Location", "LookupMany"),
                deadline,
                false,
                |inst, t| {
                    let msg = LookupManyRequest {
                        lookups: lookups.clone(),
                    };
                    let (mut c, r) = (inst.client.clone(), self.request(msg, t));
                    async move { c.lookup_many(r).await }
                },
            )
            .await;
        match answered {
            Ok((resp, inst)) => self.answer_batch(batch, resp, inst).await,
            Err(Failure::Answered(s)) if s.code() == Code::Unimplemented => {
                tracing::warn!(
                    "locsvc does not serve LookupMany (an older version?): one Lookup call per lookup from now on"
                );
                self.batch_unsupported.store(true, Ordering::Relaxed);
                futures::future::join_all(batch.into_iter().map(|w| self.retry_alone(w))).await;
            }
            Err(f) => {
                let e = f.into_error();
                for w in batch {
                    finish(w, Err(e.clone()), None);
                }
            }
        }
    }

    /// Hands each lookup of `batch` its outcome from `resp`; a lookup this
    /// instance shed (or could not place) is tried again alone, with
    /// failover, in what is left of its own budget.
    async fn answer_batch(&self, batch: Vec<Waiting>, resp: LookupManyResponse, inst: &Instance) {
        if resp.outcomes.len() != batch.len() {
            let e = LocsvcError::Internal(format!(
                "LookupMany: {} outcomes for {} lookups",
                resp.outcomes.len(),
                batch.len()
            ));
            for w in batch {
                finish(w, Err(e.clone()), Some(inst));
            }
            return;
        }
        let mut again = Vec::new();
        for (w, outcome) in batch.into_iter().zip(resp.outcomes) {
            match outcome.outcome {
                Some(Outcome::Found(found)) => finish(w, Ok(found.bindings), Some(inst)),
                Some(Outcome::Failed(f)) => {
                    let status = Status::from(f);
                    if worth_failover(&status) && self.instances.len() > 1 {
                        again.push(w);
                    } else {
                        svc_base::telemetry::record_grpc_status(&w.span, status.code());
                        finish(w, Err(classify(&status)), Some(inst));
                    }
                }
                None => finish(
                    w,
                    Err(LocsvcError::Internal("LookupMany: an empty outcome".into())),
                    Some(inst),
                ),
            }
        }
        futures::future::join_all(again.into_iter().map(|w| self.retry_alone(w))).await;
    }

    /// `w` as a `Lookup` call of its own, in its span.
    async fn retry_alone(&self, w: Waiting) {
        let span = w.span.clone();
        let answer = self
            .lookup_single(w.req.clone(), w.deadline)
            .instrument(span)
            .await;
        finish(w, answer, None);
    }
}

/// Answers `w` (its span records the instance and the outcome).
fn finish(w: Waiting, answer: Result<Vec<Binding>, LocsvcError>, inst: Option<&Instance>) {
    if let Some(inst) = inst {
        w.span.record("server.address", inst.host.as_str());
        w.span.record("server.port", inst.port);
    }
    if answer.is_ok() {
        svc_base::telemetry::record_grpc_status(&w.span, Code::Ok);
    }
    // The caller may have given up already: nothing to do then.
    let _ = w.tx.send(answer);
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
        let uris: Vec<_> = c.inner.instances.iter().map(|i| i.uri.as_str()).collect();
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
