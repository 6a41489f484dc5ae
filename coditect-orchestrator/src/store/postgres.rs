//! The PostgreSQL store (feature `postgres`): runs shared by many machines.
//!
//! Built on tokio-postgres with a deadpool pool rather than sqlx: it is
//! async-native, needs no macros or compile-time database, builds in a
//! fraction of sqlx's time, and every statement here is one round trip
//! (the checks are in the statements, not in client-side transactions).
//!
//! The database enforces the journal's rules itself: an append is one
//! statement whose conditional `UPDATE` of the run's row (`head = expected`,
//! `fence = token`) takes the row lock, so concurrent appenders queue on it and
//! every one after the first finds `head` moved and inserts nothing; `(run,
//! seq)` is the journal's primary key and `seq >= 0` a check constraint, as a
//! second line. Leases are conditional updates of the same row, timed by the
//! database's clock so machines with skewed clocks agree. Connections are
//! plain TCP (no TLS): use it on a private network or through a local proxy.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use crate::{RunId, TenantId};

use super::record::{
    check_append, check_snapshot, decode_record, decode_snapshot, encode, encode_snapshot,
};
use super::{
    Cursor, Durability, FencingToken, Lease, NewRecord, NewRun, Record, RunPage, RunQuery,
    RunRecord, RunStatus, Snapshot, Store, StoreError, StoreOptions, check_fence, check_lease_args,
    from_ms,
};

const BACKEND: &str = "postgres";

/// The database's clock, in milliseconds since the epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS coditect_runs (
    id uuid PRIMARY KEY,
    tenant text NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'paused', 'failed', 'finished', 'cancelled')),
    goal text NOT NULL,
    summary text,
    created_ms bigint NOT NULL,
    updated_ms bigint NOT NULL,
    head bigint NOT NULL DEFAULT 0 CHECK (head >= 0),
    fence bigint NOT NULL DEFAULT 0 CHECK (fence >= 0),
    lease_holder text,
    lease_expires_ms bigint
);
CREATE INDEX IF NOT EXISTS coditect_runs_by_tenant ON coditect_runs (tenant, id DESC);
CREATE INDEX IF NOT EXISTS coditect_runs_by_tenant_status ON coditect_runs (tenant, status, id DESC);
CREATE TABLE IF NOT EXISTS coditect_journal (
    run uuid NOT NULL REFERENCES coditect_runs (id) ON DELETE CASCADE,
    seq bigint NOT NULL CHECK (seq >= 0),
    frame bytea NOT NULL,
    PRIMARY KEY (run, seq)
);
CREATE TABLE IF NOT EXISTS coditect_snapshots (
    run uuid PRIMARY KEY REFERENCES coditect_runs (id) ON DELETE CASCADE,
    seq bigint NOT NULL CHECK (seq >= 0),
    frame bytea NOT NULL
);
";

/// How many connections the pool keeps at most, unless told otherwise.
const DEFAULT_POOL: usize = 16;

/// A [`Store`] in a PostgreSQL database, shared by every process that
/// connects to it.
///
/// ```no_run
/// use std::sync::Arc;
/// use coditect_orchestrator::store::{PostgresStore, Store, StoreOptions};
/// # async fn f() -> Result<(), coditect_orchestrator::store::StoreError> {
/// let store: Arc<dyn Store> = Arc::new(
///     PostgresStore::connect("host=127.0.0.1 user=coditect dbname=coditect", StoreOptions::default()).await?,
/// );
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: Pool,
    options: StoreOptions,
}

fn pg(op: &'static str) -> impl FnOnce(tokio_postgres::Error) -> StoreError {
    move |e| StoreError::backend(BACKEND, op, e)
}

impl PostgresStore {
    /// Connects with a libpq-style connection string or URL
    /// (`host=… port=… user=… dbname=…`, `postgresql://…`) and creates the
    /// tables if they are missing.
    ///
    /// # Errors
    /// [`StoreError::Invalid`] for a bad connection string,
    /// [`StoreError::Backend`] if the database cannot be reached or set up.
    pub async fn connect(config: &str, options: StoreOptions) -> Result<Self, StoreError> {
        Self::connect_with_pool(config, options, DEFAULT_POOL).await
    }

