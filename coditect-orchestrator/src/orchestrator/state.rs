//! A run's state: one plain, serializable value, changed only by applying its
//! events in order.

use serde::{Deserialize, Serialize};

use crate::journal::EffectKey;
use std::collections::BTreeMap;

use crate::budget::Usage;
use crate::envelope::Failure;
use crate::id::{AgentId, MessageId, RunId};
use crate::orchestrator::event::{RunEvent, RunEventRecord};
use crate::orchestrator::plan::{Plan, StepId};
use crate::orchestrator::task::TaskSpec;

/// A map that keeps its entries in the order they were first inserted and
/// finds them by hashing (an [`indexmap::IndexMap`] with a fast hasher): what a
/// run's state uses for its steps and its trace, so applying an event is a
/// constant-time lookup rather than a walk down an ordered tree comparing
/// strings. It serializes as a map, in insertion order.
///
/// ```
/// use coditect_orchestrator::orchestrator::OrderedMap;
/// let mut m: OrderedMap<String, u32> = OrderedMap::default();
/// m.insert("b".into(), 1);
/// m.insert("a".into(), 2);
/// *m.entry("b".into()).or_default() += 10;
/// assert_eq!(m["b"], 11);
/// assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["b", "a"]);
/// ```
pub type OrderedMap<K, V> = indexmap::IndexMap<K, V, foldhash::fast::RandomState>;

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// The position of a step's entry, inserting a default one (last) if it is
/// missing; the id is cloned only then.
fn slot<V: Default>(map: &mut OrderedMap<StepId, V>, key: &StepId) -> usize {
    match map.get_index_of(key) {
        Some(i) => i,
        None => map.insert_full(key.clone(), V::default()).0,
    }
}

/// Where a run stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Not started.
    #[default]
    Pending,
    /// Working.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished without one.
    Failed,
    /// Cancelled by its caller.
    Cancelled,
    /// Waiting for input from outside (a question of one of its steps).
    Paused,
}

/// Where a step stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Waiting for its dependencies (or for a retry).
    #[default]
    Pending,
    /// Sent to an agent.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Failed for good.
    Failed,
}

/// One step's state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Where it stands.
    pub status: StepStatus,
    /// Attempts made.
    pub attempts: u32,
    /// The message of the latest attempt.
    pub message: Option<MessageId>,
    /// The agent that took the latest attempt.
    pub agent: Option<AgentId>,
    /// The result, once it succeeded.
    pub output: Option<serde_json::Value>,
    /// The latest failure.
    pub failure: Option<Failure>,
    /// Usage spent on it (its subtasks included).
    pub usage: Usage,
}

/// One message of a run in its trace: who handled it and who asked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// The message whose handler sent this one (none: the orchestrator).
    pub parent: Option<MessageId>,
    /// The step it belongs to.
    pub step: Option<StepId>,
    /// The agent that handled it.
    pub agent: Option<AgentId>,
    /// Whether it finished, and how.
    pub outcome: Option<Result<(), Failure>>,
    /// Order of arrival in the trace.
    pub order: u64,
}

/// A node of the trace tree: a message, its handler, and what it caused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceNode {
    /// The message.
    pub message: MessageId,
    /// The step it belongs to.
    pub step: Option<StepId>,
    /// The agent that handled it.
    pub agent: Option<AgentId>,
    /// Whether it succeeded (none: still open).
    pub ok: Option<bool>,
    /// The messages its handler sent and waited for, in order.
    pub children: Vec<TraceNode>,
}

impl TraceNode {
    /// The agents of this node and its descendants, depth first, as
    /// `kind/key` strings (handy in tests and logs).
    pub fn agents(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.walk(&mut out);
        out
    }

    fn walk(&self, out: &mut Vec<String>) {
        out.push(
            self.agent
                .as_ref()
                .map_or("?".to_owned(), ToString::to_string),
        );
        for c in &self.children {
            c.walk(out);
        }
    }
}

