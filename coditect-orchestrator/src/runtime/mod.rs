//! The runtime: hosts agent kinds on a transport.
//!
//! An orchestrator process and a worker process are both just a [`Runtime`].
//! It subscribes the routes of the kinds registered on it, activates an agent
//! id on its first message (virtual agents), runs each id's messages one at a
//! time in arrival order while different ids run concurrently, bounds the work
//! in flight (mailboxes and a concurrency limit), applies deadlines and
//! cancellation, replies, and drains gracefully on shutdown.
//!
//! A request whose caller gives up (drops it, its token fires, its deadline
//! passes, its run is cancelled) is withdrawn: a handler working on it has
//! its cancellation signal fired; a message of it still in the mailbox is
//! taken out and never handled.
//!
//! # Direct calls
//!
//! A request from this process to an idle agent of this runtime — activated,
//! nothing running, nothing queued — does not go through the agent's mailbox
//! when the transport delivers in process ([`InMemoryTransport`]): the caller
//! claims the activation, runs the handler in its own task, and gives the
//! activation back. There is no task switch and no wake-up, so a round trip
//! costs about what a raw channel round trip does. What an agent sees is the
//! same on both paths (one message at a time, in order; deadlines,
//! cancellation and its grace period; panics contained; the run's signals).
//! What differs is the thread: concurrent requests made by one task run their
//! handlers in that task. Kinds whose handlers compute for long stretches
//! between awaits can opt out with
//! [`KindBuilder::direct_calls(false)`](KindBuilder::direct_calls), so that
//! their requests spread over the worker threads. A transport that must see
//! every message (NATS, which persists them) never takes this path.
//!
//! # Reporting to a run, in causal order
//!
//! A message of a run carries its [`CallContext`] (run, step, the step
//! attempt's root message, parent, depth, deadline, attempt, trace, call
//! chain, budget); its handler's context inherits it for every request it
//! makes. While handling, the runtime and the agent report to the run's driver
//! on the run's topic: `Started` (report 0), progress (`emit`), usage
//! (`report_usage`), and `Finished` for delegated work. Those reports are best
//! effort and may overtake or trail the reply (over NATS they arrive through
//! other subscriptions than replies), so every reply of a message of a run
//! carries a [`Tally`]: the number of reports its
//! handler and everything it delegated made, and the usage they spent. The
//! orchestrator holds a step's result until that many distinct reports (by
//! message and report number) have arrived — a bounded wait — and counts usage
//! from the tally, so a lost report cannot hide spend and a duplicated one is
//! not counted twice. See [`report`](crate::report).
//!
//! # Re-entrancy: call cycles fail fast
//!
//! While A's handler awaits a request to B, A cannot take another message (its
//! state is borrowed by the running handler). If B — directly or through a
//! longer chain — then asks A, that request would wait forever. Every request
//! carries its *call chain* (the agents waiting on it, each on the next), and a
//! request to an agent already in its own chain fails at once with
//! [`RequestError::CallCycle`], naming the
//! chain. Messages sent without waiting (`send`, `publish`) do not extend the
//! chain, so they never count as cycles.

pub(crate) mod activation;
pub(crate) mod call;
pub(crate) mod cancel;
pub(crate) mod deadlines;
pub(crate) mod direct;
pub(crate) mod directory;
#[cfg(feature = "nats")]
pub(crate) mod fleet;
pub(crate) mod kind;
pub(crate) mod lifecycle;
pub(crate) mod limit;
pub(crate) mod replies;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::runtime::lifecycle::{Lifecycle, Stage};
use crate::runtime::limit::Limit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::{Agent, AgentCard};
use crate::body::{Body, Message};
use crate::call_context::CallContext;
use crate::envelope::Destination;
use crate::error::{RegisterError, RequestError};
use crate::id::{AgentId, AgentKind, MessageId, NodeId, TenantId, Topic};
use crate::report::Tally;
use crate::transport::{
    DeliveryStream, InMemoryTransport, Route, SendError, Subscription, Transport, TransportError,
};

