//! A durable run's journal as its driver keeps it. Every event of a run with
//! a store goes to the store's journal, in order, under the run's lease; a
//! step's result is durable before any step that depends on it is
//! dispatched, a dispatch before its message is sent (so a resumed run knows
//! every attempt that may still be running, and sends the next), an effect's
//! before the handler that made it goes on, a
//! question's before the run waits for its answer. A resumed run is the fold
//! of its journal.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::body::Body;
use crate::envelope::Envelope;
use crate::id::{RunId, StepId, Topic};
use crate::journal::{EffectKey, JournalReply, Recorded};
use crate::orchestrator::driver::Stop;
use crate::orchestrator::event::{RunEvent, RunEventRecord};
use crate::orchestrator::state::{RunState, RunStatus};
use crate::orchestrator::task::RunErrorKind;
use crate::orchestrator::{DurableError, DurableErrorKind, Inner};
use crate::store::{Lease, NewRecord, NewRun, RunStatus as StoredStatus, Store, StoreError};
use crate::transport::{DeliveryStream, Route};

/// The journal kind of a run event record.
pub(crate) const EVENT: &str = "event";

/// The journal kind of a successful run's end whose result is left out of
/// the record: a large result is the outputs of steps the journal holds
/// already, so it is folded back from them when the journal is read
/// instead of being written twice (and refused by the store's record
/// limit, failing a run whose work is all done). Its payload is the
/// `RunFinished` event record with `output: null`.
pub(crate) const FINISHED: &str = "finished";

/// The largest encoded `RunFinished` record that keeps its result inline.
pub(crate) const INLINE_RESULT_MAX: usize = 64 * 1024;

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

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
pub(crate) struct Open {
    pub(crate) step: Option<StepId>,
    pub(crate) schema: serde_json::Value,
    /// The requests of the handlers waiting for it (their payloads taken).
    pub(crate) waiting: Vec<Envelope>,
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
    pub(crate) effects: FastMap<EffectKey, serde_json::Value>,
    pub(crate) answers: FastMap<EffectKey, serde_json::Value>,
    pub(crate) open: FastMap<EffectKey, Open>,
    /// Journal requests of the run's handlers.
    pub(crate) requests: Option<DeliveryStream>,
    pub(crate) control: Option<mpsc::UnboundedReceiver<Control>>,
    /// Stops the lease's renewal when the run ends.
    renewal: CancellationToken,
    inner: Arc<Inner>,
    run: RunId,
    empty: Arc<Recorded>,
    /// The journal position of the latest snapshot written or read.
    snapshot_seq: u64,
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
            snapshot_seq: 0,
        })
    }

    /// Whether a snapshot is due: everything is durable, and the journal
    /// grew by the policy's number of events since the last one.
    pub(crate) fn snapshot_due(&self) -> bool {
        let every = self.inner.durable.snapshot_every;
        every > 0 && self.pending.is_empty() && self.head >= self.snapshot_seq + every
    }

    /// Writes a snapshot of `state` (the fold of the whole journal so far)
    /// in the background; one that fails to be stored is only a slower
    /// resume, so it is logged, not fatal.
    pub(crate) fn snapshot(&mut self, state: &RunState) {
        let body = crate::orchestrator::snapshot::BodyRef {
            state,
            effects: self.effects.iter().collect(),
            recorded: self.recorded.iter().collect(),
        };
        self.snapshot_seq = self.head;
        let payload = match serde_json::to_vec(&body) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(run = %self.run, error = %e, "the run's snapshot cannot be encoded");
                return;
            }
        };
        let snapshot = crate::store::Snapshot::new(self.head, payload);
        let (store, run) = (self.store.clone(), self.run);
        tokio::spawn(async move {
            if let Err(e) = store.put_snapshot(run, &snapshot).await {
                tracing::warn!(%run, seq = snapshot.seq, error = %e, "the run's snapshot was not stored");
            }
        });
    }

    /// Teaches a journal opened for a resumed run what a snapshot says was
    /// recorded by its point: effects, and what each step has recorded; the
    /// state's questions say which are answered and which still open.
    pub(crate) fn restore(
        &mut self,
        restored: crate::orchestrator::snapshot::Restored,
        state: &RunState,
        seq: u64,
    ) {
        self.effects.extend(restored.effects);
        self.recorded.extend(restored.recorded);
        for q in &state.questions {
            match &q.answer {
                Some(value) => {
                    self.answers.insert(q.request.clone(), value.clone());
                }
                None if !q.timed_out => {
                    self.open.insert(
                        q.request.clone(),
                        Open {
                            step: q.step.clone(),
                            schema: q.schema.clone(),
                            waiting: Vec::new(),
                        },
                    );
                }
                None => {}
            }
        }
        self.snapshot_seq = seq;
    }

    /// Queues one event record for the journal.
    pub(crate) fn push(&mut self, record: &RunEventRecord) {
        let encoded = NewRecord::json(EVENT, record);
        if let (
            Ok(r),
            RunEvent::RunFinished {
                status: RunStatus::Succeeded,
                output: Some(_),
                error,
            },
        ) = (&encoded, &record.event)
            && r.payload().len() > INLINE_RESULT_MAX
        {
            let slim = RunEventRecord {
                run: record.run,
                seq: record.seq,
                at_ms: record.at_ms,
                event: RunEvent::RunFinished {
                    status: RunStatus::Succeeded,
                    output: None,
                    error: error.clone(),
                },
            };
            if let Ok(r) = NewRecord::json(FINISHED, &slim) {
                self.pending.push(r);
                return;
            }
        }
        match encoded {
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
    pub(crate) fn learn(&mut self, event: &RunEvent) {
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

    pub(crate) async fn set_status(&self, status: StoredStatus, summary: Option<String>) {
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

    pub(crate) async fn reply(&self, request: &Envelope, reply: JournalReply) {
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
