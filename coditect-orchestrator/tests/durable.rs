//! Durable runs: the journal is the live event stream; a run whose process
//! dies resumes in another without repeating finished steps or recorded
//! effects; one orchestrator drives a run at a time; questions pause a run
//! and are answered from any process; stored runs replay and fork.
//!
//! A "process" here is a tokio runtime of its own, killed by shutting it down
//! in the background: every task of its orchestrator, agents and lease
//! renewal stops where it is, and only the store is left (the SQLite store
//! runs on its own thread, as it does beside a real process's runtime; the
//! real child-process kills are in the examples' `durable_pipeline` test).
#![cfg(all(feature = "sqlite", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coditect_orchestrator::orchestrator::{
    DurableErrorKind, Fork, Orchestrator, Plan, Responded, RetryOn, RetryPolicy, RunErrorKind,
    RunEvent, RunEventRecord, RunPolicy, RunStatus, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::store::{
    MemoryStore, NewRecord, NewRun, RunStatus as StoredStatus, SqliteStore, Store, StoreOptions,
};
use coditect_orchestrator::testing::check_causal_order;
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, EffectKey, InMemoryTransport, RunId, Runtime, TenantId,
};
use futures::StreamExt;

/// Every effect body that ran, as `step:name`, counted from outside the runs.
type Log = Arc<Mutex<Vec<String>>>;

/// Makes two effects per step; for the step named in `block`, waits forever
/// between them (the process is killed there).
struct Worker {
    log: Log,
    block: Option<&'static str>,
    /// A step that waits forever before any effect.
    stall: Option<&'static str>,
}

impl Agent for Worker {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        input: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        let step = ctx.step().map(|s| s.to_string()).unwrap_or_default();
        if self.stall == Some(step.as_str()) {
            ctx.cancelled().await;
            return Err(AgentError::transient("cancelled"));
        }
        let log = self.log.clone();
        let s = step.clone();
        let first: u64 = ctx
            .effect("first", |_key| async move {
                let mut log = log.lock().unwrap();
                log.push(format!("{s}:first"));
                Ok(log.len() as u64)
            })
            .await?;
        if self.block == Some(step.as_str()) {
            ctx.cancelled().await;
            return Err(AgentError::transient("cancelled"));
        }
        let log = self.log.clone();
        let s = step.clone();
        let second: String = ctx
            .effect("second", |key| async move {
                log.lock().unwrap().push(format!("{s}:second"));
                Ok(key.to_string())
            })
            .await?;
        Ok(format!("{step}({input})[{first}:{}]", second.len()))
    }
}

/// Asks a person whether to go on, then answers with what they said.
struct Asker;

#[derive(Debug, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
struct Approval {
    approved: bool,
    note: Option<String>,
}

impl Agent for Asker {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        let a: Approval = ctx.ask("ship", "Ship the release?").await?;
        Ok(format!(
            "approved={} note={}",
            a.approved,
            a.note.unwrap_or_default()
        ))
    }
}

/// A process: a runtime of its own.
struct Process(tokio::runtime::Runtime);

impl Process {
    fn new() -> Self {
        Self(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap(),
        )
    }

    fn kill(self) {
        self.0.shutdown_background();
    }
}

fn chain() -> Plan {
    Plan::new([
        Step::new("a", "work", StepInput::Goal),
        Step::new("b", "work", StepInput::output("a")),
        Step::new("c", "work", StepInput::output("b")),
    ])
}

async fn orchestrator(
    store: Arc<dyn Store>,
    log: &Log,
    block: Option<&'static str>,
    holder: &str,
) -> Orchestrator {
    orchestrator_stalling(store, log, block, None, holder).await
}

async fn orchestrator_stalling(
    store: Arc<dyn Store>,
    log: &Log,
    block: Option<&'static str>,
    stall: Option<&'static str>,
    holder: &str,
) -> Orchestrator {
    let runtime = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap();
    let log = log.clone();
    runtime
        .kind("work")
        .capability("work")
        .register(move |_| Worker {
            log: log.clone(),
            block,
            stall,
        })
        .await
        .unwrap();
    runtime
        .kind("asker")
        .capability("ask")
        .register(|_| Asker)
        .await
        .unwrap();
    Orchestrator::new(runtime, StaticPlanner::new(chain()))
        .store(store)
        .lease_holder(holder)
        .lease_ttl(Duration::from_secs(2))
}

async fn sqlite(path: &Path) -> Arc<dyn Store> {
    Arc::new(
        SqliteStore::open(path, StoreOptions::default())
            .await
            .unwrap(),
    )
}

fn counts(log: &Log) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in log.lock().unwrap().iter() {
        *m.entry(e.clone()).or_insert(0) += 1;
    }
    m
}

