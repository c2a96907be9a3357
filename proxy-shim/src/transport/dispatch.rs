//! What both receive loops hand their messages to: a task per message,
//! bounded by `max_in_flight`, whose answers go out through the `Outbox`.

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
    /// Handles one parsed message in its own task, sending what it yields
    /// after the previous message of its Call-ID; or answers 503 at once
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
        self.tasks.spawn(async move {
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
