//! The durable task path: one work-queue stream per tenant, one durable pull
//! consumer per kind shared by every worker hosting it, acks after the reply,
//! in-progress acks while a task waits or runs, Nak with a delay, and dead
//! letters for tasks that cannot be decoded or exhaust their deliveries.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_trait::async_trait;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::progress::{self, Ackers};
use super::{DeadLetter, Shared, deliver, wire};
use crate::id::{AgentKind, TenantId};
use crate::transport::{Acker, Acknowledge, Delivery, Inbox, TransportError, TransportErrorKind};

/// The name of a tenant's task stream.
pub(crate) fn task_stream(tenant: &TenantId) -> String {
    format!("CODITECT_TASKS_{tenant}")
}

/// The name of a tenant's dead-letter stream.
pub(crate) fn dead_stream(tenant: &TenantId) -> String {
    format!("CODITECT_DEAD_{tenant}")
}

fn js_err(what: &str, e: impl std::fmt::Display) -> TransportError {
    let text = e.to_string();
    let kind = if text.to_lowercase().contains("permission") || text.contains("authorization") {
        TransportErrorKind::PermissionDenied
    } else {
        TransportErrorKind::Connection
    };
    TransportError::new(kind, format!("{what}: {text}"))
}

/// Streams set up by this transport, and kinds known to have a consumer.
#[derive(Default)]
pub(crate) struct Streams {
    ready: Mutex<HashSet<TenantId>>,
    consumers: Mutex<HashMap<(TenantId, AgentKind), Instant>>,
    advisories: Mutex<HashSet<TenantId>>,
    /// Partitions this transport holds the lease of, with the inbox that
    /// takes their messages.
    local: Mutex<HashMap<PartitionKey, Arc<dyn Inbox>>>,
}

/// A tenant's partition of a kind.
type PartitionKey = (TenantId, AgentKind, u32);

/// How long a positive "this kind has a consumer" answer is trusted.
const CONSUMER_CACHE: Duration = Duration::from_secs(5);

impl Streams {
    fn set_local(
        &self,
        tenant: &TenantId,
        kind: &AgentKind,
        p: u32,
        inbox: Option<Arc<dyn Inbox>>,
    ) {
        if let Ok(mut l) = self.local.lock() {
            let key = (tenant.clone(), kind.clone(), p);
            match inbox {
                Some(i) => {
                    l.insert(key, i);
                }
                None => {
                    l.remove(&key);
                }
            }
        }
    }

    /// The local inbox of an id's partition, if this transport holds it.
    pub(crate) fn local(
        &self,
        tenant: &TenantId,
        kind: &AgentKind,
        p: u32,
    ) -> Option<Arc<dyn Inbox>> {
        let l = self.local.lock().ok()?;
        if l.is_empty() {
            return None;
        }
        l.get(&(tenant.clone(), kind.clone(), p)).cloned()
    }

