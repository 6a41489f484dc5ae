//! The call context: what a message carries about the work it belongs to.
//!
//! One struct, shared by the [`Envelope`](crate::Envelope), the runtime and
//! the NATS wire header, so that a new piece of run context is one field
//! here and nowhere else.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::budget::Budget;
use crate::envelope::{CallChain, Deadline, TraceContext};
use crate::id::{MessageId, RunId, StepId};
use crate::journal::Recorded;

/// The run context of a message: which run and step it works for, who asked,
/// how deep and until when, and what is left of the run's limits.
///
/// The orchestrator builds one per step attempt and hands it to
/// [`Runtime::call`](crate::Runtime::call); a handler's requests inherit it
/// from the message being handled (one level deeper when they delegate).
///
/// ```
/// use coditect_orchestrator::{CallContext, RunId, StepId};
/// let ctx = CallContext::for_step(RunId::new(), StepId::new("draft")?, 2);
/// assert_eq!(ctx.attempt, 2);
/// assert_eq!(ctx.depth, 0);
/// # Ok::<(), coditect_orchestrator::IdError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallContext {
    /// The run the message belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<RunId>,
    /// The plan step it works for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    /// The message that carries the step attempt this work belongs to: what
    /// every report of the step's subtree is counted against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<MessageId>,
    /// The message whose handler sent this one (the parent in the trace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<MessageId>,
    /// How many delegations deep it is within its run.
    #[serde(default)]
    pub depth: u16,
    /// When the sender stops waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Deadline>,
    /// Which attempt this is (1 for the first).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Trace context (on the wire it also travels as `traceparent`).
    #[serde(skip)]
    pub trace: TraceContext,
    /// The agents waiting on this request, each on the next.
    #[serde(default, skip_serializing_if = "CallChain::is_empty")]
    pub chain: CallChain,
    /// What remains of the run's limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Arc<Budget>>,
    /// For a run with a store (a durable run): what its journal already
    /// holds for the step (effects, answers). `None` outside durable runs,
    /// where effects simply run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<Arc<Recorded>>,
}

fn first_attempt() -> u32 {
    1
}

impl Default for CallContext {
    fn default() -> Self {
        Self {
            run: None,
            step: None,
            root: None,
            parent: None,
            depth: 0,
            deadline: None,
            attempt: 1,
            trace: TraceContext::default(),
            chain: CallChain::new(),
            budget: None,
            journal: None,
        }
    }
}

impl CallContext {
    /// The context of a step attempt of a run, traced under the run.
    pub fn for_step(run: RunId, step: StepId, attempt: u32) -> Self {
        Self::for_step_traced(run, step, attempt, Self::run_trace(run))
    }

    /// The trace context the steps of `run` are sent under: the current
    /// span's (the run's `invoke_workflow` span, when an OpenTelemetry layer
    /// is installed), else one rooted at the run's id. The orchestrator
    /// looks it up once per run.
    pub(crate) fn run_trace(run: RunId) -> TraceContext {
        crate::observe::spans::outgoing(TraceContext {
            trace_id: run.as_u128(),
            parent_span: 0,
        })
    }

    /// [`for_step`](Self::for_step) with the trace context already known.
    pub(crate) fn for_step_traced(
        run: RunId,
        step: StepId,
        attempt: u32,
        trace: TraceContext,
    ) -> Self {
        Self {
            run: Some(run),
            step: Some(step),
            attempt: attempt.max(1),
            trace,
            ..Self::default()
        }
    }

    /// With a deadline.
    #[must_use]
    pub fn deadline(mut self, deadline: Option<Deadline>) -> Self {
        self.deadline = deadline;
        self
    }

    /// With a budget.
    #[must_use]
    pub fn budget(mut self, budget: Arc<Budget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// For a durable run, with what its journal holds for the step.
    #[must_use]
    pub fn journal(mut self, recorded: Arc<Recorded>) -> Self {
        self.journal = Some(recorded);
        self
    }

    /// The context of the work a handler of message `id` sends: same run, step
    /// and limits, `id` as the parent, the chain and depth as given.
    pub(crate) fn child_of(&self, id: MessageId) -> Self {
        Self {
            run: self.run,
            step: self.step.clone(),
            root: self.root.or(self.run.map(|_| id)),
            parent: Some(id),
            depth: self.depth,
            deadline: self.deadline,
            attempt: self.attempt,
            trace: crate::observe::spans::outgoing(TraceContext {
                trace_id: self.trace.trace_id,
                parent_span: id.as_u128() as u64,
            }),
            chain: self.chain.clone(),
            budget: self.budget.clone(),
            journal: self.journal.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn child_inherits_run_and_roots_at_the_step_message() {
        let run = RunId::new();
        let step_msg = MessageId::new();
        let ctx = CallContext::for_step(run, StepId::new("a").unwrap(), 3);
        let child = ctx.child_of(step_msg);
        assert_eq!(child.root, Some(step_msg));
        assert_eq!(child.parent, Some(step_msg));
        assert_eq!(child.attempt, 3);
        let grandchild = child.child_of(MessageId::new());
        assert_eq!(grandchild.root, Some(step_msg));
        // Outside a run there is nothing to count reports against.
        assert_eq!(CallContext::default().child_of(step_msg).root, None);
    }

    #[test]
    fn round_trips_as_json_without_defaults() {
        let ctx = CallContext::default();
        assert_eq!(
            serde_json::to_string(&ctx).unwrap(),
            r#"{"depth":0,"attempt":1}"#
        );
        let back: CallContext = serde_json::from_str("{}").unwrap();
        assert_eq!(back, ctx);
    }
}
