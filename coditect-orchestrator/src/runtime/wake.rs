//! The wake-up of one activation's drain task, made for the hot path.
//!
//! Only one task ever waits on it (the activation's drain task), so a
//! `tokio::sync::Notify` — a mutex-guarded list of waiters, taken on every
//! wait and every notification — does more than is needed. This is a flag
//! and an atomic waker: a wake-up with nobody waiting is kept (the next wait
//! returns at once, as with `Notify::notify_one`'s permit), and several
//! wake-ups before a wait count as one.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use futures::task::AtomicWaker;

/// Wakes the one task that waits for it; keeps a wake-up nobody waited for.
#[derive(Default)]
pub(crate) struct DrainWake {
    set: AtomicBool,
    waker: AtomicWaker,
}

impl DrainWake {
    /// Wakes the waiting task, or the next one to wait.
    pub(crate) fn notify(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Waits for a wake-up made since the last one this task took. Only one
    /// task may wait at a time.
    pub(crate) async fn notified(&self) {
        poll_fn(|cx| {
            if self.set.swap(false, Ordering::Acquire) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A wake-up between the first look and the registration found
            // no waker to wake: it left the flag, seen here.
            if self.set.swap(false, Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_wake_up_before_the_wait_is_kept_and_several_count_as_one() {
        let wake = DrainWake::default();
        wake.notify();
        wake.notify();
        // The kept wake-up: returns at once.
        let first = std::pin::pin!(wake.notified());
        assert!(futures::poll!(first).is_ready());
        // Both were taken by that wait: the next one waits.
        let mut next = std::pin::pin!(wake.notified());
        assert!(futures::poll!(next.as_mut()).is_pending());
        wake.notify();
        assert!(futures::poll!(next.as_mut()).is_ready());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_waiting_task_is_woken_from_another_thread() {
        let wake = Arc::new(DrainWake::default());
        for _ in 0..1_000 {
            let (started_tx, started_rx) = tokio::sync::oneshot::channel();
            let w = wake.clone();
            let waiter = tokio::spawn(async move {
                let _ = started_tx.send(());
                w.notified().await;
            });
            started_rx.await.unwrap();
            wake.notify();
            tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
                .await
                .expect("the waiter was not woken")
                .unwrap();
        }
    }
}
