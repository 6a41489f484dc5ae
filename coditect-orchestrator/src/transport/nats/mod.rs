//! The NATS transport: agents across processes and hosts (feature `nats`).
//!
//! [`NatsTransport`] implements [`Transport`] over core NATS and JetStream:
//!
//! - **Messages to a kind** go, by default ([`KindDelivery::Durable`]),
//!   through the tenant's JetStream work-queue stream `CODITECT_TASKS_<tenant>`
//!   to a durable pull consumer named after the kind, shared by every worker
//!   that hosts it. A worker acks a task only after its handler finished and
//!   its reply was published; it sends in-progress acks while the task waits
//!   or runs (one ticker per pull loop, every quarter of the ack wait, for
//!   the tasks in flight since the tick before); a worker that dies leaves its tasks unacked, so the server
//!   redelivers them to another worker after the ack wait. A task delivered
//!   `max_deliver` times is moved to the dead-letter stream with its reason
//!   (the server's max-deliveries advisory), and so is anything that cannot be
//!   decoded. Publishes carry `Nats-Msg-Id` so a retried publish is stored
//!   once. [`KindDelivery::AtMostOnce`] sends them over a core NATS queue group.
//! - **Messages to one id** go, when durable, to one of 16 partitions of
//!   their kind (by a stable hash of the key), each a durable consumer that
//!   hands out one message at a time and is pulled only by the worker holding
//!   the partition's lease (see below). With [`KindDelivery::AtMostOnce`]
//!   they use core NATS.
//! - **Topics** use core NATS (at most once).
//! - **Replies** go to `coditect.<tenant>.reply.<node>.<request>`; a request
//!   to a subject nobody listens on comes back at once as "no such agent"
//!   (the server's no-responders status on that reply subject). A reply
//!   published while its requester's connection is down is sent again when
//!   the requester, reconnected, asks for it on `coditect.<tenant>.recall`
//!   (each transport keeps the replies it sent in the last minute).
//!
//! See [`wire`] for subjects and headers. Messages are checked against the
//! server's `max_payload` before they are sent (a larger publish would make
//! the server drop the whole connection) and refused with
//! [`SendErrorKind::TooLarge`]. Permission violations arrive through the
//! client's event callback; the transport records them, reports them as
//! [`NatsEvent::PermissionDenied`], and fails later sends to the same subject
//! (and `attach`, within [`NatsOptions::permission_check`]) with
//! `PermissionDenied`.
//!
//! ## Single activation across processes
//!
//! Within one worker an id has at most one activation (the runtime's
//! promise). Across workers, an id's partition is pulled only by the worker
//! holding its lease: a key `<kind>.p<n>` in the KV bucket
//! `CODITECT_LEASES_<tenant>`, created by its holder (create fails if it
//! exists), refreshed with a revision check every third of
//! [`DurableOptions::lease_ttl`], and expired by the bucket's max age when its
//! holder stops refreshing it. The partition's consumer has MaxAckPending 1,
//! so an id's messages are handled one at a time, in order, by one activation
//! in one worker. When that worker dies its lease runs out, another worker
//! takes the partition, and the message that was in flight comes back first
//! (at least once: handlers must be idempotent by message id). A worker that
//! shuts down hands its leases over at once. A message to an id whose
//! partition this very process holds is handed over in process, so an id
//! that asks another id of its own partition does not wait behind itself. The promise holds as long as a
//! live holder refreshes within the lease time; a holder stalled longer than
//! that can overlap with its successor until it notices the lost lease.
//! With [`KindDelivery::AtMostOnce`] messages to an id go to a core queue
//! group and this promise holds within one worker only.

pub(crate) mod directory;
pub mod error;
mod jetstream;
pub mod options;
mod progress;
mod recall;
pub mod wire;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::envelope::{Destination, Envelope, Failure, FailureKind, Payload};
use crate::id::{AgentKind, MessageId, TenantId};
use crate::transport::{
    Delivery, Inbox, Route, RouteTarget, SendError, SendErrorKind, Subscription, Transport,
    TransportError, TransportErrorKind,
};

pub use error::{NatsError, NatsErrorKind};
pub use jetstream::{PARTITIONS, partition_of};
pub use options::{DurableOptions, KindDelivery, NatsOptions};
pub use wire::WireError;