    /// Creates the tenant's task and dead-letter streams if they are missing.
    pub(crate) async fn ensure(
        &self,
        shared: &Shared,
        tenant: &TenantId,
    ) -> Result<(), TransportError> {
        if self
            .ready
            .lock()
            .map(|r| r.contains(tenant))
            .unwrap_or(false)
        {
            return Ok(());
        }
        let d = &shared.options.durable;
        let tasks = stream::Config {
            name: task_stream(tenant),
            subjects: vec![wire::tasks_subject(tenant)],
            retention: RetentionPolicy::WorkQueue,
            discard: DiscardPolicy::New,
            max_messages: d.max_tasks,
            storage: StorageType::File,
            num_replicas: d.replicas,
            duplicate_window: d.duplicate_window,
            ..Default::default()
        };
        shared
            .js
            .get_or_create_stream(tasks)
            .await
            .map_err(|e| js_err("cannot set up the task stream", e))?;
        let dead = stream::Config {
            name: dead_stream(tenant),
            subjects: vec![wire::dead_letters_subject(tenant)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: d.replicas,
            duplicate_window: d.duplicate_window,
            max_age: d.dead_letter_max_age,
            ..Default::default()
        };
        shared
            .js
            .get_or_create_stream(dead)
            .await
            .map_err(|e| js_err("cannot set up the dead-letter stream", e))?;
        if let Ok(mut r) = self.ready.lock() {
            r.insert(tenant.clone());
        }
        Ok(())
    }

    /// Whether some worker set up a consumer for `kind` (so a task for it
    /// will be taken); cached briefly.
    pub(crate) async fn has_consumer(
        &self,
        shared: &Shared,
        tenant: &TenantId,
        kind: &AgentKind,
    ) -> Result<bool, TransportError> {
        let key = (tenant.clone(), kind.clone());
        if let Ok(c) = self.consumers.lock()
            && c.get(&key).is_some_and(|t| t.elapsed() < CONSUMER_CACHE)
        {
            return Ok(true);
        }
        self.ensure(shared, tenant).await?;
        let stream = shared
            .js
            .get_stream(task_stream(tenant))
            .await
            .map_err(|e| js_err("task stream", e))?;
        match stream.consumer_info(kind.as_str()).await {
            Ok(_) => {
                if let Ok(mut c) = self.consumers.lock() {
                    c.insert(key, Instant::now());
                }
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(js_err("consumer lookup", e)),
        }
    }
}

/// Subscribes a worker's inbox to the durable tasks of `kind`.
pub(crate) async fn attach_kind(
    shared: &Arc<Shared>,
    tenant: &TenantId,
    kind: &AgentKind,
    inbox: Arc<dyn Inbox>,
    token: CancellationToken,
) -> Result<(), TransportError> {
    shared.streams.ensure(shared, tenant).await?;
    let spec = Spec::kind(shared, tenant, kind);
    let consumer = consumer(shared, tenant, &spec).await?;
    tokio::spawn(pump_tasks(
        shared.clone(),
        tenant.clone(),
        spec,
        consumer,
        inbox.clone(),
        token.clone(),
    ));
    let leases = Leases::open(shared, tenant).await?;
    tokio::spawn(own_partitions(
        shared.clone(),
        tenant.clone(),
        kind.clone(),
        leases,
        inbox,
        token,
    ));
    let first = shared
        .streams
        .advisories
        .lock()
        .map(|mut a| a.insert(tenant.clone()))
        .unwrap_or(false);
    if first {
        let sub = shared
            .client
            .queue_subscribe(
                format!(
                    "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.*",
                    task_stream(tenant)
                ),
                "coditect-dead-letters".to_owned(),
            )
            .await
            .map_err(|e| js_err("advisory subscription", e))?;
        tokio::spawn(watch_max_deliveries(
            shared.clone(),
            tenant.clone(),
            sub,
            shared.shutdown.clone(),
        ));
    }
    Ok(())
}

/// Which durable consumer a pump pulls from.
#[derive(Clone)]
struct Spec {
    /// The consumer's durable name.
    name: String,
    /// Its filter subject.
    filter: String,
    /// Its MaxAckPending (1 keeps a partition's messages strictly in order).
    max_ack_pending: i64,
    /// The kind whose consumer this is (for the has-consumer cache).
    kind_consumer: Option<AgentKind>,
    /// The kind whose messages it holds.
    kind: AgentKind,
}

impl Spec {
    fn kind(shared: &Shared, tenant: &TenantId, kind: &AgentKind) -> Self {
        Self {
            name: kind.to_string(),
            filter: wire::task_subject(tenant, kind),
            max_ack_pending: shared.options.durable.max_ack_pending,
            kind_consumer: Some(kind.clone()),
            kind: kind.clone(),
        }
    }

    fn partition(tenant: &TenantId, kind: &AgentKind, p: u32) -> Self {
        Self {
            name: format!("{kind}-p{p}"),
            filter: wire::partition_subject(tenant, kind, p),
            max_ack_pending: 1,
            kind_consumer: None,
            kind: kind.clone(),
        }
    }
}

async fn consumer(
    shared: &Shared,
    tenant: &TenantId,
    spec: &Spec,
) -> Result<PullConsumer, TransportError> {
    let d = &shared.options.durable;
    let stream = shared
        .js
        .get_stream(task_stream(tenant))
        .await
        .map_err(|e| js_err("task stream", e))?;
    let config = pull::Config {
        durable_name: Some(spec.name.clone()),
        filter_subject: spec.filter.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: d.ack_wait,
        max_deliver: d.max_deliver,
        max_ack_pending: spec.max_ack_pending,
        num_replicas: d.replicas,
        ..Default::default()
    };
    let c = stream
        .get_or_create_consumer(&spec.name, config)
        .await
        .map_err(|e| js_err("cannot set up the task consumer", e))?;
    if let Some(kind) = &spec.kind_consumer
        && let Ok(mut cs) = shared.streams.consumers.lock()
    {
        cs.insert((tenant.clone(), kind.clone()), Instant::now());
    }
    Ok(c)
}

/// How often a pull loop's tasks in flight are extended: a quarter of the ack
/// wait, so that a task's first in-progress ack (one to two ticks after its
/// delivery) comes by half the ack wait.
fn progress_every(ack_wait: Duration) -> Duration {
    (ack_wait / 4).max(Duration::from_millis(25))
}

/// Pulls tasks of one kind and hands them to the inbox, until cancelled.
/// Survives reconnects and server restarts: on any stream error it pulls again.
async fn pump_tasks(
    shared: Arc<Shared>,
    tenant: TenantId,
    spec: Spec,
    mut consumer: PullConsumer,
    inbox: Arc<dyn Inbox>,
    token: CancellationToken,
) {
    let d = shared.options.durable.clone();
    let kind = spec.name.clone();
    let mut backoff = Duration::from_millis(50);
    let in_flight = Arc::new(Ackers::new());
    progress::keep_alive(&in_flight, progress_every(d.ack_wait));
    'outer: loop {
        let stream = consumer
            .stream()
            .max_messages_per_batch(d.batch)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await;
        let mut messages = match stream {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, %kind, "cannot pull tasks; retrying");
                tokio::select! {
                    () = token.cancelled() => break 'outer,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                // The consumer may be gone (server restarted without it).
                if let Ok(c) = self::consumer(&shared, &tenant, &spec).await {
                    consumer = c;
                }
                continue;
            }
        };
        loop {
            let next = tokio::select! {
                biased;
                () = token.cancelled() => break 'outer,
                n = messages.next() => n,
            };
            let msg = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, %kind, "task pull interrupted; pulling again");
                    continue 'outer;
                }
                None => continue 'outer,
            };
            backoff = Duration::from_millis(50);
            let (delivered, seq) = match msg.info() {
                Ok(i) => (i.delivered, i.stream_sequence),
                Err(_) => (1, 0),
            };
            if delivered > 1 {
                shared
                    .counters
                    .redelivered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let (msg, acker) = msg.split();
            match wire::decode(
                msg.headers.as_ref(),
                msg.payload.clone(),
                Some(tenant.as_str()),
                shared.limit(),
            ) {
                Ok(env) => {
                    shared
                        .counters
                        .received
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let ack = TaskAck::new(acker, &in_flight);
                    let delivery = Delivery::with_acker(env, Acker::new(ack));
                    if let Err(refused) = deliver(&*inbox, delivery).await {
                        // Not taken here (shutting down, say): let another
                        // worker have it after a pause.
                        tracing::debug!(reason = %refused.reason, %kind, "task refused; nak with delay");
                        let _ = refused.delivery.acker.nak(Some(d.nak_delay)).await;
                    }
                }
                Err(e) => {
                    shared
                        .dead_letter(DeadLetter {
                            tenant: Some(tenant.as_str()),
                            kind: Some(spec.kind.as_str()),
                            found_on: &msg.subject,
                            reason: &format!("malformed task: {e}"),
                            headers: msg.headers.as_ref(),
                            payload: msg.payload.clone(),
                            msg_id: Some(format!("dead-{}-{seq}", task_stream(&tenant))),
                        })
                        .await;
                    // Moved to the dead letters: remove it from the queue.
                    if let Err(e) = acker.ack_with(AckKind::Term).await {
                        tracing::warn!(error = %e, "could not terminate a malformed task");
                    }
                }
            }
        }
    }
}

