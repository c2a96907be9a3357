//! Coalescing of concurrent statements bound for one table of one database:
//! REGISTER writes become one transaction of multi-row statements (group
//! commit), AoR reads become one `IN (…)` query, so a round trip (and a log
//! flush) carries many requests. A worker never waits to fill a batch: when
//! it is free it takes whatever is queued, so at low load a batch is one
//! request and adds no latency, and under load batches grow by themselves.
//!
//! A REGISTER stays atomic (its rows are in one transaction), and a batch
//! never holds two REGISTERs of one AoR (the location service holds the
//! AoR's lock until its write is acknowledged).

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, oneshot};

use super::exec::{Change, read_aors, write_changes};
use super::{DbPool, StoreError, TableSql};
use crate::domain::{Aor, Binding};

/// Queued requests per table per database before `submit` waits (and, past
/// the query deadline, fails with `Backlog`).
const QUEUE: usize = 4096;

/// How one kind of request is run together with others of its kind.
pub(super) trait Sink: Clone + Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Out: Send + 'static;
    /// Rows the item adds to a batch.
    fn weight(item: &Self::Item) -> usize;
    /// Runs `items` together: one result per item, in order.
    fn run<'a>(
        &'a self,
        items: &'a [Self::Item],
    ) -> impl Future<Output = Vec<Result<Self::Out, StoreError>>> + Send + 'a;
}

/// Runs items `0..n` with `together` (which gets the range of items to run
/// and returns one output per item); when the database refuses the batch (a
/// bad row, a deadlock) one request must not fail another, so each goes
/// again alone. Transport failures are every item's.
async fn each_or_alone<O, F, Fut>(n: usize, together: F) -> Vec<Result<O, StoreError>>
where
    F: Fn(Range<usize>) -> Fut,
    Fut: Future<Output = Result<Vec<O>, StoreError>>,
{
    match together(0..n).await {
        Ok(out) => out.into_iter().map(Ok).collect(),
        Err(e) if n > 1 && !e.is_transport() => {
            tracing::debug!(error = %e, items = n, "batch refused; running its requests one by one");
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(together(i..i + 1).await.map(|mut v| v.remove(0)));
            }
            out
        }
        Err(e) => (0..n).map(|_| Err(e.clone())).collect(),
    }
}

/// One REGISTER's changes.
pub(super) struct WriteItem {
    aor: Aor,
    upserts: Vec<Binding>,
    deletes: Vec<String>,
}

/// The table of one database that a queue's workers run statements on.
#[derive(Clone)]
pub(super) struct TableOn {
    pub(super) pool: DbPool,
    pub(super) sql: TableSql,
    pub(super) timeout: Duration,
}

/// Group commit of REGISTER writes.
#[derive(Clone)]
pub(super) struct Writes(pub(super) TableOn);

impl Sink for Writes {
    type Item = WriteItem;
    type Out = ();

    fn weight(item: &WriteItem) -> usize {
        (item.upserts.len() + item.deletes.len()).max(1)
    }

    async fn run(&self, items: &[WriteItem]) -> Vec<Result<(), StoreError>> {
        each_or_alone(items.len(), |r: Range<usize>| async move {
            let part = &items[r];
            let changes: Vec<Change<'_>> = part
                .iter()
                .map(|i| Change {
                    aor: &i.aor,
                    upserts: &i.upserts,
                    deletes: &i.deletes,
                })
                .collect();
            let t = &self.0;
            write_changes(&t.pool, &t.sql, t.timeout, &changes)
                .await
                .map(|()| vec![(); part.len()])
        })
        .await
    }
}

/// Coalesced reads of every row of an AoR.
#[derive(Clone)]
pub(super) struct Reads(pub(super) TableOn);

impl Sink for Reads {
    type Item = Aor;
    type Out = Vec<Binding>;

    fn weight(_: &Aor) -> usize {
        1
    }

    async fn run(&self, items: &[Aor]) -> Vec<Result<Vec<Binding>, StoreError>> {
        each_or_alone(items.len(), |r: Range<usize>| {
            read_aors(&self.0.pool, &self.0.sql, self.0.timeout, &items[r])
        })
        .await
    }
}

/// How much coalescing happened: requests per round trip is
/// `requests / batches`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    /// Transactions or queries sent.
    pub batches: u64,
    /// Requests they carried.
    pub requests: u64,
}

#[derive(Debug, Default)]
struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
}

/// Where a queue reports how long its requests waited for a worker and
/// how long their batch's statements ran.
#[derive(Debug, Clone)]
pub(super) struct Timers {
    pub(super) queued: prometheus::Histogram,
    pub(super) statement: prometheus::Histogram,
    pub(super) batch: prometheus::Histogram,
}

/// A request waiting for a worker.
struct Pending<S: Sink> {
    item: S::Item,
    queued_at: std::time::Instant,
    done: oneshot::Sender<Result<S::Out, StoreError>>,
    /// Set when a worker takes the request: past it, a timeout is the
    /// database's; before it, locsvc's own backlog.
    taken: Arc<AtomicBool>,
}

/// The coalescing queue of one kind of request on one table of one database.
pub(super) struct Coalescer<S: Sink> {
    tx: mpsc::Sender<Pending<S>>,
    timeout: Duration,
    counters: Arc<Counters>,
}

