//! Durable runs: a [`Store`] keeps each run's append-only journal, its latest
//! snapshot, its entry in the run index and its lease.
//!
//! The journal is the truth about a run: records `(seq, kind, payload)` with
//! sequence numbers from 0 without gaps, whose payloads the store never looks
//! inside (the orchestrator writes serialized run events, effect results and
//! pause requests). An [`append`](Store::append) names the sequence number its
//! first record must get, so two writers cannot interleave: the second gets
//! [`StoreError::Conflict`] and nothing of it is written. One orchestrator
//! drives a run at a time by holding its [lease](Store::acquire_lease); every
//! append carries the lease's [`FencingToken`], so a holder whose lease was
//! taken over is refused ([`StoreError::Fenced`]) even if it does not know yet.
//!
//! Every record and snapshot is stored in one versioned, checksummed frame
//! ([`FORMAT_VERSION`]): a record from a newer format or a damaged one is a
//! typed error naming the run and the sequence number, never a panic and never
//! skipped.
//!
//! # Backends
//!
//! | backend | feature | for |
//! |---|---|---|
//! | [`MemoryStore`] | — | tests, the quickstart, runs that need not outlive the process |
//! | `SqliteStore` | `sqlite` | one machine: one file, WAL, fsync per commit |
//! | `PostgresStore` | `postgres` | many machines sharing runs |
//! | `JetStreamStore` | `nats` | fleets already on NATS: a stream for journals, KV for the rest |
//!
//! Switching is one line, since everything above takes an `Arc<dyn Store>`:
//!
//! ```ignore
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let store: Arc<dyn Store> = Arc::new(SqliteStore::open("runs.db", StoreOptions::default()).await?);
//! let store: Arc<dyn Store> = Arc::new(PostgresStore::connect("host=db user=coditect", StoreOptions::default()).await?);
//! let store: Arc<dyn Store> = Arc::new(JetStreamStore::open(nats_client, StoreOptions::default()).await?);
//! ```
//!
//! # Example
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use coditect_orchestrator::{RunId, TenantId};
//! use coditect_orchestrator::store::{MemoryStore, NewRecord, NewRun, RunQuery, RunStatus, Store, StoreErrorKind};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let run = RunId::new();
//! let tenant = TenantId::new("acme")?;
//! store.create_run(NewRun::new(run, tenant.clone(), "summarize the report")).await?;
//!
//! // One driver at a time: the lease's token goes with every append.
//! let lease = store.acquire_lease(run, "orchestrator-1", Duration::from_secs(30)).await?;
//! let busy = store.acquire_lease(run, "orchestrator-2", Duration::from_secs(30)).await.unwrap_err();
//! assert_eq!(busy.kind(), StoreErrorKind::Busy);
//!
//! let head = store
//!     .append(run, 0, Some(lease.token), &[
//!         NewRecord::json("event", &serde_json::json!({"dispatched": "a"}))?,
//!         NewRecord::json("event", &serde_json::json!({"succeeded": "a"}))?,
//!     ])
//!     .await?;
//! assert_eq!(head, 2);
//!
//! // A second writer that thinks the journal is still empty is refused.
//! let e = store.append(run, 0, Some(lease.token), &[NewRecord::new("event", "{}")]).await.unwrap_err();
//! assert_eq!(e.kind(), StoreErrorKind::Conflict);
//!
//! let records = store.read(run, 0, 100).await?;
//! assert_eq!(records[1].json::<serde_json::Value>()?["succeeded"], "a");
//!
//! store.set_status(run, RunStatus::Finished, Some("done".into())).await?;
//! let page = store.list_runs(&RunQuery::new(tenant).status(RunStatus::Finished)).await?;
//! assert_eq!(page.runs[0].id, run);
//! store.delete_run(run).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::{RunId, TenantId};

mod error;
mod memory;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
mod record;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "test-utils")]
pub mod conformance;