/// Everything known about a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The run.
    pub run: Option<RunId>,
    /// The task.
    pub task: Option<TaskSpec>,
    /// Where it stands.
    pub status: RunStatus,
    /// The plan and every revision of it, the current one last.
    pub plans: Vec<Plan>,
    /// Each step of the current plan (and finished steps of earlier ones),
    /// in the order the plans listed them.
    pub steps: OrderedMap<StepId, StepState>,
    /// Usage over the whole run.
    pub usage: Usage,
    /// Units of work done: step attempts dispatched plus subtasks delegated.
    pub units: usize,
    /// Every message of the run, by id, in the order they were recorded.
    pub trace: OrderedMap<MessageId, TraceEntry>,
    /// The result, once the run succeeded.
    pub output: Option<serde_json::Value>,
    /// What went wrong, if it failed.
    pub error: Option<String>,
    /// Events applied so far.
    pub events: u64,
    /// The questions its steps asked, in order, with their answers once
    /// given.
    #[serde(default)]
    pub questions: Vec<Question>,
    /// Every usage report, in order: what the run's
    /// [cost report](crate::observe::CostReport) adds up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spend: Vec<crate::observe::Spend>,
}

/// A question a step asked (human in the loop).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Question {
    /// The request id to respond to.
    pub request: EffectKey,
    /// The step that asked.
    pub step: Option<StepId>,
    /// The agent that asked.
    pub agent: AgentId,
    /// What it asked.
    pub prompt: String,
    /// The JSON Schema an answer must satisfy.
    pub schema: serde_json::Value,
    /// The answer, once given.
    pub answer: Option<serde_json::Value>,
    /// Whether the wait for it timed out.
    pub timed_out: bool,
}

impl RunState {
    /// The questions still waiting for an answer.
    pub fn open_questions(&self) -> impl Iterator<Item = &Question> {
        self.questions
            .iter()
            .filter(|q| q.answer.is_none() && !q.timed_out)
    }

    /// The usage recorded for the message `root` and the messages its
    /// handling caused (its delegations, theirs, and so on).
    pub fn usage_under(&self, root: MessageId) -> Usage {
        let mut total = Usage::default();
        for spend in &self.spend {
            let Some(mut m) = spend.message else {
                continue;
            };
            // Up the trace to the top; bounded by its size, should a
            // journal hold a cycle.
            let mut hops = self.trace.len();
            while m != root && hops > 0 {
                match self.trace.get(&m).and_then(|t| t.parent) {
                    Some(p) => m = p,
                    None => break,
                }
                hops -= 1;
            }
            if m == root {
                total += spend.usage;
            }
        }
        total
    }

    fn question(&mut self, request: &EffectKey) -> Option<&mut Question> {
        self.questions.iter_mut().find(|q| &q.request == request)
    }

    fn settle_pause(&mut self) {
        if self.status == RunStatus::Paused && self.open_questions().next().is_none() {
            self.status = RunStatus::Running;
        }
    }
}

impl RunState {
    /// The state of a run before its first event.
    pub fn new(run: RunId) -> Self {
        Self {
            run: Some(run),
            ..Self::default()
        }
    }

    /// The current plan.
    pub fn plan(&self) -> Option<&Plan> {
        self.plans.last()
    }

    /// The run's result as its current plan defines it, from the outputs
    /// folded so far, with the plan's sinks (the steps nothing depends on)
    /// worked out from its steps: what a journal whose end record leaves
    /// the result out is read back with. The driver gives
    /// [`result_with_sinks`](Self::result_with_sinks) its schedule's sinks.
    pub(crate) fn result_of_plan(&self) -> Option<serde_json::Value> {
        let plan = self.plan()?;
        let depended: std::collections::HashSet<StepId, foldhash::fast::RandomState> =
            plan.steps.iter().flat_map(|s| s.dependencies()).collect();
        let sinks: Vec<&StepId> = plan
            .steps
            .iter()
            .map(|s| &s.id)
            .filter(|id| !depended.contains(*id))
            .collect();
        Some(self.result_with_sinks(plan, &sinks))
    }

    /// The run's result given its plan's sinks, in plan order: the named
    /// output step's output, or (none named) the one sink's, or an object of
    /// the sinks' outputs.
    pub(crate) fn result_with_sinks(&self, plan: &Plan, sinks: &[&StepId]) -> serde_json::Value {
        let output_of = |id: &StepId| {
            self.steps
                .get(id)
                .and_then(|s| s.output.clone())
                .unwrap_or(serde_json::Value::Null)
        };
        if let Some(out) = &plan.output {
            return output_of(out);
        }
        if let [one] = sinks {
            return output_of(one);
        }
        // Gathered at their exact size first: the map sorts its input in a
        // Vec, which would otherwise grow by doubling.
        let mut entries = Vec::with_capacity(sinks.len());
        entries.extend(
            sinks
                .iter()
                .map(|id| (id.as_str().to_owned(), output_of(id))),
        );
        serde_json::Value::Object(entries.into_iter().collect())
    }

