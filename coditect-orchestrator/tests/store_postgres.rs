//! The store conformance suite against a real PostgreSQL server (Debian's
//! `postgresql` package, started by the test in a temporary directory), with
//! each handle its own pool, as separate processes would have.
#![cfg(all(feature = "postgres", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coditect_orchestrator::RunId;
use coditect_orchestrator::store::conformance::{self, Harness};
use coditect_orchestrator::store::{Durability, PostgresStore, Store, StoreOptions};
use coditect_orchestrator::testing::PostgresServer;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(30);

struct Postgres {
    server: PostgresServer,
    durability: Durability,
}

#[async_trait]
impl Harness for Postgres {
    async fn open(&self) -> Arc<dyn Store> {
        self.open_with(StoreOptions::default()).await
    }
    async fn open_with(&self, options: StoreOptions) -> Arc<dyn Store> {
        let options = options.durability(self.durability);
        Arc::new(
            timeout(
                STEP,
                PostgresStore::connect_with_pool(&self.server.connection_string(), options, 4),
            )
            .await
            .unwrap()
            .unwrap(),
        )
    }
    async fn overwrite_record(&self, run: RunId, seq: u64, bytes: Vec<u8>) {
        let (client, conn) = timeout(
            STEP,
            tokio_postgres::connect(&self.server.connection_string(), tokio_postgres::NoTls),
        )
        .await
        .unwrap()
        .unwrap();
        let task = tokio::spawn(conn);
        let n = timeout(
            STEP,
            client.execute(
                "UPDATE coditect_journal SET frame = $3 WHERE run = $1 AND seq = $2",
                &[run.as_uuid(), &(seq as i64), &bytes],
            ),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(n, 1, "no record {seq} of {run}");
        drop(client);
        let _ = timeout(STEP, task).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms() {
    let server = PostgresServer::start().expect("start PostgreSQL");
    conformance::run_all(&Postgres {
        server,
        durability: Durability::PerRecord,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_conforms_when_batched() {
    let server = PostgresServer::start().expect("start PostgreSQL");
    conformance::run_all(&Postgres {
        server,
        durability: Durability::Batched {
            max_delay: Duration::from_millis(5),
            max_records: 64,
        },
    })
    .await;
}

/// The helper stops the server it started, by its PID, when dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_server_is_stopped_by_its_pid_on_drop() {
    let server = PostgresServer::start().expect("start PostgreSQL");
    let pid = server.pid().expect("a pid");
    let proc_dir = std::path::PathBuf::from(format!("/proc/{pid}"));
    assert!(proc_dir.exists());
    let store = timeout(
        STEP,
        PostgresStore::connect(&server.connection_string(), StoreOptions::default()),
    )
    .await
    .unwrap()
    .unwrap();
    drop(store);
    tokio::task::spawn_blocking(move || drop(server))
        .await
        .unwrap();
    // A zombie has no cmdline; the process must be gone or reaped.
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    assert!(cmdline.is_empty(), "postgres {pid} still runs");
}
