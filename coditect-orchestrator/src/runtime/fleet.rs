//! Taking part in the tenant's card directory over NATS: advertising this
//! runtime's kinds (on registration, then every heartbeat with their load),
//! reading everyone else's, and withdrawing ours on shutdown.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::id::NodeId;
use crate::runtime::RuntimeInner;
use crate::runtime::call::Node;
use crate::runtime::directory::{FleetOptions, LiveCard};
use crate::runtime::kind::KindHost;
use crate::transport::TransportError;
use crate::transport::nats::NatsTransport;
use crate::transport::nats::directory::{CardBucket, CardChange};

/// A runtime's membership in the directory.
pub(crate) struct Fleet {
    bucket: CardBucket,
    node: NodeId,
    token: CancellationToken,
}

/// The advert of one kind hosted here.
pub(crate) fn advert(host: &KindHost, node: &NodeId) -> LiveCard {
    LiveCard {
        card: host.card.clone(),
        node: node.clone(),
        version: host.version.clone(),
        capacity: host.capacity(),
        in_flight: host.load.load(std::sync::atomic::Ordering::Relaxed),
    }
}

impl Fleet {
    /// Joins the directory of the runtime's tenant when its transport is
    /// NATS with JetStream and the options allow it: reads the directory as
    /// it is now (before returning), then follows it and heartbeats.
    ///
    /// # Errors
    /// [`TransportError`] if the bucket cannot be set up or watched.
    pub(crate) async fn join(
        inner: &Arc<RuntimeInner>,
        options: &FleetOptions,
    ) -> Result<Option<Arc<Self>>, TransportError> {
        if !options.is_enabled() {
            return Ok(None);
        }
        let any: Arc<dyn std::any::Any + Send + Sync> = inner.node.transport.clone();
        let Ok(nats) = any.downcast::<NatsTransport>() else {
            return Ok(None);
        };
        if !nats.is_durable() {
            return Ok(None);
        }
        let ttl = options.ttl_value();
        let bucket = CardBucket::open(&nats, &inner.node.tenant, ttl).await?;
        let token = inner.shutdown.child_token();
        let stream = bucket.watch().await?;
        // What the watch replays first: at most what the bucket holds now
        // (the server's pending count on watched entries is not reliable
        // for this on every version).
        let expected = bucket.len().await?;
        let (ready_tx, mut ready_rx) = watch::channel(expected == 0);
        tokio::spawn(follow(
            Arc::downgrade(&inner.node),
            bucket.clone(),
            Box::pin(stream),
            ttl,
            (ready_tx, expected),
            token.clone(),
        ));
        // Caught up with what is there: a bounded wait (values may expire
        // before they are delivered, and then the last one never comes).
        let _ =
            tokio::time::timeout(ttl.min(Duration::from_secs(5)), ready_rx.wait_for(|r| *r)).await;
        let fleet = Arc::new(Self {
            bucket,
            node: inner.node.id.clone(),
            token,
        });
        tokio::spawn(heartbeat(
            Arc::downgrade(inner),
            fleet.clone(),
            options.heartbeat_value(),
        ));
        Ok(Some(fleet))
    }

    /// Writes the advert of one kind now.
    pub(crate) async fn advertise(&self, host: &KindHost) {
        let live = advert(host, &self.node);
        let Ok(json) = serde_json::to_vec(&live) else {
            return;
        };
        if let Err(e) = self.bucket.put(&live.key(), Bytes::from(json)).await {
            tracing::warn!(error = %e, kind = %host.kind, "advert not written; the next heartbeat tries again");
        }
    }

    /// Stops heartbeating and withdraws the adverts of these kinds, so that
    /// nobody routes here any more.
    pub(crate) async fn leave(&self, hosts: &[Arc<KindHost>]) {
        self.token.cancel();
        for h in hosts {
            let key = format!("{}.{}", h.kind, self.node);
            if let Err(e) = self.bucket.delete(&key).await {
                tracing::warn!(error = %e, %key, "advert not withdrawn; it expires after its time to live");
            }
        }
    }
}

/// Rewrites every advert of this runtime each heartbeat, with its load.
async fn heartbeat(inner: Weak<RuntimeInner>, fleet: Arc<Fleet>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = fleet.token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(rt) = inner.upgrade() else { return };
        let hosts = rt.registered_hosts();
        rt.node.directory.sweep();
        drop(rt);
        for h in hosts {
            if fleet.token.is_cancelled() {
                return;
            }
            fleet.advertise(&h).await;
        }
    }
}

type Changes = std::pin::Pin<Box<dyn futures::Stream<Item = CardChange> + Send>>;

/// Follows the bucket into the directory, opening a new watch whenever one
/// ends (a lost connection), until the runtime stops.
async fn follow(
    node: Weak<Node>,
    bucket: CardBucket,
    mut changes: Changes,
    ttl: Duration,
    (ready, expected): (watch::Sender<bool>, u64),
    token: CancellationToken,
) {
    let mut seen = 0u64;
    loop {
        loop {
            let change = tokio::select! {
                () = token.cancelled() => return,
                c = changes.next() => c,
            };
            let Some(change) = change else { break };
            let Some(node) = node.upgrade() else { return };
            apply(&node, change, ttl);
            seen += 1;
            if seen >= expected {
                ready.send_if_modified(|r| !std::mem::replace(r, true));
            }
        }
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            match bucket.watch().await {
                Ok(s) => {
                    changes = Box::pin(s);
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "card directory watch not reopened yet"),
            }
        }
    }
}

/// One change into the directory. Adverts are outside data: one that does
/// not parse, or whose key does not match its card, is reported and skipped.
fn apply(node: &Node, change: CardChange, ttl: Duration) {
    let CardChange { key, value, age } = change;
    let Some((kind, from)) = key.split_once('.') else {
        tracing::warn!(%key, "card directory key is not <kind>.<node>; skipped");
        return;
    };
    if from == node.id.as_str() {
        return;
    }
    let Some(value) = value else {
        node.directory.remove(&key);
        return;
    };
    let live: LiveCard = match serde_json::from_slice(&value) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(%key, error = %e, "malformed advert in the card directory; skipped");
            return;
        }
    };
    if live.card.kind.as_str() != kind || live.node.as_str() != from {
        tracing::warn!(%key, "advert does not match its key; skipped");
        return;
    }
    let Some(left) = ttl.checked_sub(age) else {
        return;
    };
    node.directory.upsert(key, live, Instant::now() + left);
}