/// Each step dispatch of a run, as (step, attempt), in order.
fn dispatched(events: &[RunEventRecord]) -> Vec<(String, u32)> {
    events
        .iter()
        .filter_map(|e| match &e.event {
            RunEvent::StepDispatched { step, attempt, .. } => Some((step.to_string(), *attempt)),
            _ => None,
        })
        .collect()
}

/// Waits on a run's events until one matches (bounded by the run's end).
async fn until(
    events: &mut (impl futures::Stream<Item = RunEventRecord> + Unpin),
    f: impl Fn(&RunEvent) -> bool,
) -> RunEventRecord {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(e) = events.next().await {
            if f(&e.event) {
                return Some(e);
            }
        }
        None
    })
    .await;
    found.ok().flatten().expect("the event never came")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_the_live_event_stream() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let log = Log::default();
    let orch = orchestrator(store.clone(), &log, None, "one").await;
    let mut handle = orch.start(TaskSpec::new("go"));
    let run = handle.id();
    let live: Vec<RunEventRecord> = handle.events().collect::<Vec<_>>().await;
    let outcome = handle.outcome().await.unwrap();
    let stored = orch.replay(run).await.unwrap();
    assert_eq!(
        stored.events, live,
        "the journal holds exactly the live stream"
    );
    check_causal_order(&stored.events).unwrap();
    assert_eq!(stored.state.output.as_ref(), Some(&outcome.output));
    assert_eq!(stored.state.trace_tree(), outcome.trace);
    assert_eq!(stored.state.outputs(), outcome.steps);
    assert_eq!(store.run(run).await.unwrap().status, StoredStatus::Finished);
    // Two effects per step, each recorded once.
    let effects = stored
        .events
        .iter()
        .filter(|e| matches!(e.event, RunEvent::EffectRecorded { .. }))
        .count();
    assert_eq!(effects, 6);
    // A finished run is not resumed.
    let e = orch.resume(run).await.unwrap_err();
    assert_eq!(e.kind(), DurableErrorKind::Finished);
}

#[test]
fn a_killed_run_resumes_without_repeating_steps_or_effects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    killed_and_resumed(|| {
        let path = path.clone();
        Box::pin(async move { sqlite(&path).await })
    });
}

/// The same against a real PostgreSQL server (each process its own pool).
#[test]
fn on_postgres_a_killed_run_resumes_without_repeating_steps_or_effects() {
    use coditect_orchestrator::store::PostgresStore;
    use coditect_orchestrator::testing::PostgresServer;
    let server = PostgresServer::start().expect("start PostgreSQL");
    let dsn = server.connection_string();
    killed_and_resumed(|| {
        let dsn = dsn.clone();
        Box::pin(async move {
            let store: Arc<dyn Store> = Arc::new(
                PostgresStore::connect(&dsn, StoreOptions::default())
                    .await
                    .unwrap(),
            );
            store
        })
    });
}

type Open<'a> =
    &'a dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Store>>>>;

fn killed_and_resumed(
    open: impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Store>>>>,
) {
    let open: Open<'_> = &open;
    let log = Log::default();

    // Process 1 runs until step b has made its first effect, then dies.
    let p1 = Process::new();
    let run = p1.0.block_on(async {
        let orch = orchestrator(open().await, &log, Some("b"), "p1").await;
        let mut handle = orch.start(TaskSpec::new("go"));
        let run = handle.id();
        let mut events = handle.events();
        until(
            &mut events,
            |e| matches!(e, RunEvent::EffectRecorded { step: Some(s), .. } if s.as_str() == "b"),
        )
        .await;
        std::mem::forget(handle);
        run
    });
    p1.kill();
    assert_eq!(counts(&log).get("b:first"), Some(&1));
    assert_eq!(counts(&log).get("b:second"), None);

    // Process 2 resumes it (the same holder name takes the lease back).
    let p2 = Process::new();
    let (outcome, stored) = p2.0.block_on(async {
        let orch = orchestrator(open().await, &log, None, "p1").await;
        let handle = orch.resume(run).await.unwrap();
        let outcome = handle.outcome().await.unwrap();
        (outcome, orch.replay(run).await.unwrap())
    });
    p2.kill();
    let c = counts(&log);
    for (k, n) in &c {
        assert_eq!(*n, 1, "effect {k} ran {n} times: {c:?}");
    }
    assert_eq!(c.len(), 6, "every effect ran: {c:?}");
    // a ran once; b went again as attempt 2 and got its first effect back.
    let dispatched = dispatched(&stored.events);
    assert_eq!(
        dispatched,
        [
            ("a".into(), 1),
            ("b".into(), 1),
            ("b".into(), 2),
            ("c".into(), 1)
        ]
    );
    assert!(
        stored
            .events
            .iter()
            .any(|e| matches!(e.event, RunEvent::RunResumed { .. })),
        "the journal says the run was resumed"
    );
    assert!(
        outcome.output.as_str().unwrap().starts_with("c(\"b("),
        "{}",
        outcome.output
    );
    assert_eq!(stored.state.status, RunStatus::Succeeded);
    check_causal_order(&stored.events).unwrap();
}