pub use error::{BoxError, StoreError, StoreErrorKind};
pub use memory::MemoryStore;
#[cfg(feature = "nats")]
pub use nats::JetStreamStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
pub use record::{FORMAT_VERSION, MAX_KIND_LEN, NewRecord, Record, Snapshot};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteStats, SqliteStore};

/// The largest record a store accepts unless told otherwise: 1 MiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// The default limit on a snapshot's payload (64 MiB). A run's snapshot
/// holds the state of all its steps (about 400 bytes a no-op step, more with
/// large outputs), so it is allowed far more room than one record. The
/// JetStream store's limit is the server's `max_payload` in any case.
pub const DEFAULT_MAX_SNAPSHOT_BYTES: usize = 64 * 1024 * 1024;

/// The most runs one page of [`Store::list_runs`] holds.
pub const MAX_PAGE: usize = 1000;

/// A run's journal and everything else a durable run needs: the run index,
/// snapshots and leases.
///
/// Object safe: hold it as `Arc<dyn Store>`. Every backend passes the same
/// conformance suite (`store::conformance`, feature `test-utils`).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Adds a run to the index with status [`RunStatus::Running`] and an empty
    /// journal.
    ///
    /// # Errors
    /// [`StoreError::AlreadyExists`] if the id is taken.
    async fn create_run(&self, run: NewRun) -> Result<RunRecord, StoreError>;

    /// A run's index entry.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn run(&self, run: RunId) -> Result<RunRecord, StoreError>;

    /// Sets a run's status (and, when `summary` is given, its summary);
    /// returns the updated entry.
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn set_status(
        &self,
        run: RunId,
        status: RunStatus,
        summary: Option<String>,
    ) -> Result<RunRecord, StoreError>;

    /// One page of a tenant's runs, newest first, optionally of one status.
    /// Pass the page's [`RunPage::next`] as [`RunQuery::after`] for the next
    /// page: a run is never listed twice, and a run created after the first
    /// page never shifts the later ones.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a limit of 0 or over [`MAX_PAGE`].
    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError>;

    /// Deletes a finished, failed or cancelled run: its index entry, journal,
    /// snapshot and lease.
    ///
    /// # Errors
    /// [`StoreError::RunActive`] if it is running or paused (nothing is
    /// deleted), [`StoreError::NotFound`].
    async fn delete_run(&self, run: RunId) -> Result<(), StoreError>;

    /// Appends `records` to the run's journal as one unit, the first getting
    /// sequence number `expected_seq`; returns the journal's new next
    /// sequence number. Either every record is written or none is.
    ///
    /// `fence` is the token of the caller's lease; `None` is accepted only for
    /// a run that has never been leased.
    ///
    /// # Errors
    /// [`StoreError::TooLarge`] (a record over the limit), then
    /// [`StoreError::NotFound`], [`StoreError::Fenced`],
    /// [`StoreError::Conflict`] — in each case nothing is written.
    async fn append(
        &self,
        run: RunId,
        expected_seq: u64,
        fence: Option<FencingToken>,
        records: &[NewRecord],
    ) -> Result<u64, StoreError>;

    /// Up to `limit` records of the run's journal from `from_seq` on, in
    /// order. Every record appended before the call is seen (nothing torn or
    /// reordered); an empty result past the end.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] / [`StoreError::UnsupportedVersion`] for a
    /// record that does not decode (the read stops there: nothing is
    /// skipped), [`StoreError::NotFound`].
    async fn read(
        &self,
        run: RunId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError>;

    /// The run's records from `from_seq` on, as they are appended: those
    /// written already, then each append as it lands, for as long as the
    /// stream is polled. A journal does not know when its run is over: stop
    /// at the run's last event (`RunFinished`). An error ends the stream.
    ///
    /// The default reads with [`read`](Store::read), and every `every` while
    /// nothing is new (SQLite, PostgreSQL, memory); [`JetStreamStore`]
    /// overrides it with a push consumer, so over NATS each append arrives as
    /// the server stores it and `every` is not used.
    ///
    /// ```
    /// # use coditect_orchestrator::store::{MemoryStore, NewRecord, NewRun, Store};
    /// # use coditect_orchestrator::{RunId, TenantId};
    /// # use futures::StreamExt;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = MemoryStore::new();
    /// let run = RunId::new();
    /// store.create_run(NewRun::new(run, TenantId::default(), "goal")).await?;
    /// let mut live = store.follow(run, 0, std::time::Duration::from_millis(5));
    /// store.append(run, 0, None, &[NewRecord::json("note", &"hello")?]).await?;
    /// let first = live.next().await.unwrap()?;
    /// assert_eq!((first.seq, first.kind.as_str()), (0, "note"));
    /// # Ok(()) }
    /// ```
    fn follow(
        &self,
        run: RunId,
        from_seq: u64,
        every: Duration,
    ) -> BoxStream<'_, Result<Record, StoreError>> {
        poll_follow(self, run, from_seq, every)
    }

    /// The journal's next sequence number (its length).
    ///
    /// # Errors
    /// [`StoreError::NotFound`].
    async fn head(&self, run: RunId) -> Result<u64, StoreError>;

    /// Stores a snapshot of the run's state; kept only if it covers at least
    /// as much of the journal as the one stored (a stale writer cannot roll
    /// the snapshot back).
    ///
    /// # Errors
    /// [`StoreError::TooLarge`], [`StoreError::NotFound`].
    async fn put_snapshot(&self, run: RunId, snapshot: &Snapshot) -> Result<(), StoreError>;

    /// The run's latest snapshot, if any.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] / [`StoreError::UnsupportedVersion`],
    /// [`StoreError::NotFound`].
    async fn latest_snapshot(&self, run: RunId) -> Result<Option<Snapshot>, StoreError>;

    /// Takes the run's lease for `ttl`, with a fencing token greater than any
    /// this run had. Free, released and expired leases can be taken; a live
    /// one only by the same `holder` (a restarted process taking its lease
    /// back, which fences its earlier self).
    ///
    /// # Errors
    /// [`StoreError::Busy`] naming the holder and when its lease expires,
    /// [`StoreError::NotFound`].
    async fn acquire_lease(
        &self,
        run: RunId,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError>;

    /// Extends a held lease to `ttl` from now; the token stays.
    ///
    /// # Errors
    /// [`StoreError::Fenced`] if the lease was released or taken over.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError>;

    /// Gives the lease up, so another holder can take it at once. The run's
    /// token stays: appends with this lease's token are refused afterwards
    /// only once a new lease is taken.
    ///
    /// # Errors
    /// [`StoreError::Fenced`] if the lease was already taken over.
    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError>;

    /// Makes every append acknowledged so far durable (a no-op for
    /// [`Durability::PerRecord`], where each already is).
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the commit fails.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// When an append is durable, and so what a crash can lose.
///
/// A crash never tears an append and never reorders the journal: what
/// survives is always a prefix of what was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Durability {
    /// An append returns only once it is durable (SQLite: committed with
    /// `synchronous=FULL`, so fsynced; PostgreSQL: committed with
    /// `synchronous_commit` on; JetStream: acknowledged by the stream).
    /// Appends that arrive together share one commit (group commit) without
    /// weakening this. A crash loses nothing that was acknowledged.
    #[default]
    PerRecord,
    /// Appends return once they are checked and ordered; the commit happens
    /// when `max_records` appends are waiting or `max_delay` has passed since
    /// the first of them (or on [`Store::flush`]). A crash of the process or
    /// machine loses at most the appends of that last window — whole appends,
    /// from the end. SQLite batches as described; PostgreSQL commits with
    /// `synchronous_commit = off` (the server flushes its WAL within
    /// 3 × `wal_writer_delay`, 600 ms by default; the limits here do not
    /// apply); JetStream treats it as `PerRecord`.
    Batched {
        /// The longest an acknowledged append waits for its commit.
        max_delay: Duration,
        /// The most appends that wait for one commit.
        max_records: usize,
    },
}

