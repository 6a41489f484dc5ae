//! The store conformance suite against the in-memory store.
#![cfg(feature = "test-utils")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use coditect_orchestrator::RunId;
use coditect_orchestrator::store::conformance::{self, Harness};
use coditect_orchestrator::store::{MemoryStore, Store, StoreOptions};

struct Memory(MemoryStore);

#[async_trait]
impl Harness for Memory {
    async fn open(&self) -> Arc<dyn Store> {
        Arc::new(self.0.clone())
    }
    async fn open_with(&self, options: StoreOptions) -> Arc<dyn Store> {
        Arc::new(MemoryStore::with_options(options))
    }
    async fn overwrite_record(&self, run: RunId, seq: u64, bytes: Vec<u8>) {
        assert!(
            self.0.overwrite_stored_record(run, seq, bytes),
            "no record {seq} of {run}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conforms() {
    conformance::run_all(&Memory(MemoryStore::new())).await;
}