/// Something that happened to the connection, as [`NatsTransport::events`]
/// reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NatsEvent {
    /// Connected (again).
    Connected,
    /// The connection was lost; the client reconnects with backoff.
    Disconnected,
    /// The server refused an operation on a subject for these credentials.
    PermissionDenied {
        /// `publish` or `subscription`.
        operation: String,
        /// The subject.
        subject: String,
    },
    /// A message was moved to the dead-letter subject.
    DeadLettered {
        /// Where it was found.
        subject: String,
        /// Why.
        reason: String,
    },
    /// A subscription of this client fell behind and dropped messages
    /// (a client-side slow consumer: its buffer, see
    /// [`NatsOptions::subscription_capacity`], was full), or the server cut
    /// the client off as one.
    SlowConsumer,
    /// Any other server or client error.
    Error(String),
    /// The connection is closed for good.
    Closed,
}

/// Counters of a [`NatsTransport`], as [`NatsTransport::metrics`] reads them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsMetrics {
    /// Times the connection was lost.
    pub disconnects: u64,
    /// Times it was (re)established after the first connect.
    pub reconnects: u64,
    /// Envelopes sent.
    pub sent: u64,
    /// Envelopes received and handed to inboxes.
    pub received: u64,
    /// Messages dead-lettered by this transport.
    pub dead_lettered: u64,
    /// Durable tasks delivered more than once (redeliveries seen).
    pub redelivered: u64,
    /// Permission violations reported by the server.
    pub permission_denied: u64,
    /// Slow-consumer reports: a subscription dropped messages it had no room
    /// for, or the server called this client slow.
    pub slow_consumers: u64,
}

#[derive(Default)]
struct Counters {
    disconnects: AtomicU64,
    /// Reconnects (connects after a loss).
    connects: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    dead_lettered: AtomicU64,
    redelivered: AtomicU64,
    permission_denied: AtomicU64,
    slow_consumers: AtomicU64,
}

/// Shared state of a transport and its background tasks.
pub(crate) struct Shared {
    pub(crate) client: async_nats::Client,
    pub(crate) js: async_nats::jetstream::Context,
    pub(crate) options: NatsOptions,
    events: broadcast::Sender<NatsEvent>,
    counters: Counters,
    denied: Mutex<HashSet<String>>,
    any_denied: AtomicBool,
    denied_changed: Notify,
    reply_routes: Mutex<HashSet<(TenantId, String)>>,
    pub(crate) streams: jetstream::Streams,
    closed: AtomicBool,
    limit: AtomicUsize,
    pub(crate) shutdown: CancellationToken,
    /// Replies sent lately, to send again when asked (see `recall`).
    recent: Mutex<recall::Recent>,
    /// Requests waiting for their reply, to ask for again after a reconnect.
    awaiting: Mutex<recall::Awaiting>,
    /// When the connection was last lost.
    lost_at: Mutex<Option<Instant>>,
}

impl Shared {
    pub(crate) fn emit(&self, event: NatsEvent) {
        let _ = self.events.send(event);
    }

    /// The largest message this transport sends or takes: cached, since
    /// reading the server info clones it.
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    fn refresh_limit(&self) {
        let server = self.client.server_info().max_payload;
        let server = if server == 0 { 1024 * 1024 } else { server };
        let limit = self
            .options
            .max_message_size
            .map_or(server, |m| m.min(server));
        self.limit.store(limit, Ordering::Relaxed);
    }

