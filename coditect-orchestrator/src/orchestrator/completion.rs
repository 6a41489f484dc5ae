//! What comes back to the driver: step attempts answered (held until their
//! reports are in), retries due, and the reports themselves.

use futures::{FutureExt, StreamExt};

use crate::body::Body;
use crate::envelope::{Failure, FailureKind, Payload};
use crate::error::RequestError;
use crate::id::{MessageId, RunId, StepId};
use crate::orchestrator::driver::{Completion, Driver, InFlight, Stop};
use crate::orchestrator::event::RunEvent;
use crate::orchestrator::schedule::At;
use crate::orchestrator::task::RunErrorKind;
use crate::report::{Signal, Tally};
use crate::runtime::Answer;
use crate::transport::DeliveryStream;

/// A step attempt answered whose reports are not all in yet.
pub(crate) struct Parked {
    at: At,
    step: StepId,
    attempt: u32,
    result: Result<Body, RequestError>,
    tally: Option<Tally>,
}

impl Driver {
    /// Takes every report that is already here (budgets are not checked: the
    /// run is ending either way).
    pub(crate) fn drain_ready(&mut self, signals: &mut DeliveryStream) {
        while let Some(Some(delivery)) = signals.next().now_or_never() {
            if let Some(signal) = decode(self.run, delivery.envelope.payload) {
                self.intake.signal(signal, &mut self.released);
            }
        }
        self.record_released();
    }

    pub(crate) async fn on_completion(
        &mut self,
        done: Completion,
        signals: &mut DeliveryStream,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
        match done {
            Completion::RetryDue { at, step, attempt } => {
                if !self.abandoned.is_empty() && self.was_abandoned(&step, attempt) {
                    return Ok(());
                }
                match self.schedule.locate(at, &step) {
                    // The step may have its result from elsewhere meanwhile.
                    Some(pos) if !self.schedule.awaits(pos, attempt) => Ok(()),
                    Some(pos) => self.dispatch(pos, attempt, in_flight),
                    None => {
                        // The step left the plan while it waited.
                        self.schedule.drop_orphan(&step);
                        Ok(())
                    }
                }
            }
            Completion::InputDue { request } => {
                self.timers -= 1;
                self.on_input_due(request).await
            }
            Completion::ReportsDue { message } => {
                self.timers -= 1;
                match self.parked.remove(&message) {
                    Some(parked) => self.settle(message, parked, in_flight).await,
                    None => Ok(()),
                }
            }
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
                let abandoned = !self.abandoned.is_empty() && self.was_abandoned(&step, attempt);
                if abandoned || self.schedule.finished(at, &step, attempt).is_none() {
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
                self.timers += 1;
                in_flight.push(Box::pin(async move {
                    tokio::time::sleep(wait).await;
                    Completion::ReportsDue { message }
                }));
                Ok(())
            }
        }
    }

    /// Records a step attempt's result, its reports all in (or given up on).
    pub(crate) async fn settle(
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

    pub(crate) async fn on_signal(
        &mut self,
        payload: Payload,
        in_flight: &mut InFlight,
    ) -> Result<(), Stop> {
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
