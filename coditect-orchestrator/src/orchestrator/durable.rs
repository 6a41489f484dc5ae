//! Durable runs, the driver's side: journal requests from handlers (effects
//! recorded, questions asked), answers, input timeouts, and reading a stored
//! run back. (The journal itself, as the driver keeps it: `runlog`.)

use tokio::sync::oneshot;

use crate::envelope::{Envelope, Payload};
use crate::id::{AgentId, MessageId, RunId, StepId};
use crate::journal::{EffectKey, JournalReply, JournalRequest};
use crate::orchestrator::driver::{Completion, Driver, InFlight, Stop};
use crate::orchestrator::event::{RunEvent, RunEventRecord};
use crate::orchestrator::runlog::{Control, EVENT, FINISHED, Open};
use crate::orchestrator::state::{RunState, RunStatus};
use crate::orchestrator::task::RunErrorKind;
use crate::orchestrator::{DurableError, DurableErrorKind};
use crate::report::Tally;
use crate::store::{RunStatus as StoredStatus, Store};

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
                        self.record_durable(RunEvent::EffectRecorded {
                            step,
                            agent,
                            key,
                            value: value.clone(),
                        })
                        .await?;
                        value
                    }
                };
                if let Some(j) = &self.journal {
                    j.reply(&envelope, JournalReply::Recorded { value }).await;
                }
                Ok(())
            }
            JournalRequest::Result {
                step,
                attempt,
                message,
                agent,
                output,
                tally,
            } => {
                let taken = self
                    .on_held_result(step, attempt, message, agent, output, tally)
                    .await;
                if let Some(j) = &self.journal {
                    j.reply(
                        &envelope,
                        JournalReply::Recorded {
                            value: serde_json::Value::Null,
                        },
                    )
                    .await;
                }
                taken
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
                if asked {
                    self.flush().await?;
                } else {
                    self.record_durable(RunEvent::InputRequested {
                        request: key.clone(),
                        step,
                        agent,
                        prompt,
                        schema,
                    })
                    .await?;
                }
                if let Some(wait) = self.task.policy.input_timeout {
                    self.timers += 1;
                    in_flight.push(Box::pin(async move {
                        tokio::time::sleep(wait).await;
                        Completion::InputDue { request: key }
                    }));
                }
                Ok(())
            }
        }
    }

    /// A step result a worker sent to the run's journal beside its reply.
    /// One of an attempt this driver sent is settled by its reply (which
    /// carries the same); one of an attempt sent before this driver took the
    /// run (its orchestrator died, and the reply with it) is taken here, if
    /// the step is still to be done: its usage counted once against what
    /// its reports recorded already, its output recorded and durable before
    /// the worker is told, the attempt sent since no longer waited for.
    async fn on_held_result(
        &mut self,
        step: StepId,
        attempt: u32,
        message: MessageId,
        agent: AgentId,
        output: serde_json::Value,
        tally: Tally,
    ) -> Result<(), Stop> {
        if self.intake.is_open(&message) {
            return Ok(());
        }
        let Some(pos) = self.schedule.position(&step) else {
            return Ok(());
        };
        let done = self
            .state
            .steps
            .get(&step)
            .is_some_and(|s| s.output.is_some());
        if done {
            return Ok(());
        }
        let Some(dropped) = self.schedule.settle_elsewhere(pos) else {
            return Ok(());
        };
        if dropped != 0 {
            // Its request (or retry timer) stays in flight until it ends or
            // the run does (which withdraws it); it holds the run up no more.
            self.abandoned.push((step.clone(), dropped));
        }
        tracing::info!(run = %self.run, %step, attempt, "took a step's result sent before the run was resumed");
        let started = self
            .state
            .trace
            .get(&message)
            .is_some_and(|t| t.agent.is_some());
        let recorded = self.state.usage_under(message);
        self.intake.adopt(message, step.clone(), started, recorded);
        self.intake
            .close(&message, Some(&tally), Some(&agent), &mut self.released);
        self.record_released();
        self.record(RunEvent::StepSucceeded {
            step,
            attempt,
            output,
        });
        self.schedule.release(pos);
        self.flush().await?;
        match self.check_budgets() {
            Some(stop) => Err(stop),
            None => Ok(()),
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

    /// Records the answer a resumed run was resumed with.
    pub(crate) async fn resume_answer(&mut self) -> Option<Stop> {
        let (request, value) = self.resumed.as_mut()?.answer.take()?;
        let (done, _rx) = oneshot::channel();
        self.on_control(Control::Respond {
            request,
            value,
            done,
        })
        .await
        .err()
    }

    /// Makes every recorded event durable (a no-op for a run without a
    /// store).
    pub(crate) async fn flush(&mut self) -> Result<(), Stop> {
        let Some(j) = self.journal.as_mut() else {
            return Ok(());
        };
        j.flush().await?;
        self.snapshot_if_due();
        Ok(())
    }

    /// Writes a snapshot of the run if one is due (every event recorded is
    /// in the state and durable).
    pub(crate) fn snapshot_if_due(&mut self) {
        if let Some(j) = self.journal.as_mut()
            && j.snapshot_due()
        {
            j.snapshot(&self.state);
        }
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
    load_from(store, run, 0, RunState::new(run)).await
}

/// Reads a run's journal from `from` on and folds it into `state` (the fold
/// of the records before `from`, as a snapshot holds it); the run read back
/// has the events from `from` on.
///
/// # Errors
/// As [`load`].
pub(crate) async fn load_from(
    store: &dyn Store,
    run: RunId,
    mut from: u64,
    mut state: RunState,
) -> Result<StoredRun, DurableError> {
    const PAGE: usize = 1000;
    let mut events = Vec::new();
    loop {
        let page = store
            .read(run, from, PAGE)
            .await
            .map_err(DurableError::store)?;
        let n = page.len();
        for record in page {
            if record.kind != EVENT && record.kind != FINISHED {
                return Err(DurableError::new(
                    DurableErrorKind::Corrupt,
                    format!(
                        "run {run}: journal record {} has kind {:?}, not a run event",
                        record.seq, record.kind
                    ),
                ));
            }
            let mut event: RunEventRecord = record.json().map_err(|e| {
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
            if record.kind == FINISHED {
                // The result was left out of the record: fold it back from
                // the steps' outputs, as the run computed it.
                let result = match &mut event.event {
                    RunEvent::RunFinished {
                        status: RunStatus::Succeeded,
                        output: output @ None,
                        ..
                    } => state.result_of_plan().map(|r| *output = Some(r)),
                    _ => None,
                };
                if result.is_none() {
                    return Err(DurableError::new(
                        DurableErrorKind::Corrupt,
                        format!(
                            "run {run}: journal record {} is a run's end without its result, \
                             but not of a succeeded run with a plan",
                            record.seq
                        ),
                    ));
                }
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
