//! In-progress acks for the durable tasks one pull loop has handed out: one
//! timer per pull loop, not one per task.
//!
//! A task is entered when it is delivered and leaves when it is acked,
//! nakked, terminated or dropped. Every tick (a quarter of the ack wait) the
//! ticker sends an in-progress ack for each task that was already in flight
//! at the tick before: a task's first one comes one to two ticks after its
//! delivery (at most half the ack wait), then one every tick, so a task that
//! runs or waits longer than the ack wait is not redelivered. The many tasks
//! that end within a tick cost an insert and a remove in a table and nothing
//! else (no task, no timer, no clock read of their own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;

/// The tasks of one pull loop that are not yet acked, and the tick they were
/// entered at.
pub(crate) struct InFlight<A> {
    table: Mutex<Table<A>>,
}

struct Table<A> {
    next: u64,
    tick: u64,
    live: HashMap<u64, (u64, A)>,
}

impl<A: Clone> InFlight<A> {
    pub(crate) fn new() -> Self {
        Self {
            table: Mutex::new(Table {
                next: 0,
                tick: 0,
                live: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table<A>> {
        // The table is consistent after any panic (each change is one map
        // operation), so a poisoned lock is still good to use.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enters a task; the key takes it out again.
    pub(crate) fn enter(&self, a: A) -> u64 {
        let mut t = self.lock();
        let key = t.next;
        t.next += 1;
        let tick = t.tick;
        t.live.insert(key, (tick, a));
        key
    }

    /// Takes a task out (it was acked, nakked, terminated or dropped).
    pub(crate) fn leave(&self, key: u64) -> Option<A> {
        self.lock().live.remove(&key).map(|(_, a)| a)
    }

    /// Starts the next tick and gives the tasks that were in flight at the
    /// tick before it: each has been in flight for at least one tick.
    pub(crate) fn due(&self) -> Vec<A> {
        let mut t = self.lock();
        t.tick += 1;
        let now = t.tick;
        t.live
            .values()
            .filter(|(entered, _)| entered + 1 < now)
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// How many tasks are in flight.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().live.len()
    }
}

/// The ackers of one pull loop's tasks in flight.
pub(crate) type Ackers = InFlight<Arc<Acker>>;

/// Starts the ticker of `in_flight`: an in-progress ack every `every` for
/// each task in flight since the tick before. It ends once the pull loop and
/// every task it handed out are gone.
pub(crate) fn keep_alive(in_flight: &Arc<Ackers>, every: Duration) {
    let weak: Weak<Ackers> = Arc::downgrade(in_flight);
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + every;
        let mut ticks = tokio::time::interval_at(start, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(in_flight) = weak.upgrade() else {
                return;
            };
            let due = in_flight.due();
            drop(in_flight);
            for acker in due {
                // A failed send (the connection is down) is retried at the
                // next tick; the task's own ack is what settles it.
                let _ = acker.ack_with(AckKind::Progress).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_is_due_from_its_second_tick_until_it_leaves() {
        let f = InFlight::new();
        let a = f.enter("a");
        assert!(f.due().is_empty(), "in flight for less than a tick");
        let b = f.enter("b");
        assert_eq!(f.due(), vec!["a"], "a in flight a whole tick; b not yet");
        let mut due = f.due();
        due.sort_unstable();
        assert_eq!(due, vec!["a", "b"], "every tick while in flight");
        assert_eq!(f.leave(a), Some("a"));
        assert_eq!(f.leave(a), None, "left once");
        assert_eq!(f.due(), vec!["b"]);
        assert_eq!(f.leave(b), Some("b"));
        assert!(f.due().is_empty());
        assert_eq!(f.len(), 0);
    }

    #[test]
    fn keys_are_not_reused() {
        let f = InFlight::new();
        let k = f.enter(1);
        f.leave(k);
        let k2 = f.enter(2);
        assert_ne!(k, k2);
        assert_eq!(f.leave(k), None, "an old key takes nothing out");
        assert_eq!(f.len(), 1);
    }
}
