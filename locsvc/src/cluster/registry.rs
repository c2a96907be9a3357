//! This instance's row in the master's `locsvc_instances`, and what it
//! knows of the others (docs/layout-changes.md): registers at start, waits
//! until every live peer has seen it before serving (so two serving
//! instances always know of each other), heartbeats after every `locdb`
//! reload (the watcher calls it), and leaves on a graceful shutdown.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::store::{InstanceRow, SqlStore, StoreError};

/// The other instances, as of the last read of the registry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Peers {
    /// Other instances heard from within the lease.
    pub live: Vec<InstanceRow>,
}

impl Peers {
    /// True when some other instance may serve the same AoRs.
    pub fn any(&self) -> bool {
        !self.live.is_empty()
    }
}

/// Milliseconds since the Unix epoch, this host's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// This instance in the registry.
pub struct Registry {
    master: Arc<SqlStore>,
    lease: Duration,
    me: Mutex<InstanceRow>,
    peers: watch::Sender<Peers>,
    metrics: Arc<Metrics>,
    /// When the last heartbeat reached the master.
    last_beat: Mutex<tokio::time::Instant>,
}

impl Registry {
    /// Registers this instance (a fresh id) and reads the others.
    pub async fn register(
        master: Arc<SqlStore>,
        lease: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Self>, watch::Receiver<Peers>), StoreError> {
        let started = now_ms();
        let me = InstanceRow {
            id: uuid::Uuid::new_v4().simple().to_string(),
            host: hostname().await,
            started_ms: started,
            seen_ms: started,
            newest_peer_ms: 0,
            epoch: 0,
            phase: 0,
        };
        master.put_instance(&me).await?;
        let (tx, rx) = watch::channel(Peers::default());
        let r = Arc::new(Self {
            master,
            lease,
            me: Mutex::new(me),
            peers: tx,
            metrics,
            last_beat: Mutex::new(tokio::time::Instant::now()),
        });
        r.read().await?;
        Ok((r, rx))
    }

    /// Reports, from the next heartbeat on, that this instance serves
    /// layout `epoch` in `phase` (every request it begins from now on).
    pub fn serve(&self, epoch: i64, phase: i32) {
        let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
        me.epoch = epoch;
        me.phase = phase;
    }

    /// This instance's row as it heartbeats it, and the live peers, as of
    /// the last read: every instance that serves the cluster.
    pub fn everyone(&self) -> Vec<InstanceRow> {
        let mut all = self.peers.borrow().live.clone();
        all.push(self.row());
        all
    }

    /// This instance's id.
    pub fn id(&self) -> String {
        self.row().id
    }

    fn row(&self) -> InstanceRow {
        self.me.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads the registry and publishes the live peers; returns them.
    async fn read(&self) -> Result<Vec<InstanceRow>, StoreError> {
        let me = self.row();
        let now = now_ms();
        let lease = self.lease.as_millis() as i64;
        let rows = self.master.instances().await?;
        let newest = rows.iter().map(|r| r.started_ms).max().unwrap_or(0);
        let live: Vec<InstanceRow> = rows
            .into_iter()
            .filter(|r| r.id != me.id && r.seen_ms > now - lease)
            .collect();
        self.me
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .newest_peer_ms = newest;
        self.metrics.peers_live.set(live.len() as i64);
        self.peers.send_if_modified(|p| {
            let changed = p.live.iter().map(|r| &r.id).ne(live.iter().map(|r| &r.id));
            p.live = live.clone();
            changed
        });
        Ok(live)
    }

    /// Reads the others, then heartbeats with what was read, dated by
    /// `reloaded_ms`: when this instance's last `locdb` reload started.
    /// So a peer whose `seen_ms` is past a time knows everything `locdb`
    /// held at that time, and one whose `newest_peer_ms` covers our start
    /// knows of us.
    pub async fn beat(&self, reloaded_ms: i64) -> Result<(), StoreError> {
        self.read().await?;
        let row = {
            let mut me = self.me.lock().unwrap_or_else(|e| e.into_inner());
            me.seen_ms = reloaded_ms;
            me.clone()
        };
        self.master.put_instance(&row).await?;
        *self.last_beat.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
        Ok(())
    }

    /// How long since the last heartbeat reached the master, once that is
    /// nine tenths of the lease or more: peers treat an instance silent for
    /// the lease as gone and may change the layout without it, so it must
    /// stop routing before then (docs/layout-changes.md, rule L).
    pub fn out_of_touch(&self) -> Option<Duration> {
        let silent = self
            .last_beat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed();
        (silent >= self.lease * 9 / 10).then_some(silent)
    }

    /// Waits until every live peer has reloaded `locdb` since `at_ms`
    /// (reported a heartbeat dated later), re-reading the registry every
    /// `every`, for at most `limit`; false if some peer did not.
    pub async fn peers_reloaded_since(&self, at_ms: i64, every: Duration, limit: Duration) -> bool {
        let give_up = tokio::time::Instant::now() + limit;
        loop {
            if self.peers.borrow().live.iter().all(|p| p.seen_ms > at_ms) {
                return true;
            }
            if tokio::time::Instant::now() >= give_up {
                return false;
            }
            tokio::time::sleep(every).await;
            if let Err(e) = self.read().await {
                tracing::debug!(error = %e, "registry unreadable while waiting for peers");
            }
        }
    }

    /// Waits until every peer heard from within `recent` has seen this
    /// instance (reported a `newest_peer_ms` at or after our start),
    /// re-reading every `every`. A peer silent for longer is presumed dead
    /// (a crashed instance's row stays until its lease runs out, and its
    /// replacement must not wait that long); the wait ends after the lease
    /// in any case. `recent` must exceed any stall a live peer may have.
    ///
    /// Then, if there are peers, waits `settle` more: a Save a peer began
    /// before it knew of us may still run without the AoR lock (its requests
    /// end within their deadline, `settle`).
    pub async fn join(&self, every: Duration, recent: Duration, settle: Duration) {
        let started = self.row().started_ms;
        let give_up = tokio::time::Instant::now() + self.lease;
        let recent = recent.as_millis() as i64;
        loop {
            let unaware: Vec<String> = match self.read().await {
                Ok(live) => {
                    let now = now_ms();
                    live.iter()
                        .filter(|p| p.seen_ms > now - recent && p.newest_peer_ms < started)
                        .map(|p| format!("{} ({})", p.id, p.host))
                        .collect()
                }
                Err(e) => vec![format!("registry unreadable: {e}")],
            };
            if unaware.is_empty() {
                if self.peers.borrow().any() {
                    tokio::time::sleep(settle).await;
                }
                return;
            }
            if tokio::time::Instant::now() >= give_up {
                tracing::warn!(
                    ?unaware,
                    "peers have not seen this instance yet; serving anyway (their \
                     Saves of an AoR this instance also serves are not serialized \
                     with ours until they do)"
                );
                return;
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Removes this instance's row: it serves nothing any more.
    pub async fn leave(&self) {
        if let Err(e) = self.master.remove_instance(&self.id()).await {
            tracing::warn!(error = %e, "cannot remove this instance from locsvc_instances");
        }
    }
}

async fn hostname() -> String {
    let name = match std::env::var("HOSTNAME") {
        Ok(h) => h,
        Err(_) => tokio::fs::read_to_string("/etc/hostname")
            .await
            .unwrap_or_default(),
    };
    match name.trim() {
        "" => "unknown".into(),
        h => h.to_string(),
    }
}
