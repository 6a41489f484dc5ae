//! Routers pick which agent kind does a step when several can.

use crate::agent::AgentCard;
use crate::id::AgentKind;

/// Picks one of the agent kinds that offer a capability.
pub trait Router: Send + Sync + 'static {
    /// Picks among `candidates` (never empty); `load` tells how many steps of
    /// each kind this orchestrator has in flight.
    fn route(
        &self,
        capability: &str,
        candidates: &[&AgentCard],
        load: &dyn Fn(&AgentKind) -> usize,
    ) -> AgentKind;
}

/// The default router: the candidate with the fewest steps in flight, the
/// first registered on a tie.
#[derive(Debug, Default, Clone, Copy)]
pub struct LeastLoaded;

impl Router for LeastLoaded {
    fn route(
        &self,
        _capability: &str,
        candidates: &[&AgentCard],
        load: &dyn Fn(&AgentKind) -> usize,
    ) -> AgentKind {
        let mut best = candidates[0];
        let mut best_load = load(&best.kind);
        for c in &candidates[1..] {
            let l = load(&c.kind);
            if l < best_load {
                best = c;
                best_load = l;
            }
        }
        best.kind.clone()
    }
}
