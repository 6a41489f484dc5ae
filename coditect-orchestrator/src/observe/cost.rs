//! What a run cost, attributed: per step, agent, delegation subtree, model
//! and tenant.
//!
//! Costs are counted in whole billionths of a US dollar ([`Tokens::cost_nano_usd`]):
//! each usage report is rounded once, then only integers are added, so the
//! parts of every breakdown add up to the total exactly (floating-point sums
//! would depend on their order).
//!
//! ```
//! use coditect_orchestrator::observe::CostReport;
//! let report = CostReport::from_events(&[]);
//! assert_eq!(report.total.cost_nano_usd, 0);
//! assert!(report.adds_up());
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

use crate::budget::Usage;
use crate::id::{AgentId, MessageId, StepId};
use crate::orchestrator::{RunEventRecord, RunState};

/// One usage report of a run, where it belongs: what the cost views add up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// The step it counts for (none: the run's planner, or a report that came
    /// after its step's result).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    /// The agent that spent it.
    pub agent: AgentId,
    /// The message whose handler spent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageId>,
    /// The model, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<SmolStr>,
    /// What was spent.
    pub usage: Usage,
}

/// Tokens and cost, in integers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    /// Input tokens, cached reads and writes included.
    pub input: u64,
    /// Output tokens.
    pub output: u64,
    /// Of the input, tokens read from a prompt cache.
    pub cache_read: u64,
    /// Of the input, tokens written to a prompt cache.
    pub cache_write: u64,
    /// Cost in billionths of a US dollar.
    pub cost_nano_usd: u64,
}

/// `usd` in whole billionths (negative, NaN: zero).
pub(crate) fn nano_usd(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e9).round() as u64
    } else {
        0
    }
}

impl Tokens {
    /// The integer form of a usage.
    pub fn of(u: &Usage) -> Self {
        Self {
            input: u.input_tokens,
            output: u.output_tokens,
            cache_read: u.cache_read_tokens,
            cache_write: u.cache_write_tokens,
            cost_nano_usd: nano_usd(u.cost_usd),
        }
    }

    /// The cost in US dollars.
    pub fn cost_usd(&self) -> f64 {
        self.cost_nano_usd as f64 / 1e9
    }

    /// Input plus output tokens.
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }

    fn add(&mut self, o: &Tokens) {
        self.input = self.input.saturating_add(o.input);
        self.output = self.output.saturating_add(o.output);
        self.cache_read = self.cache_read.saturating_add(o.cache_read);
        self.cache_write = self.cache_write.saturating_add(o.cache_write);
        self.cost_nano_usd = self.cost_nano_usd.saturating_add(o.cost_nano_usd);
    }

    fn sum<'a>(it: impl IntoIterator<Item = &'a Tokens>) -> Tokens {
        let mut t = Tokens::default();
        for x in it {
            t.add(x);
        }
        t
    }
}

/// What one message's handling and everything it delegated cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubtreeCost {
    /// The message.
    pub message: MessageId,
    /// Its step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepId>,
    /// The agent that handled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    /// What its own handler spent.
    pub own: Tokens,
    /// `own` plus its children's totals.
    pub total: Tokens,
    /// The subtasks it delegated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<SubtreeCost>,
}

/// A run's tokens and cost, broken down.
///
/// Each breakdown adds up to [`total`](Self::total) exactly:
/// `by_step` plus `outside_steps`; `by_agent`; `by_model` (`unknown` for
/// reports that named none); `by_tenant`; the delegation `subtrees` (one per
/// step attempt) plus `outside_subtrees`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// Everything the run spent.
    pub total: Tokens,
    /// Per step id.
    pub by_step: BTreeMap<String, Tokens>,
    /// Spent outside any step (planning, reports that came after their
    /// step's result).
    pub outside_steps: Tokens,
    /// Per agent id (`kind/key`).
    pub by_agent: BTreeMap<String, Tokens>,
    /// Per model.
    pub by_model: BTreeMap<String, Tokens>,
    /// Per tenant.
    pub by_tenant: BTreeMap<String, Tokens>,
    /// Per step attempt, with the subtasks each delegated.
    pub subtrees: Vec<SubtreeCost>,
    /// Spent by no traced message (the planner).
    pub outside_subtrees: Tokens,
}

impl CostReport {
    /// The report of a run's events (a live run's so far, or a stored one).
    pub fn from_events(events: &[RunEventRecord]) -> Self {
        let mut state = RunState::default();
        for e in events {
            state.apply(e);
        }
        Self::of(&state)
    }