    /// Applies one event. Applying a step's success twice records it once.
    pub fn apply(&mut self, record: &RunEventRecord) {
        self.events += 1;
        match &record.event {
            RunEvent::RunStarted { task } => self.run_started(task.clone()),
            RunEvent::PlanMade { plan, .. } => self.plan_made(plan.clone()),
            RunEvent::StepSucceeded { step, output, .. } => {
                if let Some(s) = self.succeeding(step) {
                    s.output = Some(output.clone());
                }
            }
            RunEvent::RunFinished {
                status,
                output,
                error,
            } => self.run_finished(*status, output.clone(), error.clone()),
            other => self.apply_small(other),
        }
    }

    /// [`apply`](Self::apply) taking the event by value, so its large parts
    /// (the plan, outputs) move into the state instead of being copied. The
    /// same change as `apply`, through the same code.
    pub(crate) fn apply_owned(&mut self, record: RunEventRecord) {
        self.events += 1;
        match record.event {
            RunEvent::RunStarted { task } => self.run_started(task),
            RunEvent::PlanMade { plan, .. } => self.plan_made(plan),
            RunEvent::StepSucceeded { step, output, .. } => {
                if let Some(s) = self.succeeding(&step) {
                    s.output = Some(output);
                }
            }
            RunEvent::RunFinished {
                status,
                output,
                error,
            } => self.run_finished(status, output, error),
            other => self.apply_small(&other),
        }
    }

    fn run_started(&mut self, task: TaskSpec) {
        self.task = Some(task);
        self.status = RunStatus::Running;
    }

    fn plan_made(&mut self, plan: Plan) {
        // Finished steps keep their results; everything else follows the new
        // plan.
        self.steps.retain(|_, s| s.status == StepStatus::Succeeded);
        self.steps.reserve(plan.steps.len());
        // Each step's message will join the trace.
        self.trace.reserve(plan.steps.len());
        for step in &plan.steps {
            slot(&mut self.steps, &step.id);
        }
        self.plans.push(plan);
    }

    /// Marks a step succeeded and returns it for its output, unless it had
    /// already succeeded.
    fn succeeding(&mut self, step: &StepId) -> Option<&mut StepState> {
        let i = slot(&mut self.steps, step);
        let s = &mut self.steps[i];
        if s.status == StepStatus::Succeeded {
            return None;
        }
        s.status = StepStatus::Succeeded;
        s.failure = None;
        if let Some(m) = s.message
            && let Some(t) = self.trace.get_mut(&m)
        {
            t.outcome = Some(Ok(()));
        }
        Some(&mut self.steps[i])
    }

    fn run_finished(
        &mut self,
        status: RunStatus,
        output: Option<serde_json::Value>,
        error: Option<String>,
    ) {
        self.status = status;
        self.output = output;
        self.error = error;
    }

