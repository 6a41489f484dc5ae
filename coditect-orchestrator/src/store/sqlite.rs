//! The SQLite store (feature `sqlite`): one file, WAL, for one machine.
//!
//! One dedicated thread owns the connection and runs every call, so blocking
//! SQLite calls never run on the async threads. Writes that arrive together
//! are applied one by one, each in its own savepoint (a failing one is rolled
//! back alone), and committed together: group commit. With
//! [`Durability::PerRecord`] every write is answered after its commit
//! (`synchronous=FULL`: the WAL is fsynced), so a crash loses nothing
//! acknowledged; with [`Durability::Batched`] writes are answered once
//! applied, and committed after `max_records` records or `max_delay`.
//!
//! Several processes may open one file (SQLite's locks serialize writers,
//! waiting up to 5 s); the expected-sequence check runs inside the write
//! transaction, and `(run, seq)` is the journal's primary key.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::{RunId, TenantId};

use super::record::{
    check_append, check_snapshot, decode_record, decode_snapshot, encode, encode_snapshot,
};
use super::{
    Cursor, Durability, FencingToken, Lease, NewRecord, NewRun, Record, RunPage, RunQuery,
    RunRecord, RunStatus, Snapshot, Store, StoreError, StoreOptions, check_fence, check_lease_args,
    from_ms, now_ms,
};

const BACKEND: &str = "sqlite";

/// How long a writer waits for another process's lock on the file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The most writes one commit groups in [`Durability::PerRecord`].
const MAX_GROUP: usize = 512;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS coditect_runs (
    id BLOB PRIMARY KEY NOT NULL,
    tenant TEXT NOT NULL,
    status TEXT NOT NULL,
    goal TEXT NOT NULL,
    summary TEXT,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    fence INTEGER NOT NULL DEFAULT 0 CHECK (fence >= 0),
    lease_holder TEXT,
    lease_expires_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS coditect_runs_by_tenant ON coditect_runs (tenant, id);
CREATE INDEX IF NOT EXISTS coditect_runs_by_tenant_status ON coditect_runs (tenant, status, id);
CREATE TABLE IF NOT EXISTS coditect_journal (
    run BLOB NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 0),
    frame BLOB NOT NULL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS coditect_snapshots (
    run BLOB PRIMARY KEY NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 0),
    frame BLOB NOT NULL
) WITHOUT ROWID;
";

/// Counters of a [`SqliteStore`], for benchmarks and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqliteStats {
    /// Transactions committed (each is one fsync of the WAL with
    /// `synchronous=FULL`, plus a checkpoint's now and then).
    pub commits: u64,
    /// Writes (appends, index and lease changes) applied.
    pub writes: u64,
}

/// A [`Store`] in one SQLite file (WAL mode).
///
/// ```no_run
/// use std::sync::Arc;
/// use coditect_orchestrator::store::{SqliteStore, Store, StoreOptions};
/// # async fn f() -> Result<(), coditect_orchestrator::store::StoreError> {
/// let store: Arc<dyn Store> = Arc::new(SqliteStore::open("runs.db", StoreOptions::default()).await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    jobs: mpsc::Sender<Job>,
    options: StoreOptions,
    path: PathBuf,
    commits: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

/// Called with the commit's outcome (`None`: committed, or nothing to
/// commit) once the job's write is durable or has failed.
type Completion = Box<dyn FnOnce(Option<StoreError>) + Send>;

/// Runs on the store's thread: returns whether it succeeded (so its
/// savepoint is kept) and how to answer.
/// Given the connection, or why no transaction could be started for it.
type Work = Box<dyn FnOnce(Result<&Connection, StoreError>) -> (bool, Completion) + Send>;

enum Job {
    /// Reads only.
    Read(Work),
    /// Changes the database; `weight` is how many records it adds to a batch.
    Write { work: Work, weight: usize },
    /// Commit now; answer after it.
    Flush(oneshot::Sender<Result<(), StoreError>>),
    /// Commit, close the connection and stop; answer after.
    Close(oneshot::Sender<()>),
}

