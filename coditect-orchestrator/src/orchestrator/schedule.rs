//! Which steps of the current plan are ready, waiting or in flight: pure
//! bookkeeping by step position, no tokio, tested on its own.
//!
//! The run's record is its [`RunState`](crate::orchestrator::RunState) (the
//! fold of its events); this is only the index the driver schedules with,
//! worked out once per plan from its graph, so that releasing a step's
//! dependents is a walk over a slice rather than a search.

use std::collections::VecDeque;

use crate::id::StepId;
use crate::orchestrator::plan::Graph;

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Where a step was in the plan it was dispatched under: that plan's revision
/// and the step's position in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct At {
    pub(crate) rev: u32,
    pub(crate) pos: usize,
}

/// The scheduling index of the current plan.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    /// The revision of the plan it indexes.
    rev: u32,
    /// Where each step's id is.
    index: FastMap<StepId, usize>,
    /// Unfinished dependencies of each waiting step.
    waiting: Vec<u32>,
    /// The steps waiting for each step: `dependents[dep_start[i]..dep_start[i + 1]]`.
    dep_start: Vec<usize>,
    dependents: Vec<usize>,
    /// Whether a step's success has released its dependents.
    released: Vec<bool>,
    /// The sinks (steps nothing depends on), in plan order.
    sinks: Vec<usize>,
    /// The attempt in flight (or whose retry is due) of each step; 0: none.
    attempts: Vec<u32>,
    /// Attempts in flight of steps no longer in the plan, by id.
    orphans: FastMap<StepId, u32>,
    /// Step attempts in flight or due to retry.
    in_flight: usize,
    ready: VecDeque<usize>,
}

