//! What participants report about a run, turned into its events in causal
//! order: pure bookkeeping, no tokio, tested on its own.
//!
//! Each step attempt has a *gate*, opened when it is dispatched and closed
//! when its result is recorded. A report ([`Signal`]) of the attempt — of its
//! own handler or of anything it delegated — passes the gate only after the
//! attempt's `StepStarted`; earlier ones are held and released right after
//! it. Reports are de-duplicated by `(message, seq)` and counted, so the
//! driver can hold a step's result until the reply's
//! [`Tally`](crate::report::Tally) says everything has arrived. Closing a
//! gate records what never arrived as best it can: a `StepStarted` made from
//! the reply, and the usage the reply counted that no report carried.
//! Reports of closed attempts are late: their usage still counts (for the run,
//! not the step, whose result is already recorded) unless the reply counted
//! it already; everything else of theirs is dropped.

use crate::budget::Usage;
use crate::id::{AgentId, MessageId, StepId};
use crate::orchestrator::event::RunEvent;
use crate::report::{Signal, SignalKind, Tally};

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

/// One step attempt's gate.
#[derive(Debug)]
struct Gate {
    step: StepId,
    started: bool,
    held: Vec<Signal>,
    /// Distinct reports received.
    received: u32,
    /// Usage those reports carried.
    usage: Usage,
    /// How many reports its reply said there are, once it came.
    expected: Option<u32>,
}

/// The reports of a run, gated per step attempt.
#[derive(Debug, Default)]
pub(crate) struct Intake {
    seen: FastSet<(MessageId, u32)>,
    gates: FastMap<MessageId, Gate>,
    /// Closed attempts: usage their reply counted that no report had carried
    /// yet (what a late report of theirs is checked against).
    closed: FastMap<MessageId, Usage>,
}

/// `a - b` per field, never below zero.
fn minus(a: Usage, b: Usage) -> Usage {
    Usage {
        input_tokens: a.input_tokens.saturating_sub(b.input_tokens),
        output_tokens: a.output_tokens.saturating_sub(b.output_tokens),
        cost_usd: (a.cost_usd - b.cost_usd).max(0.0),
        cache_read_tokens: a.cache_read_tokens.saturating_sub(b.cache_read_tokens),
        cache_write_tokens: a.cache_write_tokens.saturating_sub(b.cache_write_tokens),
    }
}

/// The smaller of `a` and `b` per field.
fn least(a: Usage, b: Usage) -> Usage {
    Usage {
        input_tokens: a.input_tokens.min(b.input_tokens),
        output_tokens: a.output_tokens.min(b.output_tokens),
        cost_usd: a.cost_usd.min(b.cost_usd),
        cache_read_tokens: a.cache_read_tokens.min(b.cache_read_tokens),
        cache_write_tokens: a.cache_write_tokens.min(b.cache_write_tokens),
    }
}

impl Intake {
    /// Opens the gate of a step attempt carried by message `root`.
    pub(crate) fn open(&mut self, root: MessageId, step: StepId) {
        self.gates.insert(
            root,
            Gate {
                step,
                started: false,
                held: Vec::new(),
                received: 0,
                usage: Usage::default(),
                expected: None,
            },
        );
    }

    /// Whether the attempt carried by `root` is open here (this driver sent
    /// it and waits for its result).
    pub(crate) fn is_open(&self, root: &MessageId) -> bool {
        self.gates.contains_key(root)
    }

    /// Opens the gate of an attempt sent before this driver took the run,
    /// whose result came after all: `started` if its start is recorded,
    /// `recorded` the usage its reports recorded already. [`close`](Self::close)
    /// it next, with its tally.
    pub(crate) fn adopt(&mut self, root: MessageId, step: StepId, started: bool, recorded: Usage) {
        self.gates.insert(
            root,
            Gate {
                step,
                started,
                held: Vec::new(),
                received: 0,
                usage: recorded,
                expected: None,
            },
        );
    }

    /// Takes one report; appends the events it releases to `out`. Returns
    /// the attempt whose reply is in and whose reports are now all there.
    pub(crate) fn signal(&mut self, signal: Signal, out: &mut Vec<RunEvent>) -> Option<MessageId> {
        if !self.seen.insert((signal.message, signal.seq)) {
            return None;
        }
        let root = signal.root;
        let Some(gate) = self.gates.get_mut(&root) else {
            self.late(signal, out);
            return None;
        };
        gate.received = gate.received.saturating_add(1);
        if let SignalKind::Usage { usage, .. } = &signal.kind {
            gate.usage += *usage;
        }
        let own_start = signal.message == root && matches!(signal.kind, SignalKind::Started { .. });
        if own_start && !gate.started {
            gate.started = true;
            out.push(RunEvent::StepStarted {
                step: gate.step.clone(),
                message: root,
                agent: signal.agent,
            });
            for held in std::mem::take(&mut gate.held) {
                out.extend(event_of(&gate.step, held));
            }
        } else if gate.started {
            out.extend(event_of(&gate.step, signal));
        } else {
            gate.held.push(signal);
        }
        match gate.expected {
            Some(n) if gate.received >= n => Some(root),
            _ => None,
        }
    }

