//! The transport conformance suite against a real nats-server, with kinds on
//! the durable JetStream path and on core NATS.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use async_trait::async_trait;
use coditect_orchestrator::Transport;
use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::testing::conformance::{self, Bus};
use coditect_orchestrator::transport::nats::{KindDelivery, NatsOptions};

struct Nats {
    url: String,
    delivery: KindDelivery,
}

#[async_trait]
impl Bus for Nats {
    async fn transport(&self) -> Arc<dyn Transport> {
        Arc::new(
            NatsOptions::new(&self.url)
                .kind_delivery(self.delivery)
                .connect()
                .await
                .expect("connect to the test nats-server"),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_transport_conforms_with_durable_kinds() {
    let server = NatsServer::start().expect("start nats-server");
    conformance::run_all(&Nats {
        url: server.url(),
        delivery: KindDelivery::Durable,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_transport_conforms_with_at_most_once_kinds() {
    let server = NatsServer::start().expect("start nats-server");
    conformance::run_all(&Nats {
        url: server.url(),
        delivery: KindDelivery::AtMostOnce,
    })
    .await;
}
