//! Builds and runs a shim: binds UDP and TCP on the same address (port 0
//! allowed: TCP takes the port UDP got), connects lazily to locsvc, and
//! serves until a shutdown future resolves. `main` stays thin and tests run
//! the real app in-process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::Core;
use crate::locsvc_client::{ClientError, LocsvcClient};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::transport::{self, Outbox};

/// How long in-flight requests may run after shutdown starts (a few T1s).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the app could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A built, not yet running, shim.
pub struct App {
    core: Arc<Core>,
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
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
    pub async fn build(settings: Settings) -> Result<Self, AppError> {
        let client = LocsvcClient::new(
            &settings.locsvc,
            settings.locsvc_timeout,
            settings.locsvc_token.clone(),
            settings.table.clone(),
        )?;
        let (udp, tcp) = bind_pair(settings.listen).await?;
        let local = udp.local_addr().map_err(|source| AppError::Bind {
            addr: settings.listen,
            source,
        })?;
        let core = Arc::new(Core {
            settings,
            client,
            metrics: Arc::new(Metrics::new()),
            local,
        });
        Ok(Self {
            core,
            udp: Arc::new(udp),
            tcp,
        })
    }

    /// The bound address (UDP and TCP share it).
    pub fn local_addr(&self) -> SocketAddr {
        self.core.local
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.core.metrics.clone()
    }

    /// Serves until `shutdown` resolves, then stops receiving and gives
    /// in-flight requests `SHUTDOWN_GRACE` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let limit = Arc::new(Semaphore::new(self.core.settings.max_in_flight));
        let outbox = Outbox::new(self.udp.clone());
        tracing::info!(
            listen = %self.core.local,
            locsvc = ?self.core.settings.locsvc,
            mode = ?self.core.settings.mode,
            domains = ?self.core.settings.domains,
            "proxy-shim serving (udp+tcp)"
        );
        let udp = tokio::spawn(transport::serve_udp(
            self.udp.clone(),
            self.core.clone(),
            outbox.clone(),
            limit.clone(),
            tasks.clone(),
            stop.clone(),
        ));
        let tcp = tokio::spawn(transport::serve_tcp(
            self.tcp,
            self.core.clone(),
            outbox,
            limit,
            tasks.clone(),
            stop.clone(),
        ));
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
        tracing::info!("proxy-shim stopped");
    }
}
