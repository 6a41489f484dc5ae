//! The cards capability routing reads: the kinds this runtime hosts, and the
//! live cards the rest of the fleet advertises (see [`FleetOptions`]).

use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::agent::AgentCard;
use crate::id::{AgentKind, NodeId};

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// One kind as one runtime hosts it: its card, where, which version, how many
/// tasks it takes at once and how many it has now. What runtimes advertise in
/// the tenant's card directory and what [`Runtime::fleet`](crate::Runtime::fleet)
/// lists.
///
/// ```
/// use coditect_orchestrator::{AgentCard, AgentKind, NodeId};
/// use coditect_orchestrator::runtime::LiveCard;
/// struct Nop;
/// impl coditect_orchestrator::Agent for Nop {
///     type Input = String;
///     type Output = String;
///     async fn handle(&mut self, s: String, _: &coditect_orchestrator::AgentContext)
///         -> Result<String, coditect_orchestrator::AgentError> { Ok(s) }
/// }
/// let live = LiveCard {
///     card: AgentCard::of::<Nop>(AgentKind::new("nop")?),
///     node: NodeId::new("w1")?,
///     version: "1.0.0".into(),
///     capacity: 16,
///     in_flight: 3,
/// };
/// let json = serde_json::to_string(&live)?;
/// assert_eq!(serde_json::from_str::<LiveCard>(&json)?, live);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LiveCard {
    /// The kind's card: name, description, capabilities, schemas.
    pub card: AgentCard,
    /// The runtime that hosts it.
    pub node: NodeId,
    /// The version its host registered it with
    /// ([`KindBuilder::version`](crate::KindBuilder::version)).
    pub version: String,
    /// How many of its tasks that runtime handles at once.
    pub capacity: usize,
    /// How many it has queued or running, as of the advert.
    pub in_flight: usize,
}

impl LiveCard {
    /// The directory key of this advert: `<kind>.<node>`.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // the bus keeps the directory
    pub(crate) fn key(&self) -> String {
        format!("{}.{}", self.card.kind, self.node)
    }
}

/// How a runtime takes part in its tenant's card directory.
///
/// Over NATS with JetStream (the default delivery), every runtime advertises
/// the cards of the kinds it hosts in the tenant's KV bucket
/// (`CODITECT_CARDS_<tenant>`), rewriting each advert every `heartbeat` with
/// its current load, and reads everyone else's. A runtime that starts is
/// seen within a heartbeat (at once, in fact: registering a kind writes its
/// advert); one that shuts down withdraws its adverts at once; one that dies
/// disappears once its adverts are older than `ttl`. Planners, routers and
/// [`AgentContext::delegate`](crate::AgentContext::delegate) read the result.
/// Over the in-memory transport the directory is the runtime's own kinds.
///
/// ```
/// use std::time::Duration;
/// use coditect_orchestrator::runtime::FleetOptions;
/// let fleet = FleetOptions::default()
///     .heartbeat(Duration::from_millis(500))
///     .ttl(Duration::from_secs(3));
/// assert_eq!(fleet.ttl_value(), Duration::from_secs(3));
/// assert!(!FleetOptions::disabled().is_enabled());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetOptions {
    heartbeat: Duration,
    ttl: Duration,
    enabled: bool,
}

impl Default for FleetOptions {
    /// A heartbeat every second, a time to live of ten.
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            ttl: Duration::from_secs(10),
            enabled: true,
        }
    }
}

impl FleetOptions {
    /// Neither advertise nor read the directory: plans use this runtime's
    /// kinds and [`Orchestrator::cards`](crate::Orchestrator::cards) only.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// How often adverts are rewritten (default 1 s, at least 10 ms).
    #[must_use]
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(10));
        self
    }

    /// How long an advert lives after its last rewrite (default 10 s; at
    /// least twice the heartbeat). The first runtime of a tenant sets the
    /// bucket's max age to it; every reader applies its own.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Whether the runtime takes part.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The heartbeat.
    pub fn heartbeat_value(&self) -> Duration {
        self.heartbeat
    }

    /// The time to live, never below two heartbeats.
    pub fn ttl_value(&self) -> Duration {
        self.ttl.max(self.heartbeat * 2)
    }
}

