//! Plans: a DAG of steps, validated before anything runs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::agent::AgentCard;
use crate::id::AgentId;

pub use crate::id::StepId;

/// Who does a step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepTarget {
    /// Any agent offering this capability (the router picks among them).
    Capability(String),
    /// Exactly this agent id (`kind/key`).
    Agent(#[schemars(with = "String")] AgentId),
}

/// How a step's input is built.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepInput {
    /// A literal JSON value.
    Literal(serde_json::Value),
    /// The output of a step this one depends on.
    Output(StepId),
    /// The run's input.
    TaskInput,
    /// The run's goal, as a string.
    Goal,
    /// An object built from parts.
    Object(BTreeMap<String, StepInput>),
    /// An array built from parts.
    Array(Vec<StepInput>),
}

impl StepInput {
    /// A literal input (anything that converts into a JSON value: a string,
    /// a number, `json!(…)`).
    pub fn literal(value: impl Into<serde_json::Value>) -> Self {
        StepInput::Literal(value.into())
    }

    /// A literal input from any serializable value.
    ///
    /// # Errors
    /// The value's serialization error, if it cannot be written as JSON: a
    /// value that cannot be encoded is refused here, never sent as `null`.
    pub fn try_literal(value: impl Serialize) -> Result<Self, serde_json::Error> {
        serde_json::to_value(value).map(StepInput::Literal)
    }

    /// The output of step `id`.
    pub fn output(id: impl Into<StepId>) -> Self {
        StepInput::Output(id.into())
    }

