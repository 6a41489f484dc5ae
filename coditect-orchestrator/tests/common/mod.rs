//! Shared pieces of the NATS integration and fault tests: the worker agent,
//! worker processes (this very test binary, re-executed), and a 1,000-step
//! run driven by the orchestrator.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use coditect_orchestrator::orchestrator::{
    RetryOn, RetryPolicy, RunEvent, RunPolicy, StaticPlanner,
};
use coditect_orchestrator::transport::nats::{DurableOptions, NatsOptions, NatsTransport};
use coditect_orchestrator::{
    Agent, AgentCard, AgentContext, AgentError, AgentKind, Orchestrator, Plan, Runtime, Step,
    StepInput, TaskSpec,
};
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// The limit on any one wait in these tests.
pub const T: Duration = Duration::from_secs(60);

/// Doubles a number after `work` of pretend work.
pub struct Doubler {
    pub work: Duration,
}

impl Agent for Doubler {
    type Input = u64;
    type Output = u64;
    async fn handle(&mut self, n: u64, _ctx: &AgentContext) -> Result<u64, AgentError> {
        tokio::time::sleep(self.work).await;
        Ok(n * 2)
    }
}

/// Durable settings that make a dead worker's tasks come back fast.
pub fn fast_durable() -> DurableOptions {
    DurableOptions::default()
        .ack_wait(Duration::from_secs(2))
        .max_deliver(20)
        .max_ack_pending(200)
        .nak_delay(Duration::from_millis(100))
}

/// A transport for one process of a test run.
pub async fn connect(urls: &[String], durable: DurableOptions) -> NatsTransport {
    timeout(
        T,
        NatsOptions::with_urls(urls.to_vec())
            .durable(durable)
            .reconnect(Duration::from_millis(500), None)
            .connect(),
    )
    .await
    .expect("connect hung")
    .expect("connect to the test nats-server")
}

/// A worker runtime hosting `double` in this process.
pub async fn worker(urls: &[String], durable: DurableOptions, work: Duration) -> Runtime {
    let rt = Runtime::builder(connect(urls, durable).await)
        .build()
        .await
        .unwrap();
    rt.kind("double")
        .instances(8)
        .register(move |_| Doubler { work })
        .await
        .unwrap();
    rt
}

/// Body of the worker process: runs when the test binary is re-executed with
/// `CODITECT_NATS_WORKER` set, until its stdin closes (the parent died or
/// killed it) or five minutes pass.
pub async fn worker_process_main() {
    let Ok(urls) = std::env::var("CODITECT_NATS_WORKER") else {
        return;
    };
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let work_ms: u64 = std::env::var("CODITECT_NATS_WORK_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let rt = worker(&urls, fast_durable(), Duration::from_millis(work_ms)).await;
    println!("READY {}", rt.node_id());
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let _ = timeout(Duration::from_secs(300), async {
        while let Ok(Some(_)) = stdin.next_line().await {}
    })
    .await;
    rt.shutdown(Duration::from_secs(5)).await;
}

/// Starts a worker process (this test binary running `entry`) and waits
/// until it is ready.
pub async fn spawn_worker_process(entry: &str, urls: &[String], work_ms: u64) -> Child {
    spawn_process(entry, "CODITECT_NATS_WORKER", urls, work_ms).await
}

/// Starts this test binary running `entry` with `var` set to the server URLs,
/// and waits until it prints `READY`.
pub async fn spawn_process(entry: &str, var: &str, urls: &[String], work_ms: u64) -> Child {
    spawn_process_ready(entry, var, urls, work_ms).await.0
}

/// [`spawn_process`], also returning the line that said `READY`.
#[allow(dead_code)]
pub async fn spawn_process_ready(
    entry: &str,
    var: &str,
    urls: &[String],
    work_ms: u64,
) -> (Child, String) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            entry,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(var, urls.join(","))
        .env("CODITECT_NATS_WORK_MS", work_ms.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a worker process");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = timeout(T, async {
        loop {
            match lines.next_line().await {
                Ok(Some(l)) if l.contains("READY ") => return l,
                Ok(Some(_)) => {}
                other => panic!("worker process ended before it was ready: {other:?}"),
            }
        }
    })
    .await
    .expect("worker process never became ready");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, ready)
}

