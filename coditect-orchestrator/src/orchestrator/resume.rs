//! Durable runs, the orchestrator's public side: where runs are stored,
//! resuming one, answering its questions, reading it back, forking it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::id::RunId;
use crate::journal::EffectKey;
use crate::orchestrator::durable::{self, StoredRun};
use crate::orchestrator::event::{RunEvent, RunEventRecord};
use crate::orchestrator::plan::{StepId, StepInput};
use crate::orchestrator::runlog::{self, Control, Journal};
use crate::orchestrator::snapshot;
use crate::orchestrator::state::RunStatus;
use crate::orchestrator::{Orchestrator, RunHandle};
use crate::store::{NewRecord, NewRun, Store, StoreError, StoreErrorKind};

/// Where an orchestrator keeps its runs, and how it holds them.
#[derive(Clone)]
pub(crate) struct DurableOptions {
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) holder: String,
    pub(crate) lease_ttl: Duration,
    /// Events between snapshots (0: none).
    pub(crate) snapshot_every: u64,
}

impl Default for DurableOptions {
    fn default() -> Self {
        Self {
            store: None,
            holder: default_holder(),
            lease_ttl: Duration::from_secs(10),
            snapshot_every: 10_000,
        }
    }
}

/// This process's lease holder name: host and process id, so that a
/// restarted process is a new holder and waits for its predecessor's lease
/// to expire, unless it is given a stable name.
fn default_holder() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// Why a durable-run operation (resume, respond, replay, fork) failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct DurableError {
    kind: DurableErrorKind,
    message: String,
    #[source]
    source: Option<StoreError>,
}

/// The kinds of [`DurableError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DurableErrorKind {
    /// The orchestrator has no store ([`Orchestrator::store`]).
    NoStore,
    /// No such run in the store.
    NotFound,
    /// Another orchestrator holds the run's lease (it is being driven); the
    /// message names the holder and when its lease expires.
    Busy,
    /// The run has already ended.
    Finished,
    /// The run has no such request (question).
    NoSuchRequest,
    /// The request was answered already.
    AlreadyAnswered,
    /// The answer does not satisfy the request's JSON Schema; nothing was
    /// recorded and the run stays paused.
    InvalidAnswer,
    /// The journal holds something that is not a run event of this run.
    Corrupt,
    /// The store failed (the source says how).
    Store,
}

impl DurableError {
    pub(crate) fn new(kind: DurableErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn store(e: StoreError) -> Self {
        let kind = match e.kind() {
            StoreErrorKind::NotFound => DurableErrorKind::NotFound,
            StoreErrorKind::Busy => DurableErrorKind::Busy,
            StoreErrorKind::Corrupt | StoreErrorKind::UnsupportedVersion => {
                DurableErrorKind::Corrupt
            }
            _ => DurableErrorKind::Store,
        };
        Self {
            kind,
            message: e.to_string(),
            source: Some(e),
        }
    }

    /// What kind of failure.
    pub fn kind(&self) -> DurableErrorKind {
        self.kind
    }

    /// The store's own error, where the store failed.
    pub fn store_error(&self) -> Option<&StoreError> {
        self.source.as_ref()
    }
}

/// What [`Orchestrator::respond`] did with an answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum Responded {
    /// The run is driven by this orchestrator: the answer went to it, and the
    /// waiting handler has it.
    Delivered,
    /// Nobody drove the run (its orchestrator died, or it was started
    /// elsewhere): this orchestrator resumed it with the answer recorded.
    Resumed(RunHandle),
}

/// How a fork changes the run it copies.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Fork {
    /// The journal position to fork at: events `0..at` are kept.
    pub at: u64,
    /// A step whose input is replaced; it and every step after it (its
    /// dependents) run anew.
    pub input: Option<(StepId, StepInput)>,
}

impl Fork {
    /// A fork keeping the first `at` events.
    pub fn at(at: u64) -> Self {
        Self { at, input: None }
    }

    /// With one step's input replaced.
    #[must_use]
    pub fn with_input(mut self, step: StepId, input: StepInput) -> Self {
        self.input = Some((step, input));
        self
    }
}

