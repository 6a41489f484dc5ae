//! A durable run over NATS whose orchestrator dies while a worker in another
//! process still handles one of its steps: the worker's result reaches the
//! orchestrator that resumes the run, which takes it (output, usage once)
//! instead of waiting on the attempt it sent itself, and stops that one.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use coditect_orchestrator::orchestrator::{DurableErrorKind, RunEvent, StaticPlanner};
use coditect_orchestrator::store::{JetStreamStore, StoreOptions};
use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, Orchestrator, Plan, RunId, Runtime, Step, StepInput, TaskSpec,
    Usage,
};
use tokio::sync::Notify;
use tokio::time::timeout;

use common::{T, connect, fast_durable, spawn_process_ready};

const ORCHESTRATOR: &str = "CODITECT_RESUME_ORCHESTRATOR";

fn plan() -> Plan {
    Plan::new([Step::new("work", "slow", StepInput::Goal)])
}

fn spent() -> Usage {
    Usage {
        input_tokens: 120,
        output_tokens: 30,
        cost_usd: 0.5,
        ..Usage::default()
    }
}

/// What the test sees of the worker's handlers.
#[derive(Default)]
struct Seen {
    /// Attempt 1 started.
    first: Notify,
    /// Attempt 1 may finish.
    go: Notify,
    /// A later attempt started.
    later: Notify,
    /// Later attempts whose token fired.
    cancelled: AtomicUsize,
    stopped: Notify,
}

/// Attempt 1 spends, then finishes when the test says so; later attempts
/// wait for their token (the test fails if they are what ends the step).
struct Slow(Arc<Seen>);

impl Agent for Slow {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, goal: String, ctx: &AgentContext) -> Result<String, AgentError> {
        let seen = &self.0;
        if ctx.call_context().attempt == 1 {
            seen.first.notify_one();
            seen.go.notified().await;
            ctx.report_usage(spent()).await.ok();
            return Ok(format!("{goal}: done by attempt 1"));
        }
        seen.later.notify_one();
        let fired = timeout(T, ctx.cancelled()).await.is_ok();
        if fired {
            seen.cancelled.fetch_add(1, Ordering::SeqCst);
            seen.stopped.notify_one();
        }
        Err(AgentError::new("a later attempt, stopped"))
    }
}

async fn store(url: &str) -> JetStreamStore {
    let client = timeout(T, async_nats::connect(url)).await.unwrap().unwrap();
    timeout(T, JetStreamStore::open(client, StoreOptions::default()))
        .await
        .unwrap()
        .unwrap()
}

/// The first orchestrator: submits the run, says its id, and waits to be
/// killed.
#[tokio::test]
#[ignore = "the body of a child process; the tests that spawn it run it"]
async fn orchestrator_process_entry() {
    let Ok(urls) = std::env::var(ORCHESTRATOR) else {
        return;
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let rt = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let orchestrator = Orchestrator::new(rt, StaticPlanner::new(plan()))
        .store(Arc::new(store(&urls[0]).await))
        .lease_holder("first")
        .lease_ttl(Duration::from_secs(1));
    let handle = orchestrator.submit(TaskSpec::new("job")).await.unwrap();
    println!("READY {}", handle.id());
    // Until killed; ends on its own after five minutes.
    tokio::time::sleep(Duration::from_secs(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_finished_after_its_orchestrator_died_reaches_the_resumed_run() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];

    // The worker, in this process, on its own connection.
    let seen = Arc::new(Seen::default());
    let worker = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let s = seen.clone();
    worker
        .kind("slow")
        .capability("slow")
        .register(move |_| Slow(s.clone()))
        .await
        .unwrap();

    // The first orchestrator, in its own process, sends the step.
    let (mut first, ready) =
        spawn_process_ready("orchestrator_process_entry", ORCHESTRATOR, &urls, 0).await;
    let run: RunId = ready
        .split("READY ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the run id")
        .parse()
        .unwrap();
    timeout(T, seen.first.notified())
        .await
        .expect("attempt 1 starts");

    // It dies (SIGKILL: no cleanup, no cancel) while the step runs; then
    // the step finishes, with nobody left to take its reply.
    first.start_kill().unwrap();
    timeout(T, first.wait()).await.unwrap().unwrap();
    seen.go.notify_one();

    // A second orchestrator resumes the run once the lease (1 s) is out:
    // until then the run is busy (bounded: 200 tries, 50 ms apart).
    let rt = Runtime::builder(connect(&urls, fast_durable()).await)
        .build()
        .await
        .unwrap();
    let store = Arc::new(store(&urls[0]).await);
    let second = Orchestrator::new(rt, StaticPlanner::new(plan()))
        .store(store.clone())
        .lease_holder("second");
    let mut handle = None;
    for _ in 0..200 {
        match second.resume(run).await {
            Ok(h) => {
                handle = Some(h);
                break;
            }
            Err(e) if e.kind() == DurableErrorKind::Busy => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("resume failed: {e}"),
        }
    }
    let handle = handle.expect("the lease ran out");
    let outcome = timeout(T, handle.outcome())
        .await
        .expect("the resumed run ends")
        .expect("the resumed run succeeds");

    // The result is attempt 1's, and its spend counts once.
    assert_eq!(outcome.output, serde_json::json!("job: done by attempt 1"));
    assert_eq!(outcome.usage.input_tokens, 120);
    assert_eq!(outcome.usage.output_tokens, 30);
    let stored = second.replay(run).await.unwrap();
    let succeeded: Vec<u32> = stored
        .events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::StepSucceeded { attempt, .. } => Some(*attempt),
            _ => None,
        })
        .collect();
    assert_eq!(succeeded, vec![1], "one success, attempt 1's");
    let reported: u64 = stored
        .events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::UsageReported { usage, .. } => Some(usage.input_tokens),
            _ => None,
        })
        .sum();
    assert_eq!(reported, 120, "the usage is in the journal once");
    assert_eq!(stored.state.output, Some(outcome.output.clone()));
    // Both orchestrators' events, in causal order: the late result of the
    // interrupted attempt ends the step, nothing of it comes after.
    coditect_orchestrator::testing::check_causal_order(&stored.events).unwrap();

    // The attempt the resumed run sent, if a worker took it, was stopped.
    if timeout(Duration::from_millis(1), seen.later.notified())
        .await
        .is_ok()
    {
        timeout(T, seen.stopped.notified())
            .await
            .expect("the later attempt's token fires");
        assert_eq!(seen.cancelled.load(Ordering::SeqCst), 1);
    }
    worker.shutdown(Duration::from_secs(2)).await;
}
