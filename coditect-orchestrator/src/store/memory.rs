//! The in-memory store: the embedded default, gone with the process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::RunId;

use super::record::{
    check_append, check_snapshot, decode_record, decode_snapshot, encode_into, encode_snapshot,
};
use super::{
    Cursor, FencingToken, Lease, NewRecord, NewRun, Record, RunPage, RunQuery, RunRecord,
    RunStatus, Snapshot, Store, StoreError, StoreOptions, check_fence, check_lease_args, from_ms,
    now_ms,
};

/// A [`Store`] in this process's memory: what the quickstart and tests use.
///
/// Records are kept in the same checksummed frames the durable backends
/// write, so it behaves like them in every check of the conformance suite.
/// Clones share the store. [`StoreOptions::durability`] does not apply:
/// nothing survives the process.
///
/// ```
/// use coditect_orchestrator::store::{MemoryStore, Store};
/// let store = MemoryStore::new();
/// let same = store.clone();
/// # let _ = same;
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    options: StoreOptions,
    runs: Mutex<BTreeMap<RunId, Entry>>,
}

#[derive(Debug)]
struct Entry {
    record: RunRecord,
    frames: Vec<Bytes>,
    snapshot: Option<(u64, Bytes)>,
    fence: u64,
    lease: Option<(String, i64)>,
}

