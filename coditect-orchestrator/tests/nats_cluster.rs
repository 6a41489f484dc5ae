//! Beyond one server: a three-node NATS cluster on loopback with JetStream
//! streams of three replicas. One node is killed in the middle of a
//! 1,000-step run; clients fail over to the others and the run completes with
//! every result recorded once.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use coditect_orchestrator::Runtime;
use coditect_orchestrator::testing::NatsCluster;
use coditect_orchestrator::transport::nats::NatsOptions;
use common::*;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_in_a_three_node_cluster_loses_nothing() {
    node_loss(Retries::On).await;
}

/// With retries off: the orchestrator's connection fails over too, and the
/// replies published before its reply subscription is back on another node
/// are recalled once it is; JetStream redelivers the rest. Every step once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_off_jetstream_alone_recovers_from_a_node_loss() {
    node_loss(Retries::Off).await;
}

async fn node_loss(retries: Retries) {
    let cluster = tokio::task::spawn_blocking(|| NatsCluster::start(3))
        .await
        .unwrap()
        .expect("start a three-node nats cluster");
    let urls = cluster.urls();
    let cluster = Arc::new(Mutex::new(cluster));
    let durable = fast_durable().replicas(3);
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(worker(&urls, durable.clone(), Duration::from_millis(2)).await);
    }
    // The orchestrator's process starts on the node that will die.
    let transport = timeout(
        T,
        NatsOptions::with_urls(urls.clone())
            .retain_servers_order(true)
            .durable(durable)
            .reconnect(Duration::from_millis(500), None)
            .connect(),
    )
    .await
    .unwrap()
    .expect("connect to the cluster");
    let rt = Runtime::builder(transport.clone()).build().await.unwrap();
    let c = cluster.clone();
    let result = run_steps_with(&rt, 1000, 200, retries, || async move {
        c.lock().unwrap().kill(0);
    })
    .await;
    assert!(result.at_fault < 1000, "the node died mid-run");
    if retries == Retries::Off {
        assert_complete_without_retries(&result, 1000);
    } else {
        assert_complete(&result, 1000);
    }
    assert!(
        transport.metrics().disconnects >= 1,
        "the orchestrator's connection failed over"
    );
    for w in workers {
        w.shutdown(Duration::from_secs(2)).await;
    }
    rt.shutdown(Duration::from_secs(2)).await;
}
