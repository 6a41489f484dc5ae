//! The tenant's card bucket: the JetStream KV bucket `CODITECT_CARDS_<tenant>`
//! where every runtime on the bus advertises the kinds it hosts.
//!
//! This layer moves bytes under keys; what the bytes mean (a card, its node,
//! its load) is the runtime's business. An advert stays alive while its
//! writer rewrites it: the bucket's max age drops a key whose last write is
//! older than the time to live, and readers drop it on their own clock too
//! (the server sends no event when max age removes a value). Bucket max age
//! and rewrites work on every JetStream server this transport supports
//! (2.9 and later); per-message TTLs would need 2.11.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{Operation, Store};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};
use bytes::Bytes;
use futures::{Stream, StreamExt};

use super::NatsTransport;
use crate::id::TenantId;
use crate::transport::{TransportError, TransportErrorKind};

/// The name of a tenant's card bucket.
pub(crate) fn card_bucket(tenant: &TenantId) -> String {
    format!("CODITECT_CARDS_{tenant}")
}

/// One change in the bucket, as a watcher sees it.
#[derive(Debug)]
pub(crate) struct CardChange {
    /// The key.
    pub(crate) key: String,
    /// The new value, or `None` when the key was deleted.
    pub(crate) value: Option<Bytes>,
    /// How long ago the server stored it.
    pub(crate) age: Duration,
}

/// A tenant's card bucket.
#[derive(Clone)]
pub(crate) struct CardBucket {
    kv: Store,
}

fn err(what: &str, e: impl std::fmt::Display) -> TransportError {
    let text = e.to_string();
    let kind = if text.to_lowercase().contains("permission") || text.contains("authorization") {
        TransportErrorKind::PermissionDenied
    } else {
        TransportErrorKind::Connection
    };
    TransportError::new(kind, format!("{what}: {text}"))
}

impl CardBucket {
    /// Opens (creating if needed) the bucket of `tenant`, whose values expire
    /// `ttl` after their last write.
    pub(crate) async fn open(
        transport: &NatsTransport,
        tenant: &TenantId,
        ttl: Duration,
    ) -> Result<Self, TransportError> {
        let shared = &transport.shared;
        let bucket = card_bucket(tenant);
        // Made by hand rather than by `create_key_value`, which reads the
        // account info in a shape nats-server 2.9 does not answer with: the
        // layout of a KV bucket (one value per key) with a max age.
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
                storage: StorageType::Memory,
                num_replicas: shared.options.durable.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| err("cannot set up the card bucket", e))?;
        let kv = shared
            .js
            .get_key_value(&bucket)
            .await
            .map_err(|e| err("cannot open the card bucket", e))?;
        Ok(Self { kv })
    }

    /// Writes a value.
    pub(crate) async fn put(&self, key: &str, value: Bytes) -> Result<(), TransportError> {
        self.kv
            .put(key, value)
            .await
            .map(|_| ())
            .map_err(|e| err("cannot write to the card bucket", e))
    }

    /// Deletes a key (watchers see it at once).
    pub(crate) async fn delete(&self, key: &str) -> Result<(), TransportError> {
        self.kv
            .delete(key)
            .await
            .map_err(|e| err("cannot delete from the card bucket", e))
    }

    /// How many values the bucket holds now (deleted keys count until the
    /// server drops their markers).
    pub(crate) async fn len(&self) -> Result<u64, TransportError> {
        self.kv
            .status()
            .await
            .map(|s| s.values())
            .map_err(|e| err("cannot read the card bucket", e))
    }

    /// Every current value, then every change, until the connection fails
    /// (the stream then ends; open another).
    pub(crate) async fn watch(
        &self,
    ) -> Result<impl Stream<Item = CardChange> + Send + use<>, TransportError> {
        let watch = self
            .kv
            .watch_all()
            .await
            .map_err(|e| err("cannot watch the card bucket", e))?;
        Ok(watch
            .take_while(|e| std::future::ready(e.is_ok()))
            .filter_map(|e| async move {
                let e = e.ok()?;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let at = u128::try_from(e.created.unix_timestamp_nanos()).unwrap_or(0);
                let age =
                    Duration::from_nanos(u64::try_from(now.saturating_sub(at)).unwrap_or(u64::MAX));
                let value = match e.operation {
                    Operation::Put => Some(e.value),
                    Operation::Delete | Operation::Purge => None,
                };
                Some(CardChange {
                    key: e.key,
                    value,
                    age,
                })
            }))
    }
}