pub use call::RequestOptions;
pub use directory::{FleetOptions, LiveCard};
pub use kind::KindBuilder;

use call::{Node, Origin};
use deadlines::Deadlines;
use directory::Directory;
use kind::KindHost;
use replies::{PendingReplies, ReplyInbox};

/// Settings of a runtime; see [`RuntimeBuilder`] for each.
#[derive(Clone, Debug)]
pub(crate) struct RuntimeConfig {
    pub(crate) mailbox: usize,
    pub(crate) instances: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) cancel_grace: Duration,
}

/// Builds a [`Runtime`].
#[must_use = "a RuntimeBuilder does nothing until .build().await"]
pub struct RuntimeBuilder {
    transport: Arc<dyn Transport>,
    tenant: TenantId,
    node: Option<NodeId>,
    max_concurrency: usize,
    default_timeout: Duration,
    driver_wait: Duration,
    config: RuntimeConfig,
    fleet: FleetOptions,
}

impl RuntimeBuilder {
    /// The tenant whose agents this runtime hosts (default: `default`).
    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = tenant;
        self
    }

    /// This node's id (default: random). Replies to its requests come here.
    pub fn node_id(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// At most this many handlers run at once on this runtime (default 1024).
    pub fn max_concurrency(mut self, n: usize) -> Self {
        self.max_concurrency = n.max(1);
        self
    }

    /// Default mailbox size per agent id (default 256).
    pub fn mailbox(mut self, n: usize) -> Self {
        self.config.mailbox = n.max(1);
        self
    }

    /// Default number of instances sharing a kind's messages (default 16).
    pub fn instances(mut self, n: usize) -> Self {
        self.config.instances = n.max(1);
        self
    }

    /// Default idle time after which an id is deactivated (default: never).
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.config.idle_timeout = Some(idle);
        self
    }

    /// How long a request waits for its answer by default (default 10 minutes).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// How long a handler working for a durable run waits for the run's
    /// driver when none listens (default 60 s): its orchestrator died, and
    /// the run has not been resumed yet. An effect's record waits this long
    /// before it fails, and a step's result is held this long for the
    /// orchestrator that resumes the run, which takes it instead of running
    /// the step again. Within the message's own deadline, if it has one.
    pub fn driver_wait(mut self, wait: Duration) -> Self {
        self.driver_wait = wait;
        self
    }

    /// How long a cancelled handler may keep running to end cleanly before it
    /// is dropped (default 100 ms).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.config.cancel_grace = grace;
        self
    }

    /// How this runtime takes part in its tenant's card directory (default:
    /// over NATS with JetStream it advertises its kinds with a 1 s heartbeat
    /// and a 10 s time to live, and reads everyone else's).
    pub fn fleet(mut self, fleet: FleetOptions) -> Self {
        self.fleet = fleet;
        self
    }

    /// Starts the runtime: attaches its reply route and, over NATS, joins the
    /// tenant's card directory (reading what is in it before it returns).
    ///
    /// # Errors
    /// [`TransportError`] if the transport will not attach the reply route,
    /// or the card directory cannot be set up.
    pub async fn build(self) -> Result<Runtime, TransportError> {
        let node_id = self.node.unwrap_or_else(NodeId::random);
        let pending = Arc::new(PendingReplies::new());
        let deadlines = Arc::new(Deadlines::new());
        // The in-process fast paths need the in-memory transport itself.
        let any: Arc<dyn std::any::Any + Send + Sync> = self.transport.clone();
        let memory = any
            .downcast::<InMemoryTransport>()
            .ok()
            .map(|m| (*m).clone());
        let node = Arc::new(Node {
            id: node_id.clone(),
            tenant: self.tenant.clone(),
            transport: self.transport.clone(),
            memory,
            pending: pending.clone(),
            deadlines: deadlines.clone(),
            default_timeout: self.default_timeout,
            driver_wait: self.driver_wait,
            directory: Directory::default(),
            life: Arc::new(Lifecycle::default()),
            concurrency: Limit::new(self.max_concurrency),
            tracker: TaskTracker::new(),
            cancel_grace: self.config.cancel_grace,
        });
        let reply_sub = node
            .attach(
                Route::replies(self.tenant.clone(), node_id),
                Arc::new(ReplyInbox(pending)),
            )
            .await?;
        let inner = Arc::new(RuntimeInner {
            node,
            kinds: RwLock::new(HashMap::new()),
            subscriptions: Mutex::new(Vec::new()),
            reply_subscription: Mutex::new(Some(reply_sub)),
            shutdown: CancellationToken::new(),
            config: self.config,
            #[cfg(feature = "nats")]
            fleet: Mutex::new(None),
        });
        #[cfg(feature = "nats")]
        {
            let fleet = fleet::Fleet::join(&inner, &self.fleet).await?;
            if let Ok(mut f) = inner.fleet.lock() {
                *f = fleet;
            }
        }
        #[cfg(not(feature = "nats"))]
        let _ = &self.fleet;
        tokio::spawn(Deadlines::watch(
            deadlines,
            Arc::downgrade(&inner.node.pending),
            inner.shutdown.clone(),
        ));
        Ok(Runtime { inner })
    }
}

