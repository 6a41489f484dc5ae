//! Where a step goes: the candidate agents of each capability a plan uses,
//! the router's pick among them by live load, and the load counters.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;

use crate::agent::AgentCard;
use crate::envelope::Destination;
use crate::id::AgentKind;
use crate::orchestrator::Inner;
use crate::orchestrator::driver::Stop;
use crate::orchestrator::plan::{Plan, StepTarget};
use crate::orchestrator::policy::NoWorker;
use crate::orchestrator::task::RunErrorKind;

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

    /// Makes sure every capability and kind `plan` names has a card: reads
    /// the fleet's directory again and, if the policy says so, waits for a
    /// worker to join.
    ///
    /// # Errors
    /// With [`NoWorker::Wait`], a [`Stop`] with [`RunErrorKind::NoWorker`]
    /// naming what is still missing when the wait ends, or `Cancelled` if the
    /// run is cancelled while waiting. With [`NoWorker::Fail`] it only reads
    /// the directory again, and the plan's check refuses the plan.
    pub(crate) async fn await_workers(
        &mut self,
        inner: &Inner,
        plan: &Plan,
        policy: NoWorker,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let Some(mut missing) = first_missing(&self.cards, plan) else {
            return Ok(());
        };
        let waited = match policy {
            NoWorker::Wait(d) if !d.is_zero() => d,
            _ => {
                // Fail at once: the plan's check names the step and what it
                // asked for (an unknown capability: no live card offers it).
                *self = Self::new(inner, inner.all_cards());
                return Ok(());
            }
        };
        let until = tokio::time::Instant::now() + waited;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if !left.is_zero() {
                tokio::select! {
                    () = cancel.cancelled() => return Err(Stop(
                        RunErrorKind::Cancelled,
                        "the run was cancelled".into(),
                    )),
                    _ = inner.runtime.wait_for_capability(&missing, left) => {}
                }
            }
            *self = Self::new(inner, inner.all_cards());
            match first_missing(&self.cards, plan) {
                None => return Ok(()),
                Some(m) if left.is_zero() => {
                    let msg = format!("no live worker offers {m:?} (waited {waited:?})");
                    return Err(Stop(
                        RunErrorKind::NoWorker {
                            capability: m,
                            waited,
                        },
                        msg,
                    ));
                }
                Some(m) => missing = m,
            }
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
        // Kinds no live worker hosts now are passed over while another can
        // take the step; if none can, the step still goes (durable tasks wait
        // in their queue for a worker to come back).
        let directory = inner.runtime.directory();
        let live: Vec<usize>;
        let set = if set.len() > 1 {
            live = set
                .iter()
                .copied()
                .filter(|&i| directory.is_live(&self.cards[i].kind))
                .collect();
            if live.is_empty() { set } else { &live[..] }
        } else {
            set
        };
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
        // Live load: what this orchestrator has in flight, or what the
        // kind's workers report in their heartbeats, whichever is more.
        let load = |k: &AgentKind| {
            let own = set
                .iter()
                .find(|&&i| &self.cards[i].kind == k)
                .map_or(0, |&i| self.loads[i].load(Ordering::Relaxed));
            own.max(directory.remote_load(k).0)
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

/// The first capability or kind of `plan` that no card offers.
fn first_missing(cards: &[AgentCard], plan: &Plan) -> Option<String> {
    plan.steps.iter().find_map(|s| match &s.target {
        StepTarget::Capability(c) if !cards.iter().any(|k| k.can(c)) => Some(c.to_string()),
        StepTarget::Agent(a) if !cards.iter().any(|k| &k.kind == a.kind()) => {
            Some(a.kind().to_string())
        }
        _ => None,
    })
}