    /// Like [`connect`](Self::connect), with at most `pool_size` connections.
    ///
    /// # Errors
    /// As [`connect`](Self::connect).
    pub async fn connect_with_pool(
        config: &str,
        options: StoreOptions,
        pool_size: usize,
    ) -> Result<Self, StoreError> {
        let mut pg_config: tokio_postgres::Config = config
            .parse()
            .map_err(|e| StoreError::Invalid(format!("postgres connection string: {e}")))?;
        if pg_config.get_connect_timeout().is_none() {
            pg_config.connect_timeout(Duration::from_secs(10));
        }
        if let Durability::Batched { .. } = options.durability {
            // The server acknowledges commits before its WAL is flushed, and
            // flushes it within 3 × wal_writer_delay: its own group commit.
            pg_config.options("-c synchronous_commit=off");
        }
        let manager = Manager::from_config(
            pg_config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::backend(BACKEND, "build the pool", e))?;
        let store = Self {
            inner: Arc::new(Inner { pool, options }),
        };
        store.create_schema().await?;
        Ok(store)
    }

    async fn create_schema(&self) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .transaction()
            .await
            .map_err(pg("create the schema"))?;
        // Processes starting together would race on CREATE … IF NOT EXISTS.
        tx.batch_execute("SELECT pg_advisory_xact_lock(7305961148127283969)")
            .await
            .map_err(pg("create the schema"))?;
        tx.batch_execute(SCHEMA)
            .await
            .map_err(pg("create the schema"))?;
        tx.commit().await.map_err(pg("create the schema"))
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.inner
            .pool
            .get()
            .await
            .map_err(|e| StoreError::backend(BACKEND, "get a connection", e))
    }

    /// Runs one statement (prepared once per connection) and returns its rows.
    async fn query(
        &self,
        op: &'static str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(sql).await.map_err(pg(op))?;
        client.query(&stmt, params).await.map_err(pg(op))
    }

    /// The run's `(head, fence, lease_holder, lease_expires_ms)`, or NotFound.
    async fn state(
        &self,
        run: RunId,
    ) -> Result<(u64, u64, Option<String>, Option<i64>), StoreError> {
        let rows = self
            .query(
                "read a run",
                "SELECT head, fence, lease_holder, lease_expires_ms FROM coditect_runs WHERE id = $1",
                &[run.as_uuid()],
            )
            .await?;
        let row = rows.first().ok_or(StoreError::NotFound { run })?;
        Ok((
            u64_of(row.try_get(0).map_err(pg("read a run"))?),
            u64_of(row.try_get(1).map_err(pg("read a run"))?),
            row.try_get(2).map_err(pg("read a run"))?,
            row.try_get(3).map_err(pg("read a run"))?,
        ))
    }
}

/// The SQLSTATE of a database error inside a [`StoreError::Backend`].
fn sql_state(e: &StoreError) -> Option<&SqlState> {
    match e {
        StoreError::Backend { source, .. } => source
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code),
        _ => None,
    }
}

fn u64_of(v: i64) -> u64 {
    v.max(0) as u64
}

fn i64_of(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v)
        .map_err(|_| StoreError::Invalid(format!("{v} is past what the database holds")))
}

fn ttl_ms(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128 / 4) as i64
}

const RUN_COLUMNS: &str = "id, tenant, status, goal, summary, created_ms, updated_ms";