/// What a run of `n` doubling steps produced.
pub struct RunResult {
    /// Each step's recorded output.
    pub outputs: HashMap<String, serde_json::Value>,
    /// How many times the run recorded each step as succeeded.
    pub recorded: HashMap<String, usize>,
    /// How many times the run dispatched each step (attempts).
    pub dispatched: HashMap<String, usize>,
    /// Failed attempts the run recorded.
    pub failed: usize,
    /// Steps that had succeeded when the fault was injected.
    pub at_fault: usize,
}

/// Runs `n` steps of `double` through the orchestrator on `rt`, calling
/// `fault` once `fault_after` steps have succeeded; the orchestrator retries
/// any failed or timed-out step (up to 30 attempts).
pub async fn run_steps<F, Fut>(rt: &Runtime, n: u64, fault_after: usize, fault: F) -> RunResult
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    run_steps_with(rt, n, fault_after, Retries::On, fault).await
}

/// Whether the orchestrator retries steps in a fault run.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Retries {
    /// Up to 30 attempts, a 10 s step timeout.
    On,
    /// One attempt, no step timeout: only JetStream redelivery can recover
    /// a task a fault interrupted.
    Off,
}

/// [`run_steps`] with the retry policy chosen.
pub async fn run_steps_with<F, Fut>(
    rt: &Runtime,
    n: u64,
    fault_after: usize,
    retries: Retries,
    fault: F,
) -> RunResult
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let kind = AgentKind::new("double").unwrap();
    let plan =
        Plan::new((0..n).map(|i| Step::new(format!("s{i}"), "double", StepInput::literal(i))));
    let off = RunPolicy {
        max_steps: 10 * n as usize,
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    };
    let policy = if retries == Retries::Off {
        off
    } else {
        RunPolicy {
            max_steps: 10 * n as usize,
            step_timeout: Some(Duration::from_secs(10)),
            retry: RetryPolicy {
                max_attempts: 30,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(1),
                retry_on: RetryOn::Always,
                ..RetryPolicy::default()
            },
            ..RunPolicy::default()
        }
    };
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan))
        .cards(vec![AgentCard::of::<Doubler>(kind)]);
    let mut handle = orch.start(TaskSpec::new("fault run").policy(policy));
    let mut events = handle.events();
    let mut recorded: HashMap<String, usize> = HashMap::new();
    let mut dispatched: HashMap<String, usize> = HashMap::new();
    let mut failed = 0;
    let mut fault = Some(fault);
    let mut at_fault = 0;
    let watch = async {
        while let Some(rec) = events.next().await {
            match rec.event {
                RunEvent::StepSucceeded { step, .. } => {
                    *recorded.entry(step.to_string()).or_default() += 1;
                    if recorded.len() >= fault_after
                        && let Some(f) = fault.take()
                    {
                        at_fault = recorded.len();
                        f().await;
                    }
                }
                RunEvent::StepDispatched { step, .. } => {
                    *dispatched.entry(step.to_string()).or_default() += 1;
                }
                RunEvent::StepFailed { .. } => failed += 1,
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
        .expect("outcome hung")
        .expect("the run failed");
    let outputs = outcome
        .steps
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    RunResult {
        outputs,
        recorded,
        dispatched,
        failed,
        at_fault,
    }
}

/// Asserts every one of `n` steps has its right result, recorded exactly once.
pub fn assert_complete(r: &RunResult, n: u64) {
    assert_eq!(
        r.outputs.len(),
        n as usize,
        "steps missing from the outcome"
    );
    for i in 0..n {
        let key = format!("s{i}");
        assert_eq!(
            r.outputs.get(&key),
            Some(&serde_json::json!(i * 2)),
            "step {key}"
        );
        assert_eq!(
            r.recorded.get(&key),
            Some(&1),
            "step {key} must be recorded exactly once"
        );
    }
}

/// Asserts what [`assert_complete`] does, and that each step was dispatched
/// once and nothing failed: nothing was recovered by an orchestrator retry.
pub fn assert_complete_without_retries(r: &RunResult, n: u64) {
    assert_complete(r, n);
    assert_eq!(r.failed, 0, "an attempt failed");
    for i in 0..n {
        let key = format!("s{i}");
        assert_eq!(
            r.dispatched.get(&key),
            Some(&1),
            "step {key} was dispatched again"
        );
    }
}