/// Settings every backend takes.
#[derive(Debug, Clone)]
#[must_use]
pub struct StoreOptions {
    /// The largest record payload accepted, in bytes.
    pub max_record_bytes: usize,
    /// The largest snapshot payload accepted, in bytes. A snapshot over it
    /// is refused with [`StoreError::TooLarge`] (the run goes on; its resume
    /// folds the journal from an older snapshot or from the start).
    pub max_snapshot_bytes: usize,
    /// When appends are durable.
    pub durability: Durability,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_snapshot_bytes: DEFAULT_MAX_SNAPSHOT_BYTES,
            durability: Durability::default(),
        }
    }
}

impl StoreOptions {
    /// Sets the largest record payload, in bytes (at most `u32::MAX / 2`).
    pub fn max_record_bytes(mut self, bytes: usize) -> Self {
        self.max_record_bytes = bytes.min(u32::MAX as usize / 2);
        self
    }

    /// Sets the largest snapshot payload, in bytes (at most `u32::MAX / 2`).
    pub fn max_snapshot_bytes(mut self, bytes: usize) -> Self {
        self.max_snapshot_bytes = bytes.min(u32::MAX as usize / 2);
        self
    }

    /// Sets the durability policy.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Being driven (or waiting to be resumed after a crash).
    Running,
    /// Waiting for an answer from outside (human in the loop).
    Paused,
    /// Ended with an error.
    Failed,
    /// Ended with its result.
    Finished,
    /// Stopped on request.
    Cancelled,
}

