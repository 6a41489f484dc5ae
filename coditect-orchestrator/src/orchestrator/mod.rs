//! The orchestrator: takes a task, gets a plan, dispatches every ready step in
//! parallel to an agent that can do it, follows what agents delegate, enforces
//! the run's limits, and returns one result — streaming what happens as it goes.
//!
//! It works the same over any [`Transport`](crate::Transport): steps are
//! requests through the [`Runtime`], and what agents report (progress, usage,
//! delegations) arrives as [`Signal`]s on the run's topic.

// A run's error is returned once per run, never on a hot path; its size buys
// a complete account of the failure (kind, message and the run's state).
#![allow(clippy::result_large_err)]

mod event;
mod plan;
mod planner;
mod policy;
mod router;
mod state;
mod task;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use event::{RunEvent, RunEventRecord, Signal};
pub use plan::{Plan, PlanError, Step, StepId, StepInput, StepTarget};
pub use planner::{Planner, PlanningContext, StaticPlanner, StepFailure};
pub use policy::{RetryOn, RetryPolicy, RunPolicy};
pub use router::{LeastLoaded, Router};
pub use state::{RunState, RunStatus, StepState, StepStatus, TraceEntry, TraceNode};
pub use task::{RunError, RunErrorKind, RunOutcome, TaskSpec};

use crate::agent::AgentCard;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use crate::body::Body;
use crate::budget::Budget;
use crate::envelope::{Deadline, Destination, Failure, Payload};
use crate::error::RequestError;
use crate::id::{AgentId, AgentKind, MessageId, RunId, Topic};
use crate::runtime::Runtime;
use crate::runtime::call::{Origin, RequestOptions};
use crate::transport::{Route, TransportExt};

/// The topic on which a run's signals travel: `run.<run id>`.
pub fn run_topic(run: RunId) -> Topic {
    Topic::for_run(run)
}

/// Runs tasks over the agents of a runtime.
///
/// ```
/// use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
/// use coditect_orchestrator::orchestrator::{Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec};
///
/// struct Upper;
/// impl Agent for Upper {
///     type Input = String;
///     type Output = String;
///     async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
///         Ok(s.to_uppercase())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
/// runtime.kind("upper").capability("shout").register(|_| Upper).await?;
/// let plan = Plan::new([
///     Step::new("a", "shout", StepInput::Goal),
///     Step::new("b", "shout", StepInput::output("a")),
/// ]);
/// let orchestrator = Orchestrator::new(runtime.clone(), StaticPlanner::new(plan));
/// let outcome = orchestrator.run(TaskSpec::new("hello")).await?;
/// assert_eq!(outcome.output, "HELLO");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: Runtime,
    planner: Arc<dyn Planner>,
    router: Arc<dyn Router>,
    extra_cards: Vec<AgentCard>,
    load: Mutex<HashMap<AgentKind, usize>>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("runtime", &self.inner.runtime)
            .finish_non_exhaustive()
    }
}

impl Orchestrator {
    /// An orchestrator dispatching through `runtime`, planning with `planner`.
    pub fn new(runtime: Runtime, planner: impl Planner) -> Self {
        Self::with_planner(runtime, Arc::new(planner))
    }

    /// [`new`](Self::new) with a shared planner.
    pub fn with_planner(runtime: Runtime, planner: Arc<dyn Planner>) -> Self {
        Self {
            inner: Arc::new(Inner {
                runtime,
                planner,
                router: Arc::new(LeastLoaded),
                extra_cards: Vec::new(),
                load: Mutex::new(HashMap::default()),
            }),
        }
    }

    /// Uses another router to choose among agents offering a capability.
    #[must_use]
    pub fn router(self, router: impl Router) -> Self {
        self.rebuild(|i| i.router = Arc::new(router))
    }

    /// Adds the cards of agents hosted elsewhere (other processes on the same
    /// bus), so plans may use them.
    #[must_use]
    pub fn cards(self, cards: Vec<AgentCard>) -> Self {
        self.rebuild(|i| i.extra_cards.extend(cards))
    }

