//! One registered agent kind on a runtime: its card, its factory, its live
//! activations, and the inbox its route delivers to.

use std::collections::HashMap as StdHashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tracing::Instrument;

use crate::agent::{Agent, AgentCard, AgentError, DynAgent};
use crate::envelope::{Destination, Envelope, Failure, FailureKind, Payload};
use crate::error::RegisterError;
use crate::id::{AgentId, AgentKey, AgentKind, Topic};
use crate::runtime::activation::{Activation, drain};
use crate::runtime::cancel::HandlerCancel;
use crate::runtime::{Runtime, RuntimeInner};
use crate::transport::{Delivery, Inbox, LocalInbox, Refused, Route, TryDeliver};

const SHARDS: usize = 16;

type Activations = Mutex<StdHashMap<AgentKey, Arc<Activation>, foldhash::fast::RandomState>>;

type Factory = dyn Fn(&AgentId) -> Result<Box<dyn DynAgent>, AgentError> + Send + Sync;

pub(crate) struct KindHost {
    pub(crate) kind: AgentKind,
    pub(crate) card: AgentCard,
    /// The version the kind was registered with (advertised with its card).
    pub(crate) version: String,
    factory: Box<Factory>,
    shards: Box<[Activations]>,
    /// Keys of the instances that share messages sent to the kind itself.
    pool: Box<[AgentKey]>,
    pub(crate) mailbox: usize,
    pub(crate) idle_timeout: Option<Duration>,
    /// Requests from this process to an idle id run in the caller's task.
    direct: bool,
    pub(crate) load: AtomicUsize,
    rt: Weak<RuntimeInner>,
    /// The runtime's stage, read on every delivery without upgrading `rt`.
    life: Arc<crate::runtime::lifecycle::Lifecycle>,
    /// The node of that runtime: a direct call checks it is its own.
    node: Weak<crate::runtime::call::Node>,
    hasher: foldhash::fast::RandomState,
}

impl KindHost {
    /// Whether requests from this process to an idle id of this kind run in
    /// the caller's task.
    pub(crate) fn direct_calls(&self) -> bool {
        self.direct
    }

