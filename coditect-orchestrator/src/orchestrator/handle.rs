//! A run in progress: its events, its cancellation and its outcome.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

use crate::id::RunId;
use crate::orchestrator::event::RunEventRecord;
use crate::orchestrator::state::RunState;
use crate::orchestrator::task::{RunError, RunErrorKind, RunOutcome};

/// A run in progress.
pub struct RunHandle {
    pub(crate) run: RunId,
    pub(crate) events: Option<broadcast::Receiver<RunEventRecord>>,
    pub(crate) resubscribe: Option<broadcast::Receiver<RunEventRecord>>,
    pub(crate) cancel: CancellationToken,
    pub(crate) outcome: oneshot::Receiver<Result<RunOutcome, RunError>>,
}

impl std::fmt::Debug for RunHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHandle").field("run", &self.run).finish()
    }
}

/// The events of a run, as a stream. A reader that falls more than 4,096
/// events behind skips the oldest (the run's state still has everything).
pub type RunEvents = Pin<Box<dyn Stream<Item = RunEventRecord> + Send>>;

impl RunHandle {
    /// The run's id.
    pub fn id(&self) -> RunId {
        self.run
    }

    /// The run's events from its start (the first call), as they happen; the
    /// stream ends when the run does.
    pub fn events(&mut self) -> RunEvents {
        let rx = match self.events.take() {
            Some(rx) => {
                self.resubscribe = Some(rx.resubscribe());
                rx
            }
            None => match &self.resubscribe {
                Some(r) => r.resubscribe(),
                None => return Box::pin(futures::stream::empty()),
            },
        };
        Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(e) => return Some((e, rx)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }))
    }

    /// Cancels the run: no more dispatching, every in-flight handler's token
    /// fires, and the outcome is a cancelled error.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels the run when fired.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits for the run to end. For a durable run (one with a store), the
    /// outcome comes once the whole journal is durable; events are seen as
    /// they happen, which for the last few can be before they are durable.
    ///
    /// # Errors
    /// As [`Orchestrator::run`](crate::orchestrator::Orchestrator::run).
    pub async fn outcome(self) -> Result<RunOutcome, RunError> {
        let RunHandle {
            run,
            events,
            resubscribe,
            outcome,
            ..
        } = self;
        // Nobody reads events through this handle any more: without
        // receivers the run skips publishing them.
        drop(events);
        drop(resubscribe);
        match outcome.await {
            Ok(r) => r,
            Err(_) => Err(RunError {
                run,
                kind: RunErrorKind::Internal,
                message: "the run's task ended without an outcome".into(),
                state: Box::new(RunState::new(run)),
            }),
        }
    }
}
