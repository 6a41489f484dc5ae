//! A run's events are in causal order over every transport: each step's start
//! before its reports, its reports (and its delegations') before its result,
//! `RunFinished` last, sequence numbers without gaps. And usage counts once,
//! from the replies, even when every report is lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use coditect_orchestrator::orchestrator::{
    RunErrorKind, RunEvent, RunEventRecord, RunOutcome, RunPolicy, StaticPlanner,
};
use coditect_orchestrator::testing::{NatsServer, check_causal_order};
use coditect_orchestrator::transport::{NatsOptions, NatsTransport};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, Destination, Envelope, InMemoryTransport, Inbox, Orchestrator,
    Plan, Route, Runtime, SendError, Step, StepInput, Subscription, TaskSpec, Transport,
    TransportError, Usage,
};
use futures::StreamExt;
use proptest::prelude::*;
use tokio::time::timeout;

const T: Duration = Duration::from_secs(60);

/// Reports progress and usage a few times, yielding in between, then answers.
struct Chatty {
    reports: u32,
    spent: Arc<AtomicU64>,
}

impl Agent for Chatty {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        input: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        for i in 0..self.reports {
            ctx.emit(serde_json::json!({ "part": i })).await?;
            tokio::task::yield_now().await;
            ctx.report_usage(Usage::new(10, 5, 0.0)).await?;
            self.spent.fetch_add(15, Ordering::Relaxed);
        }
        Ok(format!("chatty({input})"))
    }
}

/// Delegates to `chat` twice, reporting around it.
struct Delegator;

impl Agent for Delegator {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        input: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        ctx.emit("delegating").await?;
        let results = ctx
            .delegate_all::<String, _>([
                ("chat".to_string(), input.clone()),
                ("chat".to_string(), input),
            ])
            .await?;
        let mut out = Vec::new();
        for r in results {
            out.push(r?);
        }
        ctx.emit("delegated").await?;
        Ok(out.join("+"))
    }
}

/// Reports, then fails for good.
struct Failing;

impl Agent for Failing {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        ctx.emit("about to fail").await?;
        Err(AgentError::permanent("no"))
    }
}

async fn team(rt: &Runtime, spent: &Arc<AtomicU64>) {
    let s = spent.clone();
    rt.kind("chatty")
        .capability("chat")
        .instances(1)
        .register(move |_| Chatty {
            reports: 3,
            spent: s.clone(),
        })
        .await
        .unwrap();
    rt.kind("delegator")
        .capability("delegate")
        .instances(1)
        .register(|_| Delegator)
        .await
        .unwrap();
    rt.kind("failing")
        .capability("fail")
        .instances(1)
        .register(|_| Failing)
        .await
        .unwrap();
}

fn good_plan() -> Plan {
    Plan::new([
        Step::new("a", "chat", StepInput::Goal),
        Step::new("b", "delegate", StepInput::output("a")),
        Step::new("c", "chat", StepInput::output("a")),
        Step::new("d", "chat", StepInput::Goal).after(["b", "c"]),
    ])
}

fn bad_plan() -> Plan {
    Plan::new([
        Step::new("a", "chat", StepInput::Goal),
        Step::new("f", "fail", StepInput::output("a")),
    ])
}

/// Runs a plan, collecting every event it streams.
async fn run(
    rt: &Runtime,
    plan: Plan,
    policy: RunPolicy,
) -> (
    Vec<RunEventRecord>,
    Result<RunOutcome, coditect_orchestrator::orchestrator::RunError>,
) {
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan));
    let mut handle = orch.start(TaskSpec::new("go").policy(policy));
    let events = handle.events();
    let collect = tokio::spawn(events.collect::<Vec<_>>());
    let outcome = timeout(T, handle.outcome()).await.expect("run hung");
    let events = timeout(T, collect).await.expect("events hung").unwrap();
    (events, outcome)
}

fn assert_order(events: &[RunEventRecord]) {
    if let Err(v) = check_causal_order(events) {
        for e in events {
            eprintln!("{:>3} {:?}", e.seq, e.event);
        }
        panic!("causal order violated: {v}");
    }
}

fn count(events: &[RunEventRecord], f: impl Fn(&RunEvent) -> bool) -> usize {
    events.iter().filter(|e| f(&e.event)).count()
}

