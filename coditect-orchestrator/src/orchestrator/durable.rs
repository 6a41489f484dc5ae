//! Durable runs: the driver's side of the journal. Every event of a run with
//! a store goes to the store's journal, in order, under the run's lease; a
//! step's result is durable before any step that depends on it is
//! dispatched, an effect's before the handler that made it goes on, a
//! question's before the run waits for its answer. A resumed run is the fold
//! of its journal.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::body::Body;
use crate::envelope::{Envelope, Payload};
use crate::id::{RunId, StepId, Topic};
use crate::journal::{EffectKey, JournalReply, JournalRequest, Recorded};
use crate::orchestrator::driver::{Completion, Driver, InFlight, Stop};
use crate::orchestrator::event::{RunEvent, RunEventRecord};
use crate::orchestrator::state::{RunState, RunStatus};
use crate::orchestrator::task::RunErrorKind;
use crate::orchestrator::{DurableError, DurableErrorKind, Inner};
use crate::store::{Lease, NewRecord, NewRun, RunStatus as StoredStatus, Store, StoreError};
use crate::transport::{DeliveryStream, Route};

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The journal kind of a run event record.
pub(crate) const EVENT: &str = "event";

/// What reaches a durable run's driver from outside its loop.
pub(crate) enum Control {
    /// An answer to one of the run's questions, from this process.
    Respond {
        request: EffectKey,
        value: serde_json::Value,
        done: oneshot::Sender<Result<(), DurableError>>,
    },
    /// The lease could not be renewed: another orchestrator took the run.
    LeaseLost(StoreError),
}

/// A question waiting for its answer.
struct Open {
    step: Option<StepId>,
    schema: serde_json::Value,
    /// The requests of the handlers waiting for it (their payloads taken).
    waiting: Vec<Envelope>,
}

/// A durable run's journal, as its driver keeps it.
pub(crate) struct Journal {
    store: Arc<dyn Store>,
    lease: Lease,
    /// The journal's next sequence number.
    head: u64,
    /// Records not yet appended.
    pending: Vec<NewRecord>,
    /// Why an event could not be encoded, if one could not (the run stops).
    broken: Option<String>,
    /// What is recorded for each step (effects, answers).
    recorded: FastMap<StepId, Recorded>,
    /// Every recorded effect, by key: the first record wins.
    effects: FastMap<EffectKey, serde_json::Value>,
    answers: FastMap<EffectKey, serde_json::Value>,
    open: FastMap<EffectKey, Open>,
    /// Journal requests of the run's handlers.
    pub(crate) requests: Option<DeliveryStream>,
    pub(crate) control: Option<mpsc::UnboundedReceiver<Control>>,
    /// Stops the lease's renewal when the run ends.
    renewal: CancellationToken,
    inner: Arc<Inner>,
    run: RunId,
    empty: Arc<Recorded>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.renewal.cancel();
        if let Ok(mut live) = self.inner.live.lock() {
            live.remove(&self.run);
        }
    }
}

impl Journal {
    /// Opens the journal of `run` for its driver: the lease is held (and
    /// renewed in the background from now on), the run is registered to
    /// take answers, and journal requests are listened to.
    pub(crate) async fn open(
        inner: &Arc<Inner>,
        store: Arc<dyn Store>,
        run: RunId,
        lease: Lease,
        head: u64,
    ) -> Result<Self, DurableError> {
        let route = Route::topic(inner.runtime.tenant().clone(), Topic::for_journal(run));
        let requests = inner.runtime.subscribe(route, 256).await.map_err(|e| {
            DurableError::new(
                DurableErrorKind::Store,
                format!("run {run}: cannot listen to its journal requests: {e}"),
            )
        })?;
        let (tx, control) = mpsc::unbounded_channel();
        if let Ok(mut live) = inner.live.lock() {
            live.insert(run, tx.clone());
        }
        let renewal = CancellationToken::new();
        spawn_renewal(
            store.clone(),
            lease.clone(),
            inner.durable.lease_ttl,
            renewal.clone(),
            tx,
        );
        Ok(Self {
            store,
            lease,
            head,
            pending: Vec::new(),
            broken: None,
            recorded: FastMap::default(),
            effects: FastMap::default(),
            answers: FastMap::default(),
            open: FastMap::default(),
            requests: Some(requests),
            control: Some(control),
            renewal,
            inner: inner.clone(),
            run,
            empty: Arc::new(Recorded::default()),
        })
    }

