//! The orchestrator: takes a task, gets a plan, dispatches every ready step in
//! parallel to an agent that can do it, follows what agents delegate, enforces
//! the run's limits, and returns one result — streaming what happens as it goes.
//!
//! It works the same over any [`Transport`](crate::Transport): steps are
//! requests through the [`Runtime`], and what agents report (progress, usage,
//! delegations) arrives as [`Signal`]s on the run's topic.

//!
//! # Files
//! - `plan`: plans and their validation; `planner`: the [`Planner`] trait.
//! - `schedule`: which steps are ready (pure bookkeeping by position).
//! - `dispatch`: where a step goes (candidates, router, load).
//! - `intake`: reports turned into events in causal order (pure).
//! - `driver`: the loop that runs one run; `retry`: failures, retries,
//!   re-planning and budgets.
//! - `handle`: [`RunHandle`]; `event`, `state`, `task`, `policy`, `router`.

// A run's error is returned once per run, never on a hot path; its size buys
// a complete account of the failure (kind, message and the run's state).
#![allow(clippy::result_large_err)]

mod completion;
mod dispatch;
mod driver;
mod durable;
mod event;
mod handle;
mod intake;
mod plan;
mod planner;
mod policy;
mod resume;
mod retry;
mod router;
mod runlog;
mod schedule;
mod snapshot;
mod state;
mod steps;
mod task;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::report::{Signal, SignalKind, Tally};
pub use durable::StoredRun;
pub use event::{RunEvent, RunEventRecord};
pub use handle::{RunEvents, RunHandle};
pub use plan::{Plan, PlanError, Step, StepId, StepInput, StepTarget};
pub use planner::{Planner, PlanningContext, StaticPlanner, StepFailure};
pub use policy::{NoWorker, RetryOn, RetryPolicy, RunPolicy};
pub use resume::{DurableError, DurableErrorKind, Fork, Responded};
pub use router::{LeastLoaded, Router};
pub use state::{
    OrderedMap, Question, RunState, RunStatus, StepState, StepStatus, TraceEntry, TraceNode,
};
pub use task::{RunError, RunErrorKind, RunOutcome, TaskSpec};

use crate::agent::AgentCard;
use crate::id::{AgentKind, RunId};
use crate::runtime::Runtime;

type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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

pub(crate) struct Inner {
    pub(crate) runtime: Runtime,
    pub(crate) planner: Arc<dyn Planner>,
    pub(crate) router: Arc<dyn Router>,
    extra_cards: Vec<AgentCard>,
    /// Steps in flight per kind, over all of this orchestrator's runs.
    pub(crate) load: Mutex<HashMap<AgentKind, Arc<AtomicUsize>>>,
    /// Where runs are kept (none: in memory only).
    pub(crate) durable: resume::DurableOptions,
    /// The durable runs this orchestrator drives now, to take answers.
    pub(crate) live: Mutex<HashMap<RunId, tokio::sync::mpsc::UnboundedSender<runlog::Control>>>,
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
                durable: resume::DurableOptions::default(),
                live: Mutex::new(HashMap::default()),
            }),
        }
    }

    /// Uses another router to choose among agents offering a capability.
    #[must_use]
    pub fn router(self, router: impl Router) -> Self {
        self.rebuild(|i| i.router = Arc::new(router))
    }

    /// Adds cards by hand: an override for agents the tenant's card
    /// directory does not list. Not needed over NATS, where plans use the
    /// live cards every worker advertises.
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
            durable: self.inner.durable.clone(),
            live: Mutex::new(HashMap::default()),
        };
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The runtime it dispatches through.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// Every card plans may use: the runtime's kinds, the live ones of the
    /// fleet, and the added ones.
    pub fn all_cards(&self) -> Vec<AgentCard> {
        self.inner.all_cards()
    }
}

