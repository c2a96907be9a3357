//! Builds and runs a shim: binds UDP and TCP on the same address (port 0
//! allowed: TCP takes the port UDP got) and the metrics HTTP listener,
//! connects lazily to locsvc, and serves until a shutdown future resolves. `main` stays thin and tests run
//! the real app in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::limits::Limits;
use crate::locsvc_client::{ClientError, LocsvcClient, TlsClient, TlsFileError};
use crate::metrics::{self, Metrics};
use crate::settings::Settings;
use crate::state::Core;
use crate::transport::{self, Dispatcher, Outbox};

/// How long in-flight requests may run after shutdown starts (a few T1s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The locsvc client could not be built from the settings.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// A `locsvc_ca`/`locsvc_cert`/`locsvc_key` file (named with its path).
    #[error(transparent)]
    TlsFile(#[from] TlsFileError),
    /// The settings break a rule across settings; the text says which.
    #[error("invalid configuration: {0}")]
    Settings(String),
}

/// A built, not yet running, shim.
pub struct App {
    core: Arc<Core>,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    metrics_listener: Option<TcpListener>,
    metrics_addr: Option<SocketAddr>,
}

async fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), AppError> {
    let err = |source| AppError::Bind { addr, source };
    // With port 0 the UDP port may be taken on TCP by someone else: retry a
    // few fresh ports rather than fail a test run by chance.
    let mut last = None;
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await.map_err(err)?;
        let local = udp.local_addr().map_err(err)?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if addr.port() == 0 => last = Some(e),
            Err(e) => return Err(err(e)),
        }
    }
    Err(err(
        last.unwrap_or_else(|| std::io::Error::other("no free port"))
    ))
}

impl App {
    /// Checks `settings`, builds the locsvc client and binds every listener.
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        settings.check().map_err(AppError::Settings)?;
        let client = LocsvcClient::with_tls(
            &settings.locsvc,
            settings.locsvc_timeout,
            settings.locsvc_token.clone(),
            settings.table.clone(),
            TlsClient::load(&settings)?,
        )?
        .with_batching(settings.lookup_batching);
        let (udp, tcp) = bind_pair(settings.listen).await?;
        let local = udp.local_addr().map_err(|source| AppError::Bind {
            addr: settings.listen,
            source,
        })?;
        let metrics_listener = match settings.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::Bind { addr, source })?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        if local.ip().is_unspecified() && settings.advertise.is_none() {
            tracing::warn!(
                %local,
                "listening on an unspecified address without `advertise`: our Via will name {local}, which peers cannot reach"
            );
        }
        let core = Arc::new(Core::new(settings, client, Arc::new(Metrics::new()), local));
        Ok(Self {
            core,
            udp: Arc::new(udp),
            tcp,
            metrics_listener,
            metrics_addr,
        })
    }

    /// The bound address (UDP and TCP share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.core.identity.local
    }

    /// The host and port our Via names (`advertise`, else the bound address).
    pub fn advertised(&self) -> (String, u16) {
        self.core.identity.advertised.clone()
    }

    /// The shim's metrics registry.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.core.metrics.clone()
    }

    /// The bound metrics HTTP address (`GET /metrics`), if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Serves until `shutdown` resolves, then stops receiving and gives
    /// in-flight requests `SHUTDOWN_GRACE` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let dispatcher = Dispatcher {
            core: self.core.clone(),
            outbox: Outbox::new(self.udp.clone()),
            in_flight: Arc::new(Semaphore::new(self.core.settings.max_in_flight)),
            order: Arc::default(),
            limits: Arc::new(Limits::new(&self.core.settings, self.core.metrics.clone())),
            tasks: tasks.clone(),
            stop: stop.clone(),
        };
        // Stopped last, so the drain itself can be watched.
        let metrics_stop = CancellationToken::new();
        let metrics_task = self.metrics_listener.map(|l| {
            let (m, t) = (self.core.metrics.clone(), metrics_stop.clone());
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(l, m, t).await {
                    tracing::error!(error = %e, "metrics listener failed");
                }
            })
        });
        let identity = &self.core.identity;
        tracing::info!(
            listen = %identity.local,
            advertise = %format!("{}:{}", identity.advertised.0, identity.advertised.1),
            metrics = %metrics::describe(self.metrics_addr),
            locsvc = ?self.core.settings.locsvc,
            locsvc_tls = self.core.settings.locsvc_tls(),
            mode = ?self.core.settings.mode,
            domains = ?self.core.settings.domains,
            "proxy-shim serving (udp+tcp)"
        );
        let udp = tokio::spawn(transport::serve_udp(self.udp.clone(), dispatcher.clone()));
        let tcp = tokio::spawn(transport::serve_tcp(self.tcp, dispatcher));
        shutdown.await;
        tracing::info!("shutting down: draining requests");
        stop.cancel();
        let _ = udp.await;
        let _ = tcp.await;
        tasks.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("requests still running after the grace period; stopping anyway");
        }
        metrics_stop.cancel();
        if let Some(t) = metrics_task {
            let _ = t.await;
        }
        tracing::info!("proxy-shim stopped");
    }
}