    /// Queues one event record for the journal.
    pub(crate) fn push(&mut self, record: &RunEventRecord) {
        match NewRecord::json(EVENT, record) {
            Ok(r) => self.pending.push(r),
            Err(e) => {
                self.broken.get_or_insert_with(|| {
                    format!(
                        "event {} cannot be encoded for the journal: {e}",
                        record.seq
                    )
                });
            }
        }
        self.learn(&record.event);
    }

    /// Keeps what a recorded event means for later attempts.
    fn learn(&mut self, event: &RunEvent) {
        match event {
            RunEvent::EffectRecorded {
                step, key, value, ..
            } => {
                self.effects
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
                if let Some(step) = step {
                    self.recorded
                        .entry(step.clone())
                        .or_default()
                        .effects
                        .push((key.as_str().to_owned(), value.clone()));
                }
            }
            RunEvent::InputProvided { request, value } => {
                self.answers.insert(request.clone(), value.clone());
                let step = self.open.get(request).and_then(|o| o.step.clone());
                if let Some(step) = step {
                    self.recorded
                        .entry(step)
                        .or_default()
                        .answers
                        .push((request.as_str().to_owned(), value.clone()));
                }
            }
            _ => {}
        }
    }

    /// What the journal holds for `step`, for its next attempt.
    pub(crate) fn recorded(&self, step: &StepId) -> Arc<Recorded> {
        match self.recorded.get(step) {
            Some(r) if !r.is_empty() => Arc::new(r.clone()),
            _ => self.empty.clone(),
        }
    }

    /// Whether records wait to be appended.
    pub(crate) fn dirty(&self) -> bool {
        !self.pending.is_empty() || self.broken.is_some()
    }

