//! The runtime's run-reporting protocol: what runtimes and agents tell a run's
//! driver while they work for it, and the tally a reply carries so that the
//! driver knows it has heard everything.
//!
//! # Causal order over any transport
//!
//! Reports ([`Signal`]s) travel best effort on the run's topic
//! (`run.<run id>`), separately from replies, and over NATS they are pumped by
//! other tasks than replies are, so a step's reply can overtake the reports
//! made while it was handled. Every reply of a message of a run therefore
//! carries a [`Tally`]: how many reports the handler and its whole subtree of
//! delegations made, and the usage they spent. The orchestrator records a
//! step's result only once it has received that many distinct reports of the
//! step (or after a bounded wait, when some were lost), and it counts usage
//! from the tally, so spend reported by a lost signal still reaches the run's
//! budgets — exactly once, as reports are de-duplicated by `(message, seq)`.
//!
//! Within one handler, reports are numbered from 0 (`Started`) in the order
//! they were made.
//!
//! A step's own message (one the orchestrator sent, with no parent) makes its
//! `Started` report only once there is something after it: before its first
//! other report or request, or when the handler first has to wait. A handler
//! that answers in its first poll without reporting sends no signal at all;
//! its reply's tally (zero reports, and the agent) is what the orchestrator
//! records the step's start from, still before its result. Delegated
//! messages report `Started` at once: that report is the run's `Delegated`
//! event.

use serde::{Deserialize, Serialize};

use crate::budget::Usage;
use crate::envelope::Failure;
use crate::id::{AgentId, MessageId, StepId};

/// One report about a message of a run, from the runtime or agent handling it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Signal {
    /// The message being handled.
    pub message: MessageId,
    /// The message of the step attempt it works for (for the step's own
    /// message, itself).
    pub root: MessageId,
    /// Its number among the reports about `message`, from 0.
    pub seq: u32,
    /// The step it works for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    /// The agent handling it.
    pub agent: AgentId,
    /// What happened.
    #[serde(flatten)]
    pub kind: SignalKind,
}

/// What a [`Signal`] reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SignalKind {
    /// The agent began handling the message.
    Started {
        /// The message whose handler sent it (none: the orchestrator did).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<MessageId>,
        /// Its delegation depth.
        depth: u16,
    },
    /// The agent finished handling a delegated message.
    Finished {
        /// Why it failed, if it did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        failure: Option<Failure>,
    },
    /// The agent reported progress.
    Progress {
        /// What it reported.
        data: serde_json::Value,
    },
    /// The agent spent tokens or money.
    Usage {
        /// What it spent.
        usage: Usage,
        /// The model that spent it, if a model did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<smol_str::SmolStr>,
    },
}

