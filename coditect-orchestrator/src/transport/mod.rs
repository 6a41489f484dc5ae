//! Transports: the only thing that moves envelopes.
//!
//! A [`Transport`] sends envelopes and attaches [`Inbox`]es to routes. Request
//! and reply are built once, above this trait, on correlation ids (see
//! [`Runtime`](crate::Runtime)), so a transport only moves envelopes one way.
//!
//! Deliveries are pushed into an inbox rather than pulled from a queue, so the
//! in-memory path moves a message from sender to agent mailbox with no hop in
//! between; [`TransportExt::subscribe`] gives the same deliveries as a `Stream`
//! when that is handier.

pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::mpsc;

use crate::envelope::{Envelope, Failure};
use crate::id::{AgentId, AgentKind, NodeId, TenantId, Topic};

pub use memory::InMemoryTransport;
#[cfg(feature = "nats")]
pub use nats::{NatsOptions, NatsTransport};

/// What an inbox listens to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    /// The tenant whose messages these are.
    pub tenant: TenantId,
    /// Which messages.
    pub target: RouteTarget,
}

/// Which messages a route selects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    /// Messages to one agent id.
    Agent(AgentId),
    /// Messages to a kind, and to every id of that kind that has no route of
    /// its own. Several inboxes on one kind share its messages (load balancing).
    Kind(AgentKind),
    /// Messages published to a topic: every inbox gets each one.
    Topic(Topic),
    /// Replies to requests made by one node.
    Replies(NodeId),
}

impl Route {
    /// A route to one agent id.
    pub fn agent(tenant: TenantId, id: AgentId) -> Self {
        Self {
            tenant,
            target: RouteTarget::Agent(id),
        }
    }
    /// A route to a kind.
    pub fn kind(tenant: TenantId, kind: AgentKind) -> Self {
        Self {
            tenant,
            target: RouteTarget::Kind(kind),
        }
    }
    /// A route to a topic.
    pub fn topic(tenant: TenantId, topic: Topic) -> Self {
        Self {
            tenant,
            target: RouteTarget::Topic(topic),
        }
    }
    /// A route to the replies of a node.
    pub fn replies(tenant: TenantId, node: NodeId) -> Self {
        Self {
            tenant,
            target: RouteTarget::Replies(node),
        }
    }
}

/// Acknowledges a delivery to the transport that made it.
///
/// In memory every method is a no-op; over JetStream they are the ack kinds the
/// server knows (`+ACK`, `-NAK` with a delay, `+WPI`, `+TERM`).
#[async_trait]
pub trait Acknowledge: Send + Sync + 'static {
    /// Handled: do not deliver again.
    async fn ack(&self) -> Result<(), TransportError>;
    /// Not handled: deliver again, after `delay` if given.
    async fn nak(&self, delay: Option<Duration>) -> Result<(), TransportError>;
    /// Still working: extend the time before redelivery.
    async fn in_progress(&self) -> Result<(), TransportError>;
    /// Never deliver again (the message is poison).
    async fn term(&self) -> Result<(), TransportError>;
}

/// The acknowledgement handle of one delivery: a no-op where the transport does
/// not need one.
#[derive(Default)]
pub struct Acker(Option<Box<dyn Acknowledge>>);

impl Acker {
    /// An acker that does nothing (in-memory delivery).
    pub fn none() -> Self {
        Self(None)
    }

    /// An acker backed by a transport's acknowledgement.
    pub fn new(ack: impl Acknowledge) -> Self {
        Self(Some(Box::new(ack)))
    }

    /// Whether acking does anything.
    pub fn is_noop(&self) -> bool {
        self.0.is_none()
    }

    /// Acknowledges the delivery as handled.
    ///
    /// # Errors
    /// [`TransportError`] if the transport could not record the ack.
    pub async fn ack(&self) -> Result<(), TransportError> {
        match &self.0 {
            Some(a) => a.ack().await,
            None => Ok(()),
        }
    }

    /// Asks for redelivery, after `delay` if given.
    ///
    /// # Errors
    /// [`TransportError`] if the transport could not record it.
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), TransportError> {
        match &self.0 {
            Some(a) => a.nak(delay).await,
            None => Ok(()),
        }
    }

    /// Reports the delivery is still being worked on.
    ///
    /// # Errors
    /// [`TransportError`] if the transport could not record it.
    pub async fn in_progress(&self) -> Result<(), TransportError> {
        match &self.0 {
            Some(a) => a.in_progress().await,
            None => Ok(()),
        }
    }

    /// Stops redelivery for good.
    ///
    /// # Errors
    /// [`TransportError`] if the transport could not record it.
    pub async fn term(&self) -> Result<(), TransportError> {
        match &self.0 {
            Some(a) => a.term().await,
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Acker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Acker"
        } else {
            "Acker(noop)"
        })
    }
}

