//! Builds and runs a locsvc instance: opens the master, loads the cluster,
//! binds its listeners (port 0 allowed), and serves until a shutdown future
//! resolves. `main` stays thin and tests run the real app in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use locsvc_proto::v1::cluster_server::ClusterServer;
use locsvc_proto::v1::location_server::LocationServer;
use locsvc_proto::v1::subscribers_server::SubscribersServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::aor_lock::AorLocks;
use crate::census::Census;
use crate::clock::{self, Clock};
use crate::cluster::{ClusterWatcher, Registry};
use crate::expiry::Sweeper;
use crate::failover::{Failover, Marks};
use crate::grpc::{ClusterApi, Level, LocationApi, SubscribersApi, Tokens};
use crate::location::LocationService;
use crate::lookup_cache::LookupCache;
use crate::metrics::{self, Metrics};
use crate::router::{Router, TableMode};
use crate::settings::Settings;
use crate::store::migrate::Scope;
use crate::store::subscriber::SubscriberStore;
use crate::store::{DbUrl, LocdbRow, SqlStore, StoreError};

/// A peer heard from within this long (or three polls) is waited for
/// before serving; one silent for longer is presumed dead.
const JOIN_RECENT: Duration = Duration::from_secs(10);

/// How long in-flight requests may run after shutdown starts.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Why the app could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("master database {url}: {source}")]
    Master { url: String, source: StoreError },
    #[error("member database {url}: {source}")]
    Member { url: String, source: StoreError },
    #[error("subscriber database {url}: {source}")]
    Subscribers { url: String, source: StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// A built, not yet running, locsvc instance.
pub struct App {
    settings: Settings,
    metrics: Arc<Metrics>,
    watcher: ClusterWatcher,
    service: Arc<LocationService>,
    sweeper: Sweeper,
    census: Census,
    failover: Arc<Failover>,
    cluster_api: ClusterApi,
    /// kamctl's `subscriber` table; its own pool only with `subscribers.url`.
    subscribers: SubscriberStore,
    own_subscriber_pool: bool,
    topology: tokio::sync::watch::Receiver<Arc<crate::cluster::Topology>>,
    /// This instance in `locsvc_instances`.
    registry: Arc<Registry>,
    grpc: TcpListener,
    grpc_addr: SocketAddr,
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
    /// Detached work of the watcher and failover (decisions, resyncs,
    /// probes, pool closes), awaited at shutdown.
    tasks: TaskTracker,
}

/// The master URL of the embedded SQLite layout under `data_dir`.
pub fn embedded_master_url(data_dir: &Path) -> Result<DbUrl, AppError> {
    let dir = std::path::absolute(data_dir).map_err(|source| AppError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    std::fs::create_dir_all(&dir).map_err(|source| AppError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let url = format!("sqlite://{}", dir.join("master.db").display());
    DbUrl::parse(&url).map_err(|e| AppError::Master {
        url,
        source: StoreError::Config(e.to_string()),
    })
}

/// Seeds an empty embedded `locdb` with two groups of two SQLite members.
async fn seed_embedded(master: &SqlStore, data_dir: &Path) -> Result<(), StoreError> {
    if !master.load_locdb().await?.is_empty() {
        return Ok(());
    }
    let dir = std::path::absolute(data_dir).map_err(|e| StoreError::Config(e.to_string()))?;
    for id in 1..=2 {
        for no in 1..=2 {
            let file = dir.join(format!("group{id}-member{no}.db"));
            master
                .insert_locdb(&LocdbRow {
                    id,
                    no,
                    url: format!("sqlite://{}", file.display()),
                    status: 1,
                    errors: 0,
                    failover: crate::store::FAILOVER_RESET,
                    spare: 0,
                    rg: no,
                    leaving: 0,
                })
                .await?;
        }
    }
    tracing::info!(dir = %dir.display(), "created the embedded SQLite layout: 2 groups of 2 members");
    Ok(())
}

fn open_master(settings: &Settings) -> Result<(DbUrl, bool, SqlStore), AppError> {
    let (url, embedded) = match &settings.master_url {
        Some(u) => (u.clone(), false),
        None => (embedded_master_url(&settings.data_dir)?, true),
    };
    let store = SqlStore::open(
        &url,
        &settings.store_options(settings.tables_of(TableMode::Single)),
    )
    .map_err(|source| AppError::Master {
        url: url.redacted(),
        source,
    })?
    .with_locdb_time(settings.cluster.locdb_time);
    Ok((url, embedded, store))
}

/// Applies migrations to the master and every member (spares included);
/// returns one line per database.
pub async fn migrate(settings: &Settings) -> Result<Vec<String>, AppError> {
    let (url, embedded, master) = open_master(settings)?;
    let master_err = |source| AppError::Master {
        url: url.redacted(),
        source,
    };
    let mut report = Vec::new();
    let n = master.migrate(Scope::Master).await.map_err(master_err)?;
    for t in settings.tables_of(TableMode::Single) {
        master.migrate(Scope::Table(&t)).await.map_err(master_err)?;
    }
    report.push(format!(
        "master {}: {n} migration(s) applied",
        url.redacted()
    ));
    if embedded {
        seed_embedded(&master, &settings.data_dir)
            .await
            .map_err(master_err)?;
    }
    let rows = master.load_locdb().await.map_err(master_err)?;
    let mut urls: Vec<String> = rows.iter().map(|r| r.url.clone()).collect();
    urls.sort();
    urls.dedup();
    for raw in urls {
        let Ok(u) = DbUrl::parse(&raw) else {
            report.push(format!(
                "skipped unusable url {}",
                crate::store::redact(&raw)
            ));
            continue;
        };
        let member = SqlStore::open(&u, &settings.store_options(Vec::new())).map_err(|source| {
            AppError::Member {
                url: u.redacted(),
                source,
            }
        })?;
        let mut n = 0;
        for t in settings.cluster_tables() {
            n += member
                .migrate(Scope::Table(&t))
                .await
                .map_err(|source| AppError::Member {
                    url: u.redacted(),
                    source,
                })?;
        }
        member.close().await;
        report.push(format!("member {}: {n} migration(s) applied", u.redacted()));
    }
    master.close().await;
    Ok(report)
}

/// The master store, migrated first when it is the embedded layout or
/// `cluster.auto_migrate` asks for it; and its URL.
async fn open_migrated_master(settings: &Settings) -> Result<(DbUrl, SqlStore), AppError> {
    let (url, embedded, master) = open_master(settings)?;
    if embedded || settings.cluster.auto_migrate {
        for line in migrate(settings).await? {
            tracing::info!("{line}");
        }
    }
    Ok((url, master))
}

/// The subscriber store: its own database when `subscribers_url` is set
/// (true: its pool is ours to close), else the master's `subscriber` table.
fn open_subscribers(
    settings: &Settings,
    master: &SqlStore,
) -> Result<(SubscriberStore, bool), AppError> {
    let timeout = settings.cluster.query_timeout;
    match &settings.subscribers_url {
        Some(u) => SubscriberStore::open(u, &settings.cluster.pool, timeout)
            .map(|s| (s, true))
            .map_err(|source| AppError::Subscribers {
                url: u.redacted(),
                source,
            }),
        None => Ok((SubscriberStore::new(master.pool().clone(), timeout), false)),
    }
}

/// The cross-instance AoR locks: on the master's database when its
/// dialect has session locks.
fn open_aor_locks(
    settings: &Settings,
    url: &DbUrl,
    peers: tokio::sync::watch::Receiver<crate::cluster::Peers>,
    metrics: &Arc<Metrics>,
    tasks: &TaskTracker,
) -> Result<AorLocks, AppError> {
    // The lock's own deadline bounds the wait for a session, not the pool's.
    let pool = crate::store::PoolSettings {
        max_connections: settings.cluster.aor_lock_connections,
        acquire_timeout: Duration::from_secs(60),
        ..settings.cluster.pool.clone()
    };
    let locks =
        crate::store::AdvisoryLocks::open(url, &pool).map_err(|source| AppError::Master {
            url: url.redacted(),
            source,
        })?;
    Ok(AorLocks::new(
        settings.cluster.aor_lock,
        locks,
        peers,
        metrics.clone(),
        settings.cluster.query_timeout,
        tasks.clone(),
    ))
}

/// A listener on `addr`, and the address it got (port 0 picks one).
async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), AppError> {
    let bound = |source| AppError::Bind { addr, source };
    let l = TcpListener::bind(addr).await.map_err(bound)?;
    let local = l.local_addr().map_err(bound)?;
    Ok((l, local))
}

impl App {
    /// Builds an instance with the system clock.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        Self::build_with_clock(settings, clock::system()).await
    }

    /// Builds an instance whose components read time from `clock`.
    pub async fn build_with_clock(settings: Settings, clock: Clock) -> Result<Self, AppError> {
        let (url, master) = open_migrated_master(&settings).await?;
        let metrics = Arc::new(Metrics::new());
        let opts = settings.store_options(settings.cluster_tables());
        let master = Arc::new(master);
        let (subscribers, own_subscriber_pool) = open_subscribers(&settings, &master)?;
        let tasks = TaskTracker::new();
        let marks = Arc::new(Marks::new(
            master.clone(),
            clock.clone(),
            metrics.clone(),
            tasks.clone(),
        ));
        let (mut watcher, topology) = ClusterWatcher::new(
            master.clone(),
            opts,
            settings.cluster.hash,
            marks.clone(),
            metrics.clone(),
            tasks.clone(),
        );
        watcher.reload().await.map_err(|source| AppError::Master {
            url: url.redacted(),
            source,
        })?;
        let (registry, peers) = Registry::register(
            master.clone(),
            settings.cluster.instance_lease,
            metrics.clone(),
        )
        .await
        .map_err(|source| AppError::Master {
            url: url.redacted(),
            source,
        })?;
        // Route by a layout epoch from the first request on: writes made
        // before the first epoch would follow `locdb` as it happened to be,
        // and a group added meanwhile would move subscribers unannounced.
        watcher.heartbeat_into(registry.clone(), settings.grpc.request_timeout);
        watcher
            .coordinate_now()
            .await
            .map_err(|source| AppError::Master {
                url: url.redacted(),
                source,
            })?;
        let cross = open_aor_locks(&settings, &url, peers, &metrics, &tasks)?;
        let failover = Arc::new(Failover::new(
            settings.failover_settings(),
            marks.clone(),
            topology.clone(),
            watcher.reload_handle(),
        ));
        let router = Router::new(
            topology.clone(),
            master,
            settings.tables.clone().into_iter().collect(),
            settings.router_settings(),
            metrics.clone(),
            marks,
            Some(failover.clone()),
        )
        .with_registry(registry.clone());
        let service = Arc::new(
            LocationService::new(
                router.clone(),
                cross,
                settings.registrar.clone(),
                settings.cluster.key_policy,
                clock.clone(),
            )
            .with_lookup_cache(LookupCache::new(
                settings.cluster.lookup_cache,
                settings.cluster.lookup_cache_aors,
            )),
        );
        let cluster_api = ClusterApi::new(
            router.clone(),
            failover.clone(),
            clock.clone(),
            settings.stale_window(),
        )
        .with_groups(
            settings.store_options(settings.cluster_tables()),
            metrics.clone(),
        );
        let census = Census::new(
            router.clone(),
            settings.cluster.census_interval,
            clock.clone(),
            metrics.clone(),
        );
        let sweeper = Sweeper::new(router, settings.expiry.clone(), clock, metrics.clone());
        // Serve only once every other instance knows of this one, so their
        // Saves of an AoR are serialized with ours (docs/layout-changes.md).
        let poll = settings.cluster.poll_interval;
        registry
            .join(
                poll.min(Duration::from_millis(200)),
                (poll * 3).max(JOIN_RECENT),
                settings.grpc.request_timeout,
            )
            .await;
        let (grpc, grpc_addr) = bind(settings.grpc.listen).await?;
        let (metrics_listener, metrics_addr) = match settings.metrics_listen {
            Some(a) => {
                let (l, addr) = bind(a).await?;
                (Some(l), Some(addr))
            }
            None => (None, None),
        };
        Ok(Self {
            settings,
            metrics,
            watcher,
            service,
            sweeper,
            census,
            failover,
            cluster_api,
            subscribers,
            own_subscriber_pool,
            topology,
            registry,
            grpc,
            grpc_addr,
            metrics_listener,
            metrics_addr,
            tasks,
        })
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound metrics address, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The location service (for in-process tests and tools).
    pub fn service(&self) -> Arc<LocationService> {
        self.service.clone()
    }

    /// The expiry sweeper (tests call `sweep_once` with their own clock).
    pub fn sweeper(&self) -> Sweeper {
        self.sweeper.clone()
    }

    /// The metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until `shutdown` resolves, then drains: health goes
    /// NOT_SERVING, the listener stops accepting, in-flight requests get
    /// `SHUTDOWN_GRACE` to finish, then member writes still finishing for
    /// answered requests, then background tasks stop and pools close.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let s = &self.settings;
        let token = CancellationToken::new();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_serving::<LocationServer<LocationApi>>().await;
        reporter
            .set_serving::<SubscribersServer<SubscribersApi>>()
            .await;
        let routes = self.routes(health)?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = with_nodelay(self.grpc);
        let server = tokio::spawn(async move {
            routes
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await
        });
        let watcher = self.watcher;
        let mover = crate::mover::Mover::new(
            self.service.clone(),
            watcher.master().clone(),
            self.registry.clone(),
            s.cluster_tables(),
            s.cluster.mover,
            self.metrics.clone(),
        );
        let hangups = hangup_signal();
        let reload = watcher.reload_handle();
        let mut tasks = vec![
            tokio::spawn(reload_on_hangup(hangups, reload, token.clone())),
            tokio::spawn(watcher.run(s.cluster.poll_interval, token.clone())),
            tokio::spawn(self.sweeper.run(token.clone())),
            tokio::spawn(mover.run(self.topology.clone(), token.clone())),
            tokio::spawn(self.failover.run(self.topology, token.clone())),
        ];
        if !s.cluster.census_interval.is_zero() {
            tasks.push(tokio::spawn(self.census.run(token.clone())));
        }
        if let Some(l) = self.metrics_listener {
            let (m, t) = (self.metrics.clone(), token.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = metrics::serve(l, m, t).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            }));
        }
        tracing::info!(
            grpc = %self.grpc_addr,
            metrics = %metrics::describe(self.metrics_addr),
            tls = s.grpc.tls_cert.is_some(),
            auth = s.grpc.token.is_some(),
            admin_auth = s.grpc.admin_token.is_some(),
            client_certs = s.grpc.tls_client_ca.is_some(),
            "locsvc serving"
        );
        shutdown.await;
        tracing::info!("shutting down: draining requests");
        reporter
            .set_not_serving::<LocationServer<LocationApi>>()
            .await;
        reporter
            .set_not_serving::<SubscribersServer<SubscribersApi>>()
            .await;
        let _ = stop_tx.send(());
        let served = match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
            Ok(Ok(r)) => r.map_err(|e| AppError::Serve(e.to_string())),
            Ok(Err(e)) => Err(AppError::Serve(e.to_string())),
            Err(_) => {
                tracing::warn!("requests still running after the grace period; stopping anyway");
                Ok(())
            }
        };
        // Member writes still finishing keep their AoR locks until they
        // settle, and peers keep taking the lock until this row is gone.
        drain_writes(self.service.router().background()).await;
        self.registry.leave().await;
        stop_background(&token, &self.tasks).await;
        for t in tasks {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, t).await;
        }
        if self.own_subscriber_pool {
            self.subscribers.close().await;
        }
        tracing::info!("locsvc stopped");
        served
    }

    /// Every gRPC service, behind TLS when configured and each behind the
    /// token check of its level.
    fn routes(
        &self,
        health: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
    ) -> Result<tonic::transport::server::Router, AppError> {
        let s = &self.settings;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(locsvc_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| AppError::Serve(e.to_string()))?;
        let api = LocationApi::new(
            self.service.clone(),
            s.grpc.max_in_flight,
            s.grpc.request_timeout,
            self.metrics.clone(),
        );
        let mut builder = Server::builder();
        if let Some(tls) = server_tls(s)? {
            builder = builder
                .tls_config(tls)
                .map_err(|e| AppError::Tls(e.to_string()))?;
        }
        let tokens = Tokens::new(s.grpc.token.as_deref(), s.grpc.admin_token.as_deref());
        let subscribers = SubscribersApi::new(self.subscribers.clone(), tokens.clone());
        Ok(builder
            .add_service(health)
            .add_service(reflection)
            .add_service(LocationServer::with_interceptor(
                api,
                tokens.interceptor(Level::Data),
            ))
            .add_service(ClusterServer::with_interceptor(
                self.cluster_api.clone(),
                tokens.interceptor(Level::Admin),
            ))
            // Checks per call: GetCredentials is data plane, the rest admin.
            .add_service(SubscribersServer::new(subscribers)))
    }
}