/// The ack handle of one durable task. While it is in flight, its pull
/// loop's ticker sends its in-progress acks (`progress.rs`).
struct TaskAck {
    acker: Arc<async_nats::jetstream::message::Acker>,
    in_flight: Arc<Ackers>,
    key: u64,
}

impl TaskAck {
    fn new(acker: async_nats::jetstream::message::Acker, in_flight: &Arc<Ackers>) -> Self {
        let acker = Arc::new(acker);
        let key = in_flight.enter(acker.clone());
        Self {
            acker,
            in_flight: in_flight.clone(),
            key,
        }
    }

    async fn send(&self, kind: AckKind) -> Result<(), TransportError> {
        self.in_flight.leave(self.key);
        self.acker
            .ack_with(kind)
            .await
            .map_err(|e| TransportError::new(TransportErrorKind::Connection, e.to_string()))
    }
}

impl Drop for TaskAck {
    fn drop(&mut self) {
        self.in_flight.leave(self.key);
    }
}

#[async_trait]
impl Acknowledge for TaskAck {
    async fn ack(&self) -> Result<(), TransportError> {
        self.send(AckKind::Ack).await
    }
    async fn nak(&self, delay: Option<Duration>) -> Result<(), TransportError> {
        // A plain Nak ignores the consumer's backoff and redelivers at once.
        self.send(AckKind::Nak(Some(delay.unwrap_or(Duration::from_secs(1)))))
            .await
    }
    async fn in_progress(&self) -> Result<(), TransportError> {
        self.acker
            .ack_with(AckKind::Progress)
            .await
            .map_err(|e| TransportError::new(TransportErrorKind::Connection, e.to_string()))
    }
    async fn term(&self) -> Result<(), TransportError> {
        self.send(AckKind::Term).await
    }
}