/// Why a report (progress or usage) could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot report to the run: {message}")]
pub struct ReportError {
    kind: ReportErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The kinds of [`ReportError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReportErrorKind {
    /// The data could not be encoded as JSON (nothing was sent).
    Encode,
    /// The transport would not take the report.
    Send,
}

impl ReportError {
    pub(crate) fn encode(type_name: &'static str, source: serde_json::Error) -> Self {
        Self {
            kind: ReportErrorKind::Encode,
            message: format!("a {type_name} cannot be encoded as JSON: {source}"),
            source: Some(Box::new(source)),
        }
    }

    pub(crate) fn send(source: crate::transport::SendError) -> Self {
        Self {
            kind: ReportErrorKind::Send,
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> ReportErrorKind {
        self.kind
    }
}

impl From<ReportError> for crate::agent::AgentError {
    fn from(e: ReportError) -> Self {
        let msg = e.to_string();
        match e.kind {
            ReportErrorKind::Encode => crate::agent::AgentError::permanent(msg).with_source(e),
            ReportErrorKind::Send => crate::agent::AgentError::transient(msg).with_source(e),
        }
    }
}

/// What the handling of one message of a run, with everything it delegated,
/// reported: carried by its reply.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Tally {
    /// Reports made about the message and its delegations.
    pub reports: u32,
    /// Usage spent by its handler and its delegations.
    #[serde(default, skip_serializing_if = "Usage::is_zero")]
    pub usage: Usage,
    /// The agent that handled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
}

impl Tally {
    /// Adds what a delegation reported.
    pub fn absorb(&mut self, child: &Tally) {
        self.reports = self.reports.saturating_add(child.reports);
        self.usage += child.usage;
    }
}

/// The tally of a handler while it runs, shared with its context.
///
/// It also knows whether the handler's `Started` report (number 0) was made:
/// a step's own message makes it only when there is something to say after
/// it — the handler reports, asks another agent, or waits (see
/// [`AgentContext`](crate::AgentContext)) — since its reply names the agent
/// and the driver records the start from that when no report came.
#[derive(Debug, Default)]
pub(crate) struct TallyCell(std::sync::Mutex<(Tally, bool)>);

impl TallyCell {
    /// Counts one report made by the handler; returns its number.
    pub(crate) fn next_report(&self) -> u32 {
        match self.0.lock() {
            Ok(mut t) => {
                let n = t.0.reports;
                t.0.reports = n.saturating_add(1);
                n
            }
            Err(_) => u32::MAX,
        }
    }

    /// Counts the `Started` report if it was not made yet: whether the
    /// caller must now send it (as number 0).
    pub(crate) fn claim_start(&self) -> bool {
        match self.0.lock() {
            Ok(mut t) if !t.1 => {
                t.1 = true;
                t.0.reports = t.0.reports.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// Counts usage the handler reported.
    pub(crate) fn add_usage(&self, usage: Usage) {
        if let Ok(mut t) = self.0.lock() {
            t.0.usage += usage;
        }
    }

    /// Adds what a delegation reported, from its reply.
    pub(crate) fn absorb(&self, child: &Tally) {
        if let Ok(mut t) = self.0.lock() {
            t.0.absorb(child);
        }
    }

    /// The tally so far.
    pub(crate) fn take(&self) -> Tally {
        match self.0.lock() {
            Ok(mut t) => std::mem::take(&mut t.0),
            Err(_) => Tally::default(),
        }
    }

    /// Starts a handler's tally with its `Started` report already counted.
    #[cfg(test)]
    pub(crate) fn started() -> Self {
        Self(std::sync::Mutex::new((
            Tally {
                reports: 1,
                ..Tally::default()
            },
            true,
        )))
    }

    /// Starts a handler's tally whose `Started` report is still to be made
    /// (by [`claim_start`](Self::claim_start)).
    pub(crate) fn unstarted() -> Self {
        Self::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn signal_round_trips_as_flat_json() {
        let s = Signal {
            message: MessageId::new(),
            root: MessageId::new(),
            seq: 2,
            step: Some(StepId::new("a").unwrap()),
            agent: AgentId::new("k", "1").unwrap(),
            kind: SignalKind::Usage {
                usage: Usage::new(1, 2, 0.5),
                model: Some("m".into()),
            },
        };
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["signal"], "usage");
        assert_eq!(serde_json::from_value::<Signal>(json).unwrap(), s);
    }

    #[test]
    fn tally_counts_in_order_and_absorbs_children() {
        let cell = TallyCell::started();
        assert_eq!(cell.next_report(), 1);
        assert_eq!(cell.next_report(), 2);
        cell.add_usage(Usage::new(3, 4, 0.0));
        cell.absorb(&Tally {
            reports: 5,
            usage: Usage::new(1, 1, 0.0),
            agent: None,
        });
        let t = cell.take();
        assert_eq!(t.reports, 8);
        assert_eq!(t.usage, Usage::new(4, 5, 0.0));
    }

    #[test]
    fn a_deferred_start_is_claimed_once_and_numbered_first() {
        let cell = TallyCell::unstarted();
        assert!(cell.claim_start());
        assert!(!cell.claim_start());
        assert_eq!(cell.next_report(), 1);
        assert_eq!(cell.take().reports, 2);
        // Never claimed: no report at all.
        assert_eq!(TallyCell::unstarted().take().reports, 0);
        assert!(!TallyCell::started().claim_start());
    }
}
