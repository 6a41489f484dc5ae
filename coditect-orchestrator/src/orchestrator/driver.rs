//! The loop that runs one run: plan, dispatch what is ready, take results
//! and reports, record every event in order, finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::AgentCard;
use crate::body::Body;
use crate::budget::Budget;
use crate::call_context::CallContext;
use crate::envelope::{Deadline, Failure, FailureKind, Payload};
use crate::error::RequestError;
use crate::id::{MessageId, RunId, StepId, Topic};
use crate::journal::EffectKey;
use crate::orchestrator::Inner;
use crate::orchestrator::dispatch::{LoadGuard, Routing};
use crate::orchestrator::durable::{self, Journal, StoredRun};
use crate::orchestrator::event::{RunEvent, RunEventRecord};
use crate::orchestrator::intake::Intake;
use crate::orchestrator::plan::{Graph, Plan};
use crate::orchestrator::planner::PlanningContext;
use crate::orchestrator::schedule::{At, Schedule};
use crate::orchestrator::state::{RunState, RunStatus, StepStatus};
use crate::orchestrator::task::{RunError, RunErrorKind, RunOutcome, TaskSpec};
use crate::report::{Signal, Tally};
use crate::runtime::{Answer, RequestOptions};
use crate::transport::{DeliveryStream, Route};

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// What ends a run early: its kind and what to tell a person.
pub(crate) struct Stop(pub(crate) RunErrorKind, pub(crate) String);

/// One step attempt answered, a retry due, or a wait for reports over.
pub(crate) enum Completion {
    Step {
        at: At,
        step: StepId,
        attempt: u32,
        message: MessageId,
        load: Option<LoadGuard>,
        answer: Answer,
    },
    RetryDue {
        at: At,
        step: StepId,
        attempt: u32,
    },
    ReportsDue {
        message: MessageId,
    },
    /// A question's wait for its answer is over (durable runs).
    InputDue {
        request: EffectKey,
    },
}

pub(crate) type InFlight = FuturesUnordered<Pin<Box<dyn Future<Output = Completion> + Send>>>;

/// A step attempt answered whose reports are not all in yet.
struct Parked {
    at: At,
    step: StepId,
    attempt: u32,
    result: Result<Body, RequestError>,
    tally: Option<Tally>,
}

pub(crate) struct Driver {
    pub(crate) inner: Arc<Inner>,
    pub(crate) run: RunId,
    pub(crate) task: TaskSpec,
    pub(crate) cancel: CancellationToken,
    events: broadcast::Sender<RunEventRecord>,
    /// Someone may still read the events (once nobody does, nobody can again).
    publishing: bool,
    pub(crate) state: RunState,
    seq: u64,
    started: Instant,
    /// When the current piece of work began, in ms since the run started: the
    /// time of the events it records (read once per wake-up, not per event).
    now_ms: u64,
    pub(crate) schedule: Schedule,
    pub(crate) routing: Routing,
    intake: Intake,
    parked: FastMap<MessageId, Parked>,
    /// Events released by the intake, waiting to be recorded.
    released: Vec<RunEvent>,
    /// The budget handed to the last step, reused while it is unchanged.
    budget: Option<Arc<Budget>>,
    deadline: Option<Instant>,
    pub(crate) replans: u32,
    revision: u32,
    /// The run's journal, for a run with a store.
    pub(crate) journal: Option<Box<Journal>>,
    /// Picked up from a journal: attempts continue from the recorded ones.
    resumed: Option<Resumed>,
}

/// What a resumed run starts from.
struct Resumed {
    from_seq: u64,
    answer: Option<(EffectKey, serde_json::Value)>,
}

impl Driver {
    pub(crate) fn new(
        inner: Arc<Inner>,
        run: RunId,
        task: TaskSpec,
        cards: Vec<AgentCard>,
        cancel: CancellationToken,
        events: broadcast::Sender<RunEventRecord>,
    ) -> Self {
        let routing = Routing::new(&inner, cards);
        Self {
            inner,
            run,
            task,
            cancel,
            events,
            publishing: true,
            state: RunState::new(run),
            seq: 0,
            started: Instant::now(),
            now_ms: 0,
            schedule: Schedule::default(),
            routing,
            intake: Intake::default(),
            parked: FastMap::default(),
            released: Vec::new(),
            budget: None,
            deadline: None,
            replans: 0,
            revision: 0,
            journal: None,
            resumed: None,
        }
    }

