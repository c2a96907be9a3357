//! What both receive loops hand their messages to: each message handled at
//! once until it first waits, then in a task of its own, bounded by
//! `max_in_flight`; the answers go out through the `Outbox`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::outbox::Outbox;
use super::sequence::Sequencer;
use crate::envelope::Inbound;
use crate::limits::Limits;
use crate::metrics::Stage;
use crate::sip::Parsed;
use crate::state::Core;

/// Everything a receive loop needs besides its socket; cheap to clone.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    /// The state the request handlers share.
    pub core: Arc<Core>,
    /// Where answers and forwarded messages are sent from.
    pub outbox: Outbox,
    /// Messages being handled at once (`max_in_flight` permits).
    pub in_flight: Arc<Semaphore>,
    /// Flood limits: per-source rate and ban, TCP connection caps and deadlines.
    pub limits: Arc<Limits>,
    /// Keeps each Call-ID's messages in arrival order on the way out.
    pub order: Arc<Sequencer>,
    /// Every task spawned (connections and messages), awaited at shutdown.
    pub tasks: TaskTracker,
    /// Cancelled when the loops must stop receiving.
    pub stop: CancellationToken,
}

impl Dispatcher {
    /// Handles one parsed message (`run_here_first`), sending what it yields after the
    /// previous message of its Call-ID; or answers 503 at once
    /// when `max_in_flight` messages are already being handled.
    pub fn dispatch(&self, msg: Parsed, src: Inbound) {
        if let Parsed::Request(req) = &msg
            && is_ack_of_our_answer(req)
        {
            // It ends here whatever it holds (an ACK gets no answer): no
            // task, no turn. In redirect mode that is every third datagram.
            self.core.metrics.request("ACK");
            self.core.metrics.dropped("ack_of_our_answer");
            return;
        }
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.overloaded(&msg, src);
            return;
        };
        let (core, outbox) = (self.core.clone(), self.outbox.clone());
        let in_flight = core.metrics.in_flight_guard();
        // Taken here, in arrival order; the task may run in any order.
        let mut turn = self.order.take_turn(msg.call_id_bytes().as_deref());
        let dispatched = Instant::now();
        run_here_first(&self.tasks, async move {
            let _permit = permit;
            let _in_flight = in_flight;
            let m = &core.metrics;
            let started = Instant::now();
            m.stage(Stage::Wait, started - dispatched);
            let out = match msg {
                Parsed::Request(req) => core.handle_request(req, src).await,
                Parsed::Response(resp) => {
                    core.handle_response(resp, src).await.into_iter().collect()
                }
            };
            let handled = Instant::now();
            m.stage(Stage::Handle, handled - started);
            if let Some(t) = turn.as_mut() {
                t.wait().await;
            }
            let sending = Instant::now();
            m.stage(Stage::Turn, sending - handled);
            for o in out {
                outbox.send(m, o).await;
            }
            let sent = Instant::now();
            m.stage(Stage::Send, sent - sending);
            m.stage(Stage::Total, sent - dispatched);
        });
    }

    /// A request gets 503 + Retry-After; an ACK or a response is dropped.
    fn overloaded(&self, msg: &Parsed, src: Inbound) {
        let core = &self.core;
        let Parsed::Request(req) = msg else {
            core.metrics.dropped("overloaded");
            return;
        };
        if req.method() == "ACK" {
            core.metrics.dropped("overloaded");
            return;
        }
        core.metrics.overloaded();
        let retry_after = [("Retry-After", "1".to_string())];
        let out = core.reply(req, src, 503, "Service Unavailable", &retry_after);
        let (core, outbox) = (core.clone(), self.outbox.clone());
        self.tasks.spawn(async move {
            for o in out {
                outbox.send(&core.metrics, o).await;
            }
        });
    }
}

/// An ACK whose To tag is one the shim gave (`identity::TAG_PREFIX`): the
/// ACK of a final answer the shim itself sent, which goes nowhere.
fn is_ack_of_our_answer(req: &crate::sip::Request) -> bool {
    req.method() == "ACK"
        && req
            .to()
            .is_ok_and(|(_, tag)| tag.is_some_and(|t| t.starts_with(crate::identity::TAG_PREFIX)))
}

/// Runs `work` in the receive loop's task until it first waits (on
/// locsvc, a turn, a socket), and only then in a task of its own. Spawned
/// at once, a message waited 13-76 µs on average for the other runtime
/// thread to wake up and steal it before its Lookup even left (BENCHMARKS,
/// "Fewer hops per call"); polled here, its call is queued on the
/// connection before the loop reads the next datagram, and whatever needs
/// no wait (a relayed response, a 400) never becomes a task. The first
/// poll's waker is a no-op: the spawned task polls the future again at
/// once, and every future re-registers its waker on each poll, so no
/// wake-up is lost.
fn run_here_first(tasks: &TaskTracker, work: impl Future<Output = ()> + Send + 'static) {
    let mut work = Box::pin(work);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if work.as_mut().poll(&mut cx).is_pending() {
        tasks.spawn(work);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[tokio::test]
    async fn work_that_needs_no_wait_is_done_before_dispatch_returns() {
        let tasks = TaskTracker::new();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        run_here_first(&tasks, async move { d.store(true, Ordering::SeqCst) });
        assert!(done.load(Ordering::SeqCst));
        assert!(tasks.is_empty(), "no task for it");
    }

    #[tokio::test]
    async fn work_that_waits_goes_on_in_a_task_and_misses_no_wake_up() {
        let tasks = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let got = Arc::new(std::sync::Mutex::new(None));
        let g = got.clone();
        run_here_first(&tasks, async move {
            *g.lock().unwrap() = rx.await.ok();
        });
        assert_eq!(tasks.len(), 1);
        // Sent before the task ran: its first poll in the task must see
        // it, though the only waker registered so far was the no-op.
        tx.send(7).unwrap();
        tasks.close();
        tasks.wait().await;
        assert_eq!(*got.lock().unwrap(), Some(7));
    }

    #[tokio::test]
    async fn a_wake_up_after_the_task_started_reaches_it() {
        let tasks = TaskTracker::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let got = Arc::new(std::sync::Mutex::new(None));
        let g = got.clone();
        run_here_first(&tasks, async move {
            // Pending here; the rest runs in the task.
            tokio::task::yield_now().await;
            let _ = started_tx.send(());
            *g.lock().unwrap() = rx.await.ok();
        });
        assert_eq!(tasks.len(), 1);
        started.await.unwrap();
        tx.send(9).unwrap();
        tasks.close();
        tasks.wait().await;
        assert_eq!(*got.lock().unwrap(), Some(9));
    }
}
