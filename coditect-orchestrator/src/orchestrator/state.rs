//! A run's state: one plain, serializable value, changed only by applying its
//! events in order.

use std::collections::BTreeMap;
use std::fmt;
use std::hash::Hash;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::budget::Usage;
use crate::envelope::Failure;
use crate::id::{AgentId, MessageId, RunId};
use crate::orchestrator::event::{RunEvent, RunEventRecord};
use crate::orchestrator::plan::{Plan, StepId};
use crate::orchestrator::task::TaskSpec;

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// A map that keeps its entries in the order they were first inserted and
/// finds them by hashing: what a run's state uses for its steps and its trace,
/// so applying an event is a constant-time lookup rather than a walk down an
/// ordered tree comparing strings.
///
/// It serializes as a JSON object (a map) in insertion order, and compares
/// equal to another map with the same entries in the same order.
///
/// ```
/// use coditect_orchestrator::orchestrator::OrderedMap;
/// let mut m: OrderedMap<String, u32> = OrderedMap::new();
/// m.insert("b".into(), 1);
/// m.insert("a".into(), 2);
/// *m.get_or_insert_default("b".into()) += 10;
/// assert_eq!(m[&"b".to_string()], 11);
/// assert_eq!(m.keys().map(String::as_str).collect::<Vec<_>>(), ["b", "a"]);
/// ```
#[derive(Clone)]
pub struct OrderedMap<K, V> {
    entries: Vec<(K, V)>,
    index: FastMap<K, usize>,
}

impl<K, V> Default for OrderedMap<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            index: FastMap::default(),
        }
    }
}

impl<K: Clone + Eq + Hash, V> OrderedMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries in the map.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The value of a key.
    pub fn get(&self, key: &K) -> Option<&V> {
        let i = *self.index.get(key)?;
        self.entries.get(i).map(|(_, v)| v)
    }

    /// The value of a key, to change.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.entries.get_mut(i).map(|(_, v)| v)
    }

    /// Whether the map has a key.
    pub fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    /// Sets the value of a key, returning the old one. A new key goes last; a
    /// key already there keeps its place.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.index.get(&key) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
                None
            }
        }
    }

    /// The value of a key, inserting the default value (last) if it is missing.
    pub fn get_or_insert_default(&mut self, key: K) -> &mut V
    where
        V: Default,
    {
        let i = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.entries.len();
                self.index.insert(key.clone(), i);
                self.entries.push((key, V::default()));
                i
            }
        };
        &mut self.entries[i].1
    }

    /// The position of a key's entry, inserting the default value (last) if
    /// it is missing; the key is cloned only then.
    fn slot(&mut self, key: &K) -> usize
    where
        V: Default,
    {
        if let Some(&i) = self.index.get(key) {
            return i;
        }
        let i = self.entries.len();
        self.index.insert(key.clone(), i);
        self.entries.push((key.clone(), V::default()));
        i
    }

    /// Keeps only the entries for which `keep` is true, in their order.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        let before = self.entries.len();
        self.entries.retain_mut(|(k, v)| keep(k, v));
        if self.entries.len() != before {
            self.reindex();
        }
    }

    /// Room for `additional` more entries.
    pub fn reserve(&mut self, additional: usize) {
        self.entries.reserve(additional);
        self.index.reserve(additional);
    }

    /// The entries, in order.
    pub fn iter(&self) -> OrderedMapIter<'_, K, V> {
        OrderedMapIter(self.entries.iter())
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values, in order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The values, in order, to change.
    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    fn reindex(&mut self) {
        self.index.clear();
        for (i, (k, _)) in self.entries.iter().enumerate() {
            self.index.insert(k.clone(), i);
        }
    }
}

/// The entries of an [`OrderedMap`], in order.
#[derive(Clone, Debug)]
pub struct OrderedMapIter<'a, K, V>(std::slice::Iter<'a, (K, V)>);

impl<'a, K, V> Iterator for OrderedMapIter<'a, K, V> {
    type Item = (&'a K, &'a V);
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next().map(|(k, v)| (k, v))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        self.0.size_hint()
    }
}

impl<K, V> DoubleEndedIterator for OrderedMapIter<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.0.next_back().map(|(k, v)| (k, v))
    }
}

impl<K, V> ExactSizeIterator for OrderedMapIter<'_, K, V> {}

impl<'a, K: Clone + Eq + Hash, V> IntoIterator for &'a OrderedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = OrderedMapIter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Clone + Eq + Hash, V> FromIterator<(K, V)> for OrderedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Self::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}

impl<K: Clone + Eq + Hash, V> std::ops::Index<&K> for OrderedMap<K, V> {
    type Output = V;
    /// # Panics
    /// If the key is not in the map.
    fn index(&self, key: &K) -> &V {
        match self.get(key) {
            Some(v) => v,
            None => panic!("no such key in the map"),
        }
    }
}

impl<K: PartialEq, V: PartialEq> PartialEq for OrderedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for OrderedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<K: Serialize, V: Serialize> Serialize for OrderedMap<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.entries.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de, K, V> Deserialize<'de> for OrderedMap<K, V>
where
    K: Deserialize<'de> + Clone + Eq + Hash,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit<K, V>(std::marker::PhantomData<(K, V)>);
        impl<'de, K, V> serde::de::Visitor<'de> for Visit<K, V>
        where
            K: Deserialize<'de> + Clone + Eq + Hash,
            V: Deserialize<'de>,
        {
            type Value = OrderedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<Self::Value, A::Error> {
                let mut m = OrderedMap::new();
                m.reserve(access.size_hint().unwrap_or(0).min(4096));
                while let Some((k, v)) = access.next_entry()? {
                    m.insert(k, v);
                }
                Ok(m)
            }
        }
        d.deserialize_map(Visit(std::marker::PhantomData))
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
            self.steps.slot(&step.id);
        }
        self.plans.push(plan);
    }

    /// Marks a step succeeded and returns it for its output, unless it had
    /// already succeeded.
    fn succeeding(&mut self, step: &StepId) -> Option<&mut StepState> {
        let i = self.steps.slot(step);
        let s = &mut self.steps.entries[i].1;
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
        Some(&mut self.steps.entries[i].1)
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
            | RunEvent::StepProgress { .. } => {}
            RunEvent::StepDispatched {
                step,
                attempt,
                message,
                ..
            } => {
                self.units += 1;
                let i = self.steps.slot(step);
                let s = &mut self.steps.entries[i].1;
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
                let i = self.steps.slot(step);
                let s = &mut self.steps.entries[i].1;
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
            RunEvent::UsageReported { step, usage, .. } => {
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
        assert_eq!(st.outputs()[&StepId::new("a")], serde_json::json!(1));
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
        assert_eq!(st.steps[&StepId::new("a")].status, StepStatus::Succeeded);
    }
}