    /// The attempt's reply is in, saying `expected` reports were made: whether
    /// they all arrived already.
    pub(crate) fn expect(&mut self, root: &MessageId, expected: u32) -> bool {
        match self.gates.get_mut(root) {
            Some(gate) => {
                gate.expected = Some(expected);
                gate.received >= expected
            }
            None => true,
        }
    }

    /// Closes the attempt's gate before its result is recorded: appends a
    /// `StepStarted` if none came (the agent from the reply), the reports
    /// still held, and the usage the reply counted that no report carried.
    pub(crate) fn close(
        &mut self,
        root: &MessageId,
        tally: Option<&Tally>,
        agent: Option<&AgentId>,
        out: &mut Vec<RunEvent>,
    ) {
        let Some(gate) = self.gates.remove(root) else {
            return;
        };
        let agent = tally.and_then(|t| t.agent.as_ref()).or(agent);
        if !gate.started {
            if let Some(agent) = agent {
                out.push(RunEvent::StepStarted {
                    step: gate.step.clone(),
                    message: *root,
                    agent: agent.clone(),
                });
            }
            for held in gate.held {
                out.extend(event_of(&gate.step, held));
            }
        }
        let missing = tally.map_or_else(Usage::default, |t| minus(t.usage, gate.usage));
        if !missing.is_zero()
            && let Some(agent) = agent
        {
            out.push(RunEvent::UsageReported {
                step: Some(gate.step.clone()),
                agent: agent.clone(),
                message: Some(*root),
                model: None,
                usage: missing,
            });
        }
        // A late report is checked against this credit; none is no entry
        // (a late report of an attempt not found counts in full, as it would).
        if !missing.is_zero() {
            self.closed.insert(*root, missing);
        }
    }

    /// A report of an attempt whose result is recorded (or of no attempt of
    /// this run): its usage counts once, for the run.
    fn late(&mut self, signal: Signal, out: &mut Vec<RunEvent>) {
        let SignalKind::Usage { usage, model } = signal.kind else {
            tracing::debug!(message = %signal.message, "a report after its step's result; dropped");
            return;
        };
        let usage = match self.closed.get_mut(&signal.root) {
            Some(credit) => {
                let counted = least(usage, *credit);
                *credit = minus(*credit, counted);
                minus(usage, counted)
            }
            None => usage,
        };
        if !usage.is_zero() {
            out.push(RunEvent::UsageReported {
                step: None,
                agent: signal.agent,
                message: Some(signal.message),
                model,
                usage,
            });
        }
    }
}

