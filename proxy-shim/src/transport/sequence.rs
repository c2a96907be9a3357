//! Messages of one Call-ID leave the shim in the order they arrived. Each
//! message is handled in a task of its own, and the scheduler may run a
//! later one first (a 200 overtaking the 180 right before it, a BYE its
//! ACK). So the receive loop, which sees arrival order, gives each message
//! a turn behind the previous message of its Call-ID; the task does its
//! work at once and only waits for its turn to send. Handling (lookups)
//! stays concurrent; only sending is ordered, and only within a Call-ID.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// Longest wait for the previous message of a Call-ID to be sent (it may
/// be stuck on a peer's full TCP queue): then this one goes anyway.
const TURN_WAIT: Duration = Duration::from_secs(1);

/// Who was last in line for each Call-ID.
#[derive(Debug, Default)]
pub struct Sequencer {
    hasher: RandomState,
    tails: Mutex<Tails>,
}

#[derive(Debug, Default)]
struct Tails {
    next: u64,
    /// Call-ID hash → (turn number, resolved once that turn has sent).
    last: HashMap<u64, (u64, oneshot::Receiver<()>)>,
}

/// A message's place in its Call-ID's line.
#[derive(Debug)]
pub struct Turn {
    seq: Arc<Sequencer>,
    key: u64,
    no: u64,
    before: Option<oneshot::Receiver<()>>,
    /// Dropped when this turn is over, which wakes the next one.
    _done: oneshot::Sender<()>,
}

impl Sequencer {
    /// Lines a message with this Call-ID up behind the earlier ones; None
    /// (no order to keep) without a Call-ID.
    pub fn take_turn(self: &Arc<Self>, call_id: Option<&[u8]>) -> Option<Turn> {
        let key = self.hasher.hash_one(call_id?);
        let (tx, rx) = oneshot::channel();
        let mut tails = self.tails.lock().unwrap_or_else(|e| e.into_inner());
        tails.next += 1;
        let no = tails.next;
        let before = tails.last.insert(key, (no, rx)).map(|(_, r)| r);
        Some(Turn {
            seq: self.clone(),
            key,
            no,
            before,
            _done: tx,
        })
    }

    /// Call-IDs with a message in flight (tests).
    pub fn lines(&self) -> usize {
        self.tails
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
            .len()
    }
}

impl Turn {
    /// Waits until the previous message of the Call-ID has been sent (or
    /// given up), at most `TURN_WAIT`.
    pub async fn wait(&mut self) {
        if let Some(before) = self.before.take() {
            let _ = tokio::time::timeout(TURN_WAIT, before).await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut tails = self.seq.tails.lock().unwrap_or_else(|e| e.into_inner());
        // Last in line: nobody will wait for us, forget the Call-ID.
        if tails
            .last
            .get(&self.key)
            .is_some_and(|(no, _)| *no == self.no)
        {
            tails.last.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_later_message_of_a_call_id_waits_for_the_earlier_one_only() {
        let s = Arc::new(Sequencer::default());
        let first = s.take_turn(Some(b"a@x")).unwrap();
        let mut second = s.take_turn(Some(b"a@x")).unwrap();
        let mut other = s.take_turn(Some(b"b@x")).unwrap();
        assert!(s.take_turn(None).is_none());
        // Another Call-ID does not wait.
        tokio::time::timeout(Duration::from_millis(50), other.wait())
            .await
            .expect("no wait across Call-IDs");
        let waiting = tokio::spawn(async move {
            second.wait().await;
            second
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the second waits for the first");
        drop(first);
        let second = waiting.await.unwrap();
        drop((second, other));
        assert_eq!(s.lines(), 0, "finished lines are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_predecessor_holds_the_next_one_for_at_most_the_turn_wait() {
        let s = Arc::new(Sequencer::default());
        let _stuck = s.take_turn(Some(b"a@x")).unwrap();
        let mut next = s.take_turn(Some(b"a@x")).unwrap();
        let t = tokio::time::Instant::now();
        next.wait().await;
        assert_eq!(t.elapsed(), TURN_WAIT);
    }
}
