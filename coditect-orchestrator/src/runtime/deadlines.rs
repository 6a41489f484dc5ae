//! One timer per node for every request and handler deadline.
//!
//! Arming a tokio timer per request costs more than the request itself: the
//! first timer wakes the thread that parks on the time driver. Instead every
//! deadline goes into one ordered table, watched by one task that sleeps until
//! the earliest entry it knows of. A new entry wakes that task only if it is
//! earlier than the task's current wake-up time — with uniform timeouts that is
//! almost never — and an entry whose work finished first is simply removed.
//!
//! The table is a deque in deadline order ([`Table`]). Deadlines are mostly
//! made in the order they fall due (the same timeout, one request after
//! another), so an entry almost always goes at the back, and the work that
//! finishes first is mostly the oldest, at the front: both are a few
//! instructions, where an ordered tree paid a search and a rebalance each
//! way on every request.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::envelope::{Failure, FailureKind};
use crate::id::MessageId;
use crate::runtime::cancel::HandlerCancel;
use crate::runtime::replies::PendingReplies;

/// What happens when a deadline passes.
pub(crate) enum Expiry {
    /// A request of this node waits for its reply: fail it with a timeout.
    Request(MessageId),
    /// A handler runs: fire its cancellation signal.
    Cancel(Arc<HandlerCancel>),
}

/// The longest the watcher sleeps: a new entry due later than its next
/// wake-up does not need to wake it.
const IDLE_HORIZON: std::time::Duration = std::time::Duration::from_secs(1);

/// The handle to remove an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeadlineKey(Instant, u64);

/// Entries in the order they fall due, then in the order they were made.
///
/// A removed entry leaves a hole (`None`) where it was, so the others keep
/// their places and a key is found by binary search; holes at the front are
/// dropped at once, and the deque is compacted when holes outnumber the
/// entries, so its length stays within twice the live count (plus a little).
pub(crate) struct Table<T> {
    entries: VecDeque<(Instant, u64, Option<T>)>,
    live: usize,
    seq: u64,
}

/// Holes tolerated beyond the live count before a compaction.
const SLACK: usize = 32;

/// A deque emptied after a burst gives back memory beyond this many slots.
const KEEP: usize = 64;

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            live: 0,
            seq: 0,
        }
    }
}

impl<T> Table<T> {
    /// Adds an entry due at `at`, after every other entry due then.
    pub(crate) fn insert(&mut self, at: Instant, value: T) -> DeadlineKey {
        self.seq += 1;
        let seq = self.seq;
        // The usual case: due no earlier than everything in the table.
        if self.entries.back().is_none_or(|last| last.0 <= at) {
            self.entries.push_back((at, seq, Some(value)));
        } else {
            let i = self.entries.partition_point(|e| e.0 <= at);
            self.entries.insert(i, (at, seq, Some(value)));
        }
        self.live += 1;
        DeadlineKey(at, seq)
    }

    /// Removes an entry, if it is still there; gives back its value.
    pub(crate) fn remove(&mut self, key: DeadlineKey) -> Option<T> {
        let DeadlineKey(at, seq) = key;
        // The usual case: the oldest entry's work finished first.
        let i = match self.entries.front() {
            Some(front) if front.1 == seq => 0,
            _ => self.entries.partition_point(|e| (e.0, e.1) < (at, seq)),
        };
        let slot = self
            .entries
            .get_mut(i)
            .filter(|e| e.0 == at && e.1 == seq)?;
        let value = slot.2.take()?;
        self.live -= 1;
        self.tidy();
        Some(value)
    }

    /// Takes the entries due at or before `now`, earliest first.
    pub(crate) fn pop_due(&mut self, now: Instant, due: &mut Vec<T>) {
        while let Some(front) = self.entries.front_mut() {
            if front.0 > now {
                break;
            }
            if let Some(value) = front.2.take() {
                self.live -= 1;
                due.push(value);
            }
            self.entries.pop_front();
        }
        self.tidy();
    }

    /// When the earliest entry falls due.
    pub(crate) fn next_at(&self) -> Option<Instant> {
        // `tidy` keeps a live entry (or nothing) at the front.
        self.entries.front().map(|e| e.0)
    }

    /// How many entries there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    fn tidy(&mut self) {
        while self.entries.front().is_some_and(|e| e.2.is_none()) {
            self.entries.pop_front();
        }
        if self.entries.len() > 2 * self.live + SLACK {
            self.entries.retain(|e| e.2.is_some());
        }
        if self.entries.is_empty() && self.entries.capacity() > KEEP {
            self.entries.shrink_to(KEEP);
        }
    }
}

#[derive(Default)]
struct State {
    entries: Table<Expiry>,
    /// When the watcher task will next wake up on its own.
    next_wake: Option<Instant>,
}

pub(crate) struct Deadlines {
    state: Mutex<State>,
    wake: Notify,
}