    fn refs<'a>(&'a self, out: &mut Vec<&'a StepId>) {
        match self {
            StepInput::Output(id) => out.push(id),
            StepInput::Object(m) => m.values().for_each(|v| v.refs(out)),
            StepInput::Array(v) => v.iter().for_each(|v| v.refs(out)),
            StepInput::Literal(_) | StepInput::TaskInput | StepInput::Goal => {}
        }
    }

    /// Builds the value from the outputs of finished steps.
    ///
    /// # Errors
    /// The first referenced step whose output is not there.
    pub(crate) fn resolve(
        &self,
        goal: &str,
        task_input: &serde_json::Value,
        outputs: &dyn Fn(&StepId) -> Option<serde_json::Value>,
    ) -> Result<serde_json::Value, StepId> {
        Ok(match self {
            StepInput::Literal(v) => v.clone(),
            StepInput::Output(id) => outputs(id).ok_or_else(|| id.clone())?,
            StepInput::TaskInput => task_input.clone(),
            StepInput::Goal => serde_json::Value::String(goal.to_owned()),
            StepInput::Object(m) => {
                let mut o = serde_json::Map::new();
                for (k, v) in m {
                    o.insert(k.clone(), v.resolve(goal, task_input, outputs)?);
                }
                serde_json::Value::Object(o)
            }
            StepInput::Array(a) => serde_json::Value::Array(
                a.iter()
                    .map(|v| v.resolve(goal, task_input, outputs))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        })
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Step {
    /// Unique within the plan.
    pub id: StepId,
    /// Who does it.
    pub target: StepTarget,
    /// What it gets.
    pub input: StepInput,
    /// Steps that must finish first. Outputs an input refers to count as
    /// dependencies even if not listed.
    #[serde(default)]
    pub depends_on: Vec<StepId>,
    /// What the step is for, in words (for people and for re-planning).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl Step {
    /// A step done by any agent with `capability`, taking `input`.
    pub fn new(id: impl Into<StepId>, capability: impl Into<String>, input: StepInput) -> Self {
        Self {
            id: id.into(),
            target: StepTarget::Capability(capability.into()),
            input,
            depends_on: Vec::new(),
            description: String::new(),
        }
    }

    /// A step done by exactly one agent id.
    pub fn for_agent(id: impl Into<StepId>, agent: AgentId, input: StepInput) -> Self {
        Self {
            id: id.into(),
            target: StepTarget::Agent(agent),
            input,
            depends_on: Vec::new(),
            description: String::new(),
        }
    }

    /// Adds dependencies.
    #[must_use]
    pub fn after(mut self, deps: impl IntoIterator<Item = impl Into<StepId>>) -> Self {
        self.depends_on.extend(deps.into_iter().map(Into::into));
        self
    }

    /// Sets the description.
    #[must_use]
    pub fn describe(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// Every step this one waits for: listed dependencies and referenced outputs.
    pub fn dependencies(&self) -> BTreeSet<StepId> {
        let mut refs = Vec::new();
        self.input.refs(&mut refs);
        self.depends_on
            .iter()
            .cloned()
            .chain(refs.into_iter().cloned())
            .collect()
    }
}

/// A plan: steps and their dependencies, forming a DAG.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Plan {
    /// The steps.
    pub steps: Vec<Step>,
    /// The step whose output is the run's result. Default: the one step no
    /// other depends on; if there are several, an object of their outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<StepId>,
}

/// A plan that cannot run, naming the offending step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "error", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PlanError {
    /// The plan has no steps.
    #[error("the plan has no steps")]
    Empty,
    /// Two steps share an id.
    #[error("step {step} appears twice")]
    DuplicateStep {
        /// The repeated id.
        step: StepId,
    },
    /// A step depends on a step that does not exist.
    #[error("step {step} depends on {missing}, which is not in the plan")]
    DanglingDependency {
        /// The step.
        step: StepId,
        /// The missing step.
        missing: StepId,
    },
    /// The dependencies form a cycle.
    #[error("steps form a cycle: {}", cycle.iter().map(StepId::as_str).collect::<Vec<_>>().join(" -> "))]
    Cycle {
        /// The steps of the cycle, the first repeated at the end.
        cycle: Vec<StepId>,
    },
    /// No registered agent offers the capability a step needs.
    #[error("step {step} needs capability {capability:?}, which no registered agent offers")]
    UnknownCapability {
        /// The step.
        step: StepId,
        /// The capability.
        capability: String,
    },
    /// A step names an agent of a kind nobody registered.
    #[error("step {step} names agent {agent}, whose kind is not registered")]
    UnknownAgent {
        /// The step.
        step: StepId,
        /// The agent.
        agent: String,
    },
    /// A step's id is not a valid name.
    #[error("invalid step id {step:?}: {reason}")]
    InvalidStepId {
        /// The id as given.
        step: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More steps than the run's policy allows.
    #[error("the plan has {count} steps; the policy allows {max}")]
    TooManySteps {
        /// Steps in the plan.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The output names a step that is not in the plan.
    #[error("the plan's output is step {step}, which is not in the plan")]
    UnknownOutput {
        /// The step named.
        step: StepId,
    },
    /// The planner itself failed.
    #[error("the planner failed: {message}")]
    Planner {
        /// What went wrong.
        message: String,
    },
}

impl Plan {
    /// A plan of these steps.
    pub fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            output: None,
        }
    }

    /// Names the step whose output is the result.
    #[must_use]
    pub fn output(mut self, step: impl Into<StepId>) -> Self {
        self.output = Some(step.into());
        self
    }

    /// The step with an id.
    pub fn step(&self, id: &StepId) -> Option<&Step> {
        self.steps.iter().find(|s| &s.id == id)
    }

    /// Checks the plan against the agents that can run it and the step limit:
    /// unique ids, known dependencies, no cycle, every capability offered.
    ///
    /// # Errors
    /// The first [`PlanError`] found, naming the offending step.
    pub fn validate(&self, cards: &[AgentCard], max_steps: usize) -> Result<(), PlanError> {
        self.check(cards, max_steps).map(|_| ())
    }

    /// [`validate`](Self::validate), returning the plan's dependency graph by
    /// step position (what the orchestrator schedules with).
    /// [`check`](Self::check) against one card offering capability `x`.
    #[cfg(test)]
    pub(crate) fn check_graph(&self) -> Result<Graph, PlanError> {
        let card = AgentCard {
            kind: crate::id::AgentKind::new("x").map_err(|e| PlanError::InvalidStepId {
                step: "x".into(),
                reason: e.to_string(),
            })?,
            name: "x".into(),
            description: String::new(),
            capabilities: vec!["x".into()],
            input_schema: serde_json::Value::Null,
            output_schema: serde_json::Value::Null,
        };
        self.check(&[card], 1000)
    }

    pub(crate) fn check(&self, cards: &[AgentCard], max_steps: usize) -> Result<Graph, PlanError> {
        if self.steps.is_empty() {
            return Err(PlanError::Empty);
        }
        if self.steps.len() > max_steps {
            return Err(PlanError::TooManySteps {
                count: self.steps.len(),
                max: max_steps,
            });
        }
        for s in &self.steps {
            s.id.validate().map_err(|e| PlanError::InvalidStepId {
                step: s.id.as_str().to_owned(),
                reason: e.to_string(),
            })?;
        }
        let mut index: FastMap<StepId, usize> =
            FastMap::with_capacity_and_hasher(self.steps.len(), Default::default());
        for (i, s) in self.steps.iter().enumerate() {
            if index.insert(s.id.clone(), i).is_some() {
                return Err(PlanError::DuplicateStep { step: s.id.clone() });
            }
        }
        let mut deps: Vec<Vec<usize>> = Vec::with_capacity(self.steps.len());
        let mut refs = Vec::new();
        for s in &self.steps {
            refs.clear();
            s.input.refs(&mut refs);
            let mut d = Vec::with_capacity(s.depends_on.len() + refs.len());
            for id in s.depends_on.iter().chain(refs.iter().copied()) {
                match index.get(id) {
                    Some(&i) => d.push(i),
                    None => {
                        // Name the first missing one in id order, as always.
                        let missing = s
                            .dependencies()
                            .into_iter()
                            .find(|d| !index.contains_key(d))
                            .unwrap_or_else(|| id.clone());
                        return Err(PlanError::DanglingDependency {
                            step: s.id.clone(),
                            missing,
                        });
                    }
                }
            }
            if d.len() > 1 {
                d.sort_unstable();
                d.dedup();
            }
            deps.push(d);
        }
        if find_cycle(&deps).is_some() {
            // Report the cycle found walking dependencies in id order, as
            // always (the search's order decides which cycle it names).
            let by_id: Vec<Vec<usize>> = self
                .steps
                .iter()
                .map(|s| {
                    s.dependencies()
                        .iter()
                        .filter_map(|d| index.get(d).copied())
                        .collect()
                })
                .collect();
            let cycle = find_cycle(&by_id).unwrap_or_default();
            return Err(PlanError::Cycle {
                cycle: cycle
                    .into_iter()
                    .map(|i| self.steps[i].id.clone())
                    .collect(),
            });
        }
        let mut offered: Option<&str> = None;
        for s in &self.steps {
            match &s.target {
                StepTarget::Capability(c) => {
                    if offered == Some(c.as_str()) {
                        continue;
                    }
                    if !cards.iter().any(|card| card.can(c)) {
                        return Err(PlanError::UnknownCapability {
                            step: s.id.clone(),
                            capability: c.clone(),
                        });
                    }
                    offered = Some(c);
                }
                StepTarget::Agent(a) => {
                    if !cards.iter().any(|card| &card.kind == a.kind()) {
                        return Err(PlanError::UnknownAgent {
                            step: s.id.clone(),
                            agent: a.to_string(),
                        });
                    }
                }
            }
        }
        if let Some(out) = &self.output
            && !index.contains_key(out)
        {
            return Err(PlanError::UnknownOutput { step: out.clone() });
        }
        Ok(Graph { index, deps })
    }

    /// Steps no other step depends on.
    pub fn sinks(&self) -> Vec<&StepId> {
        let depended: BTreeSet<StepId> = self.steps.iter().flat_map(|s| s.dependencies()).collect();
        self.steps
            .iter()
            .map(|s| &s.id)
            .filter(|id| !depended.contains(*id))
            .collect()
    }
}

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A valid plan's dependencies by step position.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    /// The position of each step.
    pub(crate) index: FastMap<StepId, usize>,
    /// What each step waits for (positions, each once).
    pub(crate) deps: Vec<Vec<usize>>,
}

