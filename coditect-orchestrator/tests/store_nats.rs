//! The store conformance suite against a real nats-server with JetStream,
//! with each handle its own connection, as separate processes would have.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use coditect_orchestrator::RunId;
use coditect_orchestrator::store::conformance::{self, Harness};
use coditect_orchestrator::store::{JetStreamStore, Store, StoreOptions};
use coditect_orchestrator::testing::NatsServer;
use tokio::time::timeout;

const STEP: Duration = Duration::from_secs(30);

struct Nats {
    server: NatsServer,
}

impl Nats {
    async fn connect(&self, options: StoreOptions) -> JetStreamStore {
        let client = timeout(STEP, async_nats::connect(self.server.url()))
            .await
            .unwrap()
            .unwrap();
        timeout(STEP, JetStreamStore::open(client, options))
            .await
            .unwrap()
            .unwrap()
    }
}

#[async_trait]
impl Harness for Nats {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(self.connect(StoreOptions::default()).await)
    }
    async fn open_with(&self, options: StoreOptions) -> Arc<dyn Store> {
        Arc::new(self.connect(options).await)
    }
    async fn overwrite_record(&self, run: RunId, seq: u64, bytes: Vec<u8>) {
        let store = self.connect(StoreOptions::default()).await;
        timeout(STEP, store.overwrite_stored_record(run, seq, bytes))
            .await
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_store_conforms() {
    let server = NatsServer::start().expect("start nats-server");
    conformance::run_all(&Nats { server }).await;
}
