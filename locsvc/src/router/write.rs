//! Writes: every writable member at once, each in a task of its own; the
//! caller is answered once one member confirmed and the others had the
//! grace to follow, and the missed-write bookkeeping completes as answers
//! come.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use futures::future::BoxFuture;

use super::{Hold, RouteError, Router, SINGLE_GROUP, Target, WriteOp, member_span};
use crate::cluster::Member;
use crate::store::{LocationStore, StoreError};

/// A write again, on one member, its result dropped.
type RepairOp =
    Arc<dyn Fn(Arc<dyn LocationStore>) -> BoxFuture<'static, Result<(), StoreError>> + Send + Sync>;

/// What a member that missed a held write needs to catch up on it.
struct Repair {
    op: RepairOp,
    hold: Hold,
}

/// Pause between retries of a held write on a member that missed it.
const REPAIR_PAUSE: Duration = Duration::from_millis(20);

/// Beyond a poll interval, how long a recorded miss is waited out (the
/// other instances' polls are not synchronized with ours).
const POLL_MARGIN: Duration = Duration::from_millis(500);

impl Router {
    /// Runs `op` on every writable member of `target` at once and answers
    /// with the results of the members that confirmed, as soon as one did
    /// and the others had `ack_grace` to follow, or by `deadline`. `key`
    /// (see `write_key`) names the AoR, for write order and read-your-writes.
    /// The members that have not answered yet finish in the background.
    /// `hold` is kept until every member took the write, or a member that
    /// missed it was retried in vain, recorded in `locdb`, and one poll
    /// interval passed (so every instance knows before `hold` goes).
    pub async fn write<T: Send + 'static>(
        &self,
        target: &Target,
        key: u64,
        op: WriteOp<T>,
        deadline: Instant,
        hold: Option<Hold>,
    ) -> Result<Vec<T>, RouteError> {
        let group = match target {
            Target::Single(master) => {
                return match timeout_at(deadline, op(master.clone())).await {
                    Ok(r) => r.map(|t| vec![t]).map_err(|error| RouteError::AllFailed {
                        group: SINGLE_GROUP,
                        error,
                    }),
                    Err(_) => Err(RouteError::Deadline {
                        group: SINGLE_GROUP,
                    }),
                };
            }
            Target::Group(g) => g,
        };
        let writable: Vec<Arc<Member>> = group
            .members
            .iter()
            .filter(|m| m.writable())
            .cloned()
            .collect();
        if writable.is_empty() {
            return Err(RouteError::NoWritableMember { group: group.id });
        }
        tracing::Span::current().record("group", group.id);
        let sent = self.dispatch(&writable, key, &op, hold);
        let mut rx = sent.results;
        let mut answered = vec![false; writable.len()];
        let (mut oks, mut errors) = (Vec::new(), Vec::new());
        let mut until = deadline;
        while let Ok(Some((i, r))) = timeout_at(until, rx.recv()).await {
            answered[i] = true;
            match r {
                Ok(t) => {
                    if oks.is_empty() {
                        until = deadline.min(Instant::now() + self.settings.ack_grace);
                    }
                    oks.push(t);
                }
                Err(e) => errors.push(e),
            }
        }
        if !oks.is_empty() {
            for (i, m) in writable.iter().enumerate() {
                if sent.running[i] && !answered[i] && m.health.unconfirmed.mark_behind(key) {
                    self.metrics
                        .writes_acked_before_member
                        .with_label_values(&[&m.config.group.to_string(), &m.config.no.to_string()])
                        .inc();
                }
            }
            return Ok(oks);
        }
        if sent.running.iter().zip(&answered).all(|(r, a)| !r || *a) {
            // Nothing was acknowledged, so no member is behind another.
            let error = errors
                .into_iter()
                .max_by_key(|e| e.is_transport())
                .unwrap_or_else(|| {
                    StoreError::Unavailable("no member could be sent the write".into())
                });
            return Err(RouteError::AllFailed {
                group: group.id,
                error,
            });
        }
        Err(RouteError::Deadline { group: group.id })
    }

    /// Starts `op` on each of `members` in a task of its own (skipping those
    /// whose circuit is open while another's is closed: they miss the
    /// write), and settles the missed-write bookkeeping as answers come.
    fn dispatch<T: Send + 'static>(
        &self,
        members: &[Arc<Member>],
        key: u64,
        op: &WriteOp<T>,
        hold: Option<Hold>,
    ) -> Dispatched<T> {
        // Never skip every member: with all circuits open, all are tried.
        let skip_open = members.iter().any(|m| !m.health.circuit.is_open());
        let repair = hold.map(|hold| {
            let op = op.clone();
            let again: RepairOp = Arc::new(move |s: Arc<dyn LocationStore>| {
                let f = op(s);
                Box::pin(async move { f.await.map(|_| ()) })
            });
            Repair { op: again, hold }
        });
        let outcome = Arc::new(Outcome::new(members.len(), repair));
        let (tx, results) = mpsc::unbounded_channel();
        let mut running = vec![false; members.len()];
        for (i, m) in members.iter().enumerate() {
            if skip_open && m.health.circuit.is_open() {
                self.metrics
                    .circuit_skips
                    .with_label_values(&[&m.config.group.to_string(), &m.config.no.to_string()])
                    .inc();
                outcome.settle(self, m, false);
                continue;
            }
            // Enqueued here, in dispatch order: that order is the member's.
            let Some((ticket, earlier)) = m.health.unconfirmed.enqueue(key) else {
                tracing::debug!(member = %m.label(), "too many unfinished writes of one AoR: skipped");
                outcome.settle(self, m, false);
                continue;
            };
            running[i] = true;
            let write = op(m.store.clone());
            let (this, m, outcome, tx) = (self.clone(), m.clone(), outcome.clone(), tx.clone());
            let span = member_span(&m, "write");
            self.background.spawn(
                async move {
                    if let Some(earlier) = earlier {
                        earlier.await;
                    }
                    let r = write.await;
                    // Marks come before the ticket ends: a failed member never
                    // looks complete in between.
                    let partner_took_it = outcome.settle(&this, &m, r.is_ok());
                    if let Err(e) = &r {
                        this.record_error(&m, e, "write", partner_took_it);
                    }
                    m.health.unconfirmed.finish(ticket);
                    let _ = tx.send((i, r));
                }
                .instrument(span),
            );
        }
        Dispatched { running, results }
    }
}

