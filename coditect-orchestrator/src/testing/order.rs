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
    /// In flight when its orchestrator stopped; the run was resumed since.
    Interrupted,
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
/// `StepDispatched` < `StepStarted` (by the message that dispatch sent) <
/// every `StepProgress`, `UsageReported`,
/// `Delegated` and `DelegationFinished` of it < its `StepSucceeded` or
/// `StepFailed` (an attempt no agent took may fail without a start); nothing
/// of a step between its result and its next dispatch; a delegation's end
/// after its start; `RunFinished` once, last.
///
/// A resumed run's journal holds more than one orchestrator's events. At a
/// `RunResumed`, the attempts then in flight are interrupted: each such step
/// is dispatched again with a higher attempt number, or the interrupted
/// attempt's own result arrives late (it finished on a worker while no
/// orchestrator listened) and ends the step; its progress may come in while it
/// runs there. An interrupted attempt's result after the step ended is a
/// violation, as is a re-dispatch that does not raise the attempt.
///
/// # Errors
/// The first [`OrderViolation`].
pub fn check_causal_order(events: &[RunEventRecord]) -> Result<(), OrderViolation> {
    // Each step's current attempt, and the attempts a resume interrupted.
    let mut steps: HashMap<StepId, Current> = HashMap::new();
    let mut interrupted: HashMap<StepId, Vec<(u32, MessageId)>> = HashMap::new();
    let mut delegated: HashMap<MessageId, Option<StepId>> = HashMap::new();
    let mut finished = false;
    let fail = |seq: u64, problem: String| Err(OrderViolation { seq, problem });
    let phase = |steps: &HashMap<StepId, Current>, step: &StepId| steps.get(step).map(|c| c.phase);
    let in_step = |steps: &HashMap<StepId, Current>,
                   step: &Option<StepId>,
                   seq: u64,
                   what: &str| match step {
        Some(s) => match phase(steps, s) {
            Some(Phase::Started | Phase::Interrupted) => Ok(()),
            other => Err(OrderViolation {
                seq,
                problem: format!("{what} of step {s} while it is {other:?}"),
            }),
        },
        None => Ok(()),
    };
    // Whether `n` is an interrupted attempt of a step not ended yet; it is
    // forgotten, as it can end the step once.
    let late = |steps: &HashMap<StepId, Current>,
                interrupted: &mut HashMap<StepId, Vec<(u32, MessageId)>>,
                step: &StepId,
                n: u32| {
        if phase(steps, step) == Some(Phase::Ended) {
            return false;
        }
        let Some(list) = interrupted.get_mut(step) else {
            return false;
        };
        let before = list.len();
        list.retain(|(a, _)| *a != n);
        list.len() < before
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
            RunEvent::StepDispatched {
                step,
                attempt: n,
                message,
                ..
            } => {
                match steps.get(step) {
                    Some(c) if matches!(c.phase, Phase::Dispatched | Phase::Started) => {
                        return fail(seq, format!("step {step} dispatched while in flight"));
                    }
                    Some(c) if c.phase == Phase::Interrupted && *n <= c.attempt => {
                        return fail(
                            seq,
                            format!(
                                "step {step} dispatched again after a resume as attempt {n}, not past the interrupted one"
                            ),
                        );
                    }
                    _ => {}
                }
                steps.insert(
                    step.clone(),
                    Current {
                        phase: Phase::Dispatched,
                        attempt: *n,
                        message: *message,
                    },
                );
            }
            RunEvent::RunResumed { .. } => {
                for (step, c) in &mut steps {
                    if matches!(c.phase, Phase::Dispatched | Phase::Started) {
                        c.phase = Phase::Interrupted;
                        interrupted
                            .entry(step.clone())
                            .or_default()
                            .push((c.attempt, c.message));
                    }
                }
            }
            RunEvent::StepStarted { step, message, .. } => {
                let running_elsewhere = phase(&steps, step) != Some(Phase::Ended)
                    && interrupted
                        .get(step)
                        .is_some_and(|l| l.iter().any(|(_, m)| m == message));
                match steps.get_mut(step) {
                    // An interrupted attempt, still running elsewhere.
                    _ if running_elsewhere => {}
                    Some(c) if c.message == *message => {
                        if c.phase != Phase::Dispatched {
                            return fail(
                                seq,
                                format!("step {step} started before it was dispatched"),
                            );
                        }
                        c.phase = Phase::Started;
                    }
                    _ => {
                        return fail(
                            seq,
                            format!(
                                "step {step} started by message {message}, which no dispatch of it sent"
                            ),
                        );
                    }
                }
            }
            RunEvent::StepProgress { step, .. } => in_step(&steps, step, seq, "progress")?,
            RunEvent::UsageReported { step, .. } => in_step(&steps, step, seq, "usage")?,
            RunEvent::Delegated { step, message, .. } => {
                in_step(&steps, step, seq, "a delegation")?;
                delegated.insert(*message, step.clone());
            }
            RunEvent::DelegationFinished { message, .. } => match delegated.get(message) {
                Some(step) => in_step(&steps, step, seq, "a delegation's end")?,
                None => return fail(seq, format!("delegation {message} ended before it began")),
            },
            RunEvent::StepSucceeded {
                step, attempt: n, ..
            } => {
                let late = late(&steps, &mut interrupted, step, *n);
                let current = steps
                    .get(step)
                    .is_some_and(|c| c.phase == Phase::Started && c.attempt == *n);
                if !late && !current {
                    return fail(
                        seq,
                        format!("step {step} succeeded while {:?}", phase(&steps, step)),
                    );
                }
                end(&mut steps, step);
            }
            // An attempt may fail before any agent took it (no agent, a
            // timeout in the queue): dispatched is enough.
            RunEvent::StepFailed {
                step, attempt: n, ..
            } => {
                let late = late(&steps, &mut interrupted, step, *n);
                if !late
                    && !matches!(
                        phase(&steps, step),
                        Some(Phase::Started | Phase::Dispatched)
                    )
                {
                    return fail(
                        seq,
                        format!(
                            "result of step {step} while it is {:?} (not started)",
                            phase(&steps, step)
                        ),
                    );
                }
                end(&mut steps, step);
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

/// A step's latest attempt as the events tell it.
#[derive(Clone, Copy, Debug)]
struct Current {
    phase: Phase,
    attempt: u32,
    message: MessageId,
}

/// The step has its result (a step always has an attempt by then).
fn end(steps: &mut HashMap<StepId, Current>, step: &StepId) {
    if let Some(c) = steps.get_mut(step) {
        c.phase = Phase::Ended;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{AgentId, RunId};
    use crate::orchestrator::RunStatus;

    fn step() -> StepId {
        StepId::new("s").unwrap()
    }

    fn dispatched(attempt: u32, message: MessageId) -> RunEvent {
        RunEvent::StepDispatched {
            step: step(),
            attempt,
            message,
            to: "k".into(),
        }
    }

    fn started(message: MessageId) -> RunEvent {
        RunEvent::StepStarted {
            step: step(),
            message,
            agent: AgentId::new("k", "1").unwrap(),
        }
    }

    fn succeeded(attempt: u32) -> RunEvent {
        RunEvent::StepSucceeded {
            step: step(),
            attempt,
            output: serde_json::Value::Null,
        }
    }

    fn resumed() -> RunEvent {
        RunEvent::RunResumed {
            holder: "b".into(),
            from_seq: 0,
        }
    }

    fn check(events: Vec<RunEvent>) -> Result<(), OrderViolation> {
        let run = RunId::new();
        let mut records: Vec<RunEventRecord> = events
            .into_iter()
            .enumerate()
            .map(|(i, event)| RunEventRecord {
                run,
                seq: i as u64,
                at_ms: 0,
                event,
            })
            .collect();
        records.push(RunEventRecord {
            run,
            seq: records.len() as u64,
            at_ms: 0,
            event: RunEvent::RunFinished {
                status: RunStatus::Succeeded,
                output: None,
                error: None,
            },
        });
        check_causal_order(&records)
    }

    #[test]
    fn a_resumed_run_may_dispatch_an_interrupted_step_again_or_take_its_late_result() {
        let (m1, m2) = (MessageId::new(), MessageId::new());
        // Dispatched again, with the next attempt, and finished by it.
        check(vec![
            dispatched(1, m1),
            started(m1),
            resumed(),
            dispatched(2, m2),
            started(m2),
            succeeded(2),
        ])
        .unwrap();
        // The interrupted attempt's result arrives after the re-dispatch,
        // its start and usage told again by the worker that ran it.
        check(vec![
            dispatched(1, m1),
            resumed(),
            dispatched(2, m2),
            started(m1),
            succeeded(1),
        ])
        .unwrap();
    }

    #[test]
    fn what_a_resume_does_not_excuse_is_still_a_violation() {
        let (m1, m2) = (MessageId::new(), MessageId::new());
        // No resume: a second dispatch of a step in flight.
        assert!(check(vec![dispatched(1, m1), started(m1), dispatched(2, m2)]).is_err());
        // A re-dispatch that does not raise the attempt.
        let e = check(vec![
            dispatched(1, m1),
            started(m1),
            resumed(),
            dispatched(1, m2),
        ]);
        assert!(e.is_err_and(|v| v.seq == 3));
        // The interrupted attempt's result after the step already ended.
        let e = check(vec![
            dispatched(1, m1),
            started(m1),
            resumed(),
            dispatched(2, m2),
            started(m2),
            succeeded(2),
            succeeded(1),
        ]);
        assert!(e.is_err_and(|v| v.seq == 6));
        // A start by a message no dispatch sent (a dispatch missing from the
        // journal).
        let e = check(vec![dispatched(1, m1), resumed(), dispatched(1, m2)]);
        assert!(e.is_err());
        let e = check(vec![dispatched(1, m1), started(m2)]);
        assert!(e.is_err_and(|v| v.seq == 1 && v.problem.contains("no dispatch")));
        // A result of an attempt that was never dispatched nor interrupted.
        let e = check(vec![dispatched(1, m1), started(m1), succeeded(3)]);
        assert!(e.is_err_and(|v| v.seq == 2));
        // Started after the late result ended the step.
        let e = check(vec![
            dispatched(1, m1),
            started(m1),
            resumed(),
            dispatched(2, m2),
            succeeded(1),
            started(m2),
        ]);
        assert!(e.is_err_and(|v| v.seq == 5));
    }
}
