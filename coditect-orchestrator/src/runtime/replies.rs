//! The table of requests waiting for replies, keyed by correlation id.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::body::Body;
use crate::envelope::{Envelope, Failure, Payload};
use crate::id::MessageId;
use crate::report::Tally;
use crate::transport::{Delivery, Inbox, LocalInbox, Refused, TryDeliver};

/// What a waiting request gets: the answer, and for a message of a run, what
/// its handling reported.
pub(crate) struct ReplyResult {
    pub(crate) result: Result<Body, Failure>,
    pub(crate) tally: Option<Box<Tally>>,
}

impl ReplyResult {
    /// An answer without a tally.
    pub(crate) fn bare(result: Result<Body, Failure>) -> Self {
        Self {
            result,
            tally: None,
        }
    }
}

const SHARDS: usize = 16;

/// Keyed by message id with foldhash: a request inserts and removes its id
/// once each, so the hash is on every request's path (SipHash cost more than
/// the lock).
type Waiting = Mutex<HashMap<MessageId, oneshot::Sender<ReplyResult>, foldhash::fast::RandomState>>;

/// Requests in flight from one node. A reply whose request is no longer
/// waiting (timed out, or a duplicate) is dropped here, once, with a log line.
pub(crate) struct PendingReplies {
    shards: Box<[Waiting]>,
}

impl PendingReplies {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
        }
    }

    fn shard(&self, id: &MessageId) -> &Waiting {
        // The low bits of a message id are a counter: they spread evenly.
        &self.shards[(id.as_u128() as usize) % SHARDS]
    }

    pub(crate) fn insert(&self, id: MessageId) -> oneshot::Receiver<ReplyResult> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.shard(&id).lock() {
            m.insert(id, tx);
        }
        rx
    }

    pub(crate) fn remove(&self, id: &MessageId) {
        if let Ok(mut m) = self.shard(id).lock() {
            m.remove(id);
        }
    }

    /// Hands a reply to its waiting request. `false` if nobody waits for it.
    pub(crate) fn complete(&self, id: &MessageId, result: ReplyResult) -> bool {
        let tx = self.shard(id).lock().ok().and_then(|mut m| m.remove(id));
        match tx {
            Some(tx) => tx.send(result).is_ok(),
            None => false,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }
}

pub(crate) struct ReplyInbox(pub(crate) std::sync::Arc<PendingReplies>);

impl ReplyInbox {
    fn complete(&self, envelope: Box<Envelope>) {
        let envelope = *envelope;
        match (envelope.correlation, envelope.payload) {
            (Some(correlation), Payload::Reply(result)) => {
                let answer = ReplyResult {
                    result,
                    tally: envelope.tally,
                };
                if !self.0.complete(&correlation, answer) {
                    tracing::debug!(%correlation, "reply for a request that is no longer waiting (late or duplicate); dropped");
                }
            }
            (_, payload) => {
                tracing::warn!(
                    id = %envelope.id,
                    kind = payload_kind(&payload),
                    "a non-reply message arrived on a reply route; dropped"
                );
            }
        }
    }
}

impl LocalInbox for ReplyInbox {
    fn try_deliver(&self, delivery: Delivery) -> Result<(), TryDeliver> {
        if !delivery.acker.is_noop() {
            return Err(TryDeliver::Wait(delivery));
        }
        self.complete(delivery.envelope);
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[async_trait]
impl Inbox for ReplyInbox {
    async fn deliver(&self, delivery: Delivery) -> Result<(), Box<Refused>> {
        let Delivery { envelope, acker } = delivery;
        self.complete(envelope);
        if let Err(e) = acker.ack().await {
            tracing::debug!(error = %e, "ack of a reply failed");
        }
        Ok(())
    }
}

fn payload_kind(p: &Payload) -> &'static str {
    match p {
        Payload::Message(_) => "message",
        Payload::Reply(_) => "reply",
        Payload::Cancel(_) => "cancel",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_reply_is_not_delivered_twice() {
        let p = PendingReplies::new();
        let id = MessageId::new();
        let mut rx = p.insert(id);
        assert!(p.complete(&id, ReplyResult::bare(Ok(Body::new(1u32)))));
        assert!(!p.complete(&id, ReplyResult::bare(Ok(Body::new(2u32)))));
        let got = rx
            .try_recv()
            .unwrap()
            .result
            .unwrap()
            .take::<u32>()
            .unwrap();
        assert_eq!(got, 1);
        assert_eq!(p.len(), 0);
    }
}