/// Resumes from a snapshot taken after step b's first effect: the resumed
/// attempt of b gets that effect back from the snapshot (the journal after
/// it holds nothing of b), and nothing runs twice. Then the same with the
/// snapshot corrupt: the whole journal is folded instead.
#[test]
fn a_run_resumes_from_its_snapshot_or_without_a_readable_one() {
    for corrupt in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        let log = Log::default();
        let p1 = Process::new();
        let run = p1.0.block_on(async {
            let store = sqlite(&path).await;
            let orch = orchestrator(store.clone(), &log, Some("b"), "p1")
                .await
                .snapshot_every(2);
            let mut handle = orch.start(TaskSpec::new("go"));
            let run = handle.id();
            let mut events = handle.events();
            let effect = until(
                &mut events,
                |e| matches!(e, RunEvent::EffectRecorded { step: Some(s), .. } if s.as_str() == "b"),
            )
            .await;
            // The snapshot is written in the background once the effect is
            // durable (bounded: 500 looks, 10 ms apart).
            let mut covered = false;
            for _ in 0..500 {
                if let Some(snap) = store.latest_snapshot(run).await.unwrap()
                    && snap.seq > effect.seq
                {
                    covered = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(covered, "a snapshot covers b's first effect");
            if corrupt {
                let head = store.head(run).await.unwrap();
                let bad = coditect_orchestrator::store::Snapshot::new(head, &b"{not json"[..]);
                store.put_snapshot(run, &bad).await.unwrap();
            }
            std::mem::forget(handle);
            run
        });
        p1.kill();
        assert_eq!(counts(&log).get("b:first"), Some(&1));

        let p2 = Process::new();
        let (outcome, stored) = p2.0.block_on(async {
            let orch = orchestrator(sqlite(&path).await, &log, None, "p1").await;
            let handle = orch.resume(run).await.unwrap();
            let outcome = handle.outcome().await.unwrap();
            (outcome, orch.replay(run).await.unwrap())
        });
        p2.kill();
        let c = counts(&log);
        assert_eq!(c.len(), 6, "every effect ran (corrupt: {corrupt}): {c:?}");
        for (k, n) in &c {
            assert_eq!(
                *n, 1,
                "effect {k} ran {n} times (corrupt: {corrupt}): {c:?}"
            );
        }
        assert!(outcome.output.as_str().unwrap().starts_with("c(\"b("));
        assert_eq!(stored.state.status, RunStatus::Succeeded);
        assert_eq!(stored.state.output, Some(outcome.output));
        check_causal_order(&stored.events).unwrap();
    }
}

#[test]
fn a_result_and_its_dependents_dispatch_are_durable_before_the_dependent_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let log = Log::default();
    let p1 = Process::new();
    let run = p1.0.block_on(async {
        let orch = orchestrator_stalling(sqlite(&path).await, &log, None, Some("c"), "p1").await;
        let mut handle = orch.start(TaskSpec::new("go"));
        let run = handle.id();
        let mut events = handle.events();
        // c has started (and makes no effect before the kill): b's result
        // must be in the journal already.
        until(
            &mut events,
            |e| matches!(e, RunEvent::StepStarted { step, .. } if step.as_str() == "c"),
        )
        .await;
        std::mem::forget(handle);
        run
    });
    p1.kill();
    let p2 = Process::new();
    let stored = p2.0.block_on(async {
        let orch = orchestrator(sqlite(&path).await, &log, None, "p1").await;
        orch.resume(run).await.unwrap().outcome().await.unwrap();
        orch.replay(run).await.unwrap()
    });
    p2.kill();
    let dispatched = dispatched(&stored.events);
    // a and b are not dispatched again. c's dispatch was in the journal
    // before its message went out, so the resumed run knows attempt 1 may
    // be running and sends attempt 2.
    assert_eq!(
        dispatched,
        [
            ("a".into(), 1),
            ("b".into(), 1),
            ("c".into(), 1),
            ("c".into(), 2)
        ]
    );
    check_causal_order(&stored.events).unwrap();
}

