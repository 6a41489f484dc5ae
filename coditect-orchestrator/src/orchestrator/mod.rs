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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use event::{RunEvent, RunEventRecord, Signal};
use plan::Graph;
pub use plan::{Plan, PlanError, Step, StepId, StepInput, StepTarget};
pub use planner::{Planner, PlanningContext, StaticPlanner, StepFailure};
pub use policy::{RetryOn, RetryPolicy, RunPolicy};
pub use router::{LeastLoaded, Router};
pub use state::{OrderedMap, RunState, RunStatus, StepState, StepStatus, TraceEntry, TraceNode};
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
    /// Steps in flight per kind, over all of this orchestrator's runs.
    load: Mutex<HashMap<AgentKind, Arc<AtomicUsize>>>,
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

/// Counts one step attempt against its agent kind's load while it is in
/// flight; dropping it (the attempt finished, or the run dropped it) gives the
/// count back.
struct LoadGuard(Arc<AtomicUsize>);

impl LoadGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a step was in the plan it was dispatched under: that plan's revision
/// and the step's position in it.
#[derive(Clone, Copy)]
struct At {
    rev: u32,
    pos: usize,
}

/// One step attempt in flight, or a retry that is due.
enum Completion {
    Step {
        at: At,
        step: StepId,
        attempt: u32,
        load: Option<LoadGuard>,
        result: Result<Body, RequestError>,
    },
    RetryDue {
        at: At,
        step: StepId,
        attempt: u32,
    },
}

type InFlight = FuturesUnordered<Pin<Box<dyn std::future::Future<Output = Completion> + Send>>>;

/// How a step of the current plan finds its agent.
enum StepRoute {
    /// Exactly the agent the step names (the card of its kind, if known).
    Agent(Option<usize>),
    /// The router picks among a set of candidate cards.
    Pick(usize),
}