pub(crate) struct RuntimeInner {
    pub(crate) node: Arc<Node>,
    kinds: RwLock<HashMap<AgentKind, Arc<KindHost>>>,
    subscriptions: Mutex<Vec<Subscription>>,
    reply_subscription: Mutex<Option<Subscription>>,
    /// Fires when the shutdown grace period ends: every handler's token is a
    /// child of it.
    pub(crate) shutdown: CancellationToken,
    pub(crate) config: RuntimeConfig,
    /// Membership in the tenant's card directory, over NATS.
    #[cfg(feature = "nats")]
    fleet: Mutex<Option<Arc<fleet::Fleet>>>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        // Ends the deadline watcher and idle sweepers of a runtime dropped
        // without a shutdown.
        self.stop();
    }
}

impl RuntimeInner {
    /// Fires the shutdown: handlers are cancelled, watchers end.
    fn stop(&self) {
        self.node.life.advance(Stage::Stopped);
        self.shutdown.cancel();
    }

    /// Whether the shutdown grace period has ended.
    pub(crate) fn is_stopped(&self) -> bool {
        self.node.is_stopped()
    }

    /// The kinds whose registration is complete (their routes attached):
    /// what this runtime may advertise. A kind being registered is in
    /// `kinds` before its routes are attached.
    pub(crate) fn registered_hosts(&self) -> Vec<Arc<KindHost>> {
        let done = self.node.directory.cards();
        self.kinds
            .read()
            .map(|k| {
                k.values()
                    .filter(|h| done.iter().any(|c| c.kind == h.kind))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn kind_host(&self, kind: &AgentKind) -> Option<Arc<KindHost>> {
        self.kinds.read().ok()?.get(kind).cloned()
    }

    async fn add_kind(&self, host: Arc<KindHost>, routes: Vec<Route>) -> Result<(), RegisterError> {
        if self.node.life.is_draining() {
            return Err(RegisterError::ShuttingDown);
        }
        {
            let mut kinds = self
                .kinds
                .write()
                .map_err(|_| RegisterError::ShuttingDown)?;
            if kinds.contains_key(&host.kind) {
                return Err(RegisterError::AlreadyRegistered(host.kind.to_string()));
            }
            kinds.insert(host.kind.clone(), host.clone());
        }
        let mut subs = Vec::with_capacity(routes.len());
        for route in routes {
            match self.node.attach(route, host.clone()).await {
                Ok(s) => subs.push(s),
                Err(e) => {
                    if let Ok(mut kinds) = self.kinds.write() {
                        kinds.remove(&host.kind);
                    }
                    return Err(e.into());
                }
            }
        }
        self.node.directory.add(host.card.clone());
        #[cfg(feature = "nats")]
        if let Some(f) = self.fleet.lock().ok().and_then(|f| f.clone()) {
            f.advertise(&host).await;
        }
        if let Ok(mut all) = self.subscriptions.lock() {
            all.extend(subs);
        }
        if let Some(idle) = host.idle_timeout {
            tokio::spawn(kind::sweep_idle(
                Arc::downgrade(&host),
                idle,
                self.shutdown.clone(),
            ));
        }
        Ok(())
    }
}

/// Hosts agent kinds on a transport. Cloning gives another handle to the same
/// runtime.
///
/// ```
/// use coditect_orchestrator::{Agent, AgentContext, AgentError, AgentId, InMemoryTransport, Runtime};
///
/// struct Greeter;
/// impl Agent for Greeter {
///     type Input = String;
///     type Output = String;
///     async fn handle(&mut self, name: String, ctx: &AgentContext) -> Result<String, AgentError> {
///         Ok(format!("hello {name}, from {}", ctx.id()))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
/// runtime.register("greeter", |_id| Greeter).await?;
/// let answer: String = runtime.request(AgentId::new("greeter", "en")?, "ada".to_string()).await?;
/// assert_eq!(answer, "hello ada, from greeter/en");
/// runtime.shutdown(std::time::Duration::from_secs(1)).await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Runtime {
    pub(crate) inner: Arc<RuntimeInner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("node", &self.inner.node.id)
            .field("tenant", &self.inner.node.tenant)
            .field("transport", &self.inner.node.transport.name())
            .finish_non_exhaustive()
    }
}

/// The answer to [`Runtime::call`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Answer {
    /// The result.
    pub result: Result<Body, RequestError>,
    /// What the handling reported, for a message of a run whose reply came.
    pub tally: Option<Tally>,
}