    /// The driver of a stored run: its state is the fold of its journal.
    pub(crate) fn resumed(
        mut self,
        stored: StoredRun,
        journal: Journal,
        answer: Option<(EffectKey, serde_json::Value)>,
    ) -> Self {
        let from_seq = stored.events.len() as u64;
        self.seq = from_seq;
        self.revision = stored.state.plans.len() as u32;
        self.state = stored.state;
        self.journal = Some(Box::new(journal));
        self.resumed = Some(Resumed { from_seq, answer });
        self
    }

    /// Reads the clock for the events of the work about to be done.
    pub(crate) fn tick(&mut self) {
        self.now_ms = self.started.elapsed().as_millis() as u64;
    }

    /// Records one event: the next in the run's sequence.
    pub(crate) fn record(&mut self, event: RunEvent) {
        let record = RunEventRecord {
            run: self.run,
            seq: self.seq,
            at_ms: self.now_ms,
            event,
        };
        self.seq += 1;
        crate::observe::metrics::on_event(&record);
        if let Some(journal) = &mut self.journal {
            journal.push(&record);
        }
        if self.publishing {
            if self.events.receiver_count() > 0 {
                self.state.apply(&record);
                if self.events.send(record).is_err() {
                    self.publishing = false;
                }
                return;
            }
            // Receivers are only made from receivers: none now, none ever.
            self.publishing = false;
        }
        self.state.apply_owned(record);
    }

    /// Records the events the intake released.
    fn record_released(&mut self) {
        if self.released.is_empty() {
            return;
        }
        let mut released = std::mem::take(&mut self.released);
        for e in released.drain(..) {
            self.record(e);
        }
        self.released = released;
    }

    /// Ends the run without a result, after recording the reports already
    /// here: `RunFinished` is its last event.
    async fn fail(
        mut self,
        Stop(kind, message): Stop,
        signals: Option<&mut DeliveryStream>,
    ) -> Result<RunOutcome, RunError> {
        self.cancel.cancel();
        self.tick();
        if let Some(signals) = signals {
            self.drain_ready(signals);
        }
        let status = if matches!(kind, RunErrorKind::Cancelled) {
            RunStatus::Cancelled
        } else {
            RunStatus::Failed
        };
        self.record(RunEvent::RunFinished {
            status,
            output: None,
            error: Some(message.clone()),
        });
        // A journal that failed is not written again (its error is the run's).
        if let Some(mut journal) = self.journal.take()
            && !matches!(kind, RunErrorKind::Journal)
            && let Err(Stop(_, why)) = journal.close(status, message.clone()).await
        {
            tracing::warn!(run = %self.run, error = %why, "the run's end could not be journaled");
        }
        Err(RunError {
            run: self.run,
            kind,
            message,
            state: Box::new(self.state),
        })
    }

    /// Takes every report that is already here (budgets are not checked: the
    /// run is ending either way).
    fn drain_ready(&mut self, signals: &mut DeliveryStream) {
        while let Some(Some(delivery)) = signals.next().now_or_never() {
            if let Some(signal) = decode(self.run, delivery.envelope.payload) {
                self.intake.signal(signal, &mut self.released);
            }
        }
        self.record_released();
    }