    /// The report of a run's state.
    pub fn of(state: &RunState) -> Self {
        let tenant = state
            .task
            .as_ref()
            .map_or_else(|| "unknown".to_owned(), |t| t.tenant.to_string());
        let mut r = CostReport::default();
        let mut own: std::collections::HashMap<MessageId, Tokens> = Default::default();
        for s in &state.spend {
            let t = Tokens::of(&s.usage);
            r.total.add(&t);
            match &s.step {
                Some(step) => r
                    .by_step
                    .entry(step.as_str().to_owned())
                    .or_default()
                    .add(&t),
                None => r.outside_steps.add(&t),
            }
            r.by_agent.entry(s.agent.to_string()).or_default().add(&t);
            r.by_model
                .entry(s.model.as_deref().unwrap_or("unknown").to_owned())
                .or_default()
                .add(&t);
            r.by_tenant.entry(tenant.clone()).or_default().add(&t);
            match s.message.filter(|m| state.trace.contains_key(m)) {
                Some(m) => own.entry(m).or_default().add(&t),
                None => r.outside_subtrees.add(&t),
            }
        }
        r.subtrees = subtrees(state, &own);
        r
    }

    /// Whether every breakdown adds up to the total (it always should: a
    /// check for tests and for readers of stored reports).
    pub fn adds_up(&self) -> bool {
        let mut steps = Tokens::sum(self.by_step.values());
        steps.add(&self.outside_steps);
        let mut trees = Tokens::sum(self.subtrees.iter().map(|s| &s.total));
        trees.add(&self.outside_subtrees);
        let nodes_add_up = self.subtrees.iter().all(node_adds_up);
        steps == self.total
            && Tokens::sum(self.by_agent.values()) == self.total
            && Tokens::sum(self.by_model.values()) == self.total
            && Tokens::sum(self.by_tenant.values()) == self.total
            && trees == self.total
            && nodes_add_up
    }
}

fn node_adds_up(n: &SubtreeCost) -> bool {
    let mut t = n.own;
    for c in &n.children {
        t.add(&c.total);
    }
    t == n.total && n.children.iter().all(node_adds_up)
}

/// The trace's trees with each node's own and total spend (built without
/// recursion: a deep delegation chain must not overflow the stack).
fn subtrees(
    state: &RunState,
    own: &std::collections::HashMap<MessageId, Tokens>,
) -> Vec<SubtreeCost> {
    let tree = state.trace_tree();
    let mut out = Vec::with_capacity(tree.len());
    for root in &tree {
        // Post-order: (node, index of the next child).
        let mut stack: Vec<(&crate::orchestrator::TraceNode, usize, SubtreeCost)> =
            vec![(root, 0, leaf(root, own))];
        let mut done = None;
        while let Some((node, next, _)) = stack.last_mut() {
            if let Some(kid) = node.children.get(*next) {
                *next += 1;
                stack.push((kid, 0, leaf(kid, own)));
                continue;
            }
            if let Some((_, _, mut finished)) = stack.pop() {
                let mut total = finished.own;
                for c in &finished.children {
                    total.add(&c.total);
                }
                finished.total = total;
                match stack.last_mut() {
                    Some((_, _, parent)) => parent.children.push(finished),
                    None => done = Some(finished),
                }
            }
        }
        out.extend(done);
    }
    out
}

fn leaf(
    n: &crate::orchestrator::TraceNode,
    own: &std::collections::HashMap<MessageId, Tokens>,
) -> SubtreeCost {
    let o = own.get(&n.message).copied().unwrap_or_default();
    SubtreeCost {
        message: n.message,
        step: n.step.clone(),
        agent: n.agent.clone(),
        own: o,
        total: o,
        children: Vec::new(),
    }
}

impl RunState {
    /// What the run has cost so far, broken down.
    pub fn cost(&self) -> CostReport {
        CostReport::of(self)
    }
}

impl crate::orchestrator::RunOutcome {
    /// What the run cost, broken down per step, agent, delegation subtree,
    /// model and tenant.
    pub fn cost(&self) -> CostReport {
        CostReport::of(&self.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_round_once_to_billionths() {
        assert_eq!(nano_usd(0.1), 100_000_000);
        assert_eq!(nano_usd(-1.0), 0);
        assert_eq!(nano_usd(f64::NAN), 0);
        let t = Tokens::of(&Usage::new(3, 4, 0.000_000_001_5));
        assert_eq!(t.cost_nano_usd, 2);
    }
}
