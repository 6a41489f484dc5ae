//! The plan's steps as the driver handles them: adopting a (revised) plan,
//! where each step goes and with what budget, dispatching an attempt, and the
//! run's final output.

use std::sync::Arc;

use crate::body::Body;
use crate::budget::Budget;
use crate::call_context::CallContext;
use crate::envelope::{Deadline, Failure, FailureKind};
use crate::id::{MessageId, StepId};
use crate::orchestrator::driver::{Completion, Driver, InFlight, Stop};
use crate::orchestrator::event::RunEvent;
use crate::orchestrator::plan::{Graph, Plan, PlanError};
use crate::orchestrator::state::StepStatus;
use crate::orchestrator::task::RunErrorKind;
use crate::runtime::RequestOptions;

impl Driver {
    /// Takes the planner's first plan, checked.
    pub(crate) fn adopt_planned(&mut self, planned: Result<Plan, PlanError>) -> Result<(), Stop> {
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("no plan: {e}");
                return Err(Stop(RunErrorKind::InvalidPlan(e), msg));
            }
        };
        match plan.check(&self.routing.cards, self.task.policy.max_steps) {
            Ok(graph) => {
                self.adopt(plan, graph);
                Ok(())
            }
            Err(e) => {
                let msg = format!("invalid plan: {e}");
                Err(Stop(RunErrorKind::InvalidPlan(e), msg))
            }
        }
    }

    /// Takes a (new or revised) plan, already checked: records it and indexes
    /// it for scheduling and routing.
    pub(crate) fn adopt(&mut self, plan: Plan, graph: Graph) {
        let old_ids: Vec<StepId> = self
            .state
            .plan()
            .map(|p| p.steps.iter().map(|s| s.id.clone()).collect())
            .unwrap_or_default();
        self.record(RunEvent::PlanMade {
            revision: self.revision,
            plan,
        });
        self.revision += 1;
        self.index_plan(graph, &old_ids);
    }

    /// Indexes the current plan of a resumed run (recorded already).
    pub(crate) fn index(&mut self, graph: Graph) {
        self.index_plan(graph, &[]);
    }

    pub(crate) fn index_plan(&mut self, graph: Graph, old_ids: &[StepId]) {
        let rev = self.revision.saturating_sub(1);
        let Some(plan) = self.state.plans.last() else {
            return;
        };
        // Steps that succeeded under an earlier plan stay done.
        let any_done = self
            .state
            .steps
            .values()
            .any(|s| s.status == StepStatus::Succeeded);
        let steps = &self.state.steps;
        let done = |p: usize| {
            any_done
                && plan
                    .steps
                    .get(p)
                    .and_then(|s| steps.get(&s.id))
                    .is_some_and(|s| s.status == StepStatus::Succeeded)
        };
        self.schedule.adopt(rev, graph, old_ids, done);
        self.routing.adopt(plan);
    }

    /// The attempt number of a step's next dispatch: 1, or for a resumed
    /// run one past the last recorded.
    pub(crate) fn next_attempt(&self, pos: usize) -> u32 {
        if self.resumed.is_none() {
            return 1;
        }
        self.state
            .plan()
            .and_then(|p| p.steps.get(pos))
            .and_then(|s| self.state.steps.get(&s.id))
            .map_or(1, |s| s.attempts + 1)
    }

    /// The budget a step carries: what the run's policy leaves.
    pub(crate) fn budget(&mut self) -> Arc<Budget> {
        let policy = &self.task.policy;
        let used = self.state.usage;
        let budget = Budget {
            max_depth: policy.max_depth,
            max_fanout: policy.max_fanout,
            tokens_left: policy
                .max_tokens
                .map(|m| m.saturating_sub(used.total_tokens())),
            cost_left: policy.max_cost_usd.map(|m| (m - used.cost_usd).max(0.0)),
        };
        match &self.budget {
            Some(b) if **b == budget => b.clone(),
            _ => {
                let b = Arc::new(budget);
                self.budget = Some(b.clone());
                b
            }
        }
    }

    /// Sends attempt `attempt` of the step at `pos`.
    ///
    /// # Errors
    /// A [`Stop`] when no agent can take the step, or its input refers to an
    /// output that is not there (the step fails, naming the reference).
    pub(crate) fn dispatch(
        &mut self,
        pos: usize,
        attempt: u32,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
        let Some(step) = self.state.plan().and_then(|p| p.steps.get(pos)) else {
            return Err(Stop(RunErrorKind::Internal, format!("no step at {pos}")));
        };
        let id = step.id.clone();
        let Some(route) = self.routing.route(&self.inner, pos, &step.target) else {
            let msg = format!("step {id}: no agent can take it");
            let failure = Failure::new(FailureKind::NoSuchAgent, msg.clone());
            return Err(Stop(
                RunErrorKind::StepFailed {
                    step: id,
                    agent: None,
                    failure,
                },
                msg,
            ));
        };
        let outputs = |d: &StepId| self.state.steps.get(d).and_then(|s| s.output.clone());
        let input = match step
            .input
            .resolve(&self.task.goal, &self.task.input, &outputs)
        {
            Ok(input) => input,
            Err(missing) => {
                let msg = format!(
                    "step {id}: its input refers to the output of step {missing}, which has none"
                );
                let failure = Failure::new(FailureKind::UnresolvedInput, msg.clone());
                self.record(RunEvent::StepFailed {
                    step: id.clone(),
                    attempt,
                    failure: failure.clone(),
                    will_retry: false,
                });
                return Err(Stop(
                    RunErrorKind::StepFailed {
                        step: id,
                        agent: None,
                        failure,
                    },
                    msg,
                ));
            }
        };
        let message = MessageId::new();
        self.record(RunEvent::StepDispatched {
            step: id.clone(),
            attempt,
            message,
            to: route.to,
        });
        self.schedule.dispatched(pos, attempt);
        self.dispatch_unjournaled |= self.journal.is_some();
        self.intake.open(message, id.clone());
        let run = self.run;
        let trace = *self
            .trace
            .get_or_insert_with(|| CallContext::run_trace(run));
        let mut ctx = CallContext::for_step_traced(run, id.clone(), attempt, trace)
            .deadline(self.deadline.map(Deadline::at))
            .budget(self.budget());
        if let Some(journal) = &self.journal {
            ctx = ctx.journal(journal.recorded(&id));
        }
        let options = RequestOptions {
            timeout: self.task.policy.step_timeout,
            ..RequestOptions::default()
        };
        let runtime = self.inner.runtime.clone();
        let at = self.schedule.at(pos);
        let (dest, load) = (route.dest, route.load);
        // No cancellation token for the request: cancelling the run drops
        // this future, which withdraws the request and tells the agent to
        // stop, as a fired token would.
        in_flight.push(Box::pin(async move {
            let answer = runtime
                .call(dest, Body::new(input), ctx, Some(message), options)
                .await;
            Completion::Step {
                at,
                step: id,
                attempt,
                message,
                load,
                answer,
            }
        }));
        Ok(())
    }

    pub(crate) fn final_output(&self) -> serde_json::Value {
        let Some(plan) = self.state.plan() else {
            return serde_json::Value::Null;
        };
        let sinks: Vec<&StepId> = self
            .schedule
            .sinks()
            .iter()
            .filter_map(|&p| plan.steps.get(p))
            .map(|s| &s.id)
            .collect();
        self.state.result_with_sinks(plan, &sinks)
    }
}
