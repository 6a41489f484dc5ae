//! The durable-run protocol between a handler and its run's driver: effects
//! recorded exactly once, and questions for a person.
//!
//! A run with a [store](crate::store) keeps everything that must survive a
//! crash in its journal, and only the run's driver writes that journal (it
//! holds the run's lease). A handler working for a durable run therefore
//! *asks* the driver to record what it must not do twice:
//!
//! - [`AgentContext::effect`](crate::AgentContext::effect) runs a side effect
//!   once and sends its result to the driver, which makes it durable before
//!   answering; a later attempt of the step (after a crash, a timeout or a
//!   retry) gets the recorded result back without running the effect again.
//! - [`AgentContext::ask`](crate::AgentContext::ask) asks for input from
//!   outside the run; the driver records the question, marks the run paused
//!   and answers the handler once someone
//!   [responds](crate::orchestrator::Orchestrator::respond).
//! - A step handled in another process than its orchestrator's sends its
//!   result here too, beside its reply: should the orchestrator have died
//!   meanwhile, the one that resumed the run takes the result instead of the
//!   reply being lost.
//!
//! A request that finds no driver listening (its orchestrator died and no
//! other has resumed the run yet) is sent again, a little later each time,
//! for up to the runtime's
//! [driver wait](crate::RuntimeBuilder::driver_wait).
//!
//! Requests travel to the run's journal topic (`run.<id>.journal`), to which
//! only durable runs' drivers listen, over any transport. What the journal
//! already holds for a step travels the other way, with each new attempt's
//! [`CallContext`](crate::CallContext) ([`Recorded`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{AgentId, MessageId, RunId, StepId};
use crate::report::Tally;

/// What a run's journal holds for one step when an attempt of it is
/// dispatched: the results of its recorded effects and the answers to its
/// questions, by key. Empty for a step's first attempt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Recorded {
    /// Effect results, by effect key, in the order they were recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effects: Vec<(String, serde_json::Value)>,
    /// Answers to questions, by question key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub answers: Vec<(String, serde_json::Value)>,
}

impl Recorded {
    /// The recorded result of the effect `key`.
    pub fn effect(&self, key: &str) -> Option<&serde_json::Value> {
        self.effects.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The recorded answer to the question `key`.
    pub fn answer(&self, key: &str) -> Option<&serde_json::Value> {
        self.answers.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.effects.is_empty() && self.answers.is_empty()
    }
}

/// The stable key of one effect (or question) of a step: the same on every
/// attempt of the step, different for every step, run and effect. Hand it to
/// systems outside coditect as an idempotency key, so that the one window no
/// journal can close — the effect done, the process killed before its result
/// was recorded — does not do the effect twice there either.
///
/// Shown as `<run>/<step>/<agent kind>/<name>#<n>`, `n` counting the effects
/// of that name the handler made before it (from 0).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EffectKey(String);

impl std::str::FromStr for EffectKey {
    type Err = std::convert::Infallible;
    /// A key as shown (a request id read from an event or typed by a person).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl From<&str> for EffectKey {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl EffectKey {
    pub(crate) fn new(
        run: Option<RunId>,
        step: Option<&StepId>,
        scope: &str,
        name: &str,
        n: u32,
    ) -> Self {
        let run = run.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
        let step = step.map(|s| s.as_str()).unwrap_or("-");
        Self(format!("{run}/{step}/{scope}/{name}#{n}"))
    }

    /// The same key under another run (a fork's copy of a recorded effect).
    pub(crate) fn rebase(&mut self, from: &str, to: &str) {
        if let Some(rest) = self.0.strip_prefix(from) {
            self.0 = format!("{to}{rest}");
        }
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EffectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A handler's request to its run's driver (on `run.<id>.journal`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "journal", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JournalRequest {
    /// Record an effect's result; the reply is the recorded result (the
    /// first one recorded under this key, should two attempts race).
    Effect {
        /// The step it belongs to.
        step: Option<StepId>,
        /// The agent that made it.
        agent: AgentId,
        /// Its key.
        key: EffectKey,
        /// Its result.
        value: serde_json::Value,
    },
    /// Ask for input from outside the run; the reply is the answer.
    Ask {
        /// The step it belongs to.
        step: Option<StepId>,
        /// The agent asking.
        agent: AgentId,
        /// The question's key (also its request id).
        key: EffectKey,
        /// What to ask.
        prompt: String,
        /// The JSON Schema an answer must satisfy.
        schema: serde_json::Value,
    },
    /// A step attempt's result, sent by the worker that handled it beside
    /// its reply. The reply goes to the orchestrator that sent the step; if
    /// that one died, this request reaches whichever orchestrator drives
    /// the run now (it resumed it), so finished work is not lost with its
    /// reply. The reply to this request says the driver has it.
    Result {
        /// The step.
        step: StepId,
        /// Which attempt of the step it is.
        attempt: u32,
        /// The message that carried the attempt.
        message: MessageId,
        /// The agent that handled it.
        agent: AgentId,
        /// Its output.
        output: serde_json::Value,
        /// What the handling and its delegations reported and spent.
        #[serde(default)]
        tally: Tally,
    },
}

/// The driver's answer to a [`JournalRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JournalReply {
    /// The value recorded (an effect's result or the answer to a question).
    Recorded {
        /// The value.
        value: serde_json::Value,
    },
    /// The request was refused (the run is ending, the question timed out).
    Refused {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keys_are_stable_and_distinct() {
        let run = RunId::new();
        let a = StepId::new("a").unwrap();
        let k1 = EffectKey::new(Some(run), Some(&a), "writer", "append", 0);
        assert_eq!(
            k1,
            EffectKey::new(Some(run), Some(&a), "writer", "append", 0)
        );
        assert_ne!(
            k1,
            EffectKey::new(Some(run), Some(&a), "writer", "append", 1)
        );
        assert_ne!(
            k1,
            EffectKey::new(Some(run), Some(&a), "reader", "append", 0)
        );
        assert!(k1.as_str().starts_with(&run.to_string()));
    }

    #[test]
    fn requests_round_trip_as_json() {
        let req = JournalRequest::Ask {
            step: Some(StepId::new("a").unwrap()),
            agent: AgentId::new("w", "1").unwrap(),
            key: EffectKey("k".into()),
            prompt: "ok?".into(),
            schema: serde_json::json!({"type": "boolean"}),
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<JournalRequest>(&json).unwrap(), req);
    }
}
