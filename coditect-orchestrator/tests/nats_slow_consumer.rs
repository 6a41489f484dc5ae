//! A core-NATS subscription that falls behind is reported, not silent.
//!
//! A worker hosts an at-most-once kind whose one activation is stuck, with a
//! mailbox of one and room for four messages in the client's subscription
//! buffer. A caller on another connection sends it 200 messages: the
//! subscription overflows, the client drops what does not fit, and the
//! worker's transport says so — a `NatsEvent::SlowConsumer`, its
//! `slow_consumers` counter and the `coditect.nats.slow_consumers` metric.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::{KindDelivery, NatsEvent, NatsOptions};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentId, FailureKind, RequestOptions, Runtime, Transport,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::sync::Semaphore;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);

/// Takes one permit per message: with none handed out, its first message
/// holds the activation and the rest queue up behind it.
struct Stuck {
    gate: Arc<Semaphore>,
}

impl Agent for Stuck {
    type Input = u32;
    type Output = ();
    async fn handle(&mut self, _: u32, _ctx: &AgentContext) -> Result<(), AgentError> {
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|e| AgentError::permanent(e.to_string()))?;
        permit.forget();
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_subscription_is_reported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();
    coditect_orchestrator::observe::metrics::enable();

    let server = NatsServer::start().expect("start nats-server");
    let worker_transport = Arc::new(
        NatsOptions::new(server.url())
            .kind_delivery(KindDelivery::AtMostOnce)
            .subscription_capacity(4)
            .connect()
            .await
            .unwrap(),
    );
    let mut events = worker_transport.events();
    let worker = Runtime::builder_arc(worker_transport.clone() as Arc<dyn Transport>)
        .mailbox(1)
        .build()
        .await
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    worker
        .register("stuck", move |_| Stuck { gate: g.clone() })
        .await
        .unwrap();

    let caller = Runtime::builder(
        NatsOptions::new(server.url())
            .kind_delivery(KindDelivery::AtMostOnce)
            .connect()
            .await
            .unwrap(),
    )
    .build()
    .await
    .unwrap();
    let to = AgentId::new("stuck", "one").unwrap();
    for n in 0..200u32 {
        timeout(T, caller.send(to.clone(), n))
            .await
            .expect("a send hung")
            .unwrap();
    }

    let reported = timeout(T, async {
        loop {
            match events.recv().await {
                Ok(NatsEvent::SlowConsumer) => return true,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
            }
        }
    })
    .await
    .expect("no slow-consumer event within the bound");
    assert!(
        reported,
        "the event stream closed without a slow-consumer event"
    );
    assert!(
        worker_transport.metrics().slow_consumers >= 1,
        "{:?}",
        worker_transport.metrics()
    );
    let counted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "coditect.nats.slow_consumers")
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert!(counted >= 1, "the slow_consumers metric was not counted");

    // Let the stuck activation go: the worker keeps working after the drop.
    // While it drains its backlog the buffer may still be full, and a
    // request arriving then is dropped too (core NATS is at most once), so
    // the request is asked again, a bounded number of times.
    gate.add_permits(1_000);
    let mut answered = false;
    for _ in 0..20 {
        let asked = caller.request_with::<()>(
            to.clone(),
            7u32,
            RequestOptions::timeout(Duration::from_secs(1)),
        );
        match timeout(T, asked)
            .await
            .expect("a request outlived its timeout")
        {
            Ok(()) => {
                answered = true;
                break;
            }
            Err(e) if e.kind() == FailureKind::Timeout => {}
            Err(e) => panic!("a request after the overflow failed: {e:?}"),
        }
    }
    assert!(answered, "the worker answered nothing after the overflow");
    timeout(T, worker.shutdown(Duration::from_secs(2)))
        .await
        .expect("worker shutdown hung");
    timeout(T, caller.shutdown(Duration::from_secs(2)))
        .await
        .expect("caller shutdown hung");
}
