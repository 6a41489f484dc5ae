//! The runtime-wide bound on handlers running at once.
//!
//! Taking and giving back a slot is one atomic operation each when the bound
//! is not reached. (A `tokio::sync::Semaphore` takes its waiters' mutex on
//! every release, waiters or not: one lock shared by every handler of every
//! thread.) Only when every slot is taken does a handler wait, on a `Notify`.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

pub(crate) struct Limit {
    in_use: AtomicUsize,
    max: usize,
    /// Handlers waiting for a slot: a release wakes one only if there are any.
    waiting: AtomicUsize,
    room: Notify,
}

/// A taken slot, given back when dropped.
pub(crate) struct Slot<'a>(&'a Limit);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Limit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            in_use: AtomicUsize::new(0),
            max: max.max(1),
            waiting: AtomicUsize::new(0),
            room: Notify::new(),
        }
    }

    /// Gives back a slot taken with [`try_take`](Self::try_take).
    pub(crate) fn release(&self) {
        self.in_use.fetch_sub(1, Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.room.notify_one();
        }
    }

    /// Takes a slot if one is free; the taker must [`release`](Self::release)
    /// it.
    pub(crate) fn try_take(&self) -> bool {
        let mut cur = self.in_use.load(Ordering::Relaxed);
        loop {
            if cur >= self.max {
                return false;
            }
            match self.in_use.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    /// Takes a slot if one is free.
    pub(crate) fn try_acquire(&self) -> Option<Slot<'_>> {
        self.try_take().then(|| Slot(self))
    }

    /// Takes a slot, waiting while every slot is taken.
    pub(crate) async fn acquire(&self) -> Slot<'_> {
        loop {
            if self.try_take() {
                return Slot(self);
            }
            // Register, count ourselves as waiting, then look again: a slot
            // given back in between either is seen here or sees us waiting.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let got = self.try_take();
            if !got {
                room.await;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            if got {
                return Slot(self);
            }
        }
    }

    #[cfg(test)]
    fn in_use(&self) -> usize {
        self.in_use.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_max_and_every_waiter_gets_a_slot() {
        let limit = Arc::new(Limit::new(3));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..64 {
            let (limit, peak) = (limit.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..50 {
                    let _slot = limit.acquire().await;
                    peak.fetch_max(limit.in_use(), Ordering::SeqCst);
                    tokio::task::yield_now().await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(
            peak.load(Ordering::SeqCst),
            3,
            "the bound was never reached"
        );
        assert_eq!(limit.in_use(), 0);
    }
}
