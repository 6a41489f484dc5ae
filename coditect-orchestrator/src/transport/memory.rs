//! The in-memory transport: one process, exactly-once delivery, no serialization.

use std::collections::HashMap as StdHashMap;

type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use super::{
    Delivery, Inbox, LocalInbox, Route, RouteTarget, SendError, SendErrorKind, Subscription,
    Transport, TransportError, TransportErrorKind, TryDeliver, TrySend,
};
use crate::envelope::{Destination, Envelope};
use crate::id::{AgentId, AgentKind, NodeId, TenantId, Topic};

/// Moves envelopes between inboxes of one process.
///
/// Bodies move as typed values (no serialization); delivery is exactly once;
/// sends wait when the receiving mailbox is full. Cloning gives another handle
/// to the same transport.
///
/// ```
/// use coditect_orchestrator::{InMemoryTransport, Runtime};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = InMemoryTransport::new();
/// let runtime = Runtime::builder(transport.clone()).build().await?;
/// # runtime.shutdown(std::time::Duration::from_secs(1)).await; Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct InMemoryTransport {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    tenants: RwLock<HashMap<TenantId, TenantRoutes>>,
    next_sub: AtomicU64,
    round_robin: AtomicUsize,
    closed: AtomicBool,
    hasher: foldhash::fast::RandomState,
}

#[derive(Default)]
struct TenantRoutes {
    agents: HashMap<AgentId, Vec<Sub>>,
    kinds: HashMap<AgentKind, Vec<Sub>>,
    topics: HashMap<Topic, Vec<Sub>>,
    replies: HashMap<NodeId, Sub>,
}

#[derive(Clone)]
struct Sub {
    id: u64,
    inbox: Arc<dyn Inbox>,
    /// The same inbox when it was attached through the crate's own door
    /// ([`InMemoryTransport::attach_local`]): it takes deliveries without
    /// waiting when it can.
    local: Option<Arc<dyn LocalInbox>>,
}

enum Targets {
    None,
    One(Sub),
    Many(Vec<Arc<dyn Inbox>>),
}

