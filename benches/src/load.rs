//! The gRPC side of the driver: several HTTP/2 channels used round-robin,
//! one Save or Lookup per operation with a deadline, and the two ways of
//! pacing them (closed loop: N workers back to back; open loop: a fixed
//! schedule with latency measured from each operation's due time).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use locsvc_proto::v1::location_client::LocationClient;
use locsvc_proto::v1::{ContactSpec, LookupRequest, SaveRequest};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic_types::StatusExt;

use crate::stats::Recorder;
use crate::workload::{Kind, Op, Planner, Schedule, Users};

/// How to reach locsvc.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `http://host:port` (or `https://` with `ca_cert`).
    pub target: String,
    pub token: Option<String>,
    /// PEM CA certificate for an `https://` target.
    pub ca_cert: Option<std::path::PathBuf>,
    pub channels: usize,
    /// Deadline of every call (sent as `grpc-timeout` and enforced here).
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

/// Channels to locsvc, used round-robin by operation number: one HTTP/2
/// connection is served by one core on each side, so several spread the load.
#[derive(Debug, Clone)]
pub struct Conn {
    clients: Vec<LocationClient<Channel>>,
    auth: Option<AsciiMetadataValue>,
    timeout: Duration,
}

impl Conn {
    /// Opens `channels` connections now, so a wrong target fails before the run.
    pub async fn connect(o: &ConnectOptions) -> anyhow::Result<Self> {
        let mut endpoint = Endpoint::from_shared(o.target.clone())
            .with_context(|| format!("bad --target {:?}", o.target))?
            .connect_timeout(o.connect_timeout)
            .tcp_nodelay(true);
        if let Some(ca) = &o.ca_cert {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .context("TLS configuration")?;
        }
        let mut clients = Vec::with_capacity(o.channels);
        for _ in 0..o.channels.max(1) {
            let channel = endpoint
                .connect()
                .await
                .with_context(|| format!("cannot connect to {}", o.target))?;
            // Bindings lists are small; the default 4 MiB decode limit is plenty.
            clients.push(LocationClient::new(channel));
        }
        let auth = match &o.token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
                    .context("--token is not a valid header value")?,
            ),
            None => None,
        };
        Ok(Self {
            clients,
            auth,
            timeout: o.timeout,
        })
    }

    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        if let Some(a) = &self.auth {
            req.metadata_mut().insert("authorization", a.clone());
        }
        req
    }

    fn client(&self, n: u64) -> LocationClient<Channel> {
        let len = u64::try_from(self.clients.len()).unwrap_or(1).max(1);
        let i = usize::try_from(n % len).unwrap_or(0);
        self.clients[i].clone()
    }

    /// Sends operation `n`; Ok(found) where found = the call returned at
    /// least one binding.
    pub async fn call(&self, n: u64, op: &Op, ctx: &Ctx) -> Result<bool, Failure> {
        let mut client = self.client(n);
        match op.kind {
            Kind::Save => {
                let req = self.request(ctx.save_request(op));
                let resp = tokio::time::timeout(self.timeout, client.save(req))
                    .await
                    .map_err(|_| Failure::client_timeout(self.timeout))?
                    .map_err(Failure::from_status)?;
                Ok(!resp.get_ref().bindings.is_empty())
            }
            Kind::Lookup => {
                let req = self.request(LookupRequest {
                    table: ctx.table.clone(),
                    aor: ctx.users.aor(op.user),
                    ..LookupRequest::default()
                });
                let resp = tokio::time::timeout(self.timeout, client.lookup(req))
                    .await
                    .map_err(|_| Failure::client_timeout(self.timeout))?
                    .map_err(Failure::from_status)?;
                Ok(!resp.get_ref().bindings.is_empty())
            }
        }
    }
}

/// A failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// gRPC code name, e.g. `Unavailable`.
    pub code: String,
    /// `google.rpc.ErrorInfo.reason`, when the server sent one.
    pub reason: Option<String>,
    pub message: String,
}

impl Failure {
    fn from_status(s: tonic::Status) -> Self {
        // tonic enforces the request's grpc-timeout in the client too and
        // reports it as CANCELLED; it is the same deadline as ours.
        if s.code() == tonic::Code::Cancelled && s.message() == "Timeout expired" {
            return Self {
                code: "DeadlineExceeded".into(),
                reason: Some("CLIENT_TIMEOUT".into()),
                message: "no answer within the deadline (--timeout-ms)".into(),
            };
        }
        Self {
            code: format!("{:?}", s.code()),
            reason: s.get_details_error_info().map(|i| i.reason),
            message: s.message().to_string(),
        }
    }

    fn client_timeout(d: Duration) -> Self {
        Self {
            code: "DeadlineExceeded".into(),
            reason: Some("CLIENT_TIMEOUT".into()),
            message: format!("no answer within {} ms", d.as_millis()),
        }
    }
}

/// What every request of a run shares.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub table: String,
    pub users: Users,
    /// Expires header of every Save.
    pub expires: i64,
    /// Makes Call-IDs unique to this run: `{run_id}-{user}@locsvc-load`.
    pub run_id: String,
}

impl Ctx {
    /// One REGISTER of subscriber `op.user` with its one contact.
    pub fn save_request(&self, op: &Op) -> SaveRequest {
        SaveRequest {
            table: self.table.clone(),
            aor: self.users.aor(op.user),
            contacts: vec![ContactSpec {
                uri: self.users.contact(op.user),
                ..ContactSpec::default()
            }],
            wildcard: false,
            expires: Some(self.expires),
            call_id: format!("{}-{}@locsvc-load", self.run_id, op.user),
            cseq: op.cseq,
            user_agent: "locsvc-load".into(),
            ..SaveRequest::default()
        }
    }
}