#[test]
fn one_orchestrator_drives_a_run_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let log = Log::default();
    let p1 = Process::new();
    let run = p1.0.block_on(async {
        let orch = orchestrator(sqlite(&path).await, &log, Some("b"), "p1").await;
        let mut handle = orch.start(TaskSpec::new("go"));
        let run = handle.id();
        let mut events = handle.events();
        until(&mut events, |e| {
            matches!(e, RunEvent::EffectRecorded { .. })
        })
        .await;
        // While p1 lives, another holder is refused.
        let other = orchestrator(sqlite(&path).await, &log, None, "p2").await;
        let e = other.resume(run).await.unwrap_err();
        assert_eq!(e.kind(), DurableErrorKind::Busy, "{e}");
        std::mem::forget(handle);
        run
    });
    p1.kill();

    // Two new processes race to resume once the dead holder's lease is out:
    // exactly one drives the run.
    let p2 = Process::new();
    let (wins, outcome) = p2.0.block_on(async {
        let a = orchestrator(sqlite(&path).await, &log, None, "p2").await;
        let b = orchestrator(sqlite(&path).await, &log, None, "p3").await;
        // Until the lease expires both are refused (bounded: the TTL is 2 s).
        for _ in 0..200 {
            let (ra, rb) = tokio::join!(a.resume(run), b.resume(run));
            let oks: Vec<_> = [ra, rb].into_iter().filter_map(Result::ok).collect();
            if !oks.is_empty() {
                let n = oks.len();
                let mut oks = oks;
                let outcome = oks.pop().unwrap().outcome().await;
                return (n, outcome);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the dead holder's lease never expired");
    });
    p2.kill();
    assert_eq!(wins, 1, "exactly one orchestrator resumed the run");
    outcome.unwrap();
    for (k, n) in counts(&log) {
        assert_eq!(n, 1, "effect {k} ran {n} times");
    }
}

#[test]
fn a_paused_run_is_answered_from_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let log = Log::default();
    let plan = Plan::new([
        Step::new("a", "work", StepInput::Goal),
        Step::new("ok", "ask", StepInput::output("a")),
    ]);
    let p1 = Process::new();
    let (run, request) = p1.0.block_on(async {
        let store = sqlite(&path).await;
        let orch = orchestrator(store.clone(), &log, None, "p1").await;
        let orch = Orchestrator::new(orch_runtime(&orch), StaticPlanner::new(plan.clone()))
            .store(store.clone())
            .lease_holder("p1");
        let mut handle = orch.start(TaskSpec::new("release"));
        let run = handle.id();
        let mut events = handle.events();
        let asked = until(&mut events, |e| {
            matches!(e, RunEvent::InputRequested { .. })
        })
        .await;
        let RunEvent::InputRequested {
            request,
            schema,
            step,
            ..
        } = asked.event
        else {
            unreachable!()
        };
        assert_eq!(step.unwrap().as_str(), "ok");
        // Seen means stored: another process may answer it at once.
        let stored = orch.replay(run).await.unwrap();
        assert!(stored.state.open_questions().any(|q| q.request == request));
        assert_eq!(
            schema["properties"]["approved"]["type"], "boolean",
            "{schema}"
        );
        assert_eq!(store.run(run).await.unwrap().status, StoredStatus::Paused);
        // A wrong answer is refused, and the run stays paused.
        let e = orch
            .respond(run, &request, serde_json::json!({"approved": "yes"}))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), DurableErrorKind::InvalidAnswer, "{e}");
        assert!(e.to_string().contains("approved"), "{e}");
        assert_eq!(store.run(run).await.unwrap().status, StoredStatus::Paused);
        std::mem::forget(handle);
        (run, request)
    });
    p1.kill();

    let p2 = Process::new();
    let outcome = p2.0.block_on(async {
        let store = sqlite(&path).await;
        let base = orchestrator(store.clone(), &log, None, "p1").await;
        let orch = Orchestrator::new(orch_runtime(&base), StaticPlanner::new(plan.clone()))
            .store(store.clone())
            .lease_holder("p1");
        // Still refused after the restart.
        let e = orch
            .respond(run, &request, serde_json::json!({"approved": 1}))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), DurableErrorKind::InvalidAnswer);
        let answer = serde_json::json!({"approved": true, "note": "go"});
        let Responded::Resumed(handle) = orch.respond(run, &request, answer).await.unwrap() else {
            panic!("nobody drove the run: it must be resumed here");
        };
        let outcome = handle.outcome().await.unwrap();
        let e = orch
            .respond(run, &request, serde_json::json!({"approved": false}))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.kind(),
                DurableErrorKind::AlreadyAnswered | DurableErrorKind::Finished
            ),
            "{e}"
        );
        assert_eq!(store.run(run).await.unwrap().status, StoredStatus::Finished);
        outcome
    });
    p2.kill();
    assert_eq!(outcome.output, "approved=true note=go");
    assert_eq!(counts(&log).get("a:first"), Some(&1));
}

