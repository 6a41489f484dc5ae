//! Sending, publishing and request/reply, shared by agent contexts and by code
//! outside any agent. Request/reply is built here once, over any transport, on
//! correlation ids.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::body::Body;
use crate::call_context::CallContext;
use crate::envelope::{Deadline, Destination, Envelope, FailureKind, Payload};
use crate::error::RequestError;
use crate::id::{AgentId, NodeId, TenantId};
use crate::report::{Tally, TallyCell};
use crate::runtime::deadlines::{DeadlineKey, Deadlines, Expiry};
use crate::runtime::replies::PendingReplies;
use crate::transport::{
    Acker, Delivery, DeliveryStream, InMemoryTransport, LocalInbox, Route, SendError, Subscription,
    Transport, TransportError, TransportExt, TryDeliver, TrySend,
};

/// What one node needs to talk to the others.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) tenant: TenantId,
    pub(crate) transport: Arc<dyn Transport>,
    /// The same transport when it is the in-memory one: the in-process fast
    /// paths (sends without waiting, direct calls) go through it.
    pub(crate) memory: Option<InMemoryTransport>,
    pub(crate) pending: Arc<PendingReplies>,
    pub(crate) deadlines: Arc<Deadlines>,
    pub(crate) default_timeout: Duration,
    /// How long a durable run's handler waits for a driver to listen.
    pub(crate) driver_wait: Duration,
    /// The cards of the kinds registered on this node.
    pub(crate) directory: crate::runtime::directory::Directory,
    /// Where the runtime is in its life: running, draining (no new
    /// messages), stopped (grace period over), closed. Read on every message.
    pub(crate) life: Arc<crate::runtime::lifecycle::Lifecycle>,
    /// The bound on handlers running at once.
    pub(crate) concurrency: crate::runtime::limit::Limit,
    /// Drain tasks and direct calls: what a shutdown waits for.
    pub(crate) tracker: tokio_util::task::TaskTracker,
    /// How long a cancelled handler may run on to end cleanly.
    pub(crate) cancel_grace: Duration,
}

/// Who is sending, on behalf of what.
#[derive(Clone, Default)]
pub(crate) struct Origin {
    pub(crate) from: Option<AgentId>,
    /// The run context the sent message carries. Its chain is the callers
    /// waiting on the sender (not the sender itself).
    pub(crate) ctx: CallContext,
}

/// The future of [`Node::send_fast`]: done already, or the transport's boxed send.
pub(crate) type SendFast<'a> = futures::future::Either<
    futures::future::Ready<Result<(), SendError>>,
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SendError>> + Send + 'a>>,
>;

/// Options of one request.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RequestOptions {
    /// How long to wait for the answer (capped by the caller's own deadline).
    /// `None`: the runtime's default request timeout.
    pub timeout: Option<Duration>,
    /// Count this request as one more delegation level.
    pub delegation: bool,
    /// The id to give the request (a fresh one if none).
    pub(crate) id: Option<crate::id::MessageId>,
}

impl RequestOptions {
    /// Options with a timeout.
    pub fn timeout(timeout: Duration) -> Self {
        Self {
            timeout: Some(timeout),
            ..Self::default()
        }
    }
}

/// Removes a pending request if the waiting future is dropped before its reply,
/// and tells the callee to stop.
struct PendingGuard<'a> {
    node: &'a Arc<Node>,
    id: crate::id::MessageId,
    to: &'a Destination,
    deadline: Option<DeadlineKey>,
    armed: bool,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.deadline.take() {
            self.node.deadlines.remove(key);
        }
        if self.armed {
            self.node.pending.remove(&self.id);
            send_cancel(self.node, self.to, self.id);
        }
    }
}

fn send_cancel(node: &Arc<Node>, to: &Destination, id: crate::id::MessageId) {
    if matches!(to, Destination::Topic(_) | Destination::Reply(_)) {
        return;
    }
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let env = Envelope::new(node.tenant.clone(), to.clone(), Payload::Cancel(id));
    let node = node.clone();
    handle.spawn(async move {
        // Best effort: the callee also enforces the deadline on its own.
        let _ = node.send_fast(env).await;
    });
}

impl Node {
    /// Whether the shutdown grace period has ended.
    pub(crate) fn is_stopped(&self) -> bool {
        self.life.is_stopped()
    }