/// A card another runtime advertises, and when it runs out.
struct Remote {
    live: LiveCard,
    expires: Instant,
}

/// Cards by kind: this runtime's, in registration order, and the fleet's.
pub(crate) struct Directory {
    cards: RwLock<Vec<AgentCard>>,
    remote: RwLock<FastMap<String, Remote>>,
    /// Bumped on every change that can add a card.
    changed: watch::Sender<u64>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            cards: RwLock::default(),
            remote: RwLock::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl Directory {
    pub(crate) fn add(&self, card: AgentCard) {
        if let Ok(mut cards) = self.cards.write() {
            cards.retain(|c| c.kind != card.kind);
            cards.push(card);
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// This runtime's cards.
    pub(crate) fn cards(&self) -> Vec<AgentCard> {
        self.cards.read().map(|c| c.clone()).unwrap_or_default()
    }

    /// Another runtime's advert arrived (new or rewritten).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // the bus keeps the directory
    pub(crate) fn upsert(&self, key: String, live: LiveCard, expires: Instant) {
        if let Ok(mut r) = self.remote.write() {
            r.insert(key, Remote { live, expires });
        }
        self.changed.send_modify(|n| *n += 1);
    }

    /// Another runtime withdrew an advert.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // the bus keeps the directory
    pub(crate) fn remove(&self, key: &str) {
        if let Ok(mut r) = self.remote.write() {
            r.remove(key);
        }
    }

    /// Forgets adverts that ran out (reads skip them anyway).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // the bus keeps the directory
    pub(crate) fn sweep(&self) {
        let now = Instant::now();
        if let Ok(mut r) = self.remote.write() {
            r.retain(|_, v| v.expires > now);
        }
    }

    /// The live adverts of other runtimes.
    pub(crate) fn remote(&self) -> Vec<LiveCard> {
        let now = Instant::now();
        self.remote
            .read()
            .map(|r| {
                r.values()
                    .filter(|v| v.expires > now)
                    .map(|v| v.live.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One card per kind: this runtime's own, then each other live kind.
    pub(crate) fn fleet_cards(&self) -> Vec<AgentCard> {
        let mut cards = self.cards();
        let mut remote = self.remote();
        // The same kind on several nodes: one card, the newest version's.
        remote.sort_by(|a, b| b.version.cmp(&a.version));
        for r in remote {
            if !cards.iter().any(|c| c.kind == r.card.kind) {
                cards.push(r.card);
            }
        }
        cards
    }

    /// Whether a kind is hosted here or by a live runtime.
    pub(crate) fn is_live(&self, kind: &AgentKind) -> bool {
        if self.cards().iter().any(|c| &c.kind == kind) {
            return true;
        }
        let now = Instant::now();
        self.remote
            .read()
            .map(|r| {
                r.values()
                    .any(|v| v.expires > now && &v.live.card.kind == kind)
            })
            .unwrap_or(false)
    }

    /// What the live runtimes report of a kind: tasks in flight and
    /// capacity, summed over them.
    pub(crate) fn remote_load(&self, kind: &AgentKind) -> (usize, usize) {
        let now = Instant::now();
        self.remote
            .read()
            .map(|r| {
                r.values()
                    .filter(|v| v.expires > now && &v.live.card.kind == kind)
                    .fold((0, 0), |(l, c), v| {
                        (l + v.live.in_flight, c + v.live.capacity)
                    })
            })
            .unwrap_or((0, 0))
    }

    /// The kind to ask for `capability`: the first registered here that
    /// offers it, else the live kind elsewhere with the most spare capacity
    /// (fewest tasks in flight per slot, then the name, so every caller
    /// agrees).
    pub(crate) fn kind_for(&self, capability: &str) -> Option<AgentKind> {
        if let Ok(cards) = self.cards.read()
            && let Some(c) = cards.iter().find(|c| c.can(capability))
        {
            return Some(c.kind.clone());
        }
        let now = Instant::now();
        let remote = self.remote.read().ok()?;
        let mut by_kind: FastMap<&AgentKind, (usize, usize)> = FastMap::default();
        for v in remote.values() {
            if v.expires > now && v.live.card.can(capability) {
                let e = by_kind.entry(&v.live.card.kind).or_default();
                e.0 += v.live.in_flight;
                e.1 += v.live.capacity.max(1);
            }
        }
        by_kind
            .into_iter()
            .min_by(|(ka, (la, ca)), (kb, (lb, cb))| {
                // la/ca < lb/cb without floating point.
                (la * cb).cmp(&(lb * ca)).then_with(|| ka.cmp(kb))
            })
            .map(|(k, _)| k.clone())
    }

    /// Waits until some card offers `capability` (or names the kind), for up
    /// to `limit`. Returns whether one does.
    pub(crate) async fn wait_for(&self, capability: &str, limit: Duration) -> bool {
        let found = |d: &Self| {
            d.kind_for(capability).is_some()
                || AgentKind::new(capability).is_ok_and(|k| d.is_live(&k))
        };
        let mut rx = self.changed.subscribe();
        let until = tokio::time::Instant::now() + limit;
        loop {
            rx.borrow_and_update();
            if found(self) {
                return true;
            }
            match tokio::time::timeout_at(until, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return found(self),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(kind: &str, node: &str, caps: &[&str], in_flight: usize, capacity: usize) -> LiveCard {
        let kind = AgentKind::new(kind).unwrap();
        LiveCard {
            card: AgentCard {
                name: kind.to_string(),
                kind,
                description: String::new(),
                capabilities: caps.iter().map(|c| (*c).to_owned()).collect(),
                input_schema: serde_json::Value::Bool(true),
                output_schema: serde_json::Value::Bool(true),
            },
            node: NodeId::new(node).unwrap(),
            version: "1".into(),
            capacity,
            in_flight,
        }
    }

    fn put(d: &Directory, l: LiveCard, ttl: Duration) {
        d.upsert(l.key(), l, Instant::now() + ttl);
    }

    #[test]
    fn the_least_loaded_live_kind_takes_a_capability() {
        let d = Directory::default();
        let long = Duration::from_secs(60);
        put(&d, live("a", "n1", &["write"], 8, 8), long);
        put(&d, live("b", "n2", &["write"], 1, 8), long);
        put(&d, live("c", "n3", &["read"], 0, 8), long);
        assert_eq!(d.kind_for("write").unwrap().as_str(), "b");
        // Two nodes of `a` double its capacity: 8 of 16 is still busier than 1 of 8.
        put(&d, live("a", "n4", &["write"], 0, 8), long);
        assert_eq!(d.kind_for("write").unwrap().as_str(), "b");
        assert_eq!(d.remote_load(&AgentKind::new("a").unwrap()), (8, 16));
        assert!(d.kind_for("fly").is_none());
    }

    #[test]
    fn expired_and_withdrawn_adverts_are_not_live() {
        let d = Directory::default();
        let dead = live("a", "n1", &["write"], 0, 1);
        d.upsert(dead.key(), dead, Instant::now());
        assert!(d.kind_for("write").is_none());
        assert!(!d.is_live(&AgentKind::new("a").unwrap()));
        let ok = live("b", "n2", &["write"], 0, 1);
        let key = ok.key();
        put(&d, ok, Duration::from_secs(60));
        assert_eq!(d.fleet_cards().len(), 1);
        d.remove(&key);
        assert!(d.kind_for("write").is_none());
        d.sweep();
        assert!(d.remote.read().unwrap().is_empty());
    }

    #[test]
    fn local_kinds_come_first() {
        let d = Directory::default();
        put(
            &d,
            live("remote", "n1", &["write"], 0, 100),
            Duration::from_secs(60),
        );
        d.add(live("here", "n0", &["write"], 0, 1).card);
        assert_eq!(d.kind_for("write").unwrap().as_str(), "here");
        assert_eq!(d.fleet_cards().len(), 2);
    }

    #[tokio::test]
    async fn a_waiter_sees_a_card_that_appears() {
        let d = std::sync::Arc::new(Directory::default());
        assert!(!d.wait_for("write", Duration::from_millis(1)).await);
        let d2 = d.clone();
        let waiter =
            tokio::spawn(async move { d2.wait_for("write", Duration::from_secs(30)).await });
        tokio::task::yield_now().await;
        put(
            &d,
            live("a", "n1", &["write"], 0, 1),
            Duration::from_secs(60),
        );
        assert!(waiter.await.unwrap());
    }
}