/// The event a report of an open attempt becomes.
fn event_of(step: &StepId, signal: Signal) -> Option<RunEvent> {
    let step = Some(step.clone());
    Some(match signal.kind {
        SignalKind::Started { parent: None, .. } => return None,
        SignalKind::Started {
            parent: Some(parent),
            depth,
        } => RunEvent::Delegated {
            step,
            parent,
            message: signal.message,
            agent: signal.agent,
            depth,
        },
        SignalKind::Finished { failure } => RunEvent::DelegationFinished {
            message: signal.message,
            failure,
        },
        SignalKind::Progress { data } => RunEvent::StepProgress {
            step,
            agent: signal.agent,
            data,
        },
        SignalKind::Usage { usage, model } => RunEvent::UsageReported {
            step,
            agent: signal.agent,
            message: Some(signal.message),
            model,
            usage,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn agent(n: &str) -> AgentId {
        AgentId::new("k", n).unwrap()
    }

    fn sig(message: MessageId, root: MessageId, seq: u32, kind: SignalKind) -> Signal {
        Signal {
            message,
            root,
            seq,
            step: Some(StepId::new("a").unwrap()),
            agent: agent("1"),
            kind,
        }
    }

    fn started(message: MessageId, root: MessageId, parent: Option<MessageId>) -> Signal {
        sig(message, root, 0, SignalKind::Started { parent, depth: 0 })
    }

    fn usage(message: MessageId, root: MessageId, seq: u32, n: u64) -> Signal {
        sig(
            message,
            root,
            seq,
            SignalKind::Usage {
                usage: Usage::new(n, 0, 0.0),
                model: None,
            },
        )
    }

    #[test]
    fn reports_before_the_start_wait_for_it() {
        let mut intake = Intake::default();
        let root = MessageId::new();
        let child = MessageId::new();
        intake.open(root, StepId::new("a").unwrap());
        let mut out = Vec::new();
        intake.signal(started(child, root, Some(root)), &mut out);
        intake.signal(usage(child, root, 1, 5), &mut out);
        assert!(out.is_empty(), "held until the step starts");
        intake.signal(started(root, root, None), &mut out);
        assert!(matches!(out[0], RunEvent::StepStarted { .. }));
        assert!(matches!(out[1], RunEvent::Delegated { .. }));
        assert!(matches!(out[2], RunEvent::UsageReported { .. }));
    }

    #[test]
    fn duplicates_count_once_and_the_gate_knows_when_all_arrived() {
        let mut intake = Intake::default();
        let root = MessageId::new();
        intake.open(root, StepId::new("a").unwrap());
        let mut out = Vec::new();
        intake.signal(started(root, root, None), &mut out);
        assert!(!intake.expect(&root, 2));
        assert_eq!(intake.signal(started(root, root, None), &mut out), None);
        assert_eq!(intake.signal(usage(root, root, 1, 3), &mut out), Some(root));
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn lost_reports_are_made_good_from_the_tally_once() {
        let mut intake = Intake::default();
        let root = MessageId::new();
        intake.open(root, StepId::new("a").unwrap());
        let tally = Tally {
            reports: 3,
            usage: Usage::new(10, 4, 0.0),
            agent: Some(agent("1")),
        };
        let mut out = Vec::new();
        // Only the second usage report (4 input tokens of the 10) arrived.
        intake.signal(usage(root, root, 2, 4), &mut out);
        assert!(!intake.expect(&root, tally.reports));
        intake.close(&root, Some(&tally), None, &mut out);
        let total: u64 = out
            .iter()
            .filter_map(|e| match e {
                RunEvent::UsageReported { usage, .. } => Some(usage.input_tokens),
                _ => None,
            })
            .sum();
        assert_eq!(total, 10);
        assert!(matches!(out[0], RunEvent::StepStarted { .. }));
        // The lost report turns up late: the tally counted it already.
        let mut late = Vec::new();
        intake.signal(usage(root, root, 1, 6), &mut late);
        assert!(late.is_empty());
        // A report the tally did not count (after a timeout) still counts.
        intake.signal(usage(root, root, 3, 2), &mut late);
        assert!(matches!(
            late[..],
            [RunEvent::UsageReported { step: None, .. }]
        ));
    }

    proptest! {
        /// Whatever order reports arrive in, duplicated or not, once the gate
        /// closes: the start comes first, every report of the attempt appears
        /// once, and the usage adds up to the tally's.
        #[test]
        fn any_arrival_order_keeps_causal_order(
            order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle(),
            dup in proptest::collection::vec(any::<bool>(), 6),
            lose in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let root = MessageId::new();
            let child = MessageId::new();
            let reports = [
                started(root, root, None),
                usage(root, root, 1, 1),
                started(child, root, Some(root)),
                usage(child, root, 1, 2),
                sig(child, root, 2, SignalKind::Finished { failure: None }),
                usage(root, root, 2, 4),
            ];
            let tally = Tally { reports: 6, usage: Usage::new(7, 0, 0.0), agent: Some(agent("1")) };
            let mut intake = Intake::default();
            intake.open(root, StepId::new("a").unwrap());
            let mut out = Vec::new();
            let mut done = false;
            for &i in &order {
                if lose[i] { continue; }
                done |= intake.signal(reports[i].clone(), &mut out).is_some();
                if dup[i] {
                    done |= intake.signal(reports[i].clone(), &mut out).is_some();
                }
            }
            let all = intake.expect(&root, tally.reports);
            prop_assert_eq!(all || done, lose.iter().all(|l| !l));
            intake.close(&root, Some(&tally), None, &mut out);
            let first_is_start = matches!(out[0], RunEvent::StepStarted { .. });
            prop_assert!(first_is_start);
            let starts = out.iter().filter(|e| matches!(e, RunEvent::StepStarted { .. })).count();
            prop_assert_eq!(starts, 1);
            let total: u64 = out.iter().filter_map(|e| match e {
                RunEvent::UsageReported { usage, .. } => Some(usage.input_tokens),
                _ => None,
            }).sum();
            prop_assert_eq!(total, 7);
        }
    }
}