    fn on_event(self: &Arc<Self>, event: async_nats::Event) {
        use async_nats::Event as E;
        match event {
            E::Connected => {
                // The server may be another one now, with another max_payload.
                self.refresh_limit();
                // Only a connect after a loss counts as a reconnect.
                if self.counters.disconnects.load(Ordering::Relaxed)
                    > self.counters.connects.load(Ordering::Relaxed)
                {
                    self.counters.connects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!("nats connection re-established");
                    crate::observe::metrics::nats_reconnected();
                    // Replies may have been lost meanwhile, both ways.
                    let lost_at = self.lost_at.lock().ok().and_then(|mut l| l.take());
                    tokio::spawn(recall::after_reconnect(self.clone(), lost_at));
                }
                self.emit(NatsEvent::Connected);
            }
            E::Disconnected => {
                self.counters.disconnects.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.lost_at.lock() {
                    l.get_or_insert_with(Instant::now);
                }
                tracing::warn!("nats connection lost; reconnecting");
                self.emit(NatsEvent::Disconnected);
            }
            E::ServerError(async_nats::ServerError::Other(msg))
                if msg.to_lowercase().contains("permissions violation") =>
            {
                let lower = msg.to_lowercase();
                let operation = if lower.contains("subscription") {
                    "subscription"
                } else {
                    "publish"
                };
                let subject = msg.split('"').nth(1).unwrap_or_default().to_owned();
                self.counters
                    .permission_denied
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%operation, %subject, "nats permission denied");
                if let Ok(mut d) = self.denied.lock() {
                    d.insert(subject.clone());
                }
                self.any_denied.store(true, Ordering::Relaxed);
                self.denied_changed.notify_waiters();
                self.emit(NatsEvent::PermissionDenied {
                    operation: operation.to_owned(),
                    subject,
                });
            }
            E::SlowConsumer(sid) | E::ServerError(async_nats::ServerError::SlowConsumer(sid)) => {
                self.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    subscription = sid,
                    "nats slow consumer: a subscription dropped messages it had no room for"
                );
                crate::observe::metrics::nats_slow_consumer();
                self.emit(NatsEvent::SlowConsumer);
            }
            E::Closed => self.emit(NatsEvent::Closed),
            other => {
                tracing::warn!(event = %other, "nats event");
                self.emit(NatsEvent::Error(other.to_string()));
            }
        }
    }

    /// A request of this transport has its reply (or never will).
    fn answered(&self, id: MessageId) {
        if let Ok(mut a) = self.awaiting.lock() {
            a.remove(&id);
        }
    }

    /// A request of this transport waits for its reply.
    fn awaits(&self, id: MessageId, tenant: &TenantId) {
        if let Ok(mut a) = self.awaiting.lock() {
            a.insert(id, tenant);
        }
    }

    fn is_denied(&self, subject: &str) -> bool {
        if !self.any_denied.load(Ordering::Relaxed) {
            return false;
        }
        self.denied
            .lock()
            .map(|d| d.iter().any(|p| subject_matches(p, subject)))
            .unwrap_or(false)
    }

    /// Publishes a dead letter: the original bytes with its reason. Best
    /// effort into the tenant's dead-letter stream (JetStream when durable,
    /// plain publish otherwise).
    pub(crate) async fn dead_letter(&self, letter: DeadLetter<'_>) {
        let DeadLetter {
            tenant,
            kind,
            found_on,
            reason,
            headers,
            payload,
            msg_id,
        } = letter;
        self.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
        crate::observe::metrics::dead_lettered();
        tracing::warn!(subject = %found_on, %reason, "dead-lettering a message");
        self.emit(NatsEvent::DeadLettered {
            subject: found_on.to_owned(),
            reason: reason.to_owned(),
        });
        let Some(tenant) = tenant.and_then(|t| TenantId::new(t).ok()) else {
            return;
        };
        let kind = kind.filter(|k| AgentKind::new(k).is_ok());
        let subject = wire::dead_subject(&tenant, kind);
        let mut h = HeaderMap::new();
        if let Some(orig) = headers {
            for (k, vs) in orig.iter() {
                if AsRef::<str>::as_ref(k).eq_ignore_ascii_case("Nats-Msg-Id") {
                    continue;
                }
                for v in vs {
                    h.append(AsRef::<str>::as_ref(k), v.as_str());
                }
            }
        }
        // A reason is one header line: no line breaks.
        let reason_line: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        h.insert(wire::DEAD_REASON_HEADER, reason_line.as_str());
        h.insert(wire::DEAD_SUBJECT_HEADER, found_on);
        if let Some(id) = &msg_id {
            h.insert("Nats-Msg-Id", id.as_str());
        }
        let limit = self.limit().saturating_sub(4096);
        let payload = if payload.len() > limit {
            payload.slice(..limit.min(1024))
        } else {
            payload
        };
        if self.options.kind_delivery == KindDelivery::Durable
            && self.streams.ensure(self, &tenant).await.is_ok()
        {
            match self.js.publish_with_headers(subject, h, payload).await {
                Ok(ack) => {
                    if let Err(e) = ack.await {
                        tracing::error!(error = %e, "dead letter not stored");
                    }
                }
                Err(e) => tracing::error!(error = %e, "dead letter not published"),
            }
        } else if let Err(e) = self.client.publish_with_headers(subject, h, payload).await {
            tracing::error!(error = %e, "dead letter not published");
        }
    }
}

/// A message on its way to the dead letters.
pub(crate) struct DeadLetter<'a> {
    pub(crate) tenant: Option<&'a str>,
    pub(crate) kind: Option<&'a str>,
    pub(crate) found_on: &'a str,
    pub(crate) reason: &'a str,
    pub(crate) headers: Option<&'a HeaderMap>,
    pub(crate) payload: Bytes,
    /// De-duplicates a dead letter that two workers move at once.
    pub(crate) msg_id: Option<String>,
}

