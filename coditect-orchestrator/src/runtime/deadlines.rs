//! One timer per node for every request and handler deadline.
//!
//! Arming a tokio timer per request costs more than the request itself: the
//! first timer wakes the thread that parks on the time driver. Instead every
//! deadline goes into one ordered table, watched by one task that sleeps until
//! the earliest entry it knows of. A new entry wakes that task only if it is
//! earlier than the task's current wake-up time — with uniform timeouts that is
//! almost never — and an entry whose work finished first is simply removed.

use std::collections::BTreeMap;
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
    /// The sentinel that keeps the table's root node allocated (see `new`).
    Never,
}

/// The sequence number of the sentinel: after every real entry.
const SENTINEL: u64 = u64::MAX;

/// The longest the watcher sleeps: a new entry due later than its next
/// wake-up does not need to wake it.
const IDLE_HORIZON: std::time::Duration = std::time::Duration::from_secs(1);

/// The handle to remove an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeadlineKey(Instant, u64);

#[derive(Default)]
struct State {
    entries: BTreeMap<(Instant, u64), Expiry>,
    seq: u64,
    /// When the watcher task will next wake up on its own.
    next_wake: Option<Instant>,
}

pub(crate) struct Deadlines {
    state: Mutex<State>,
    wake: Notify,
}

impl Deadlines {
    pub(crate) fn new() -> Self {
        // A table that went from one entry to none would free its node, and
        // the next insert allocate it again: with one request in flight at a
        // time, that was an allocation per request. A sentinel a century away
        // keeps the node.
        let mut state = State::default();
        let far = Instant::now() + std::time::Duration::from_secs(100 * 365 * 86_400);
        state.entries.insert((far, SENTINEL), Expiry::Never);
        Self {
            state: Mutex::new(state),
            wake: Notify::new(),
        }
    }

    pub(crate) fn insert(&self, at: Instant, expiry: Expiry) -> DeadlineKey {
        let mut st = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        st.seq += 1;
        let key = (at, st.seq);
        st.entries.insert(key, expiry);
        let wake = st.next_wake.is_none_or(|w| at < w);
        if wake {
            st.next_wake = Some(at);
        }
        drop(st);
        if wake {
            self.wake.notify_one();
        }
        DeadlineKey(key.0, key.1)
    }

    pub(crate) fn remove(&self, key: DeadlineKey) {
        if let Ok(mut st) = self.state.lock() {
            st.entries.remove(&(key.0, key.1));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.state.lock().map(|s| s.entries.len() - 1).unwrap_or(0)
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
                while let Some(entry) = st.entries.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    due.push(entry.remove());
                }
                // With nothing due soon, sleep a while anyway: were the next
                // wake-up left open, every new entry would have to wake this
                // task — with one request in flight at a time, a wake-up (and
                // another worker thread woken to steal it) per request.
                let idle = now + IDLE_HORIZON;
                let next = st
                    .entries
                    .first_key_value()
                    .filter(|(k, _)| k.1 != SENTINEL)
                    .map_or(idle, |(k, _)| k.0.min(idle));
                st.next_wake = Some(next);
                next
            };
            for expiry in due {
                match expiry {
                    Expiry::Cancel(cancel) => cancel.cancel(),
                    Expiry::Never => {}
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
}