impl RunStatus {
    /// Every status.
    pub const ALL: [RunStatus; 5] = [
        Self::Running,
        Self::Paused,
        Self::Failed,
        Self::Finished,
        Self::Cancelled,
    ];

    /// Its stored name: `running`, `paused`, `failed`, `finished`, `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Failed => "failed",
            Self::Finished => "finished",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether the run has ended (it may be deleted).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Failed | Self::Finished | Self::Cancelled)
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Invalid(format!("unknown run status {s:?}")))
    }
}

/// A run to add to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct NewRun {
    /// Its id.
    pub id: RunId,
    /// Its tenant.
    pub tenant: TenantId,
    /// What it is for (the task's goal), for listings.
    pub goal: String,
}

impl NewRun {
    /// A run of `tenant` for `goal`.
    pub fn new(id: RunId, tenant: TenantId, goal: impl Into<String>) -> Self {
        Self {
            id,
            tenant,
            goal: goal.into(),
        }
    }
}

/// A run's entry in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Its id.
    pub id: RunId,
    /// Its tenant.
    pub tenant: TenantId,
    /// Where it stands.
    pub status: RunStatus,
    /// What it is for.
    pub goal: String,
    /// How it ended, or what it waits for (set with the status).
    pub summary: Option<String>,
    /// When it was created (millisecond precision).
    #[serde(with = "unix_ms")]
    pub created_at: SystemTime,
    /// When its entry last changed (millisecond precision).
    #[serde(with = "unix_ms")]
    pub updated_at: SystemTime,
}

/// A query for one page of [`Store::list_runs`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct RunQuery {
    /// Whose runs.
    pub tenant: TenantId,
    /// Only runs of this status, or all.
    pub status: Option<RunStatus>,
    /// The most runs on the page (1 to [`MAX_PAGE`]; 100 by default).
    pub limit: usize,
    /// Where the page starts: the previous page's [`RunPage::next`].
    pub after: Option<Cursor>,
}

impl RunQuery {
    /// The first page of a tenant's runs, 100 to a page.
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            status: None,
            limit: 100,
            after: None,
        }
    }

    /// Only runs of `status`.
    pub fn status(mut self, status: RunStatus) -> Self {
        self.status = Some(status);
        self
    }

    /// At most `limit` runs to a page.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// The page after the one `cursor` came with.
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    pub(crate) fn check(&self) -> Result<(), StoreError> {
        if self.limit == 0 || self.limit > MAX_PAGE {
            return Err(StoreError::Invalid(format!(
                "page limit {} (it must be 1 to {MAX_PAGE})",
                self.limit
            )));
        }
        Ok(())
    }
}