fn db_err(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::backend(BACKEND, op, e)
}

fn closed() -> StoreError {
    StoreError::backend(
        BACKEND,
        "call",
        std::io::Error::other("the store's thread has stopped"),
    )
}

impl SqliteStore {
    /// Opens (or creates) the store in the file at `path`.
    ///
    /// # Errors
    /// [`StoreError::Backend`] if the file cannot be opened or set up.
    pub async fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writes = Arc::new(AtomicU64::new(0));
        let worker = Worker {
            durability: options.durability,
            commits: commits.clone(),
            writes: writes.clone(),
            failed_commit: None,
        };
        let p = path.clone();
        std::thread::Builder::new()
            .name("coditect-sqlite".into())
            .spawn(move || match setup(&p) {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    worker.run(conn, rx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            })
            .map_err(|e| StoreError::backend(BACKEND, "start its thread", e))?;
        ready_rx.await.map_err(|_| closed())??;
        Ok(Self {
            inner: Arc::new(Shared {
                jobs,
                options,
                path,
                commits,
                writes,
            }),
        })
    }

    /// Commits what is pending and closes the connection (SQLite then folds
    /// the WAL back into the file). Other clones of this store fail with
    /// [`StoreError::Backend`] afterwards; dropping every clone closes it too,
    /// without waiting.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.jobs.send(Job::Close(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// The file it stores in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Its counters so far.
    pub fn stats(&self) -> SqliteStats {
        SqliteStats {
            commits: self.inner.commits.load(Ordering::Relaxed),
            writes: self.inner.writes.load(Ordering::Relaxed),
        }
    }

    async fn call<T, F>(&self, write: Option<usize>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let result = conn.and_then(f);
            let ok = result.is_ok();
            let done: Completion = Box::new(move |commit| {
                let _ = tx.send(match (result, commit) {
                    (Ok(v), None) => Ok(v),
                    (Ok(_), Some(e)) | (Err(e), _) => Err(e),
                });
            });
            (ok, done)
        });
        let job = match write {
            Some(weight) => Job::Write { work, weight },
            None => Job::Read(work),
        };
        self.inner.jobs.send(job).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