impl MemoryStore {
    /// An empty store with the default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with `options` (only the record size limit applies).
    pub fn with_options(options: StoreOptions) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                runs: Mutex::default(),
            }),
        }
    }

    /// Replaces the stored bytes of record `seq` of `run`, bypassing every
    /// check: how the conformance suite stores a damaged or future record.
    /// Returns whether the record existed.
    #[cfg(feature = "test-utils")]
    pub fn overwrite_stored_record(&self, run: RunId, seq: u64, bytes: Vec<u8>) -> bool {
        let mut runs = self.lock();
        match runs
            .get_mut(&run)
            .and_then(|e| e.frames.get_mut(usize::try_from(seq).ok()?))
        {
            Some(f) => {
                *f = Bytes::from(bytes);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<RunId, Entry>> {
        // A panic while holding the lock cannot leave an entry half-changed
        // (every change is a single assignment), so a poisoned lock is safe.
        self.inner
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn entry(runs: &mut BTreeMap<RunId, Entry>, run: RunId) -> Result<&mut Entry, StoreError> {
    runs.get_mut(&run).ok_or(StoreError::NotFound { run })
}

#[async_trait]
impl Store for MemoryStore {
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
        let mut runs = self.lock();
        if runs.contains_key(&run.id) {
            return Err(StoreError::AlreadyExists { run: run.id });
        }
        runs.insert(
            run.id,
            Entry {
                record: record.clone(),
                frames: Vec::new(),
                snapshot: None,
                fence: 0,
                lease: None,
            },
        );
        Ok(record)
    }

    async fn run(&self, run: RunId) -> Result<RunRecord, StoreError> {
        Ok(entry(&mut self.lock(), run)?.record.clone())
    }

    async fn set_status(
        &self,
        run: RunId,
        status: RunStatus,
        summary: Option<String>,
    ) -> Result<RunRecord, StoreError> {
        let mut runs = self.lock();
        let e = entry(&mut runs, run)?;
        e.record.status = status;
        if summary.is_some() {
            e.record.summary = summary;
        }
        e.record.updated_at = from_ms(now_ms());
        Ok(e.record.clone())
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        query.check()?;
        let runs = self.lock();
        let upper = query.after.map(|c| c.run());
        let mut page = Vec::with_capacity(query.limit.min(64));
        let mut more = false;
        let iter = match upper {
            Some(u) => runs.range(..u),
            None => runs.range(..),
        };
        for (_, e) in iter.rev() {
            if e.record.tenant != query.tenant || query.status.is_some_and(|s| s != e.record.status)
            {
                continue;
            }
            if page.len() == query.limit {
                more = true;
                break;
            }
            page.push(e.record.clone());
        }
        let next = if more {
            page.last().map(|r| Cursor::after_run(r.id))
        } else {
            None
        };
        Ok(RunPage { runs: page, next })
    }

    async fn delete_run(&self, run: RunId) -> Result<(), StoreError> {
        let mut runs = self.lock();
        let e = entry(&mut runs, run)?;
        if !e.record.status.is_terminal() {
            return Err(StoreError::RunActive {
                run,
                status: e.record.status,
            });
        }
        runs.remove(&run);
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
        let mut runs = self.lock();
        let e = entry(&mut runs, run)?;
        check_fence(run, fence, e.fence)?;
        let actual = e.frames.len() as u64;
        if actual != expected_seq {
            return Err(StoreError::Conflict {
                run,
                expected: expected_seq,
                actual,
            });
        }
        e.frames.reserve(records.len());
        for (i, r) in records.iter().enumerate() {
            let mut buf = Vec::new();
            encode_into(expected_seq + i as u64, r.kind(), r.payload(), &mut buf);
            e.frames.push(Bytes::from(buf));
        }
        Ok(e.frames.len() as u64)
    }

    async fn read(
        &self,
        run: RunId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        // Copy the frames out (cheap: reference-counted) and decode unlocked.
        let frames: Vec<Bytes> = {
            let mut runs = self.lock();
            let e = entry(&mut runs, run)?;
            let start = usize::try_from(from_seq)
                .unwrap_or(usize::MAX)
                .min(e.frames.len());
            let end = start.saturating_add(limit).min(e.frames.len());
            e.frames[start..end].to_vec()
        };
        frames
            .iter()
            .enumerate()
            .map(|(i, f)| decode_record(run, from_seq + i as u64, f))
            .collect()
    }

    async fn head(&self, run: RunId) -> Result<u64, StoreError> {
        Ok(entry(&mut self.lock(), run)?.frames.len() as u64)
    }

    async fn put_snapshot(&self, run: RunId, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_snapshot(run, snapshot, self.inner.options.max_snapshot_bytes)?;
        let frame = Bytes::from(encode_snapshot(snapshot));
        let mut runs = self.lock();
        let e = entry(&mut runs, run)?;
        if e.snapshot
            .as_ref()
            .is_none_or(|(seq, _)| *seq <= snapshot.seq)
        {
            e.snapshot = Some((snapshot.seq, frame));
        }
        Ok(())
    }

    async fn latest_snapshot(&self, run: RunId) -> Result<Option<Snapshot>, StoreError> {
        let snap = entry(&mut self.lock(), run)?.snapshot.clone();
        snap.map(|(seq, f)| decode_snapshot(run, seq, &f))
            .transpose()
    }

    async fn acquire_lease(
        &self,
        run: RunId,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        check_lease_args(holder, ttl)?;
        let now = now_ms();
        let mut runs = self.lock();
        let e = entry(&mut runs, run)?;
        if let Some((h, expires)) = &e.lease
            && *expires > now
            && h != holder
        {
            return Err(StoreError::Busy {
                run,
                holder: h.clone(),
                expires: from_ms(*expires),
            });
        }
        e.fence += 1;
        let expires = now.saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64);
        e.lease = Some((holder.to_owned(), expires));
        Ok(Lease {
            run,
            holder: holder.to_owned(),
            token: FencingToken::new(e.fence),
            expires: from_ms(expires),
        })
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        check_lease_args(&lease.holder, ttl)?;
        let run = lease.run;
        let mut runs = self.lock();
        let e = entry(&mut runs, run)?;
        if e.fence != lease.token.get() || e.lease.is_none() {
            return Err(StoreError::Fenced {
                run,
                token: Some(lease.token),
                current: e.fence,
            });
        }
        let expires = now_ms().saturating_add(ttl.as_millis().min(i64::MAX as u128) as i64);
        e.lease = Some((lease.holder.clone(), expires));
        Ok(Lease {
            expires: from_ms(expires),
            ..lease.clone()
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let run = lease.run;
        let mut runs = self.lock();
        let e = entry(&mut runs, run)?;
        if e.fence != lease.token.get() {
            return Err(StoreError::Fenced {
                run,
                token: Some(lease.token),
                current: e.fence,
            });
        }
        e.lease = None;
        Ok(())
    }
}