/// Whether a subject pattern from a permission error covers a subject.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The NATS/JetStream transport. Cloning gives another handle to the same
/// connection.
///
/// ```no_run
/// use coditect_orchestrator::Runtime;
/// use coditect_orchestrator::transport::nats::NatsTransport;
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let transport = NatsTransport::connect_url("nats://127.0.0.1:4222").await?;
/// let runtime = Runtime::builder(transport).build().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NatsTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("urls", &self.shared.options.urls)
            .field("kind_delivery", &self.shared.options.kind_delivery)
            .finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// Connects to one server with default options.
    ///
    /// # Errors
    /// [`NatsError`] if the connection fails.
    pub async fn connect_url(url: &str) -> Result<Self, NatsError> {
        NatsOptions::new(url).connect().await
    }

    pub(crate) async fn connect(options: NatsOptions) -> Result<Self, NatsError> {
        let (events, _) = broadcast::channel(256);
        let slot: Arc<Mutex<Option<std::sync::Weak<Shared>>>> = Arc::new(Mutex::new(None));
        let hook = slot.clone();
        let early = events.clone();
        let connect = options
            .client_options(move |event| {
                let shared = hook.lock().ok().and_then(|s| s.as_ref()?.upgrade());
                match shared {
                    Some(s) => s.on_event(event),
                    None => {
                        if matches!(event, async_nats::Event::Connected) {
                            let _ = early.send(NatsEvent::Connected);
                        }
                    }
                }
            })
            .await?;
        let urls: Vec<async_nats::ServerAddr> = options
            .urls
            .iter()
            .map(|u| {
                u.parse().map_err(|e| {
                    NatsError::new(NatsErrorKind::Options, format!("bad server url {u:?}: {e}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let client = connect
            .connect(urls)
            .await
            .map_err(|e| NatsError::new(NatsErrorKind::Connect, e.to_string()))?;
        let js = async_nats::jetstream::new(client.clone());
        let shared = Arc::new(Shared {
            client,
            js,
            options,
            events,
            counters: Counters::default(),
            denied: Mutex::new(HashSet::new()),
            any_denied: AtomicBool::new(false),
            denied_changed: Notify::new(),
            reply_routes: Mutex::new(HashSet::new()),
            streams: jetstream::Streams::default(),
            closed: AtomicBool::new(false),
            limit: AtomicUsize::new(0),
            shutdown: CancellationToken::new(),
            recent: Mutex::new(recall::Recent::default()),
            awaiting: Mutex::new(recall::Awaiting::default()),
            lost_at: Mutex::new(None),
        });
        shared.refresh_limit();
        if let Ok(mut s) = slot.lock() {
            *s = Some(Arc::downgrade(&shared));
        }
        Ok(Self { shared })
    }

    /// Connection events: disconnects, reconnects, permission violations,
    /// dead letters.
    pub fn events(&self) -> broadcast::Receiver<NatsEvent> {
        self.shared.events.subscribe()
    }

    /// A snapshot of the transport's counters.
    pub fn metrics(&self) -> NatsMetrics {
        let c = &self.shared.counters;
        NatsMetrics {
            disconnects: c.disconnects.load(Ordering::Relaxed),
            reconnects: c.connects.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            permission_denied: c.permission_denied.load(Ordering::Relaxed),
            slow_consumers: c.slow_consumers.load(Ordering::Relaxed),
        }
    }

    /// The underlying async-nats client (for raw access, monitoring, tests).
    pub fn client(&self) -> &async_nats::Client {
        &self.shared.client
    }

    /// Whether the connection is up right now.
    pub fn is_connected(&self) -> bool {
        self.shared.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The name of a tenant's durable task stream.
    pub fn task_stream(tenant: &TenantId) -> String {
        jetstream::task_stream(tenant)
    }

    /// The name of a tenant's dead-letter stream.
    pub fn dead_letter_stream(tenant: &TenantId) -> String {
        jetstream::dead_stream(tenant)
    }

    /// The name of a tenant's card bucket: the JetStream KV bucket where
    /// runtimes advertise the agent kinds they host (see
    /// [`FleetOptions`](crate::runtime::FleetOptions)).
    pub fn card_bucket(tenant: &TenantId) -> String {
        directory::card_bucket(tenant)
    }

    /// Whether kinds go through JetStream (the default), which the card
    /// directory needs too.
    pub(crate) fn is_durable(&self) -> bool {
        self.shared.options.kind_delivery == KindDelivery::Durable
    }

    /// Stops every route's background task and flushes what was published.
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.shared.client.flush()).await;
    }

    /// One round trip through the server: a request to a fresh subject in
    /// this connection's own inbox, which nobody answers (the server sends
    /// back "no responders"). The server handles a connection's operations
    /// in order, so everything sent before it has been processed after it.
    /// (`Client::flush` only writes the socket.)
    async fn round_trip(&self) {
        let client = &self.shared.client;
        let subject = client.new_inbox();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            client.request(subject, Bytes::new()),
        )
        .await;
    }

    async fn wait_for_refusal(&self, subject: &str) -> Result<(), TransportError> {
        let wait = self.shared.options.permission_check;
        if wait.is_zero() {
            return Ok(());
        }
        let until = Instant::now() + wait;
        loop {
            let changed = self.shared.denied_changed.notified();
            if self.shared.is_denied(subject) {
                return Err(TransportError::new(
                    TransportErrorKind::PermissionDenied,
                    format!("the server refused a subscription to {subject} for these credentials"),
                ));
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() {
                return Ok(());
            }
        }
    }

    async fn subscribe_core(
        &self,
        subject: String,
        queue: Option<String>,
        inbox: Arc<dyn Inbox>,
        carries: Carries,
        token: CancellationToken,
    ) -> Result<(), TransportError> {
        let client = &self.shared.client;
        let sub = match queue {
            Some(q) => client.queue_subscribe(subject.clone(), q).await,
            None => client.subscribe(subject.clone()).await,
        }
        .map_err(|e| TransportError::new(TransportErrorKind::Connection, e.to_string()))?;
        // After a round trip the server has the subscription: a message
        // published (from any connection) after attach returns reaches it.
        self.round_trip().await;
        self.wait_for_refusal(&subject).await?;
        let shared = self.shared.clone();
        tokio::spawn(pump_core(shared, sub, inbox, carries, token));
        Ok(())
    }
}

/// What a core subscription carries: the node's replies (where the server's
/// no-responders status fails a request at once, and a reply ends its
/// request's recall), or messages for agents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carries {
    Replies,
    Messages,
}

/// Moves core NATS messages of one subscription into an inbox, in order.
async fn pump_core(
    shared: Arc<Shared>,
    mut sub: async_nats::Subscriber,
    inbox: Arc<dyn Inbox>,
    carries: Carries,
    token: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            biased;
            () = token.cancelled() => break,
            () = shared.shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let tenant = wire::subject_tenant(&msg.subject).map(str::to_owned);
        if carries == Carries::Replies && msg.status == Some(async_nats::StatusCode::NO_RESPONDERS)
        {
            // The request went to a subject nobody listens on: fail it now.
            if let Some(env) = no_responder_reply(&msg.subject, tenant.as_deref()) {
                shared.answered(env.id);
                let _ = deliver(&*inbox, Delivery::new(env)).await;
            }
            continue;
        }
        if msg.status.is_some() && msg.payload.is_empty() {
            continue;
        }
        match wire::decode(
            msg.headers.as_ref(),
            msg.payload.clone(),
            tenant.as_deref(),
            shared.limit(),
        ) {
            Ok(env) => {
                shared.counters.received.fetch_add(1, Ordering::Relaxed);
                if carries == Carries::Replies
                    && let Some(id) = env.correlation
                {
                    shared.answered(id);
                }
                if let Err(refused) = deliver(&*inbox, Delivery::new(env)).await {
                    refuse(&shared, refused).await;
                }
            }
            Err(e) => {
                let kind = msg.subject.split('.').nth(3).map(str::to_owned);
                shared
                    .dead_letter(DeadLetter {
                        tenant: tenant.as_deref(),
                        kind: kind.as_deref(),
                        found_on: &msg.subject,
                        reason: &format!("malformed message: {e}"),
                        headers: msg.headers.as_ref(),
                        payload: msg.payload,
                        msg_id: None,
                    })
                    .await;
            }
        }
    }
    let _ = sub.unsubscribe().await;
}

/// The "no such agent" reply for a request that found no subscriber.
fn no_responder_reply(subject: &str, tenant: Option<&str>) -> Option<Envelope> {
    // coditect.<tenant>.reply.<node>.<request id>
    let mut parts = subject.split('.');
    let _ = parts.nth(2)?;
    let node = crate::id::NodeId::new(parts.next()?).ok()?;
    let id: MessageId = parts.next()?.parse().ok()?;
    let tenant = TenantId::new(tenant?).ok()?;
    let mut env = Envelope::new(
        tenant,
        Destination::Reply(node),
        Payload::Reply(Err(Failure::new(
            FailureKind::NoSuchAgent,
            "no agent listens on that address",
        ))),
    );
    env.id = id;
    env.correlation = Some(id);
    Some(env)
}

/// Whether JetStream refused a publish because the stream is at its limits
/// (`discard: new`): the server's error code says so, whatever its text.
fn stream_full(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
        .is_some_and(|j| {
            matches!(
                j.error_code(),
                ErrorCode::STREAM_STORE_FAILED | ErrorCode::STORAGE_RESOURCES_EXCEEDED
            )
        })
}

/// Publishes a task to its stream and waits for the server's ack, trying
/// again (with the same `Nats-Msg-Id`, so it is stored once) while the server
/// cannot take it for a moment — no stream leader yet, no responders, a
/// timeout — for up to [`DurableOptions::publish_retry`]. A full stream or a
/// refusal is final at once.
async fn publish_task(
    shared: &Shared,
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<(), async_nats::jetstream::context::PublishError> {
    let until = Instant::now() + shared.options.durable.publish_retry;
    let mut delay = Duration::from_millis(50);
    loop {
        let result = match shared
            .js
            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()),
            Err(e) => Err(e),
        };
        match result {
            Err(e)
                if !stream_full(&e)
                    && !shared.closed.load(Ordering::Relaxed)
                    && Instant::now() + delay < until =>
            {
                tracing::debug!(error = %e, "task publish not acknowledged; trying again");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            other => return other,
        }
    }
}

/// Hands a delivery to an inbox, waiting while it is full (backpressure).
pub(crate) async fn deliver(
    inbox: &dyn Inbox,
    delivery: Delivery,
) -> Result<(), Box<crate::transport::Refused>> {
    inbox.deliver(delivery).await
}

/// A core delivery was refused: tell a waiting requester why.
async fn refuse(shared: &Arc<Shared>, refused: Box<crate::transport::Refused>) {
    let crate::transport::Refused { delivery, reason } = *refused;
    tracing::debug!(%reason, "an inbox refused a message");
    if let Some(reply) = delivery.envelope.reply(Err(reason)) {
        let t = NatsTransport {
            shared: shared.clone(),
        };
        let _ = t.send(reply).await;
    }
}

/// An envelope encoded for NATS, with the subject it goes to.
struct Wire {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
}

/// The subject an envelope is published to: its destination's (a durable
/// message to an id goes through the id's partition), every worker of the
/// kind for a cancel, the request's own reply subject for a reply.
fn subject_of(envelope: &Envelope, durable: bool) -> String {
    let subject = match (&envelope.to, durable) {
        (Destination::Agent(id), true) => wire::partition_subject(
            &envelope.tenant,
            id.kind(),
            jetstream::partition_of(id.key().as_str()),
        ),
        (to, _) => wire::subject(&envelope.tenant, to, durable),
    };
    match (&envelope.payload, &envelope.to) {
        // Whichever worker took the message may be handling it: tell all.
        (Payload::Cancel(_), Destination::Kind(k)) => wire::cancel_subject(&envelope.tenant, k),
        (Payload::Cancel(_), Destination::Agent(id)) => {
            wire::cancel_subject(&envelope.tenant, id.kind())
        }
        (_, Destination::Reply(_)) => {
            let id = envelope.correlation.unwrap_or(envelope.id);
            format!("{subject}.{id}")
        }
        _ => subject,
    }
}

/// Sends a message to a kind or an id through the tenant's work-queue
/// stream, stored once its publish is acknowledged — or, when this process
/// holds the id's partition, hands it over here.
async fn send_durable(
    shared: &Arc<Shared>,
    envelope: Envelope,
    wire: Wire,
) -> Result<(), SendError> {
    let Wire {
        subject,
        mut headers,
        payload,
    } = wire;
    if let Destination::Agent(id) = &envelope.to
        && let Some(inbox) = shared.streams.local(
            &envelope.tenant,
            id.kind(),
            jetstream::partition_of(id.key().as_str()),
        )
    {
        // This process holds the id's partition: hand the message over
        // here. Going through the partition's queue would put it behind
        // the message being handled now — which may be the very handler
        // waiting on it (an id asking another id of its partition).
        return deliver(&*inbox, Delivery::new(envelope))
            .await
            .map_err(|r| SendError::refused(*r));
    }
    let kind = match &envelope.to {
        Destination::Kind(k) => k.clone(),
        Destination::Agent(id) => id.kind().clone(),
        _ => {
            let msg = "only messages to a kind or an id are durable";
            return Err(SendError::new(SendErrorKind::Other, envelope, msg));
        }
    };
    match shared
        .streams
        .has_consumer(shared, &envelope.tenant, &kind)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            let msg = format!("no worker hosts kind {kind}");
            return Err(SendError::new(SendErrorKind::NoRoute, envelope, msg));
        }
        Err(e) => {
            // The probe is only there to fail fast when nobody hosts the
            // kind; if the server cannot answer it now (a stream leader
            // being elected), the stream still takes the task.
            tracing::debug!(error = %e, %kind, "consumer lookup failed; publishing anyway");
        }
    }
    headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
    let asks = envelope.reply_to.is_some();
    if asks {
        shared.awaits(envelope.id, &envelope.tenant);
    }
    let result = publish_task(shared, subject, headers, payload).await;
    if asks && result.is_err() {
        shared.answered(envelope.id);
    }
    match result {
        Ok(()) => {
            shared.counters.sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            let kind = if stream_full(&e) {
                SendErrorKind::Refused
            } else {
                SendErrorKind::Other
            };
            Err(SendError::new(
                kind,
                envelope,
                format!("task not stored: {e}"),
            ))
        }
    }
}