fn orch_runtime(o: &Orchestrator) -> Runtime {
    o.runtime().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_reaches_a_live_run_and_a_timeout_is_a_policy() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let log = Log::default();
    let base = orchestrator(store.clone(), &log, None, "one").await;
    let plan = Plan::new([Step::new("ok", "ask", StepInput::Goal)]);
    let orch =
        Orchestrator::new(base.runtime().clone(), StaticPlanner::new(plan)).store(store.clone());
    let mut handle = orch.start(TaskSpec::new("release"));
    let run = handle.id();
    let mut events = handle.events();
    let asked = until(&mut events, |e| {
        matches!(e, RunEvent::InputRequested { .. })
    })
    .await;
    let RunEvent::InputRequested { request, .. } = asked.event else {
        unreachable!()
    };
    let unknown = EffectKey::from("no-such-request");
    let e = orch
        .respond(run, &unknown, serde_json::json!({}))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), DurableErrorKind::NoSuchRequest);
    let r = orch
        .respond(run, &request, serde_json::json!({"approved": false}))
        .await
        .unwrap();
    assert!(matches!(r, Responded::Delivered));
    assert_eq!(
        handle.outcome().await.unwrap().output,
        "approved=false note="
    );

    // With an input timeout and no retries, an unanswered question fails
    // its step, and the run says why.
    let policy = RunPolicy {
        input_timeout: Some(Duration::from_millis(50)),
        retry: RetryPolicy {
            retry_on: RetryOn::Never,
            ..RetryPolicy::default()
        },
        ..RunPolicy::default()
    };
    let e = orch
        .run(TaskSpec::new("release").policy(policy))
        .await
        .unwrap_err();
    assert!(matches!(e.kind, RunErrorKind::StepFailed { .. }), "{e}");
    assert!(e.message.contains("input timeout"), "{e}");
    assert!(e.state.questions.iter().all(|q| q.timed_out));
}