    /// Sends through the in-process fast path when it can, the transport's
    /// own send otherwise.
    ///
    /// Not an `async fn`: the fast path runs when this is called, and the
    /// future returned holds no envelope — only the boxed send when one is
    /// needed — so the futures of every caller stay small.
    pub(crate) fn send_fast(&self, envelope: Envelope) -> SendFast<'_> {
        use futures::future::{Either, ready};
        let Some(memory) = &self.memory else {
            return Either::Right(self.transport.send(envelope));
        };
        match memory.try_send(envelope) {
            Ok(()) => Either::Left(ready(Ok(()))),
            Err(TrySend::Failed(e)) => Either::Left(ready(Err(*e))),
            Err(TrySend::Wait(env)) => Either::Right(self.transport.send(*env)),
        }
    }

    /// Sends without waiting if the transport can take the envelope at once;
    /// hands it back otherwise.
    pub(crate) fn try_send(&self, envelope: Envelope) -> Result<(), TrySend> {
        match &self.memory {
            Some(memory) => memory.try_send(envelope),
            None => Err(TrySend::Wait(Box::new(envelope))),
        }
    }

    /// Attaches one of the runtime's own inboxes: through the in-process door
    /// on the in-memory transport, so it takes deliveries without waiting.
    pub(crate) async fn attach<I: LocalInbox>(
        &self,
        route: Route,
        inbox: Arc<I>,
    ) -> Result<Subscription, TransportError> {
        match &self.memory {
            Some(memory) => memory.attach_local(route, inbox),
            None => self.transport.attach(route, inbox).await,
        }
    }

    /// The deliveries of a route as a stream (see [`TransportExt::subscribe`]),
    /// taken without waiting on the in-memory transport.
    pub(crate) async fn subscribe(
        &self,
        route: Route,
        capacity: usize,
    ) -> Result<DeliveryStream, TransportError> {
        match &self.memory {
            Some(memory) => {
                let (inbox, rx) = crate::transport::ChannelInbox::new(capacity);
                let sub = memory.attach_local(route, Arc::new(inbox))?;
                Ok(DeliveryStream { rx, _sub: sub })
            }
            None => self.transport.subscribe(route, capacity).await,
        }
    }

    pub(crate) fn envelope(&self, origin: &Origin, to: Destination, body: Body) -> Envelope {
        let mut env = Envelope::with_id(
            crate::id::MessageId::new(),
            self.tenant.clone(),
            to,
            Payload::Message(body),
        );
        env.from = origin.from.clone();
        env.ctx = origin.ctx.clone();
        env
    }

    pub(crate) async fn send(
        &self,
        origin: &Origin,
        to: Destination,
        body: Body,
    ) -> Result<(), SendError> {
        let env = self.envelope(origin, to, body);
        self.send_fast(env).await
    }

    /// [`request`](Self::request) with a typed message and a typed answer:
    /// what agent contexts and runtimes expose.
    pub(crate) async fn ask<R: crate::body::Message>(
        self: &Arc<Self>,
        origin: &Origin,
        to: Destination,
        message: impl crate::body::Message,
        options: &RequestOptions,
        cancel: Option<&CancellationToken>,
        tally: Option<&TallyCell>,
    ) -> Result<R, RequestError> {
        let body = self
            .request(origin, to, Body::new(message), options, cancel, tally)
            .await?;
        body.take::<R>().map_err(RequestError::BadReply)
    }

    /// A request whose reply's tally (what the callee's handling reported)
    /// is added to `tally`, the caller's own.
    pub(crate) async fn request(
        self: &Arc<Self>,
        origin: &Origin,
        to: Destination,
        body: Body,
        options: &RequestOptions,
        cancel: Option<&CancellationToken>,
        tally: Option<&TallyCell>,
    ) -> Result<Body, RequestError> {
        let (result, reported) = self.call(origin, to, body, options, cancel).await;
        if let (Some(cell), Some(t)) = (tally, reported) {
            cell.absorb(&t);
        }
        result
    }

    /// A request, answered with the reply's tally.
    pub(crate) async fn call(
        self: &Arc<Self>,
        origin: &Origin,
        to: Destination,
        body: Body,
        options: &RequestOptions,
        cancel: Option<&CancellationToken>,
    ) -> (Result<Body, RequestError>, Option<Box<Tally>>) {
        // The chain of callers that will be waiting once this request is out.
        let chain = match &origin.from {
            Some(me) => origin.ctx.chain.with(me),
            None => origin.ctx.chain.clone(),
        };
        if let Destination::Agent(target) = &to
            && chain.contains(target)
        {
            return (Err(RequestError::CallCycle(chain.with(target))), None);
        }
        if self.life.is_closed() {
            return (Err(RequestError::ShuttingDown), None);
        }
        let timeout = options.timeout.unwrap_or(self.default_timeout);
        // One clock read for the deadline and the message id.
        let now = tokio::time::Instant::now();
        let own = Deadline::after_from(now, timeout);
        let deadline = origin.ctx.deadline.map_or(own, |d| d.min(own));
        let id = options
            .id
            .unwrap_or_else(|| crate::id::MessageId::at(now.into_std()));
        let ctx = CallContext {
            deadline: Some(deadline),
            chain,
            depth: if options.delegation {
                origin.ctx.depth.saturating_add(1)
            } else {
                origin.ctx.depth
            },
            ..origin.ctx.clone()
        };
        // Made in place, field by field: an envelope is 448 bytes, and one
        // built whole and then boxed was copied twice.
        let env = Box::new(Envelope {
            id,
            tenant: self.tenant.clone(),
            from: origin.from.clone(),
            to: to.clone(),
            correlation: None,
            reply_to: Some(self.id.clone()),
            ctx,
            tally: None,
            payload: Payload::Message(body),
        });
        // An idle agent of this very node answers in this task.
        let (env, inbox) =
            match crate::runtime::direct::try_call(self, env, timeout, cancel, &to).await {
                Ok(answer) => return answer,
                Err(not_direct) => not_direct,
            };
        // Through the mailbox and the transport. Not boxed: its state is
        // smaller than the direct call's, so it does not grow this future.
        self.request_queued(env, inbox, to, deadline, timeout, cancel)
            .await
    }

    /// [`send_fast`](Self::send_fast) to an in-process inbox already looked
    /// up for the envelope (the route is not resolved again); the
    /// transport's own send when it cannot take the envelope at once.
    fn send_to(&self, envelope: Box<Envelope>, inbox: Option<Arc<dyn LocalInbox>>) -> SendFast<'_> {
        use futures::future::{Either, ready};
        let Some(inbox) = inbox else {
            return self.send_fast(*envelope);
        };
        let delivery = Delivery {
            envelope,
            acker: Acker::none(),
        };
        match inbox.try_deliver(delivery) {
            Ok(()) => Either::Left(ready(Ok(()))),
            Err(TryDeliver::Refused(r)) => Either::Left(ready(Err(SendError::refused(*r)))),
            Err(TryDeliver::Wait(d)) => Either::Right(self.transport.send(*d.envelope)),
        }
    }

    /// A request that goes through the transport: registered in the table of
    /// pending replies, answered by correlation id.
    async fn request_queued(
        self: &Arc<Self>,
        env: Box<Envelope>,
        inbox: Option<Arc<dyn LocalInbox>>,
        to: Destination,
        deadline: Deadline,
        timeout: Duration,
        cancel: Option<&CancellationToken>,
    ) -> (Result<Body, RequestError>, Option<Box<Tally>>) {
        let id = env.id;
        let mut rx = self.pending.insert(id);
        let mut guard = PendingGuard {
            node: self,
            id,
            to: &to,
            deadline: None,
            armed: true,
        };
        if let Err(e) = self.send_to(env, inbox).await {
            guard.armed = false;
            self.pending.remove(&id);
            return (Err(RequestError::from_send(e, &to)), None);
        }
        // The node's deadline table fails the request with a timeout failure
        // when the deadline passes (see `deadlines`): no timer per request.
        guard.deadline = Some(
            self.deadlines
                .insert(deadline.instant(), Expiry::Request(id)),
        );
        let cancelled = async {
            match cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            biased;
            r = &mut rx => r,
            () = cancelled => {
                drop(guard);
                return (Err(RequestError::Cancelled(to)), None);
            }
        };
        let Ok(answer) = outcome else {
            guard.armed = false;
            return (Err(RequestError::ShuttingDown), None);
        };
        let tally = answer.tally;
        let result = match answer.result {
            Ok(body) => {
                guard.armed = false;
                Ok(body)
            }
            Err(failure) if failure.kind == FailureKind::Timeout && failure.agent.is_none() => {
                // Our own deadline passed: tell the callee to stop.
                drop(guard);
                Err(RequestError::Timeout { to, after: timeout })
            }
            Err(failure) => {
                guard.armed = false;
                Err(RequestError::from_failure(failure, &to))
            }
        };
        (result, tally)
    }
}
