//! The orchestrator end to end over the in-memory transport.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, PlanError, RetryOn, RetryPolicy, RunErrorKind, RunEvent, RunPolicy,
    RunState, RunStatus, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, FailureKind, InMemoryTransport, Runtime, Usage,
};
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(30);

async fn runtime() -> Runtime {
    Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap()
}

/// Answers `<prefix>(<input>)`.
struct Wrap(&'static str);
impl Agent for Wrap {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
        Ok(format!("{}({s})", self.0))
    }
}

/// Delegates to "search", hands the result to "summarize", answers with that.
struct Researcher;
impl Agent for Researcher {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, goal: String, ctx: &AgentContext) -> Result<String, AgentError> {
        let found: String = ctx.delegate("search", goal).await?;
        let summary: String = ctx.delegate("summarize", found).await?;
        Ok(format!("research[{summary}]"))
    }
}

#[tokio::test]
async fn the_seed_scenario_a_delegates_to_b_then_c() {
    let rt = runtime().await;
    rt.kind("researcher")
        .capability("research")
        .register(|_| Researcher)
        .await
        .unwrap();
    rt.kind("searcher")
        .capability("search")
        .register(|_| Wrap("found"))
        .await
        .unwrap();
    rt.kind("summarizer")
        .capability("summarize")
        .register(|_| Wrap("summary"))
        .await
        .unwrap();
    rt.kind("reviewer")
        .capability("review")
        .register(|_| Wrap("reviewed"))
        .await
        .unwrap();
    rt.kind("publisher")
        .capability("publish")
        .register(|_| Wrap("published"))
        .await
        .unwrap();
    let plan = Plan::new([
        Step::new("research", "research", StepInput::Goal),
        Step::new("review", "review", StepInput::output("research")),
        Step::new("publish", "publish", StepInput::output("review")),
    ]);
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan));
    let out = timeout(T, orch.run(TaskSpec::new("rust actors")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        out.output,
        json!("published(reviewed(research[summary(found(rust actors))]))")
    );
    assert_eq!(out.steps.len(), 3);
    // The trace: three step roots in order; under research, the searcher then
    // the summarizer, each asked by the researcher.
    let kinds = |n: &coditect_orchestrator::orchestrator::TraceNode| {
        n.agents()
            .iter()
            .map(|a| a.split('/').next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(out.trace.len(), 3, "{:#?}", out.trace);
    assert_eq!(
        kinds(&out.trace[0]),
        ["researcher", "searcher", "summarizer"]
    );
    assert_eq!(out.trace[0].children.len(), 2);
    assert!(
        out.trace[0]
            .children
            .iter()
            .all(|c| c.children.is_empty() && c.ok == Some(true))
    );
    assert_eq!(kinds(&out.trace[1]), ["reviewer"]);
    assert_eq!(kinds(&out.trace[2]), ["publisher"]);
    assert_eq!(out.state.status, RunStatus::Succeeded);
    // Two delegations and three steps: five units of work.
    assert_eq!(out.state.units, 5);
}

/// Answers with the JSON it was given, so a join can show what it saw.
struct Echo;
impl Agent for Echo {
    type Input = serde_json::Value;
    type Output = serde_json::Value;
    async fn handle(
        &mut self,
        v: serde_json::Value,
        _: &AgentContext,
    ) -> Result<serde_json::Value, AgentError> {
        Ok(v)
    }
}

/// Adds one to a number.
struct Inc;
impl Agent for Inc {
    type Input = u64;
    type Output = u64;
    async fn handle(&mut self, n: u64, _: &AgentContext) -> Result<u64, AgentError> {
        Ok(n + 1)
    }
}

#[tokio::test]
async fn a_diamond_join_sees_both_parents() {
    let rt = runtime().await;
    rt.kind("echo").register(|_| Echo).await.unwrap();
    rt.kind("wrap")
        .capability("wrap")
        .register(|_| Wrap("w"))
        .await
        .unwrap();
    let plan = Plan::new([
        Step::new("a", "echo", StepInput::literal("root")),
        Step::new("b", "wrap", StepInput::output("a")),
        Step::new(
            "c",
            "echo",
            StepInput::Array(vec![StepInput::output("a"), StepInput::Goal]),
        ),
        Step::new(
            "d",
            "echo",
            StepInput::Object(
                [
                    ("left".to_string(), StepInput::output("b")),
                    ("right".to_string(), StepInput::output("c")),
                ]
                .into(),
            ),
        ),
    ]);
    let out = timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(plan)).run(TaskSpec::new("g")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        out.output,
        json!({"left": "w(root)", "right": ["root", "g"]})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wide_plan_of_a_thousand_steps() {
    let rt = runtime().await;
    rt.kind("inc").register(|_| Inc).await.unwrap();
    let plan =
        Plan::new((0..1000u64).map(|i| Step::new(format!("s{i}"), "inc", StepInput::literal(i))));
    let out = timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(plan)).run(TaskSpec::new("wide")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.steps.len(), 1000);
    let obj = out.output.as_object().unwrap();
    assert_eq!(obj.len(), 1000);
    for i in 0..1000u64 {
        assert_eq!(obj[&format!("s{i}")], json!(i + 1));
    }
}

#[tokio::test]
async fn a_deep_plan_of_a_hundred_chained_steps() {
    let rt = runtime().await;
    rt.kind("inc").register(|_| Inc).await.unwrap();
    let mut steps = vec![Step::new("s0", "inc", StepInput::literal(0u64))];
    for i in 1..100 {
        steps.push(Step::new(
            format!("s{i}"),
            "inc",
            StepInput::output(format!("s{}", i - 1)),
        ));
    }
    let out = timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(Plan::new(steps))).run(TaskSpec::new("deep")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.output, json!(100));
}

/// Fails transiently until it has been called `fail_first` times.
struct Flaky {
    calls: Arc<AtomicUsize>,
    fail_first: usize,
}
impl Agent for Flaky {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            Err(AgentError::transient(format!("flaky failure {n}")))
        } else {
            Ok(format!("ok({s})"))
        }
    }
}

