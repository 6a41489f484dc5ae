//! The loop that runs one run: plan, dispatch what is ready, take results
//! and reports, record every event in order, finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{broadcast, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::agent::AgentCard;
use crate::budget::Budget;
use crate::id::{MessageId, RunId, StepId, Topic};
use crate::journal::EffectKey;
use crate::orchestrator::Inner;
use crate::orchestrator::completion::Parked;
use crate::orchestrator::dispatch::{LoadGuard, Routing};
use crate::orchestrator::durable::StoredRun;
use crate::orchestrator::event::{RunEvent, RunEventRecord};
use crate::orchestrator::intake::Intake;
use crate::orchestrator::planner::PlanningContext;
use crate::orchestrator::runlog::{self, Journal};
use crate::orchestrator::schedule::{At, Schedule};
use crate::orchestrator::state::{RunState, RunStatus};
use crate::orchestrator::task::{RunError, RunErrorKind, RunOutcome, TaskSpec};
use crate::runtime::Answer;
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

pub(crate) struct Driver {
    pub(crate) inner: Arc<Inner>,
    pub(crate) run: RunId,
    pub(crate) task: TaskSpec,
    pub(crate) cancel: CancellationToken,
    pub(crate) events: broadcast::Sender<RunEventRecord>,
    /// Someone may still read the events (once nobody does, nobody can again).
    pub(crate) publishing: bool,
    pub(crate) state: RunState,
    pub(crate) seq: u64,
    pub(crate) started: Instant,
    /// When the current piece of work began, in ms since the run started: the
    /// time of the events it records (read once per wake-up, not per event).
    pub(crate) now_ms: u64,
    pub(crate) schedule: Schedule,
    pub(crate) routing: Routing,
    pub(crate) intake: Intake,
    pub(crate) parked: FastMap<MessageId, Parked>,
    /// Events released by the intake, waiting to be recorded.
    pub(crate) released: Vec<RunEvent>,
    /// The budget handed to the last step, reused while it is unchanged.
    pub(crate) budget: Option<Arc<Budget>>,
    pub(crate) deadline: Option<Instant>,
    pub(crate) replans: u32,
    /// Timers in flight (report waits, question timeouts), which alone do
    /// not keep the run going.
    pub(crate) timers: usize,
    /// Attempts in flight (or retries due) whose step got its result from
    /// elsewhere (an attempt sent before the run was resumed): they do not
    /// hold the run up either.
    pub(crate) abandoned: Vec<(StepId, u32)>,
    /// A durable run dispatched steps whose `StepDispatched` is not yet in
    /// the journal: their messages wait (unpolled in `in_flight`) until it is.
    pub(crate) dispatch_unjournaled: bool,
    pub(crate) revision: u32,
    /// The run's journal, for a run with a store.
    pub(crate) journal: Option<Box<Journal>>,
    /// Picked up from a journal: attempts continue from the recorded ones.
    pub(crate) resumed: Option<Resumed>,
    /// Told once the run's start is in its journal (a durable run's id may
    /// be handed out from then on).
    pub(crate) on_durable: Option<oneshot::Sender<Result<(), String>>>,
    /// The run's metrics, once metrics are on.
    pub(crate) meter: Option<Box<crate::observe::metrics::RunMeter>>,
    /// The trace context every step of the run is sent under, looked up at
    /// the first dispatch (inside the run's span) and kept.
    pub(crate) trace: Option<crate::envelope::TraceContext>,
}