    /// Appends what is queued, as one unit.
    pub(crate) async fn flush(&mut self) -> Result<(), Stop> {
        if let Some(why) = &self.broken {
            return Err(Stop(RunErrorKind::Journal, why.clone()));
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        match self
            .store
            .append(self.run, self.head, Some(self.lease.token), &self.pending)
            .await
        {
            Ok(head) => {
                self.head = head;
                self.pending.clear();
                Ok(())
            }
            Err(e) => Err(Stop(
                RunErrorKind::Journal,
                format!("the run's journal could not be written: {e}"),
            )),
        }
    }

    async fn set_status(&self, status: StoredStatus, summary: Option<String>) {
        if let Err(e) = self.store.set_status(self.run, status, summary).await {
            tracing::warn!(run = %self.run, error = %e, "the run's status could not be stored");
        }
    }

    /// Ends the journal: the last events appended, the status stored, the
    /// lease given up.
    pub(crate) async fn close(&mut self, status: RunStatus, summary: String) -> Result<(), Stop> {
        let flushed = self.flush().await;
        if flushed.is_ok() {
            let stored = match status {
                RunStatus::Succeeded => StoredStatus::Finished,
                RunStatus::Cancelled => StoredStatus::Cancelled,
                _ => StoredStatus::Failed,
            };
            self.set_status(stored, Some(summary)).await;
        }
        self.renewal.cancel();
        if let Err(e) = self.store.release_lease(&self.lease).await {
            tracing::debug!(run = %self.run, error = %e, "the run's lease could not be released");
        }
        self.refuse_all("the run ended").await;
        flushed
    }

    async fn reply(&self, request: &Envelope, reply: JournalReply) {
        let Some(out) = request.reply(Ok(Body::new(reply))) else {
            return;
        };
        if let Err(e) = self.inner.runtime.transport().send(out).await {
            tracing::debug!(run = %self.run, error = %e, "a journal reply could not be sent");
        }
    }

    async fn refuse_all(&mut self, reason: &str) {
        let open: Vec<Open> = self.open.drain().map(|(_, o)| o).collect();
        for o in open {
            for w in o.waiting {
                let reply = JournalReply::Refused {
                    reason: reason.to_owned(),
                };
                self.reply(&w, reply).await;
            }
        }
    }
}

/// Opens the journal of a new run: the run is added to the store's index
/// and its lease taken.
pub(crate) async fn open_new(
    inner: &Arc<Inner>,
    store: Arc<dyn Store>,
    run: RunId,
    task: &crate::orchestrator::TaskSpec,
) -> Result<Journal, DurableError> {
    store
        .create_run(NewRun::new(run, task.tenant.clone(), task.goal.clone()))
        .await
        .map_err(DurableError::store)?;
    let d = &inner.durable;
    let lease = store
        .acquire_lease(run, &d.holder, d.lease_ttl)
        .await
        .map_err(DurableError::store)?;
    Journal::open(inner, store, run, lease, 0).await
}

/// Renews the lease every third of its TTL until `stop` fires; tells the
/// driver if it is lost.
fn spawn_renewal(
    store: Arc<dyn Store>,
    lease: Lease,
    ttl: Duration,
    stop: CancellationToken,
    tx: mpsc::UnboundedSender<Control>,
) {
    tokio::spawn(async move {
        let period = ttl / 3;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
            match store.renew_lease(&lease, ttl).await {
                Ok(_) => {}
                Err(e) if e.kind() == crate::store::StoreErrorKind::Backend => {
                    // A store that is down for a moment: try again next period;
                    // appends are fenced either way.
                    tracing::warn!(run = %lease.run, error = %e, "lease renewal failed; retrying");
                }
                Err(e) => {
                    let _ = tx.send(Control::LeaseLost(e));
                    return;
                }
            }
        }
    });
}

