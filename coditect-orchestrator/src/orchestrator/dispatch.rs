//! Where a step goes: the candidate agents of each capability a plan uses,
//! the router's pick among them by live load, and the load counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::agent::AgentCard;
use crate::envelope::Destination;
use crate::id::AgentKind;
use crate::orchestrator::Inner;
use crate::orchestrator::plan::{Plan, StepTarget};

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Counts one step attempt against its agent kind's load while it is in
/// flight; dropping it (the attempt finished, or the run dropped it) gives the
/// count back.
pub(crate) struct LoadGuard(Arc<AtomicUsize>);

impl LoadGuard {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter.clone())
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a step of the current plan finds its agent.
enum StepRoute {
    /// Exactly the agent the step names (the card of its kind, if known).
    Agent(Option<usize>),
    /// The router picks among a set of candidate cards.
    Pick(usize),
}

/// Where a step attempt goes: its destination, the name events give it, and
/// the load it adds while in flight.
pub(crate) struct Route {
    pub(crate) dest: Destination,
    pub(crate) to: String,
    pub(crate) load: Option<LoadGuard>,
}

/// The routing table of a run.
pub(crate) struct Routing {
    pub(crate) cards: Vec<AgentCard>,
    /// Per card: the load counter of its kind (shared by the orchestrator's
    /// runs) and its kind as events name it.
    loads: Vec<Arc<AtomicUsize>>,
    names: Vec<String>,
    /// Candidate cards for each capability the current plan uses.
    candidates: Vec<Vec<usize>>,
    /// Per step position of the current plan.
    routes: Vec<StepRoute>,
}

impl Routing {
    pub(crate) fn new(inner: &Inner, cards: Vec<AgentCard>) -> Self {
        let loads = {
            let mut table = inner.load.lock().unwrap_or_else(|p| p.into_inner());
            cards
                .iter()
                .map(|c| table.entry(c.kind.clone()).or_default().clone())
                .collect()
        };
        let names = cards.iter().map(|c| c.kind.to_string()).collect();
        Self {
            cards,
            loads,
            names,
            candidates: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// Works out where each step of a new plan finds its agent.
    pub(crate) fn adopt(&mut self, plan: &Plan) {
        let mut sets: FastMap<&str, usize> = FastMap::default();
        let mut candidates: Vec<Vec<usize>> = Vec::new();
        let cards = &self.cards;
        self.routes = plan
            .steps
            .iter()
            .map(|s| match &s.target {
                StepTarget::Agent(a) => {
                    StepRoute::Agent(cards.iter().position(|c| &c.kind == a.kind()))
                }
                StepTarget::Capability(c) => {
                    StepRoute::Pick(*sets.entry(c.as_str()).or_insert_with(|| {
                        candidates.push(
                            cards
                                .iter()
                                .enumerate()
                                .filter(|(_, k)| k.can(c))
                                .map(|(i, _)| i)
                                .collect(),
                        );
                        candidates.len() - 1
                    }))
                }
            })
            .collect();
        self.candidates = candidates;
    }

    /// Where the step at `pos` (with `target`) goes now; `None` if no agent
    /// can take it.
    pub(crate) fn route(&self, inner: &Inner, pos: usize, target: &StepTarget) -> Option<Route> {
        match (self.routes.get(pos)?, target) {
            (StepRoute::Agent(card), StepTarget::Agent(a)) => Some(Route {
                dest: Destination::Agent(a.clone()),
                to: a.to_string(),
                load: card.map(|i| LoadGuard::new(&self.loads[i])),
            }),
            (StepRoute::Pick(set), StepTarget::Capability(c)) => {
                let (kind, card) = self.pick(inner, c, self.candidates.get(*set)?)?;
                let (to, load) = match card {
                    Some(i) => (self.names[i].clone(), LoadGuard::new(&self.loads[i])),
                    None => (
                        kind.to_string(),
                        LoadGuard::new(&foreign_load(inner, &kind)),
                    ),
                };
                Some(Route {
                    dest: Destination::Kind(kind),
                    to,
                    load: Some(load),
                })
            }
            _ => None,
        }
    }

    /// The router's pick among a capability's candidate cards: the kind, and
    /// its card if it is one of ours.
    fn pick(
        &self,
        inner: &Inner,
        capability: &str,
        set: &[usize],
    ) -> Option<(AgentKind, Option<usize>)> {
        let first = &self.cards[*set.first()?];
        let mut few: [&AgentCard; 8] = [first; 8];
        let many: Vec<&AgentCard>;
        let cands: &[&AgentCard] = if set.len() <= few.len() {
            for (slot, &i) in few.iter_mut().zip(set) {
                *slot = &self.cards[i];
            }
            &few[..set.len()]
        } else {
            many = set.iter().map(|&i| &self.cards[i]).collect();
            &many
        };
        let load = |k: &AgentKind| {
            set.iter()
                .find(|&&i| &self.cards[i].kind == k)
                .map_or(0, |&i| self.loads[i].load(Ordering::Relaxed))
        };
        let kind = inner.router.route(capability, cands, &load);
        let card = set
            .iter()
            .copied()
            .find(|&i| self.cards[i].kind == kind)
            .or_else(|| self.cards.iter().position(|c| c.kind == kind));
        Some((kind, card))
    }
}

/// The load counter of a kind none of the cards has (a router's choice).
fn foreign_load(inner: &Inner, kind: &AgentKind) -> Arc<AtomicUsize> {
    let mut table = inner.load.lock().unwrap_or_else(|p| p.into_inner());
    table.entry(kind.clone()).or_default().clone()
}