/// One page of runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPage {
    /// The runs, newest first.
    pub runs: Vec<RunRecord>,
    /// Where the next page starts, if there may be one.
    pub next: Option<Cursor>,
}

/// A stable position in a listing: runs are listed by id, newest first, and a
/// cursor is the last id of a page. Shown as text so it can travel in a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor(RunId);

impl Cursor {
    /// The cursor after `run`.
    pub fn after_run(run: RunId) -> Self {
        Self(run)
    }

    /// The last run of the page this cursor follows.
    pub fn run(&self) -> RunId {
        self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Cursor {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        s.parse::<RunId>()
            .map(Self)
            .map_err(|e| StoreError::Invalid(format!("not a listing cursor: {e}")))
    }
}

/// A fencing token: each lease of a run gets a larger one than the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a token read back from storage.
    pub fn new(token: u64) -> Self {
        Self(token)
    }

    /// Its value (from 1).
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A held lease on one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The run.
    pub run: RunId,
    /// Who holds it.
    pub holder: String,
    /// The token every append of the holder carries.
    pub token: FencingToken,
    /// When it expires unless renewed (by the store's clock).
    pub expires: SystemTime,
}

/// The fencing rule every backend applies to an append: `fence` must be the
/// run's current token, or `None` for a run that was never leased.
pub(crate) fn check_fence(
    run: RunId,
    fence: Option<FencingToken>,
    current: u64,
) -> Result<(), StoreError> {
    let ok = match fence {
        None => current == 0,
        Some(t) => t.0 == current,
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::Fenced {
            run,
            token: fence,
            current,
        })
    }
}

/// Checks a lease holder's name and TTL.
pub(crate) fn check_lease_args(holder: &str, ttl: Duration) -> Result<(), StoreError> {
    if holder.is_empty() || holder.len() > 200 {
        return Err(StoreError::Invalid(format!(
            "lease holder {holder:?}: it must be 1 to 200 bytes"
        )));
    }
    if ttl.is_zero() || ttl > Duration::from_secs(366 * 24 * 3600) {
        return Err(StoreError::Invalid(format!(
            "lease ttl {ttl:?}: it must be above 0 and at most a year"
        )));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// The time `ms` milliseconds after the Unix epoch (the epoch for negatives).
pub(crate) fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

/// Now, to the millisecond (what every backend stores).
pub(crate) fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

mod unix_ms {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(super::to_ms(*t))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        Ok(super::from_ms(i64::deserialize(d)?))
    }
}

/// [`Store::follow`] by reading: at once, then every `every` while nothing
/// is new.
fn poll_follow<S: Store + ?Sized>(
    store: &S,
    run: RunId,
    from_seq: u64,
    every: Duration,
) -> BoxStream<'_, Result<Record, StoreError>> {
    /// How many records one read asks for.
    const BATCH: usize = 1000;
    /// What the reader holds between items.
    struct Reader<'a, S: ?Sized> {
        store: &'a S,
        next: u64,
        ready: std::collections::VecDeque<Record>,
        caught_up: bool,
        failed: bool,
    }
    let reader = Reader {
        store,
        next: from_seq,
        ready: std::collections::VecDeque::new(),
        caught_up: false,
        failed: false,
    };
    Box::pin(futures::stream::unfold(reader, move |mut r| async move {
        if r.failed {
            return None;
        }
        loop {
            if let Some(record) = r.ready.pop_front() {
                return Some((Ok(record), r));
            }
            if r.caught_up {
                tokio::time::sleep(every).await;
            }
            match r.store.read(run, r.next, BATCH).await {
                Ok(records) => {
                    // A short batch is all there was: wait before reading again.
                    r.caught_up = records.len() < BATCH;
                    if let Some(last) = records.last() {
                        r.next = last.seq + 1;
                    }
                    r.ready.extend(records);
                }
                Err(e) => {
                    r.failed = true;
                    return Some((Err(e), r));
                }
            }
        }
    }))
}
