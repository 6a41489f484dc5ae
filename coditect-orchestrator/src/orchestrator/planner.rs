//! Planners turn a task into a plan, and may revise it after a failure.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::agent::AgentCard;
use crate::budget::Usage;
use crate::orchestrator::plan::{Plan, PlanError, StepId};
use crate::orchestrator::state::RunState;
use crate::orchestrator::task::TaskSpec;

/// What a planner knows when it plans, and where it reports what planning
/// cost.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PlanningContext {
    /// The cards of the agents that can do steps.
    pub cards: Vec<AgentCard>,
    spent: Arc<Mutex<Usage>>,
}

impl PlanningContext {
    /// A context with these cards.
    pub fn new(cards: Vec<AgentCard>) -> Self {
        Self {
            cards,
            spent: Arc::default(),
        }
    }

    /// Reports tokens and money spent planning (a model call, say): the run
    /// counts them against its budgets like any agent's.
    pub fn report_usage(&self, usage: Usage) {
        if let Ok(mut spent) = self.spent.lock() {
            *spent += usage;
        }
    }

    /// What was reported since the last call, and resets it.
    pub(crate) fn take_usage(&self) -> Usage {
        self.spent
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default()
    }
}

/// A step that failed for good, handed to [`Planner::replan`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StepFailure {
    /// The step.
    pub step: StepId,
    /// Why it failed.
    pub failure: crate::envelope::Failure,
}

/// Decomposes a task into a plan of steps over the available agents.
///
/// ```
/// use coditect_orchestrator::orchestrator::{Plan, Step, StepInput, StaticPlanner};
/// let planner = StaticPlanner::new(Plan::new([
///     Step::new("research", "research", StepInput::Goal),
///     Step::new("write", "writing", StepInput::output("research")),
/// ]));
/// # let _ = planner;
/// ```
#[async_trait]
pub trait Planner: Send + Sync + 'static {
    /// Makes the plan for a task.
    ///
    /// # Errors
    /// [`PlanError`] if no plan can be made.
    async fn plan(&self, task: &TaskSpec, ctx: &PlanningContext) -> Result<Plan, PlanError>;

    /// After a step failed for good: a revised plan for the remaining work, or
    /// `None` to let the run fail. Steps that already succeeded keep their
    /// results if the revised plan keeps their ids. The default gives up.
    ///
    /// # Errors
    /// [`PlanError`] if revising failed (the run then fails).
    async fn replan(
        &self,
        _task: &TaskSpec,
        _state: &RunState,
        _failure: &StepFailure,
        _ctx: &PlanningContext,
    ) -> Result<Option<Plan>, PlanError> {
        Ok(None)
    }
}

type Replan = dyn Fn(&RunState, &StepFailure) -> Option<Plan> + Send + Sync;

/// A planner whose plan is given in code.
pub struct StaticPlanner {
    plan: Plan,
    replan: Option<Box<Replan>>,
}

impl StaticPlanner {
    /// Always answers `plan`.
    pub fn new(plan: Plan) -> Self {
        Self { plan, replan: None }
    }

    /// Also revises the plan after a failure with `replan`.
    #[must_use]
    pub fn with_replan(
        mut self,
        replan: impl Fn(&RunState, &StepFailure) -> Option<Plan> + Send + Sync + 'static,
    ) -> Self {
        self.replan = Some(Box::new(replan));
        self
    }
}

impl std::fmt::Debug for StaticPlanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticPlanner")
            .field("steps", &self.plan.steps.len())
            .field("replan", &self.replan.is_some())
            .finish()
    }
}

#[async_trait]
impl Planner for StaticPlanner {
    async fn plan(&self, _task: &TaskSpec, _ctx: &PlanningContext) -> Result<Plan, PlanError> {
        Ok(self.plan.clone())
    }

    async fn replan(
        &self,
        _task: &TaskSpec,
        state: &RunState,
        failure: &StepFailure,
        _ctx: &PlanningContext,
    ) -> Result<Option<Plan>, PlanError> {
        Ok(self.replan.as_ref().and_then(|f| f(state, failure)))
    }
}
