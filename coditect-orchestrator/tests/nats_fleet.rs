//! The fleet over NATS, with worker processes (this test binary, re-executed):
//! the tenant's card directory (a worker that starts is seen, one that dies
//! disappears within the time to live, one that shuts down at once), plans
//! made from discovered cards, routing by capability to live kinds, the
//! no-worker policy (fail at once or wait), `delegate` across processes, and
//! cancellation reaching remote handlers and their delegations.
#![cfg(all(feature = "nats", feature = "test-utils"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use coditect_orchestrator::orchestrator::{
    NoWorker, PlanError, RetryPolicy, RunErrorKind, RunEvent, RunPolicy, StaticPlanner,
};
use coditect_orchestrator::runtime::FleetOptions;
use coditect_orchestrator::testing::NatsServer;
use coditect_orchestrator::transport::nats::NatsTransport;
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentKind, NodeId, Orchestrator, Plan, Runtime, Step,
    StepInput, TaskSpec, TenantId,
};
use common::{T, connect, fast_durable};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;

/// Heartbeat and time to live of every runtime in these tests.
fn fleet() -> FleetOptions {
    FleetOptions::default()
        .heartbeat(Duration::from_millis(200))
        .ttl(Duration::from_secs(2))
}

/// Polls `f` until it holds, for at most `limit` (a bound, not a timing claim).
async fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Doubles a number and says which worker did it.
struct Signed {
    node: String,
    work: Duration,
}
impl Agent for Signed {
    type Input = u64;
    type Output = (u64, String);
    async fn handle(&mut self, n: u64, _ctx: &AgentContext) -> Result<(u64, String), AgentError> {
        tokio::time::sleep(self.work).await;
        Ok((n * 2, self.node.clone()))
    }
}

/// Waits until the file its input names exists (the test says when).
struct Gate;
impl Agent for Gate {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, path: String, _ctx: &AgentContext) -> Result<String, AgentError> {
        while !std::path::Path::new(&path).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(path)
    }
}

/// Upper-cases after asking a `spelling` agent somewhere on the bus.
struct Editor;
impl Agent for Editor {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, text: String, ctx: &AgentContext) -> Result<String, AgentError> {
        let fixed: String = ctx.delegate("spelling", text).await?;
        Ok(fixed.to_uppercase())
    }
}

struct Speller;
impl Agent for Speller {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, text: String, _ctx: &AgentContext) -> Result<String, AgentError> {
        Ok(text.replace("teh", "the"))
    }
}

/// Delegates to `hold` and waits; says on stdout when its token fires.
struct Parent;
impl Agent for Parent {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, tag: String, ctx: &AgentContext) -> Result<String, AgentError> {
        let token = ctx.cancellation().clone();
        let t = tag.clone();
        tokio::spawn(async move {
            token.cancelled().await;
            println!("FIRED parent {t}");
        });
        let r: Result<String, _> = ctx.delegate("hold", tag).await;
        Ok(format!("{r:?}"))
    }
}

/// Holds until cancelled; says on stdout when it starts and when its token fires.
struct Hold;
impl Agent for Hold {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, tag: String, ctx: &AgentContext) -> Result<String, AgentError> {
        println!("STARTED hold {tag}");
        match timeout(Duration::from_secs(120), ctx.cancelled()).await {
            Ok(()) => {
                println!("FIRED hold {tag}");
                Err(AgentError::with_kind(
                    coditect_orchestrator::AgentErrorKind::Cancelled,
                    "cancelled",
                ))
            }
            Err(_) => Ok(tag),
        }
    }
}