#[derive(Deserialize)]
struct MaxDeliveries {
    stream: String,
    consumer: String,
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// Moves tasks that exhausted their deliveries to the dead letters (a
/// work-queue stream would otherwise keep them forever).
async fn watch_max_deliveries(
    shared: Arc<Shared>,
    tenant: TenantId,
    mut sub: async_nats::Subscriber,
    token: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = token.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let adv: MaxDeliveries = match serde_json::from_slice(&msg.payload) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable max-deliveries advisory");
                continue;
            }
        };
        let stream = match shared.js.get_stream(&adv.stream).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "advisory for an unknown stream");
                continue;
            }
        };
        let raw = match stream.get_raw_message(adv.stream_seq).await {
            Ok(m) => m,
            Err(e) => {
                // Already moved by another worker.
                tracing::debug!(error = %e, seq = adv.stream_seq, "dead task already gone");
                continue;
            }
        };
        let reason = format!(
            "delivered {} times without an ack (max_deliver of consumer {})",
            adv.deliveries, adv.consumer
        );
        shared
            .dead_letter(DeadLetter {
                tenant: Some(tenant.as_str()),
                kind: Some(adv.consumer.as_str()),
                found_on: raw.subject.as_str(),
                reason: &reason,
                headers: Some(&raw.headers),
                payload: raw.payload.clone(),
                msg_id: Some(format!("dead-{}-{}", adv.stream, adv.stream_seq)),
            })
            .await;
        if let Err(e) = stream.delete_message(adv.stream_seq).await {
            tracing::debug!(error = %e, "dead task not deleted (already gone?)");
        }
    }
    let _ = sub.unsubscribe().await;
}

/// How many partitions the ids of one kind are spread over. Each partition is
/// a durable consumer with MaxAckPending 1, pulled only by the worker holding
/// its lease.
pub const PARTITIONS: u32 = 16;

/// The partition of an id's key: FNV-1a, stable across processes and builds.
pub fn partition_of(key: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h % PARTITIONS
}

/// The KV bucket of a tenant's partition leases.
pub(crate) fn lease_bucket(tenant: &TenantId) -> String {
    format!("CODITECT_LEASES_{tenant}")
}