    fn shard(&self, key: &AgentKey) -> &Activations {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h % SHARDS]
    }

    /// Makes and activates the agent value for an id.
    pub(crate) async fn activate(&self, id: &AgentId) -> Result<Box<dyn DynAgent>, Failure> {
        let mut agent = (self.factory)(id).map_err(|e| {
            Failure::new(
                FailureKind::NoSuchAgent,
                format!("cannot activate {id}: {e}"),
            )
            .at(id)
        })?;
        agent.on_activate_dyn(id).await.map_err(|e| {
            let mut f = e.to_failure(id);
            f.message = format!("activation of {id} failed: {}", f.message);
            f
        })?;
        Ok(agent)
    }

    fn get_or_create(&self, key: &AgentKey) -> Arc<Activation> {
        let shard = self.shard(key);
        let mut map = match shard.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(a) = map.get(key) {
            return a.clone();
        }
        let act = Arc::new(Activation::new(AgentId::from_parts(
            self.kind.clone(),
            key.clone(),
        )));
        map.insert(key.clone(), act.clone());
        act
    }

    fn get(&self, key: &AgentKey) -> Option<Arc<Activation>> {
        self.shard(key).lock().ok()?.get(key).cloned()
    }

    /// How many of the kind's tasks this runtime handles at once: its pool.
    pub(crate) fn capacity(&self) -> usize {
        self.pool.len()
    }

    /// How many ids are live.
    pub(crate) fn active(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    /// Picks the pool instance for a message to the kind: the least loaded
    /// (a full scan from a random start for small pools, the less loaded of two
    /// random instances for large ones), skipping instances that are waiting in
    /// the message's own call chain.
    ///
    /// Gives the instance's activation too when it is live, so the caller
    /// need not look it up again.
    fn pick_instance(
        &self,
        chain: &crate::envelope::CallChain,
    ) -> Option<(AgentKey, Option<Arc<Activation>>)> {
        let n = self.pool.len();
        let usable = |k: &AgentKey| {
            chain.is_empty() || !chain.contains(&AgentId::from_parts(self.kind.clone(), k.clone()))
        };
        let mut rng = rand::rng();
        if n <= 16 {
            let start = rng.random_range(0..n);
            let mut best: Option<(&AgentKey, usize, Option<Arc<Activation>>)> = None;
            for i in 0..n {
                let k = &self.pool[(start + i) % n];
                if !usable(k) {
                    continue;
                }
                let act = self.get(k);
                let l = act.as_ref().map_or(0, |a| a.load());
                if l == 0 {
                    return Some((k.clone(), act));
                }
                if best.as_ref().is_none_or(|(_, bl, _)| l < *bl) {
                    best = Some((k, l, act));
                }
            }
            return best.map(|(k, _, act)| (k.clone(), act));
        }
        let a = &self.pool[rng.random_range(0..n)];
        let b = &self.pool[rng.random_range(0..n)];
        let (act_a, act_b) = (self.get(a), self.get(b));
        let load = |act: &Option<Arc<Activation>>| act.as_ref().map_or(0, |a| a.load());
        let (pick, act) = if load(&act_b) < load(&act_a) {
            (b, act_b)
        } else {
            (a, act_a)
        };
        if usable(pick) {
            return Some((pick.clone(), act));
        }
        self.pool
            .iter()
            .find(|k| usable(k))
            .map(|k| (k.clone(), self.get(k)))
    }

    /// Removes an activation if it is idle (or always, with `force`), and runs
    /// its deactivation hook. Returns whether it was removed.
    pub(crate) async fn deactivate(&self, key: &AgentKey, idle_for: Option<Duration>) -> bool {
        let agent = {
            let Ok(mut map) = self.shard(key).lock() else {
                return false;
            };
            let Some(act) = map.get(key).cloned() else {
                return false;
            };
            let Ok(mut st) = act.state.lock() else {
                return false;
            };
            if st.busy || !st.queue.is_empty() {
                return false;
            }
            if let Some(idle) = idle_for
                && st.last_active.elapsed() < idle
            {
                return false;
            }
            st.dead = true;
            map.remove(key);
            if let Some(w) = st.unpark() {
                w.wake();
            }
            st.agent.take()
        };
        if let Some(mut agent) = agent {
            agent.on_deactivate_dyn().await;
        }
        true
    }

    /// Wakes every parked drain task, so that it sees the runtime is draining
    /// and ends once its mailbox is empty.
    pub(crate) fn wake_all(&self) {
        for shard in self.shards.iter() {
            let Ok(map) = shard.lock() else { continue };
            for act in map.values() {
                let parked = act.state.lock().ok().and_then(|mut st| st.unpark());
                if let Some(w) = parked {
                    w.wake();
                }
            }
        }
    }

    /// Fires the cancellation token of every handler running here.
    pub(crate) fn cancel_running(&self) {
        for shard in self.shards.iter() {
            let Ok(map) = shard.lock() else { continue };
            for act in map.values() {
                if let Ok(st) = act.state.lock()
                    && let Some((_, token)) = &st.current
                {
                    token.cancel();
                }
            }
        }
    }

    /// Deactivates every idle activation idle for at least `idle`.
    pub(crate) async fn sweep(&self, idle: Option<Duration>) -> usize {
        let keys: Vec<AgentKey> = self
            .shards
            .iter()
            .flat_map(|s| {
                s.lock()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        let mut n = 0;
        for key in keys {
            if self.deactivate(&key, idle).await {
                n += 1;
            }
        }
        n
    }
}

/// Where a delivery should go, once its destination is read.
enum Target {
    /// Into the mailbox of this key (whose activation, if already looked up).
    Key(AgentKey, Option<Arc<Activation>>),
    /// Already dealt with (a cancel, a refused cycle answered at once).
    Done,
    /// Needs an async step (answering a call cycle).
    Cycle(Failure),
}

/// Why a kind whose runtime is gone refuses a message.
fn runtime_dropped() -> Failure {
    Failure::new(FailureKind::ShuttingDown, "runtime dropped")
}

/// What an activation with queued messages needs from whoever queued them.
enum Kick {
    /// A drain task to be started.
    Spawn,
    /// Its drain task woken, if it is parked (one at work takes the message
    /// when it looks next).
    Wake(Option<std::task::Waker>),
}

impl Kick {
    /// Decided under the activation's lock, acted on after it.
    fn after_queueing(st: &mut crate::runtime::activation::State) -> Self {
        if st.task {
            Kick::Wake(st.unpark())
        } else {
            st.task = true;
            Kick::Spawn
        }
    }
}

enum Enqueued {
    Done,
    Full(Delivery, Arc<Activation>),
    /// The runtime is gone: nothing will handle it.
    Gone(Delivery),
}

impl KindHost {
    fn target(&self, env: &Envelope) -> Result<Target, Failure> {
        if let Payload::Cancel(target) = &env.payload {
            match &env.to {
                Destination::Agent(id) => {
                    if let Some(a) = self.get(id.key()) {
                        self.withdraw(&a, target);
                    }
                }
                _ => {
                    for k in self.pool.iter() {
                        if let Some(a) = self.get(k)
                            && self.withdraw(&a, target)
                        {
                            break;
                        }
                    }
                }
            }
            return Ok(Target::Done);
        }
        self.route(env)
    }

    /// Withdraws a cancelled message from `act` (see
    /// [`Activation::withdraw`]); whether it was there. One taken out of the
    /// mailbox is acknowledged (its sender gave up on it, so no transport
    /// should deliver it again) and not answered.
    fn withdraw(&self, act: &Activation, target: &crate::id::MessageId) -> bool {
        let delivery = match act.withdraw(target) {
            None => return false,
            Some(crate::runtime::activation::Withdrawn::Running) => return true,
            Some(crate::runtime::activation::Withdrawn::Queued(d)) => d,
        };
        let left = self.load.fetch_sub(1, Ordering::Relaxed);
        crate::observe::metrics::mailbox_depth(&self.kind, left.saturating_sub(1));
        act.room.notify_one();
        tracing::debug!(message = %target, agent = %act.id, "a queued message was cancelled before it was handled; withdrawn");
        let Delivery { acker, .. } = delivery;
        if !acker.is_noop()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            let target = *target;
            handle.spawn(async move {
                if let Err(e) = acker.ack().await {
                    tracing::debug!(error = %e, message = %target, "ack of a withdrawn message failed");
                }
            });
        }
        true
    }

    /// Where a message (not a cancel) for this kind goes.
    fn route(&self, env: &Envelope) -> Result<Target, Failure> {
        match &env.to {
            Destination::Agent(id) if id.kind() == &self.kind => {
                if env.ctx.chain.contains(id) {
                    // The target waits in this very chain: answer at once
                    // instead of queueing behind a handler that cannot finish.
                    let chain = env.ctx.chain.with(id);
                    return Ok(Target::Cycle(
                        Failure::new(
                            FailureKind::CallCycle,
                            format!("call cycle: {chain} (the agent is already waiting in this call chain)"),
                        )
                        .at(id),
                    ));
                }
                Ok(Target::Key(id.key().clone(), None))
            }
            Destination::Kind(_) | Destination::Topic(_) => {
                match self.pick_instance(&env.ctx.chain) {
                    Some((k, act)) => Ok(Target::Key(k, act)),
                    None => Ok(Target::Cycle(Failure::new(
                        FailureKind::CallCycle,
                        format!(
                            "call cycle: every instance of {} is waiting in the call chain {}",
                            self.kind, env.ctx.chain
                        ),
                    ))),
                }
            }
            other => Err(Failure::new(
                FailureKind::NoSuchAgent,
                format!("kind {} does not take messages for {other}", self.kind),
            )),
        }
    }

    /// Queues a delivery in the mailbox of `key`, starting or waking its drain
    /// task; hands it back if the mailbox is full.
    fn enqueue(
        &self,
        key: &AgentKey,
        mut hint: Option<Arc<Activation>>,
        delivery: Delivery,
    ) -> Enqueued {
        let id = delivery.envelope.id;
        loop {
            let act = match hint.take() {
                Some(act) => act,
                None => self.get_or_create(key),
            };
            let kick = {
                let mut st = match act.state.lock() {
                    Ok(s) => s,
                    Err(p) => p.into_inner(),
                };
                if st.dead {
                    continue;
                }
                if st.queue.len() >= self.mailbox {
                    drop(st);
                    return Enqueued::Full(delivery, act);
                }
                st.queue.push_back(delivery);
                act.count_in(&mut st);
                let before = self.load.fetch_add(1, Ordering::Relaxed);
                crate::observe::metrics::mailbox_depth(&self.kind, before + 1);
                Kick::after_queueing(&mut st)
            };
            if !self.kick(&act, kick) {
                return self.unqueue(&act, id);
            }
            return Enqueued::Done;
        }
    }

    /// Takes a message just queued back out, when its runtime is gone and
    /// no drain task can be started for it.
    fn unqueue(&self, act: &Activation, id: crate::id::MessageId) -> Enqueued {
        let delivery = act.state.lock().ok().and_then(|mut st| {
            st.task = false;
            let at = st.queue.iter().position(|d| d.envelope.id == id)?;
            let delivery = st.queue.remove(at)?;
            act.count_out(&mut st);
            Some(delivery)
        });
        match delivery {
            Some(delivery) => {
                self.load.fetch_sub(1, Ordering::Relaxed);
                Enqueued::Gone(delivery)
            }
            None => Enqueued::Done,
        }
    }

    /// Refuses a delivery when the runtime is dropped or draining (read
    /// without upgrading the runtime's handle).
    fn refusal(&self) -> Option<Failure> {
        if self.life.is_draining() {
            Some(Failure::new(
                FailureKind::ShuttingDown,
                "the runtime is shutting down",
            ))
        } else if self.rt.strong_count() == 0 {
            Some(runtime_dropped())
        } else {
            None
        }
    }

    /// The runtime, unless it is dropped or draining.
    fn runtime(&self) -> Result<Arc<RuntimeInner>, Failure> {
        if let Some(reason) = self.refusal() {
            return Err(reason);
        }
        self.rt.upgrade().ok_or_else(runtime_dropped)
    }
}

impl LocalInbox for KindHost {
    fn try_deliver(&self, delivery: Delivery) -> Result<(), TryDeliver> {
        let _span = deliver_span(&self.kind, &delivery.envelope).entered();
        if let Some(reason) = self.refusal() {
            return Err(TryDeliver::Refused(Box::new(Refused { delivery, reason })));
        }
        match self.target(&delivery.envelope) {
            Ok(Target::Done) => Ok(()),
            Ok(Target::Cycle(_)) => Err(TryDeliver::Wait(delivery)),
            Ok(Target::Key(key, act)) => match self.enqueue(&key, act, delivery) {
                Enqueued::Done => Ok(()),
                Enqueued::Full(d, _) => Err(TryDeliver::Wait(d)),
                Enqueued::Gone(delivery) => Err(TryDeliver::Refused(Box::new(Refused {
                    delivery,
                    reason: runtime_dropped(),
                }))),
            },
            Err(reason) => Err(TryDeliver::Refused(Box::new(Refused { delivery, reason }))),
        }
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[async_trait]
impl Inbox for KindHost {
    async fn deliver(&self, delivery: Delivery) -> Result<(), Box<Refused>> {
        // A message from another process to an idle agent is handled in this
        // task, the transport's pump (see `runtime::direct::deliver`). In
        // process, requests take direct calls already, and a send or a
        // publication does not run its handlers in the sender's task.
        let delivery = match self.rt.upgrade() {
            Some(rt) if self.direct && rt.node.memory.is_none() => {
                match crate::runtime::direct::deliver(self, &rt, delivery).await {
                    Ok(()) => return Ok(()),
                    Err(d) => d,
                }
            }
            _ => delivery,
        };
        // Then the mailbox: most deliveries find room at once.
        let delivery = match LocalInbox::try_deliver(self, delivery) {
            Ok(()) => return Ok(()),
            Err(TryDeliver::Refused(r)) => return Err(r),
            Err(TryDeliver::Wait(d)) => d,
        };
        let span = deliver_span(&self.kind, &delivery.envelope);
        self.deliver_waiting(delivery).instrument(span).await
    }

    fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }
}

/// The span of one delivery into a kind's mailboxes.
fn deliver_span(kind: &AgentKind, env: &Envelope) -> tracing::Span {
    if !tracing::level_enabled!(tracing::Level::DEBUG) {
        return tracing::Span::none();
    }
    tracing::debug_span!(
        "coditect.deliver",
        kind = %kind,
        to = %env.to,
        message = %env.id,
        run = env.ctx.run.map(tracing::field::display),
        tenant = %env.tenant,
    )
}

/// An idle activation taken for a direct call (see `runtime::direct`).
///
/// The claimant holds a slot of the node's concurrency bound, and gives it
/// back (`Limit::release`) when it releases the activation.
pub(crate) struct Claim {
    pub(crate) act: Arc<Activation>,
    pub(crate) agent: Box<dyn DynAgent>,
    pub(crate) cancel: Arc<HandlerCancel>,
}

impl KindHost {
    /// Takes the activation a request would go to for a direct call, if it is
    /// idle: live, not handling a message, nothing queued, and a handler slot
    /// free under the runtime's bound. `None` sends the request the usual way.
    pub(crate) fn claim(
        &self,
        node: &Arc<crate::runtime::call::Node>,
        env: &Envelope,
    ) -> Option<Claim> {
        // Only this node's own kinds: another runtime on the same in-memory
        // transport keeps its own activations.
        if !self.direct || !std::ptr::eq(self.node.as_ptr(), Arc::as_ptr(node)) {
            return None;
        }
        if node.life.is_draining() {
            return None;
        }
        let act = match self.route(env) {
            Ok(Target::Key(_, Some(act))) => act,
            Ok(Target::Key(key, None)) => self.get(&key)?,
            _ => return None,
        };
        if !node.concurrency.try_take() {
            return None;
        }
        let taken = act.state.lock().ok().and_then(|mut st| {
            if st.busy || st.dead || !st.queue.is_empty() {
                return None;
            }
            let agent = st.agent.take()?;
            let mut cancel = st.spare.take().unwrap_or_default();
            HandlerCancel::recycle(&mut cancel);
            st.busy = true;
            st.current = Some((env.id, cancel.clone()));
            act.count_in(&mut st);
            Some((agent, cancel))
        });
        let Some((agent, cancel)) = taken else {
            node.concurrency.release();
            return None;
        };
        self.load.fetch_add(1, Ordering::Relaxed);
        Some(Claim { act, agent, cancel })
    }

    /// The node this kind is registered on, if it is still there.
    pub(crate) fn node(&self) -> Option<Arc<crate::runtime::call::Node>> {
        self.node.upgrade()
    }

    /// Gives back an activation taken by [`claim`](Self::claim), with its agent
    /// (none if the handler panicked or was dropped mid-way), and hands what
    /// queued up meanwhile to the activation's drain task. (The claimant gives
    /// its concurrency slot back itself.)
    pub(crate) fn release(
        &self,
        act: &Arc<Activation>,
        agent: Option<Box<dyn DynAgent>>,
        cancel: Arc<HandlerCancel>,
    ) {
        self.load.fetch_sub(1, Ordering::Relaxed);
        let kick = {
            let mut st = match act.state.lock() {
                Ok(s) => s,
                Err(p) => p.into_inner(),
            };
            act.count_out(&mut st);
            st.agent = agent;
            st.current = None;
            st.busy = false;
            st.spare = Some(cancel);
            if self.idle_timeout.is_some() {
                st.last_active = tokio::time::Instant::now();
            }
            if st.queue.is_empty() {
                return;
            }
            Kick::after_queueing(&mut st)
        };
        // A runtime already gone leaves what queued meanwhile to its
        // requesters' deadlines.
        self.kick(act, kick);
    }

    /// Acts on a [`Kick`] once the activation's lock is let go: wakes the
    /// parked drain task, or starts one. `false` if one had to be started and
    /// the runtime is gone.
    fn kick(&self, act: &Arc<Activation>, kick: Kick) -> bool {
        match kick {
            Kick::Wake(parked) => {
                if let Some(w) = parked {
                    w.wake();
                }
                true
            }
            // Only a new drain task needs the runtime itself (a running one
            // holds it): upgraded here, not per message.
            Kick::Spawn => match self.rt.upgrade() {
                Some(rt) => {
                    if let Some(host) = rt.kind_host(&self.kind) {
                        rt.node.tracker.spawn(drain(act.clone(), host, rt.clone()));
                    }
                    true
                }
                None => false,
            },
        }
    }

    async fn deliver_waiting(&self, delivery: Delivery) -> Result<(), Box<Refused>> {
        let rt = match self.runtime() {
            Ok(rt) => rt,
            Err(reason) => return Err(Box::new(Refused { delivery, reason })),
        };
        let key = match self.target(&delivery.envelope) {
            Ok(Target::Done) => return Ok(()),
            Ok(Target::Cycle(failure)) => {
                if let Some(reply) = delivery.envelope.reply(Err(failure)) {
                    let _ = rt.node.send_fast(reply).await;
                }
                let _ = delivery.acker.ack().await;
                return Ok(());
            }
            Ok(Target::Key(key, act)) => (key, act),
            Err(reason) => return Err(Box::new(Refused { delivery, reason })),
        };
        let (key, mut hint) = key;
        let mut delivery = delivery;
        loop {
            match self.enqueue(&key, hint.take(), delivery) {
                Enqueued::Done => return Ok(()),
                Enqueued::Gone(delivery) => {
                    return Err(Box::new(Refused {
                        delivery,
                        reason: runtime_dropped(),
                    }));
                }
                Enqueued::Full(d, act) => {
                    // Backpressure: wait for room, registering before the
                    // re-check so a slot freed in between is not missed.
                    let room = act.room.notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    let full = act
                        .state
                        .lock()
                        .map(|st| !st.dead && st.queue.len() >= self.mailbox)
                        .unwrap_or(false);
                    if full {
                        room.await;
                    }
                    delivery = d;
                }
            }
        }
    }
}

/// Registers an agent kind on a runtime: its card, its mailbox, how many
/// instances share messages sent to the kind, and when idle ids are dropped.
///
/// Made by [`Runtime::kind`]; ends with [`KindBuilder::register`].
#[must_use = "a KindBuilder does nothing until .register(...).await"]
pub struct KindBuilder<'r> {
    runtime: &'r Runtime,
    kind: String,
    name: Option<String>,
    description: String,
    capabilities: Vec<String>,
    version: String,
    mailbox: usize,
    instances: usize,
    idle_timeout: Option<Duration>,
    topics: Vec<Topic>,
    direct: bool,
}

impl<'r> KindBuilder<'r> {
    pub(crate) fn new(runtime: &'r Runtime, kind: &str) -> Self {
        let cfg = &runtime.inner.config;
        Self {
            runtime,
            kind: kind.to_owned(),
            name: None,
            description: String::new(),
            capabilities: Vec::new(),
            version: "0".to_owned(),
            mailbox: cfg.mailbox,
            instances: cfg.instances,
            idle_timeout: cfg.idle_timeout,
            topics: Vec::new(),
            direct: true,
        }
    }

    /// The name on the card (default: the kind).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// What the agent does, for planners and routers.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// A capability it offers (default: the kind's name). May be repeated.
    pub fn capability(mut self, capability: impl Into<String>) -> Self {
        self.capabilities.push(capability.into());
        self
    }

    /// The version of the agent, advertised with its card in the fleet's
    /// directory (default `"0"`). When runtimes host different versions of
    /// a kind, planners read the card of the greatest.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Mailbox size per id: a sender waits while an id has this many messages
    /// queued (default from the runtime, 256).
    pub fn mailbox(mut self, size: usize) -> Self {
        self.mailbox = size.max(1);
        self
    }

    /// How many instances (`<kind>/_0`…) share messages sent to the kind itself
    /// (default from the runtime, 16). Instances are virtual too: an unused one
    /// costs nothing.
    pub fn instances(mut self, n: usize) -> Self {
        self.instances = n.max(1);
        self
    }

    /// Drops an id's activation after it has been idle this long.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Whether a request from this process to an idle id of this kind may run
    /// its handler in the caller's task (default: yes).
    ///
    /// When the transport delivers in process and the id is idle — activated,
    /// nothing running, nothing queued — a request skips the mailbox: the
    /// caller claims the activation, runs the handler, and gets the answer
    /// without a task switch or a wake-up. Everything else stays as it is:
    /// one message at a time per id, in order (a message sent meanwhile waits
    /// its turn), the concurrency bound, deadlines, cancellation with its grace
    /// period, panics contained. What changes is the thread: concurrent
    /// requests issued by one task run their handlers in that task.
    ///
    /// Over a transport between processes (NATS), the same holds for a
    /// message from another process to an idle id: its handler's first poll
    /// runs in the task that delivered it (the subscription's pump), which
    /// sends the reply and the ack before it takes the next message, and a
    /// handler that waits goes on in a task of its own.
    ///
    /// Turn it off for kinds whose handlers compute for long stretches
    /// between awaits, so that such requests spread over the worker threads
    /// (and, between processes, do not hold up the messages behind them).
    pub fn direct_calls(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// Also deliver messages published to `topic` to this kind (to one of its
    /// instances, load-balanced).
    pub fn subscribe(mut self, topic: Topic) -> Self {
        self.topics.push(topic);
        self
    }

    /// Registers the kind with an infallible factory.
    ///
    /// # Errors
    /// [`RegisterError`] if the kind's name is invalid, it is already
    /// registered, the runtime is shutting down, or the transport refuses.
    pub async fn register<A, F>(self, factory: F) -> Result<AgentKind, RegisterError>
    where
        A: Agent,
        F: Fn(&AgentId) -> A + Send + Sync + 'static,
    {
        self.register_fallible(move |id: &AgentId| Ok::<A, AgentError>(factory(id)))
            .await
    }

    /// Registers the kind with a factory that may refuse an id: a message to a
    /// refused id fails with [`FailureKind::NoSuchAgent`].
    ///
    /// # Errors
    /// As [`register`](Self::register).
    pub async fn register_fallible<A, F>(self, factory: F) -> Result<AgentKind, RegisterError>
    where
        A: Agent,
        F: Fn(&AgentId) -> Result<A, AgentError> + Send + Sync + 'static,
    {
        let kind = AgentKind::new(&self.kind)?;
        let mut card = AgentCard::of::<A>(kind.clone());
        if let Some(name) = self.name {
            card.name = name;
        }
        card.description = self.description;
        if !self.capabilities.is_empty() {
            card.capabilities = self.capabilities;
        }
        let pool = (0..self.instances)
            .map(|i| AgentKey::new(format!("_{i}")))
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        let rt = &self.runtime.inner;
        let host = Arc::new(KindHost {
            kind: kind.clone(),
            card,
            version: self.version,
            factory: Box::new(move |id: &AgentId| {
                factory(id).map(|a| Box::new(a) as Box<dyn DynAgent>)
            }),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(StdHashMap::default()))
                .collect(),
            pool,
            mailbox: self.mailbox,
            idle_timeout: self.idle_timeout,
            direct: self.direct,
            load: AtomicUsize::new(0),
            rt: Arc::downgrade(rt),
            life: rt.node.life.clone(),
            node: Arc::downgrade(&rt.node),
            hasher: Default::default(),
        });
        let mut routes = vec![Route::kind(rt.node.tenant.clone(), kind.clone())];
        routes.extend(
            self.topics
                .into_iter()
                .map(|t| Route::topic(rt.node.tenant.clone(), t)),
        );
        rt.add_kind(host, routes).await?;
        Ok(kind)
    }
}

/// Runs the idle sweeper of one kind until the runtime shuts down.
pub(crate) async fn sweep_idle(
    host: Weak<KindHost>,
    idle: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let period = (idle / 2).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(host) = host.upgrade() else {
            return;
        };
        let n = host.sweep(Some(idle)).await;
        if n > 0 {
            tracing::debug!(kind = %host.kind, deactivated = n, "idle agents deactivated");
        }
    }
}
