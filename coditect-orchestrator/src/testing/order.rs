//! A checker of the causal order of a run's events, written from the
//! documented invariant alone (not from the code that produces the events).

use std::collections::HashMap;

use crate::id::{MessageId, StepId};
use crate::orchestrator::{RunEvent, RunEventRecord};

/// Where a step stands while the events are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Dispatched,
    Started,
    Ended,
}

/// An event out of causal order: its sequence number and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("event {seq}: {problem}")]
pub struct OrderViolation {
    /// The sequence number of the offending event.
    pub seq: u64,
    /// What is wrong with it.
    pub problem: String,
}

/// Checks a run's events against the order every run guarantees:
/// sequence numbers 0, 1, 2… with no gap; for each step attempt,
/// `StepDispatched` < `StepStarted` < every `StepProgress`, `UsageReported`,
/// `Delegated` and `DelegationFinished` of it < its `StepSucceeded` or
/// `StepFailed` (an attempt no agent took may fail without a start); nothing of a step between its result and its next dispatch;
/// a delegation's end after its start; `RunFinished` once, last.
///
/// # Errors
/// The first [`OrderViolation`].
pub fn check_causal_order(events: &[RunEventRecord]) -> Result<(), OrderViolation> {
    let mut phase: HashMap<StepId, Phase> = HashMap::new();
    let mut delegated: HashMap<MessageId, Option<StepId>> = HashMap::new();
    let mut finished = false;
    let fail = |seq: u64, problem: String| Err(OrderViolation { seq, problem });
    let in_step =
        |phase: &HashMap<StepId, Phase>, step: &Option<StepId>, seq: u64, what: &str| match step {
            Some(s) => match phase.get(s) {
                Some(Phase::Started) => Ok(()),
                other => Err(OrderViolation {
                    seq,
                    problem: format!("{what} of step {s} while it is {other:?}"),
                }),
            },
            None => Ok(()),
        };
    for (i, r) in events.iter().enumerate() {
        let seq = r.seq;
        if seq != i as u64 {
            return fail(seq, format!("expected sequence number {i}"));
        }
        if finished {
            return fail(seq, "an event after RunFinished".into());
        }
        match &r.event {
            RunEvent::StepDispatched { step, .. } => {
                if phase.get(step).is_some_and(|p| *p != Phase::Ended) {
                    return fail(seq, format!("step {step} dispatched while in flight"));
                }
                phase.insert(step.clone(), Phase::Dispatched);
            }
            RunEvent::StepStarted { step, .. } => {
                if phase.get(step) != Some(&Phase::Dispatched) {
                    return fail(seq, format!("step {step} started before it was dispatched"));
                }
                phase.insert(step.clone(), Phase::Started);
            }
            RunEvent::StepProgress { step, .. } => in_step(&phase, step, seq, "progress")?,
            RunEvent::UsageReported { step, .. } => in_step(&phase, step, seq, "usage")?,
            RunEvent::Delegated { step, message, .. } => {
                in_step(&phase, step, seq, "a delegation")?;
                delegated.insert(*message, step.clone());
            }
            RunEvent::DelegationFinished { message, .. } => match delegated.get(message) {
                Some(step) => in_step(&phase, step, seq, "a delegation's end")?,
                None => return fail(seq, format!("delegation {message} ended before it began")),
            },
            RunEvent::StepSucceeded { step, .. } => {
                if phase.get(step) != Some(&Phase::Started) {
                    return fail(
                        seq,
                        format!("step {step} succeeded while {:?}", phase.get(step)),
                    );
                }
                phase.insert(step.clone(), Phase::Ended);
            }
            // An attempt may fail before any agent took it (no agent, a
            // timeout in the queue): dispatched is enough.
            RunEvent::StepFailed { step, .. } => {
                if !matches!(phase.get(step), Some(Phase::Started | Phase::Dispatched)) {
                    return fail(
                        seq,
                        format!(
                            "result of step {step} while it is {:?} (not started)",
                            phase.get(step)
                        ),
                    );
                }
                phase.insert(step.clone(), Phase::Ended);
            }
            RunEvent::RunFinished { .. } => finished = true,
            _ => {}
        }
    }
    if !finished {
        return fail(events.len() as u64, "no RunFinished".into());
    }
    Ok(())
}