struct Driver {
    inner: Arc<Inner>,
    run: RunId,
    task: TaskSpec,
    cards: Vec<AgentCard>,
    cancel: CancellationToken,
    events: broadcast::Sender<RunEventRecord>,
    /// Someone may still read the events (once nobody does, nobody can again).
    publishing: bool,
    state: RunState,
    seq: u64,
    started: Instant,
    /// When the current piece of work began, in ms since the run started: the
    /// time of the events it records (read once per wake-up, not per event).
    now_ms: u64,
    /// Per card: the load counter of its kind (shared by the orchestrator's
    /// runs) and its kind as events name it.
    loads: Vec<Arc<AtomicUsize>>,
    names: Vec<String>,
    /// Candidate cards for each capability the current plan uses.
    candidates: Vec<Vec<usize>>,
    /// The budget handed to the last step, reused while it is unchanged.
    budget: Option<Arc<Budget>>,
    // The current plan, by step position.
    /// Its revision.
    rev: u32,
    /// Where each step's id is.
    index: HashMap<StepId, usize>,
    routes: Vec<StepRoute>,
    /// Unfinished dependencies of each waiting step.
    waiting: Vec<u32>,
    /// The steps waiting for each step: `dependents[dep_start[i]..dep_start[i + 1]]`.
    dep_start: Vec<usize>,
    dependents: Vec<usize>,
    /// Whether a step's success has released its dependents.
    released: Vec<bool>,
    /// The sinks (steps nothing depends on), in plan order.
    sinks: Vec<usize>,
    /// The attempt in flight (or whose retry is due) of each step; 0: none.
    attempts: Vec<u32>,
    /// Attempts in flight of steps no longer in the plan, by id.
    orphans: HashMap<StepId, u32>,
    /// Step attempts in flight or due to retry.
    in_flight: usize,
    ready: VecDeque<usize>,
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
        let loads = {
            let mut table = inner.load.lock().unwrap_or_else(|p| p.into_inner());
            cards
                .iter()
                .map(|c| table.entry(c.kind.clone()).or_default().clone())
                .collect()
        };
        let names = cards.iter().map(|c| c.kind.to_string()).collect();
        Self {
            inner,
            run,
            task,
            cards,
            cancel,
            events,
            publishing: true,
            state: RunState::new(run),
            seq: 0,
            started: Instant::now(),
            now_ms: 0,
            loads,
            names,
            candidates: Vec::new(),
            budget: None,
            rev: 0,
            index: HashMap::default(),
            routes: Vec::new(),
            waiting: Vec::new(),
            dep_start: Vec::new(),
            dependents: Vec::new(),
            released: Vec::new(),
            sinks: Vec::new(),
            attempts: Vec::new(),
            orphans: HashMap::default(),
            in_flight: 0,
            ready: VecDeque::new(),
            replans: 0,
            revision: 0,
        }
    }

    /// Reads the clock for the events of the work about to be done.
    fn tick(&mut self) {
        self.now_ms = self.started.elapsed().as_millis() as u64;
    }

    fn record(&mut self, event: RunEvent) {
        let record = RunEventRecord {
            run: self.run,
            seq: self.seq,
            at_ms: self.now_ms,
            event,
        };
        self.seq += 1;
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

    fn fail(mut self, kind: RunErrorKind, message: String) -> Result<RunOutcome, RunError> {
        self.cancel.cancel();
        self.tick();
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
        self.tick();
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
        match plan.check(&self.cards, self.task.policy.max_steps) {
            Ok(graph) => self.adopt(plan, graph),
            Err(e) => {
                let msg = format!("invalid plan: {e}");
                return self.fail(RunErrorKind::InvalidPlan(e), msg);
            }
        }

        let deadline = self.task.policy.deadline.map(|d| self.started + d);
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
        loop {
            while let Some(pos) = self.ready.pop_front() {
                if let Some(fut) = self.dispatch(pos, 1, deadline) {
                    in_flight.push(fut);
                } else {
                    return self.fail_unroutable(pos);
                }
            }
            if self.in_flight == 0 && in_flight.is_empty() {
                break;
            }
            let stop: Option<Stop> = tokio::select! {
                biased;
                _ = &mut cancelled => Some(Stop::Fail(RunErrorKind::Cancelled, "the run was cancelled".into())),
                () = &mut deadline_passed => Some(Stop::Fail(
                    RunErrorKind::Deadline,
                    format!("the run's deadline of {:?} passed", self.task.policy.deadline.unwrap_or_default()),
                )),
                Some(delivery) = signals.next() => {
                    self.tick();
                    self.on_signal(delivery.envelope.payload)
                }
                Some(done) = in_flight.next() => {
                    self.tick();
                    self.on_completion(done, deadline, &mut in_flight).await.err()
                }
            };
            if let Some(Stop::Fail(kind, msg)) = stop {
                drop(in_flight);
                return self.fail(kind, msg);
            }
        }
        // Signals already on their way (the trace of the last steps).
        self.tick();
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

    fn fail_unroutable(self, pos: usize) -> Result<RunOutcome, RunError> {
        let step = self.step_id(pos).unwrap_or_else(|| StepId::new("?"));
        let msg = format!("step {step}: no agent can take it");
        self.fail(
            RunErrorKind::StepFailed {
                step,
                agent: None,
                failure: Failure::new(crate::envelope::FailureKind::NoSuchAgent, msg.clone()),
            },
            msg,
        )
    }

    /// The id of the step at a position of the current plan.
    fn step_id(&self, pos: usize) -> Option<StepId> {
        Some(self.state.plan()?.steps.get(pos)?.id.clone())
    }

    /// Takes a (new or revised) plan, already checked: records it and works
    /// out, by step position, who waits for whom and what is ready.
    fn adopt(&mut self, plan: Plan, graph: Graph) {
        // Attempts in flight keep going across a revision: carry them by id.
        let mut carried: Vec<(StepId, u32)> = self.orphans.drain().collect();
        if let Some(old) = self.state.plan() {
            for (pos, &a) in self.attempts.iter().enumerate() {
                if a > 0
                    && let Some(s) = old.steps.get(pos)
                {
                    carried.push((s.id.clone(), a));
                }
            }
        }
        self.record(RunEvent::PlanMade {
            revision: self.revision,
            plan,
        });
        self.rev = self.revision;
        self.revision += 1;
        let Graph { index, deps } = graph;
        let n = deps.len();
        let mut attempts = vec![0u32; n];
        for (id, a) in carried {
            match index.get(&id) {
                Some(&p) => attempts[p] = a,
                None => {
                    self.orphans.insert(id, a);
                }
            }
        }
        let Some(plan) = self.state.plans.last() else {
            return;
        };
        // Steps that succeeded under an earlier plan stay done.
        let any_done = self
            .state
            .steps
            .values()
            .any(|s| s.status == StepStatus::Succeeded);
        let done: Vec<bool> = if any_done {
            plan.steps
                .iter()
                .map(|s| {
                    self.state
                        .steps
                        .get(&s.id)
                        .is_some_and(|s| s.status == StepStatus::Succeeded)
                })
                .collect()
        } else {
            vec![false; n]
        };
        let mut waiting = vec![0u32; n];
        let mut counts = vec![0usize; n + 1];
        let mut has_dependents = vec![false; n];
        let mut ready = VecDeque::new();
        for (p, d) in deps.iter().enumerate() {
            for &q in d {
                has_dependents[q] = true;
            }
            if done[p] || attempts[p] > 0 {
                continue;
            }
            let mut w = 0;
            for &q in d {
                if !done[q] {
                    w += 1;
                    counts[q + 1] += 1;
                }
            }
            if w == 0 {
                ready.push_back(p);
            } else {
                waiting[p] = w;
            }
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut dependents = vec![0usize; counts[n]];
        for (p, d) in deps.iter().enumerate() {
            if waiting[p] == 0 {
                continue;
            }
            for &q in d {
                if !done[q] {
                    dependents[fill[q]] = p;
                    fill[q] += 1;
                }
            }
        }
        // Where each step finds its agent; candidates per capability.
        let mut sets: HashMap<&str, usize> = HashMap::default();
        let mut candidates: Vec<Vec<usize>> = Vec::new();
        let routes = plan
            .steps
            .iter()
            .map(|s| match &s.target {
                StepTarget::Agent(a) => {
                    StepRoute::Agent(self.cards.iter().position(|c| &c.kind == a.kind()))
                }
                StepTarget::Capability(c) => {
                    StepRoute::Pick(*sets.entry(c.as_str()).or_insert_with(|| {
                        candidates.push(
                            self.cards
                                .iter()
                                .enumerate()
                                .filter(|(_, k)| k.can(c))
                                .map(|(i, _)| i)
                                .collect(),
                        );
                        candidates.len() - 1
                    }))
                }
            })
            .collect();
        self.sinks = (0..n).filter(|&p| !has_dependents[p]).collect();
        self.routes = routes;
        self.candidates = candidates;
        self.index = index;
        self.waiting = waiting;
        self.dep_start = counts;
        self.dependents = dependents;
        self.released = vec![false; n];
        self.attempts = attempts;
        self.ready = ready;
    }

    /// The position in the current plan of a step dispatched at `at`.
    fn locate(&self, at: At, step: &StepId) -> Option<usize> {
        if at.rev == self.rev {
            Some(at.pos)
        } else {
            self.index.get(step).copied()
        }
    }

    /// The router's pick among a capability's candidate cards: the kind, and
    /// its card if it is one of ours.
    fn pick(&self, capability: &str, set: &[usize]) -> Option<(AgentKind, Option<usize>)> {
        let first = &self.cards[*set.first()?];
        let mut few: [&AgentCard; 8] = [first; 8];
        let many: Vec<&AgentCard>;
        let cands: &[&AgentCard] = if set.len() <= few.len() {
            for (slot, &i) in few.iter_mut().zip(set) {
                *slot = &self.cards[i];
            }
            &few[..set.len()]
        } else {
            many = set.iter().map(|&i| &self.cards[i]).collect();
            &many
        };
        let load = |k: &AgentKind| {
            set.iter()
                .find(|&&i| &self.cards[i].kind == k)
                .map_or(0, |&i| self.loads[i].load(Ordering::Relaxed))
        };
        let kind = self.inner.router.route(capability, cands, &load);
        let card = set
            .iter()
            .copied()
            .find(|&i| self.cards[i].kind == kind)
            .or_else(|| self.cards.iter().position(|c| c.kind == kind));
        Some((kind, card))
    }

    /// The load counter of a kind none of the cards has (a router's choice).
    fn foreign_load(&self, kind: &AgentKind) -> Arc<AtomicUsize> {
        let mut table = self.inner.load.lock().unwrap_or_else(|p| p.into_inner());
        table.entry(kind.clone()).or_default().clone()
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

    /// Sends one attempt of the step at `pos`; `None` if no agent can take it.
    fn dispatch(
        &mut self,
        pos: usize,
        attempt: u32,
        run_deadline: Option<Instant>,
    ) -> Option<Pin<Box<dyn std::future::Future<Output = Completion> + Send>>> {
        let step = self.state.plan()?.steps.get(pos)?;
        let (dest, to, load) = match (self.routes.get(pos)?, &step.target) {
            (StepRoute::Agent(card), StepTarget::Agent(a)) => (
                Destination::Agent(a.clone()),
                a.to_string(),
                card.map(|i| LoadGuard::new(&self.loads[i])),
            ),
            (StepRoute::Pick(set), StepTarget::Capability(c)) => {
                let (kind, card) = self.pick(c, self.candidates.get(*set)?)?;
                let (to, load) = match card {
                    Some(i) => (self.names[i].clone(), LoadGuard::new(&self.loads[i])),
                    None => (kind.to_string(), LoadGuard::new(&self.foreign_load(&kind))),
                };
                (Destination::Kind(kind), to, Some(load))
            }
            _ => return None,
        };
        let outputs = |d: &StepId| self.state.steps.get(d).and_then(|s| s.output.clone());
        let input = step
            .input
            .resolve(&self.task.goal, &self.task.input, &outputs)
            .unwrap_or(serde_json::Value::Null);
        let id = step.id.clone();
        let message = MessageId::new();
        self.record(RunEvent::StepDispatched {
            step: id.clone(),
            attempt,
            message,
            to,
        });
        if self.attempts[pos] == 0 {
            self.in_flight += 1;
        }
        self.attempts[pos] = attempt;
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
            budget: Some(self.budget()),
            attempt,
        };
        let options = RequestOptions {
            timeout: self.task.policy.step_timeout,
            delegation: false,
            id: Some(message),
        };
        let node = self.inner.runtime.inner.node.clone();
        let at = At { rev: self.rev, pos };
        // No cancellation token for the request: cancelling the run drops
        // this future, which withdraws the request and tells the agent to
        // stop, as a fired token would.
        Some(Box::pin(async move {
            let result = node
                .request(&origin, dest, Body::new(input), &options, None)
                .await;
            Completion::Step {
                at,
                step: id,
                attempt,
                load,
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
            Completion::RetryDue { at, step, attempt } => {
                let Some(pos) = self.locate(at, &step) else {
                    // The step left the plan while it waited: nothing to retry.
                    if self.orphans.remove(&step).is_some() {
                        self.in_flight -= 1;
                    }
                    return Ok(());
                };
                match self.dispatch(pos, attempt, deadline) {
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
                at,
                step,
                attempt,
                load,
                result,
            } => {
                drop(load);
                let pos = self.locate(at, &step);
                match pos {
                    Some(p) => {
                        if self.attempts.get(p) != Some(&attempt) {
                            // An attempt the run no longer waits for.
                            return Ok(());
                        }
                        self.attempts[p] = 0;
                    }
                    None => {
                        if self.orphans.get(&step) != Some(&attempt) {
                            return Ok(());
                        }
                        self.orphans.remove(&step);
                    }
                }
                self.in_flight -= 1;
                match result {
                    Ok(body) => {
                        let output = body.to_json_value().unwrap_or(serde_json::Value::Null);
                        self.record(RunEvent::StepSucceeded {
                            step,
                            attempt,
                            output,
                        });
                        if let Some(p) = pos {
                            self.release_dependents(p);
                        }
                        Ok(())
                    }
                    Err(e) => match pos {
                        Some(p) => self.on_step_error(p, step, attempt, e, in_flight).await,
                        None => Ok(()),
                    },
                }
            }
        }
    }

    fn release_dependents(&mut self, pos: usize) {
        if std::mem::replace(&mut self.released[pos], true) {
            return;
        }
        for i in self.dep_start[pos]..self.dep_start[pos + 1] {
            let d = self.dependents[i];
            if self.waiting[d] > 0 {
                self.waiting[d] -= 1;
                if self.waiting[d] == 0 {
                    self.ready.push_back(d);
                }
            }
        }
    }

    async fn on_step_error(
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
            self.attempts[pos] = attempt + 1;
            self.in_flight += 1;
            let at = At { rev: self.rev, pos };
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
            self.tick();
            if let Some(stop) = self.planning_spent(&ctx) {
                return Err(stop);
            }
            match replanned {
                Ok(Some(plan)) => {
                    return match plan.check(&self.cards, self.task.policy.max_steps) {
                        Ok(graph) => {
                            self.adopt(plan, graph);
                            Ok(())
                        }
                        Err(e) => Err(Stop::Fail(
                            RunErrorKind::InvalidPlan(e.clone()),
                            format!("the revised plan after step {step} failed is invalid: {e}"),
                        )),
                    };
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
        let mut sinks = self.sinks.iter().filter_map(|&p| plan.steps.get(p));
        if let [_] = self.sinks.as_slice() {
            return sinks.next().map(|s| output_of(&s.id)).unwrap_or_default();
        }
        // Gathered at their exact size first: the map sorts its input in a
        // Vec, which would otherwise grow by doubling.
        let mut entries = Vec::with_capacity(self.sinks.len());
        entries.extend(sinks.map(|s| (s.id.as_str().to_owned(), output_of(&s.id))));
        serde_json::Value::Object(entries.into_iter().collect())
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

trait NowOrNeverOpt: Stream + Unpin {
    /// The next item if one is ready now: `Some(Some(item))`, `Some(None)` if
    /// the stream ended, `None` if nothing is ready.
    fn now_or_never_opt(&mut self) -> Option<Option<Self::Item>> {
        futures::FutureExt::now_or_never(self.next())
    }
}

impl<S: Stream + Unpin> NowOrNeverOpt for S {}