/// Publishes over core NATS: a request with the subject its "no responders"
/// status comes back on, a reply kept a while for recalls, anything else as
/// it is.
async fn publish_core(
    shared: &Arc<Shared>,
    envelope: Envelope,
    wire: Wire,
) -> Result<(), SendError> {
    let Wire {
        subject,
        headers,
        payload,
    } = wire;
    let published = match (&envelope.reply_to, &envelope.to) {
        (Some(node), Destination::Agent(_) | Destination::Kind(_) | Destination::Topic(_))
            if matches!(envelope.payload, Payload::Message(_)) =>
        {
            // The NATS reply subject only ever carries the server's
            // no-responders status; real replies are envelopes. (A request
            // to a topic nobody follows fails at once too.)
            let reply = format!(
                "{}.{}",
                wire::subject(&envelope.tenant, &Destination::Reply(node.clone()), false),
                envelope.id
            );
            shared.awaits(envelope.id, &envelope.tenant);
            shared
                .client
                .publish_with_reply_and_headers(subject, reply, headers, payload)
                .await
        }
        (_, Destination::Reply(_)) => {
            // Kept a while, to be sent again should it be lost.
            if let (Some(id), Ok(mut recent)) = (envelope.correlation, shared.recent.lock()) {
                recent.keep(id, &subject, &headers, &payload);
            }
            shared
                .client
                .publish_with_headers(subject, headers, payload)
                .await
        }
        _ => {
            if let Payload::Cancel(id) = &envelope.payload {
                // The caller gave up on it.
                shared.answered(*id);
            }
            shared
                .client
                .publish_with_headers(subject, headers, payload)
                .await
        }
    };
    match published {
        Ok(()) => {
            shared.counters.sent.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            let kind = match e.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded => SendErrorKind::TooLarge,
                _ => SendErrorKind::Closed,
            };
            Err(SendError::new(kind, envelope, e.to_string()))
        }
    }
}