fn fast_retries(max_attempts: u32) -> RunPolicy {
    RunPolicy {
        retry: RetryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            ..RetryPolicy::default()
        },
        ..RunPolicy::default()
    }
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_counted() {
    let rt = runtime().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    rt.kind("flaky")
        .register(move |_| Flaky {
            calls: c.clone(),
            fail_first: 2,
        })
        .await
        .unwrap();
    let plan = Plan::new([Step::new("s", "flaky", StepInput::Goal)]);
    let orch = Orchestrator::new(rt, StaticPlanner::new(plan));
    let mut handle = orch.start(TaskSpec::new("x").policy(fast_retries(3)));
    let events = handle.events();
    let out = timeout(T, handle.outcome()).await.unwrap().unwrap();
    assert_eq!(out.output, json!("ok(x)"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let step = &out.state.steps["s"];
    assert_eq!(step.attempts, 3);
    let events: Vec<_> = events.collect().await;
    let retried = events
        .iter()
        .filter(|e| matches!(e.event, RunEvent::StepRetried { .. }))
        .count();
    let failed = events
        .iter()
        .filter(|e| {
            matches!(
                e.event,
                RunEvent::StepFailed {
                    will_retry: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!((retried, failed), (2, 2));
}

#[tokio::test]
async fn retries_stop_at_the_limit_and_permanent_errors_are_not_retried() {
    let rt = runtime().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    rt.kind("flaky")
        .register(move |_| Flaky {
            calls: c.clone(),
            fail_first: 100,
        })
        .await
        .unwrap();
    let plan = Plan::new([Step::new("s", "flaky", StepInput::Goal)]);
    let err = timeout(
        T,
        Orchestrator::new(rt.clone(), StaticPlanner::new(plan.clone()))
            .run(TaskSpec::new("x").policy(fast_retries(4))),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(matches!(err.kind, RunErrorKind::StepFailed { .. }), "{err}");

    // Never retry: one call.
    calls.store(0, Ordering::SeqCst);
    let mut p = fast_retries(4);
    p.retry.retry_on = RetryOn::Never;
    let _ = timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(plan)).run(TaskSpec::new("x").policy(p)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Always fails permanently.
struct Broken;
impl Agent for Broken {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        _: &AgentContext,
    ) -> Result<String, AgentError> {
        Err(AgentError::permanent("the disk is on fire"))
    }
}

#[tokio::test]
async fn a_permanent_failure_is_replanned_then_fails_cleanly() {
    let rt = runtime().await;
    rt.kind("good").register(|_| Wrap("good")).await.unwrap();
    rt.kind("broken").register(|_| Broken).await.unwrap();
    rt.kind("broken2").register(|_| Broken).await.unwrap();
    let plan = Plan::new([
        Step::new("first", "good", StepInput::Goal),
        Step::new("second", "broken", StepInput::output("first")),
    ]);
    let replans = Arc::new(AtomicUsize::new(0));
    let r = replans.clone();
    let planner = StaticPlanner::new(plan).with_replan(move |state, failure| {
        r.fetch_add(1, Ordering::SeqCst);
        assert!(state.steps["first"].output.is_some());
        if failure.step.as_str() == "second" {
            // Try another agent for the failed step; keep the finished one.
            Some(Plan::new([
                Step::new("first", "good", StepInput::Goal),
                Step::new("second-b", "broken2", StepInput::output("first")),
            ]))
        } else {
            None
        }
    });
    let mut handle = Orchestrator::new(rt, planner).start(TaskSpec::new("g").policy(RunPolicy {
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    }));
    let events = handle.events();
    let err = timeout(T, handle.outcome()).await.unwrap().unwrap_err();
    assert_eq!(replans.load(Ordering::SeqCst), 2);
    match &err.kind {
        RunErrorKind::StepFailed {
            step,
            agent,
            failure,
        } => {
            assert_eq!(step.as_str(), "second-b");
            assert_eq!(agent.as_ref().unwrap().kind().as_str(), "broken2");
            assert_eq!(failure.kind, FailureKind::Handler);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.message.contains("second-b")
            && err.message.contains("broken2")
            && err.message.contains("disk is on fire"),
        "{}",
        err.message
    );
    // The finished step keeps its result, and it ran once.
    assert_eq!(err.finished_steps()["first"], json!("good(g)"));
    let events: Vec<_> = events.collect().await;
    let dispatched_first = events
        .iter()
        .filter(|e| matches!(&e.event, RunEvent::StepDispatched { step, .. } if step.as_str() == "first"))
        .count();
    assert_eq!(dispatched_first, 1);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e.event, RunEvent::PlanMade { .. }))
            .count(),
        2
    );
    assert!(matches!(
        events.last().unwrap().event,
        RunEvent::RunFinished {
            status: RunStatus::Failed,
            ..
        }
    ));
}

/// Reports a fixed usage, then answers.
struct Spender(Usage);
impl Agent for Spender {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        ctx.report_usage(self.0).await?;
        Ok("spent".into())
    }
}

fn chain(n: usize, cap: &str) -> Plan {
    let mut steps = vec![Step::new("s0", cap, StepInput::Goal)];
    for i in 1..n {
        steps.push(Step::new(
            format!("s{i}"),
            cap,
            StepInput::output(format!("s{}", i - 1)),
        ));
    }
    Plan::new(steps)
}

#[tokio::test]
async fn the_token_budget_ends_the_run() {
    let rt = runtime().await;
    rt.kind("spender")
        .register(|_| Spender(Usage::new(400, 200, 0.0)))
        .await
        .unwrap();
    let policy = RunPolicy {
        max_tokens: Some(1000),
        ..RunPolicy::default()
    };
    let err = timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(chain(5, "spender")))
            .run(TaskSpec::new("x").policy(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(
        err.kind,
        RunErrorKind::TokenBudget {
            used: 1200,
            limit: 1000
        }
    );
    assert_eq!(err.state.usage.total_tokens(), 1200);
    assert!(
        err.state
            .steps
            .values()
            .filter(|s| s.output.is_some())
            .count()
            < 5
    );
}

#[tokio::test]
async fn the_cost_budget_ends_the_run() {
    let rt = runtime().await;
    rt.kind("spender")
        .register(|_| Spender(Usage::new(1, 1, 0.75)))
        .await
        .unwrap();
    let policy = RunPolicy {
        max_cost_usd: Some(1.0),
        ..RunPolicy::default()
    };
    let err = timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(chain(5, "spender")))
            .run(TaskSpec::new("x").policy(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(err.kind, RunErrorKind::CostBudget { limit, .. } if limit == 1.0),
        "{err}"
    );
}

/// Delegates to "leaf" `n` times, one after another.
struct Delegator(usize);
impl Agent for Delegator {
    type Input = serde_json::Value;
    type Output = usize;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<usize, AgentError> {
        for _ in 0..self.0 {
            let _: String = ctx.delegate("leaf", "x".to_string()).await?;
        }
        Ok(self.0)
    }
}

#[tokio::test]
async fn the_step_budget_counts_delegations() {
    let rt = runtime().await;
    rt.kind("delegator")
        .register(|_| Delegator(3))
        .await
        .unwrap();
    rt.kind("leaf").register(|_| Wrap("leaf")).await.unwrap();
    let plan = Plan::new([
        Step::new("a", "delegator", StepInput::Goal),
        Step::new("b", "delegator", StepInput::Goal).after(["a"]),
    ]);
    let policy = RunPolicy {
        max_steps: 5,
        ..RunPolicy::default()
    };
    let err = timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(plan)).run(TaskSpec::new("x").policy(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(err.kind, RunErrorKind::StepBudget { used: 6, limit: 5 }),
        "{err}"
    );
}

/// Delegates to the capability it is given, passing it the other one: A→B→A→…
struct PingPong;
impl Agent for PingPong {
    type Input = (String, String);
    type Output = String;
    async fn handle(
        &mut self,
        (next, after): (String, String),
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        Ok(ctx.delegate(&next, (after, next.clone())).await?)
    }
}

#[tokio::test]
async fn a_delegation_loop_is_stopped_by_max_depth() {
    let rt = runtime().await;
    rt.kind("ping")
        .capability("ping")
        .register(|_| PingPong)
        .await
        .unwrap();
    rt.kind("pong")
        .capability("pong")
        .register(|_| PingPong)
        .await
        .unwrap();
    let plan = Plan::new([Step::new(
        "loop",
        "ping",
        StepInput::literal(serde_json::json!(["pong", "ping"])),
    )]);
    let policy = RunPolicy {
        max_depth: 4,
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    };
    let err = timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(plan)).run(TaskSpec::new("x").policy(policy)),
    )
    .await
    .expect("a delegation loop hung")
    .unwrap_err();
    match &err.kind {
        RunErrorKind::StepFailed { failure, .. } => {
            assert_eq!(failure.kind, FailureKind::Policy, "{failure}");
            assert!(
                failure.message.contains("max delegation depth 4"),
                "{failure}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Depths 1..=4 were delegated, then the fifth hop was refused.
    assert_eq!(err.state.units, 1 + 4);
}

/// Hands `n` subtasks to "leaf" at once.
struct FanOut(usize);
impl Agent for FanOut {
    type Input = serde_json::Value;
    type Output = Vec<String>;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<Vec<String>, AgentError> {
        let results = ctx
            .delegate_all::<String, String>(
                (0..self.0).map(|i| ("leaf".to_string(), i.to_string())),
            )
            .await?;
        results
            .into_iter()
            .map(|r| r.map_err(AgentError::from))
            .collect()
    }
}

#[tokio::test]
async fn parallel_hand_off_gathers_results_and_fan_out_is_bounded() {
    let rt = runtime().await;
    rt.kind("fan3").register(|_| FanOut(3)).await.unwrap();
    rt.kind("fan5").register(|_| FanOut(5)).await.unwrap();
    rt.kind("leaf").register(|_| Wrap("leaf")).await.unwrap();
    let policy = RunPolicy {
        max_fanout: 4,
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    };
    let ok = timeout(
        T,
        Orchestrator::new(
            rt.clone(),
            StaticPlanner::new(Plan::new([Step::new("f", "fan3", StepInput::Goal)])),
        )
        .run(TaskSpec::new("x").policy(policy.clone())),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(ok.output, json!(["leaf(0)", "leaf(1)", "leaf(2)"]));
    assert_eq!(ok.trace[0].children.len(), 3);
    let err = timeout(
        T,
        Orchestrator::new(
            rt,
            StaticPlanner::new(Plan::new([Step::new("f", "fan5", StepInput::Goal)])),
        )
        .run(TaskSpec::new("x").policy(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    match &err.kind {
        RunErrorKind::StepFailed { failure, .. } => {
            assert_eq!(failure.kind, FailureKind::Policy);
            assert!(
                failure.message.contains("exceeds the limit of 4"),
                "{failure}"
            );
        }
        other => panic!("{other:?}"),
    }
}

/// Hands out its cancellation token, then waits until cancelled.
struct Sleeper(mpsc::UnboundedSender<coditect_orchestrator::CancellationToken>);
impl Agent for Sleeper {
    type Input = serde_json::Value;
    type Output = ();
    async fn handle(&mut self, _: serde_json::Value, ctx: &AgentContext) -> Result<(), AgentError> {
        let _ = self.0.send(ctx.cancellation().clone());
        ctx.cancelled().await;
        Err(AgentError::transient("stopped"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_timeout_fails_the_step_and_cancels_its_handler() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.kind("sleeper")
        .register(move |_| Sleeper(tx.clone()))
        .await
        .unwrap();
    let policy = RunPolicy {
        step_timeout: Some(Duration::from_millis(100)),
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    };
    let err = timeout(
        T,
        Orchestrator::new(
            rt,
            StaticPlanner::new(Plan::new([Step::new("s", "sleeper", StepInput::Goal)])),
        )
        .run(TaskSpec::new("x").policy(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    match &err.kind {
        RunErrorKind::StepFailed { failure, .. } => assert_eq!(failure.kind, FailureKind::Timeout),
        other => panic!("{other:?}"),
    }
    let token = tokens.recv().await.unwrap();
    timeout(T, token.cancelled())
        .await
        .expect("the handler was not cancelled");
}

#[tokio::test(start_paused = true)]
async fn the_run_deadline_ends_the_run() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.kind("sleeper")
        .register(move |_| Sleeper(tx.clone()))
        .await
        .unwrap();
    let policy = RunPolicy {
        deadline: Some(Duration::from_secs(2)),
        ..RunPolicy::default()
    };
    let err = timeout(
        T,
        Orchestrator::new(
            rt,
            StaticPlanner::new(Plan::new([Step::new("s", "sleeper", StepInput::Goal)])),
        )
        .run(TaskSpec::new("x").policy(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(err.kind, RunErrorKind::Deadline);
    let token = tokens.recv().await.unwrap();
    timeout(T, token.cancelled()).await.unwrap();
}

#[tokio::test]
async fn cancelling_a_run_stops_it_and_its_handlers() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.kind("sleeper")
        .register(move |_| Sleeper(tx.clone()))
        .await
        .unwrap();
    rt.kind("inc").register(|_| Inc).await.unwrap();
    let plan = Plan::new([
        Step::new("a", "sleeper", StepInput::Goal),
        Step::new("b", "sleeper", StepInput::Goal),
        Step::new("after", "inc", StepInput::literal(1u64)).after(["a", "b"]),
    ]);
    let mut handle = Orchestrator::new(rt, StaticPlanner::new(plan)).start(TaskSpec::new("x"));
    let events = handle.events();
    let t1 = timeout(T, tokens.recv()).await.unwrap().unwrap();
    let t2 = timeout(T, tokens.recv()).await.unwrap().unwrap();
    handle.cancel();
    let err = timeout(T, handle.outcome()).await.unwrap().unwrap_err();
    assert_eq!(err.kind, RunErrorKind::Cancelled);
    timeout(T, t1.cancelled()).await.unwrap();
    timeout(T, t2.cancelled()).await.unwrap();
    let events: Vec<_> = timeout(T, events.collect::<Vec<_>>()).await.unwrap();
    assert!(matches!(
        events.last().unwrap().event,
        RunEvent::RunFinished {
            status: RunStatus::Cancelled,
            ..
        }
    ));
    assert!(!events.iter().any(
        |e| matches!(&e.event, RunEvent::StepDispatched { step, .. } if step.as_str() == "after")
    ));
}

#[tokio::test]
async fn invalid_plans_are_rejected_before_any_dispatch() {
    let rt = runtime().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    rt.kind("flaky")
        .register(move |_| Flaky {
            calls: c.clone(),
            fail_first: 0,
        })
        .await
        .unwrap();
    let cycle = Plan::new([
        Step::new("a", "flaky", StepInput::output("c")),
        Step::new("b", "flaky", StepInput::output("a")),
        Step::new("c", "flaky", StepInput::output("b")),
        Step::new("d", "flaky", StepInput::Goal),
    ]);
    let unknown = Plan::new([
        Step::new("ok", "flaky", StepInput::Goal),
        Step::new("mystery", "telepathy", StepInput::Goal),
    ]);
    for (plan, check) in [
        (
            cycle,
            Box::new(|e: &PlanError| matches!(e, PlanError::Cycle { cycle } if cycle.len() == 4))
                as Box<dyn Fn(&PlanError) -> bool>,
        ),
        (
            unknown,
            Box::new(
                |e: &PlanError| matches!(e, PlanError::UnknownCapability { step, .. } if step.as_str() == "mystery"),
            ),
        ),
    ] {
        let mut handle =
            Orchestrator::new(rt.clone(), StaticPlanner::new(plan)).start(TaskSpec::new("x"));
        let events = handle.events();
        let err = timeout(T, handle.outcome()).await.unwrap().unwrap_err();
        match &err.kind {
            RunErrorKind::InvalidPlan(e) => assert!(check(e), "{e}"),
            other => panic!("{other:?}"),
        }
        let events: Vec<_> = events.collect().await;
        assert!(
            !events
                .iter()
                .any(|e| matches!(e.event, RunEvent::StepDispatched { .. }))
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runs_at_once_are_all_correct() {
    let rt = runtime().await;
    rt.kind("inc").instances(8).register(|_| Inc).await.unwrap();
    let orch = Orchestrator::new(
        rt,
        StaticPlanner::new(Plan::new([
            Step::new("a", "inc", StepInput::TaskInput),
            Step::new("b", "inc", StepInput::output("a")),
            Step::new("c", "inc", StepInput::output("b")),
        ])),
    );
    let mut runs = Vec::new();
    for i in 0..1000u64 {
        let orch = orch.clone();
        runs.push(tokio::spawn(async move {
            (i, orch.run(TaskSpec::new("count").input(json!(i))).await)
        }));
    }
    for r in runs {
        let (i, out) = timeout(T, r).await.unwrap().unwrap();
        assert_eq!(out.unwrap().output, json!(i + 3));
    }
}

#[tokio::test]
async fn the_state_is_the_fold_of_the_events() {
    let rt = runtime().await;
    rt.kind("researcher")
        .capability("research")
        .register(|_| Researcher)
        .await
        .unwrap();
    rt.kind("searcher")
        .capability("search")
        .register(|_| Wrap("found"))
        .await
        .unwrap();
    rt.kind("summarizer")
        .capability("summarize")
        .register(|_| Wrap("summary"))
        .await
        .unwrap();
    rt.kind("spender")
        .register(|_| Spender(Usage::new(10, 5, 0.01)))
        .await
        .unwrap();
    let plan = Plan::new([
        Step::new("r", "research", StepInput::Goal),
        Step::new("s", "spender", StepInput::output("r")),
    ]);
    let mut handle = Orchestrator::new(rt, StaticPlanner::new(plan)).start(TaskSpec::new("x"));
    let events = handle.events();
    let out = timeout(T, handle.outcome()).await.unwrap().unwrap();
    let events: Vec<_> = events.collect().await;
    // In order, numbered from 0, and replaying them gives the same state.
    assert!(events.iter().enumerate().all(|(i, e)| e.seq == i as u64));
    let mut replay = RunState::new(out.run);
    for e in &events {
        replay.apply(e);
    }
    assert_eq!(
        serde_json::to_value(&replay).unwrap(),
        serde_json::to_value(&out.state).unwrap()
    );
    assert_eq!(out.usage, Usage::new(10, 5, 0.01));
    // Events and state survive a JSON round trip (what a store would keep).
    let json = serde_json::to_string(&events).unwrap();
    let back: Vec<coditect_orchestrator::orchestrator::RunEventRecord> =
        serde_json::from_str(&json).unwrap();
    assert_eq!(back, events);
}

#[tokio::test]
async fn progress_from_agents_reaches_the_event_stream() {
    struct Chatty;
    impl Agent for Chatty {
        type Input = serde_json::Value;
        type Output = u32;
        async fn handle(
            &mut self,
            _: serde_json::Value,
            ctx: &AgentContext,
        ) -> Result<u32, AgentError> {
            for i in 0..3 {
                ctx.emit(json!({"tick": i})).await?;
            }
            Ok(3)
        }
    }
    let rt = runtime().await;
    rt.kind("chatty").register(|_| Chatty).await.unwrap();
    let mut handle = Orchestrator::new(
        rt,
        StaticPlanner::new(Plan::new([Step::new("c", "chatty", StepInput::Goal)])),
    )
    .start(TaskSpec::new("x"));
    let events = handle.events();
    timeout(T, handle.outcome()).await.unwrap().unwrap();
    let ticks: Vec<_> = events
        .filter_map(|e| async move {
            match e.event {
                RunEvent::StepProgress { data, step, .. } => {
                    Some((step.unwrap().to_string(), data))
                }
                _ => None,
            }
        })
        .collect()
        .await;
    assert_eq!(
        ticks,
        (0..3)
            .map(|i| ("c".to_string(), json!({"tick": i})))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn routing_picks_the_least_loaded_agent_offering_a_capability() {
    // Two kinds offer "work"; with steps in flight, both get some.
    let rt = runtime().await;
    let seen = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    struct Record(&'static str, Arc<Mutex<HashMap<String, usize>>>);
    impl Agent for Record {
        type Input = serde_json::Value;
        type Output = ();
        async fn handle(
            &mut self,
            _: serde_json::Value,
            _: &AgentContext,
        ) -> Result<(), AgentError> {
            *self
                .1
                .lock()
                .unwrap()
                .entry(self.0.to_string())
                .or_default() += 1;
            tokio::task::yield_now().await;
            Ok(())
        }
    }
    let s1 = seen.clone();
    let s2 = seen.clone();
    rt.kind("w1")
        .capability("work")
        .register(move |_| Record("w1", s1.clone()))
        .await
        .unwrap();
    rt.kind("w2")
        .capability("work")
        .register(move |_| Record("w2", s2.clone()))
        .await
        .unwrap();
    let plan = Plan::new((0..20).map(|i| Step::new(format!("s{i}"), "work", StepInput::Goal)));
    timeout(
        T,
        Orchestrator::new(rt, StaticPlanner::new(plan)).run(TaskSpec::new("x")),
    )
    .await
    .unwrap()
    .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.values().sum::<usize>(), 20);
    assert_eq!(seen["w1"], 10, "{seen:?}");
    assert_eq!(seen["w2"], 10, "{seen:?}");
}

/// Delegates its whole input to "deep".
struct Middle;
impl Agent for Middle {
    type Input = serde_json::Value;
    type Output = ();
    async fn handle(&mut self, v: serde_json::Value, ctx: &AgentContext) -> Result<(), AgentError> {
        Ok(ctx.delegate("deep", v).await?)
    }
}

#[tokio::test]
async fn cancelling_a_run_reaches_delegated_subtasks() {
    let rt = runtime().await;
    let (tx, mut tokens) = mpsc::unbounded_channel();
    rt.kind("middle").register(|_| Middle).await.unwrap();
    rt.kind("deep")
        .register(move |_| Sleeper(tx.clone()))
        .await
        .unwrap();
    let handle = Orchestrator::new(
        rt,
        StaticPlanner::new(Plan::new([Step::new("s", "middle", StepInput::Goal)])),
    )
    .start(TaskSpec::new("x"));
    let deep = timeout(T, tokens.recv()).await.unwrap().unwrap();
    handle.cancel();
    let err = timeout(T, handle.outcome()).await.unwrap().unwrap_err();
    assert_eq!(err.kind, RunErrorKind::Cancelled);
    timeout(T, deep.cancelled())
        .await
        .expect("the delegated subtask was not cancelled");
}

#[tokio::test]
async fn usage_spent_by_a_delegated_agent_counts_against_the_run() {
    let rt = runtime().await;
    rt.kind("delegator")
        .register(|_| Delegator(2))
        .await
        .unwrap();
    rt.kind("leaf")
        .register(|_| Spender(Usage::new(300, 300, 0.0)))
        .await
        .unwrap();
    let policy = RunPolicy {
        max_tokens: Some(1000),
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    };
    let err = timeout(
        T,
        Orchestrator::new(
            rt,
            StaticPlanner::new(Plan::new([Step::new("s", "delegator", StepInput::Goal)])),
        )
        .run(TaskSpec::new("x").policy(policy)),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert_eq!(
        err.kind,
        RunErrorKind::TokenBudget {
            used: 1200,
            limit: 1000
        }
    );
    // The usage is attributed to the step that caused it.
    assert_eq!(err.state.steps["s"].usage.total_tokens(), 1200);
}

/// A planner that spends tokens on every plan it makes.
struct CostlyPlanner(Usage);
#[async_trait::async_trait]
impl coditect_orchestrator::orchestrator::Planner for CostlyPlanner {
    async fn plan(
        &self,
        _task: &TaskSpec,
        ctx: &coditect_orchestrator::orchestrator::PlanningContext,
    ) -> Result<Plan, PlanError> {
        ctx.report_usage(self.0);
        Ok(Plan::new([Step::new("s", "inc", StepInput::literal(1u64))]))
    }
}

#[tokio::test]
async fn planning_counts_against_the_run() {
    let rt = runtime().await;
    rt.kind("inc").register(|_| Inc).await.unwrap();
    let out = timeout(
        T,
        Orchestrator::new(rt.clone(), CostlyPlanner(Usage::new(100, 20, 0.0)))
            .run(TaskSpec::new("x")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.usage, Usage::new(100, 20, 0.0));
    let policy = RunPolicy {
        max_tokens: Some(50),
        ..RunPolicy::default()
    };
    let mut handle = Orchestrator::new(rt, CostlyPlanner(Usage::new(100, 20, 0.0)))
        .start(TaskSpec::new("x").policy(policy));
    let events = handle.events();
    let err = timeout(T, handle.outcome()).await.unwrap().unwrap_err();
    assert_eq!(
        err.kind,
        RunErrorKind::TokenBudget {
            used: 120,
            limit: 50
        }
    );
    let events: Vec<_> = events.collect().await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.event, RunEvent::StepDispatched { .. }))
    );
}
