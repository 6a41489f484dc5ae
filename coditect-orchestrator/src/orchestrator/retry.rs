//! When a step fails: retry it by policy, re-plan, or end the run; and the
//! token and cost budgets.

use crate::error::RequestError;
use crate::id::{AgentId, StepId};
use crate::orchestrator::driver::{Completion, Driver, InFlight, Stop};
use crate::orchestrator::event::RunEvent;
use crate::orchestrator::planner::{PlanningContext, StepFailure};
use crate::orchestrator::task::RunErrorKind;

impl Driver {
    /// An attempt at the step at `pos` failed.
    pub(crate) async fn on_step_error(
        &mut self,
        pos: usize,
        step: StepId,
        attempt: u32,
        error: RequestError,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
        if let RequestError::Cancelled(_) = error
            && self.cancel.is_cancelled()
        {
            return Err(Stop(
                RunErrorKind::Cancelled,
                "the run was cancelled".into(),
            ));
        }
        let mut failure = error.to_failure();
        if let RequestError::Timeout { .. } = error {
            failure.transient = true;
        }
        let retry = &self.task.policy.retry;
        if retry.should_retry(attempt, &failure) {
            let backoff = retry.backoff(attempt, rand::random::<f64>());
            self.record(RunEvent::StepFailed {
                step: step.clone(),
                attempt,
                failure,
                will_retry: true,
            });
            self.record(RunEvent::StepRetried {
                step: step.clone(),
                attempt: attempt + 1,
                backoff_ms: backoff.as_millis() as u64,
            });
            self.schedule.dispatched(pos, attempt + 1);
            let at = self.schedule.at(pos);
            in_flight.push(Box::pin(async move {
                tokio::time::sleep(backoff).await;
                Completion::RetryDue {
                    at,
                    step,
                    attempt: attempt + 1,
                }
            }));
            return Ok(());
        }
        self.record(RunEvent::StepFailed {
            step: step.clone(),
            attempt,
            failure: failure.clone(),
            will_retry: false,
        });
        if self.replans < self.task.policy.max_replans {
            self.replans += 1;
            let ctx = PlanningContext::new(self.routing.cards.clone());
            let sf = StepFailure {
                step: step.clone(),
                failure: failure.clone(),
            };
            let replanned = self
                .inner
                .planner
                .replan(&self.task, &self.state, &sf, &ctx)
                .await;
            self.tick();
            if let Some(stop) = self.planning_spent(&ctx) {
                return Err(stop);
            }
            match replanned {
                Ok(Some(plan)) => {
                    return match plan.check(&self.routing.cards, self.task.policy.max_steps) {
                        Ok(graph) => {
                            self.adopt(plan, graph);
                            Ok(())
                        }
                        Err(e) => Err(Stop(
                            RunErrorKind::InvalidPlan(e.clone()),
                            format!("the revised plan after step {step} failed is invalid: {e}"),
                        )),
                    };
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Stop(
                        RunErrorKind::InvalidPlan(e.clone()),
                        format!("re-planning after step {step} failed: {e}"),
                    ));
                }
            }
        }
        let agent = failure
            .agent
            .clone()
            .or_else(|| self.state.steps.get(&step).and_then(|s| s.agent.clone()));
        let at = agent
            .as_ref()
            .map_or("no agent".to_owned(), |a| format!("agent {a}"));
        let msg = format!("step {step} failed at {at}: {failure}");
        Err(Stop(
            RunErrorKind::StepFailed {
                step,
                agent,
                failure,
            },
            msg,
        ))
    }

    /// Records what planning cost, if anything, and checks the budgets.
    pub(crate) fn planning_spent(&mut self, ctx: &PlanningContext) -> Option<Stop> {
        let usage = ctx.take_usage();
        if usage.is_zero() {
            return None;
        }
        let agent = AgentId::new("planner", "orchestrator").ok()?;
        self.record(RunEvent::UsageReported {
            step: None,
            agent,
            message: None,
            model: None,
            usage,
        });
        self.check_budgets()
    }

    /// Ends the run if a token or cost budget is spent.
    pub(crate) fn check_budgets(&self) -> Option<Stop> {
        let used = self.state.usage;
        if let Some(limit) = self.task.policy.max_tokens
            && used.total_tokens() > limit
        {
            return Some(Stop(
                RunErrorKind::TokenBudget {
                    used: used.total_tokens(),
                    limit,
                },
                format!(
                    "the run used {} tokens; its budget is {limit}",
                    used.total_tokens()
                ),
            ));
        }
        if let Some(limit) = self.task.policy.max_cost_usd
            && used.cost_usd > limit
        {
            return Some(Stop(
                RunErrorKind::CostBudget {
                    used: used.cost_usd,
                    limit,
                },
                format!(
                    "the run cost ${:.4}; its budget is ${limit:.4}",
                    used.cost_usd
                ),
            ));
        }
        None
    }
}
