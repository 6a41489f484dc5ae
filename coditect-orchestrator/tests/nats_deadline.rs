//! A remote handler stops at its caller's deadline even when the caller is
//! gone: the worker's own deadline table fires the handler's token, with no
//! cancel from the caller (whose connection is closed by then) — whether the
//! handler runs in the id's drain task (its first message) or in the
//! delivering task (an idle id), where the deadline entry is made only once
//! the handler waits.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::{NatsEvent, NatsOptions};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentId, RequestOptions, Runtime, Transport,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(20);
/// Long enough for the caller's connection to be closed before it passes.
const DEADLINE: Duration = Duration::from_secs(3);

/// Says it started, then (asked to wait) waits for its token (or 30 s) and
/// says which came.
struct Slow {
    started: mpsc::UnboundedSender<Option<Duration>>,
    stopped: mpsc::UnboundedSender<bool>,
}

impl Agent for Slow {
    type Input = bool;
    type Output = ();
    async fn handle(&mut self, wait: bool, ctx: &AgentContext) -> Result<(), AgentError> {
        if !wait {
            return Ok(());
        }
        let _ = self.started.send(ctx.deadline().map(|d| d.remaining()));
        let cancelled = tokio::select! {
            () = ctx.cancelled() => true,
            () = tokio::time::sleep(Duration::from_secs(30)) => false,
        };
        let _ = self.stopped.send(cancelled);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_handler_stops_at_the_deadline_of_a_caller_that_is_gone() {
    stops_at_the_deadline(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_of_an_idle_id_stops_at_the_deadline_of_a_caller_that_is_gone() {
    stops_at_the_deadline(true).await;
}

/// `warm`: the id has handled a message before, so it is idle and live.
async fn stops_at_the_deadline(warm: bool) {
    let server = NatsServer::start().expect("start nats-server");
    let worker = Runtime::builder(NatsOptions::new(server.url()).connect().await.unwrap())
        .build()
        .await
        .unwrap();
    let (started, mut has_started) = mpsc::unbounded_channel();
    let (stopped, mut has_stopped) = mpsc::unbounded_channel();
    worker
        .register("slow", move |_| Slow {
            started: started.clone(),
            stopped: stopped.clone(),
        })
        .await
        .unwrap();

    let caller_transport = Arc::new(NatsOptions::new(server.url()).connect().await.unwrap());
    let mut caller_events = caller_transport.events();
    let caller = Runtime::builder_arc(caller_transport.clone() as Arc<dyn Transport>)
        .build()
        .await
        .unwrap();
    if warm {
        timeout(
            T,
            caller.request::<()>(&AgentId::new("slow", "s").unwrap(), false),
        )
        .await
        .expect("no answer in time")
        .expect("the first request failed");
    }
    let asked = tokio::spawn(async move {
        let r = caller
            .request_with::<()>(
                AgentId::new("slow", "s").unwrap(),
                true,
                RequestOptions::timeout(DEADLINE),
            )
            .await;
        (r, caller)
    });
    let left = timeout(T, has_started.recv())
        .await
        .expect("the handler did not start")
        .expect("the handler's channel closed");
    assert!(
        left.is_some_and(|l| l <= DEADLINE),
        "the handler saw {left:?} of a {DEADLINE:?} deadline"
    );

    // The caller goes away: its connection is closed, so no cancel of its
    // can reach the worker.
    caller_transport.client().drain().await.unwrap();
    timeout(T, async {
        loop {
            match caller_events.recv().await {
                Ok(NatsEvent::Closed) | Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                    return;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the caller's connection did not close");

    let cancelled = timeout(T, has_stopped.recv())
        .await
        .expect("the remote handler was not stopped at its deadline")
        .expect("the handler's channel closed");
    assert!(cancelled, "the handler ran out its sleep instead");

    let (answer, caller) = timeout(T, asked).await.expect("the caller hung").unwrap();
    assert!(answer.is_err(), "a request past its deadline succeeded");
    let _ = timeout(T, caller.shutdown(Duration::from_secs(1))).await;
    let _ = timeout(T, worker.shutdown(Duration::from_secs(1))).await;
}