/// Pacing of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pacing {
    /// `concurrency` workers, each sending its next operation when the
    /// previous one finished.
    Closed { concurrency: usize },
    /// `rate` operations per second on a fixed schedule, at most
    /// `max_in_flight` outstanding (waiting for a slot still counts in the
    /// latency, which runs from the due time).
    Open { rate: f64, max_in_flight: usize },
}

/// When a run ends: whichever comes first.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub duration: Option<Duration>,
    pub count: Option<u64>,
}

/// Results of a run.
#[derive(Debug)]
pub struct RunResult {
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// One recorder per `Kind`.
    pub by_kind: [Recorder; 2],
    /// Open loop: operations that had to wait for a free in-flight slot.
    pub delayed_by_cap: u64,
}

impl RunResult {
    /// Every kind together.
    pub fn total(&self) -> Recorder {
        let mut t = Recorder::default();
        for r in &self.by_kind {
            t.merge(r);
        }
        t
    }
}

fn record(rec: &mut [Recorder; 2], kind: Kind, out: Result<bool, Failure>, took: Duration) {
    let r = &mut rec[kind.index()];
    match out {
        Ok(found) => {
            r.ok(took);
            if found && kind == Kind::Lookup {
                r.found += 1;
            }
        }
        Err(f) => r.error(&f.code, f.reason.as_deref(), &f.message),
    }
}

/// Runs operations until `bounds` are reached.
pub async fn run(
    conn: Arc<Conn>,
    planner: Arc<Planner>,
    ctx: Arc<Ctx>,
    pacing: Pacing,
    bounds: Bounds,
) -> anyhow::Result<RunResult> {
    if bounds.duration.is_none() && bounds.count.is_none() {
        bail!("a run needs --duration or --count");
    }
    match pacing {
        Pacing::Closed { concurrency } => closed(conn, planner, ctx, concurrency, bounds).await,
        Pacing::Open {
            rate,
            max_in_flight,
        } => open(conn, planner, ctx, rate, max_in_flight, bounds).await,
    }
}

async fn closed(
    conn: Arc<Conn>,
    planner: Arc<Planner>,
    ctx: Arc<Ctx>,
    concurrency: usize,
    bounds: Bounds,
) -> anyhow::Result<RunResult> {
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = bounds.duration.map(|d| start + d);
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (conn, planner, ctx, next) = (conn.clone(), planner.clone(), ctx.clone(), next.clone());
        workers.spawn(async move {
            let mut rec: [Recorder; 2] = Default::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if bounds.count.is_some_and(|c| n >= c)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    break;
                }
                let op = planner.plan(n);
                let sent = Instant::now();
                let out = conn.call(n, &op, &ctx).await;
                record(&mut rec, op.kind, out, sent.elapsed());
            }
            rec
        });
    }
    let mut by_kind: [Recorder; 2] = Default::default();
    while let Some(done) = workers.join_next().await {
        let rec = done.context("a worker panicked")?;
        for (into, from) in by_kind.iter_mut().zip(rec.iter()) {
            into.merge(from);
        }
    }
    Ok(RunResult {
        elapsed: start.elapsed(),
        by_kind,
        delayed_by_cap: 0,
    })
}

async fn open(
    conn: Arc<Conn>,
    planner: Arc<Planner>,
    ctx: Arc<Ctx>,
    rate: f64,
    max_in_flight: usize,
    bounds: Bounds,
) -> anyhow::Result<RunResult> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("--rate must be a positive number");
    }
    let slots = max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
    let sem = Arc::new(Semaphore::new(slots));
    let shared = Arc::new(std::sync::Mutex::new(<[Recorder; 2]>::default()));
    let schedule = Schedule::new(rate);
    let start = Instant::now();
    let mut delayed = 0u64;
    let mut k = 0u64;
    loop {
        if bounds.count.is_some_and(|c| k >= c) {
            break;
        }
        let offset = schedule.offset(k);
        if bounds.duration.is_some_and(|d| offset >= d) {
            break;
        }
        let due = start + offset;
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let permit = match sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                delayed += 1;
                sem.clone()
                    .acquire_owned()
                    .await
                    .context("semaphore closed")?
            }
        };
        let op = planner.plan(k);
        let (conn, ctx, shared) = (conn.clone(), ctx.clone(), shared.clone());
        let n = k;
        tokio::spawn(async move {
            let out = conn.call(n, &op, &ctx).await;
            // From the due time, not the send time: a late send is latency too.
            let took = due.elapsed();
            if let Ok(mut rec) = shared.lock() {
                record(&mut rec, op.kind, out, took);
            }
            drop(permit);
        });
        k += 1;
    }
    // Every slot back means every operation answered.
    let all = u32::try_from(slots).unwrap_or(u32::MAX);
    let _ = sem.acquire_many(all).await.context("semaphore closed")?;
    let elapsed = start.elapsed();
    let by_kind = shared
        .lock()
        .map(|r| r.clone())
        .map_err(|_| anyhow::anyhow!("a request task panicked"))?;
    Ok(RunResult {
        elapsed,
        by_kind,
        delayed_by_cap: delayed,
    })
}