fn run_of(row: &Row) -> Result<RunRecord, StoreError> {
    let get = pg("read a run");
    let id: Uuid = row.try_get(0).map_err(get)?;
    let tenant: String = row.try_get(1).map_err(pg("read a run"))?;
    let status: String = row.try_get(2).map_err(pg("read a run"))?;
    Ok(RunRecord {
        id: RunId::from_uuid(id),
        tenant: TenantId::new(&tenant)
            .map_err(|e| StoreError::backend(BACKEND, "read a tenant", e))?,
        status: status.parse()?,
        goal: row.try_get(3).map_err(pg("read a run"))?,
        summary: row.try_get(4).map_err(pg("read a run"))?,
        created_at: from_ms(row.try_get(5).map_err(pg("read a run"))?),
        updated_at: from_ms(row.try_get(6).map_err(pg("read a run"))?),
    })
}

#[async_trait]
impl Store for PostgresStore {
    async fn create_run(&self, run: NewRun) -> Result<RunRecord, StoreError> {
        let rows = self
            .query(
                "create a run",
                &format!(
                    "INSERT INTO coditect_runs (id, tenant, status, goal, created_ms, updated_ms)
                     VALUES ($1, $2, 'running', $3, {NOW_MS}, {NOW_MS})
                     ON CONFLICT (id) DO NOTHING RETURNING {RUN_COLUMNS}"
                ),
                &[run.id.as_uuid(), &run.tenant.as_str(), &run.goal],
            )
            .await?;
        rows.first()
            .ok_or(StoreError::AlreadyExists { run: run.id })
            .and_then(run_of)
    }

    async fn run(&self, run: RunId) -> Result<RunRecord, StoreError> {
        let rows = self
            .query(
                "read a run",
                &format!("SELECT {RUN_COLUMNS} FROM coditect_runs WHERE id = $1"),
                &[run.as_uuid()],
            )
            .await?;
        rows.first()
            .ok_or(StoreError::NotFound { run })
            .and_then(run_of)
    }

    async fn set_status(
        &self,
        run: RunId,
        status: RunStatus,
        summary: Option<String>,
    ) -> Result<RunRecord, StoreError> {
        let rows = self
            .query(
                "set a run's status",
                &format!(
                    "UPDATE coditect_runs SET status = $2, summary = COALESCE($3, summary),
                     updated_ms = GREATEST(updated_ms, {NOW_MS}) WHERE id = $1
                     RETURNING {RUN_COLUMNS}"
                ),
                &[run.as_uuid(), &status.as_str(), &summary],
            )
            .await?;
        rows.first()
            .ok_or(StoreError::NotFound { run })
            .and_then(run_of)
    }

    async fn list_runs(&self, query: &RunQuery) -> Result<RunPage, StoreError> {
        query.check()?;
        let before: Option<Uuid> = query.after.map(|c| *c.run().as_uuid());
        let status: Option<&str> = query.status.map(RunStatus::as_str);
        let limit = query.limit as i64 + 1;
        let rows = self
            .query(
                "list runs",
                &format!(
                    "SELECT {RUN_COLUMNS} FROM coditect_runs WHERE tenant = $1
                     AND ($2::text IS NULL OR status = $2) AND ($3::uuid IS NULL OR id < $3)
                     ORDER BY id DESC LIMIT $4"
                ),
                &[&query.tenant.as_str(), &status, &before, &limit],
            )
            .await?;
        let mut runs = rows.iter().map(run_of).collect::<Result<Vec<_>, _>>()?;
        let next = if runs.len() > query.limit {
            runs.truncate(query.limit);
            runs.last().map(|r| Cursor::after_run(r.id))
        } else {
            None
        };
        Ok(RunPage { runs, next })
    }