impl Driver {
    /// Takes a journal request from a handler of this run.
    pub(crate) async fn on_journal_request(
        &mut self,
        mut envelope: Box<Envelope>,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
        let payload = std::mem::replace(&mut envelope.payload, Payload::Cancel(envelope.id));
        let Payload::Message(body) = payload else {
            return Ok(());
        };
        let request = match body.take::<JournalRequest>() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(run = %self.run, error = %e, "a message on the run's journal topic is not a journal request; ignored");
                return Ok(());
            }
        };
        self.tick();
        match request {
            JournalRequest::Effect {
                step,
                agent,
                key,
                value,
            } => {
                let known = self
                    .journal
                    .as_ref()
                    .and_then(|j| j.effects.get(&key).cloned());
                let value = match known {
                    Some(v) => v,
                    None => {
                        self.record(RunEvent::EffectRecorded {
                            step,
                            agent,
                            key,
                            value: value.clone(),
                        });
                        self.flush().await?;
                        value
                    }
                };
                if let Some(j) = &self.journal {
                    j.reply(&envelope, JournalReply::Recorded { value }).await;
                }
                Ok(())
            }
            JournalRequest::Ask {
                step,
                agent,
                key,
                prompt,
                schema,
            } => {
                let Some(journal) = self.journal.as_mut() else {
                    return Ok(());
                };
                if let Some(value) = journal.answers.get(&key).cloned() {
                    journal
                        .reply(&envelope, JournalReply::Recorded { value })
                        .await;
                    return Ok(());
                }
                if let Some(open) = journal.open.get_mut(&key) {
                    open.waiting.push(*envelope);
                    return Ok(());
                }
                let asked = self.state.questions.iter().any(|q| q.request == key);
                if let Some(journal) = self.journal.as_mut() {
                    journal.open.insert(
                        key.clone(),
                        Open {
                            step: step.clone(),
                            schema: schema.clone(),
                            waiting: vec![*envelope],
                        },
                    );
                }
                // Paused in the index before the question is seen: whoever
                // reads the event finds the run waiting for the answer.
                if let Some(j) = &self.journal {
                    j.set_status(StoredStatus::Paused, Some(format!("waiting for {key}")))
                        .await;
                }
                if !asked {
                    self.record(RunEvent::InputRequested {
                        request: key.clone(),
                        step,
                        agent,
                        prompt,
                        schema,
                    });
                }
                self.flush().await?;
                if let Some(wait) = self.task.policy.input_timeout {
                    in_flight.push(Box::pin(async move {
                        tokio::time::sleep(wait).await;
                        Completion::InputDue { request: key }
                    }));
                }
                Ok(())
            }
        }
    }

    /// Takes what reached the run from outside its loop.
    pub(crate) async fn on_control(&mut self, control: Control) -> Result<(), Stop> {
        match control {
            Control::LeaseLost(e) => Err(Stop(
                RunErrorKind::Journal,
                format!("the run's lease was lost (another orchestrator drives it now): {e}"),
            )),
            Control::Respond {
                request,
                value,
                done,
            } => {
                let result = self.answer(request, value).await;
                match result {
                    Ok(()) => {
                        let _ = done.send(Ok(()));
                        Ok(())
                    }
                    Err(Ok(refused)) => {
                        let _ = done.send(Err(refused));
                        Ok(())
                    }
                    Err(Err(stop)) => {
                        let _ = done.send(Err(DurableError::new(
                            DurableErrorKind::Store,
                            stop.1.clone(),
                        )));
                        Err(stop)
                    }
                }
            }
        }
    }

    /// Records an answer and hands it to the handlers waiting for it.
    /// `Err(Ok(_))`: the answer is refused (the run stays paused);
    /// `Err(Err(_))`: the run must stop.
    async fn answer(
        &mut self,
        request: EffectKey,
        value: serde_json::Value,
    ) -> Result<(), Result<DurableError, Stop>> {
        let Some(journal) = self.journal.as_mut() else {
            return Err(Ok(DurableError::new(
                DurableErrorKind::NoStore,
                "the run is not durable",
            )));
        };
        let Some(open) = journal.open.get(&request) else {
            let kind = if journal.answers.contains_key(&request) {
                DurableErrorKind::AlreadyAnswered
            } else {
                DurableErrorKind::NoSuchRequest
            };
            return Err(Ok(DurableError::new(
                kind,
                format!("run {}: no open request {request}", self.run),
            )));
        };
        check_answer(&request, &open.schema, &value).map_err(Ok)?;
        // Recorded while still open, so the answer is kept for its step.
        self.record(RunEvent::InputProvided {
            request: request.clone(),
            value: value.clone(),
        });
        let open = self.journal.as_mut().and_then(|j| j.open.remove(&request));
        self.flush().await.map_err(Err)?;
        if let Some(journal) = &self.journal {
            if self.state.open_questions().next().is_none() {
                journal.set_status(StoredStatus::Running, None).await;
            }
            for w in open.map(|o| o.waiting).unwrap_or_default() {
                let reply = JournalReply::Recorded {
                    value: value.clone(),
                };
                journal.reply(&w, reply).await;
            }
        }
        Ok(())
    }

    /// A question's wait is over: its handlers are told, and the run goes on
    /// (their step fails or retries as its policy says).
    pub(crate) async fn on_input_due(&mut self, request: EffectKey) -> Result<(), Stop> {
        let Some(open) = self.journal.as_mut().and_then(|j| j.open.remove(&request)) else {
            return Ok(());
        };
        self.record(RunEvent::InputTimedOut {
            request: request.clone(),
        });
        self.flush().await?;
        if let Some(journal) = &self.journal {
            if self.state.open_questions().next().is_none() {
                journal.set_status(StoredStatus::Running, None).await;
            }
            for w in open.waiting {
                let reply = JournalReply::Refused {
                    reason: format!("no answer to {request} within the run's input timeout"),
                };
                journal.reply(&w, reply).await;
            }
        }
        Ok(())
    }

    /// Makes every recorded event durable (a no-op for a run without a
    /// store).
    pub(crate) async fn flush(&mut self) -> Result<(), Stop> {
        match self.journal.as_mut() {
            Some(j) => j.flush().await,
            None => Ok(()),
        }
    }

    /// Whether events wait to be made durable.
    pub(crate) fn journal_dirty(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| j.dirty())
    }
}

