//! The cards of the agent kinds a runtime knows: what capability routing reads.

use std::sync::RwLock;

use crate::agent::AgentCard;
use crate::id::AgentKind;

/// Cards by kind, in registration order.
#[derive(Default)]
pub(crate) struct Directory {
    cards: RwLock<Vec<AgentCard>>,
}

impl Directory {
    pub(crate) fn add(&self, card: AgentCard) {
        if let Ok(mut cards) = self.cards.write() {
            cards.retain(|c| c.kind != card.kind);
            cards.push(card);
        }
    }

    pub(crate) fn cards(&self) -> Vec<AgentCard> {
        self.cards.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// The first kind registered that offers `capability`.
    pub(crate) fn kind_for(&self, capability: &str) -> Option<AgentKind> {
        let cards = self.cards.read().ok()?;
        cards
            .iter()
            .find(|c| c.can(capability))
            .map(|c| c.kind.clone())
    }
}