    pub(crate) async fn drive(mut self) -> Result<RunOutcome, RunError> {
        if self.resumed.is_none()
            && let Some(store) = self.inner.durable.store.clone()
        {
            match durable::open_new(&self.inner, store, self.run, &self.task).await {
                Ok(journal) => self.journal = Some(Box::new(journal)),
                Err(e) => {
                    return self
                        .fail(Stop(RunErrorKind::Journal, e.to_string()), None)
                        .await;
                }
            }
        }
        match &self.resumed {
            None => self.record(RunEvent::RunStarted {
                task: self.task.clone(),
            }),
            Some(r) => {
                let holder = self.inner.durable.holder.clone();
                let from_seq = r.from_seq;
                self.record(RunEvent::RunResumed { holder, from_seq });
            }
        }
        let runtime = self.inner.runtime.clone();
        if &self.task.tenant != runtime.tenant() {
            let msg = format!(
                "the task is for tenant {} but the runtime serves tenant {}",
                self.task.tenant,
                runtime.tenant()
            );
            return self.fail(Stop(RunErrorKind::Internal, msg), None).await;
        }
        // Listen for what participants report before anything is dispatched.
        let route = Route::topic(runtime.tenant().clone(), Topic::for_run(self.run));
        let mut signals = match runtime.subscribe(route, 1024).await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("cannot listen to the run's signals: {e}");
                return self.fail(Stop(RunErrorKind::Internal, msg), None).await;
            }
        };
        if let Some(stop) = self.resume_answer().await {
            return self.fail(stop, Some(&mut signals)).await;
        }
        if let Some(plan) = self.resumed.as_ref().and(self.state.plan().cloned()) {
            // A resumed run goes on with the plan it had.
            match plan.check(&self.routing.cards, self.task.policy.max_steps) {
                Ok(graph) => self.index(graph),
                Err(e) => {
                    let msg = format!("the stored plan is no longer valid: {e}");
                    return self
                        .fail(Stop(RunErrorKind::InvalidPlan(e), msg), Some(&mut signals))
                        .await;
                }
            }
        } else {
            let ctx = PlanningContext::new(self.routing.cards.clone());
            let planned = self
                .inner
                .planner
                .plan(&self.task, &ctx)
                .instrument(crate::observe::spans::plan(self.run))
                .await;
            self.tick();
            if let Some(stop) = self.planning_spent(&ctx) {
                return self.fail(stop, Some(&mut signals)).await;
            }
            if let Err(stop) = self.adopt_planned(planned) {
                return self.fail(stop, Some(&mut signals)).await;
            }
        }
        self.run_loop(signals).await
    }

    /// Takes the planner's first plan, checked.
    fn adopt_planned(
        &mut self,
        planned: Result<Plan, crate::orchestrator::plan::PlanError>,
    ) -> Result<(), Stop> {
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

    /// Dispatches, takes results and reports, until the run is done.
    async fn run_loop(mut self, mut signals: DeliveryStream) -> Result<RunOutcome, RunError> {
        self.deadline = self.task.policy.deadline.map(|d| self.started + d);
        let deadline = self.deadline;
        // The token's own future takes two locks each time it is polled, and
        // the loop polls it on every wake-up: a small task watches the token
        // instead and reports through a oneshot, which is a lock-free poll.
        let mut cancelled = watch_cancellation(self.cancel.clone());
        let deadline_passed = async move {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(deadline_passed);
        let mut in_flight: InFlight = FuturesUnordered::new();
        let (mut requests, mut control) = match self.journal.as_mut() {
            Some(j) => (j.requests.take(), j.control.take()),
            None => (None, None),
        };
        loop {
            // A step's result is durable before anything that depends on it
            // is dispatched.
            if self.journal_dirty()
                && self.schedule.has_ready()
                && let Err(stop) = self.flush().await
            {
                drop(in_flight);
                return self.fail(stop, Some(&mut signals)).await;
            }
            while let Some(pos) = self.schedule.next_ready() {
                let attempt = self.next_attempt(pos);
                if let Err(stop) = self.dispatch(pos, attempt, &mut in_flight) {
                    drop(in_flight);
                    return self.fail(stop, Some(&mut signals)).await;
                }
            }
            if self.schedule.idle() && self.parked.is_empty() && in_flight.is_empty() {
                break;
            }
            let stop: Option<Stop> = tokio::select! {
                biased;
                _ = &mut cancelled => Some(Stop(RunErrorKind::Cancelled, "the run was cancelled".into())),
                () = &mut deadline_passed => Some(Stop(
                    RunErrorKind::Deadline,
                    format!("the run's deadline of {:?} passed", self.task.policy.deadline.unwrap_or_default()),
                )),
                Some(delivery) = signals.next() => {
                    self.tick();
                    self.on_signal(delivery.envelope.payload, &mut in_flight).await.err()
                }
                Some(delivery) = next_delivery(&mut requests) => {
                    self.on_journal_request(delivery.envelope, &mut in_flight).await.err()
                }
                Some(c) = next_control(&mut control) => {
                    self.tick();
                    self.on_control(c).await.err()
                }
                Some(done) = in_flight.next() => {
                    self.tick();
                    self.on_completion(done, &mut signals, &mut in_flight).await.err()
                }
            };
            if let Some(stop) = stop {
                drop(in_flight);
                return self.fail(stop, Some(&mut signals)).await;
            }
        }
        // Late reports already here (usage of attempts that timed out).
        self.tick();
        self.drain_ready(&mut signals);
        if let Some(stop) = self.check_budgets() {
            return self.fail(stop, None).await;
        }
        let output = self.final_output();
        self.record(RunEvent::RunFinished {
            status: RunStatus::Succeeded,
            output: Some(output.clone()),
            error: None,
        });
        if let Some(mut journal) = self.journal.take()
            && let Err(stop) = journal
                .close(RunStatus::Succeeded, "succeeded".into())
                .await
        {
            return self.fail(stop, None).await;
        }
        Ok(RunOutcome {
            run: self.run,
            output,
            steps: self.state.outputs(),
            trace: self.state.trace_tree(),
            usage: self.state.usage,
            duration: self.started.elapsed(),
            state: self.state,
        })
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
    fn index(&mut self, graph: Graph) {
        self.index_plan(graph, &[]);
    }

    fn index_plan(&mut self, graph: Graph, old_ids: &[StepId]) {
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
    fn next_attempt(&self, pos: usize) -> u32 {
        if self.resumed.is_none() {
            return 1;
        }
        self.state
            .plan()
            .and_then(|p| p.steps.get(pos))
            .and_then(|s| self.state.steps.get(&s.id))
            .map_or(1, |s| s.attempts + 1)
    }

    /// Records the answer a resumed run was resumed with.
    async fn resume_answer(&mut self) -> Option<Stop> {
        let (request, value) = self.resumed.as_mut()?.answer.take()?;
        let (done, _rx) = oneshot::channel();
        self.on_control(durable::Control::Respond {
            request,
            value,
            done,
        })
        .await
        .err()
    }

    /// The budget a step carries: what the run's policy leaves.
    fn budget(&mut self) -> Arc<Budget> {
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
        self.intake.open(message, id.clone());
        let mut ctx = CallContext::for_step(self.run, id.clone(), attempt)
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

    async fn on_completion(
        &mut self,
        done: Completion,
        signals: &mut DeliveryStream,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
        match done {
            Completion::RetryDue { at, step, attempt } => {
                match self.schedule.locate(at, &step) {
                    Some(pos) => self.dispatch(pos, attempt, in_flight),
                    None => {
                        // The step left the plan while it waited.
                        self.schedule.drop_orphan(&step);
                        Ok(())
                    }
                }
            }
            Completion::InputDue { request } => self.on_input_due(request).await,
            Completion::ReportsDue { message } => match self.parked.remove(&message) {
                Some(parked) => self.settle(message, parked, in_flight).await,
                None => Ok(()),
            },
            Completion::Step {
                at,
                step,
                attempt,
                message,
                load,
                answer,
            } => {
                drop(load);
                let Answer { result, tally } = answer;
                if self.schedule.finished(at, &step, attempt).is_none() {
                    // An attempt the run no longer waits for.
                    self.intake
                        .close(&message, tally.as_ref(), None, &mut Vec::new());
                    return Ok(());
                }
                let parked = Parked {
                    at,
                    step,
                    attempt,
                    result,
                    tally,
                };
                // Reports usually travel ahead of the reply; take those here.
                self.drain_ready(signals);
                let expected = parked.tally.as_ref().map_or(0, |t| t.reports);
                if self.intake.expect(&message, expected) {
                    return self.settle(message, parked, in_flight).await;
                }
                self.parked.insert(message, parked);
                let wait = self.task.policy.report_wait;
                in_flight.push(Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    Completion::ReportsDue { message }
                }));
                Ok(())
            }
        }
    }

    /// Records a step attempt's result, its reports all in (or given up on).
    async fn settle(
        &mut self,
        message: MessageId,
        parked: Parked,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
        let Parked {
            at,
            step,
            attempt,
            result,
            tally,
        } = parked;
        let failed_at = result.as_ref().err().and_then(|e| match e {
            RequestError::Failed(f) => f.agent.clone(),
            _ => None,
        });
        self.intake.close(
            &message,
            tally.as_ref(),
            failed_at.as_ref(),
            &mut self.released,
        );
        self.record_released();
        if let Some(stop) = self.check_budgets() {
            return Err(stop);
        }
        let pos = self.schedule.locate(at, &step);
        let result = result.and_then(|body| {
            body.to_json_value().map_err(|e| {
                RequestError::Failed(Failure::new(
                    FailureKind::BadOutput,
                    format!("step {step}: its result cannot be encoded as JSON: {e}"),
                ))
            })
        });
        match result {
            Ok(output) => {
                self.record(RunEvent::StepSucceeded {
                    step,
                    attempt,
                    output,
                });
                if let Some(p) = pos {
                    self.schedule.release(p);
                }
                Ok(())
            }
            Err(e) => match pos {
                Some(p) => self.on_step_error(p, step, attempt, e, in_flight).await,
                None => Ok(()),
            },
        }
    }

    async fn on_signal(&mut self, payload: Payload, in_flight: &mut InFlight) -> Result<(), Stop> {
        let Some(signal) = decode(self.run, payload) else {
            return Ok(());
        };
        let complete = self.intake.signal(signal, &mut self.released);
        let delegated = self
            .released
            .iter()
            .any(|e| matches!(e, RunEvent::Delegated { .. }));
        let spent = self
            .released
            .iter()
            .any(|e| matches!(e, RunEvent::UsageReported { .. }));
        self.record_released();
        if delegated {
            let limit = self.task.policy.max_steps;
            if self.state.units > limit {
                return Err(Stop(
                    RunErrorKind::StepBudget {
                        used: self.state.units,
                        limit,
                    },
                    format!(
                        "the run used {} units of work (steps and delegations); the policy allows {limit}",
                        self.state.units
                    ),
                ));
            }
        }
        if spent && let Some(stop) = self.check_budgets() {
            return Err(stop);
        }
        if let Some(message) = complete
            && let Some(parked) = self.parked.remove(&message)
        {
            return self.settle(message, parked, in_flight).await;
        }
        Ok(())
    }

    fn final_output(&self) -> serde_json::Value {
        let Some(plan) = self.state.plan() else {
            return serde_json::Value::Null;
        };
        let output_of = |id: &StepId| {
            self.state
                .steps
                .get(id)
                .and_then(|s| s.output.clone())
                .unwrap_or(serde_json::Value::Null)
        };
        if let Some(out) = &plan.output {
            return output_of(out);
        }
        let sinks = self.schedule.sinks();
        let mut steps = sinks.iter().filter_map(|&p| plan.steps.get(p));
        if let [_] = sinks {
            return steps.next().map(|s| output_of(&s.id)).unwrap_or_default();
        }
        // Gathered at their exact size first: the map sorts its input in a
        // Vec, which would otherwise grow by doubling.
        let mut entries = Vec::with_capacity(sinks.len());
        entries.extend(steps.map(|s| (s.id.as_str().to_owned(), output_of(&s.id))));
        serde_json::Value::Object(entries.into_iter().collect())
    }
}

/// The next delivery of a stream that may not be there (then: never).
async fn next_delivery(stream: &mut Option<DeliveryStream>) -> Option<crate::transport::Delivery> {
    match stream {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// The next message of a channel that may not be there (then: never).
async fn next_control(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<durable::Control>>,
) -> Option<durable::Control> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A message on the run's topic as a report of this run, if it is one.
fn decode(run: RunId, payload: Payload) -> Option<Signal> {
    let Payload::Message(body) = payload else {
        return None;
    };
    match body.take::<Signal>() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(%run, error = %e, "a message on the run's topic is not a report; ignored");
            None
        }
    }
}

/// Resolves once `token` fires (or its watcher is gone). The watcher task ends
/// with the run: when the receiver is dropped, or when the token fires.
fn watch_cancellation(token: CancellationToken) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    if token.is_cancelled() {
        let _ = tx.send(());
        return rx;
    }
    let mut tx = tx;
    tokio::spawn(async move {
        tokio::select! {
            () = token.cancelled() => {
                let _ = tx.send(());
            }
            () = tx.closed() => {}
        }
    });
    rx
}
