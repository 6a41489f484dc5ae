//! Where a runtime is in its life, as one value that only moves forward.
//!
//! A runtime runs, then (at [`Runtime::shutdown`](crate::Runtime::shutdown))
//! drains — takes no new messages, lets what is queued and running finish —
//! then stops — its grace period is over, handlers still running are
//! cancelled, watchers end — and at last is closed: no reply route, no
//! requests. Each stage implies the ones before it, so one atomic holds all
//! of them, and the stage a check reads is never behind one it read before.

use std::sync::atomic::{AtomicU8, Ordering};

/// The stages of a runtime's life, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Stage {
    /// Taking and handling messages.
    Running = 0,
    /// A shutdown began: no new messages are taken.
    Draining = 1,
    /// The shutdown's grace period ended (or the runtime was dropped).
    Stopped = 2,
    /// Shut down: no reply route, no deadline watcher.
    Closed = 3,
}

/// A runtime's stage, read on every message (one relaxed-cost load).
#[derive(Debug)]
pub(crate) struct Lifecycle(AtomicU8);

impl Default for Lifecycle {
    fn default() -> Self {
        Self(AtomicU8::new(Stage::Running as u8))
    }
}

impl Lifecycle {
    /// Moves to `stage` unless the runtime is past it already.
    pub(crate) fn advance(&self, stage: Stage) {
        self.0.fetch_max(stage as u8, Ordering::AcqRel);
    }

    /// Whether the runtime has reached `stage`.
    pub(crate) fn reached(&self, stage: Stage) -> bool {
        self.0.load(Ordering::Acquire) >= stage as u8
    }

    /// A shutdown began (or went further).
    pub(crate) fn is_draining(&self) -> bool {
        self.reached(Stage::Draining)
    }

    /// The grace period ended (or the runtime is closed).
    pub(crate) fn is_stopped(&self) -> bool {
        self.reached(Stage::Stopped)
    }

    /// Shut down.
    pub(crate) fn is_closed(&self) -> bool {
        self.reached(Stage::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_only_move_forward_and_imply_the_ones_before() {
        let l = Lifecycle::default();
        assert!(!l.is_draining() && !l.is_stopped() && !l.is_closed());
        l.advance(Stage::Stopped);
        assert!(l.is_draining() && l.is_stopped() && !l.is_closed());
        // A late "draining" (a shutdown after a drop's stop) does not go back.
        l.advance(Stage::Draining);
        assert!(l.is_stopped());
        l.advance(Stage::Closed);
        l.advance(Stage::Running);
        assert!(l.is_closed() && l.reached(Stage::Draining));
    }
}