    fn rebuild(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Inner {
            runtime: self.inner.runtime.clone(),
            planner: self.inner.planner.clone(),
            router: self.inner.router.clone(),
            extra_cards: self.inner.extra_cards.clone(),
            load: Mutex::new(HashMap::default()),
        };
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Every card plans may use: the runtime's kinds and the added ones.
    pub fn all_cards(&self) -> Vec<AgentCard> {
        let mut cards = self.inner.runtime.cards();
        for c in &self.inner.extra_cards {
            if !cards.iter().any(|k| k.kind == c.kind) {
                cards.push(c.clone());
            }
        }
        cards
    }

    /// Runs a task to the end.
    ///
    /// # Errors
    /// [`RunError`] naming what ended the run (an invalid plan, the step that
    /// failed with its agent and cause, a budget, the deadline, cancellation);
    /// its state keeps the results of the steps that finished.
    pub async fn run(&self, task: TaskSpec) -> Result<RunOutcome, RunError> {
        self.start(task).outcome().await
    }

    /// Starts a task and returns a handle: its events as they happen, a way to
    /// cancel it, and its outcome.
    pub fn start(&self, task: TaskSpec) -> RunHandle {
        let run = RunId::new();
        let (events, rx) = broadcast::channel(4096);
        let cancel = CancellationToken::new();
        let (done_tx, done_rx) = oneshot::channel();
        let inner = self.inner.clone();
        let cards = self.all_cards();
        let token = cancel.clone();
        let span = tracing::info_span!("coditect.run", run = %run, tenant = %task.tenant, goal = %task.goal);
        tokio::spawn(
            async move {
                let result = Driver::new(inner, run, task, cards, token, events)
                    .drive()
                    .await;
                let _ = done_tx.send(result);
            }
            .instrument(span),
        );
        RunHandle {
            run,
            events: Some(rx),
            resubscribe: None,
            cancel,
            outcome: done_rx,
        }
    }
}

/// A run in progress.
pub struct RunHandle {
    run: RunId,
    events: Option<broadcast::Receiver<RunEventRecord>>,
    resubscribe: Option<broadcast::Receiver<RunEventRecord>>,
    cancel: CancellationToken,
    outcome: oneshot::Receiver<Result<RunOutcome, RunError>>,
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

    /// Waits for the run to end.
    ///
    /// # Errors
    /// As [`Orchestrator::run`].
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
                kind: RunErrorKind::Internal {
                    message: "the run's task ended without an outcome".into(),
                },
                message: "the run's task ended without an outcome".into(),
                state: Box::new(RunState::new(run)),
            }),
        }
    }
}

/// One step attempt in flight, or a retry that is due.
enum Completion {
    Step {
        step: StepId,
        attempt: u32,
        kind: Option<AgentKind>,
        result: Result<Body, RequestError>,
    },
    RetryDue {
        step: StepId,
        attempt: u32,
    },
}

type InFlight = FuturesUnordered<Pin<Box<dyn std::future::Future<Output = Completion> + Send>>>;

struct Driver {
    inner: Arc<Inner>,
    run: RunId,
    task: TaskSpec,
    cards: Vec<AgentCard>,
    cancel: CancellationToken,
    events: broadcast::Sender<RunEventRecord>,
    state: RunState,
    seq: u64,
    started: Instant,
    /// Unfinished dependencies of each step of the current plan.
    waiting_on: HashMap<StepId, usize>,
    dependents: HashMap<StepId, Vec<StepId>>,
    ready: VecDeque<StepId>,
    in_flight: HashMap<StepId, u32>,
    /// Where each step of the current plan is in it.
    index: HashMap<StepId, usize>,
    replans: u32,
    revision: u32,
}

enum Stop {
    Fail(RunErrorKind, String),
}