impl<S: Sink> std::fmt::Debug for Coalescer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("timeout", &self.timeout)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl<S: Sink> Coalescer<S> {
    /// Starts `workers` workers, each taking at most about `max_rows` rows
    /// at a time. Needs a tokio runtime.
    pub(super) fn start(
        sink: S,
        timeout: Duration,
        workers: usize,
        max_rows: usize,
        timers: Option<Timers>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let counters = Arc::new(Counters::default());
        for _ in 0..workers.max(1) {
            tokio::spawn(work(
                rx.clone(),
                sink.clone(),
                max_rows.max(1),
                counters.clone(),
                timers.clone(),
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
            requests: self.counters.requests.load(Ordering::Relaxed),
        }
    }

    /// Queues `item` and waits for its result. Bounded by the query
    /// deadline, queueing included.
    pub(super) async fn submit(&self, item: S::Item) -> Result<S::Out, StoreError> {
        let (done, result) = oneshot::channel();
        let taken = Arc::new(AtomicBool::new(false));
        let pending = Pending {
            item,
            queued_at: std::time::Instant::now(),
            done,
            taken: taken.clone(),
        };
        let stopped = || StoreError::Unavailable("request queue closed".into());
        let wait = async {
            self.tx.send(pending).await.map_err(|_| stopped())?;
            result.await.map_err(|_| stopped())?
        };
        match tokio::time::timeout(self.timeout, wait).await {
            Ok(r) => r,
            // Dropping `result` tells the worker not to start this request.
            Err(_) if taken.load(Ordering::Acquire) => Err(StoreError::Timeout(self.timeout)),
            Err(_) => Err(StoreError::Backlog(self.timeout)),
        }
    }
}

impl Coalescer<Writes> {
    /// Queues one REGISTER's changes and waits until they are committed.
    pub(super) async fn write(
        &self,
        aor: &Aor,
        upserts: &[Binding],
        deletes: &[String],
    ) -> Result<(), StoreError> {
        self.submit(WriteItem {
            aor: aor.clone(),
            upserts: upserts.to_vec(),
            deletes: deletes.to_vec(),
        })
        .await
    }
}

/// Takes whatever is queued (up to `max_rows`), runs it, answers every
/// waiter; ends when the store is dropped.
async fn work<S: Sink>(
    rx: Arc<Mutex<mpsc::Receiver<Pending<S>>>>,
    sink: S,
    max_rows: usize,
    counters: Arc<Counters>,
    timers: Option<Timers>,
) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            // One turn of the scheduler before draining: the other requests
            // of a burst (a LookupMany's lookups, spread over members in
            // one poll) are being queued by a task on the other thread right
            // now; without it a woken worker takes the first alone. Not a
            // timer: an idle runtime comes straight back.
            tokio::task::yield_now().await;
            let mut rows = S::weight(&first.item);
            batch.push(first);
            while rows < max_rows {
                match rx.try_recv() {
                    Ok(p) => {
                        rows += S::weight(&p.item);
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
        }
        let taken_at = std::time::Instant::now();
        for p in &batch {
            p.taken.store(true, Ordering::Release);
            if let Some(t) = &timers {
                t.queued
                    .observe(taken_at.duration_since(p.queued_at).as_secs_f64());
            }
        }
        // A caller past its deadline was told the request failed: skip it.
        batch.retain(|p| !p.done.is_closed());
        if batch.is_empty() {
            continue;
        }
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let (items, dones): (Vec<S::Item>, Vec<_>) =
            batch.into_iter().map(|p| (p.item, p.done)).unzip();
        if let Some(t) = &timers {
            t.batch.observe(items.len() as f64);
        }
        let ran = std::time::Instant::now();
        let results = sink.run(&items).await;
        if let Some(t) = &timers {
            // Once per request: the distribution callers saw.
            let secs = ran.elapsed().as_secs_f64();
            for _ in 0..items.len() {
                t.statement.observe(secs);
            }
        }
        for (done, r) in dones.into_iter().zip(results) {
            let _ = done.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyPolicy;

    #[tokio::test]
    async fn a_request_no_worker_took_is_locsvc_backlog_not_a_member_failure() {
        // A queue whose workers are all busy elsewhere: nothing is taken.
        let (tx, _rx) = mpsc::channel(QUEUE);
        let c: Coalescer<Writes> = Coalescer {
            tx,
            timeout: Duration::from_millis(20),
            counters: Arc::default(),
        };
        let aor = Aor::parse("sip:a@example.com", KeyPolicy::default()).unwrap();
        let e = c.write(&aor, &[], &["r".into()]).await.unwrap_err();
        assert!(matches!(e, StoreError::Backlog(_)), "{e}");
        assert!(!e.is_transport());
    }

    #[tokio::test]
    async fn a_refused_batch_is_retried_item_by_item() {
        // Item 2 is "refused" whenever it is part of what runs.
        let items = [1, 2, 3];
        let out = each_or_alone(3, |r: Range<usize>| {
            let refused = items[r.clone()].contains(&2);
            let v = items[r].to_vec();
            async move {
                if refused {
                    Err(StoreError::Rejected("2".into()))
                } else {
                    Ok(v)
                }
            }
        })
        .await;
        assert_eq!(out[0].as_ref().unwrap(), &1);
        assert!(out[1].is_err());
        assert_eq!(out[2].as_ref().unwrap(), &3);
        let down = each_or_alone(2, |_: Range<usize>| async {
            Err::<Vec<i32>, _>(StoreError::Unavailable("reset".into()))
        })
        .await;
        assert!(
            down.iter()
                .all(|r| r.as_ref().is_err_and(|e| e.is_transport()))
        );
    }
}