/// [`Targets`] borrowed from the route table.
enum TargetsRef<'a> {
    None,
    One(&'a Sub),
    Many(&'a [Sub]),
}

/// Where a message goes, as the in-process fast paths see it.
enum Local {
    /// An inbox of this process that takes deliveries without waiting.
    Inbox(Arc<dyn LocalInbox>),
    /// Some other inbox, or several.
    Elsewhere,
    /// No route.
    Nowhere,
}

impl std::fmt::Debug for InMemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryTransport")
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl InMemoryTransport {
    /// Sends without waiting when the receiving inbox can take the message
    /// at once: the in-process fast path of the runtime.
    pub(crate) fn try_send(&self, envelope: Envelope) -> Result<(), TrySend> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(TrySend::Failed(Box::new(SendError::new(
                SendErrorKind::Closed,
                envelope,
                "transport closed",
            ))));
        }
        match self.resolve_local(&envelope.tenant, &envelope.to) {
            Local::Inbox(inbox) => match inbox.try_deliver(Delivery::new(envelope)) {
                Ok(()) => Ok(()),
                Err(TryDeliver::Refused(r)) => {
                    Err(TrySend::Failed(Box::new(SendError::refused(*r))))
                }
                Err(TryDeliver::Wait(d)) => Err(TrySend::Wait(d.envelope)),
            },
            Local::Elsewhere => Err(TrySend::Wait(Box::new(envelope))),
            Local::Nowhere if is_publication(&envelope) => Ok(()),
            Local::Nowhere => {
                let msg = format!("no agent is registered for {}", envelope.to);
                Err(TrySend::Failed(Box::new(SendError::new(
                    SendErrorKind::NoRoute,
                    envelope,
                    msg,
                ))))
            }
        }
    }

    /// The inbox of this process a message to `to` would be delivered to,
    /// if it was attached through [`attach_local`](Self::attach_local).
    pub(crate) fn local_inbox(
        &self,
        tenant: &TenantId,
        to: &Destination,
    ) -> Option<Arc<dyn LocalInbox>> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return None;
        }
        match self.resolve_local(tenant, to) {
            Local::Inbox(inbox) => Some(inbox),
            Local::Elsewhere | Local::Nowhere => None,
        }
    }

    /// Attaches one of the crate's own inboxes, which can take deliveries
    /// without waiting (see [`LocalInbox`]).
    pub(crate) fn attach_local(
        &self,
        route: Route,
        inbox: Arc<dyn LocalInbox>,
    ) -> Result<Subscription, TransportError> {
        let plain: Arc<dyn Inbox> = inbox.clone();
        self.attach_sub(route, plain, Some(inbox))
    }

    /// A new, empty transport.
    pub fn new() -> Self {
        Self::default()
    }

    /// Closes the transport: every route is detached and later sends fail
    /// with [`SendErrorKind::Closed`].
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        if let Ok(mut t) = self.inner.tenants.write() {
            t.clear();
        }
    }

    fn pick_least_loaded<'a>(&self, subs: &'a [Sub]) -> Option<&'a Sub> {
        match subs {
            [] => None,
            [one] => Some(one),
            many => {
                let start = self.inner.round_robin.fetch_add(1, Ordering::Relaxed) % many.len();
                let mut best = &many[start];
                let mut best_load = best.inbox.load();
                for i in 1..many.len() {
                    let s = &many[(start + i) % many.len()];
                    let l = s.inbox.load();
                    if l < best_load {
                        best = s;
                        best_load = l;
                    }
                }
                Some(best)
            }
        }
    }

    fn pick_by_key<'a>(&self, subs: &'a [Sub], key: &impl Hash) -> Option<&'a Sub> {
        match subs {
            [] => None,
            [one] => Some(one),
            many => {
                let h = self.inner.hasher.hash_one(key) as usize;
                Some(&many[h % many.len()])
            }
        }
    }

    /// The subscription(s) a message to `to` goes to, looked up under the
    /// route table's read lock and handed to `f` there (nothing is cloned
    /// that `f` does not keep).
    fn with_targets<R>(
        &self,
        tenant: &TenantId,
        to: &Destination,
        f: impl FnOnce(TargetsRef<'_>) -> R,
    ) -> R {
        let Ok(tenants) = self.inner.tenants.read() else {
            return f(TargetsRef::None);
        };
        let Some(routes) = tenants.get(tenant) else {
            return f(TargetsRef::None);
        };
        fn one(o: Option<&Sub>) -> TargetsRef<'_> {
            o.map_or(TargetsRef::None, TargetsRef::One)
        }
        f(match to {
            Destination::Agent(id) => {
                // Routes of single ids are rare: skip hashing the id for them.
                let own = if routes.agents.is_empty() {
                    None
                } else {
                    routes.agents.get(id).filter(|s| !s.is_empty())
                };
                match own {
                    Some(subs) => one(self.pick_by_key(subs, id.key())),
                    None => one(routes
                        .kinds
                        .get(id.kind())
                        .and_then(|subs| self.pick_by_key(subs, id.key()))),
                }
            }
            Destination::Kind(kind) => one(routes
                .kinds
                .get(kind)
                .and_then(|subs| self.pick_least_loaded(subs))),
            Destination::Topic(topic) => match routes.topics.get(topic).map(Vec::as_slice) {
                Some([one]) => TargetsRef::One(one),
                Some(subs) if !subs.is_empty() => TargetsRef::Many(subs),
                _ => TargetsRef::None,
            },
            Destination::Reply(node) => one(routes.replies.get(node)),
        })
    }

    fn resolve(&self, tenant: &TenantId, to: &Destination) -> Targets {
        self.with_targets(tenant, to, |t| match t {
            TargetsRef::None => Targets::None,
            TargetsRef::One(sub) => Targets::One(sub.clone()),
            TargetsRef::Many(subs) => Targets::Many(subs.iter().map(|s| s.inbox.clone()).collect()),
        })
    }

    /// Where a message to `to` goes, for the in-process fast paths: its
    /// local inbox (the one handle cloned), or why there is none.
    fn resolve_local(&self, tenant: &TenantId, to: &Destination) -> Local {
        self.with_targets(tenant, to, |t| match t {
            TargetsRef::One(Sub {
                local: Some(inbox), ..
            }) => Local::Inbox(inbox.clone()),
            TargetsRef::One(_) | TargetsRef::Many(_) => Local::Elsewhere,
            TargetsRef::None => Local::Nowhere,
        })
    }

    fn detach(inner: &Arc<Inner>, route: &Route, id: u64) {
        let Ok(mut tenants) = inner.tenants.write() else {
            return;
        };
        let Some(routes) = tenants.get_mut(&route.tenant) else {
            return;
        };
        fn remove<K: Eq + Hash>(map: &mut HashMap<K, Vec<Sub>>, key: &K, id: u64) {
            if let Some(v) = map.get_mut(key) {
                v.retain(|s| s.id != id);
                if v.is_empty() {
                    map.remove(key);
                }
            }
        }
        match &route.target {
            RouteTarget::Agent(a) => remove(&mut routes.agents, a, id),
            RouteTarget::Kind(k) => remove(&mut routes.kinds, k, id),
            RouteTarget::Topic(t) => remove(&mut routes.topics, t, id),
            RouteTarget::Replies(n) => {
                if routes.replies.get(n).is_some_and(|s| s.id == id) {
                    routes.replies.remove(n);
                }
            }
        }
    }
}