#[async_trait]
impl Transport for NatsTransport {
    async fn send(&self, envelope: Envelope) -> Result<(), SendError> {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Relaxed) {
            return Err(SendError::new(
                SendErrorKind::Closed,
                envelope,
                "transport closed",
            ));
        }
        let durable = shared.options.kind_delivery == KindDelivery::Durable
            && matches!(envelope.payload, Payload::Message(_))
            && matches!(envelope.to, Destination::Kind(_) | Destination::Agent(_));
        let subject = subject_of(&envelope, durable);
        if shared.is_denied(&subject) {
            let msg = format!("the server refused publishing to {subject} for these credentials");
            return Err(SendError::new(
                SendErrorKind::PermissionDenied,
                envelope,
                msg,
            ));
        }
        let (headers, payload) = match wire::encode(&envelope) {
            Ok(x) => x,
            Err(e) => {
                return Err(SendError::new(
                    SendErrorKind::Encode,
                    envelope,
                    e.to_string(),
                ));
            }
        };
        let size = wire::encoded_len(&headers, &payload);
        let limit = shared.limit();
        if size > limit {
            let msg = format!(
                "message of {size} bytes exceeds the limit of {limit} bytes (server max_payload or max_message_size)"
            );
            return Err(SendError::new(SendErrorKind::TooLarge, envelope, msg));
        }
        let wire = Wire {
            subject,
            headers,
            payload,
        };
        if durable {
            send_durable(shared, envelope, wire).await
        } else {
            publish_core(shared, envelope, wire).await
        }
    }

    async fn attach(
        &self,
        route: Route,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Subscription, TransportError> {
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(TransportError::new(
                TransportErrorKind::Closed,
                "transport closed",
            ));
        }
        let token = self.shared.shutdown.child_token();
        let tenant = &route.tenant;
        let mut cleanup: Option<(TenantId, String)> = None;
        let result = async {
            match &route.target {
                RouteTarget::Replies(node) => {
                    let key = (tenant.clone(), node.to_string());
                    {
                        let mut r = self.shared.reply_routes.lock().map_err(|_| {
                            TransportError::new(TransportErrorKind::Other, "poisoned")
                        })?;
                        if !r.insert(key.clone()) {
                            return Err(TransportError::new(
                                TransportErrorKind::RouteTaken,
                                format!("node {node} already has a reply route"),
                            ));
                        }
                    }
                    cleanup = Some(key);
                    // This runtime sends replies too: it answers recalls.
                    let recalls = self
                        .shared
                        .client
                        .subscribe(recall::subject(tenant))
                        .await
                        .map_err(|e| {
                            TransportError::new(TransportErrorKind::Other, e.to_string())
                        })?;
                    tokio::spawn(recall::serve(self.shared.clone(), recalls, token.clone()));
                    let subject = format!(
                        "{}.>",
                        wire::subject(tenant, &Destination::Reply(node.clone()), false)
                    );
                    self.subscribe_core(subject, None, inbox, Carries::Replies, token.clone())
                        .await
                }
                RouteTarget::Topic(t) => {
                    let subject = wire::subject(tenant, &Destination::Topic(t.clone()), false);
                    self.subscribe_core(subject, None, inbox, Carries::Messages, token.clone())
                        .await
                }
                RouteTarget::Agent(id) => {
                    let subject = wire::subject(tenant, &Destination::Agent(id.clone()), false);
                    let q = Some(id.kind().to_string());
                    self.subscribe_core(subject, q, inbox, Carries::Messages, token.clone())
                        .await
                }
                RouteTarget::Kind(kind) => {
                    let q = Some(kind.to_string());
                    let kind_subject =
                        wire::subject(tenant, &Destination::Kind(kind.clone()), false);
                    self.subscribe_core(
                        kind_subject,
                        q.clone(),
                        inbox.clone(),
                        Carries::Messages,
                        token.clone(),
                    )
                    .await?;
                    let ids = wire::ids_subject(tenant, kind);
                    self.subscribe_core(ids, q, inbox.clone(), Carries::Messages, token.clone())
                        .await?;
                    // No queue group: a cancel reaches every worker of the kind.
                    let cancels = wire::cancel_subject(tenant, kind);
                    self.subscribe_core(
                        cancels,
                        None,
                        inbox.clone(),
                        Carries::Messages,
                        token.clone(),
                    )
                    .await?;
                    if self.shared.options.kind_delivery == KindDelivery::Durable {
                        jetstream::attach_kind(&self.shared, tenant, kind, inbox, token.clone())
                            .await?;
                    }
                    Ok(())
                }
            }
        }
        .await;
        if let Err(e) = result {
            token.cancel();
            if let Some(key) = cleanup
                && let Ok(mut r) = self.shared.reply_routes.lock()
            {
                r.remove(&key);
            }
            return Err(e);
        }
        let shared = Arc::downgrade(&self.shared);
        Ok(Subscription::new(move || {
            token.cancel();
            if let Some(key) = cleanup
                && let Some(s) = shared.upgrade()
                && let Ok(mut r) = s.reply_routes.lock()
            {
                r.remove(&key);
            }
        }))
    }

    fn name(&self) -> &'static str {
        "nats"
    }
}

#[cfg(test)]
mod tests {
    use super::subject_matches;

    #[test]
    fn permission_patterns_match_subjects() {
        assert!(subject_matches("coditect.b.>", "coditect.b.kind.x"));
        assert!(subject_matches("coditect.*.kind.x", "coditect.b.kind.x"));
        assert!(!subject_matches("coditect.a.>", "coditect.b.kind.x"));
        assert!(subject_matches("coditect.b.kind.x", "coditect.b.kind.x"));
    }
}