/// A tenant's lease bucket: one key per partition, expiring after the lease
/// time unless its holder refreshes it.
struct Leases {
    kv: async_nats::jetstream::kv::Store,
    ttl: Duration,
}

impl Leases {
    async fn open(shared: &Shared, tenant: &TenantId) -> Result<Self, TransportError> {
        let d = &shared.options.durable;
        let ttl = d.lease_ttl;
        let bucket = lease_bucket(tenant);
        // The bucket's stream is made here rather than by `create_key_value`,
        // which reads the account info in a shape nats-server 2.9 does not
        // answer with. This is the layout of a KV bucket (one value per key,
        // no history) with a max age: the lease time.
        shared
            .js
            .get_or_create_stream(stream::Config {
                name: format!("KV_{bucket}"),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: ttl,
                discard: DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                storage: StorageType::File,
                num_replicas: d.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| js_err("cannot set up the lease bucket", e))?;
        let kv = shared
            .js
            .get_key_value(&bucket)
            .await
            .map_err(|e| js_err("cannot open the lease bucket", e))?;
        Ok(Self { kv, ttl })
    }
}

/// Takes, keeps and pulls the partitions of `kind` whose leases are free.
///
/// A lease is a KV key (`<kind>.p<n>`) created by its holder, refreshed with
/// a revision check every third of the lease time, and gone when its holder
/// stops refreshing it (the bucket's max age). Only the holder pulls the
/// partition, whose consumer hands out one message at a time: an id's
/// messages are handled in order by one activation in one worker; when that
/// worker dies, the lease runs out, another worker takes the partition, and
/// the unacked message comes back to it first.
async fn own_partitions(
    shared: Arc<Shared>,
    tenant: TenantId,
    kind: AgentKind,
    leases: Leases,
    inbox: Arc<dyn Inbox>,
    token: CancellationToken,
) {
    let me = bytes::Bytes::from(crate::id::MessageId::new().to_string());
    let mut owned: HashMap<u32, (u64, CancellationToken)> = HashMap::new();
    let mut tick = tokio::time::interval(leases.ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = token.cancelled() => break,
            _ = tick.tick() => {}
        }
        for p in 0..PARTITIONS {
            let key = format!("{kind}.p{p}");
            if let Some((rev, pull)) = owned.get_mut(&p) {
                match leases.kv.update(&key, me.clone(), *rev).await {
                    Ok(r) => *rev = r,
                    Err(e) => {
                        tracing::warn!(error = %e, %kind, partition = p, "lease lost; stop pulling");
                        pull.cancel();
                        owned.remove(&p);
                        shared.streams.set_local(&tenant, &kind, p, None);
                    }
                }
                continue;
            }
            let Ok(rev) = leases.kv.create(&key, me.clone()).await else {
                continue;
            };
            let spec = Spec::partition(&tenant, &kind, p);
            match consumer(&shared, &tenant, &spec).await {
                Ok(c) => {
                    let pull = token.child_token();
                    tokio::spawn(pump_tasks(
                        shared.clone(),
                        tenant.clone(),
                        spec,
                        c,
                        inbox.clone(),
                        pull.clone(),
                    ));
                    tracing::debug!(%kind, partition = p, "lease taken");
                    owned.insert(p, (rev, pull));
                    shared
                        .streams
                        .set_local(&tenant, &kind, p, Some(inbox.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, %kind, partition = p, "partition consumer not set up");
                    let _ = leases.kv.delete(&key).await;
                }
            }
        }
    }
    // Hand the partitions over at once instead of after the lease time.
    for (p, (_, pull)) in owned {
        pull.cancel();
        shared.streams.set_local(&tenant, &kind, p, None);
        let _ = leases.kv.delete(format!("{kind}.p{p}")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_across_versions() {
        // The partition of a key is part of the wire contract between
        // processes of different builds: pin it.
        assert_eq!(partition_of(""), 0x811c_9dc5 % PARTITIONS);
        let p: Vec<u32> = ["a", "pr-42", "k0"]
            .iter()
            .map(|k| partition_of(k))
            .collect();
        assert_eq!(p, vec![12, 4, 14]);
        assert!(p.iter().all(|&x| x < PARTITIONS));
    }
}