/// The server's TLS identity, and the client CA when client certificates
/// are required (mTLS); None without a certificate.
fn server_tls(s: &Settings) -> Result<Option<ServerTlsConfig>, AppError> {
    let (Some(cert), Some(key)) = (&s.grpc.tls_cert, &s.grpc.tls_key) else {
        return Ok(None);
    };
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| AppError::Tls(format!("{}: {e}", p.display())));
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &s.grpc.tls_client_ca {
        // mTLS: the handshake fails without a certificate it signed.
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// The listener's connections with TCP_NODELAY: Nagle's algorithm on the
/// server side delays the second small write of a response (HTTP/2 DATA
/// after HEADERS) until the client's delayed ACK, ~40 ms.
fn with_nodelay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(c) = &conn
                && let Err(e) = c.set_nodelay(true)
            {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            conn
        },
    )
}

/// Waits (up to the grace) for member writes still running for answered
/// requests.
async fn drain_writes(writes: &TaskTracker) {
    writes.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, writes.wait())
        .await
        .is_err()
    {
        tracing::warn!("member writes still running after the grace period");
    }
}

/// Stops the background tasks and waits (up to the grace) for their work.
async fn stop_background(token: &CancellationToken, tasks: &TaskTracker) {
    token.cancel();
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("failover work still running after the grace period; stopping anyway");
    }
}

/// The SIGHUP stream, installed now (before `run` serves): from then on a
/// SIGHUP (`systemctl reload`) no longer ends the process.
#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: locdb is re-read at each poll only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<()> {
    None
}

/// Re-reads `locdb` at once on each SIGHUP instead of at the next poll
/// (an operator who just edited it need not wait); other settings still
/// take a restart.
#[cfg(unix)]
async fn reload_on_hangup(
    hangups: Option<tokio::signal::unix::Signal>,
    reload: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    let Some(mut hup) = hangups else { return };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                tracing::info!("SIGHUP: re-reading locdb now");
                reload.notify_one();
            }
        }
    }
}

#[cfg(not(unix))]
async fn reload_on_hangup(_: Option<()>, _: Arc<tokio::sync::Notify>, _: CancellationToken) {}