    /// The events whose parts are small enough to copy.
    fn apply_small(&mut self, event: &RunEvent) {
        match event {
            RunEvent::RunStarted { .. }
            | RunEvent::PlanMade { .. }
            | RunEvent::StepSucceeded { .. }
            | RunEvent::RunFinished { .. }
            | RunEvent::StepProgress { .. }
            | RunEvent::EffectRecorded { .. } => {}
            RunEvent::RunResumed { .. } => {
                if self.status == RunStatus::Pending {
                    self.status = RunStatus::Running;
                }
            }
            RunEvent::InputRequested {
                request,
                step,
                agent,
                prompt,
                schema,
            } => {
                if self.question(request).is_none() {
                    self.questions.push(Question {
                        request: request.clone(),
                        step: step.clone(),
                        agent: agent.clone(),
                        prompt: prompt.clone(),
                        schema: schema.clone(),
                        answer: None,
                        timed_out: false,
                    });
                }
                if self.status == RunStatus::Running {
                    self.status = RunStatus::Paused;
                }
            }
            RunEvent::InputProvided { request, value } => {
                if let Some(q) = self.question(request) {
                    q.answer = Some(value.clone());
                }
                self.settle_pause();
            }
            RunEvent::InputTimedOut { request } => {
                if let Some(q) = self.question(request) {
                    q.timed_out = true;
                }
                self.settle_pause();
            }
            RunEvent::StepDispatched {
                step,
                attempt,
                message,
                ..
            } => {
                self.units += 1;
                let i = slot(&mut self.steps, step);
                let s = &mut self.steps[i];
                if s.status != StepStatus::Succeeded {
                    s.status = StepStatus::Running;
                    s.attempts = *attempt;
                    s.message = Some(*message);
                }
                self.trace.insert(
                    *message,
                    TraceEntry {
                        parent: None,
                        step: Some(step.clone()),
                        agent: None,
                        outcome: None,
                        order: self.events,
                    },
                );
            }
            RunEvent::StepStarted {
                step,
                message,
                agent,
            } => {
                if let Some(s) = self.steps.get_mut(step)
                    && s.message == Some(*message)
                {
                    s.agent = Some(agent.clone());
                }
                if let Some(t) = self.trace.get_mut(message) {
                    t.agent = Some(agent.clone());
                }
            }
            RunEvent::StepFailed {
                step,
                failure,
                will_retry,
                ..
            } => {
                let i = slot(&mut self.steps, step);
                let s = &mut self.steps[i];
                if s.status != StepStatus::Succeeded {
                    s.failure = Some(failure.clone());
                    s.status = if *will_retry {
                        StepStatus::Pending
                    } else {
                        StepStatus::Failed
                    };
                    if let Some(m) = s.message
                        && let Some(t) = self.trace.get_mut(&m)
                    {
                        t.outcome = Some(Err(failure.clone()));
                    }
                }
            }
            RunEvent::StepRetried { step, .. } => {
                if let Some(s) = self.steps.get_mut(step)
                    && s.status != StepStatus::Succeeded
                {
                    s.status = StepStatus::Pending;
                }
            }
            RunEvent::Delegated {
                step,
                parent,
                message,
                agent,
                ..
            } => {
                self.units += 1;
                self.trace.insert(
                    *message,
                    TraceEntry {
                        parent: Some(*parent),
                        step: step.clone(),
                        agent: Some(agent.clone()),
                        outcome: None,
                        order: self.events,
                    },
                );
            }
            RunEvent::DelegationFinished { message, failure } => {
                if let Some(t) = self.trace.get_mut(message) {
                    t.outcome = Some(match failure {
                        Some(f) => Err(f.clone()),
                        None => Ok(()),
                    });
                }
            }
            RunEvent::UsageReported {
                step,
                usage,
                agent,
                message,
                model,
            } => {
                self.spend.push(crate::observe::Spend {
                    step: step.clone(),
                    agent: agent.clone(),
                    message: *message,
                    model: model.clone(),
                    usage: *usage,
                });
                self.usage += *usage;
                if let Some(step) = step
                    && let Some(s) = self.steps.get_mut(step)
                {
                    s.usage += *usage;
                }
            }
        }
    }

    /// The results of the steps that succeeded.
    pub fn outputs(&self) -> BTreeMap<StepId, serde_json::Value> {
        // Gathered at full size first: the map sorts its input in a Vec,
        // which would otherwise grow by doubling.
        let mut done = Vec::with_capacity(self.steps.len());
        done.extend(
            self.steps
                .iter()
                .filter_map(|(id, s)| s.output.clone().map(|o| (id.clone(), o))),
        );
        done.into_iter().collect()
    }