fn setup(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).map_err(db_err("open the file"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(db_err("set the busy timeout"))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(db_err("switch to WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::backend(
            BACKEND,
            "switch to WAL",
            std::io::Error::other(format!("journal_mode is {mode}")),
        ));
    }
    conn.execute_batch("PRAGMA synchronous=FULL;")
        .map_err(db_err("set synchronous=FULL"))?;
    conn.execute_batch(SCHEMA)
        .map_err(db_err("create the schema"))?;
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// The thread that owns the connection.
struct Worker {
    durability: Durability,
    commits: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    /// A batched commit that failed after its writes were acknowledged:
    /// reported by the next flush.
    failed_commit: Option<String>,
}

struct Batch {
    open: bool,
    waiting: Vec<Completion>,
    weight: usize,
    since: Option<Instant>,
}

impl Worker {
    fn run(mut self, conn: Connection, jobs: mpsc::Receiver<Job>) {
        let mut batch = Batch {
            open: false,
            waiting: Vec::new(),
            weight: 0,
            since: None,
        };
        loop {
            let job = match (self.durability, batch.since) {
                (Durability::Batched { max_delay, .. }, Some(since)) => {
                    let left = max_delay.saturating_sub(since.elapsed());
                    match jobs.recv_timeout(left) {
                        Ok(job) => job,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.commit(&conn, &mut batch);
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                _ => match jobs.recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            let job = match job {
                Job::Close(reply) => {
                    self.commit(&conn, &mut batch);
                    drop(conn);
                    let _ = reply.send(());
                    return;
                }
                job => job,
            };
            self.handle(&conn, &mut batch, job);
            if let Durability::PerRecord = self.durability {
                // Group whatever else is already waiting into this commit.
                let mut grouped = 1;
                while grouped < MAX_GROUP {
                    match jobs.try_recv() {
                        Ok(Job::Close(reply)) => {
                            self.commit(&conn, &mut batch);
                            drop(conn);
                            let _ = reply.send(());
                            return;
                        }
                        Ok(job) => {
                            self.handle(&conn, &mut batch, job);
                            grouped += 1;
                        }
                        Err(_) => break,
                    }
                }
                self.commit(&conn, &mut batch);
            }
        }
        self.commit(&conn, &mut batch);
    }

    fn handle(&mut self, conn: &Connection, batch: &mut Batch, job: Job) {
        match job {
            Job::Read(work) => {
                // Reads see only what is committed, so a commit that fails
                // cannot have shown them anything.
                if let Durability::PerRecord = self.durability {
                    self.commit(conn, batch);
                }
                let (_, done) = work(Ok(conn));
                done(None);
            }
            Job::Write { work, weight } => {
                if !batch.open {
                    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                        let (_, done) =
                            work(Err(StoreError::backend(BACKEND, "begin a transaction", e)));
                        done(None);
                        return;
                    }
                    batch.open = true;
                }
                if let Err(e) = conn.execute_batch("SAVEPOINT job") {
                    let (_, done) = work(Err(StoreError::backend(BACKEND, "begin a write", e)));
                    done(None);
                    return;
                }
                let (ok, done) = work(Ok(conn));
                let end = if ok {
                    "RELEASE job"
                } else {
                    "ROLLBACK TO job; RELEASE job"
                };
                if let Err(e) = conn.execute_batch(end) {
                    tracing::error!(error = %e, "sqlite store: ending a savepoint failed");
                }
                if !ok {
                    done(None);
                    return;
                }
                self.writes.fetch_add(1, Ordering::Relaxed);
                match self.durability {
                    Durability::PerRecord => batch.waiting.push(done),
                    Durability::Batched { max_records, .. } => {
                        done(None);
                        batch.weight += weight.max(1);
                        batch.since.get_or_insert_with(Instant::now);
                        if batch.weight >= max_records.max(1) {
                            self.commit(conn, batch);
                        }
                    }
                }
            }
            Job::Close(reply) => {
                // Only the loop closes; a close grouped behind other jobs
                // still gets its answer once they are committed.
                self.commit(conn, batch);
                let _ = reply.send(());
            }
            Job::Flush(reply) => {
                self.commit(conn, batch);
                let r = match self.failed_commit.take() {
                    None => Ok(()),
                    Some(e) => Err(StoreError::backend(
                        BACKEND,
                        "commit a batch",
                        std::io::Error::other(e),
                    )),
                };
                let _ = reply.send(r);
            }
        }
    }

    fn commit(&mut self, conn: &Connection, batch: &mut Batch) {
        if !batch.open {
            return;
        }
        batch.open = false;
        batch.weight = 0;
        batch.since = None;
        let waiting = std::mem::take(&mut batch.waiting);
        match conn.execute_batch("COMMIT") {
            Ok(()) => {
                self.commits.fetch_add(1, Ordering::Relaxed);
                for done in waiting {
                    done(None);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                tracing::error!(error = %e, "sqlite store: commit failed; its writes are rolled back");
                if matches!(self.durability, Durability::Batched { .. }) {
                    self.failed_commit = Some(e.to_string());
                }
                let msg = e.to_string();
                for done in waiting {
                    done(Some(StoreError::backend(
                        BACKEND,
                        "commit",
                        std::io::Error::other(msg.clone()),
                    )));
                }
            }
        }
    }
}

fn run_key(run: RunId) -> [u8; 16] {
    *run.as_uuid().as_bytes()
}

fn run_from(bytes: &[u8]) -> Result<RunId, StoreError> {
    uuid::Uuid::from_slice(bytes)
        .map(RunId::from_uuid)
        .map_err(|e| StoreError::backend(BACKEND, "read a run id", e))
}

const RUN_COLUMNS: &str = "id, tenant, status, goal, summary, created_ms, updated_ms";

fn run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawRun> {
    Ok(RawRun {
        id: row.get(0)?,
        tenant: row.get(1)?,
        status: row.get(2)?,
        goal: row.get(3)?,
        summary: row.get(4)?,
        created_ms: row.get(5)?,
        updated_ms: row.get(6)?,
    })
}

struct RawRun {
    id: Vec<u8>,
    tenant: String,
    status: String,
    goal: String,
    summary: Option<String>,
    created_ms: i64,
    updated_ms: i64,
}

impl RawRun {
    fn into_record(self) -> Result<RunRecord, StoreError> {
        Ok(RunRecord {
            id: run_from(&self.id)?,
            tenant: TenantId::new(&self.tenant)
                .map_err(|e| StoreError::backend(BACKEND, "read a tenant", e))?,
            status: self.status.parse()?,
            goal: self.goal,
            summary: self.summary,
            created_at: from_ms(self.created_ms),
            updated_at: from_ms(self.updated_ms),
        })
    }
}

fn get_run(conn: &Connection, run: RunId) -> Result<RunRecord, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM coditect_runs WHERE id = ?1"
    ))
    .and_then(|mut s| s.query_row(params![run_key(run)], run_row).optional())
    .map_err(db_err("read a run"))?
    .ok_or(StoreError::NotFound { run })?
    .into_record()
}

/// The run's fence and lease: `(fence, holder, expires_ms)`.
fn lease_row(
    conn: &Connection,
    run: RunId,
) -> Result<(u64, Option<String>, Option<i64>), StoreError> {
    conn.prepare_cached(
        "SELECT fence, lease_holder, lease_expires_ms FROM coditect_runs WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.query_row(params![run_key(run)], |r| {
            Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()
    })
    .map_err(db_err("read a lease"))?
    .map(|(f, h, e)| (f.max(0) as u64, h, e))
    .ok_or(StoreError::NotFound { run })
}