impl Deadlines {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        }
    }

    pub(crate) fn insert(&self, at: Instant, expiry: Expiry) -> DeadlineKey {
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let key = st.entries.insert(at, expiry);
        let wake = st.next_wake.is_none_or(|w| at < w);
        if wake {
            st.next_wake = Some(at);
        }
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        key
    }

    pub(crate) fn remove(&self, key: DeadlineKey) {
        // Dropped after the lock is released: the last handle to a handler's
        // cancellation cell may be here.
        let _removed = match self.state.lock() {
            Ok(mut st) => st.entries.remove(key),
            Err(_) => None,
        };
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().map(|s| s.entries.len()).unwrap_or(0)
    }

    /// Fires expired entries until `stop` fires (the runtime shuts down or is
    /// dropped).
    pub(crate) async fn watch(
        me: Arc<Deadlines>,
        pending: Weak<PendingReplies>,
        stop: CancellationToken,
    ) {
        loop {
            // Register for a wake-up before reading the table, so an insert
            // that lands in between is not missed.
            let notified = me.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let mut due = Vec::new();
            let wake_at = {
                let mut st = match me.state.lock() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                st.entries.pop_due(now, &mut due);
                // With nothing due soon, sleep a while anyway: were the next
                // wake-up left open, every new entry would have to wake this
                // task — with one request in flight at a time, a wake-up (and
                // another worker thread woken to steal it) per request.
                let idle = now + IDLE_HORIZON;
                let next = st.entries.next_at().map_or(idle, |at| at.min(idle));
                st.next_wake = Some(next);
                next
            };
            for expiry in due {
                match expiry {
                    Expiry::Cancel(cancel) => cancel.cancel(),
                    Expiry::Request(id) => {
                        if let Some(p) = pending.upgrade() {
                            p.complete(
                                &id,
                                crate::runtime::replies::ReplyResult::bare(Err(Failure::new(
                                    FailureKind::Timeout,
                                    "no reply before the deadline",
                                ))),
                            );
                        }
                    }
                }
            }
            let sleep = tokio::time::sleep_until(wake_at);
            tokio::select! {
                () = stop.cancelled() => return,
                () = &mut notified => {}
                () = sleep => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn expired_entries_fire_and_removed_ones_do_not() {
        let d = Arc::new(Deadlines::new());
        let pending = Arc::new(PendingReplies::new());
        let stop = CancellationToken::new();
        tokio::spawn(Deadlines::watch(
            d.clone(),
            Arc::downgrade(&pending),
            stop.clone(),
        ));
        let fires = Arc::new(HandlerCancel::default());
        let kept = Arc::new(HandlerCancel::default());
        let now = Instant::now();
        d.insert(now + Duration::from_secs(5), Expiry::Cancel(fires.clone()));
        let k = d.insert(now + Duration::from_secs(1), Expiry::Cancel(kept.clone()));
        d.remove(k);
        let id = MessageId::new();
        let mut rx = pending.insert(id);
        d.insert(now + Duration::from_secs(3), Expiry::Request(id));
        tokio::time::timeout(Duration::from_secs(60), fires.token().cancelled())
            .await
            .unwrap();
        assert!(!kept.is_cancelled());
        let failure = rx.try_recv().unwrap().result.unwrap_err();
        assert_eq!(failure.kind, FailureKind::Timeout);
        assert_eq!(d.len(), 0);
        stop.cancel();
    }

    #[test]
    fn holes_left_behind_the_front_are_compacted_and_memory_is_given_back() {
        let base = Instant::now();
        let mut table = Table::default();
        let keys: Vec<_> = (0..10_000u64)
            .map(|i| table.insert(base + Duration::from_millis(i), i))
            .collect();
        // Everything but the oldest finishes: the front stays live, so only
        // compaction can drop the holes behind it.
        for key in &keys[1..] {
            table.remove(*key);
        }
        assert_eq!(table.len(), 1);
        assert!(
            table.entries.len() <= 2 + SLACK,
            "{} slots",
            table.entries.len()
        );
        table.remove(keys[0]);
        assert_eq!(table.next_at(), None);
        assert!(table.entries.capacity() <= KEEP);
    }

    /// One step of a random schedule of the table.
    #[derive(Debug, Clone)]
    enum Op {
        /// An entry due this many ms from the base.
        Insert(u64),
        /// Removes the entry made this many inserts ago (modulo).
        Remove(usize),
        /// Takes what is due this many ms from the base.
        Expire(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            // Mostly in order, as uniform timeouts make them; some not.
            4 => (0u64..200).prop_map(Op::Insert),
            3 => (0usize..64).prop_map(Op::Remove),
            1 => (0u64..200).prop_map(Op::Expire),
        ]
    }

    proptest::proptest! {
        /// The deque table against an ordered map: the same entries fall due,
        /// in the same order, removed ones never, and its length stays
        /// within twice the live entries.
        #[test]
        fn the_table_fires_what_an_ordered_map_would(ops in proptest::collection::vec(op(), 0..400)) {
            let base = Instant::now();
            let mut table = Table::default();
            let mut model = std::collections::BTreeMap::new();
            let mut keys = Vec::new();
            let mut made = 0u64;
            let mut now = 0u64;
            for op in ops {
                match op {
                    Op::Insert(ms) => {
                        let at = base + Duration::from_millis(now + ms);
                        made += 1;
                        let key = table.insert(at, made);
                        model.insert((at, made), made);
                        keys.push((key, at, made));
                    }
                    Op::Remove(back) => {
                        if keys.is_empty() {
                            continue;
                        }
                        let (key, at, n) = keys.remove(keys.len() - 1 - back % keys.len());
                        proptest::prop_assert_eq!(table.remove(key), model.remove(&(at, n)));
                        // Twice is nothing.
                        proptest::prop_assert_eq!(table.remove(key), None);
                    }
                    Op::Expire(ms) => {
                        now += ms;
                        let cut = base + Duration::from_millis(now);
                        let mut due = Vec::new();
                        table.pop_due(cut, &mut due);
                        let mut expected = Vec::new();
                        while let Some(entry) = model.first_entry() {
                            if entry.key().0 > cut {
                                break;
                            }
                            expected.push(entry.remove());
                        }
                        proptest::prop_assert_eq!(due, expected);
                    }
                }
                proptest::prop_assert_eq!(table.len(), model.len());
                proptest::prop_assert_eq!(table.next_at(), model.keys().next().map(|k| k.0));
                proptest::prop_assert!(table.entries.len() <= 2 * table.len() + SLACK);
            }
        }
    }
}
