//! Bad values become typed errors, never `null`: a result that cannot be
//! encoded fails its step (`BadOutput`, naming the type), in memory and over
//! NATS; progress that cannot be encoded is an error to the agent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use coditect_orchestrator::orchestrator::{RunErrorKind, RunEvent, StaticPlanner};
use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::NatsOptions;
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, FailureKind, InMemoryTransport, Orchestrator, Plan,
    ReportErrorKind, Runtime, Step, StepInput, TaskSpec,
};
use futures::StreamExt;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(60);

/// A map with non-string keys: JSON cannot hold it.
type Unencodable = HashMap<(u8, u8), u8>;

struct BadOutput;

impl Agent for BadOutput {
    type Input = String;
    type Output = Unencodable;
    async fn handle(&mut self, _: String, _: &AgentContext) -> Result<Unencodable, AgentError> {
        Ok(HashMap::from([((1, 2), 3)]))
    }
}

struct BadProgress;

impl Agent for BadProgress {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, _: String, ctx: &AgentContext) -> Result<String, AgentError> {
        let unencodable: Unencodable = HashMap::from([((1, 2), 3)]);
        match ctx.emit(unencodable).await {
            Err(e) if e.kind() == ReportErrorKind::Encode => Ok(format!("refused: {e}")),
            other => Err(AgentError::permanent(format!("emit gave {other:?}"))),
        }
    }
}

async fn bad_output_fails_the_step(rt: &Runtime) {
    let plan = Plan::new([Step::new("a", "bad", StepInput::Goal)]);
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan)).cards(rt.cards());
    let mut handle = orch.start(TaskSpec::new("go"));
    let events = tokio::spawn(handle.events().collect::<Vec<_>>());
    let err = timeout(T, handle.outcome()).await.unwrap().unwrap_err();
    let RunErrorKind::StepFailed { step, failure, .. } = &err.kind else {
        panic!("expected a failed step, got {err}");
    };
    assert_eq!(step.as_str(), "a");
    assert_eq!(failure.kind, FailureKind::BadOutput, "{failure}");
    assert!(
        failure.message.contains("HashMap"),
        "names the type: {failure}"
    );
    let events = events.await.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, RunEvent::StepSucceeded { .. }))
    );
}

#[tokio::test]
async fn an_unencodable_result_fails_the_step_in_memory() {
    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap();
    rt.kind("bad").register(|_| BadOutput).await.unwrap();
    bad_output_fails_the_step(&rt).await;
}

#[tokio::test]
async fn an_unencodable_result_fails_the_step_over_nats() {
    let server = NatsServer::start().expect("start nats-server");
    let workers = Runtime::builder(NatsOptions::new(server.url()).connect().await.unwrap())
        .build()
        .await
        .unwrap();
    workers.kind("bad").register(|_| BadOutput).await.unwrap();
    let driver = Runtime::builder(NatsOptions::new(server.url()).connect().await.unwrap())
        .build()
        .await
        .unwrap();
    let plan = Plan::new([Step::new("a", "bad", StepInput::Goal)]);
    let orch = Orchestrator::new(driver, StaticPlanner::new(plan)).cards(workers.cards());
    // Before: the reply could not be encoded, so nothing came back and the
    // step waited for its timeout. Now the worker answers with the reason.
    let err = timeout(T, orch.run(TaskSpec::new("go")))
        .await
        .unwrap()
        .unwrap_err();
    let RunErrorKind::StepFailed { failure, .. } = &err.kind else {
        panic!("expected a failed step, got {err}");
    };
    assert_eq!(failure.kind, FailureKind::BadOutput, "{failure}");
    assert!(
        failure.message.contains("HashMap"),
        "names the type: {failure}"
    );
}

#[tokio::test]
async fn unencodable_progress_is_an_error_to_the_agent() {
    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap();
    rt.kind("p").register(|_| BadProgress).await.unwrap();
    let plan = Plan::new([Step::new("a", "p", StepInput::Goal)]);
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan));
    let outcome = timeout(T, orch.run(TaskSpec::new("go")))
        .await
        .unwrap()
        .unwrap();
    let out = outcome.output.as_str().unwrap().to_owned();
    assert!(out.starts_with("refused: "), "{out}");
    assert!(out.contains("HashMap"), "names the type: {out}");
}

/// Holds every task it gets until the test ends.
struct Holds;

impl Agent for Holds {
    type Input = u32;
    type Output = u32;
    async fn handle(&mut self, n: u32, ctx: &AgentContext) -> Result<u32, AgentError> {
        ctx.cancelled().await;
        Ok(n)
    }
}

/// A full task stream refuses more work with a typed error (classified by
/// JetStream's error code), rather than losing it.
#[tokio::test]
async fn a_full_task_stream_refuses_the_send() {
    use coditect_orchestrator::transport::nats::DurableOptions;
    use coditect_orchestrator::{AgentKind, SendErrorKind};
    let server = NatsServer::start().expect("start nats-server");
    let durable = DurableOptions::default()
        .max_tasks(3)
        .max_ack_pending(1)
        .batch(1);
    let rt = Runtime::builder(
        NatsOptions::new(server.url())
            .durable(durable)
            .connect()
            .await
            .unwrap(),
    )
    .build()
    .await
    .unwrap();
    rt.kind("holds")
        .instances(1)
        .register(|_| Holds)
        .await
        .unwrap();
    let kind = AgentKind::new("holds").unwrap();
    let mut refused = None;
    for n in 0..20u32 {
        if let Err(e) = timeout(T, rt.send(kind.clone(), n)).await.unwrap() {
            refused = Some((n, e.kind()));
            break;
        }
    }
    let (n, kind) = refused.expect("the stream never filled");
    assert_eq!(kind, SendErrorKind::Refused, "send {n}");
    assert!(n >= 3, "refused after {n} sends");
    rt.shutdown(Duration::from_millis(100)).await;
}
