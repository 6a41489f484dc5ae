//! Replies travel as core NATS messages, at most once: one published while
//! its requester's connection is down (a reconnect, a server restart, a
//! failover to another node of a cluster) reaches nobody. So that a durable
//! task's result is not lost with its reply:
//!
//! - every transport keeps the replies it sent in the last
//!   [`KEEP`] (at most [`CAPACITY`] of them) and sends them again when asked
//!   on its tenant's `coditect.<tenant>.recall` subject;
//! - a transport that reconnects asks there for the replies of the requests
//!   it still waits for (now, and once more a little later, in case the
//!   worker that holds one is still reconnecting itself);
//! - a transport that reconnects also sends again, unasked, the replies it
//!   sent from shortly before its connection was lost.
//!
//! A reply that comes twice is taken once: a requester waits for one reply
//! per request.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::id::{MessageId, TenantId};
use crate::transport::nats::{Shared, wire};

/// How long a sent reply is kept.
pub(crate) const KEEP: Duration = Duration::from_secs(60);
/// At most this many replies are kept.
pub(crate) const CAPACITY: usize = 16_384;
/// At most this many ids in one recall message.
const IDS_PER_RECALL: usize = 256;
/// Requests waiting longer than this are forgotten once many wait.
const AWAIT_LIMIT: Duration = Duration::from_secs(3600);
const AWAIT_PRUNE_AT: usize = 65_536;

/// The recall subject of a tenant.
pub(crate) fn subject(tenant: &TenantId) -> String {
    wire::recall_subject(tenant)
}

/// A recall request: the ids of requests whose replies are wanted again.
#[derive(Debug, Serialize, Deserialize)]
struct Recall {
    ids: Vec<MessageId>,
}

struct Kept {
    subject: String,
    headers: HeaderMap,
    payload: Bytes,
    at: Instant,
}

/// The replies a transport sent lately.
#[derive(Default)]
pub(crate) struct Recent {
    by_id: HashMap<MessageId, Kept>,
    order: VecDeque<MessageId>,
}

impl Recent {
    /// Keeps a reply just sent (or about to be).
    pub(crate) fn keep(
        &mut self,
        id: MessageId,
        subject: &str,
        headers: &HeaderMap,
        payload: &Bytes,
    ) {
        let now = Instant::now();
        while let Some(first) = self.order.front() {
            let old = self
                .by_id
                .get(first)
                .is_none_or(|k| now.duration_since(k.at) > KEEP);
            if !old && self.order.len() < CAPACITY {
                break;
            }
            if let Some(first) = self.order.pop_front() {
                self.by_id.remove(&first);
            }
        }
        let kept = Kept {
            subject: subject.to_owned(),
            headers: headers.clone(),
            payload: payload.clone(),
            at: now,
        };
        if self.by_id.insert(id, kept).is_none() {
            self.order.push_back(id);
        }
    }

    fn get(&self, id: &MessageId) -> Option<(String, HeaderMap, Bytes)> {
        self.by_id
            .get(id)
            .filter(|k| k.at.elapsed() <= KEEP)
            .map(|k| (k.subject.clone(), k.headers.clone(), k.payload.clone()))
    }

    fn since(&self, from: Instant) -> Vec<(String, HeaderMap, Bytes)> {
        self.order
            .iter()
            .filter_map(|id| self.by_id.get(id))
            .filter(|k| k.at >= from)
            .map(|k| (k.subject.clone(), k.headers.clone(), k.payload.clone()))
            .collect()
    }

    /// How many replies are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// The requests of a transport that wait for their reply.
/// (A request is forgotten when its reply comes, or its caller cancels it —
/// as a caller does on its timeout; those left are pruned past a size.)
#[derive(Default)]
pub(crate) struct Awaiting {
    by_id: HashMap<MessageId, (TenantId, Instant)>,
    /// The size past which old requests are pruned: doubled when a prune
    /// leaves many, so pruning stays rare.
    prune_at: usize,
}

impl Awaiting {
    pub(crate) fn insert(&mut self, id: MessageId, tenant: &TenantId) {
        if self.by_id.len() >= self.prune_at.max(AWAIT_PRUNE_AT) {
            self.by_id.retain(|_, (_, at)| at.elapsed() < AWAIT_LIMIT);
            self.prune_at = (2 * self.by_id.len()).max(AWAIT_PRUNE_AT);
        }
        self.by_id.insert(id, (tenant.clone(), Instant::now()));
    }

