//! The cancellation signal of one handler call, made for the hot path.
//!
//! Every handler call can be cancelled (its caller gives up, its deadline
//! passes, the run is cancelled, the runtime shuts down), but almost none is.
//! A `tokio_util` `CancellationToken` takes a mutex on every clone, drop,
//! check and wait registration; per message that added up to a large share of
//! a round trip. This cell is an atomic flag and an atomic waker instead, and
//! the user-facing [`CancellationToken`] is made only when a handler asks for
//! it (`AgentContext::cancellation`, or a nested request that must stop with
//! the handler). The drain task of an activation reuses one cell from message
//! to message whenever nothing else still holds it, so a handler call that is
//! never cancelled allocates nothing for it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use tokio_util::sync::CancellationToken;

/// Whether one handler call has been cancelled, and who to wake when it is.
#[derive(Default)]
pub(crate) struct HandlerCancel {
    fired: AtomicBool,
    /// The task running the handler (registered only while it waits).
    waker: AtomicWaker,
    /// The token handed to the handler, made on first request.
    token: OnceLock<CancellationToken>,
}

impl HandlerCancel {
    /// A cell for the next handler call: `cell` itself, reset, when nothing
    /// else holds it any more; a new one otherwise.
    pub(crate) fn recycle(cell: &mut Arc<HandlerCancel>) {
        match Arc::get_mut(cell) {
            Some(c) => {
                if *c.fired.get_mut() || c.token.get().is_some() {
                    *c = HandlerCancel::default();
                }
            }
            None => *cell = Arc::new(HandlerCancel::default()),
        }
    }

    /// Fires the signal: the token (if one was made) and the waiting task.
    pub(crate) fn cancel(&self) {
        self.fired.store(true, Ordering::SeqCst);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
        self.waker.wake();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// The token of this call, made on first use; already fired if the call
    /// was cancelled before.
    pub(crate) fn token(&self) -> &CancellationToken {
        let token = self.token.get_or_init(CancellationToken::new);
        // `cancel` stores the flag before it looks for a token, and this looks
        // at the flag after the token exists: one of the two sees the other.
        if self.fired.load(Ordering::SeqCst) {
            token.cancel();
        }
        token
    }
}

/// Runs `fut` until it finishes or `cancel` fires, whichever is first.
pub(crate) struct UntilCancelled<'a, F: ?Sized> {
    pub(crate) fut: Pin<&'a mut F>,
    pub(crate) cancel: &'a HandlerCancel,
}

impl<F: Future + ?Sized> Future for UntilCancelled<'_, F> {
    /// `None` if cancelled first.
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.cancel.is_cancelled() {
            return Poll::Ready(None);
        }
        if let Poll::Ready(out) = self.fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        // Only a handler that waits pays for the registration.
        self.cancel.waker.register(cx.waker());
        if self.cancel.is_cancelled() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn cancel_wakes_a_waiting_handler_and_fires_a_token_made_before_or_after() {
        let cell = Arc::new(HandlerCancel::default());
        let before = cell.token().clone();
        let c2 = cell.clone();
        let fut = std::future::pending::<()>();
        tokio::pin!(fut);
        let waiter = UntilCancelled {
            fut: fut.as_mut(),
            cancel: &cell,
        };
        let canceller = tokio::spawn(async move { c2.cancel() });
        assert_eq!(waiter.await, None);
        canceller.await.unwrap();
        assert!(before.is_cancelled());
        assert!(cell.is_cancelled());
        let cell2 = HandlerCancel::default();
        cell2.cancel();
        assert!(cell2.token().is_cancelled());
    }

    #[test]
    fn a_used_cell_is_reset_or_replaced() {
        let mut cell = Arc::new(HandlerCancel::default());
        cell.cancel();
        let held = cell.clone();
        HandlerCancel::recycle(&mut cell);
        assert!(!Arc::ptr_eq(&cell, &held), "a shared cell must be replaced");
        assert!(!cell.is_cancelled());
        drop(held);
        cell.cancel();
        let before = Arc::as_ptr(&cell);
        HandlerCancel::recycle(&mut cell);
        assert_eq!(Arc::as_ptr(&cell), before, "an unshared cell is reused");
        assert!(!cell.is_cancelled());
        let _ = cell.token();
        HandlerCancel::recycle(&mut cell);
        assert!(cell.token.get().is_none());
    }
}