    /// The trace as a tree: one root per step message, in dispatch order, and
    /// under each the subtasks its handler delegated, in order.
    pub fn trace_tree(&self) -> Vec<TraceNode> {
        let mut children: FastMap<MessageId, Vec<(u64, MessageId)>> = FastMap::default();
        let mut roots: Vec<(u64, MessageId)> = Vec::with_capacity(self.trace.len());
        for (id, e) in &self.trace {
            match e.parent {
                Some(p) if self.trace.contains_key(&p) => {
                    children.entry(p).or_default().push((e.order, *id));
                }
                _ => roots.push((e.order, *id)),
            }
        }
        roots.sort();
        for v in children.values_mut() {
            v.sort();
        }
        // Iterative build (a deep delegation chain must not overflow the stack).
        fn build(
            root: MessageId,
            state: &RunState,
            children: &FastMap<MessageId, Vec<(u64, MessageId)>>,
        ) -> TraceNode {
            let node_of = |id: MessageId| {
                let e = state.trace.get(&id);
                TraceNode {
                    message: id,
                    step: e.and_then(|e| e.step.clone()),
                    agent: e.and_then(|e| e.agent.clone()),
                    ok: e.and_then(|e| e.outcome.as_ref().map(Result::is_ok)),
                    children: Vec::new(),
                }
            };
            // Post-order with an explicit stack.
            let mut stack: Vec<(TraceNode, usize)> = vec![(node_of(root), 0)];
            let mut finished = None;
            while let Some((node, next)) = stack.last_mut() {
                let kids = children.get(&node.message).map_or(&[][..], Vec::as_slice);
                if let Some(&(_, kid)) = kids.get(*next) {
                    *next += 1;
                    stack.push((node_of(kid), 0));
                    continue;
                }
                if let Some((done, _)) = stack.pop() {
                    match stack.last_mut() {
                        Some((parent, _)) => parent.children.push(done),
                        None => finished = Some(done),
                    }
                }
            }
            finished.unwrap_or_else(|| node_of(root))
        }
        roots
            .into_iter()
            .map(|(_, id)| match self.trace.get(&id) {
                // Most roots delegated nothing: no walk needed.
                Some(e) if !children.contains_key(&id) => TraceNode {
                    message: id,
                    step: e.step.clone(),
                    agent: e.agent.clone(),
                    ok: e.outcome.as_ref().map(Result::is_ok),
                    children: Vec::new(),
                },
                _ => build(id, self, &children),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::plan::{Step, StepInput};

    fn rec(seq: u64, event: RunEvent) -> RunEventRecord {
        RunEventRecord {
            run: RunId::new(),
            seq,
            at_ms: 0,
            event,
        }
    }

    #[test]
    fn usage_under_a_message_counts_its_delegations_and_nothing_else() {
        let mut st = RunState::new(RunId::new());
        st.apply(&rec(
            0,
            RunEvent::PlanMade {
                revision: 0,
                plan: Plan::new([Step::new("a", "x", StepInput::Goal)]),
            },
        ));
        let agent = AgentId::new("x", "1").unwrap();
        let (first, second, child, grandchild) = (
            MessageId::new(),
            MessageId::new(),
            MessageId::new(),
            MessageId::new(),
        );
        let step = StepId::new("a").unwrap();
        for (seq, message) in [(1, first), (2, second)] {
            st.apply(&rec(
                seq,
                RunEvent::StepDispatched {
                    step: step.clone(),
                    attempt: seq as u32,
                    message,
                    to: "x".into(),
                },
            ));
        }
        for (seq, parent, message) in [(3, first, child), (4, child, grandchild)] {
            st.apply(&rec(
                seq,
                RunEvent::Delegated {
                    step: Some(step.clone()),
                    parent,
                    message,
                    agent: agent.clone(),
                    depth: 1,
                },
            ));
        }
        let spend = |seq, message: Option<MessageId>, tokens| {
            rec(
                seq,
                RunEvent::UsageReported {
                    step: Some(step.clone()),
                    agent: agent.clone(),
                    message,
                    model: None,
                    usage: Usage {
                        input_tokens: tokens,
                        ..Usage::default()
                    },
                },
            )
        };
        st.apply(&spend(5, Some(first), 1));
        st.apply(&spend(6, Some(child), 10));
        st.apply(&spend(7, Some(grandchild), 100));
        st.apply(&spend(8, Some(second), 1000));
        st.apply(&spend(9, None, 10000));
        assert_eq!(st.usage_under(first).input_tokens, 111);
        assert_eq!(st.usage_under(second).input_tokens, 1000);
        assert_eq!(st.usage_under(child).input_tokens, 110);
        assert_eq!(st.usage_under(MessageId::new()).input_tokens, 0);
    }

    #[test]
    fn a_step_succeeds_once_even_if_told_twice() {
        let mut st = RunState::new(RunId::new());
        st.apply(&rec(
            0,
            RunEvent::PlanMade {
                revision: 0,
                plan: Plan::new([Step::new("a", "x", StepInput::Goal)]),
            },
        ));
        let ok = |v: i32| RunEvent::StepSucceeded {
            step: "a".into(),
            attempt: 1,
            output: serde_json::json!(v),
        };
        st.apply(&rec(1, ok(1)));
        st.apply(&rec(2, ok(2)));
        assert_eq!(st.outputs()["a"], serde_json::json!(1));
        // A late failure does not undo a success.
        st.apply(&rec(
            3,
            RunEvent::StepFailed {
                step: "a".into(),
                attempt: 2,
                failure: Failure::new(crate::envelope::FailureKind::Timeout, "late"),
                will_retry: false,
            },
        ));
        assert_eq!(st.steps["a"].status, StepStatus::Succeeded);
    }

    #[test]
    fn the_state_round_trips_through_json_keeping_plan_order() {
        let mut st = RunState::new(RunId::new());
        let plan = Plan::new([
            Step::new("zeta", "x", StepInput::Goal),
            Step::new("alpha", "x", StepInput::output("zeta")),
            Step::new("mid", "x", StepInput::Goal),
        ]);
        st.apply(&rec(0, RunEvent::PlanMade { revision: 0, plan }));
        st.apply(&rec(
            1,
            RunEvent::StepDispatched {
                step: "alpha".into(),
                attempt: 1,
                message: MessageId::new(),
                to: "x".into(),
            },
        ));
        let json = serde_json::to_string(&st).unwrap();
        let back: RunState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, st);
        let order: Vec<&str> = back.steps.keys().map(StepId::as_str).collect();
        assert_eq!(order, ["zeta", "alpha", "mid"]);
        assert_eq!(back.steps["alpha"].status, StepStatus::Running);
        assert_eq!(back.trace.len(), 1);
    }

    proptest::proptest! {
        /// The result a journal's end record leaves out is folded back as the
        /// driver computed it: from its schedule's sinks, for random acyclic
        /// plans with listed and referenced dependencies and with or without
        /// a named output step.
        #[test]
        fn the_result_folded_from_the_state_is_the_drivers(
            n in 1usize..12,
            edges in proptest::collection::vec((0usize..12, 0usize..12, proptest::bool::ANY), 0..30),
            named in proptest::option::of(0usize..12),
        ) {
            let id = |i: usize| format!("s{i}");
            // Step i depends only on steps before it: acyclic.
            let steps = (0..n).map(|i| {
                let mut listed = Vec::new();
                let mut referenced = Vec::new();
                for &(a, b, by_input) in &edges {
                    if a == i && b < i {
                        if by_input { referenced.push(b) } else { listed.push(b) }
                    }
                }
                let input = match referenced.as_slice() {
                    [] => StepInput::Goal,
                    refs => StepInput::Object(
                        refs.iter().map(|&b| (id(b), StepInput::output(id(b)))).collect(),
                    ),
                };
                Step::new(id(i), "x", input).after(listed.into_iter().map(id))
            });
            let mut plan = Plan::new(steps);
            if let Some(o) = named.filter(|&o| o < n) {
                plan = plan.output(id(o));
            }
            let graph = plan.check_graph().unwrap();
            let mut schedule = crate::orchestrator::schedule::Schedule::default();
            schedule.adopt(0, graph, &[], |_| false);
            let output_of = |i: usize| serde_json::json!({ "from": id(i) });
            let expected = match (&plan.output, schedule.sinks()) {
                (Some(o), _) => output_of(o.as_str()[1..].parse().unwrap()),
                (None, [one]) => output_of(*one),
                (None, sinks) => serde_json::Value::Object(
                    sinks.iter().map(|&p| (id(p), output_of(p))).collect(),
                ),
            };
            let mut st = RunState::new(RunId::new());
            st.apply(&rec(0, RunEvent::PlanMade { revision: 0, plan: plan.clone() }));
            for i in 0..n {
                let step = StepId::new(id(i)).unwrap();
                let message = MessageId::new();
                st.apply(&rec(1, RunEvent::StepDispatched {
                    step: step.clone(), attempt: 1, message, to: "x".into(),
                }));
                st.apply(&rec(2, RunEvent::StepSucceeded { step, attempt: 1, output: output_of(i) }));
            }
            proptest::prop_assert_eq!(st.result_of_plan(), Some(expected));
        }
    }
}