#[test]
fn a_fork_reruns_only_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let log = Log::default();
    let p = Process::new();
    p.0.block_on(async {
        let orch = orchestrator(sqlite(&path).await, &log, None, "p1").await;
        let outcome = orch.run(TaskSpec::new("go")).await.unwrap();
        let stored = orch.replay(outcome.run).await.unwrap();
        // Fork right after a's result, with b's input changed.
        let at = stored
            .events
            .iter()
            .position(|e| matches!(&e.event, RunEvent::StepSucceeded { step, .. } if step.as_str() == "a"))
            .unwrap() as u64
            + 1;
        log.lock().unwrap().clear();
        let fork = Fork::at(at).with_input("b".into(), StepInput::literal("other"));
        let forked = orch.fork(outcome.run, fork).await.unwrap().outcome().await.unwrap();
        assert_ne!(forked.run, outcome.run);
        assert_eq!(forked.steps["a"], outcome.steps["a"], "a comes from the journal");
        assert!(forked.output.to_string().contains(r#"b(\\\"other\\\")"#), "{}", forked.output);
        let c = counts(&log);
        assert_eq!(c.get("a:first"), None, "a is not run again: {c:?}");
        assert_eq!(c.get("b:first"), Some(&1));
        assert_eq!(c.get("c:second"), Some(&1));
        let stored = orch.replay(forked.run).await.unwrap();
        check_causal_order(&stored.events).unwrap();
    });
    p.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_journal_is_a_typed_error_naming_the_record() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let log = Log::default();
    let orch = orchestrator(store.clone(), &log, None, "one").await;
    let run = RunId::new();
    store
        .create_run(NewRun::new(run, TenantId::default(), "broken"))
        .await
        .unwrap();
    store
        .append(run, 0, None, &[NewRecord::new("event", "{not json")])
        .await
        .unwrap();
    let e = orch.resume(run).await.unwrap_err();
    assert_eq!(e.kind(), DurableErrorKind::Corrupt);
    assert!(
        e.to_string().contains(&run.to_string()) && e.to_string().contains("record 0"),
        "{e}"
    );
    let e = orch.replay(run).await.unwrap_err();
    assert_eq!(e.kind(), DurableErrorKind::Corrupt);
    // A run without a store is refused plainly.
    let plain = Orchestrator::new(orch.runtime().clone(), StaticPlanner::new(chain()));
    assert_eq!(
        plain.resume(run).await.unwrap_err().kind(),
        DurableErrorKind::NoStore
    );
}

/// Over NATS: the steps run on a worker process that outlives the
/// orchestrator; the orchestrator dies after a step's first effect is
/// journaled (the effect went worker → bus → driver → store and back); a new
/// orchestrator process resumes the run, and the worker's new attempt of the
/// step gets its first effect back from the journal.
#[cfg(feature = "nats")]
#[test]
fn over_nats_the_orchestrator_dies_and_the_workers_effects_hold() {
    use coditect_orchestrator::testing::NatsServer;
    use coditect_orchestrator::transport::NatsOptions;

    let server = NatsServer::start().expect("start nats-server");
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    let log = Log::default();

    // The worker process lives through the whole test.
    let worker = Process::new();
    let cards = worker.0.block_on(async {
        let rt = Runtime::builder(NatsOptions::new(&url).connect().await.unwrap())
            .build()
            .await
            .unwrap();
        let (log, first) = (log.clone(), Arc::new(Mutex::new(true)));
        rt.kind("work")
            .capability("work")
            .register(move |_| BlockOnce {
                inner: Worker {
                    log: log.clone(),
                    block: None,
                    stall: None,
                },
                first: first.clone(),
            })
            .await
            .unwrap();
        let cards = rt.cards();
        std::mem::forget(rt);
        cards
    });

    let p1 = Process::new();
    let run = p1.0.block_on(async {
        let orch = nats_orchestrator(&url, cards.clone(), &path).await;
        let mut handle = orch.submit(TaskSpec::new("go")).await.unwrap();
        let run = handle.id();
        let mut events = handle.events();
        until(
            &mut events,
            |e| matches!(e, RunEvent::EffectRecorded { step: Some(s), .. } if s.as_str() == "b"),
        )
        .await;
        std::mem::forget(handle);
        run
    });
    p1.kill();
    assert_eq!(counts(&log).get("b:first"), Some(&1));

    let p2 = Process::new();
    let (outcome, stored) = p2.0.block_on(async {
        let orch = nats_orchestrator(&url, cards.clone(), &path).await;
        let handle = orch.resume(run).await.unwrap();
        let outcome = handle.outcome().await.unwrap();
        (outcome, orch.replay(run).await.unwrap())
    });
    p2.kill();
    worker.kill();
    let c = counts(&log);
    assert_eq!(c.len(), 6, "{c:?}");
    for (k, n) in &c {
        assert_eq!(*n, 1, "effect {k} ran {n} times over NATS: {c:?}");
    }
    assert!(outcome.output.as_str().unwrap().starts_with("c(\"b("));
    assert_eq!(stored.state.status, RunStatus::Succeeded);
}

#[cfg(feature = "nats")]
async fn nats_orchestrator(
    url: &str,
    cards: Vec<coditect_orchestrator::AgentCard>,
    path: &Path,
) -> Orchestrator {
    use coditect_orchestrator::transport::NatsOptions;
    let rt = Runtime::builder(NatsOptions::new(url).connect().await.unwrap())
        .build()
        .await
        .unwrap();
    Orchestrator::new(rt, StaticPlanner::new(chain()))
        .cards(cards)
        .store(sqlite(path).await)
        .lease_holder("orchestrator")
}

/// A worker whose first handling of step b (across all its instances)
/// blocks after b's first effect, as `Worker { block: Some("b") }` does;
/// later attempts go through.
#[cfg(feature = "nats")]
struct BlockOnce {
    inner: Worker,
    first: Arc<Mutex<bool>>,
}

#[cfg(feature = "nats")]
impl Agent for BlockOnce {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        input: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        let is_b = ctx.step().is_some_and(|s| s.as_str() == "b");
        let block = is_b && std::mem::replace(&mut *self.first.lock().unwrap(), false);
        self.inner.block = if block { Some("b") } else { None };
        self.inner.handle(input, ctx).await
    }
}

/// Random plans (each step after some earlier ones) killed after a random
/// number of journaled effects, then resumed (killed again, maybe, until it
/// ends): the run always ends with every step's result, the journal records
/// each effect once, and no effect body runs in an attempt after the one
/// that recorded it.
mod crash_points {
    use super::*;
    use proptest::prelude::*;

    /// Makes two effects per step, noting each body's run with the step's
    /// attempt.
    struct Noting(Arc<Mutex<Vec<(String, u32)>>>);

    impl Agent for Noting {
        type Input = serde_json::Value;
        type Output = u32;
        async fn handle(
            &mut self,
            _: serde_json::Value,
            ctx: &AgentContext,
        ) -> Result<u32, AgentError> {
            let step = ctx.step().map(|s| s.to_string()).unwrap_or_default();
            let attempt = ctx.attempt();
            for name in ["one", "two"] {
                let (log, key) = (self.0.clone(), format!("{step}:{name}"));
                ctx.effect(name, |_| async move {
                    log.lock().unwrap().push((key, attempt));
                    tokio::task::yield_now().await;
                    Ok(1u32)
                })
                .await?;
            }
            Ok(attempt)
        }
    }