impl Schedule {
    /// Indexes a new plan (revision `rev`, its checked `graph`, its step ids
    /// in order). `done(pos)` says which of its steps succeeded under an
    /// earlier plan; attempts in flight under the old plan carry over by id.
    pub(crate) fn adopt(
        &mut self,
        rev: u32,
        graph: Graph,
        old_ids: &[StepId],
        done: impl Fn(usize) -> bool,
    ) {
        let mut carried: Vec<(StepId, u32)> = self.orphans.drain().collect();
        for (pos, &a) in self.attempts.iter().enumerate() {
            if a > 0
                && let Some(id) = old_ids.get(pos)
            {
                carried.push((id.clone(), a));
            }
        }
        let Graph { index, deps } = graph;
        let n = deps.len();
        let mut attempts = vec![0u32; n];
        for (id, a) in carried {
            match index.get(&id) {
                Some(&p) => attempts[p] = a,
                None => {
                    self.orphans.insert(id, a);
                }
            }
        }
        let done: Vec<bool> = (0..n).map(done).collect();
        let mut waiting = vec![0u32; n];
        let mut counts = vec![0usize; n + 1];
        let mut has_dependents = vec![false; n];
        let mut ready = VecDeque::new();
        for (p, d) in deps.iter().enumerate() {
            for &q in d {
                has_dependents[q] = true;
            }
            if done[p] || attempts[p] > 0 {
                continue;
            }
            let mut w = 0;
            for &q in d {
                if !done[q] {
                    w += 1;
                    counts[q + 1] += 1;
                }
            }
            if w == 0 {
                ready.push_back(p);
            } else {
                waiting[p] = w;
            }
        }
        for i in 0..n {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut dependents = vec![0usize; counts[n]];
        for (p, d) in deps.iter().enumerate() {
            if waiting[p] == 0 {
                continue;
            }
            for &q in d {
                if !done[q] {
                    dependents[fill[q]] = p;
                    fill[q] += 1;
                }
            }
        }
        self.rev = rev;
        self.sinks = (0..n).filter(|&p| !has_dependents[p]).collect();
        self.index = index;
        self.waiting = waiting;
        self.dep_start = counts;
        self.dependents = dependents;
        self.released = vec![false; n];
        self.attempts = attempts;
        self.ready = ready;
    }

    /// The next ready step.
    pub(crate) fn next_ready(&mut self) -> Option<usize> {
        self.ready.pop_front()
    }

    /// Whether nothing is in flight or due to retry.
    pub(crate) fn idle(&self) -> bool {
        self.in_flight == 0
    }

    /// The sinks, in plan order.
    pub(crate) fn sinks(&self) -> &[usize] {
        &self.sinks
    }

    /// Where step `pos` of the current plan is, as a dispatch remembers it.
    pub(crate) fn at(&self, pos: usize) -> At {
        At { rev: self.rev, pos }
    }

    /// The position in the current plan of a step dispatched at `at`.
    pub(crate) fn locate(&self, at: At, step: &StepId) -> Option<usize> {
        if at.rev == self.rev {
            Some(at.pos)
        } else {
            self.index.get(step).copied()
        }
    }

    /// Attempt `attempt` of the step at `pos` is in flight (or due).
    pub(crate) fn dispatched(&mut self, pos: usize, attempt: u32) {
        if let Some(a) = self.attempts.get_mut(pos) {
            if *a == 0 {
                self.in_flight += 1;
            }
            *a = attempt;
        }
    }

    /// An attempt finished. `None` if the run no longer waits for it (an older
    /// attempt, or one already settled); otherwise where the step is now
    /// (`None` inside: it left the plan).
    pub(crate) fn finished(
        &mut self,
        at: At,
        step: &StepId,
        attempt: u32,
    ) -> Option<Option<usize>> {
        let pos = self.locate(at, step);
        match pos {
            Some(p) => {
                if self.attempts.get(p) != Some(&attempt) {
                    return None;
                }
                self.attempts[p] = 0;
            }
            None => {
                if self.orphans.get(step) != Some(&attempt) {
                    return None;
                }
                self.orphans.remove(step);
            }
        }
        self.in_flight -= 1;
        Some(pos)
    }

    /// A retry of a step that left the plan came due: nothing to retry.
    /// Whether it was still counted.
    pub(crate) fn drop_orphan(&mut self, step: &StepId) -> bool {
        if self.orphans.remove(step).is_some() {
            self.in_flight -= 1;
            true
        } else {
            false
        }
    }

    /// The position of a step of the current plan.
    pub(crate) fn position(&self, step: &StepId) -> Option<usize> {
        self.index.get(step).copied()
    }

    /// Whether attempt `attempt` of the step at `pos` is the one in flight
    /// (or due to retry).
    pub(crate) fn awaits(&self, pos: usize, attempt: u32) -> bool {
        self.attempts.get(pos) == Some(&attempt)
    }

    /// The step at `pos` has its result from elsewhere than its attempt in
    /// flight (an attempt sent before the run was resumed): that attempt, or
    /// its retry due, is no longer waited for, and a step not yet sent
    /// leaves the ready queue. `None` if the step is not to be done (it is
    /// done, or still waits for its dependencies); otherwise the attempt no
    /// longer waited for (0: none was sent). [`release`](Self::release) it
    /// next.
    pub(crate) fn settle_elsewhere(&mut self, pos: usize) -> Option<u32> {
        if self.released.get(pos) != Some(&false) || self.waiting[pos] > 0 {
            return None;
        }
        let dropped = std::mem::take(&mut self.attempts[pos]);
        if dropped != 0 {
            self.in_flight -= 1;
        }
        self.ready.retain(|&p| p != pos);
        Some(dropped)
    }

    /// The step at `pos` succeeded: its dependents may be ready.
    pub(crate) fn release(&mut self, pos: usize) {
        match self.released.get_mut(pos) {
            Some(r) if !*r => *r = true,
            _ => return,
        }
        for i in self.dep_start[pos]..self.dep_start[pos + 1] {
            let d = self.dependents[i];
            if self.waiting[d] > 0 {
                self.waiting[d] -= 1;
                if self.waiting[d] == 0 {
                    self.ready.push_back(d);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::orchestrator::{Plan, Step, StepInput};

    fn graph(plan: &Plan) -> Graph {
        plan.check_graph().unwrap()
    }

    fn diamond() -> Plan {
        Plan::new([
            Step::new("a", "x", StepInput::Goal),
            Step::new("b", "x", StepInput::output("a")),
            Step::new("c", "x", StepInput::output("a")),
            Step::new("d", "x", StepInput::Goal).after(["b", "c"]),
        ])
    }

    #[test]
    fn releases_dependents_once_all_their_dependencies_succeeded() {
        let plan = diamond();
        let mut s = Schedule::default();
        s.adopt(0, graph(&plan), &[], |_| false);
        assert_eq!(s.next_ready(), Some(0));
        assert_eq!(s.next_ready(), None);
        s.dispatched(0, 1);
        assert!(!s.idle());
        assert_eq!(s.finished(s.at(0), &"a".into(), 1), Some(Some(0)));
        s.release(0);
        s.release(0);
        assert_eq!((s.next_ready(), s.next_ready()), (Some(1), Some(2)));
        s.release(1);
        assert_eq!(s.next_ready(), None, "d still waits for c");
        s.release(2);
        assert_eq!(s.next_ready(), Some(3));
        assert_eq!(s.sinks(), &[3]);
    }

    #[test]
    fn a_result_from_elsewhere_drops_the_attempt_in_flight_or_the_queued_step() {
        let plan = diamond();
        let mut s = Schedule::default();
        s.adopt(0, graph(&plan), &[], |_| false);
        // Not sent yet: it leaves the ready queue, nothing was in flight.
        assert_eq!(s.settle_elsewhere(0), Some(0));
        assert_eq!(s.next_ready(), None);
        s.release(0);
        assert_eq!((s.next_ready(), s.next_ready()), (Some(1), Some(2)));
        // In flight (attempt 2): no longer waited for, and the run is idle.
        s.dispatched(1, 2);
        assert!(s.awaits(1, 2));
        assert_eq!(s.settle_elsewhere(1), Some(2));
        assert!(!s.awaits(1, 2));
        assert!(s.idle());
        assert_eq!(
            s.finished(s.at(1), &"b".into(), 2),
            None,
            "its reply is ignored"
        );
        s.release(1);
        // Done, or still waiting for its dependencies: not taken.
        assert_eq!(s.settle_elsewhere(1), None);
        assert_eq!(s.settle_elsewhere(3), None, "d still waits for c");
        assert_eq!(s.position(&"d".into()), Some(3));
    }

    #[test]
    fn stale_attempts_are_ignored_and_in_flight_work_survives_a_revision() {
        let plan = diamond();
        let mut s = Schedule::default();
        s.adopt(0, graph(&plan), &[], |_| false);
        s.next_ready();
        s.dispatched(0, 1);
        s.dispatched(0, 2);
        assert_eq!(s.finished(s.at(0), &"a".into(), 1), None);
        // A revision drops "a" while attempt 2 is in flight: it is an orphan.
        let old: Vec<StepId> = plan.steps.iter().map(|s| s.id.clone()).collect();
        let revised = Plan::new([Step::new("z", "x", StepInput::Goal)]);
        let at = s.at(0);
        s.adopt(1, graph(&revised), &old, |_| false);
        assert_eq!(s.next_ready(), Some(0));
        assert_eq!(s.finished(at, &"a".into(), 2), Some(None));
        assert!(s.idle());
    }

    #[test]
    fn steps_done_under_an_earlier_plan_are_not_ready_again() {
        let plan = diamond();
        let mut s = Schedule::default();
        s.adopt(0, graph(&plan), &[], |p| p == 0);
        assert_eq!((s.next_ready(), s.next_ready()), (Some(1), Some(2)));
    }
}