impl Orchestrator {
    /// Keeps every run in `store`: its events in the store's journal (a
    /// step's result durable before any step that depends on it is
    /// dispatched, a dispatch before its message is sent, an effect's before
    /// its handler goes on), its status in
    /// the run index, under a lease so that one orchestrator drives it at a
    /// time. Such runs can be [resumed](Self::resume) after a crash, in this
    /// process or another, can [ask](crate::AgentContext::ask) for input and
    /// be [answered](Self::respond), [replayed](Self::replay) and
    /// [forked](Self::fork).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
    /// use coditect_orchestrator::orchestrator::{Orchestrator, Plan, RunEvent, StaticPlanner, Step, StepInput, TaskSpec};
    /// use coditect_orchestrator::store::MemoryStore;
    ///
    /// struct Charge;
    /// impl Agent for Charge {
    ///     type Input = String;
    ///     type Output = String;
    ///     async fn handle(&mut self, who: String, ctx: &AgentContext) -> Result<String, AgentError> {
    ///         // Done once per run, however often the step is executed.
    ///         let receipt: String = ctx
    ///             .effect("charge", |key| async move { Ok(format!("charged {who} ({key})")) })
    ///             .await?;
    ///         Ok(receipt)
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
    /// runtime.kind("charge").register(|_| Charge).await?;
    /// let plan = Plan::new([Step::new("pay", "charge", StepInput::Goal)]);
    /// let orchestrator = Orchestrator::new(runtime, StaticPlanner::new(plan))
    ///     .store(Arc::new(MemoryStore::new()));
    /// // `submit` returns once the run is journaled: its id survives a crash,
    /// // after which `orchestrator.resume(id)` continues it.
    /// let handle = orchestrator.submit(TaskSpec::new("ada")).await?;
    /// let run = handle.id();
    /// let outcome = handle.outcome().await?;
    /// assert!(outcome.output.as_str().unwrap().starts_with("charged ada"));
    ///
    /// // The journal holds the run's events, the effect's result among them.
    /// let stored = orchestrator.replay(run).await?;
    /// assert!(stored.events.iter().any(|e| matches!(e.event, RunEvent::EffectRecorded { .. })));
    /// assert_eq!(stored.state.output, Some(outcome.output));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn store(self, store: Arc<dyn Store>) -> Self {
        self.rebuild(|i| i.durable.store = Some(store))
    }

    /// Names this orchestrator as a lease holder (by default host and
    /// process id). A process restarted under the same name takes its
    /// runs' leases back at once instead of waiting for them to expire.
    #[must_use]
    pub fn lease_holder(self, holder: impl Into<String>) -> Self {
        let holder = holder.into();
        self.rebuild(|i| i.durable.holder = holder)
    }

    /// How long a run's lease lasts unless renewed (renewed every third of
    /// it; 10 s by default): how soon another orchestrator may take over the
    /// runs of one that died.
    #[must_use]
    pub fn lease_ttl(self, ttl: Duration) -> Self {
        self.rebuild(|i| i.durable.lease_ttl = ttl)
    }

    /// Writes a snapshot of a run's state every `events` journal events
    /// (10,000 by default; 0: never), so that resuming a long run reads only
    /// the events after its latest snapshot. Written in the background once
    /// the events it covers are durable; the journal stays the truth (a
    /// snapshot that cannot be read back is passed over, and the whole
    /// journal folded). Replay and fork always read the whole journal.
    #[must_use]
    pub fn snapshot_every(self, events: u64) -> Self {
        self.rebuild(|i| i.durable.snapshot_every = events)
    }

    fn store_or_err(&self) -> Result<Arc<dyn Store>, DurableError> {
        self.inner.durable.store.clone().ok_or_else(|| {
            DurableError::new(
                DurableErrorKind::NoStore,
                "the orchestrator has no store: durable runs need Orchestrator::store",
            )
        })
    }

    /// Continues a stored run that no orchestrator drives: its succeeded
    /// steps are not run again (their recorded results are used), steps that
    /// were in flight are dispatched again with their next attempt number,
    /// and effects they had already made return their recorded results.
    ///
    /// # Errors
    /// [`DurableError`]: `NoStore`, `NotFound`, `Busy` (another orchestrator
    /// holds the run), `Finished`, `Corrupt` or `Store`.
    pub async fn resume(&self, run: RunId) -> Result<RunHandle, DurableError> {
        self.resume_with(run, None).await
    }

    async fn resume_with(
        &self,
        run: RunId,
        answer: Option<(EffectKey, serde_json::Value)>,
    ) -> Result<RunHandle, DurableError> {
        let store = self.store_or_err()?;
        let entry = store.run(run).await.map_err(DurableError::store)?;
        if entry.status.is_terminal() {
            return Err(DurableError::new(
                DurableErrorKind::Finished,
                format!("run {run} has ended ({})", entry.status),
            ));
        }
        let d = &self.inner.durable;
        let lease = store
            .acquire_lease(run, &d.holder, d.lease_ttl)
            .await
            .map_err(DurableError::store)?;
        let loaded = async {
            let stored = snapshot::load_for_resume(store.as_ref(), run).await?;
            let head = store.head(run).await.map_err(DurableError::store)?;
            Ok::<_, DurableError>((stored, head))
        }
        .await;
        let ((stored, restored), head) = match loaded {
            Ok(x) => x,
            Err(e) => {
                let _ = store.release_lease(&lease).await;
                return Err(e);
            }
        };
        if matches!(
            stored.state.status,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        ) || stored
            .events
            .iter()
            .any(|e| matches!(e.event, RunEvent::RunFinished { .. }))
        {
            let _ = store.release_lease(&lease).await;
            return Err(DurableError::new(
                DurableErrorKind::Finished,
                format!("run {run} has ended (its journal says so)"),
            ));
        }
        let Some(task) = stored.state.task.clone() else {
            let _ = store.release_lease(&lease).await;
            return Err(DurableError::new(
                DurableErrorKind::Corrupt,
                format!("run {run}: its journal does not begin with the run's start"),
            ));
        };
        let mut journal = Journal::open(&self.inner, store.clone(), run, lease, head).await?;
        if let Some(restored) = restored {
            let seq = stored.state.events - stored.events.len() as u64;
            journal.restore(restored, &stored.state, seq);
        }
        journal.replay(&stored.events);
        Ok(self.spawn_resumed(run, task, stored, journal, answer))
    }

    /// Answers a question a run asked ([`AgentContext::ask`](crate::AgentContext::ask)).
    /// The answer is checked against the question's JSON Schema first: a
    /// wrong one is refused and the run stays paused. A run this
    /// orchestrator drives gets it at once; a run nobody drives (its process
    /// died, or it paused elsewhere and was let go) is resumed here with the
    /// answer recorded.
    ///
    /// # Errors
    /// [`DurableError`]: `InvalidAnswer`, `NoSuchRequest`, `AlreadyAnswered`,
    /// `Busy` (another orchestrator drives the run: answer through that one),
    /// or as [`resume`](Self::resume).
    pub async fn respond(
        &self,
        run: RunId,
        request: &EffectKey,
        value: serde_json::Value,
    ) -> Result<Responded, DurableError> {
        let live = self
            .inner
            .live
            .lock()
            .ok()
            .and_then(|l| l.get(&run).cloned());
        if let Some(tx) = live {
            let (done, rx) = oneshot::channel();
            let sent = tx.send(Control::Respond {
                request: request.clone(),
                value: value.clone(),
                done,
            });
            if sent.is_ok()
                && let Ok(result) = rx.await
            {
                return result.map(|()| Responded::Delivered);
            }
            // The run ended meanwhile: fall through to the store.
        }
        let store = self.store_or_err()?;
        let stored = durable::load(store.as_ref(), run).await?;
        let Some(q) = stored
            .state
            .questions
            .iter()
            .find(|q| &q.request == request)
        else {
            return Err(DurableError::new(
                DurableErrorKind::NoSuchRequest,
                format!("run {run} has no request {request}"),
            ));
        };
        if q.answer.is_some() {
            return Err(DurableError::new(
                DurableErrorKind::AlreadyAnswered,
                format!("run {run}: request {request} was answered already"),
            ));
        }
        if q.timed_out {
            return Err(DurableError::new(
                DurableErrorKind::NoSuchRequest,
                format!("run {run}: request {request} timed out"),
            ));
        }
        durable::check_answer(request, &q.schema, &value)?;
        let handle = self
            .resume_with(run, Some((request.clone(), value)))
            .await?;
        Ok(Responded::Resumed(handle))
    }

    /// Reads a stored run back: its events in order (the same stream its
    /// handle gave) and their fold (its state, trace tree and, once ended,
    /// its result).
    ///
    /// # Errors
    /// [`DurableError`]: `NoStore`, `NotFound`, `Corrupt` (naming the run and
    /// the record's sequence number) or `Store`.
    pub async fn replay(&self, run: RunId) -> Result<StoredRun, DurableError> {
        let store = self.store_or_err()?;
        durable::load(store.as_ref(), run).await
    }

    /// Starts a new run from a stored one: what happened before event
    /// `fork.at` is taken from the journal (results, effects, recorded model
    /// turns), the rest runs anew. With [`Fork::with_input`], that step and
    /// the steps depending on it, directly or not, run anew with the new
    /// input.
    ///
    /// # Errors
    /// [`DurableError`]: `NoStore`, `NotFound`, `NoSuchRequest` (the step is
    /// not in the run's plan), `Corrupt`, `Store`.
    pub async fn fork(&self, run: RunId, fork: Fork) -> Result<RunHandle, DurableError> {
        let store = self.store_or_err()?;
        let stored = durable::load(store.as_ref(), run).await?;
        let new_run = RunId::new();
        let events = forked(&stored, new_run, &fork)?;
        let Some(task) = stored.state.task.clone() else {
            return Err(DurableError::new(
                DurableErrorKind::Corrupt,
                format!("run {run}: its journal does not begin with the run's start"),
            ));
        };
        store
            .create_run(NewRun::new(new_run, task.tenant.clone(), task.goal.clone()))
            .await
            .map_err(DurableError::store)?;
        let d = &self.inner.durable;
        let lease = store
            .acquire_lease(new_run, &d.holder, d.lease_ttl)
            .await
            .map_err(DurableError::store)?;
        let mut records = Vec::with_capacity(events.len());
        for e in &events {
            records.push(NewRecord::json(runlog::EVENT, e).map_err(|e| {
                DurableError::new(DurableErrorKind::Corrupt, format!("fork of {run}: {e}"))
            })?);
        }
        let head = store
            .append(new_run, 0, Some(lease.token), &records)
            .await
            .map_err(DurableError::store)?;
        let mut state = crate::orchestrator::RunState::new(new_run);
        for e in &events {
            state.apply(e);
        }
        let stored = StoredRun { events, state };
        let mut journal = Journal::open(&self.inner, store.clone(), new_run, lease, head).await?;
        journal.replay(&stored.events);
        Ok(self.spawn_resumed(new_run, task, stored, journal, None))
    }
}