/// What a resumed run starts from.
pub(crate) struct Resumed {
    pub(crate) from_seq: u64,
    pub(crate) answer: Option<(EffectKey, serde_json::Value)>,
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
            timers: 0,
            abandoned: Vec::new(),
            dispatch_unjournaled: false,
            revision: 0,
            journal: None,
            resumed: None,
            on_durable: None,
            meter: None,
            trace: None,
        }
    }

    /// The driver of a stored run: its state is the fold of its journal.
    pub(crate) fn resumed(
        mut self,
        stored: StoredRun,
        journal: Journal,
        answer: Option<(EffectKey, serde_json::Value)>,
    ) -> Self {
        // The state folds the whole journal (from a snapshot, perhaps);
        // `events` are only those after it.
        let from_seq = stored.state.events;
        self.seq = from_seq;
        self.revision = stored.state.plans.len() as u32;
        self.state = stored.state;
        self.journal = Some(Box::new(journal));
        self.resumed = Some(Resumed { from_seq, answer });
        self
    }

    /// Whether attempt `attempt` of `step` was abandoned (its step has its
    /// result from elsewhere); forgets it, as its future just ended.
    pub(crate) fn was_abandoned(&mut self, step: &StepId, attempt: u32) -> bool {
        match self
            .abandoned
            .iter()
            .position(|(s, a)| s == step && *a == attempt)
        {
            Some(i) => {
                self.abandoned.swap_remove(i);
                true
            }
            None => false,
        }
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
        self.meter(&record);
        if let Some(journal) = &mut self.journal {
            journal.push(&record);
        }
        self.publish(record);
    }

    /// Feeds the run's metrics, when they are on (one atomic load when not).
    #[inline]
    fn meter(&mut self, record: &RunEventRecord) {
        if crate::observe::metrics::is_enabled() {
            let tenant = &self.task.tenant;
            self.meter
                .get_or_insert_with(|| Box::new(crate::observe::metrics::RunMeter::new(tenant)))
                .on_event(record);
        }
    }

    /// Records one event of a durable run and makes it durable before anyone
    /// sees it (a question: whoever reads it may answer at once, from
    /// another process).
    pub(crate) async fn record_durable(&mut self, event: RunEvent) -> Result<(), Stop> {
        let record = RunEventRecord {
            run: self.run,
            seq: self.seq,
            at_ms: self.now_ms,
            event,
        };
        self.seq += 1;
        self.meter(&record);
        let Some(journal) = &mut self.journal else {
            self.publish(record);
            return Ok(());
        };
        journal.push(&record);
        let flushed = journal.flush().await;
        self.publish(record);
        // A snapshot, if one is due, folds this event too.
        if flushed.is_ok() {
            self.snapshot_if_due();
        }
        flushed
    }

    /// Applies a recorded event to the state and hands it to the readers.
    fn publish(&mut self, record: RunEventRecord) {
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
    pub(crate) fn record_released(&mut self) {
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

    pub(crate) async fn drive(mut self) -> Result<RunOutcome, RunError> {
        if self.resumed.is_none()
            && let Some(store) = self.inner.durable.store.clone()
        {
            match runlog::open_new(&self.inner, store, self.run, &self.task).await {
                Ok(journal) => self.journal = Some(Box::new(journal)),
                Err(e) => {
                    if let Some(tx) = self.on_durable.take() {
                        let _ = tx.send(Err(e.to_string()));
                    }
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
        // A durable run's start is journaled at once: from here on its id
        // names a run that can be resumed.
        if self.journal.is_some() {
            let flushed = self.flush().await;
            if let Some(tx) = self.on_durable.take() {
                let _ = tx.send(flushed.as_ref().map(|_| ()).map_err(|Stop(_, m)| m.clone()));
            }
            if let Err(stop) = flushed {
                return self.fail(stop, None).await;
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
            if let Err(stop) = self.await_workers(&plan).await {
                return self.fail(stop, Some(&mut signals)).await;
            }
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
            if let Ok(plan) = &planned
                && let Err(stop) = self.await_workers(plan).await
            {
                return self.fail(stop, Some(&mut signals)).await;
            }
            if let Err(stop) = self.adopt_planned(planned) {
                return self.fail(stop, Some(&mut signals)).await;
            }
        }
        self.run_loop(signals).await
    }

    /// Plans may name workers that are not (yet) in the fleet's directory:
    /// waits for them as the run's policy says.
    async fn await_workers(&mut self, plan: &crate::orchestrator::plan::Plan) -> Result<(), Stop> {
        let policy = self.task.policy.no_worker;
        let cancel = self.cancel.clone();
        self.routing
            .await_workers(&self.inner, plan, policy, &cancel)
            .await
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
            while let Some(pos) = self.schedule.next_ready() {
                let attempt = self.next_attempt(pos);
                if let Err(stop) = self.dispatch(pos, attempt, &mut in_flight) {
                    drop(in_flight);
                    return self.fail(stop, Some(&mut signals)).await;
                }
            }
            // A durable run's dispatches (these, and any made while handling
            // the last wake-up, such as a retry) are in the journal before
            // their messages go out — the requests in `in_flight` send
            // nothing until polled below — so a resumed run knows every
            // attempt that may be running. The results they depend on share
            // the commit: a step's result is durable before anything that
            // depends on it is sent.
            if std::mem::take(&mut self.dispatch_unjournaled)
                && let Err(stop) = self.flush().await
            {
                drop(in_flight);
                return self.fail(stop, Some(&mut signals)).await;
            }
            // What is left in flight then is only timers with nothing to wait
            // for (reports of results already settled, questions of steps
            // already done): they do not hold the run up.
            if self.schedule.idle()
                && self.parked.is_empty()
                && in_flight.len() == self.timers + self.abandoned.len()
            {
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
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<runlog::Control>>,
) -> Option<runlog::Control> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
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