fn journal_head(conn: &Connection, run: RunId) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT MAX(seq) FROM coditect_journal WHERE run = ?1")
        .and_then(|mut s| s.query_row(params![run_key(run)], |r| r.get::<_, Option<i64>>(0)))
        .map(|m| m.map_or(0, |m| m.max(-1) as u64 + 1))
        .map_err(db_err("read the journal's head"))
}

fn ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_run(&self, run: NewRun) -> Result<RunRecord, StoreError> {
        self.call(Some(1), move |conn| {
            let now = now_ms();
            let n = conn
                .prepare_cached(
                    "INSERT INTO coditect_runs (id, tenant, status, goal, created_ms, updated_ms)
                     VALUES (?1, ?2, 'running', ?3, ?4, ?4) ON CONFLICT (id) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![run_key(run.id), run.tenant.as_str(), run.goal, now])
                })
                .map_err(db_err("create a run"))?;
            if n == 0 {
                return Err(StoreError::AlreadyExists { run: run.id });
            }
            Ok(RunRecord {
                id: run.id,
                tenant: run.tenant,
                status: RunStatus::Running,
                goal: run.goal,
                summary: None,
                created_at: from_ms(now),
                updated_at: from_ms(now),
            })
        })
        .await
    }

    async fn run(&self, run: RunId) -> Result<RunRecord, StoreError> {
        self.call(None, move |conn| get_run(conn, run)).await
    }

    async fn set_status(
        &self,
        run: RunId,
        status: RunStatus,
        summary: Option<String>,
    ) -> Result<RunRecord, StoreError> {
        self.call(Some(1), move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE coditect_runs SET status = ?2, summary = COALESCE(?3, summary),
                     updated_ms = MAX(updated_ms, ?4) WHERE id = ?1",
                )
                .and_then(|mut s| {
                    s.execute(params![run_key(run), status.as_str(), summary, now_ms()])
                })
                .map_err(db_err("set a run's status"))?;
            if n == 0 {
                return Err(StoreError::NotFound { run });
            }
            get_run(conn, run)
        })
        .await
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        query.check()?;
        let query = query.clone();
        self.call(None, move |conn| {
            let before = query.after.map(|c| run_key(c.run()));
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM coditect_runs WHERE tenant = ?1
                 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3)
                 ORDER BY id DESC LIMIT ?4"
            );
            let rows: Vec<RawRun> = conn
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map(
                        params![
                            query.tenant.as_str(),
                            query.status.map(RunStatus::as_str),
                            before.as_ref().map(|b| &b[..]),
                            query.limit as i64 + 1
                        ],
                        run_row,
                    )?
                    .collect()
                })
                .map_err(db_err("list runs"))?;
            let mut runs = rows
                .into_iter()
                .map(RawRun::into_record)
                .collect::<Result<Vec<_>, _>>()?;
            let next = if runs.len() > query.limit {
                runs.truncate(query.limit);
                runs.last().map(|r| Cursor::after_run(r.id))
            } else {
                None
            };
            Ok(RunPage { runs, next })
        })
        .await
    }

    async fn delete_run(&self, run: RunId) -> Result<(), StoreError> {
        self.call(Some(1), move |conn| {
            let status = get_run(conn, run)?.status;
            if !status.is_terminal() {
                return Err(StoreError::RunActive { run, status });
            }
            let key = run_key(run);
            let delete = || -> rusqlite::Result<()> {
                conn.prepare_cached("DELETE FROM coditect_journal WHERE run = ?1")?
                    .execute(params![key])?;
                conn.prepare_cached("DELETE FROM coditect_snapshots WHERE run = ?1")?
                    .execute(params![key])?;
                conn.prepare_cached("DELETE FROM coditect_runs WHERE id = ?1")?
                    .execute(params![key])?;
                Ok(())
            };
            delete().map_err(db_err("delete a run"))?;
            Ok(())
        })
        .await
    }

    async fn append(
        &self,
        run: RunId,
        expected_seq: u64,
        fence: Option<FencingToken>,
        records: &[NewRecord],
    ) -> Result<u64, StoreError> {
        check_append(run, records, self.inner.options.max_record_bytes)?;
        let frames: Vec<Vec<u8>> = records
            .iter()
            .enumerate()
            .map(|(i, r)| encode(expected_seq + i as u64, r.kind(), r.payload()))
            .collect();
        self.call(Some(frames.len()), move |conn| {
            let (current, _, _) = lease_row(conn, run)?;
            check_fence(run, fence, current)?;
            let actual = journal_head(conn, run)?;
            if actual != expected_seq {
                return Err(StoreError::Conflict {
                    run,
                    expected: expected_seq,
                    actual,
                });
            }
            let key = run_key(run);
            let mut insert = conn
                .prepare_cached(
                    "INSERT INTO coditect_journal (run, seq, frame) VALUES (?1, ?2, ?3)",
                )
                .map_err(db_err("append"))?;
            for (i, f) in frames.iter().enumerate() {
                let seq = i64::try_from(expected_seq + i as u64)
                    .map_err(|e| StoreError::backend(BACKEND, "append", e))?;
                insert
                    .execute(params![key, seq, f])
                    .map_err(db_err("append"))?;
            }
            Ok(expected_seq + frames.len() as u64)
        })
        .await
    }

    async fn read(
        &self,
        run: RunId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        self.call(None, move |conn| {
            lease_row(conn, run)?;
            let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT seq, frame FROM coditect_journal WHERE run = ?1 AND seq >= ?2
                     ORDER BY seq LIMIT ?3",
                )
                .map_err(db_err("read the journal"))?;
            let mut rows = stmt
                .query(params![run_key(run), from, limit])
                .map_err(db_err("read the journal"))?;
            let mut out = Vec::new();
            let mut want = from_seq;
            while let Some(row) = rows.next().map_err(db_err("read the journal"))? {
                let seq: i64 = row.get(0).map_err(db_err("read the journal"))?;
                if seq as u64 != want {
                    return Err(StoreError::Corrupt {
                        run,
                        seq: want,
                        what: "record",
                        reason: format!("missing: the journal goes on at seq {seq}"),
                    });
                }
                let frame = row
                    .get_ref(1)
                    .and_then(|v| v.as_blob().map_err(Into::into))
                    .map_err(db_err("read the journal"))?;
                out.push(decode_record(run, want, frame)?);
                want += 1;
            }
            Ok(out)
        })
        .await
    }

    async fn head(&self, run: RunId) -> Result<u64, StoreError> {
        self.call(None, move |conn| {
            lease_row(conn, run)?;
            journal_head(conn, run)
        })
        .await
    }

    async fn put_snapshot(&self, run: RunId, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_snapshot(run, snapshot, self.inner.options.max_snapshot_bytes)?;
        let frame = encode_snapshot(snapshot);
        let seq = i64::try_from(snapshot.seq)
            .map_err(|e| StoreError::Invalid(format!("snapshot seq: {e}")))?;
        self.call(Some(1), move |conn| {
            lease_row(conn, run)?;
            conn.prepare_cached(
                "INSERT INTO coditect_snapshots (run, seq, frame) VALUES (?1, ?2, ?3)
                 ON CONFLICT (run) DO UPDATE SET seq = excluded.seq, frame = excluded.frame
                 WHERE excluded.seq >= coditect_snapshots.seq",
            )
            .and_then(|mut s| s.execute(params![run_key(run), seq, frame]))
            .map_err(db_err("store a snapshot"))?;
            Ok(())
        })
        .await
    }

    async fn latest_snapshot(&self, run: RunId) -> Result<Option<Snapshot>, StoreError> {
        self.call(None, move |conn| {
            lease_row(conn, run)?;
            let row: Option<(i64, Vec<u8>)> = conn
                .prepare_cached("SELECT seq, frame FROM coditect_snapshots WHERE run = ?1")
                .and_then(|mut s| {
                    s.query_row(params![run_key(run)], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .map_err(db_err("read a snapshot"))?;
            row.map(|(seq, f)| decode_snapshot(run, seq.max(0) as u64, &f))
                .transpose()
        })
        .await
    }

    async fn acquire_lease(
        &self,
        run: RunId,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        check_lease_args(holder, ttl)?;
        let holder = holder.to_owned();
        self.call(Some(1), move |conn| {
            let now = now_ms();
            let (fence, h, expires) = lease_row(conn, run)?;
            if let (Some(h), Some(expires)) = (h, expires)
                && expires > now
                && h != holder
            {
                return Err(StoreError::Busy {
                    run,
                    holder: h,
                    expires: from_ms(expires),
                });
            }
            let token = fence + 1;
            let expires = now.saturating_add(ms(ttl));
            conn.prepare_cached(
                "UPDATE coditect_runs SET fence = ?2, lease_holder = ?3, lease_expires_ms = ?4
                 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![run_key(run), token as i64, holder, expires]))
            .map_err(db_err("take a lease"))?;
            Ok(Lease {
                run,
                holder,
                token: FencingToken::new(token),
                expires: from_ms(expires),
            })
        })
        .await
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        check_lease_args(&lease.holder, ttl)?;
        let lease = lease.clone();
        self.call(Some(1), move |conn| {
            let run = lease.run;
            let (fence, h, _) = lease_row(conn, run)?;
            if fence != lease.token.get() || h.is_none() {
                return Err(StoreError::Fenced {
                    run,
                    token: Some(lease.token),
                    current: fence,
                });
            }
            let expires = now_ms().saturating_add(ms(ttl));
            conn.prepare_cached("UPDATE coditect_runs SET lease_expires_ms = ?2 WHERE id = ?1")
                .and_then(|mut s| s.execute(params![run_key(run), expires]))
                .map_err(db_err("renew a lease"))?;
            Ok(Lease {
                expires: from_ms(expires),
                ..lease
            })
        })
        .await
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.call(Some(1), move |conn| {
            let run = lease.run;
            let (fence, _, _) = lease_row(conn, run)?;
            if fence != lease.token.get() {
                return Err(StoreError::Fenced {
                    run,
                    token: Some(lease.token),
                    current: fence,
                });
            }
            conn.prepare_cached(
                "UPDATE coditect_runs SET lease_holder = NULL, lease_expires_ms = NULL WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![run_key(run)]))
            .map_err(db_err("release a lease"))?;
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.inner.jobs.send(Job::Flush(tx)).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}
