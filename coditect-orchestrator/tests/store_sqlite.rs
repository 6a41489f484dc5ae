//! The store conformance suite against SQLite files, with each handle its own
//! connection (as separate processes would have), in both durability modes.
#![cfg(all(feature = "sqlite", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coditect_orchestrator::store::conformance::{self, Harness};
use coditect_orchestrator::store::{
    Durability, NewRecord, NewRun, SqliteStore, Store, StoreOptions,
};
use coditect_orchestrator::{RunId, TenantId};
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(30);

struct Sqlite {
    dir: tempfile::TempDir,
    durability: Durability,
    /// Batched: every handle is this one store (other connections see a
    /// batch only once it is committed, so the suite shares one).
    shared: tokio::sync::OnceCell<Arc<dyn Store>>,
}

impl Sqlite {
    fn new(durability: Durability) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            durability,
            shared: tokio::sync::OnceCell::new(),
        }
    }
    fn path(&self) -> PathBuf {
        self.dir.path().join("runs.db")
    }
}

#[async_trait]
impl Harness for Sqlite {
    async fn open(&self) -> Arc<dyn Store> {
        if let Durability::Batched { .. } = self.durability {
            return self
                .shared
                .get_or_init(|| self.open_with(StoreOptions::default()))
                .await
                .clone();
        }
        self.open_with(StoreOptions::default()).await
    }
    async fn open_with(&self, options: StoreOptions) -> Arc<dyn Store> {
        let options = options.durability(self.durability);
        Arc::new(
            timeout(STEP, SqliteStore::open(self.path(), options))
                .await
                .unwrap()
                .unwrap(),
        )
    }
    async fn overwrite_record(&self, run: RunId, seq: u64, bytes: Vec<u8>) {
        if let Some(shared) = self.shared.get() {
            timeout(STEP, shared.flush()).await.unwrap().unwrap();
        }
        let conn = rusqlite::Connection::open(self.path()).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        let n = conn
            .execute(
                "UPDATE coditect_journal SET frame = ?3 WHERE run = ?1 AND seq = ?2",
                rusqlite::params![&run.as_uuid().as_bytes()[..], seq as i64, bytes],
            )
            .unwrap();
        assert_eq!(n, 1, "no record {seq} of {run}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conforms() {
    conformance::run_all(&Sqlite::new(Durability::PerRecord)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_conforms_when_batched() {
    conformance::run_all(&Sqlite::new(Durability::Batched {
        max_delay: Duration::from_millis(5),
        max_records: 64,
    }))
    .await;
}

/// Appends that arrive together share commits, and each is durable when it
/// returns: a second connection opened afterwards reads every one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_commits_and_survive_a_reopen() {
    let h = Sqlite::new(Durability::PerRecord);
    let store = timeout(STEP, SqliteStore::open(h.path(), StoreOptions::default()))
        .await
        .unwrap()
        .unwrap();
    let tenant = TenantId::new("acme").unwrap();
    let runs: Vec<RunId> = (0..32).map(|_| RunId::new()).collect();
    for &run in &runs {
        timeout(
            STEP,
            store.create_run(NewRun::new(run, tenant.clone(), "g")),
        )
        .await
        .unwrap()
        .unwrap();
    }
    let before = store.stats();
    let mut tasks = Vec::new();
    for &run in &runs {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10u64 {
                store
                    .append(run, i, None, &[NewRecord::new("event", format!("{i}"))])
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        timeout(STEP, t).await.unwrap().unwrap();
    }
    let after = store.stats();
    assert_eq!(after.writes - before.writes, 320);
    assert!(after.commits - before.commits <= 320);
    drop(store);
    let reopened = timeout(STEP, SqliteStore::open(h.path(), StoreOptions::default()))
        .await
        .unwrap()
        .unwrap();
    for &run in &runs {
        assert_eq!(
            timeout(STEP, reopened.head(run)).await.unwrap().unwrap(),
            10
        );
    }
}

/// Batched: an append is acknowledged before its commit, and `flush` makes it
/// durable; a connection of its own sees it only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_appends_are_durable_after_flush() {
    let h = Sqlite::new(Durability::Batched {
        max_delay: Duration::from_secs(3600),
        max_records: 1_000_000,
    });
    let store = timeout(
        STEP,
        SqliteStore::open(h.path(), StoreOptions::default().durability(h.durability)),
    )
    .await
    .unwrap()
    .unwrap();
    let run = RunId::new();
    timeout(
        STEP,
        store.create_run(NewRun::new(run, TenantId::default(), "g")),
    )
    .await
    .unwrap()
    .unwrap();
    timeout(
        STEP,
        store.append(run, 0, None, &[NewRecord::new("event", "a")]),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        store.stats().commits,
        0,
        "batched appends wait for their commit"
    );
    // The same store reads its acknowledged append at once.
    assert_eq!(timeout(STEP, store.head(run)).await.unwrap().unwrap(), 1);
    timeout(STEP, store.flush()).await.unwrap().unwrap();
    assert_eq!(store.stats().commits, 1);
    let other = rusqlite::Connection::open(h.path()).unwrap();
    let n: i64 = other
        .query_row("SELECT COUNT(*) FROM coditect_journal", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}