    async fn delete_run(&self, run: RunId) -> Result<(), StoreError> {
        // The journal and snapshot go with the row (ON DELETE CASCADE).
        let rows = self
            .query(
                "delete a run",
                "DELETE FROM coditect_runs WHERE id = $1
                 AND status IN ('finished', 'failed', 'cancelled') RETURNING id",
                &[run.as_uuid()],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        let status = self.run(run).await?.status;
        Err(StoreError::RunActive { run, status })
    }

    async fn append(
        &self,
        run: RunId,
        expected_seq: u64,
        fence: Option<FencingToken>,
        records: &[NewRecord],
    ) -> Result<u64, StoreError> {
        check_append(run, records, self.inner.options.max_record_bytes)?;
        let token = i64_of(fence.map_or(0, FencingToken::get))?;
        let expected = i64_of(expected_seq)?;
        let n = records.len() as u64;
        if n > 0 {
            let mut seqs = Vec::with_capacity(records.len());
            let mut frames = Vec::with_capacity(records.len());
            for (i, r) in records.iter().enumerate() {
                let seq = expected_seq + i as u64;
                seqs.push(i64_of(seq)?);
                frames.push(encode(seq, r.kind(), r.payload()));
            }
            let new_head = i64_of(expected_seq + n)?;
            // One statement: the conditional update takes the run's row lock
            // (concurrent appenders queue on it and then find head moved), and
            // the rows are inserted only if it matched.
            let rows = self
                .query(
                    "append",
                    "WITH bump AS (
                         UPDATE coditect_runs SET head = $4
                         WHERE id = $1 AND head = $2 AND fence = $3 RETURNING id)
                     INSERT INTO coditect_journal (run, seq, frame)
                     SELECT bump.id, s, f FROM bump, unnest($5::bigint[], $6::bytea[]) AS t(s, f)
                     RETURNING seq",
                    &[run.as_uuid(), &expected, &token, &new_head, &seqs, &frames],
                )
                .await;
            match rows {
                Ok(rows) if rows.len() as u64 == n => return Ok(expected_seq + n),
                Ok(_) => {}
                // The primary key (run, seq) refused a second record at a
                // position: the second line of the check, reported the same.
                Err(e) if sql_state(&e) == Some(&SqlState::UNIQUE_VIOLATION) => {}
                Err(e) => return Err(e),
            }
        }
        // Nothing written (or nothing to write): say why, from the row as it
        // is now.
        let (head, current, _, _) = self.state(run).await?;
        check_fence(run, fence, current)?;
        if head != expected_seq {
            return Err(StoreError::Conflict {
                run,
                expected: expected_seq,
                actual: head,
            });
        }
        if n == 0 {
            return Ok(head);
        }
        // The row matches now but did not when the append ran: a writer got
        // in between and the state moved back is impossible (head only
        // grows), so this is a lost race reported as a conflict.
        Err(StoreError::Conflict {
            run,
            expected: expected_seq,
            actual: head,
        })
    }

    async fn read(
        &self,
        run: RunId,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<Record>, StoreError> {
        let from = i64::try_from(from_seq).unwrap_or(i64::MAX);
        let lim = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                "read the journal",
                "SELECT seq, frame FROM coditect_journal WHERE run = $1 AND seq >= $2
                 ORDER BY seq LIMIT $3",
                &[run.as_uuid(), &from, &lim],
            )
            .await?;
        if rows.is_empty() {
            // An empty page of an existing run, or no such run.
            self.state(run).await?;
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(rows.len());
        for (want, row) in (from_seq..).zip(rows.iter()) {
            let seq: i64 = row.try_get(0).map_err(pg("read the journal"))?;
            if u64_of(seq) != want {
                return Err(StoreError::Corrupt {
                    run,
                    seq: want,
                    what: "record",
                    reason: format!("missing: the journal goes on at seq {seq}"),
                });
            }
            let frame: &[u8] = row.try_get(1).map_err(pg("read the journal"))?;
            out.push(decode_record(run, want, frame)?);
        }
        Ok(out)
    }

    async fn head(&self, run: RunId) -> Result<u64, StoreError> {
        Ok(self.state(run).await?.0)
    }

    async fn put_snapshot(&self, run: RunId, snapshot: &Snapshot) -> Result<(), StoreError> {
        check_snapshot(run, snapshot, self.inner.options.max_snapshot_bytes)?;
        let frame = encode_snapshot(snapshot);
        let seq = i64_of(snapshot.seq)?;
        let r = self
            .query(
                "store a snapshot",
                "INSERT INTO coditect_snapshots (run, seq, frame) VALUES ($1, $2, $3)
                 ON CONFLICT (run) DO UPDATE SET seq = excluded.seq, frame = excluded.frame
                 WHERE excluded.seq >= coditect_snapshots.seq",
                &[run.as_uuid(), &seq, &frame],
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if sql_state(&e) == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                Err(StoreError::NotFound { run })
            }
            Err(e) => Err(e),
        }
    }