/// A message to a topic that asks for no answer: nobody following the topic
/// is no error for it.
fn is_publication(envelope: &Envelope) -> bool {
    matches!(envelope.to, Destination::Topic(_)) && envelope.reply_to.is_none()
}

#[async_trait]
impl Transport for InMemoryTransport {
    async fn send(&self, mut envelope: Envelope) -> Result<(), SendError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(SendError::new(
                SendErrorKind::Closed,
                envelope,
                "transport closed",
            ));
        }
        match self.resolve(&envelope.tenant, &envelope.to) {
            Targets::None => {
                if is_publication(&envelope) {
                    // Publishing to a topic nobody follows is not an error
                    // (a request to one is: nobody can answer it).
                    return Ok(());
                }
                let msg = format!("no agent is registered for {}", envelope.to);
                Err(SendError::new(SendErrorKind::NoRoute, envelope, msg))
            }
            Targets::One(Sub {
                local: Some(inbox), ..
            }) => match inbox.try_deliver(Delivery::new(envelope)) {
                Ok(()) => Ok(()),
                Err(TryDeliver::Refused(r)) => Err(SendError::refused(*r)),
                Err(TryDeliver::Wait(d)) => {
                    inbox.deliver(d).await.map_err(|r| SendError::refused(*r))
                }
            },
            Targets::One(Sub { inbox, .. }) => inbox
                .deliver(Delivery::new(envelope))
                .await
                .map_err(|r| SendError::refused(*r)),
            Targets::Many(mut inboxes) => {
                let last = inboxes.pop();
                for inbox in inboxes {
                    let Some(copy) = envelope.copy() else {
                        let msg = "topic message body cannot be encoded for fan-out";
                        return Err(SendError::new(SendErrorKind::Encode, envelope, msg));
                    };
                    if let Err(refused) = inbox.deliver(Delivery::new(copy)).await {
                        tracing::debug!(reason = %refused.reason, "topic subscriber refused a message");
                    }
                }
                if let Some(inbox) = last
                    && let Err(refused) = inbox.deliver(Delivery::new(envelope)).await
                {
                    tracing::debug!(reason = %refused.reason, "topic subscriber refused a message");
                }
                Ok(())
            }
        }
    }

    async fn attach(
        &self,
        route: Route,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Subscription, TransportError> {
        self.attach_sub(route, inbox, None)
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

impl InMemoryTransport {
    fn attach_sub(
        &self,
        route: Route,
        inbox: Arc<dyn Inbox>,
        local: Option<Arc<dyn LocalInbox>>,
    ) -> Result<Subscription, TransportError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            return Err(TransportError::new(
                TransportErrorKind::Closed,
                "transport closed",
            ));
        }
        let id = self.inner.next_sub.fetch_add(1, Ordering::Relaxed);
        let sub = Sub { id, inbox, local };
        {
            let mut tenants = self.inner.tenants.write().map_err(|_| {
                TransportError::new(TransportErrorKind::Other, "route table poisoned")
            })?;
            let routes = tenants.entry(route.tenant.clone()).or_default();
            match &route.target {
                RouteTarget::Agent(a) => routes.agents.entry(a.clone()).or_default().push(sub),
                RouteTarget::Kind(k) => routes.kinds.entry(k.clone()).or_default().push(sub),
                RouteTarget::Topic(t) => routes.topics.entry(t.clone()).or_default().push(sub),
                RouteTarget::Replies(n) => {
                    if routes.replies.contains_key(n) {
                        return Err(TransportError::new(
                            TransportErrorKind::RouteTaken,
                            format!("node {n} already has a reply route"),
                        ));
                    }
                    routes.replies.insert(n.clone(), sub);
                }
            }
        }
        let inner = Arc::downgrade(&self.inner);
        Ok(Subscription::new(move || {
            if let Some(inner) = inner.upgrade() {
                InMemoryTransport::detach(&inner, &route, id);
            }
        }))
    }
}