/// Checks an answer against its question's JSON Schema.
pub(crate) fn check_answer(
    request: &EffectKey,
    schema: &serde_json::Value,
    value: &serde_json::Value,
) -> Result<(), DurableError> {
    let validator = jsonschema::validator_for(schema).map_err(|e| {
        DurableError::new(
            DurableErrorKind::InvalidAnswer,
            format!("request {request}: its schema is not a valid JSON Schema: {e}"),
        )
    })?;
    let errors: Vec<String> = validator
        .iter_errors(value)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{at}: {e}")
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(DurableError::new(
            DurableErrorKind::InvalidAnswer,
            format!(
                "request {request}: the answer does not satisfy its schema: {}",
                errors.join("; ")
            ),
        ))
    }
}

/// A stored run read back: its events in order and their fold.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoredRun {
    /// Every event, in journal order.
    pub events: Vec<RunEventRecord>,
    /// The fold of the events: the same state a live run's handle reports.
    pub state: RunState,
}

/// Reads a run's whole journal and folds it.
///
/// # Errors
/// [`DurableError`] of kind `Store` (with the store's error, which names the
/// run and sequence number of a corrupt record) or `Corrupt` for a record
/// that is not a run event.
pub(crate) async fn load(store: &dyn Store, run: RunId) -> Result<StoredRun, DurableError> {
    const PAGE: usize = 1000;
    let mut events = Vec::new();
    let mut state = RunState::new(run);
    let mut from = 0;
    loop {
        let page = store
            .read(run, from, PAGE)
            .await
            .map_err(DurableError::store)?;
        let n = page.len();
        for record in page {
            if record.kind != EVENT {
                return Err(DurableError::new(
                    DurableErrorKind::Corrupt,
                    format!(
                        "run {run}: journal record {} has kind {:?}, not a run event",
                        record.seq, record.kind
                    ),
                ));
            }
            let event: RunEventRecord = record.json().map_err(|e| {
                DurableError::new(
                    DurableErrorKind::Corrupt,
                    format!(
                        "run {run}: journal record {} is not a run event: {e}",
                        record.seq
                    ),
                )
            })?;
            if event.seq != record.seq || event.run != run {
                return Err(DurableError::new(
                    DurableErrorKind::Corrupt,
                    format!(
                        "run {run}: journal record {} holds event {} of run {}",
                        record.seq, event.seq, event.run
                    ),
                ));
            }
            state.apply(&event);
            events.push(event);
        }
        from += n as u64;
        if n < PAGE {
            break;
        }
    }
    Ok(StoredRun { events, state })
}

impl Journal {
    /// Teaches a journal opened for a resumed run what its events recorded.
    pub(crate) fn replay(&mut self, events: &[RunEventRecord]) {
        for e in events {
            if let RunEvent::InputRequested {
                request,
                step,
                schema,
                ..
            } = &e.event
            {
                // Known as open until an answer follows; no handler waits yet.
                self.open.insert(
                    request.clone(),
                    Open {
                        step: step.clone(),
                        schema: schema.clone(),
                        waiting: Vec::new(),
                    },
                );
            }
            if let RunEvent::InputProvided { request, .. } | RunEvent::InputTimedOut { request } =
                &e.event
            {
                self.learn(&e.event);
                self.open.remove(request);
                continue;
            }
            self.learn(&e.event);
        }
    }
}