    pub(crate) fn remove(&mut self, id: &MessageId) {
        self.by_id.remove(id);
    }

    fn by_tenant(&self) -> HashMap<TenantId, Vec<MessageId>> {
        let mut out: HashMap<TenantId, Vec<MessageId>> = HashMap::new();
        for (id, (tenant, _)) in &self.by_id {
            out.entry(tenant.clone()).or_default().push(*id);
        }
        out
    }
}

/// After a reconnect: asks for the replies of the requests still waiting,
/// now and once more a second later; and sends again the replies this
/// transport sent from two seconds before its connection was lost.
pub(crate) async fn after_reconnect(shared: Arc<Shared>, lost_at: Option<Instant>) {
    if let Some(lost_at) = lost_at {
        let from = lost_at
            .checked_sub(Duration::from_secs(2))
            .unwrap_or(lost_at);
        let again = match shared.recent.lock() {
            Ok(r) => r.since(from),
            Err(_) => Vec::new(),
        };
        if !again.is_empty() {
            tracing::debug!(
                replies = again.len(),
                "sending again the replies sent around the disconnect"
            );
        }
        for (subject, headers, payload) in again {
            let _ = shared
                .client
                .publish_with_headers(subject, headers, payload)
                .await;
        }
    }
    for round in 0..2 {
        if round > 0 {
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
        let waiting = match shared.awaiting.lock() {
            Ok(a) => a.by_tenant(),
            Err(_) => return,
        };
        for (tenant, ids) in waiting {
            for chunk in ids.chunks(IDS_PER_RECALL) {
                let Ok(body) = serde_json::to_vec(&Recall {
                    ids: chunk.to_vec(),
                }) else {
                    continue;
                };
                tracing::debug!(%tenant, requests = chunk.len(), "asking for replies again after a reconnect");
                let _ = shared.client.publish(subject(&tenant), body.into()).await;
            }
        }
    }
}

/// Answers recall requests of `tenant` from the replies kept, until `token`
/// fires.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut sub: async_nats::Subscriber,
    token: tokio_util::sync::CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            () = token.cancelled() => break,
            () = shared.shutdown.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let recall: Recall = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(subject = %msg.subject, error = %e, "a recall request that is not one; ignored");
                continue;
            }
        };
        let found: Vec<_> = match shared.recent.lock() {
            Ok(r) => recall
                .ids
                .iter()
                .take(IDS_PER_RECALL)
                .filter_map(|id| r.get(id))
                .collect(),
            Err(_) => continue,
        };
        for (subject, headers, payload) in found {
            let _ = shared
                .client
                .publish_with_headers(subject, headers, payload)
                .await;
        }
    }
    let _ = sub.unsubscribe().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn keeps_the_latest_replies_up_to_its_capacity() {
        let mut r = Recent::default();
        let ids: Vec<MessageId> = (0..CAPACITY + 10).map(|_| MessageId::new()).collect();
        for id in &ids {
            r.keep(*id, "s", &HeaderMap::new(), &Bytes::from_static(b"x"));
        }
        assert_eq!(r.len(), CAPACITY);
        assert!(r.get(&ids[0]).is_none(), "the oldest went first");
        assert!(r.get(&ids[CAPACITY + 9]).is_some());
        let again = r.since(Instant::now() - Duration::from_secs(1));
        assert_eq!(again.len(), CAPACITY);
    }

    #[test]
    fn waiting_requests_are_forgotten_when_answered_and_grouped_by_tenant() {
        let mut a = Awaiting::default();
        let (t1, t2) = (TenantId::new("t1").unwrap(), TenantId::new("t2").unwrap());
        let (x, y, z) = (MessageId::new(), MessageId::new(), MessageId::new());
        a.insert(x, &t1);
        a.insert(y, &t1);
        a.insert(z, &t2);
        a.remove(&y);
        let by = a.by_tenant();
        assert_eq!(by.get(&t1), Some(&vec![x]));
        assert_eq!(by.get(&t2), Some(&vec![z]));
    }

    #[test]
    fn a_recall_is_json_with_ids_and_garbage_is_an_error() {
        let id = MessageId::new();
        let json = serde_json::to_vec(&Recall { ids: vec![id] }).unwrap();
        let back: Recall = serde_json::from_slice(&json).unwrap();
        assert_eq!(back.ids, vec![id]);
        assert!(serde_json::from_slice::<Recall>(b"\xff{ids").is_err());
    }
}
