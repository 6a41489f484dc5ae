//! What a developer hands the orchestrator, and what comes back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::budget::Usage;
use crate::envelope::Failure;
use crate::id::{AgentId, RunId, TenantId};
use crate::orchestrator::plan::{PlanError, StepId};
use crate::orchestrator::policy::RunPolicy;
use crate::orchestrator::state::{RunState, TraceNode};

/// A task: what to achieve, with what input, for which tenant, within which
/// limits.
///
/// ```
/// use coditect_orchestrator::orchestrator::TaskSpec;
/// let task = TaskSpec::new("summarise the release notes")
///     .input(serde_json::json!({"version": "1.2"}));
/// assert_eq!(task.goal, "summarise the release notes");
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// What to achieve, in words (planners read it).
    pub goal: String,
    /// The input data.
    #[serde(default)]
    pub input: serde_json::Value,
    /// The tenant the run belongs to.
    #[serde(default)]
    pub tenant: TenantId,
    /// The run's limits.
    #[serde(default)]
    pub policy: RunPolicy,
}

impl TaskSpec {
    /// A task with a goal, no input, the default tenant and policy.
    pub fn new(goal: impl Into<String>) -> Self {
        Self {
            goal: goal.into(),
            input: serde_json::Value::Null,
            tenant: TenantId::default(),
            policy: RunPolicy::default(),
        }
    }

    /// Sets the input.
    #[must_use]
    pub fn input(mut self, input: serde_json::Value) -> Self {
        self.input = input;
        self
    }

    /// Sets the tenant.
    #[must_use]
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = tenant;
        self
    }

    /// Sets the policy.
    #[must_use]
    pub fn policy(mut self, policy: RunPolicy) -> Self {
        self.policy = policy;
        self
    }
}

/// A finished run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    /// The run.
    pub run: RunId,
    /// The final result.
    pub output: serde_json::Value,
    /// Every step's result.
    pub steps: BTreeMap<StepId, serde_json::Value>,
    /// Who asked whom: steps, and under each the subtasks it caused.
    pub trace: Vec<TraceNode>,
    /// Tokens and money spent over the whole run.
    pub usage: Usage,
    /// Wall-clock time of the run.
    #[serde(with = "duration_ms")]
    pub duration: Duration,
    /// The run's full state.
    pub state: RunState,
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// Why a run ended without a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunErrorKind {
    /// The plan was refused before anything ran.
    InvalidPlan(PlanError),
    /// A step failed for good.
    StepFailed {
        /// The step.
        step: StepId,
        /// The agent that failed it, if one did.
        agent: Option<AgentId>,
        /// Why.
        failure: Failure,
    },
    /// The token budget was spent.
    TokenBudget {
        /// Tokens used.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// The cost budget was spent.
    CostBudget {
        /// Dollars spent.
        used: f64,
        /// The limit.
        limit: f64,
    },
    /// More units of work than the policy allows.
    StepBudget {
        /// Units used (steps plus delegations).
        used: usize,
        /// The limit.
        limit: usize,
    },
    /// The run's wall-clock deadline passed.
    Deadline,
    /// The run was cancelled.
    Cancelled,
    /// The orchestrator could not do its own work (transport down, say);
    /// the error's message says what went wrong.
    Internal,
    /// The run's journal could not be written (the store failed, or another
    /// orchestrator took the run over); what was journaled before stays, and
    /// the run can be resumed from it.
    Journal,
}

/// A run that ended without a result; the results of the steps that did finish
/// are kept in its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("run {run} failed: {message}")]
pub struct RunError {
    /// The run.
    pub run: RunId,
    /// What kind of failure.
    pub kind: RunErrorKind,
    /// What happened, for a person: names the step, the agent and the cause.
    pub message: String,
    /// The state when the run ended (finished steps keep their results).
    pub state: Box<RunState>,
}

impl RunError {
    /// The results of the steps that finished before the run failed.
    pub fn finished_steps(&self) -> BTreeMap<StepId, serde_json::Value> {
        self.state.outputs()
    }
}