impl Router {
    /// `m` missed a held write: retries it while `m` can take writes, for
    /// `repair_window`; if it never does, records the miss in `locdb` and
    /// waits a poll interval, so no instance reads `m` for that AoR before
    /// `hold` (the AoR's lock) goes.
    async fn repair(self, m: Arc<Member>, op: RepairOp, hold: Hold) {
        let until = Instant::now() + self.settings.repair_window;
        while Instant::now() < until && m.writable() && !m.health.circuit.is_open() {
            tokio::time::sleep(REPAIR_PAUSE).await;
            if timeout_at(until, op(m.store.clone()))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                drop(hold);
                return;
            }
        }
        self.marks.record_now(&m).await;
        tokio::time::sleep(self.settings.poll_interval + POLL_MARGIN).await;
        drop(hold);
    }
}

/// The members a write was started on, and where their answers arrive.
struct Dispatched<T> {
    /// Per member: whether the write was sent (false: skipped, circuit open).
    running: Vec<bool>,
    results: mpsc::UnboundedReceiver<(usize, Result<T, StoreError>)>,
}

/// What the members of one write answered so far: a member that failed is
/// marked as having missed the write as soon as a partner is known to have
/// taken it (when every member fails, nobody is behind anybody), and, when
/// the write is held, repaired.
struct Outcome {
    state: Mutex<OutcomeState>,
    repair: Option<Repair>,
}

struct OutcomeState {
    succeeded: bool,
    /// Failed before any success: marked when one arrives.
    failed: Vec<Arc<Member>>,
    /// Members yet to answer, and when the first confirmed, for the
    /// confirmation-spread histogram.
    left: usize,
    first_ok: Option<Instant>,
    all_ok: bool,
    pair: bool,
}

impl Outcome {
    fn new(members: usize, repair: Option<Repair>) -> Self {
        Self {
            repair,
            state: Mutex::new(OutcomeState {
                succeeded: false,
                failed: Vec::new(),
                left: members,
                first_ok: None,
                all_ok: true,
                pair: members > 1,
            }),
        }
    }

    /// Records `m`'s answer; true when some member of the write succeeded.
    fn settle(&self, router: &Router, m: &Arc<Member>, ok: bool) -> bool {
        let (behind, spread, succeeded) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            s.left = s.left.saturating_sub(1);
            s.all_ok &= ok;
            let behind = if ok {
                s.succeeded = true;
                s.first_ok.get_or_insert_with(Instant::now);
                std::mem::take(&mut s.failed)
            } else if s.succeeded {
                vec![m.clone()]
            } else {
                s.failed.push(m.clone());
                Vec::new()
            };
            let spread = (s.left == 0 && s.all_ok && s.pair)
                .then(|| s.first_ok.map(|t| t.elapsed()))
                .flatten();
            (behind, spread, s.succeeded)
        };
        for m in &behind {
            router.marks.missed_write(m);
            if let Some(r) = &self.repair {
                let repair = router
                    .clone()
                    .repair(m.clone(), r.op.clone(), r.hold.clone());
                router.background.spawn(repair);
            }
        }
        if let Some(d) = spread {
            router.metrics.write_confirm_spread.observe(d.as_secs_f64());
        }
        succeeded
    }
}