/// One envelope handed to an inbox, with the means to acknowledge it.
///
/// The envelope is boxed once when the delivery is made, so queues and hops
/// move a pointer, not the envelope.
#[derive(Debug)]
pub struct Delivery {
    /// The envelope.
    pub envelope: Box<Envelope>,
    /// Acknowledge after handling.
    pub acker: Acker,
}

impl Delivery {
    /// A delivery that needs no acknowledgement.
    pub fn new(envelope: Envelope) -> Self {
        Self {
            envelope: Box::new(envelope),
            acker: Acker::none(),
        }
    }

    /// A delivery with an acknowledgement handle.
    pub fn with_acker(envelope: Envelope, acker: Acker) -> Self {
        Self {
            envelope: Box::new(envelope),
            acker,
        }
    }
}

/// What [`LocalInbox::try_deliver`] gives back when it cannot take a delivery at once.
#[derive(Debug)]
pub(crate) enum TryDeliver {
    /// The inbox would have to wait (full): use [`Inbox::deliver`].
    Wait(Delivery),
    /// The inbox refuses it.
    Refused(Box<Refused>),
}

/// An inbox refused a delivery; it comes back whole.
#[derive(Debug)]
pub struct Refused {
    /// The delivery, untouched.
    pub delivery: Delivery,
    /// Why it was refused.
    pub reason: Failure,
}

/// Where a transport pushes the deliveries of a route.
///
/// One required method: [`deliver`](Inbox::deliver).
#[async_trait]
pub trait Inbox: std::any::Any + Send + Sync {
    /// Takes one delivery, waiting while the inbox is full (backpressure).
    ///
    /// # Errors
    /// [`Refused`] hands the delivery back when the inbox will not take it (it
    /// is shutting down, say); the transport reports that to the sender or
    /// redelivers elsewhere.
    async fn deliver(&self, delivery: Delivery) -> Result<(), Box<Refused>>;

    /// How much work is queued or running here: what load balancing compares.
    fn load(&self) -> usize {
        0
    }
}

/// An inbox of this crate that takes a delivery without waiting when it can:
/// the in-process fast path. Crate-private, so the public [`Inbox`] keeps one
/// required method; the in-memory transport uses it for inboxes attached
/// through [`InMemoryTransport::attach_local`](memory::InMemoryTransport).
pub(crate) trait LocalInbox: Inbox {
    /// Takes one delivery if that needs no waiting.
    ///
    /// # Errors
    /// [`TryDeliver::Wait`] hands the delivery back when the inbox is full;
    /// [`TryDeliver::Refused`] when it will not take it at all.
    fn try_deliver(&self, delivery: Delivery) -> Result<(), TryDeliver>;

    /// The inbox as `Any`, so the runtime can recognise its own kind hosts.
    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync);
}