impl Driver {
    fn new(
        inner: Arc<Inner>,
        run: RunId,
        task: TaskSpec,
        cards: Vec<AgentCard>,
        cancel: CancellationToken,
        events: broadcast::Sender<RunEventRecord>,
    ) -> Self {
        Self {
            inner,
            run,
            task,
            cards,
            cancel,
            events,
            state: RunState::new(run),
            seq: 0,
            started: Instant::now(),
            waiting_on: HashMap::default(),
            dependents: HashMap::default(),
            ready: VecDeque::new(),
            in_flight: HashMap::default(),
            index: HashMap::default(),
            replans: 0,
            revision: 0,
        }
    }

    fn record(&mut self, event: RunEvent) {
        let record = RunEventRecord {
            run: self.run,
            seq: self.seq,
            at_ms: self.started.elapsed().as_millis() as u64,
            event,
        };
        self.seq += 1;
        self.state.apply(&record);
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(record);
        }
    }

    fn fail(mut self, kind: RunErrorKind, message: String) -> Result<RunOutcome, RunError> {
        self.cancel.cancel();
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
        Err(RunError {
            run: self.run,
            kind,
            message,
            state: Box::new(self.state),
        })
    }

    async fn drive(mut self) -> Result<RunOutcome, RunError> {
        self.record(RunEvent::RunStarted {
            task: self.task.clone(),
        });
        let runtime = self.inner.runtime.clone();
        if &self.task.tenant != runtime.tenant() {
            let msg = format!(
                "the task is for tenant {} but the runtime serves tenant {}",
                self.task.tenant,
                runtime.tenant()
            );
            return self.fail(
                RunErrorKind::Internal {
                    message: msg.clone(),
                },
                msg,
            );
        }
        // Listen for what participants report before anything is dispatched.
        let route = Route::topic(runtime.tenant().clone(), run_topic(self.run));
        let mut signals = match runtime.transport().subscribe(route, 1024).await {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("cannot listen to the run's signals: {e}");
                return self.fail(
                    RunErrorKind::Internal {
                        message: msg.clone(),
                    },
                    msg,
                );
            }
        };
        let ctx = PlanningContext::new(self.cards.clone());
        let planned = self.inner.planner.plan(&self.task, &ctx).await;
        if let Some(Stop::Fail(kind, msg)) = self.planning_spent(&ctx) {
            return self.fail(kind, msg);
        }
        let plan = match planned {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("no plan: {e}");
                return self.fail(RunErrorKind::InvalidPlan(e), msg);
            }
        };
        if let Err(e) = plan.validate(&self.cards, self.task.policy.max_steps) {
            let msg = format!("invalid plan: {e}");
            return self.fail(RunErrorKind::InvalidPlan(e), msg);
        }
        self.adopt(plan);

        let deadline = self.task.policy.deadline.map(|d| self.started + d);
        let mut in_flight: InFlight = FuturesUnordered::new();
        loop {
            while let Some(step) = self.ready.pop_front() {
                if let Some(fut) = self.dispatch(&step, 1, deadline) {
                    in_flight.push(fut);
                } else {
                    return self.fail_unroutable(&step);
                }
            }
            if self.in_flight.is_empty() && in_flight.is_empty() {
                break;
            }
            let deadline_sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let stop: Option<Stop> = tokio::select! {
                biased;
                () = self.cancel.cancelled() => Some(Stop::Fail(RunErrorKind::Cancelled, "the run was cancelled".into())),
                () = deadline_sleep => Some(Stop::Fail(
                    RunErrorKind::Deadline,
                    format!("the run's deadline of {:?} passed", self.task.policy.deadline.unwrap_or_default()),
                )),
                Some(delivery) = signals.next() => {
                    self.on_signal(delivery.envelope.payload)
                }
                Some(done) = in_flight.next() => {
                    self.on_completion(done, deadline, &mut in_flight).await.err()
                }
            };
            if let Some(Stop::Fail(kind, msg)) = stop {
                drop(in_flight);
                return self.fail(kind, msg);
            }
        }
        // Signals already on their way (the trace of the last steps).
        while let Some(Some(delivery)) = signals.now_or_never_opt() {
            if let Some(Stop::Fail(kind, msg)) = self.on_signal(delivery.envelope.payload) {
                return self.fail(kind, msg);
            }
        }
        let output = self.final_output();
        self.record(RunEvent::RunFinished {
            status: RunStatus::Succeeded,
            output: Some(output.clone()),
            error: None,
        });
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

    fn fail_unroutable(self, step: &StepId) -> Result<RunOutcome, RunError> {
        let msg = format!("step {step}: no agent can take it");
        self.fail(
            RunErrorKind::StepFailed {
                step: step.clone(),
                agent: None,
                failure: Failure::new(crate::envelope::FailureKind::NoSuchAgent, msg.clone()),
            },
            msg,
        )
    }

    /// Takes a (new or revised) plan: records it and works out what is ready.
    fn adopt(&mut self, plan: Plan) {
        let plan = Arc::new(plan);
        self.record(RunEvent::PlanMade {
            revision: self.revision,
            plan: plan.clone(),
        });
        self.revision += 1;
        self.waiting_on.clear();
        self.dependents.clear();
        self.ready.clear();
        self.index = plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), i))
            .collect();
        let done = |st: &RunState, id: &StepId| {
            st.steps
                .get(id)
                .is_some_and(|s| s.status == StepStatus::Succeeded)
        };
        for step in &plan.steps {
            if done(&self.state, &step.id) || self.in_flight.contains_key(&step.id) {
                continue;
            }
            let deps = step.dependencies();
            let mut n = 0;
            for d in deps {
                if !done(&self.state, &d) {
                    n += 1;
                    self.dependents.entry(d).or_default().push(step.id.clone());
                }
            }
            if n == 0 {
                self.ready.push_back(step.id.clone());
            } else {
                self.waiting_on.insert(step.id.clone(), n);
            }
        }
    }

    /// A step of the current plan.
    fn planned(&self, id: &StepId) -> Option<&Step> {
        let i = *self.index.get(id)?;
        self.state.plan()?.steps.get(i)
    }

    fn load_of(&self, kind: &AgentKind) -> usize {
        self.inner
            .load
            .lock()
            .map(|l| l.get(kind).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn change_load(&self, kind: &AgentKind, up: bool) {
        if let Ok(mut l) = self.inner.load.lock() {
            let e = l.entry(kind.clone()).or_insert(0);
            if up {
                *e += 1;
            } else {
                *e = e.saturating_sub(1);
            }
        }
    }

    /// Sends one attempt of a step; `None` if no agent can take it.
    fn dispatch(
        &mut self,
        id: &StepId,
        attempt: u32,
        run_deadline: Option<Instant>,
    ) -> Option<Pin<Box<dyn std::future::Future<Output = Completion> + Send>>> {
        let (dest, kind, input) = {
            // Borrowed, not cloned: a step may carry a large literal input.
            let step = self.planned(id)?;
            let (dest, kind) = match &step.target {
                StepTarget::Agent(a) => (Destination::Agent(a.clone()), Some(a.kind().clone())),
                StepTarget::Capability(c) => {
                    let candidates: Vec<&AgentCard> =
                        self.cards.iter().filter(|k| k.can(c)).collect();
                    if candidates.is_empty() {
                        return None;
                    }
                    let kind = self
                        .inner
                        .router
                        .route(c, &candidates, &|k| self.load_of(k));
                    (Destination::Kind(kind.clone()), Some(kind))
                }
            };
            let outputs = |d: &StepId| self.state.steps.get(d).and_then(|s| s.output.clone());
            let input = step
                .input
                .resolve(&self.task.goal, &self.task.input, &outputs)
                .unwrap_or(serde_json::Value::Null);
            (dest, kind, input)
        };
        let message = MessageId::new();
        self.record(RunEvent::StepDispatched {
            step: id.clone(),
            attempt,
            message,
            to: match &dest {
                Destination::Agent(a) => a.to_string(),
                Destination::Kind(k) => k.to_string(),
                other => other.to_string(),
            },
        });
        self.in_flight.insert(id.clone(), attempt);
        if let Some(k) = &kind {
            self.change_load(k, true);
        }
        let policy = &self.task.policy;
        let used = self.state.usage;
        let budget = Arc::new(Budget {
            max_depth: policy.max_depth,
            max_fanout: policy.max_fanout,
            tokens_left: policy
                .max_tokens
                .map(|m| m.saturating_sub(used.total_tokens())),
            cost_left: policy.max_cost_usd.map(|m| (m - used.cost_usd).max(0.0)),
        });
        let origin = Origin {
            from: None,
            run: Some(self.run),
            depth: 0,
            chain: Default::default(),
            deadline: run_deadline.map(Deadline::at),
            trace: crate::envelope::TraceContext {
                trace_id: self.run.as_u128(),
                parent_span: 0,
            },
            step: Some(id.clone()),
            parent: None,
            budget: Some(budget),
            attempt,
        };
        let options = RequestOptions {
            timeout: policy.step_timeout,
            delegation: false,
            id: Some(message),
        };
        let node = self.inner.runtime.inner.node.clone();
        let cancel = self.cancel.clone();
        let step_id = id.clone();
        Some(Box::pin(async move {
            let result = node
                .request(&origin, dest, Body::new(input), &options, Some(&cancel))
                .await;
            Completion::Step {
                step: step_id,
                attempt,
                kind,
                result,
            }
        }))
    }

    async fn on_completion(
        &mut self,
        done: Completion,
        deadline: Option<Instant>,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
        match done {
            Completion::RetryDue { step, attempt } => {
                if self.planned(&step).is_none() {
                    return Ok(());
                }
                match self.dispatch(&step, attempt, deadline) {
                    Some(f) => in_flight.push(f),
                    None => {
                        return Err(Stop::Fail(
                            RunErrorKind::StepFailed {
                                step: step.clone(),
                                agent: None,
                                failure: Failure::new(
                                    crate::envelope::FailureKind::NoSuchAgent,
                                    "no agent can take it",
                                ),
                            },
                            format!("step {step}: no agent can take it"),
                        ));
                    }
                }
                Ok(())
            }
            Completion::Step {
                step,
                attempt,
                kind,
                result,
            } => {
                if let Some(k) = &kind {
                    self.change_load(k, false);
                }
                if self.in_flight.get(&step) != Some(&attempt) {
                    // An attempt the run no longer waits for (a replaced plan).
                    return Ok(());
                }
                self.in_flight.remove(&step);
                let still_planned = self.planned(&step).is_some();
                match result {
                    Ok(body) => {
                        let output = body.to_json_value().unwrap_or(serde_json::Value::Null);
                        self.record(RunEvent::StepSucceeded {
                            step: step.clone(),
                            attempt,
                            output,
                        });
                        if still_planned {
                            self.release_dependents(&step);
                        }
                        Ok(())
                    }
                    Err(e) => {
                        if !still_planned {
                            return Ok(());
                        }
                        self.on_step_error(step, attempt, e, in_flight).await
                    }
                }
            }
        }
    }

    fn release_dependents(&mut self, step: &StepId) {
        if let Some(deps) = self.dependents.remove(step) {
            for d in deps {
                if let Some(n) = self.waiting_on.get_mut(&d) {
                    *n -= 1;
                    if *n == 0 {
                        self.waiting_on.remove(&d);
                        self.ready.push_back(d);
                    }
                }
            }
        }
    }

    async fn on_step_error(
        &mut self,
        step: StepId,
        attempt: u32,
        error: RequestError,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
        if let RequestError::Cancelled(_) = error
            && self.cancel.is_cancelled()
        {
            return Err(Stop::Fail(
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
            self.in_flight.insert(step.clone(), attempt + 1);
            in_flight.push(Box::pin(async move {
                tokio::time::sleep(backoff).await;
                Completion::RetryDue {
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
        // A retry that is due replaces the in-flight marker; clear it.
        self.in_flight.remove(&step);
        if self.replans < self.task.policy.max_replans {
            self.replans += 1;
            let ctx = PlanningContext::new(self.cards.clone());
            let sf = StepFailure {
                step: step.clone(),
                failure: failure.clone(),
            };
            let replanned = self
                .inner
                .planner
                .replan(&self.task, &self.state, &sf, &ctx)
                .await;
            if let Some(stop) = self.planning_spent(&ctx) {
                return Err(stop);
            }
            match replanned {
                Ok(Some(plan)) => {
                    if let Err(e) = plan.validate(&self.cards, self.task.policy.max_steps) {
                        return Err(Stop::Fail(
                            RunErrorKind::InvalidPlan(e.clone()),
                            format!("the revised plan after step {step} failed is invalid: {e}"),
                        ));
                    }
                    self.adopt(plan);
                    return Ok(());
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(Stop::Fail(
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
        Err(Stop::Fail(
            RunErrorKind::StepFailed {
                step,
                agent,
                failure,
            },
            msg,
        ))
    }

    fn on_signal(&mut self, payload: Payload) -> Option<Stop> {
        let Payload::Message(body) = payload else {
            return None;
        };
        let signal = match body.take::<Signal>() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(run = %self.run, error = %e, "a message on the run's topic is not a signal; ignored");
                return None;
            }
        };
        match signal {
            Signal::Started {
                message,
                parent,
                step,
                agent,
                depth,
            } => match parent {
                None => {
                    if let Some(step) = step {
                        self.record(RunEvent::StepStarted {
                            step,
                            message,
                            agent,
                        });
                    }
                }
                Some(parent) => {
                    self.record(RunEvent::Delegated {
                        step,
                        parent,
                        message,
                        agent,
                        depth,
                    });
                    let limit = self.task.policy.max_steps;
                    if self.state.units > limit {
                        return Some(Stop::Fail(
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
            },
            Signal::Finished { message, failure } => {
                if self
                    .state
                    .trace
                    .get(&message)
                    .is_some_and(|t| t.parent.is_some())
                {
                    self.record(RunEvent::DelegationFinished { message, failure });
                }
            }
            Signal::Progress {
                step, agent, data, ..
            } => {
                self.record(RunEvent::StepProgress { step, agent, data });
            }
            Signal::Usage {
                step, agent, usage, ..
            } => {
                self.record(RunEvent::UsageReported { step, agent, usage });
                return self.check_budgets();
            }
        }
        None
    }

    /// Records what planning cost, if anything, and checks the budgets.
    fn planning_spent(&mut self, ctx: &PlanningContext) -> Option<Stop> {
        let usage = ctx.take_usage();
        if usage.is_zero() {
            return None;
        }
        let agent = AgentId::new("planner", "orchestrator").ok()?;
        self.record(RunEvent::UsageReported {
            step: None,
            agent,
            usage,
        });
        self.check_budgets()
    }

    /// Ends the run if a token or cost budget is spent.
    fn check_budgets(&self) -> Option<Stop> {
        let used = self.state.usage;
        if let Some(limit) = self.task.policy.max_tokens
            && used.total_tokens() > limit
        {
            return Some(Stop::Fail(
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
            return Some(Stop::Fail(
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
        let sinks = plan.sinks();
        match sinks.as_slice() {
            [one] => output_of(one),
            many => serde_json::Value::Object(
                many.iter()
                    .map(|id| (id.to_string(), output_of(id)))
                    .collect(),
            ),
        }
    }
}

trait NowOrNeverOpt: Stream + Unpin {
    /// The next item if one is ready now: `Some(Some(item))`, `Some(None)` if
    /// the stream ended, `None` if nothing is ready.
    fn now_or_never_opt(&mut self) -> Option<Option<Self::Item>> {
        futures::FutureExt::now_or_never(self.next())
    }
}

impl<S: Stream + Unpin> NowOrNeverOpt for S {}
