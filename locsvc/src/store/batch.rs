//! Coalescing of concurrent statements bound for one table of one database:
//! REGISTER writes become one transaction of multi-row statements (group
//! commit), AoR reads become one `IN (…)` query, so a round trip (and a log
//! flush) carries many requests. A worker never waits to fill a batch: when
//! it is free it takes whatever is queued, so at low load a batch is one
//! request and adds no latency, and under load batches grow by themselves.
//! A request that finds its queue wholly idle skips the worker and runs in
//! its caller's task: the same statement, two thread wake-ups fewer.
//!
//! A REGISTER stays atomic (its rows are in one transaction), and a batch
//! never holds two REGISTERs of one AoR (the location service holds the
//! AoR's lock until its write is acknowledged). A write runs inline only
//! in the router's member task, which is never cancelled, so no caller
//! going away cuts a REGISTER between its statements (and a dropped
//! transaction rolls back whole).

use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

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
    /// One permit per batch that may run at once (`workers`), held by a
    /// worker while its batch runs and by a request running inline.
    runners: Arc<Semaphore>,
    workers: usize,
    /// Requests queued and not yet taken into a batch.
    waiting: Arc<AtomicUsize>,
    sink: S,
    timers: Option<Timers>,
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
        let workers = workers.max(1);
        let runners = Arc::new(Semaphore::new(workers));
        let waiting = Arc::new(AtomicUsize::new(0));
        for _ in 0..workers {
            tokio::spawn(work(
                rx.clone(),
                sink.clone(),
                max_rows.max(1),
                counters.clone(),
                Turnstile {
                    runners: runners.clone(),
                    waiting: waiting.clone(),
                },
                timers.clone(),
            ));
        }
        Self {
            tx,
            timeout,
            counters,
            runners,
            workers,
            waiting,
            sink,
            timers,
        }
    }

    /// Coalescing so far.
    pub(super) fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            requests: self.counters.requests.load(Ordering::Relaxed),
        }
    }

    /// Runs `item`: alone in the caller's task when the queue is idle, else
    /// queued for a worker. Bounded by the query deadline, queueing
    /// included.
    pub(super) async fn submit(&self, item: S::Item) -> Result<S::Out, StoreError> {
        // Only on a wholly idle queue: a second request of a burst finds a
        // runner taken and queues.
        if self.waiting.load(Ordering::Acquire) == 0
            && self.runners.available_permits() == self.workers
            && let Ok(permit) = self.runners.try_acquire()
        {
            // One turn, as a worker takes before draining: the other
            // requests of a burst (a LookupMany's lookups, polled together)
            // queue meanwhile, and then all of them go to a worker as one
            // batch, this one included.
            tokio::task::yield_now().await;
            if self.waiting.load(Ordering::Acquire) == 0 {
                return self.run_alone(item, permit).await;
            }
        }
        self.queue(item).await
    }

    /// Runs `item` in this task: at low load the common case, which spares
    /// the request two wake-ups (the worker's, then its own) and their
    /// ≈ 0.1 ms on a busy two-core host. The statement's own timeout
    /// bounds it.
    async fn run_alone(
        &self,
        item: S::Item,
        _permit: tokio::sync::SemaphorePermit<'_>,
    ) -> Result<S::Out, StoreError> {
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = &self.timers {
            t.queued.observe(0.0);
            t.batch.observe(1.0);
        }
        let ran = std::time::Instant::now();
        let out = self.sink.run(std::slice::from_ref(&item)).await;
        if let Some(t) = &self.timers {
            t.statement.observe(ran.elapsed().as_secs_f64());
        }
        out.into_iter()
            .next()
            .unwrap_or_else(|| Err(StoreError::Unavailable("no result for the request".into())))
    }

    /// Queues `item` for a worker and waits for its result.
    async fn queue(&self, item: S::Item) -> Result<S::Out, StoreError> {
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
            let slot = self.tx.reserve().await.map_err(|_| stopped())?;
            // Counted and sent with no await between: a caller cancelled
            // while it waits for room is never counted.
            self.waiting.fetch_add(1, Ordering::AcqRel);
            slot.send(pending);
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

/// What a worker shares with the requests that may run inline.
struct Turnstile {
    runners: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// Takes whatever is queued (up to `max_rows`), runs it, answers every
/// waiter; ends when the store is dropped.
async fn work<S: Sink>(
    rx: Arc<Mutex<mpsc::Receiver<Pending<S>>>>,
    sink: S,
    max_rows: usize,
    counters: Arc<Counters>,
    gate: Turnstile,
    timers: Option<Timers>,
) {
    loop {
        let mut batch = Vec::new();
        let _permit;
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            // Requests running inline count against `workers` too; what
            // queues while this waits joins the batch.
            let Ok(permit) = gate.runners.clone().acquire_owned().await else {
                return;
            };
            _permit = permit;
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
            gate.waiting.fetch_sub(batch.len(), Ordering::AcqRel);
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

    /// Answers each item with itself and records every batch's size.
    #[derive(Clone, Default)]
    struct Echo(Arc<std::sync::Mutex<Vec<usize>>>);

    impl Sink for Echo {
        type Item = u32;
        type Out = u32;
        fn weight(_: &u32) -> usize {
            1
        }
        async fn run(&self, items: &[u32]) -> Vec<Result<u32, StoreError>> {
            self.0.lock().unwrap().push(items.len());
            items.iter().map(|&i| Ok(i)).collect()
        }
    }

    impl Echo {
        fn batches(&self) -> Vec<usize> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A coalescer whose one worker never runs (busy elsewhere): its queue
    /// is never taken. Returns the receiver, which must stay alive.
    fn without_worker<S: Sink>(sink: S) -> (Coalescer<S>, mpsc::Receiver<Pending<S>>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let c = Coalescer {
            tx,
            timeout: Duration::from_millis(20),
            counters: Arc::default(),
            runners: Arc::new(Semaphore::new(1)),
            workers: 1,
            waiting: Arc::default(),
            sink,
            timers: None,
        };
        (c, rx)
    }

    #[tokio::test]
    async fn a_request_no_worker_took_is_locsvc_backlog_not_a_member_failure() {
        let (c, _rx) = without_worker(Echo::default());
        // A batch is running: the request cannot run inline and queues.
        let _running = c.runners.try_acquire().unwrap();
        let e = c.submit(1).await.unwrap_err();
        assert!(matches!(e, StoreError::Backlog(_)), "{e}");
        assert!(!e.is_transport());
    }

    #[tokio::test]
    async fn a_lone_request_on_an_idle_queue_runs_in_its_callers_task() {
        // No worker ever runs: only an inline run can answer.
        let sink = Echo::default();
        let (c, _rx) = without_worker(sink.clone());
        assert_eq!(c.submit(7).await.unwrap(), 7);
        assert_eq!(c.submit(8).await.unwrap(), 8);
        assert_eq!(sink.batches(), [1, 1]);
        assert_eq!(
            c.stats(),
            BatchStats {
                batches: 2,
                requests: 2
            }
        );
    }

    #[tokio::test]
    async fn a_burst_polled_together_rides_in_one_batch_not_one_inline_run_each() {
        let sink = Echo::default();
        let c = Coalescer::start(sink.clone(), Duration::from_secs(5), 2, 64, None);
        let (a, b, d) = tokio::join!(c.submit(1), c.submit(2), c.submit(3));
        assert_eq!((a.unwrap(), b.unwrap(), d.unwrap()), (1, 2, 3));
        assert_eq!(sink.batches(), [3]);
        // Alone again: inline, while the workers stay free.
        assert_eq!(c.submit(4).await.unwrap(), 4);
        assert_eq!(sink.batches(), [3, 1]);
        assert_eq!(c.waiting.load(Ordering::Acquire), 0);
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