impl Inner {
    /// See [`Orchestrator::all_cards`].
    pub(crate) fn all_cards(&self) -> Vec<AgentCard> {
        let mut cards = self.runtime.fleet_cards();
        for c in &self.extra_cards {
            if !cards.iter().any(|k| k.kind == c.kind) {
                cards.push(c.clone());
            }
        }
        cards
    }
}

impl Orchestrator {
    /// Runs a task to the end.
    ///
    /// # Errors
    /// [`RunError`] naming what ended the run (an invalid plan, the step that
    /// failed with its agent and cause, a budget, the deadline, cancellation);
    /// its state keeps the results of the steps that finished.
    pub async fn run(&self, task: TaskSpec) -> Result<RunOutcome, RunError> {
        // Nobody can read these events: no 4,096-event buffer for them.
        self.start_with(task, 1).outcome().await
    }

    /// Starts a task and returns a handle: its events as they happen, a way to
    /// cancel it, and its outcome.
    pub fn start(&self, task: TaskSpec) -> RunHandle {
        self.start_with(task, 4096)
    }

    fn start_with(&self, task: TaskSpec, buffered_events: usize) -> RunHandle {
        let run = RunId::new();
        let span = crate::observe::spans::workflow(run, &task);
        self.spawn(
            run,
            span,
            buffered_events,
            move |inner, cards, token, events| {
                driver::Driver::new(inner, run, task, cards, token, events)
            },
        )
    }

    /// Starts a durable run ([`store`](Self::store)) and returns once its
    /// start is in the store's journal: from then on its id names a run that
    /// survives this process (hand it out, [`resume`](Self::resume) it after
    /// a crash). [`start`](Self::start) journals it the same way, without
    /// waiting.
    ///
    /// # Errors
    /// [`DurableError`] of kind `NoStore`, or `Store` if the run could not be
    /// journaled (nothing runs then).
    pub async fn submit(&self, task: TaskSpec) -> Result<RunHandle, DurableError> {
        if self.inner.durable.store.is_none() {
            return Err(DurableError::new(
                DurableErrorKind::NoStore,
                "the orchestrator has no store: durable runs need Orchestrator::store",
            ));
        }
        let run = RunId::new();
        let span = crate::observe::spans::workflow(run, &task);
        let (tx, rx) = oneshot::channel();
        let handle = self.spawn(run, span, 4096, move |inner, cards, token, events| {
            let mut d = driver::Driver::new(inner, run, task, cards, token, events);
            d.on_durable = Some(tx);
            d
        });
        match rx.await {
            Ok(Ok(())) => Ok(handle),
            Ok(Err(message)) => Err(DurableError::new(DurableErrorKind::Store, message)),
            Err(_) => Err(DurableError::new(
                DurableErrorKind::Store,
                "the run ended before it was journaled",
            )),
        }
    }

    /// Drives a stored run from where its journal ends.
    fn spawn_resumed(
        &self,
        run: RunId,
        task: TaskSpec,
        stored: StoredRun,
        journal: runlog::Journal,
        answer: Option<(crate::journal::EffectKey, serde_json::Value)>,
    ) -> RunHandle {
        let span = crate::observe::spans::workflow(run, &task);
        self.spawn(run, span, 4096, move |inner, cards, token, events| {
            driver::Driver::new(inner, run, task, cards, token, events)
                .resumed(stored, journal, answer)
        })
    }

    fn spawn(
        &self,
        run: RunId,
        span: tracing::Span,
        buffered_events: usize,
        driver: impl FnOnce(
            Arc<Inner>,
            Vec<AgentCard>,
            CancellationToken,
            broadcast::Sender<RunEventRecord>,
        ) -> driver::Driver
        + Send
        + 'static,
    ) -> RunHandle {
        let (events, rx) = broadcast::channel(buffered_events);
        let cancel = CancellationToken::new();
        let (done_tx, done_rx) = oneshot::channel();
        let inner = self.inner.clone();
        let cards = self.all_cards();
        let token = cancel.clone();
        tokio::spawn(
            async move {
                let result = driver(inner, cards, token, events).drive().await;
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
