//! The NATS JetStream store (feature `nats`): for fleets already on NATS.
//!
//! - **Journals**: one stream (`<name>_journal`) with a subject per run,
//!   `<name>.journal.<run>`. One append is one message holding its records'
//!   frames back to back, so an append is atomic; its headers say which
//!   sequence numbers it holds and the fencing token it was written with.
//!   The expected-sequence check is the server's: each append is published
//!   with `Nats-Expected-Last-Subject-Sequence` set to the stream sequence of
//!   the run's last message, so of two writers at one position the server
//!   takes exactly one.
//! - **Run index, snapshots, leases**: one KV bucket (`<name>_runs`) with keys
//!   `r.<run>` (the entry), `t.<tenant>.<run>` (for listing a tenant's runs),
//!   `s.<run>` (the latest snapshot) and `l.<run>` (the lease), each changed
//!   by revision-checked compare-and-set.
//! - **Fencing**: taking a lease is a compare-and-set of `l.<run>` that raises
//!   its token, followed by a marker message on the run's journal subject
//!   carrying the new token (published against the subject's last sequence,
//!   like an append). Once `acquire_lease` returns, every append of an older
//!   token is refused: either its publish loses to the marker at the server,
//!   or it sees the marker's token first.
//!
//! Durability: an append returns when the stream has acknowledged it (stored
//! on the leader's file store and, with replicas, on a quorum). The server
//! fsyncs its files every `sync_interval` (2 minutes by default; set
//! `sync_interval: always` in its `jetstream` block to fsync every message),
//! so a power loss of an unreplicated server can lose acknowledged appends,
//! while a crash of its process does not. [`Durability::Batched`] is treated
//! as `PerRecord`. Lease expiry uses the clients' clocks, which must agree
//! within a fraction of the lease TTL. Listing reads the tenant's keys, so it
//! costs in proportion to the tenant's runs; for very large tenants use
//! PostgreSQL. An append must fit the server's `max_payload` (1 MiB by
//! default) as one message.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::RunId;

#[cfg(feature = "test-utils")]
use super::record::split_frames;
use super::record::{check_append, check_snapshot, decode_range, decode_snapshot, encode_into};
use super::{
    Cursor, Durability, FencingToken, Lease, NewRecord, NewRun, Record, RunPage, RunQuery,
    RunRecord, RunStatus, Snapshot, Store, StoreError, StoreOptions, check_fence, check_lease_args,
    from_ms, now_ms,
};

const BACKEND: &str = "nats";

/// The first sequence number a journal message holds.
const H_FIRST: &str = "Coditect-First";
/// The journal's next sequence number after the message.
const H_NEXT: &str = "Coditect-Next";
/// The fencing token the message was written with (0: none).
const H_FENCE: &str = "Coditect-Fence";

/// Room left in a message for its headers.
const HEADER_ROOM: usize = 512;

/// How long a read waits for the next message of a journal it knows is there.
const READ_WAIT: Duration = Duration::from_secs(10);

/// How often a compare-and-set that lost a race is tried again.
const CAS_TRIES: usize = 16;

/// A [`Store`] on NATS JetStream: a stream for journals, a KV bucket for the
/// rest.
///
/// ```no_run
/// use std::sync::Arc;
/// use coditect_orchestrator::store::{JetStreamStore, Store, StoreOptions};
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let client = async_nats::connect("nats://127.0.0.1:4222").await?;
/// let store: Arc<dyn Store> = Arc::new(JetStreamStore::open(client, StoreOptions::default()).await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct JetStreamStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    journal: stream::Stream,
    kv: kv::Store,
    subject_prefix: String,
    options: StoreOptions,
    /// The last journal message of each run this handle wrote, to spare a
    /// lookup per append (a stale entry only costs a refused publish).
    tails: Mutex<HashMap<RunId, Tail>>,
    /// Runs this handle has seen in the index.
    known: Mutex<HashSet<RunId>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamStore")
            .field("subjects", &self.subject_prefix)
            .field("bucket", &self.kv.name)
            .finish_non_exhaustive()
    }
}

