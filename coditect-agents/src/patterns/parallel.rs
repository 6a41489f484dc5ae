//! Parallelization: sectioning (different parts at once) and voting (the same
//! question to several voters).

use std::collections::BTreeMap;

use coditect_orchestrator::{Agent, AgentContext, AgentError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::agent::{emit, render_input};
use crate::patterns::policy_aware;
use crate::progress::AgentProgress;

/// One section of a [`Sectioning`].
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// The section's name: its key in the result.
    pub name: String,
    /// The capability that does it.
    pub capability: String,
    /// What to do with the input, put before it.
    pub instruction: String,
}

/// Sectioning: each section gets the input (after its own instruction) at
/// once, through one bounded fan-out; the answer is an object of the sections'
/// results by name, or what an aggregator makes of that object.
///
/// # Examples
///
/// ```
/// use coditect_agents::patterns::Sectioning;
/// let review = Sectioning::new()
///     .section("security", "security_review", "Review this change for security issues.")
///     .section("style", "style_review", "Review this change for style.")
///     .aggregate("summarize");
/// # let _ = review;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Sectioning {
    sections: Vec<Section>,
    aggregate: Option<String>,
}

impl Sectioning {
    /// No sections yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a section.
    #[must_use]
    pub fn section(
        mut self,
        name: impl Into<String>,
        capability: impl Into<String>,
        instruction: impl Into<String>,
    ) -> Self {
        self.sections.push(Section {
            name: name.into(),
            capability: capability.into(),
            instruction: instruction.into(),
        });
        self
    }

    /// Hands the object of results to `capability` and answers what it returns.
    #[must_use]
    pub fn aggregate(mut self, capability: impl Into<String>) -> Self {
        self.aggregate = Some(capability.into());
        self
    }
}

fn instructed(instruction: &str, input: &Value) -> Value {
    if instruction.is_empty() {
        input.clone()
    } else {
        Value::String(format!("{instruction}\n\n{}", render_input(input)))
    }
}

impl Agent for Sectioning {
    type Input = Value;
    type Output = Value;

    async fn handle(&mut self, input: Value, ctx: &AgentContext) -> Result<Value, AgentError> {
        if self.sections.is_empty() {
            return Err(AgentError::permanent("sectioning has no sections"));
        }
        let subtasks: Vec<(String, Value)> = self
            .sections
            .iter()
            .map(|s| (s.capability.clone(), instructed(&s.instruction, &input)))
            .collect();
        let results = ctx
            .delegate_all::<Value, Value>(subtasks)
            .await
            .map_err(|e| policy_aware(e, "sectioning could not fan out".into()))?;
        let mut out = serde_json::Map::new();
        for (section, result) in self.sections.iter().zip(results) {
            let value =
                result.map_err(|e| policy_aware(e, format!("section {} failed", section.name)))?;
            out.insert(section.name.clone(), value);
        }
        let out = Value::Object(out);
        match &self.aggregate {
            None => Ok(out),
            Some(cap) => ctx
                .delegate::<Value>(cap, out)
                .await
                .map_err(|e| policy_aware(e, format!("aggregation by {cap} failed"))),
        }
    }
}

/// Voting: the same input goes to every voter at once; the answer given by a
/// quorum wins (by default a strict majority of the votes cast). Answers are
/// compared as trimmed, lower-cased text.
///
/// # Examples
///
/// ```
/// use coditect_agents::patterns::Voting;
/// // Three independent looks at the same code; two must agree.
/// let vote = Voting::new().voters("vuln_check", 3).quorum(2);
/// # let _ = vote;
/// ```
#[derive(Debug, Clone, Default)]
pub struct Voting {
    voters: Vec<String>,
    quorum: Option<usize>,
}

/// The result of a vote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VoteOutcome {
    /// The winning answer, if one reached the quorum.
    pub winner: Option<Value>,
    /// How many votes the winner (or the leading answer) got.
    pub count: usize,
    /// Votes cast (failed voters abstain).
    pub cast: usize,
    /// Every vote, in voter order (`null` for an abstention).
    pub votes: Vec<Value>,
}

