//! Which lookups leave together in one `LookupMany` call. A lookup that
//! finds fewer than `calls` calls in flight leaves at once, with whatever
//! was waiting; otherwise it waits, and leaves with the next call that a
//! finishing one starts. A batch is what accumulated while the previous
//! calls were in flight, never a timer: at low load every lookup goes alone
//! and waits for nothing.

use std::collections::VecDeque;
use std::sync::Mutex;

/// Lookups waiting for a call, and the calls in flight.
#[derive(Debug)]
pub(super) struct Batcher<T> {
    max_items: usize,
    max_calls: usize,
    state: Mutex<State<T>>,
}

#[derive(Debug)]
struct State<T> {
    calls: usize,
    queue: VecDeque<T>,
}

impl<T> State<T> {
    /// The oldest `max` waiting lookups (or all of them).
    fn take(&mut self, max: usize) -> Vec<T> {
        let n = self.queue.len().min(max);
        self.queue.drain(..n).collect()
    }
}

impl<T> Batcher<T> {
    /// At most `max_items` lookups per call and `max_calls` calls at once
    /// (each at least 1).
    pub(super) fn new(max_items: usize, max_calls: usize) -> Self {
        Self {
            max_items: max_items.max(1),
            max_calls: max_calls.max(1),
            state: Mutex::new(State {
                calls: 0,
                queue: VecDeque::new(),
            }),
        }
    }

    /// Queues `item`. When a call may start, returns its batch (oldest
    /// first, `item` among them) and the caller owns that call until
    /// [`Batcher::next`] releases it.
    pub(super) fn submit(&self, item: T) -> Option<Vec<T>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.queue.push_back(item);
        if s.calls < self.max_calls {
            s.calls += 1;
            Some(s.take(self.max_items))
        } else {
            None
        }
    }

    /// After a call ended: the next batch for the same call slot, or None
    /// (the slot is free again) when nothing waits.
    pub(super) fn next(&self) -> Option<Vec<T>> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if s.queue.is_empty() {
            s.calls = s.calls.saturating_sub(1);
            None
        } else {
            Some(s.take(self.max_items))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_leaves_at_once_while_a_call_slot_is_free() {
        let b = Batcher::new(8, 2);
        assert_eq!(b.submit(1), Some(vec![1]));
        assert_eq!(b.submit(2), Some(vec![2]));
        // Both slots busy: 3 and 4 wait.
        assert_eq!(b.submit(3), None);
        assert_eq!(b.submit(4), None);
        // The first call to end takes both, in arrival order.
        assert_eq!(b.next(), Some(vec![3, 4]));
        // Nothing waits: the slots free up one by one.
        assert_eq!(b.next(), None);
        assert_eq!(b.next(), None);
        assert_eq!(b.submit(5), Some(vec![5]));
    }

    #[test]
    fn a_batch_holds_at_most_max_items_and_the_rest_keep_their_order() {
        let b = Batcher::new(3, 1);
        assert_eq!(b.submit(0), Some(vec![0]));
        for i in 1..=7 {
            assert_eq!(b.submit(i), None);
        }
        assert_eq!(b.next(), Some(vec![1, 2, 3]));
        assert_eq!(b.next(), Some(vec![4, 5, 6]));
        assert_eq!(b.next(), Some(vec![7]));
        assert_eq!(b.next(), None);
        assert_eq!(b.submit(8), Some(vec![8]));
    }

    #[test]
    fn zero_limits_mean_one() {
        let b = Batcher::new(0, 0);
        assert_eq!(b.submit(1), Some(vec![1]));
        assert_eq!(b.submit(2), None);
        assert_eq!(b.next(), Some(vec![2]));
    }
}