    async fn latest_snapshot(&self, run: RunId) -> Result<Option<Snapshot>, StoreError> {
        let rows = self
            .query(
                "read a snapshot",
                "SELECT seq, frame FROM coditect_snapshots WHERE run = $1",
                &[run.as_uuid()],
            )
            .await?;
        let Some(row) = rows.first() else {
            self.state(run).await?;
            return Ok(None);
        };
        let seq: i64 = row.try_get(0).map_err(pg("read a snapshot"))?;
        let frame: &[u8] = row.try_get(1).map_err(pg("read a snapshot"))?;
        decode_snapshot(run, u64_of(seq), frame).map(Some)
    }

    async fn acquire_lease(
        &self,
        run: RunId,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        check_lease_args(holder, ttl)?;
        let ttl = ttl_ms(ttl);
        // A lease released between the refusal and the look that explains it
        // is tried again; bounded.
        for _ in 0..3 {
            let rows = self
                .query(
                    "take a lease",
                    &format!(
                        "UPDATE coditect_runs SET fence = fence + 1, lease_holder = $2,
                             lease_expires_ms = {NOW_MS} + $3
                         WHERE id = $1 AND (lease_holder IS NULL OR lease_holder = $2
                             OR lease_expires_ms <= {NOW_MS})
                         RETURNING fence, lease_expires_ms"
                    ),
                    &[run.as_uuid(), &holder, &ttl],
                )
                .await?;
            if let Some(row) = rows.first() {
                let fence: i64 = row.try_get(0).map_err(pg("take a lease"))?;
                let expires: i64 = row.try_get(1).map_err(pg("take a lease"))?;
                return Ok(Lease {
                    run,
                    holder: holder.to_owned(),
                    token: FencingToken::new(u64_of(fence)),
                    expires: from_ms(expires),
                });
            }
            if let (_, _, Some(h), Some(expires)) = self.state(run).await? {
                return Err(StoreError::Busy {
                    run,
                    holder: h,
                    expires: from_ms(expires),
                });
            }
        }
        Err(StoreError::backend(
            BACKEND,
            "take a lease",
            std::io::Error::other("the lease kept changing hands"),
        ))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<Lease, StoreError> {
        check_lease_args(&lease.holder, ttl)?;
        let run = lease.run;
        let token = i64_of(lease.token.get())?;
        let rows = self
            .query(
                "renew a lease",
                &format!(
                    "UPDATE coditect_runs SET lease_expires_ms = {NOW_MS} + $3
                     WHERE id = $1 AND fence = $2 AND lease_holder IS NOT NULL
                     RETURNING lease_expires_ms"
                ),
                &[run.as_uuid(), &token, &ttl_ms(ttl)],
            )
            .await?;
        if let Some(row) = rows.first() {
            let expires: i64 = row.try_get(0).map_err(pg("renew a lease"))?;
            return Ok(Lease {
                expires: from_ms(expires),
                ..lease.clone()
            });
        }
        let (_, current, _, _) = self.state(run).await?;
        Err(StoreError::Fenced {
            run,
            token: Some(lease.token),
            current,
        })
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        let run = lease.run;
        let token = i64_of(lease.token.get())?;
        let rows = self
            .query(
                "release a lease",
                "UPDATE coditect_runs SET lease_holder = NULL, lease_expires_ms = NULL
                 WHERE id = $1 AND fence = $2 RETURNING id",
                &[run.as_uuid(), &token],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(());
        }
        let (_, current, _, _) = self.state(run).await?;
        Err(StoreError::Fenced {
            run,
            token: Some(lease.token),
            current,
        })
    }
}