/// The good run and the failing run, each twice on the same warm runtime
/// (the second takes direct calls: `instances(1)`, agents already active).
async fn both_runs_twice(rt: &Runtime) {
    for _ in 0..2 {
        let (events, outcome) = run(rt, good_plan(), RunPolicy::default()).await;
        assert_order(&events);
        let outcome = outcome.unwrap();
        assert_eq!(
            count(&events, |e| matches!(e, RunEvent::Delegated { .. })),
            2
        );
        assert_eq!(
            count(&events, |e| matches!(
                e,
                RunEvent::DelegationFinished { .. }
            )),
            2
        );
        // a, c, d and the two delegations each report 3 progress + 3 usage;
        // b reports 2 progress.
        assert_eq!(
            count(&events, |e| matches!(e, RunEvent::StepProgress { .. })),
            5 * 3 + 2
        );
        assert_eq!(outcome.usage.total_tokens(), 5 * 3 * 15);
        let (events, outcome) = run(rt, bad_plan(), RunPolicy::default()).await;
        assert_order(&events);
        assert!(matches!(
            outcome.unwrap_err().kind,
            RunErrorKind::StepFailed { .. }
        ));
        assert_eq!(
            count(
                &events,
                |e| matches!(e, RunEvent::StepProgress { step: Some(s), .. } if s.as_str() == "f")
            ),
            1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_memory_events_are_in_causal_order() {
    let spent = Arc::new(AtomicU64::new(0));
    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap();
    team(&rt, &spent).await;
    for _ in 0..20 {
        both_runs_twice(&rt).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn in_memory_events_are_in_causal_order_on_one_thread() {
    let spent = Arc::new(AtomicU64::new(0));
    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap();
    team(&rt, &spent).await;
    both_runs_twice(&rt).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_nats_events_are_in_causal_order() {
    let server = NatsServer::start().expect("start nats-server");
    let spent = Arc::new(AtomicU64::new(0));
    // The agents in one process (connection), the orchestrator in another:
    // replies and reports reach it through different subscriptions.
    let workers = Runtime::builder(NatsOptions::new(server.url()).connect().await.unwrap())
        .build()
        .await
        .unwrap();
    team(&workers, &spent).await;
    let driver = Runtime::builder(NatsOptions::new(server.url()).connect().await.unwrap())
        .build()
        .await
        .unwrap();
    let cards = workers.cards();
    for _ in 0..5 {
        for (plan, ok) in [(good_plan(), true), (bad_plan(), false)] {
            let orch =
                Orchestrator::new(driver.clone(), StaticPlanner::new(plan)).cards(cards.clone());
            let mut handle = orch.start(TaskSpec::new("go"));
            let collect = tokio::spawn(handle.events().collect::<Vec<_>>());
            let outcome = timeout(T, handle.outcome()).await.expect("run hung");
            let events = timeout(T, collect).await.unwrap().unwrap();
            assert_order(&events);
            assert_eq!(outcome.is_ok(), ok);
            // Nothing lost on the way: every report of the run is there.
            let progress = count(&events, |e| matches!(e, RunEvent::StepProgress { .. }));
            assert_eq!(progress, if ok { 5 * 3 + 2 } else { 3 + 1 });
        }
    }
}

/// A transport that loses every report on a run's topic, as an at-most-once
/// transport may.
struct LosesReports(NatsTransport);

#[async_trait]
impl Transport for LosesReports {
    async fn send(&self, envelope: Envelope) -> Result<(), SendError> {
        if let Destination::Topic(t) = &envelope.to
            && t.as_str().starts_with("run.")
        {
            return Ok(());
        }
        self.0.send(envelope).await
    }
    async fn attach(
        &self,
        route: Route,
        inbox: Arc<dyn Inbox>,
    ) -> Result<Subscription, TransportError> {
        self.0.attach(route, inbox).await
    }
    fn name(&self) -> &'static str {
        "loses-reports"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_counts_once_when_every_report_is_lost() {
    let server = NatsServer::start().expect("start nats-server");
    let spent = Arc::new(AtomicU64::new(0));
    let workers = Runtime::builder(LosesReports(
        NatsOptions::new(server.url()).connect().await.unwrap(),
    ))
    .build()
    .await
    .unwrap();
    team(&workers, &spent).await;
    let driver = Runtime::builder(NatsOptions::new(server.url()).connect().await.unwrap())
        .build()
        .await
        .unwrap();
    let cards = workers.cards();
    let policy = RunPolicy {
        report_wait: Duration::from_millis(20),
        ..RunPolicy::default()
    };
    // Without a budget: the run's usage is exactly what the agents spent.
    let orch =
        Orchestrator::new(driver.clone(), StaticPlanner::new(good_plan())).cards(cards.clone());
    let mut handle = orch.start(TaskSpec::new("go").policy(policy.clone()));
    let collect = tokio::spawn(handle.events().collect::<Vec<_>>());
    let outcome = timeout(T, handle.outcome()).await.unwrap().unwrap();
    let events = timeout(T, collect).await.unwrap().unwrap();
    assert_order(&events);
    assert_eq!(outcome.usage.total_tokens(), spent.load(Ordering::Relaxed));
    assert_eq!(outcome.usage.total_tokens(), 5 * 3 * 15);
    // No report arrived, yet every step has its start (from the reply).
    assert_eq!(
        count(&events, |e| matches!(e, RunEvent::StepStarted { .. })),
        4
    );
    assert_eq!(
        count(&events, |e| matches!(e, RunEvent::StepProgress { .. })),
        0
    );

    // With a token budget of 100: a (45 tokens) and b (90) cross it, so the
    // run stops there with what was really spent.
    spent.store(0, Ordering::Relaxed);
    let chain = Plan::new([
        Step::new("a", "chat", StepInput::Goal),
        Step::new("b", "delegate", StepInput::output("a")),
        Step::new("c", "chat", StepInput::output("b")),
    ]);
    let orch = Orchestrator::new(driver.clone(), StaticPlanner::new(chain)).cards(cards);
    let budget = RunPolicy {
        max_tokens: Some(100),
        ..policy
    };
    let err = timeout(T, orch.run(TaskSpec::new("go").policy(budget)))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err.kind, RunErrorKind::TokenBudget { .. }),
        "{err}"
    );
    assert_eq!(err.state.usage.total_tokens(), 45 + 90);
    assert_eq!(
        err.state.usage.total_tokens(),
        spent.load(Ordering::Relaxed)
    );
    assert!(!err.state.steps.contains_key("c") || err.state.steps["c"].attempts == 0);
}

/// Works for a random number of yields between reports, then answers.
struct Jittery {
    spent: Arc<AtomicU64>,
}

impl Agent for Jittery {
    type Input = serde_json::Value;
    type Output = u64;
    async fn handle(
        &mut self,
        input: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<u64, AgentError> {
        let seed = ctx.message_id().as_u128() as u64;
        for i in 0..(seed % 4) {
            for _ in 0..((seed >> (i * 3)) % 5) {
                tokio::task::yield_now().await;
            }
            ctx.emit(i).await?;
            ctx.report_usage(Usage::new(1, 0, 0.0)).await?;
            self.spent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(input.as_u64().unwrap_or(0) + 1)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random plans (each step depends on a random subset of earlier ones)
    /// and random handler timings keep the order, and usage adds up.
    #[test]
    fn random_plans_keep_causal_order(
        deps in proptest::collection::vec(proptest::collection::vec(any::<bool>(), 0..8), 1..10),
        threads in 1usize..4,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let spent = Arc::new(AtomicU64::new(0));
            let runtime = Runtime::builder(InMemoryTransport::new()).build().await.unwrap();
            let s = spent.clone();
            runtime.kind("jittery").capability("j").instances(2)
                .register(move |_| Jittery { spent: s.clone() }).await.unwrap();
            let steps: Vec<Step> = deps.iter().enumerate().map(|(i, d)| {
                let after: Vec<String> = d.iter().take(i).enumerate()
                    .filter(|(_, on)| **on).map(|(j, _)| format!("s{j}")).collect();
                Step::new(format!("s{i}"), "j", StepInput::literal(i as u64)).after(after)
            }).collect();
            let (events, outcome) = run(&runtime, Plan::new(steps), RunPolicy::default()).await;
            assert_order(&events);
            let outcome = outcome.unwrap();
            assert_eq!(outcome.usage.total_tokens(), spent.load(Ordering::Relaxed));
        });
    }
}