/// The last message on a run's journal subject.
#[derive(Debug, Clone, Copy, Default)]
struct Tail {
    /// Its stream sequence (0: the subject is empty).
    stream_seq: u64,
    /// The journal's next record sequence number.
    next: u64,
    /// The fencing token it carries.
    fence: u64,
}

/// A lease as stored under `l.<run>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredLease {
    holder: Option<String>,
    token: u64,
    expires_ms: i64,
}

fn nats_err<E>(op: &'static str) -> impl FnOnce(E) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |e| StoreError::backend(BACKEND, op, e)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change under these locks is one insert or remove.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.as_str().parse().ok()
}

impl JetStreamStore {
    /// Opens the store named `coditect` (stream `coditect_journal`, bucket
    /// `coditect_runs`), creating them if missing, with one replica.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if JetStream is not available.
    pub async fn open(
        client: async_nats::Client,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        Self::open_named(client, "coditect", 1, options).await
    }

    /// Opens the store `name` (letters, digits, `-`, `_`) with `replicas`
    /// replicas for a new stream and bucket.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a bad name, [`StoreError::Backend`] if
    /// JetStream is not available.
    pub async fn open_named(
        client: async_nats::Client,
        name: &str,
        replicas: usize,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(StoreError::Invalid(format!(
                "store name {name:?}: letters, digits, - and _ only"
            )));
        }
        let js = jetstream::new(client.clone());
        let subject_prefix = format!("{name}.journal.");
        let journal = js
            .get_or_create_stream(stream::Config {
                name: format!("{name}_journal"),
                subjects: vec![format!("{subject_prefix}>")],
                storage: stream::StorageType::File,
                num_replicas: replicas.max(1),
                allow_direct: true,
                ..Default::default()
            })
            .await
            .map_err(nats_err("create the journal stream"))?;
        let bucket = format!("{name}_runs");
        // The bucket's stream made by hand, as a KV bucket is laid out:
        // async-nats's create_key_value first asks for account details that
        // nats-server 2.9 answers in a shape it does not parse.
        js.get_or_create_stream(stream::Config {
            name: format!("KV_{bucket}"),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: replicas.max(1),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .map_err(nats_err("create the run bucket"))?;
        let kv = js
            .get_key_value(&bucket)
            .await
            .map_err(nats_err("open the run bucket"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                journal,
                kv,
                subject_prefix,
                options: options.durability(Durability::PerRecord),
                tails: Mutex::default(),
                known: Mutex::default(),
            }),
        })
    }

    fn subject(&self, run: RunId) -> String {
        format!("{}{run}", self.inner.subject_prefix)
    }

    fn max_message(&self) -> usize {
        self.inner
            .client
            .server_info()
            .max_payload
            .saturating_sub(HEADER_ROOM)
    }

    /// The KV entry at `key`, if it holds a value (not deleted), with its
    /// revision; `Err(revision)` of the deletion marker otherwise.
    async fn entry(&self, key: &str) -> Result<Result<kv::Entry, u64>, StoreError> {
        match self
            .inner
            .kv
            .entry(key)
            .await
            .map_err(nats_err("read the run bucket"))?
        {
            Some(e) if e.operation == kv::Operation::Put => Ok(Ok(e)),
            Some(e) => Ok(Err(e.revision)),
            None => Ok(Err(0)),
        }
    }

    /// Writes `value` at `key` if it is still at `revision` (0: absent).
    async fn cas(&self, key: &str, value: Bytes, revision: u64) -> Result<bool, StoreError> {
        let r = if revision == 0 {
            self.inner
                .kv
                .create(key, value)
                .await
                .map(|_| ())
                .map_err(|e| {
                    if e.kind() == kv::CreateErrorKind::AlreadyExists {
                        None
                    } else {
                        Some(StoreError::backend(BACKEND, "write the run bucket", e))
                    }
                })
        } else {
            self.inner
                .kv
                .update(key, value, revision)
                .await
                .map(|_| ())
                .map_err(|e| {
                    if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                        None
                    } else {
                        Some(StoreError::backend(BACKEND, "write the run bucket", e))
                    }
                })
        };
        match r {
            Ok(()) => Ok(true),
            Err(None) => Ok(false),
            Err(Some(e)) => Err(e),
        }
    }

    async fn record(&self, run: RunId) -> Result<(RunRecord, u64), StoreError> {
        let e = self
            .entry(&format!("r.{run}"))
            .await?
            .map_err(|_| StoreError::NotFound { run })?;
        let record =
            serde_json::from_slice(&e.value).map_err(nats_err("read a run's index entry"))?;
        lock(&self.inner.known).insert(run);
        Ok((record, e.revision))
    }

    async fn ensure_run(&self, run: RunId) -> Result<(), StoreError> {
        if lock(&self.inner.known).contains(&run) {
            return Ok(());
        }
        self.record(run).await.map(|_| ())
    }

    /// The run's last journal message, as the server has it now.
    async fn fetch_tail(&self, run: RunId) -> Result<Tail, StoreError> {
        match self
            .inner
            .journal
            .get_last_raw_message_by_subject(&self.subject(run))
            .await
        {
            Ok(m) => {
                let bad = || StoreError::Corrupt {
                    run,
                    seq: 0,
                    what: "record",
                    reason: format!("journal message {} lacks its headers", m.sequence),
                };
                let tail = Tail {
                    stream_seq: m.sequence,
                    next: header_u64(&m.headers, H_NEXT).ok_or_else(bad)?,
                    fence: header_u64(&m.headers, H_FENCE).ok_or_else(bad)?,
                };
                lock(&self.inner.tails).insert(run, tail);
                Ok(tail)
            }
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(Tail::default())
            }
            Err(e) => Err(StoreError::backend(BACKEND, "read a journal's end", e)),
        }
    }

    /// Publishes one journal message against `tail`; `Ok(None)` if the
    /// subject moved on (another writer got there first).
    async fn publish(
        &self,
        run: RunId,
        tail: Tail,
        first: u64,
        next: u64,
        fence: u64,
        body: Bytes,
    ) -> Result<Option<Tail>, StoreError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            tail.stream_seq.to_string().as_str(),
        );
        headers.insert(H_FIRST, first.to_string().as_str());
        headers.insert(H_NEXT, next.to_string().as_str());
        headers.insert(H_FENCE, fence.to_string().as_str());
        let size = body.len();
        let ack = match self
            .inner
            .js
            .publish_with_headers(self.subject(run), headers, body)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => {
                let tail = Tail {
                    stream_seq: ack.sequence,
                    next,
                    fence,
                };
                lock(&self.inner.tails).insert(run, tail);
                Ok(Some(tail))
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                lock(&self.inner.tails).remove(&run);
                Ok(None)
            }
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                Err(StoreError::TooLarge {
                    run,
                    what: "append",
                    size,
                    limit: self.max_message(),
                })
            }
            Err(e) => Err(StoreError::backend(BACKEND, "publish to a journal", e)),
        }
    }

    /// The keys of a tenant's runs in the index (`t.<tenant>.<run>`).
    async fn tenant_runs(&self, tenant: &str) -> Result<Vec<RunId>, StoreError> {
        let kv = &self.inner.kv;
        let filter = format!("{}t.{tenant}.*", kv.prefix);
        let consumer = kv
            .stream
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.inner.client.new_inbox(),
                filter_subject: filter,
                headers_only: true,
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(nats_err("list a tenant's runs"))?;
        let mut out = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(out);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(nats_err("list a tenant's runs"))?;
        let key_prefix = format!("{}t.{tenant}.", kv.prefix);
        loop {
            let m = tokio::time::timeout(READ_WAIT, messages.next())
                .await
                .map_err(nats_err("list a tenant's runs"))?
                .ok_or_else(|| {
                    StoreError::backend(
                        BACKEND,
                        "list a tenant's runs",
                        std::io::Error::other("the listing ended early"),
                    )
                })?
                .map_err(nats_err("list a tenant's runs"))?;
            let pending = m.info().map(|i| i.pending).unwrap_or(0);
            let deleted = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_some_and(|op| op.as_str() != "PUT");
            if !deleted
                && let Some(id) = m.subject.as_str().strip_prefix(&key_prefix)
                && let Ok(id) = id.parse::<RunId>()
            {
                out.push(id);
            }
            if pending == 0 {
                return Ok(out);
            }
        }
    }

    /// A run's journal messages from the first, then each new one as the
    /// server stores it.
    async fn watch_journal(
        &self,
        run: RunId,
    ) -> Result<jetstream::consumer::push::Ordered, StoreError> {
        self.record(run).await?;
        self.journal_consumer(run, "follow a journal")
            .await?
            .messages()
            .await
            .map_err(nats_err("follow a journal"))
    }

    /// An ordered push consumer over a run's journal, from its first message.
    async fn journal_consumer(
        &self,
        run: RunId,
        what: &'static str,
    ) -> Result<jetstream::consumer::Consumer<jetstream::consumer::push::OrderedConfig>, StoreError>
    {
        self.inner
            .journal
            .create_consumer(jetstream::consumer::push::OrderedConfig {
                deliver_subject: self.inner.client.new_inbox(),
                filter_subject: self.subject(run),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                replay_policy: jetstream::consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(nats_err(what))
    }

    /// Every message of a run's journal, in order, as `(headers, payload)`.
    async fn journal_messages(
        &self,
        run: RunId,
        mut keep_going: impl FnMut(&HeaderMap, &Bytes) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let consumer = self.journal_consumer(run, "read a journal").await?;
        if consumer.cached_info().num_pending == 0 {
            return Ok(());
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(nats_err("read a journal"))?;
        loop {
            let m = tokio::time::timeout(READ_WAIT, messages.next())
                .await
                .map_err(nats_err("read a journal"))?
                .ok_or_else(|| {
                    StoreError::backend(
                        BACKEND,
                        "read a journal",
                        std::io::Error::other("the journal ended early"),
                    )
                })?
                .map_err(nats_err("read a journal"))?;
            let pending = m.info().map(|i| i.pending).unwrap_or(0);
            let headers = m.headers.clone().unwrap_or_default();
            if !keep_going(&headers, &m.payload)? || pending == 0 {
                return Ok(());
            }
        }
    }

    /// Replaces the stored bytes of record `seq` of `run`, bypassing every
    /// check: how the conformance suite stores a damaged or future record.
    /// The run's journal messages are rewritten with that one frame changed.
    ///
    /// # Errors
    /// [`StoreError`] if the journal cannot be read or written, or has no
    /// record `seq`.
    #[cfg(feature = "test-utils")]
    pub async fn overwrite_stored_record(
        &self,
        run: RunId,
        seq: u64,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let mut messages: Vec<(HeaderMap, Bytes)> = Vec::new();
        self.journal_messages(run, |h, p| {
            messages.push((h.clone(), p.clone()));
            Ok(true)
        })
        .await?;
        let mut found = false;
        for (h, p) in &mut messages {
            let (Some(first), Some(next)) = (header_u64(h, H_FIRST), header_u64(h, H_NEXT)) else {
                continue;
            };
            if (first..next).contains(&seq) {
                let frames = split_frames(p)
                    .ok_or_else(|| StoreError::Invalid("journal message does not split".into()))?;
                let mut body = Vec::new();
                for (i, f) in frames.iter().enumerate() {
                    if first + i as u64 == seq {
                        body.extend_from_slice(&bytes);
                    } else {
                        body.extend_from_slice(f);
                    }
                }
                *p = Bytes::from(body);
                found = true;
            }
        }
        if !found {
            return Err(StoreError::Invalid(format!("no record {seq} of {run}")));
        }
        self.inner
            .journal
            .purge()
            .filter(self.subject(run))
            .await
            .map_err(nats_err("purge a journal"))?;
        lock(&self.inner.tails).remove(&run);
        for (h, p) in messages {
            let mut clean = HeaderMap::new();
            for name in [H_FIRST, H_NEXT, H_FENCE] {
                if let Some(v) = h.get(name) {
                    clean.insert(name, v.as_str());
                }
            }
            self.inner
                .js
                .publish_with_headers(self.subject(run), clean, p)
                .await
                .map_err(nats_err("rewrite a journal"))?
                .await
                .map_err(nats_err("rewrite a journal"))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Store for JetStreamStore {
    async fn create_run(&self, run: NewRun) -> Result<RunRecord, StoreError> {
        let now = from_ms(now_ms());
        let record = RunRecord {
            id: run.id,
            tenant: run.tenant,
            status: RunStatus::Running,
            goal: run.goal,
            summary: None,
            created_at: now,
            updated_at: now,
        };
        let value = serde_json::to_vec(&record).map_err(nats_err("write a run"))?;
        match self
            .inner
            .kv
            .create(format!("r.{}", run.id), value.into())
            .await
        {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                return Err(StoreError::AlreadyExists { run: run.id });
            }
            Err(e) => return Err(StoreError::backend(BACKEND, "create a run", e)),
        }
        self.inner
            .kv
            .put(format!("t.{}.{}", record.tenant, run.id), Bytes::new())
            .await
            .map_err(nats_err("index a run"))?;
        lock(&self.inner.known).insert(run.id);
        Ok(record)
    }

    async fn run(&self, run: RunId) -> Result<RunRecord, StoreError> {
        Ok(self.record(run).await?.0)
    }

    async fn set_status(
        &self,
        run: RunId,
        status: RunStatus,
        summary: Option<String>,
    ) -> Result<RunRecord, StoreError> {
        for _ in 0..CAS_TRIES {
            let (mut record, revision) = self.record(run).await?;
            record.status = status;
            if summary.is_some() {
                record.summary.clone_from(&summary);
            }
            record.updated_at = record.updated_at.max(from_ms(now_ms()));
            let value = serde_json::to_vec(&record).map_err(nats_err("write a run"))?;
            if self
                .cas(&format!("r.{run}"), value.into(), revision)
                .await?
            {
                return Ok(record);
            }
        }
        Err(StoreError::backend(
            BACKEND,
            "set a run's status",
            std::io::Error::other("the entry kept changing"),
        ))
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        query.check()?;
        let mut ids = self.tenant_runs(query.tenant.as_str()).await?;
        ids.sort_unstable_by(|a, b| b.cmp(a));
        let before = query.after.map(|c| c.run());
        let mut runs = Vec::new();
        let mut more = false;
        for id in ids.into_iter().filter(|id| before.is_none_or(|b| *id < b)) {
            let record = match self.record(id).await {
                Ok((r, _)) => r,
                // Deleted between the listing and now.
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            if record.tenant != query.tenant || query.status.is_some_and(|s| s != record.status) {
                continue;
            }
            if runs.len() == query.limit {
                more = true;
                break;
            }
            runs.push(record);
        }
        let next = if more {
            runs.last().map(|r: &RunRecord| Cursor::after_run(r.id))
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    async fn delete_run(&self, run: RunId) -> Result<(), StoreError> {
        let (record, _) = self.record(run).await?;
        if !record.status.is_terminal() {
            return Err(StoreError::RunActive {
                run,
                status: record.status,
            });
        }
        // The journal first and the entry last: a delete cut short leaves a
        // finished run to delete again, never a journal without its run.
        self.inner
            .journal
            .purge()
            .filter(self.subject(run))
            .await
            .map_err(nats_err("delete a journal"))?;
        lock(&self.inner.tails).remove(&run);
        for key in [
            format!("s.{run}"),
            format!("l.{run}"),
            format!("t.{}.{run}", record.tenant),
            format!("r.{run}"),
        ] {
            self.inner
                .kv
                .purge(&key)
                .await
                .map_err(nats_err("delete a run"))?;
        }
        lock(&self.inner.known).remove(&run);
        Ok(())
    }

    async fn append(
        &self,
        run: RunId,
        expected_seq: u64,
        fence: Option<FencingToken>,
        records: &[NewRecord],
    ) -> Result<u64, StoreError> {
        check_append(run, records, self.inner.options.max_record_bytes)?;
        let mut body = Vec::new();
        for (i, r) in records.iter().enumerate() {
            encode_into(expected_seq + i as u64, r.kind(), r.payload(), &mut body);
        }
        if body.len() > self.max_message() {
            return Err(StoreError::TooLarge {
                run,
                what: "append",
                size: body.len(),
                limit: self.max_message(),
            });
        }
        self.ensure_run(run).await?;
        let body = Bytes::from(body);
        let next = expected_seq + records.len() as u64;
        let token = fence.map_or(0, FencingToken::get);
        let mut cached = lock(&self.inner.tails).get(&run).copied();
        for _ in 0..CAS_TRIES {
            let (tail, from_cache) = match cached.take() {
                Some(t) => (t, true),
                None => (self.fetch_tail(run).await?, false),
            };
            check_fence(run, fence, tail.fence)?;
            if tail.next != expected_seq {
                if from_cache {
                    continue;
                }
                return Err(StoreError::Conflict {
                    run,
                    expected: expected_seq,
                    actual: tail.next,
                });
            }
            if records.is_empty() {
                if from_cache {
                    continue;
                }
                return Ok(next);
            }
            if self
                .publish(run, tail, expected_seq, next, token, body.clone())
                .await?
                .is_some()
            {
                return Ok(next);
            }
            // The subject moved on: look at what is there now.
        }
        Err(StoreError::backend(
            BACKEND,
            "append",
            std::io::Error::other("the journal kept moving under this append"),
        ))
    }

    async fn read(
        &self,
        run: RunId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.record(run).await?;
        let mut out: Vec<Record> = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let mut at = from_seq;
        self.journal_messages(run, |h, payload| {
            let got = message_records(run, h, payload, at, limit - out.len())?;
            at += got.len() as u64;
            out.extend(got);
            Ok(out.len() < limit)
        })
        .await?;
        Ok(out)
    }

    /// Pushed, not polled: an ordered push consumer on the run's journal
    /// subject hands over each append as the server stores it (`every` is
    /// not used). A consumer error ends the stream with it; follow again
    /// from the next sequence number to go on.
    fn follow(
        &self,
        run: RunId,
        from_seq: u64,
        _every: Duration,
    ) -> BoxStream<'_, Result<Record, StoreError>> {
        struct Live {
            messages: Option<jetstream::consumer::push::Ordered>,
            at: u64,
            ready: VecDeque<Record>,
            done: bool,
        }
        let live = Live {
            messages: None,
            at: from_seq,
            ready: VecDeque::new(),
            done: false,
        };
        let failed = |mut live: Live, e: StoreError| {
            live.done = true;
            Some((Err(e), live))
        };
        Box::pin(futures::stream::unfold(live, move |mut live| async move {
            if live.done {
                return None;
            }
            loop {
                if let Some(record) = live.ready.pop_front() {
                    return Some((Ok(record), live));
                }
                let messages = match live.messages.as_mut() {
                    Some(m) => m,
                    None => match self.watch_journal(run).await {
                        Ok(m) => live.messages.insert(m),
                        Err(e) => return failed(live, e),
                    },
                };
                let m = match messages.next().await {
                    Some(Ok(m)) => m,
                    Some(Err(e)) => return failed(live, nats_err("follow a journal")(e)),
                    None => {
                        let e = std::io::Error::other("the journal's consumer ended");
                        return failed(live, nats_err("follow a journal")(e));
                    }
                };
                let headers = m.headers.clone().unwrap_or_default();
                match message_records(run, &headers, &m.payload, live.at, usize::MAX) {
                    Ok(records) => {
                        live.at += records.len() as u64;
                        live.ready.extend(records);
                    }
                    Err(e) => return failed(live, e),
                }
            }
        }))
    }

    async fn head(&self, run: RunId) -> Result<u64, StoreError> {
        self.record(run).await?;
        Ok(self.fetch_tail(run).await?.next)
    }

    async fn put_snapshot(&self, run: RunId, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_snapshot(run, snapshot, self.inner.options.max_snapshot_bytes)?;
        let frame = Bytes::from(super::record::encode_snapshot(snapshot));
        if frame.len() > self.max_message() {
            return Err(StoreError::TooLarge {
                run,
                what: "snapshot",
                size: frame.len(),
                limit: self.max_message(),
            });
        }
        self.ensure_run(run).await?;
        let key = format!("s.{run}");
        for _ in 0..CAS_TRIES {
            let revision = match self.entry(&key).await? {
                Ok(e) => {
                    if let Ok(old) = decode_snapshot(run, 0, &e.value)
                        && old.seq > snapshot.seq
                    {
                        return Ok(());
                    }
                    e.revision
                }
                Err(rev) => rev,
            };
            let written = if revision == 0 {
                self.cas(&key, frame.clone(), 0).await?
            } else {
                self.inner
                    .kv
                    .update(&key, frame.clone(), revision)
                    .await
                    .map(|_| true)
                    .or_else(|e| {
                        if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                            Ok(false)
                        } else {
                            Err(StoreError::backend(BACKEND, "store a snapshot", e))
                        }
                    })?
            };
            if written {
                return Ok(());
            }
        }
        Err(StoreError::backend(
            BACKEND,
            "store a snapshot",
            std::io::Error::other("the snapshot kept changing"),
        ))
    }

    async fn latest_snapshot(&self, run: RunId) -> Result<Option<Snapshot>, StoreError> {
        self.record(run).await?;
        match self.entry(&format!("s.{run}")).await? {
            Ok(e) => {
                // The frame names its own seq; use it in errors when readable.
                let seq = e
                    .value
                    .get(1..9)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                decode_snapshot(run, seq, &e.value).map(Some)
            }
            Err(_) => Ok(None),
        }
    }

    async fn acquire_lease(
        &self,
        run: RunId,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        check_lease_args(holder, ttl)?;
        self.record(run).await?;
        let key = format!("l.{run}");
        let ttl = ttl.as_millis().min(i64::MAX as u128 / 4) as i64;
        let mut taken = None;
        for _ in 0..CAS_TRIES {
            let now = now_ms();
            let (old, revision) = match self.entry(&key).await? {
                Ok(e) => (
                    Some(
                        serde_json::from_slice::<StoredLease>(&e.value)
                            .map_err(nats_err("read a lease"))?,
                    ),
                    e.revision,
                ),
                Err(rev) => (None, rev),
            };
            if let Some(StoredLease {
                holder: Some(h),
                expires_ms,
                ..
            }) = &old
                && *expires_ms > now
                && h != holder
            {
                return Err(StoreError::Busy {
                    run,
                    holder: h.clone(),
                    expires: from_ms(*expires_ms),
                });
            }
            let new = StoredLease {
                holder: Some(holder.to_owned()),
                token: old.map_or(0, |l| l.token) + 1,
                expires_ms: now.saturating_add(ttl),
            };
            let value = serde_json::to_vec(&new).map_err(nats_err("write a lease"))?;
            if self.cas(&key, value.into(), revision).await? {
                taken = Some(new);
                break;
            }
        }
        let Some(new) = taken else {
            return Err(StoreError::backend(
                BACKEND,
                "take a lease",
                std::io::Error::other("the lease kept changing hands"),
            ));
        };
        // The marker: from here on the journal itself refuses older tokens.
        for _ in 0..CAS_TRIES {
            let tail = self.fetch_tail(run).await?;
            if tail.fence > new.token {
                return Err(StoreError::Fenced {
                    run,
                    token: Some(FencingToken::new(new.token)),
                    current: tail.fence,
                });
            }
            if self
                .publish(run, tail, tail.next, tail.next, new.token, Bytes::new())
                .await?
                .is_some()
            {
                return Ok(Lease {
                    run,
                    holder: holder.to_owned(),
                    token: FencingToken::new(new.token),
                    expires: from_ms(new.expires_ms),
                });
            }
        }
        Err(StoreError::backend(
            BACKEND,
            "fence a journal",
            std::io::Error::other("the journal kept moving"),
        ))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        check_lease_args(&lease.holder, ttl)?;
        let run = lease.run;
        let key = format!("l.{run}");
        let ttl = ttl.as_millis().min(i64::MAX as u128 / 4) as i64;
        for _ in 0..CAS_TRIES {
            let Ok(e) = self.entry(&key).await? else {
                self.record(run).await?;
                return Err(StoreError::Fenced {
                    run,
                    token: Some(lease.token),
                    current: 0,
                });
            };
            let old: StoredLease =
                serde_json::from_slice(&e.value).map_err(nats_err("read a lease"))?;
            if old.token != lease.token.get() || old.holder.is_none() {
                return Err(StoreError::Fenced {
                    run,
                    token: Some(lease.token),
                    current: old.token,
                });
            }
            let new = StoredLease {
                expires_ms: now_ms().saturating_add(ttl),
                ..old
            };
            let value = serde_json::to_vec(&new).map_err(nats_err("write a lease"))?;
            if self.cas(&key, value.into(), e.revision).await? {
                return Ok(Lease {
                    expires: from_ms(new.expires_ms),
                    ..lease.clone()
                });
            }
        }
        Err(StoreError::backend(
            BACKEND,
            "renew a lease",
            std::io::Error::other("the lease kept changing"),
        ))
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let run = lease.run;
        let key = format!("l.{run}");
        for _ in 0..CAS_TRIES {
            let Ok(e) = self.entry(&key).await? else {
                self.record(run).await?;
                return Err(StoreError::Fenced {
                    run,
                    token: Some(lease.token),
                    current: 0,
                });
            };
            let old: StoredLease =
                serde_json::from_slice(&e.value).map_err(nats_err("read a lease"))?;
            if old.token != lease.token.get() {
                return Err(StoreError::Fenced {
                    run,
                    token: Some(lease.token),
                    current: old.token,
                });
            }
            let new = StoredLease {
                holder: None,
                expires_ms: 0,
                ..old
            };
            let value = serde_json::to_vec(&new).map_err(nats_err("write a lease"))?;
            if self.cas(&key, value.into(), e.revision).await? {
                return Ok(());
            }
        }
        Err(StoreError::backend(
            BACKEND,
            "release a lease",
            std::io::Error::other("the lease kept changing"),
        ))
    }
}

/// The records of one journal message from `at` on (at most `want`): none
/// for a message wholly before `at` (or a lease marker).
fn message_records(
    run: RunId,
    h: &HeaderMap,
    payload: &Bytes,
    at: u64,
    want: usize,
) -> Result<Vec<Record>, StoreError> {
    let corrupt = |seq: u64, reason: String| StoreError::Corrupt {
        run,
        seq,
        what: "record",
        reason,
    };
    let (Some(first), Some(next)) = (header_u64(h, H_FIRST), header_u64(h, H_NEXT)) else {
        return Err(corrupt(at, "a journal message lacks its headers".into()));
    };
    if next <= at {
        return Ok(Vec::new());
    }
    if first > at {
        return Err(corrupt(
            at,
            format!("missing: the journal goes on at seq {first}"),
        ));
    }
    let want = (want as u64).min(next - at) as usize;
    let got = decode_range(run, first, payload, at, want)?;
    if got.len() != want {
        return Err(corrupt(
            at + got.len() as u64,
            format!("a journal message holds fewer records than its headers say ({first}..{next})"),
        ));
    }
    Ok(got)
}