/// What a shutdown achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Every handler and queued message finished within the grace period.
    pub drained: bool,
    /// Activations dropped at the end.
    pub deactivated: usize,
}

impl Runtime {
    /// Starts building a runtime on a transport.
    pub fn builder(transport: impl Transport) -> RuntimeBuilder {
        Self::builder_arc(Arc::new(transport))
    }

    /// Starts building a runtime on a shared transport.
    pub fn builder_arc(transport: Arc<dyn Transport>) -> RuntimeBuilder {
        RuntimeBuilder {
            transport,
            tenant: TenantId::default(),
            node: None,
            max_concurrency: 1024,
            default_timeout: Duration::from_secs(600),
            driver_wait: Duration::from_secs(60),
            config: RuntimeConfig {
                mailbox: 256,
                instances: 16,
                idle_timeout: None,
                cancel_grace: Duration::from_millis(100),
            },
            fleet: FleetOptions::default(),
        }
    }

    /// Starts registering an agent kind with options (card, mailbox, instances,
    /// idle timeout, topics).
    pub fn kind(&self, kind: &str) -> KindBuilder<'_> {
        KindBuilder::new(self, kind)
    }

    /// Registers an agent kind with default options.
    ///
    /// # Errors
    /// [`RegisterError`] if the name is invalid or taken, or the transport
    /// refuses the route.
    pub async fn register<A, F>(&self, kind: &str, factory: F) -> Result<AgentKind, RegisterError>
    where
        A: Agent,
        F: Fn(&AgentId) -> A + Send + Sync + 'static,
    {
        self.kind(kind).register(factory).await
    }

    /// The tenant this runtime serves.
    pub fn tenant(&self) -> &TenantId {
        &self.inner.node.tenant
    }

    /// This node's id.
    pub fn node_id(&self) -> &NodeId {
        &self.inner.node.id
    }

    /// The transport the runtime runs on.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.inner.node.transport
    }

    /// The cards of the kinds registered here.
    pub fn cards(&self) -> Vec<AgentCard> {
        self.inner.node.directory.cards()
    }

    /// Every live advert of the tenant's card directory: this runtime's kinds
    /// (with their load now) and those of every other live runtime, one
    /// entry per kind and node.
    pub fn fleet(&self) -> Vec<LiveCard> {
        let node = &self.inner.node;
        let mut all: Vec<LiveCard> = self
            .inner
            .registered_hosts()
            .iter()
            .map(|h| LiveCard {
                card: h.card.clone(),
                node: node.id.clone(),
                version: h.version.clone(),
                capacity: h.capacity(),
                in_flight: h.load.load(Ordering::Relaxed),
            })
            .collect();
        all.extend(node.directory.remote());
        all
    }

    /// One card per kind that can take work now: the kinds registered here
    /// and those a live runtime of the fleet advertises. What an
    /// [`Orchestrator`](crate::Orchestrator) plans with.
    pub fn fleet_cards(&self) -> Vec<AgentCard> {
        self.inner.node.directory.fleet_cards()
    }

    /// Waits up to `limit` until some live card offers `capability` (or a
    /// live kind has that name). Returns whether one does.
    pub async fn wait_for_capability(&self, capability: &str, limit: Duration) -> bool {
        self.inner.node.directory.wait_for(capability, limit).await
    }

    /// The cards routing reads (this runtime's and the fleet's).
    pub(crate) fn directory(&self) -> &Directory {
        &self.inner.node.directory
    }

    /// How many ids of a kind are live here.
    pub fn active(&self, kind: &AgentKind) -> usize {
        self.inner.kind_host(kind).map_or(0, |h| h.active())
    }

    /// Requests in flight from this node that still wait for a reply.
    pub fn pending_requests(&self) -> usize {
        self.inner.node.pending.len()
    }

    /// Deactivates an id now if it is idle. Returns whether it was live and idle.
    pub async fn deactivate(&self, id: &AgentId) -> bool {
        match self.inner.kind_host(id.kind()) {
            Some(h) => h.deactivate(id.key(), None).await,
            None => false,
        }
    }

    /// Sends a message from outside any agent, without waiting for an answer.
    ///
    /// # Errors
    /// [`SendError`] (handing the envelope back) if nothing handles the
    /// destination or the transport fails.
    pub async fn send<T: Message>(
        &self,
        to: impl Into<Destination>,
        message: T,
    ) -> Result<(), SendError> {
        self.inner
            .node
            .send(&Origin::default(), to.into(), Body::new(message))
            .await
    }

    /// Publishes a message to a topic from outside any agent.
    ///
    /// # Errors
    /// [`SendError`] if the transport fails.
    pub async fn publish<T: Message>(&self, topic: &Topic, message: T) -> Result<(), SendError> {
        self.send(Destination::Topic(topic.clone()), message).await
    }

    /// Asks an agent from outside any agent and awaits its answer.
    ///
    /// # Errors
    /// [`RequestError`]: no such agent, timeout, or the agent failed.
    pub async fn request<R: Message>(
        &self,
        to: impl Into<Destination>,
        message: impl Message,
    ) -> Result<R, RequestError> {
        self.request_with(to, message, RequestOptions::default())
            .await
    }

    /// [`request`](Self::request) with options.
    ///
    /// # Errors
    /// As [`request`](Self::request).
    pub async fn request_with<R: Message>(
        &self,
        to: impl Into<Destination>,
        message: impl Message,
        options: RequestOptions,
    ) -> Result<R, RequestError> {
        self.inner
            .node
            .ask(&Origin::default(), to.into(), message, &options, None, None)
            .await
    }

    /// Sends a request carrying a run context and awaits the answer: the
    /// door an orchestrator (or any code driving runs of its own) uses to
    /// dispatch a step. The message gets `id` if one is given, so the caller
    /// can record it before the request leaves.
    ///
    /// The answer holds the result and, for a message of a run, the reply's
    /// [`Tally`]: what the handling and its delegations reported (see
    /// [`report`](crate::report)).
    ///
    /// ```
    /// use coditect_orchestrator::{Agent, AgentContext, AgentError, Body, CallContext, Destination,
    ///     InMemoryTransport, RequestOptions, RunId, Runtime, StepId};
    ///
    /// struct Echo;
    /// impl Agent for Echo {
    ///     type Input = String;
    ///     type Output = String;
    ///     async fn handle(&mut self, s: String, ctx: &AgentContext) -> Result<String, AgentError> {
    ///         ctx.emit("working").await?;
    ///         Ok(s)
    ///     }
    /// }
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
    /// let kind = runtime.register("echo", |_| Echo).await?;
    /// let ctx = CallContext::for_step(RunId::new(), StepId::new("a")?, 1);
    /// let answer = runtime
    ///     .call(Destination::Kind(kind), Body::new("hi".to_string()), ctx, None, RequestOptions::default())
    ///     .await;
    /// assert_eq!(answer.result?.take::<String>()?, "hi");
    /// // Started, then one progress report.
    /// assert_eq!(answer.tally.map(|t| t.reports), Some(2));
    /// # Ok(()) }
    /// ```
    pub async fn call(
        &self,
        to: Destination,
        body: Body,
        ctx: CallContext,
        id: Option<MessageId>,
        options: RequestOptions,
    ) -> Answer {
        let origin = call::Origin { from: None, ctx };
        let options = RequestOptions { id, ..options };
        let (result, tally) = self
            .inner
            .node
            .call(&origin, to, body, &options, None)
            .await;
        Answer {
            result,
            tally: tally.map(|t| *t),
        }
    }

    /// The deliveries of a route as a stream, like
    /// [`TransportExt::subscribe`](crate::TransportExt::subscribe), through
    /// the runtime's in-process fast path where there is one.
    ///
    /// # Errors
    /// [`TransportError`] if the route cannot be attached.
    pub async fn subscribe(
        &self,
        route: Route,
        capacity: usize,
    ) -> Result<DeliveryStream, TransportError> {
        self.inner.node.subscribe(route, capacity).await
    }

    /// Stops taking new messages, lets queued and running work finish for up to
    /// `grace`, then cancels what is left (firing each handler's cancellation
    /// token, failing queued messages with "shutting down"), and deactivates
    /// every agent.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let inner = &self.inner;
        inner.node.life.advance(Stage::Draining);
        #[cfg(feature = "nats")]
        if let Some(f) = inner.fleet.lock().ok().and_then(|mut f| f.take()) {
            let hosts: Vec<Arc<KindHost>> = inner
                .kinds
                .read()
                .map(|k| k.values().cloned().collect())
                .unwrap_or_default();
            f.leave(&hosts).await;
        }
        // Detach the kinds' routes so new messages go elsewhere (or fail fast).
        let subs = inner
            .subscriptions
            .lock()
            .map(|mut s| std::mem::take(&mut *s))
            .unwrap_or_default();
        drop(subs);
        inner.node.tracker.close();
        let hosts: Vec<Arc<KindHost>> = inner
            .kinds
            .read()
            .map(|k| k.values().cloned().collect())
            .unwrap_or_default();
        for h in &hosts {
            h.wake_all();
        }
        let drained = tokio::time::timeout(grace, inner.node.tracker.wait())
            .await
            .is_ok();
        if !drained {
            inner.stop();
            for h in &hosts {
                h.cancel_running();
            }
            let _ = tokio::time::timeout(
                inner.node.cancel_grace + Duration::from_millis(50),
                inner.node.tracker.wait(),
            )
            .await;
        }
        inner.stop();
        let mut deactivated = 0;
        for h in &hosts {
            deactivated += h.sweep(None).await;
        }
        inner.node.life.advance(Stage::Closed);
        if let Ok(mut r) = inner.reply_subscription.lock() {
            r.take();
        }
        ShutdownReport {
            drained,
            deactivated,
        }
    }
}