    fn plan(deps: &[Vec<usize>]) -> Plan {
        Plan::new(deps.iter().enumerate().map(|(i, d)| {
            let step = Step::new(format!("p{i}"), "note", StepInput::Goal);
            step.after(d.iter().map(|j| format!("p{j}")))
        }))
    }

    async fn orch(
        store: Arc<dyn Store>,
        log: &Arc<Mutex<Vec<(String, u32)>>>,
        p: Plan,
    ) -> Orchestrator {
        let rt = Runtime::builder(InMemoryTransport::new())
            .build()
            .await
            .unwrap();
        let log = log.clone();
        rt.kind("note")
            .capability("note")
            .instances(4)
            .register(move |_| Noting(log.clone()))
            .await
            .unwrap();
        Orchestrator::new(rt, StaticPlanner::new(p))
            .store(store)
            .lease_holder("prop")
    }

    fn deps_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
        (1usize..7).prop_flat_map(|n| {
            (0..n)
                .map(|i| proptest::collection::vec(0..i.max(1), 0..=i.min(2)))
                .collect::<Vec<_>>()
                .prop_map(|deps| {
                    deps.into_iter()
                        .enumerate()
                        .map(|(i, d)| {
                            let mut d: Vec<usize> = d.into_iter().filter(|&j| j < i).collect();
                            d.sort_unstable();
                            d.dedup();
                            d
                        })
                        .collect()
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn a_resumed_run_always_ends_each_effect_once(
            deps in deps_strategy(),
            kills in proptest::collection::vec(0usize..12, 1..3),
        ) {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let log = Arc::new(Mutex::new(Vec::new()));
            let p = plan(&deps);
            let mut run: Option<RunId> = None;
            let mut finished = false;
            for after in kills {
                let proc = Process::new();
                let done = proc.0.block_on(async {
                    let o = orch(store.clone(), &log, p.clone()).await;
                    let mut handle = match run {
                        None => o.submit(TaskSpec::new("prop")).await.unwrap(),
                        Some(r) => match o.resume(r).await {
                            Ok(h) => h,
                            Err(e) if e.kind() == DurableErrorKind::Finished => return true,
                            Err(e) => panic!("{e}"),
                        },
                    };
                    run = Some(handle.id());
                    let mut events = handle.events();
                    let mut seen = 0;
                    let mut ended = false;
                    while let Some(e) = events.next().await {
                        match e.event {
                            RunEvent::EffectRecorded { .. } => {
                                seen += 1;
                                if seen > after {
                                    break;
                                }
                            }
                            RunEvent::RunFinished { .. } => {
                                ended = true;
                                break;
                            }
                            _ => {}
                        }
                    }
                    drop(events);
                    if ended {
                        // An event is seen as it happens; the outcome comes
                        // once the journal holds everything.
                        handle.outcome().await.unwrap();
                        return true;
                    }
                    std::mem::forget(handle);
                    false
                });
                proc.kill();
                if done {
                    finished = true;
                    break;
                }
            }
            let run = run.unwrap();
            let proc = Process::new();
            let stored = proc.0.block_on(async {
                let o = orch(store.clone(), &log, p.clone()).await;
                if !finished {
                    match o.resume(run).await {
                        Ok(h) => { h.outcome().await.unwrap(); }
                        Err(e) => prop_assert_eq!(e.kind(), DurableErrorKind::Finished),
                    }
                }
                Ok(o.replay(run).await.unwrap())
            })?;
            proc.kill();
            prop_assert_eq!(stored.state.status, RunStatus::Succeeded);
            prop_assert_eq!(stored.state.outputs().len(), deps.len());
            // Each effect recorded once, in the attempt that first made it.
            let mut attempt_of: BTreeMap<String, u32> = BTreeMap::new();
            let mut recorded: BTreeMap<String, u32> = BTreeMap::new();
            for e in &stored.events {
                match &e.event {
                    RunEvent::StepDispatched { step, attempt, .. } => {
                        attempt_of.insert(step.to_string(), *attempt);
                    }
                    RunEvent::EffectRecorded { step: Some(s), key, .. } => {
                        let name = key.as_str().rsplit('/').next().unwrap().split('#').next().unwrap().to_owned();
                        let k = format!("{s}:{name}");
                        prop_assert!(recorded.insert(k.clone(), attempt_of[s.as_str()]).is_none(), "{} recorded twice", k);
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(recorded.len(), deps.len() * 2);
            for (k, attempt) in log.lock().unwrap().iter() {
                let at = recorded[k];
                prop_assert!(*attempt <= at, "{} ran in attempt {} after attempt {} recorded it", k, attempt, at);
            }
        }
    }
}

/// Answers with its step's name and that many bytes: a few large outputs
/// make a run whose snapshot, or whose result, is larger than the largest
/// record a store takes by default (1 MiB).
struct Padded(usize);

impl Agent for Padded {
    type Input = serde_json::Value;
    type Output = String;
    async fn handle(
        &mut self,
        _: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<String, AgentError> {
        let step = ctx.step().map(|s| s.to_string()).unwrap_or_default();
        Ok(format!("{step}:{}", "x".repeat(self.0)))
    }
}

/// Snapshots have a limit of their own: a run whose state is larger than
/// one record may be still gets its snapshot stored with default options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_larger_than_a_record_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite(&dir.path().join("runs.db")).await;
    let runtime = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap();
    runtime
        .kind("big")
        .register(|_| Padded(400 * 1024))
        .await
        .unwrap();
    // A chain, so that snapshots are taken while outputs pile up; the run's
    // result is e's output alone, so no record is over the limit.
    let plan = Plan::new([
        Step::new("a", "big", StepInput::Goal),
        Step::new("b", "big", StepInput::output("a")),
        Step::new("c", "big", StepInput::output("b")),
        Step::new("d", "big", StepInput::output("c")),
        Step::new("e", "big", StepInput::output("d")),
    ])
    .output("e");
    let orch = Orchestrator::new(runtime, StaticPlanner::new(plan))
        .store(store.clone())
        .snapshot_every(4);
    let handle = orch.start(TaskSpec::new("go"));
    let run = handle.id();
    handle.outcome().await.unwrap();
    // The snapshot is written in the background (bounded: 500 looks, 10 ms
    // apart).
    let mut largest = 0;
    for _ in 0..500 {
        if let Some(snap) = store.latest_snapshot(run).await.unwrap() {
            largest = largest.max(snap.payload.len());
            if largest > coditect_orchestrator::store::DEFAULT_MAX_RECORD_BYTES {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        largest > coditect_orchestrator::store::DEFAULT_MAX_RECORD_BYTES,
        "no snapshot over the record limit was stored (largest: {largest} bytes)"
    );
}

/// A run whose result is larger than a journal record may be — here the
/// outputs of 20 parallel steps, 1.4 MB, against the default limit of
/// 1 MiB — finishes, and reads back with its result (folded from the
/// steps' records) whatever the plan's shape: many sinks, one sink, a named
/// output step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_larger_than_a_record_is_journaled_and_read_back() {
    let ids: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    let wide = Plan::new(
        ids.iter()
            .map(|s| Step::new(s.as_str(), "wide", StepInput::Goal)),
    );
    let mut chain = Plan::new(ids.iter().enumerate().map(|(i, s)| match i {
        0 => Step::new(s.as_str(), "wide", StepInput::Goal),
        _ => Step::new(s.as_str(), "wide", StepInput::Goal).after([ids[i - 1].as_str()]),
    }));
    let named = chain.clone().output("s3");
    chain.output = None;
    for (shape, plan) in [("wide", wide), ("chain", chain), ("named", named)] {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir.path().join("runs.db")).await;
        let runtime = Runtime::builder(InMemoryTransport::new())
            .build()
            .await
            .unwrap();
        runtime
            .kind("wide")
            .register(|_| Padded(70 * 1024))
            .await
            .unwrap();
        let orch = Orchestrator::new(runtime, StaticPlanner::new(plan)).store(store.clone());
        let handle = orch.start(TaskSpec::new("go"));
        let run = handle.id();
        let outcome = handle
            .outcome()
            .await
            .unwrap_or_else(|e| panic!("{shape}: the run failed: {}", e.message));
        let stored = orch.replay(run).await.unwrap();
        let last = stored.events.last().unwrap();
        match &last.event {
            RunEvent::RunFinished { output, .. } => assert!(
                output.as_ref() == Some(&outcome.output),
                "{shape}: the journal's result differs from the run's"
            ),
            other => panic!("{shape}: the journal ends with {other:?}"),
        }
        assert!(
            stored.state.output.as_ref() == Some(&outcome.output),
            "{shape}"
        );
        check_causal_order(&stored.events).unwrap();
        let head = store.head(run).await.unwrap();
        let end = store.read(run, head - 1, 1).await.unwrap();
        assert!(
            end[0].payload.len() < 64 * 1024,
            "{shape}: the end record holds the result again ({} bytes)",
            end[0].payload.len()
        );
    }
}