/// Not a test: the body of the worker processes (this binary, re-executed
/// with `CODITECT_FLEET_WORKER` set). Without that variable it returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the body of a child process; the tests that spawn it run it"]
async fn fleet_worker_entry() {
    let Ok(urls) = std::env::var("CODITECT_FLEET_WORKER") else {
        return;
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let name = std::env::var("CODITECT_FLEET_NAME").unwrap();
    let kinds = std::env::var("CODITECT_FLEET_KINDS").unwrap();
    let rt = Runtime::builder(connect(&urls, fast_durable()).await)
        .node_id(NodeId::new(&name).unwrap())
        .fleet(fleet())
        .build()
        .await
        .unwrap();
    for kind in kinds.split(',') {
        let b = rt.kind(kind);
        match kind {
            "double" | "alpha" | "beta" => {
                let node = name.clone();
                // alpha's card is the newest: routers meet it first.
                let version = if kind == "alpha" { "9.0.0" } else { "2.1.0" };
                b.capability("double")
                    .description("Doubles a number and signs it.")
                    .version(version)
                    .register(move |_| Signed {
                        node: node.clone(),
                        work: Duration::from_millis(20),
                    })
                    .await
                    .unwrap();
            }
            "gate" => {
                b.register(|_| Gate).await.unwrap();
            }
            "editor" => {
                b.register(|_| Editor).await.unwrap();
            }
            "speller" => {
                b.capability("spelling")
                    .register(|_| Speller)
                    .await
                    .unwrap();
            }
            "parent" => {
                b.register(|_| Parent).await.unwrap();
            }
            "hold" => {
                b.register(|_| Hold).await.unwrap();
            }
            other => panic!("unknown kind {other}"),
        };
    }
    println!("READY {name}");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    // A line asks for a graceful shutdown; a closed stdin (the test died)
    // ends the process too.
    let _ = timeout(Duration::from_secs(300), stdin.next_line()).await;
    rt.shutdown(Duration::from_secs(5)).await;
    println!("STOPPED {name}");
}

/// A worker process and the lines it prints.
struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Worker {
    async fn start(urls: &[String], name: &str, kinds: &str) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "fleet_worker_entry",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CODITECT_FLEET_WORKER", urls.join(","))
            .env("CODITECT_FLEET_NAME", name)
            .env("CODITECT_FLEET_KINDS", kinds)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a worker process");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut w = Self {
            child,
            lines,
            seen: Vec::new(),
        };
        w.wait_line(&format!("READY {name}")).await;
        w
    }

    /// Reads lines until one contains `what` (or finds it among those read).
    async fn wait_line(&mut self, what: &str) -> String {
        if let Some(l) = self.seen.iter().find(|l| l.contains(what)) {
            return l.clone();
        }
        timeout(T, async {
            loop {
                match self.lines.next_line().await {
                    Ok(Some(l)) => {
                        self.seen.push(l.clone());
                        if l.contains(what) {
                            return l;
                        }
                    }
                    other => panic!("worker ended before printing {what:?}: {other:?}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("worker never printed {what:?}"))
    }

    /// SIGKILL: no drain, no goodbye.
    async fn kill(mut self) {
        self.child.start_kill().unwrap();
        let _ = timeout(T, self.child.wait()).await;
    }

    /// A graceful shutdown: withdraws its cards, drains, exits.
    async fn stop(mut self) {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"stop\n").await.unwrap();
        self.wait_line("STOPPED").await;
        let _ = timeout(T, self.child.wait()).await;
    }
}

async fn runtime(urls: &[String]) -> Runtime {
    Runtime::builder(connect(urls, fast_durable()).await)
        .fleet(fleet())
        .build()
        .await
        .unwrap()
}

fn has(rt: &Runtime, kind: &str, node: &str) -> bool {
    rt.fleet()
        .iter()
        .any(|l| l.card.kind.as_str() == kind && l.node.as_str() == node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_seen_when_they_start_and_gone_when_they_stop_or_die() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let orch = runtime(&urls).await;
    assert!(orch.fleet().is_empty(), "{:?}", orch.fleet());

    let w1 = Worker::start(&urls, "w1", "double").await;
    // A runtime that joins later reads what is there before build returns.
    let late = runtime(&urls).await;
    assert!(has(&late, "double", "w1"), "{:?}", late.fleet());
    eventually(T, "w1 is seen", || has(&orch, "double", "w1")).await;
    let card = orch
        .fleet()
        .into_iter()
        .find(|l| l.node.as_str() == "w1")
        .unwrap();
    assert_eq!(card.card.description, "Doubles a number and signs it.");
    assert_eq!(card.card.capabilities, vec!["double".to_string()]);
    assert_eq!(card.version, "2.1.0");
    assert_eq!(card.capacity, 16);
    assert!(card.card.input_schema.is_object());
    // Planners read the discovered card.
    let planned = Orchestrator::new(orch.clone(), StaticPlanner::new(Plan::default()));
    assert!(planned.all_cards().iter().any(|c| c.can("double")));

    // A graceful stop withdraws the card: gone long before its time to live.
    let w2 = Worker::start(&urls, "w2", "double").await;
    eventually(T, "w2 is seen", || has(&orch, "double", "w2")).await;
    w2.stop().await;
    eventually(
        Duration::from_millis(1500),
        "w2's card is withdrawn",
        || !has(&orch, "double", "w2"),
    )
    .await;

    // A killed worker says nothing: its card expires after the time to live.
    w1.kill().await;
    eventually(fleet().ttl_value() * 3, "w1's card expires", || {
        !has(&orch, "double", "w1")
    })
    .await;
    assert!(orch.fleet().is_empty(), "{:?}", orch.fleet());
    assert!(!orch.wait_for_capability("double", Duration::ZERO).await);
    late.shutdown(Duration::from_secs(1)).await;
    orch.shutdown(Duration::from_secs(1)).await;
}

/// Runs `n` `double` steps and reports each step's dispatches, results and
/// the worker that signed it.
struct Tally {
    dispatched: HashMap<String, usize>,
    succeeded: HashMap<String, usize>,
    failed: usize,
    by: HashMap<String, String>,
    to: HashSet<String>,
}

async fn run_doubles(
    rt: &Runtime,
    n: u64,
    mut at: impl FnMut(usize) -> Option<futures::future::BoxFuture<'static, ()>>,
) -> Tally {
    let plan =
        Plan::new((0..n).map(|i| Step::new(format!("s{i}"), "double", StepInput::literal(i))));
    let policy = RunPolicy {
        max_steps: 10 * n as usize,
        // Retries off: what a dead worker had in flight comes back through
        // JetStream redelivery alone.
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    };
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan));
    let mut handle = orch.start(TaskSpec::new("doubles").policy(policy));
    let mut events = handle.events();
    let mut t = Tally {
        dispatched: HashMap::new(),
        succeeded: HashMap::new(),
        failed: 0,
        by: HashMap::new(),
        to: HashSet::new(),
    };
    let watch = async {
        while let Some(rec) = events.next().await {
            match rec.event {
                RunEvent::StepDispatched { step, to, .. } => {
                    *t.dispatched.entry(step.to_string()).or_default() += 1;
                    t.to.insert(to);
                }
                RunEvent::StepSucceeded { step, output, .. } => {
                    *t.succeeded.entry(step.to_string()).or_default() += 1;
                    let by = output[1].as_str().unwrap_or_default().to_owned();
                    t.by.insert(step.to_string(), by);
                    if let Some(f) = at(t.succeeded.len()) {
                        f.await;
                    }
                }
                RunEvent::StepFailed { .. } => t.failed += 1,
                RunEvent::RunFinished { .. } => break,
                _ => {}
            }
        }
    };
    timeout(Duration::from_secs(240), watch)
        .await
        .expect("the run did not finish");
    let outcome = timeout(T, handle.outcome())
        .await
        .unwrap()
        .expect("the run failed");
    let steps: HashMap<String, serde_json::Value> = outcome
        .steps
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    for i in 0..n {
        assert_eq!(steps[&format!("s{i}")][0], serde_json::json!(i * 2));
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_joining_mid_run_takes_work_and_one_killed_mid_run_leaves() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let orch = runtime(&urls).await;
    let w1 = Worker::start(&urls, "w1", "double").await;
    let mut w1 = Some(w1);
    let mut w2: Option<Worker> = None;
    let u = urls.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Worker>();
    let n = 1000;
    let t = run_doubles(&orch, n, |done| {
        if done == 100 {
            // A second worker joins mid-run.
            let u = u.clone();
            let tx = tx.clone();
            return Some(Box::pin(async move {
                let _ = tx.send(Worker::start(&u, "w2", "double").await);
            }));
        }
        if done == 400 {
            // The first dies mid-run, its unacked tasks still out.
            let w = w1.take().unwrap();
            return Some(Box::pin(w.kill()));
        }
        None
    })
    .await;
    if let Ok(w) = rx.try_recv() {
        w2 = Some(w);
    }
    let w2 = w2.expect("w2 started");
    let by_w2 = t.by.values().filter(|b| *b == "w2").count();
    assert!(by_w2 > 0, "the worker that joined took no work");
    // Every step once: dispatched once, recorded once, nothing failed.
    assert_eq!(t.failed, 0);
    for i in 0..n {
        let s = format!("s{i}");
        assert_eq!(t.dispatched.get(&s), Some(&1), "{s}");
        assert_eq!(t.succeeded.get(&s), Some(&1), "{s}");
    }
    eventually(
        fleet().ttl_value() * 3,
        "the dead worker leaves the directory",
        || !has(&orch, "double", "w1"),
    )
    .await;
    assert!(has(&orch, "double", "w2"));
    w2.stop().await;
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_go_to_the_live_kind_that_offers_their_capability() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let orch = runtime(&urls).await;
    // Two kinds offer `double`; alpha's only worker dies while the run waits
    // at its gate, with both kinds in its routing table.
    let a = Worker::start(&urls, "wa", "alpha").await;
    let b = Worker::start(&urls, "wb", "beta,gate").await;
    eventually(T, "both kinds are seen", || {
        has(&orch, "alpha", "wa") && has(&orch, "beta", "wb")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    let mut steps = vec![Step::new(
        "g",
        "gate",
        StepInput::literal(open.to_str().unwrap()),
    )];
    steps.extend(
        (0..20u64)
            .map(|i| Step::new(format!("s{i}"), "double", StepInput::literal(i)).after(["g"])),
    );
    let o = Orchestrator::new(orch.clone(), StaticPlanner::new(Plan::new(steps)));
    let policy = RunPolicy {
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    };
    let mut handle = o.start(TaskSpec::new("route").policy(policy));
    let events = handle.events();
    a.kill().await;
    eventually(fleet().ttl_value() * 3, "alpha's card expires", || {
        !has(&orch, "alpha", "wa")
    })
    .await;
    std::fs::write(&open, b"").unwrap();
    let outcome = timeout(T, handle.outcome())
        .await
        .expect("a step went to the dead kind and waits for it")
        .unwrap();
    assert_eq!(outcome.steps.len(), 21);
    let events: Vec<_> = events.collect().await;
    for e in &events {
        if let RunEvent::StepDispatched { step, to, .. } = &e.event
            && step.as_str() != "g"
        {
            assert_eq!(to, "beta", "{step} routed to a dead kind");
        }
    }
    b.stop().await;
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capability_nobody_offers_fails_at_once_or_waits_for_a_worker() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let orch = runtime(&urls).await;
    let plan = || Plan::new([Step::new("a", "double", StepInput::literal(21u64))]);

    // Fail (the default): refused before anything is dispatched.
    let o = Orchestrator::new(orch.clone(), StaticPlanner::new(plan()));
    let err = timeout(T, o.run(TaskSpec::new("x")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            &err.kind,
            RunErrorKind::InvalidPlan(PlanError::UnknownCapability { .. })
        ),
        "{err:?}"
    );

    // Wait, and nobody comes: the typed error says what and how long.
    let short = RunPolicy {
        no_worker: NoWorker::Wait(Duration::from_millis(300)),
        ..RunPolicy::default()
    };
    let err = timeout(T, o.run(TaskSpec::new("x").policy(short)))
        .await
        .unwrap()
        .unwrap_err();
    match &err.kind {
        RunErrorKind::NoWorker { capability, waited } => {
            assert_eq!(capability, "double");
            assert_eq!(*waited, Duration::from_millis(300));
        }
        other => panic!("{other:?}"),
    }

    // Wait, and a worker joins: the run goes through.
    let long = RunPolicy {
        no_worker: NoWorker::Wait(T),
        ..RunPolicy::default()
    };
    let handle = o.start(TaskSpec::new("x").policy(long));
    let w = Worker::start(&urls, "w1", "double").await;
    let outcome = timeout(T, handle.outcome()).await.unwrap().unwrap();
    assert_eq!(outcome.output, serde_json::json!([42, "w1"]));

    // A worker killed: its capability is gone again once its card expires.
    w.kill().await;
    eventually(fleet().ttl_value() * 3, "the card expires", || {
        !has(&orch, "double", "w1")
    })
    .await;
    let err = timeout(T, o.run(TaskSpec::new("x")))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(&err.kind, RunErrorKind::InvalidPlan(_)), "{err:?}");
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_in_one_worker_finds_a_capability_another_worker_hosts() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    let speller = Worker::start(&urls, "ws", "speller").await;
    let editor = Worker::start(&urls, "we", "editor").await;
    let orch = runtime(&urls).await;
    let plan = Plan::new([Step::new("a", "editor", StepInput::Goal)]);
    let o = Orchestrator::new(orch.clone(), StaticPlanner::new(plan));
    let outcome = timeout(T, o.run(TaskSpec::new("teh cat")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.output, serde_json::json!("THE CAT"));
    editor.stop().await;
    speller.stop().await;
    orch.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_fires_the_tokens_of_remote_handlers_and_their_delegations() {
    let server = NatsServer::start().expect("start nats-server");
    let urls = vec![server.url()];
    // Two workers host both kinds, so a cancel that reached only one worker
    // of a kind would miss the handler about half of the time.
    let mut w1 = Worker::start(&urls, "w1", "parent,hold").await;
    let mut w2 = Worker::start(&urls, "w2", "parent,hold").await;
    let orch = runtime(&urls).await;
    for round in 0..4 {
        let tag = format!("r{round}");
        let plan = Plan::new([Step::new("p", "parent", StepInput::literal(tag.clone()))]);
        let o = Orchestrator::new(orch.clone(), StaticPlanner::new(plan));
        let handle = o.start(TaskSpec::new("hold on"));
        // Wait until the delegated handler runs, on whichever worker.
        let started = format!("STARTED hold {tag}");
        let on_w1 = tokio::select! {
            _ = w1.wait_line(&started) => true,
            _ = w2.wait_line(&started) => false,
        };
        let (holder, other) = if on_w1 {
            (&mut w1, &mut w2)
        } else {
            (&mut w2, &mut w1)
        };
        handle.cancel();
        let err = timeout(T, handle.outcome()).await.unwrap().unwrap_err();
        assert!(matches!(err.kind, RunErrorKind::Cancelled), "{err:?}");
        holder.wait_line(&format!("FIRED hold {tag}")).await;
        // The parent may run on either worker; one of them reports it.
        let fired_parent = format!("FIRED parent {tag}");
        tokio::select! {
            _ = holder.wait_line(&fired_parent) => {}
            _ = other.wait_line(&fired_parent) => {}
        }
    }
    w1.stop().await;
    w2.stop().await;
    orch.shutdown(Duration::from_secs(1)).await;
}

/// One NATS account per tenant, each with its own JetStream: the isolation
/// the durable path needs (with per-user subject permissions in one account,
/// every user would need the JetStream API, which spans all streams).
const ACCOUNTS: &str = r#"
accounts {
  ACME: { jetstream: enabled, users: [ { user: "acme", password: "acme-secret" } ] }
  GLOBEX: { jetstream: enabled, users: [ { user: "globex", password: "globex-secret" } ] }
}
"#;

async fn tenant_runtime(url: &str, tenant: &TenantId) -> Runtime {
    let t = timeout(
        T,
        coditect_orchestrator::transport::nats::NatsOptions::new(url)
            .user_password(tenant.as_str(), format!("{tenant}-secret"))
            .tenant(tenant.clone())
            .durable(fast_durable())
            .connect(),
    )
    .await
    .unwrap()
    .expect("connect");
    Runtime::builder(t)
        .tenant(tenant.clone())
        .fleet(fleet())
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_durable_path_a_tenant_reaches_nothing_of_another_tenant() {
    let server = NatsServer::builder()
        .config(ACCOUNTS)
        .start()
        .expect("start nats-server");
    let url = server.url();
    let acme = TenantId::new("acme").unwrap();
    let globex = TenantId::new("globex").unwrap();
    // acme hosts a kind (task stream, consumer, lease bucket, card bucket);
    // globex hosts one too.
    let a = tenant_runtime(&url, &acme).await;
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = handled.clone();
    a.kind("secret")
        .register(move |_| Counting(h.clone()))
        .await
        .unwrap();
    let n: u64 = timeout(T, a.request(AgentKind::new("secret").unwrap(), 1u64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 1);
    let b = tenant_runtime(&url, &globex).await;
    b.kind("public").register(|_| Speller).await.unwrap();

    // Neither directory lists the other tenant's cards.
    assert!(
        b.fleet().iter().all(|l| l.card.kind.as_str() == "public"),
        "{:?}",
        b.fleet()
    );
    assert!(
        a.fleet().iter().all(|l| l.card.kind.as_str() == "secret"),
        "{:?}",
        a.fleet()
    );

    // With globex's credentials, the server answers for none of acme's
    // JetStream objects: not the task stream, its consumer, the lease or
    // card buckets, and none of them is listed.
    let raw =
        async_nats::ConnectOptions::with_user_and_password("globex".into(), "globex-secret".into())
            .connect(url.as_str())
            .await
            .unwrap();
    let js = async_nats::jetstream::new(raw.clone());
    let tasks = NatsTransport::task_stream(&acme);
    let err = js.get_stream(&tasks).await.unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let err = js
        .get_consumer_from_stream::<async_nats::jetstream::consumer::pull::Config, _, _>(
            "secret", &tasks,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    for bucket in [
        NatsTransport::card_bucket(&acme),
        format!("CODITECT_LEASES_{acme}"),
    ] {
        let err = js.get_key_value(&bucket).await.unwrap_err();
        assert!(
            err.to_string().to_lowercase().contains("not found"),
            "{bucket}: {err}"
        );
    }
    let names: Vec<String> = js
        .stream_names()
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .map(|n| n.unwrap())
        .collect();
    assert!(!names.is_empty(), "globex lists its own streams");
    assert!(names.iter().all(|n| !n.contains("acme")), "{names:?}");
    // Publishing a task on acme's subject from globex stores nothing
    // anywhere acme reads: the server says no stream takes it.
    let (headers, payload) = coditect_orchestrator::transport::nats::wire::encode(
        &coditect_orchestrator::Envelope::new(
            acme.clone(),
            coditect_orchestrator::Destination::Kind(AgentKind::new("secret").unwrap()),
            coditect_orchestrator::Payload::Message(coditect_orchestrator::Body::new(2u64)),
        ),
    )
    .unwrap();
    let refused = async {
        js.publish_with_headers("coditect.acme.task.secret", headers, payload)
            .await?
            .await
            .map(|_| ())
    }
    .await;
    assert!(refused.is_err(), "a stream took another tenant's task");
    // acme's worker handled only its own request.
    let n: u64 = timeout(T, a.request(AgentKind::new("secret").unwrap(), 3u64))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(handled.load(std::sync::atomic::Ordering::SeqCst), 2);
    a.shutdown(Duration::from_secs(1)).await;
    b.shutdown(Duration::from_secs(1)).await;
}

/// Echoes a number and counts what it handled.
struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);
impl Agent for Counting {
    type Input = u64;
    type Output = u64;
    async fn handle(&mut self, n: u64, _ctx: &AgentContext) -> Result<u64, AgentError> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(n)
    }
}
