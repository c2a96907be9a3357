//! Writes: every writable member at once, each in a task of its own; the
//! caller is answered once one member confirmed and the others had the
//! grace to follow, and the missed-write bookkeeping completes as answers
//! come.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use super::{Hold, RouteError, Router, SINGLE_GROUP, Target, WriteOp, member_span};
use crate::cluster::Member;
use crate::store::StoreError;

/// How often the registry is re-read while a held write waits for peers.
const PEER_POLL: Duration = Duration::from_millis(100);

impl Router {
    /// Runs `op` on every writable member of `target` at once and answers
    /// with the results of the members that confirmed, as soon as one did
    /// and the others had `ack_grace` to follow, or by `deadline`. `key`
    /// (see `write_key`) names the AoR, for write order and read-your-writes.
    /// The members that have not answered yet finish in the background.
    /// `hold` is kept until every member took the write, or, for a member
    /// that missed it, until the miss is in `locdb` and every other instance
    /// has reloaded `locdb` since (`announce_miss`).
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

    /// Starts `op` on each of `members` (skipping those whose circuit is
    /// open while another's is closed: they miss the write), all in one
    /// task of their own, and settles the missed-write bookkeeping as answers
    /// come. One task, not one per member: a second task queued behind the
    /// first makes the runtime wake another worker thread to steal it, a
    /// context switch each way for a write that waits on the network anyway
    /// (each member's write is still polled on its own, so a hung member
    /// delays no other).
    fn dispatch<T: Send + 'static>(
        &self,
        members: &[Arc<Member>],
        key: u64,
        op: &WriteOp<T>,
        hold: Option<Hold>,
    ) -> Dispatched<T> {
        // Never skip every member: with all circuits open, all are tried.
        let skip_open = members.iter().any(|m| !m.health.circuit.is_open());
        let outcome = Arc::new(Outcome::new(members.len(), hold));
        let (tx, results) = mpsc::unbounded_channel();
        let mut running = vec![false; members.len()];
        let mut writes = Vec::with_capacity(members.len());
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
            writes.push(
                async move {
                    if let Some(earlier) = earlier {
                        earlier.await;
                    }
                    let started = std::time::Instant::now();
                    let r = write.await;
                    m.timers.write.observe(started.elapsed().as_secs_f64());
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
        if !writes.is_empty() {
            self.background.spawn(async move {
                futures::future::join_all(writes).await;
            });
        }
        Dispatched { running, results }
    }
}

impl Router {
    /// `m` missed a held write: keeps `hold` (the AoR's lock) until the
    /// miss is in `locdb` and every other instance has reloaded `locdb`
    /// since, so none reads `m` for that AoR once it can take the lock.
    /// After the first miss of a member this is immediate: its mark is
    /// committed and known everywhere already (until a resync clears it).
    async fn announce_miss(self, m: Arc<Member>, hold: Hold) {
        let Some(registry) = self.registry.clone() else {
            return;
        };
        let mut committed = None;
        for _ in 0..3 {
            // A mark half a stale window old still keeps peers off the
            // member for the other half: long enough for the background
            // marks to move it on.
            let fresh_ms = self.settings.stale_window * 1000 / 2;
            committed = self.marks.record_now(&m, fresh_ms).await;
            if committed.is_some() {
                break;
            }
            tokio::time::sleep(PEER_POLL).await;
        }
        let Some(at) = committed else {
            tracing::warn!(member = %m.label(), "missed write not in locdb: other instances may read the member until it is");
            return;
        };
        let limit = self.settings.poll_interval * 3 + Duration::from_secs(1);
        if !registry.peers_reloaded_since(at, PEER_POLL, limit).await {
            tracing::warn!(member = %m.label(), "a peer has not reloaded locdb since a missed write was recorded; releasing the AoR's lock anyway");
        }
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
/// taken it (when every member fails, nobody is behind anybody); a held
/// write keeps its hold until every instance knows.
struct Outcome {
    state: Mutex<OutcomeState>,
    hold: Option<Hold>,
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
    fn new(members: usize, hold: Option<Hold>) -> Self {
        Self {
            hold,
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
            if let Some(hold) = &self.hold {
                let announce = router.clone().announce_miss(m.clone(), hold.clone());
                router.background.spawn(announce);
            }
        }
        if let Some(d) = spread {
            router.metrics.write_confirm_spread.observe(d.as_secs_f64());
        }
        succeeded
    }
}
