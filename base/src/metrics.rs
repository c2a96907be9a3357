//! Serving an app's Prometheus registry over HTTP (`GET /metrics`) and the
//! guard that keeps an in-flight gauge honest. The registry stays the
//! app's own (no process-global state), so several apps run in one test.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// An app's metrics: whatever owns the registry that `serve` exposes.
pub trait RegistryOwner: Send + Sync + 'static {
    /// The registry every series of the app is registered in.
    fn registry(&self) -> &Registry;
}

impl RegistryOwner for Registry {
    fn registry(&self) -> &Registry {
        self
    }
}

/// Registers the process's own series in `registry`, named
/// `<namespace>_process_*` (CPU seconds, resident and virtual memory, open
/// file descriptors and their limit, threads, start time; read from
/// /proc, Linux only): what the service costs, beside what it does.
pub fn register_process_metrics(registry: &Registry, namespace: &str) {
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::new(
            std::process::id() as i32,
            namespace,
        );
        // Fails only when registered twice in one registry.
        let _ = registry.register(Box::new(collector));
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (registry, namespace);
}

/// The Prometheus text exposition of every series in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    // Encoding into a Vec fails only on a malformed family, which the
    // registry refuses at registration: nothing to report here.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve<M: RegistryOwner>(
    listener: TcpListener,
    metrics: Arc<M>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    render(m.registry()),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// The address a metrics listener bound, for logs.
pub fn describe(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "disabled".to_string(), |a| format!("http://{a}/metrics"))
}

/// Counts one unit in flight on a gauge until dropped, so the gauge comes
/// back down however the work ends (a cancelled future, a panic).
#[derive(Debug)]
#[must_use = "the unit is counted only while the guard lives"]
pub struct InFlight(IntGauge);

impl InFlight {
    /// Increments `gauge`; dropping the guard decrements it.
    pub fn enter(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_in_flight_gauge_follows_its_guards() {
        let g = IntGauge::new("in_flight", "units in flight").unwrap();
        let a = InFlight::enter(&g);
        let b = InFlight::enter(&g);
        assert_eq!(g.get(), 2);
        drop(a);
        assert_eq!(g.get(), 1);
        drop(b);
        assert_eq!(g.get(), 0);
    }

    #[tokio::test]
    async fn the_registry_is_served_at_slash_metrics_until_shutdown() {
        let registry = Registry::new();
        let g = IntGauge::new("answer", "a series").unwrap();
        registry.register(Box::new(g.clone())).unwrap();
        g.set(42);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(describe(Some(addr)), format!("http://{addr}/metrics"));
        assert_eq!(describe(None), "disabled");
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Arc::new(registry), stop.clone()));
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("text/plain; version=0.0.4"), "{reply}");
        assert!(reply.contains("answer 42"), "{reply}");
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