impl Voting {
    /// No voters yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one voter: an agent offering `capability`.
    #[must_use]
    pub fn voter(mut self, capability: impl Into<String>) -> Self {
        self.voters.push(capability.into());
        self
    }

    /// Adds `n` voters of the same capability (they run on different
    /// instances, so independently).
    #[must_use]
    pub fn voters(mut self, capability: impl Into<String>, n: usize) -> Self {
        let c = capability.into();
        self.voters.extend(std::iter::repeat_n(c, n));
        self
    }

    /// The votes the winner needs (default: more than half of those cast).
    #[must_use]
    pub fn quorum(mut self, n: usize) -> Self {
        self.quorum = Some(n.max(1));
        self
    }

    /// Tallies votes; `None` entries are abstentions.
    pub fn tally(&self, votes: Vec<Option<Value>>) -> VoteOutcome {
        let cast = votes.iter().filter(|v| v.is_some()).count();
        let quorum = self.quorum.unwrap_or(cast / 2 + 1);
        let mut counts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for (i, v) in votes.iter().enumerate() {
            if let Some(v) = v {
                let e = counts.entry(normalize(v)).or_insert((0, i));
                e.0 += 1;
            }
        }
        // The most votes wins; on a tie, the answer given first.
        let best = counts
            .values()
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .copied();
        let (count, first) = best.unwrap_or((0, 0));
        let winner = (cast > 0 && count >= quorum)
            .then(|| votes.get(first).cloned().flatten())
            .flatten();
        VoteOutcome {
            winner,
            count,
            cast,
            votes: votes
                .into_iter()
                .map(|v| v.unwrap_or(Value::Null))
                .collect(),
        }
    }
}

fn normalize(v: &Value) -> String {
    match v {
        Value::String(s) => s.trim().to_lowercase(),
        other => other.to_string(),
    }
}

impl Agent for Voting {
    type Input = Value;
    type Output = VoteOutcome;

    async fn handle(
        &mut self,
        input: Value,
        ctx: &AgentContext,
    ) -> Result<VoteOutcome, AgentError> {
        if self.voters.is_empty() {
            return Err(AgentError::permanent("voting has no voters"));
        }
        let subtasks: Vec<(String, Value)> = self
            .voters
            .iter()
            .map(|c| (c.clone(), input.clone()))
            .collect();
        let results = ctx
            .delegate_all::<Value, Value>(subtasks)
            .await
            .map_err(|e| policy_aware(e, "voting could not fan out".into()))?;
        let mut errors = Vec::new();
        let votes: Vec<Option<Value>> = results
            .into_iter()
            .map(|r| r.map_err(|e| errors.push(e.to_string())).ok())
            .collect();
        if votes.iter().all(Option::is_none) {
            return Err(AgentError::permanent(format!(
                "every voter failed: {}",
                errors.join("; ")
            )));
        }
        let outcome = self.tally(votes);
        emit(
            ctx,
            AgentProgress::Decision {
                summary: match &outcome.winner {
                    Some(w) => format!("{} of {} votes for {}", outcome.count, outcome.cast, w),
                    None => format!("no answer reached the quorum ({} votes cast)", outcome.cast),
                },
            },
        )
        .await;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn majority_wins_and_ties_without_quorum_do_not() {
        let v = Voting::new().voters("x", 3);
        let o = v.tally(vec![
            Some(json!("Yes")),
            Some(json!(" yes ")),
            Some(json!("no")),
        ]);
        assert_eq!(o.winner, Some(json!("Yes")));
        assert_eq!((o.count, o.cast), (2, 3));
        let o = v.tally(vec![Some(json!("a")), Some(json!("b")), None]);
        assert_eq!(o.winner, None);
        assert_eq!(o.cast, 2);
        let o = Voting::new()
            .quorum(1)
            .tally(vec![Some(json!("a")), Some(json!("b"))]);
        assert_eq!(o.winner, Some(json!("a")));
        assert_eq!(v.tally(vec![None, None]).winner, None);
    }
}
