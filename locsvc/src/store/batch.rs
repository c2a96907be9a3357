//! Group commit: concurrent REGISTERs bound for one table of one database
//! are coalesced into one transaction of multi-row statements, so a round
//! trip (and a log flush) carries many of them. A writer never waits to
//! fill a batch: when it is free it takes whatever is queued, so at low load
//! a batch is one REGISTER and adds no latency, and under load batches grow
//! by themselves.
//!
//! Each REGISTER stays atomic (its rows are in one transaction), and a batch
//! never holds two changes of one AoR (the location service holds the AoR's
//! lock until its write is acknowledged).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::{Change, DbPool, StoreError, TableSql, write_changes};
use crate::domain::{Aor, Binding};

/// Queued REGISTERs per table per database before `submit` waits (and, past
/// the query deadline, fails with a timeout).
const QUEUE: usize = 4096;

/// One REGISTER's changes, waiting for a writer.
struct Job {
    aor: Aor,
    upserts: Vec<Binding>,
    deletes: Vec<String>,
    done: oneshot::Sender<Result<(), StoreError>>,
    /// Set when a writer takes the job: past it, a timeout is the
    /// database's; before it, locsvc's own backlog.
    taken: Arc<AtomicBool>,
}

impl Job {
    fn rows(&self) -> usize {
        (self.upserts.len() + self.deletes.len()).max(1)
    }

    fn change(&self) -> Change<'_> {
        Change {
            aor: &self.aor,
            upserts: &self.upserts,
            deletes: &self.deletes,
        }
    }
}

/// What writers write to.
#[derive(Clone)]
struct Sink {
    pool: DbPool,
    sql: TableSql,
    timeout: Duration,
}

impl Sink {
    async fn write(&self, jobs: &[Job]) -> Result<(), StoreError> {
        let changes: Vec<Change<'_>> = jobs.iter().map(Job::change).collect();
        write_changes(&self.pool, &self.sql, self.timeout, &changes).await
    }
}

/// How much coalescing happened: REGISTERs committed per transaction is
/// `jobs / batches`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Transactions (or single statements) committed.
    pub batches: u64,
    /// REGISTERs they carried.
    pub jobs: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    jobs: AtomicU64,
}

/// The group-commit queue of one table on one database.
#[derive(Debug)]
pub(super) struct Batcher {
    tx: mpsc::Sender<Job>,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl Batcher {
    /// Starts `writers` writers, each committing at most about `max_rows`
    /// rows at a time. Needs a tokio runtime.
    pub(super) fn start(
        pool: DbPool,
        sql: TableSql,
        timeout: Duration,
        writers: usize,
        max_rows: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let sink = Sink { pool, sql, timeout };
        let counters = Arc::new(Counters::default());
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(
                rx.clone(),
                sink.clone(),
                max_rows.max(1),
                counters.clone(),
            ));
        }
        Self {
            tx,
            timeout,
            counters,
        }
    }

    /// Coalescing so far.
    pub(super) fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            jobs: self.counters.jobs.load(Ordering::Relaxed),
        }
    }

    /// Queues one REGISTER's changes and waits until they are committed.
    /// Bounded by the query deadline, queueing included.
    pub(super) async fn submit(
        &self,
        aor: &Aor,
        upserts: &[Binding],
        deletes: &[String],
    ) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let job = Job {
            aor: aor.clone(),
            upserts: upserts.to_vec(),
            deletes: deletes.to_vec(),
            done,
            taken: taken.clone(),
        };
        let stopped = || StoreError::Unavailable("write queue closed".into());
        let wait = async {
            self.tx.send(job).await.map_err(|_| stopped())?;
            result.await.map_err(|_| stopped())?
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(r) => r,
            // Dropping `result` tells the writer not to start this job.
            Err(_) if taken.load(Ordering::Acquire) => Err(StoreError::Timeout(self.timeout)),
            Err(_) => Err(StoreError::Backlog(self.timeout)),
        }
    }
}

/// Takes whatever is queued (up to `max_rows`), commits it, answers every
/// waiter; ends when the store is dropped.
async fn writer(
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    sink: Sink,
    max_rows: usize,
    counters: Arc<Counters>,
) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut rows = first.rows();
            jobs.push(first);
            while rows < max_rows {
                match rx.try_recv() {
                    Ok(j) => {
                        rows += j.rows();
                        jobs.push(j);
                    }
                    Err(_) => break,
                }
            }
        }
        for j in &jobs {
            j.taken.store(true, Ordering::Release);
        }
        // A caller past its deadline was told the write failed: skip it.
        jobs.retain(|j| !j.done.is_closed());
        if jobs.is_empty() {
            continue;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .jobs
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        match sink.write(&jobs).await {
            Ok(()) => {
                for j in jobs {
                    let _ = j.done.send(Ok(()));
                }
            }
            // The database refused the batch (a bad row, a deadlock): one
            // REGISTER must not fail another, so each goes again alone.
            Err(e) if jobs.len() > 1 && !e.is_transport() => {
                tracing::debug!(error = %e, jobs = jobs.len(), "batch refused; writing its REGISTERs one by one");
                for j in jobs {
                    let r = sink.write(std::slice::from_ref(&j)).await;
                    let _ = j.done.send(r);
                }
            }
            Err(e) => {
                for j in jobs {
                    let _ = j.done.send(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyPolicy;

    #[tokio::test]
    async fn a_write_no_writer_took_is_locsvc_backlog_not_a_member_failure() {
        // A queue whose writers are all busy elsewhere: nothing is taken.
        let (tx, _rx) = mpsc::channel(QUEUE);
        let b = Batcher {
            tx,
            timeout: Duration::from_millis(20),
            counters: Arc::default(),
        };
        let aor = Aor::parse("sip:a@example.com", KeyPolicy::default()).unwrap();
        let e = b.submit(&aor, &[], &["r".into()]).await.unwrap_err();
        assert!(matches!(e, StoreError::Backlog(_)), "{e}");
        assert!(!e.is_transport());
    }
}
