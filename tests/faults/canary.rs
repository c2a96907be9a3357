//! Second-fault detectors for the through-the-shim tests. Those tests fault
//! one server and require zero failures; a stall of something else (the
//! surviving server, or the test process's runtime that also runs locsvc
//! and the shim) is a second fault, and a failure report must say whether
//! one happened. Two probes run beside the load: a one-row UPDATE on the
//! surviving server from a thread and runtime of its own (so a stalled test
//! runtime cannot make the server look slow), and a 10 ms tick on the test
//! runtime whose lateness is that runtime's stall.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::harness::{Backend, fresh_db};
use super::through_shim::now_ms;

/// (wall-clock ms when it started, how long it took in ms).
type Samples = Vec<(f64, f64)>;

/// Both probes, running until [`Canaries::finish`].
pub struct Canaries {
    stop: Arc<AtomicBool>,
    server: std::thread::JoinHandle<Samples>,
    runtime: tokio::task::JoinHandle<Samples>,
}

/// What the probes measured.
pub struct Report {
    server: Samples,
    runtime: Samples,
}

impl Canaries {
    /// Starts both probes; the server one writes to a fresh database on
    /// `server`.
    pub async fn start(server: Backend, dir: &std::path::Path) -> Self {
        let url = fresh_db(server, dir).await;
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(server_probe(url, stop))
            })
        };
        let runtime = tokio::spawn(runtime_probe(stop.clone()));
        Self {
            stop,
            server,
            runtime,
        }
    }

    /// Stops both probes and returns what they saw.
    pub async fn finish(self) -> Report {
        self.stop.store(true, Ordering::Relaxed);
        let runtime = self.runtime.await.unwrap();
        let server = tokio::task::spawn_blocking(move || self.server.join().unwrap())
            .await
            .unwrap();
        Report { server, runtime }
    }
}

async fn server_probe(url: String, stop: Arc<AtomicBool>) -> Samples {
    use sqlx::{Connection, Executor};
    let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
    c.execute("CREATE TABLE canary (id INT PRIMARY KEY, n BIGINT NOT NULL)")
        .await
        .unwrap();
    c.execute("INSERT INTO canary VALUES (1, 0)").await.unwrap();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let (at, started) = (now_ms(), Instant::now());
        let update = c.execute("UPDATE canary SET n = n + 1 WHERE id = 1");
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), update).await,
            Ok(Ok(_))
        );
        samples.push((at, started.elapsed().as_secs_f64() * 1000.0));
        if !ok {
            // A reply may still be owed on this connection: start afresh.
            match sqlx::MySqlConnection::connect(&url).await {
                Ok(fresh) => c = fresh,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    samples
}

async fn runtime_probe(stop: Arc<AtomicBool>) -> Samples {
    const TICK: Duration = Duration::from_millis(10);
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let (at, started) = (now_ms(), Instant::now());
        tokio::time::sleep(TICK).await;
        let late = started.elapsed().saturating_sub(TICK);
        samples.push((at, late.as_secs_f64() * 1000.0));
    }
    samples
}

impl Report {
    /// The worst of each probe between `from` and `to` (wall-clock ms),
    /// with when it happened relative to `origin`.
    pub fn summary(&self, from: f64, to: f64, origin: f64) -> String {
        let worst = |s: &Samples| {
            s.iter()
                .filter(|(at, _)| (from..=to).contains(at))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map_or("no samples".to_string(), |(at, ms)| {
                    format!("{ms:.0} ms at {:+.2} s", (at - origin) / 1000.0)
                })
        };
        format!(
            "surviving server's slowest one-row UPDATE: {}; test runtime's longest stall: {}",
            worst(&self.server),
            worst(&self.runtime)
        )
    }
}
