//! The transport conformance suite against the in-memory transport.
#![cfg(feature = "test-utils")]

use std::sync::Arc;

use async_trait::async_trait;
use coditect_orchestrator::testing::conformance::{self, Bus};
use coditect_orchestrator::{InMemoryTransport, Transport};

struct Memory(InMemoryTransport);

#[async_trait]
impl Bus for Memory {
    async fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(self.0.clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_transport_conforms() {
    conformance::run_all(&Memory(InMemoryTransport::new())).await;
}
