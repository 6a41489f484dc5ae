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
