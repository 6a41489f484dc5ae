//! What happens in a run: the events the orchestrator records, the source of
//! truth of a run's state. (What participants report to it is the runtime's
//! own protocol, [`report`](crate::report).)

use serde::{Deserialize, Serialize};

use crate::budget::Usage;
use crate::envelope::Failure;
use crate::id::StepId;
use crate::id::{AgentId, MessageId, RunId};
use crate::journal::EffectKey;
use crate::orchestrator::plan::Plan;
use crate::orchestrator::state::RunStatus;
use crate::orchestrator::task::TaskSpec;

/// One thing that happened to a run. A run's state is the fold of its events
/// ([`RunState::apply`](crate::orchestrator::RunState::apply)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunEvent {
    /// The run began.
    RunStarted {
        /// The task.
        task: TaskSpec,
    },
    /// The planner made (or revised) the plan.
    PlanMade {
        /// 0 for the first plan, then 1, 2… for each revision.
        revision: u32,
        /// The plan.
        plan: Plan,
    },
    /// A step was sent to an agent.
    StepDispatched {
        /// The step.
        step: StepId,
        /// Which attempt (1 for the first).
        attempt: u32,
        /// The message carrying it.
        message: MessageId,
        /// Where it went (an agent id or a kind).
        to: String,
    },
    /// An agent began work on a step.
    StepStarted {
        /// The step.
        step: StepId,
        /// The message it handles.
        message: MessageId,
        /// The agent.
        agent: AgentId,
    },
    /// An agent working on a step reported progress.
    StepProgress {
        /// The step, if the agent works for one.
        step: Option<StepId>,
        /// The agent.
        agent: AgentId,
        /// What it reported.
        data: serde_json::Value,
    },
    /// A step finished with a result.
    StepSucceeded {
        /// The step.
        step: StepId,
        /// The attempt that succeeded.
        attempt: u32,
        /// The result.
        output: serde_json::Value,
    },
    /// An attempt at a step failed.
    StepFailed {
        /// The step.
        step: StepId,
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        failure: Failure,
        /// Whether it will be tried again.
        will_retry: bool,
    },
    /// A step is scheduled to be tried again.
    StepRetried {
        /// The step.
        step: StepId,
        /// The attempt about to be made.
        attempt: u32,
        /// The wait before it, in milliseconds.
        backoff_ms: u64,
    },
    /// An agent handed a subtask to another agent.
    Delegated {
        /// The step the work belongs to.
        step: Option<StepId>,
        /// The message whose handler delegated.
        parent: MessageId,
        /// The message carrying the subtask.
        message: MessageId,
        /// The agent that took it.
        agent: AgentId,
        /// Its delegation depth.
        depth: u16,
    },
    /// A delegated subtask finished.
    DelegationFinished {
        /// The message carrying the subtask.
        message: MessageId,
        /// Why it failed, if it did.
        failure: Option<Failure>,
    },
    /// Usage was spent somewhere in the run.
    UsageReported {
        /// The step it counts for.
        step: Option<StepId>,
        /// The agent that spent it.
        agent: AgentId,
        /// The message whose handler spent it (none: the orchestrator's
        /// planner), which places it in the delegation tree.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<MessageId>,
        /// The model that spent it, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<smol_str::SmolStr>,
        /// What was spent.
        usage: Usage,
    },
    /// A side effect's result was recorded (durable runs): when its step
    /// runs again, the effect returns this without running.
    EffectRecorded {
        /// The step it belongs to.
        step: Option<StepId>,
        /// The agent that made it.
        agent: AgentId,
        /// Its key.
        key: EffectKey,
        /// Its result.
        value: serde_json::Value,
    },
    /// A handler asked for input from outside the run, which waits (its
    /// status is paused) until someone
    /// [responds](crate::orchestrator::Orchestrator::respond).
    InputRequested {
        /// The request: the id to respond to.
        request: EffectKey,
        /// The step it belongs to.
        step: Option<StepId>,
        /// The agent asking.
        agent: AgentId,
        /// What it asks.
        prompt: String,
        /// The JSON Schema an answer must satisfy.
        schema: serde_json::Value,
    },
    /// A question was answered.
    InputProvided {
        /// The request answered.
        request: EffectKey,
        /// The answer (checked against the request's schema).
        value: serde_json::Value,
    },
    /// A question's wait ended without an answer (the run's input timeout).
    InputTimedOut {
        /// The request.
        request: EffectKey,
    },
    /// The run was resumed from its journal (after a crash, or to answer a
    /// question in another process).
    RunResumed {
        /// Who drives it now (the lease holder).
        holder: String,
        /// How many of its events were in the journal.
        from_seq: u64,
    },
    /// The run ended.
    RunFinished {
        /// How.
        status: RunStatus,
        /// The result, if it succeeded.
        output: Option<serde_json::Value>,
        /// What went wrong, if it did not.
        error: Option<String>,
    },
}

/// An event with its place in the run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEventRecord {
    /// The run.
    pub run: RunId,
    /// Its position in the run's event sequence, from 0.
    pub seq: u64,
    /// Milliseconds since the run started.
    pub at_ms: u64,
    /// What happened.
    pub event: RunEvent,
}