/// Keeps a route attached; dropping it (or calling [`Subscription::close`])
/// detaches the inbox.
#[must_use = "dropping a Subscription detaches its inbox at once"]
pub struct Subscription(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Subscription {
    /// A subscription that runs `detach` when it ends.
    pub fn new(detach: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(detach)))
    }

    /// Detaches now.
    pub fn close(mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

/// A transport: moves envelopes to the inboxes attached to their routes.
///
/// What a transport author implements: [`send`](Transport::send),
/// [`attach`](Transport::attach) and a [`name`](Transport::name); deliveries
/// carry an [`Acker`]. Request/reply, deadlines and the in-process shortcut
/// (direct calls) are the runtime's business, above this trait.
///
/// Implementations: [`InMemoryTransport`] (one process, exactly once), and the
/// NATS transport behind the `nats` feature.
#[async_trait]
pub trait Transport: std::any::Any + Send + Sync {
    /// Sends one envelope.
    ///
    /// # Errors
    /// [`SendError`] with the envelope handed back: no route for it
    /// ([`SendErrorKind::NoRoute`] — no such agent), too large, the transport
    /// closed, or the receiving inbox refused it.
    async fn send(&self, envelope: Envelope) -> Result<(), SendError>;

    /// Attaches an inbox to a route until the returned subscription is dropped.
    ///
    /// # Errors
    /// [`TransportError`] if the route cannot be attached (closed transport,
    /// refused by the server, a reply route already taken).
    async fn attach(
        &self,
        route: Route,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Subscription, TransportError>;

    /// A short name for logs (`"memory"`, `"nats"`).
    fn name(&self) -> &'static str;
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for Arc<T> {
    async fn send(&self, envelope: Envelope) -> Result<(), SendError> {
        (**self).send(envelope).await
    }
    async fn attach(
        &self,
        route: Route,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Subscription, TransportError> {
        (**self).attach(route, inbox).await
    }
    fn name(&self) -> &'static str {
        (**self).name()
    }
}

/// What [`InMemoryTransport`]'s fast path gives back when it did not send at once.
#[derive(Debug)]
pub(crate) enum TrySend {
    /// Sending would have to wait: use [`Transport::send`] with this envelope.
    Wait(Box<Envelope>),
    /// Sending failed.
    Failed(Box<SendError>),
}

/// Pull-style access to a transport.
#[async_trait]
pub trait TransportExt: Transport {
    /// The deliveries of a route as a `Stream`, buffering up to `capacity`
    /// (the transport waits when the buffer is full). Dropping the stream
    /// detaches it.
    ///
    /// # Errors
    /// As [`Transport::attach`].
    async fn subscribe(
        &self,
        route: Route,
        capacity: usize,
    ) -> Result<DeliveryStream, TransportError> {
        let (inbox, rx) = ChannelInbox::new(capacity);
        let sub = self.attach(route, Arc::new(inbox)).await?;
        Ok(DeliveryStream { rx, _sub: sub })
    }
}

impl<T: Transport + ?Sized> TransportExt for T {}

/// An inbox that hands its deliveries to a stream.
pub(crate) struct ChannelInbox(mpsc::Sender<Delivery>);

impl ChannelInbox {
    /// The inbox and the receiving end of its channel of `capacity`.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<Delivery>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self(tx), rx)
    }
}

impl LocalInbox for ChannelInbox {
    fn try_deliver(&self, delivery: Delivery) -> Result<(), TryDeliver> {
        use tokio::sync::mpsc::error::TrySendError;
        match self.0.try_send(delivery) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(d)) => Err(TryDeliver::Wait(d)),
            Err(TrySendError::Closed(d)) => Err(TryDeliver::Refused(Box::new(Refused {
                delivery: d,
                reason: Failure::new(
                    crate::envelope::FailureKind::ShuttingDown,
                    "subscriber stream dropped",
                ),
            }))),
        }
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[async_trait]
impl Inbox for ChannelInbox {
    async fn deliver(&self, delivery: Delivery) -> Result<(), Box<Refused>> {
        self.0.send(delivery).await.map_err(|e| {
            Box::new(Refused {
                delivery: e.0,
                reason: Failure::new(
                    crate::envelope::FailureKind::ShuttingDown,
                    "subscriber stream dropped",
                ),
            })
        })
    }

    fn load(&self) -> usize {
        self.0.max_capacity() - self.0.capacity()
    }
}

/// The deliveries of a route, as a stream. See [`TransportExt::subscribe`].
#[derive(Debug)]
pub struct DeliveryStream {
    pub(crate) rx: mpsc::Receiver<Delivery>,
    pub(crate) _sub: Subscription,
}

impl Stream for DeliveryStream {
    type Item = Delivery;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        self.rx.poll_recv(cx)
    }
}

/// Why a send failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// Nothing listens where the envelope is addressed: no such agent.
    NoRoute,
    /// The receiving inbox refused it (shutting down, say).
    Refused,
    /// The envelope is larger than the transport allows.
    TooLarge,
    /// The body could not be encoded for the wire.
    Encode,
    /// The server refused the subject for these credentials.
    PermissionDenied,
    /// The transport is closed or lost its connection.
    Closed,
    /// Anything else the transport reports.
    Other,
}

/// A failed send, handing the envelope back.
#[derive(thiserror::Error)]
#[error("cannot send to {to}: {message}")]
pub struct SendError {
    kind: SendErrorKind,
    to: String,
    message: String,
    envelope: Option<Box<Envelope>>,
    failure: Option<Failure>,
}

impl SendError {
    /// A send error about `envelope`, which it hands back.
    pub fn new(kind: SendErrorKind, envelope: Envelope, message: impl Into<String>) -> Self {
        Self {
            kind,
            to: envelope.to.to_string(),
            message: message.into(),
            envelope: Some(Box::new(envelope)),
            failure: None,
        }
    }

    /// The error for a delivery an inbox refused.
    pub fn refused(refused: Refused) -> Self {
        let Refused { delivery, reason } = refused;
        let mut e = Self::new(
            SendErrorKind::Refused,
            *delivery.envelope,
            reason.to_string(),
        );
        e.failure = Some(reason);
        e
    }

    /// What went wrong.
    pub fn kind(&self) -> SendErrorKind {
        self.kind
    }

    /// Why the receiving inbox refused, if it did.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The envelope that was not sent.
    pub fn into_envelope(self) -> Option<Envelope> {
        self.envelope.map(|b| *b)
    }
}

impl fmt::Debug for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("kind", &self.kind)
            .field("to", &self.to)
            .field("message", &self.message)
            .finish()
    }
}

/// Why a transport operation other than a send failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// The transport is closed.
    Closed,
    /// The route is already taken (a node's reply route, say).
    RouteTaken,
    /// The server refused it for these credentials.
    PermissionDenied,
    /// The connection failed.
    Connection,
    /// Anything else.
    Other,
}

/// A transport operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    kind: TransportErrorKind,
    message: String,
}

impl TransportError {
    /// An error of a kind.
    pub fn new(kind: TransportErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> TransportErrorKind {
        self.kind
    }
}