/// Finds a cycle in a dependency graph (each node lists what it depends on).
/// Iterative, so a deep plan cannot overflow the stack.
fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    let n = deps.len();
    let mut mark = vec![Mark::New; n];
    let mut parent = vec![usize::MAX; n];
    for start in 0..n {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(start, 0)];
        mark[start] = Mark::Open;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&d) = deps[node].get(*next) {
                *next += 1;
                match mark[d] {
                    Mark::New => {
                        mark[d] = Mark::Open;
                        parent[d] = node;
                        stack.push((d, 0));
                    }
                    Mark::Open => {
                        // `node` depends on `d`, which is on the stack: d ... node -> d
                        let mut cycle = vec![d];
                        let mut cur = node;
                        let mut path = vec![];
                        while cur != d && cur != usize::MAX {
                            path.push(cur);
                            cur = parent[cur];
                        }
                        path.reverse();
                        cycle.extend(path);
                        cycle.push(d);
                        return Some(cycle);
                    }
                    Mark::Done => {}
                }
            } else {
                mark[node] = Mark::Done;
                stack.pop();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::AgentKind;
    use proptest::prelude::*;

    fn card(cap: &str) -> AgentCard {
        AgentCard {
            kind: AgentKind::new(cap).unwrap(),
            name: cap.into(),
            description: String::new(),
            capabilities: vec![cap.into()],
            input_schema: serde_json::Value::Null,
            output_schema: serde_json::Value::Null,
        }
    }

    #[test]
    fn errors_name_the_offending_step() {
        let cards = [card("x")];
        let p = Plan::new([
            Step::new("a", "x", StepInput::Goal),
            Step::new("b", "x", StepInput::output("a")).after(["c"]),
            Step::new("c", "x", StepInput::output("b")),
        ]);
        match p.validate(&cards, 100).unwrap_err() {
            PlanError::Cycle { cycle } => {
                let names: Vec<_> = cycle.iter().map(StepId::as_str).collect();
                assert!(
                    names == ["b", "c", "b"] || names == ["c", "b", "c"],
                    "{names:?}"
                );
            }
            e => panic!("{e}"),
        }
        let p = Plan::new([Step::new("a", "y", StepInput::Goal)]);
        assert_eq!(
            p.validate(&cards, 100).unwrap_err(),
            PlanError::UnknownCapability {
                step: "a".into(),
                capability: "y".into()
            }
        );
        let p = Plan::new([Step::new("a", "x", StepInput::output("zz"))]);
        assert!(matches!(
            p.validate(&cards, 100).unwrap_err(),
            PlanError::DanglingDependency { step, missing } if step.as_str() == "a" && missing.as_str() == "zz"
        ));
        let p = Plan::new([
            Step::new("a", "x", StepInput::Goal),
            Step::new("a", "x", StepInput::Goal),
        ]);
        assert!(matches!(
            p.validate(&cards, 100),
            Err(PlanError::DuplicateStep { .. })
        ));
        let p = Plan::new((0..5).map(|i| Step::new(format!("s{i}"), "x", StepInput::Goal)));
        assert_eq!(
            p.validate(&cards, 4).unwrap_err(),
            PlanError::TooManySteps { count: 5, max: 4 }
        );
        assert_eq!(Plan::default().validate(&cards, 4), Err(PlanError::Empty));
    }

    #[test]
    fn deep_plans_validate_without_recursion() {
        let cards = [card("x")];
        let mut steps = vec![Step::new("s0", "x", StepInput::Goal)];
        for i in 1..20_000 {
            steps.push(Step::new(
                format!("s{i}"),
                "x",
                StepInput::output(format!("s{}", i - 1)),
            ));
        }
        Plan::new(steps).validate(&cards, 100_000).unwrap();
    }

    #[test]
    fn plans_round_trip_as_json() {
        let p = Plan::new([
            Step::new("a", "x", StepInput::literal("hi")),
            Step::new(
                "b",
                "x",
                StepInput::Object(
                    [
                        ("from_a".to_string(), StepInput::output("a")),
                        ("goal".into(), StepInput::Goal),
                    ]
                    .into(),
                ),
            ),
        ])
        .output("b");
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), p);
    }

    proptest! {
        /// Random graphs: validation finds a cycle exactly when a topological
        /// order does not exist, and never panics.
        #[test]
        fn cycle_detection_agrees_with_topological_sort(
            n in 1usize..30,
            edges in proptest::collection::vec((0usize..30, 0usize..30), 0..60),
        ) {
            let deps: Vec<Vec<usize>> = (0..n)
                .map(|i| edges.iter().filter(|(a, b)| *a == i && *b < n).map(|(_, b)| *b).collect())
                .collect();
            // Kahn's algorithm.
            let mut indeg = vec![0; n];
            for d in &deps { for _ in d { } }
            for (i, d) in deps.iter().enumerate() { indeg[i] = d.len(); }
            let mut ready: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
            let mut seen = 0;
            while let Some(x) = ready.pop() {
                seen += 1;
                for (i, d) in deps.iter().enumerate() {
                    for &y in d { if y == x { indeg[i] -= 1; if indeg[i] == 0 { ready.push(i); } } }
                }
            }
            let acyclic = seen == n;
            let found = find_cycle(&deps);
            prop_assert_eq!(found.is_none(), acyclic);
            if let Some(c) = found {
                prop_assert_eq!(c.first(), c.last());
                for w in c.windows(2) {
                    // each node in the reported cycle depends on the next
                    prop_assert!(deps[w[0]].contains(&w[1]) || deps[w[1]].contains(&w[0]));
                }
            }
        }
    }

    #[test]
    fn an_unresolvable_input_names_the_missing_reference() {
        let input = StepInput::Object(
            [("x".to_owned(), StepInput::output("gone"))]
                .into_iter()
                .collect(),
        );
        let outputs = |_: &StepId| None;
        let missing = input
            .resolve("goal", &serde_json::Value::Null, &outputs)
            .unwrap_err();
        assert_eq!(missing.as_str(), "gone");
    }

    #[test]
    fn invalid_step_ids_are_refused_with_the_plan() {
        let plan = Plan::new([Step::new("has space", "x", StepInput::Goal)]);
        assert!(matches!(
            plan.check_graph(),
            Err(PlanError::InvalidStepId { .. })
        ));
    }
}