/// The events a fork starts from: the first `fork.at` of `stored` (the end
/// left out), for `run`, without what the changed step and its dependents
/// did, renumbered.
fn forked(
    stored: &StoredRun,
    run: RunId,
    fork: &Fork,
) -> Result<Vec<RunEventRecord>, DurableError> {
    let mut anew: HashSet<StepId> = HashSet::new();
    if let Some((step, _)) = &fork.input {
        let Some(plan) = stored.state.plan() else {
            return Err(DurableError::new(
                DurableErrorKind::NoSuchRequest,
                format!("the run has no plan, so no step {step}"),
            ));
        };
        if !plan.steps.iter().any(|s| &s.id == step) {
            return Err(DurableError::new(
                DurableErrorKind::NoSuchRequest,
                format!("the run's plan has no step {step}"),
            ));
        }
        anew.insert(step.clone());
        // Every step depending on a changed one, to a fixed point.
        loop {
            let before = anew.len();
            for s in &plan.steps {
                if !anew.contains(&s.id) && s.dependencies().iter().any(|d| anew.contains(d)) {
                    anew.insert(s.id.clone());
                }
            }
            if anew.len() == before {
                break;
            }
        }
    }
    let touches = |step: &Option<StepId>| step.as_ref().is_some_and(|s| anew.contains(s));
    // Effect and question keys name their run: the fork's are its own.
    let (from, to) = (
        format!("{}/", stored.state.run.unwrap_or(run)),
        format!("{run}/"),
    );
    let rekey = |k: &mut EffectKey| k.rebase(&from, &to);
    let mut out = Vec::new();
    for e in stored.events.iter().take(fork.at as usize) {
        let mut event = e.event.clone();
        match &mut event {
            RunEvent::EffectRecorded { key, step, .. } if !touches(step) => rekey(key),
            RunEvent::InputRequested { request, .. }
            | RunEvent::InputProvided { request, .. }
            | RunEvent::InputTimedOut { request } => rekey(request),
            RunEvent::RunFinished { .. } => continue,
            RunEvent::StepSucceeded { step, .. } if anew.contains(step) => continue,
            RunEvent::EffectRecorded { step, .. } if touches(step) => continue,
            RunEvent::PlanMade { plan, .. } => {
                if let Some((id, input)) = &fork.input {
                    for s in plan.steps.iter_mut().filter(|s| &s.id == id) {
                        s.input = input.clone();
                    }
                }
            }
            _ => {}
        }
        let seq = out.len() as u64;
        out.push(RunEventRecord {
            run,
            seq,
            at_ms: e.at_ms,
            event,
        });
    }
    Ok(out)
}
