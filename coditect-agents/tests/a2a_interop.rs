//! Interop with the official Python A2A SDK (`a2a-sdk` on PyPI): its client
//! against coditect's A2A server, and a coditect orchestrator using an agent
//! served by its server.
//!
//! The SDK is installed by `scripts/test-a2a.sh` into `target/a2a-venv`
//! (or name a Python with it in `CODITECT_A2A_PYTHON`). Without it the tests
//! fail under `CI=true` and are skipped, loudly, elsewhere.
#![cfg(feature = "a2a")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use coditect_agents::a2a::{A2aRemote, A2aServer, A2aServing};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RetryPolicy, RunErrorKind, RunEvent, RunPolicy, StaticPlanner, Step,
    StepInput, TaskSpec,
};
use coditect_orchestrator::{Agent, AgentContext, AgentError, Runtime};
use futures::StreamExt;
use serde_json::{Value, json};
use support::{runtime, within};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const TOKEN: &str = "interop-token";

/// The Python with `a2a-sdk` installed, or `None` (after saying so) when it
/// is missing outside CI.
fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("CODITECT_A2A_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/a2a-venv/bin/python")
        });
    let usable = std::process::Command::new(&candidate)
        .args([
            "-c",
            "import a2a.server.routes, a2a.client, uvicorn, starlette",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Some(candidate);
    }
    let why = format!(
        "the Python a2a-sdk peer is not installed at {} (run scripts/test-a2a.sh)",
        candidate.display()
    );
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    None
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/a2a_py")
        .join(name)
}

/// Shouts what it is told.
struct Upper;
impl Agent for Upper {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
        Ok(s.to_uppercase())
    }
}

/// Works until cancelled (30 s at most).
struct Sleeper;
impl Agent for Sleeper {
    type Input = Value;
    type Output = Value;
    async fn handle(&mut self, _: Value, ctx: &AgentContext) -> Result<Value, AgentError> {
        let _ = tokio::time::timeout(Duration::from_secs(30), ctx.cancelled()).await;
        Err(AgentError::new("stopped"))
    }
}

async fn serve(rt: &Runtime, kind: &str) -> A2aServing {
    let listener = within(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .await
        .unwrap();
    let server = A2aServer::for_kind(rt, kind)
        .unwrap()
        .bearer_token(TOKEN)
        .build()
        .unwrap();
    within(server.serve(listener)).await.unwrap()
}

#[tokio::test]
async fn the_python_sdk_client_drives_coditects_server() {
    let Some(python) = python() else { return };
    let rt = runtime().await;
    within(
        rt.kind("upper")
            .description("Shouts.")
            .capability("shout")
            .register(|_| Upper),
    )
    .await
    .unwrap();
    within(rt.kind("sleeper").capability("sleep").register(|_| Sleeper))
        .await
        .unwrap();
    let fast = serve(&rt, "upper").await;
    let slow = serve(&rt, "sleeper").await;
    let child = Command::new(python)
        .arg(script("client_check.py"))
        .args([fast.url(), slow.url(), TOKEN])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the Python client did not finish")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed:\n{stdout}\n{stderr}"
    );
    for check in [
        "ok card skills",
        "ok send completes",
        "ok tasks/get history holds the user message",
        "ok stream ends completed",
        "ok tasks/cancel cancels",
        "ok bad token refused",
        "all ok",
    ] {
        assert!(
            stdout.lines().any(|l| l.starts_with(check)),
            "missing {check:?} in\n{stdout}"
        );
    }
    within(fast.shutdown()).await.unwrap();
    within(slow.shutdown()).await.unwrap();
}

/// The Python SDK's server, running `echo_server.py`, stopped (by its pid)
/// when dropped.
struct PythonAgent {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl PythonAgent {
    async fn start(python: PathBuf) -> Self {
        let mut child = Command::new(python)
            .arg(script("echo_server.py"))
            .arg(TOKEN)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the Python server did not start")
            .unwrap()
            .expect("the Python server exited");
        let port = first.strip_prefix("PORT ").expect("PORT line").to_owned();
        Self {
            child,
            lines,
            url: format!("http://127.0.0.1:{port}/"),
        }
    }

    /// The next line it prints.
    async fn next_line(&mut self) -> String {
        within(self.lines.next_line())
            .await
            .unwrap()
            .expect("server exited")
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = within(self.child.wait()).await;
    }
}

async fn team_using(url: &str) -> Runtime {
    let rt = runtime().await;
    let remote = within(A2aRemote::builder(url).bearer_token(TOKEN).connect())
        .await
        .unwrap();
    assert_eq!(remote.card().name, "python-echo");
    assert_eq!(remote.capabilities(), ["echo"]);
    within(remote.register(&rt, "python_echo")).await.unwrap();
    rt
}

fn echo_plan(rt: &Runtime) -> Orchestrator {
    Orchestrator::new(
        rt.clone(),
        StaticPlanner::new(Plan::new([Step::new("echoed", "echo", StepInput::Goal)])),
    )
}

fn no_retry() -> RunPolicy {
    RunPolicy {
        retry: RetryPolicy::none(),
        ..RunPolicy::default()
    }
}

#[tokio::test]
async fn a_coditect_orchestrator_uses_an_agent_served_by_the_python_sdk() {
    let Some(python) = python() else { return };
    let agent = PythonAgent::start(python).await;
    let rt = team_using(&agent.url).await;
    let mut handle = echo_plan(&rt).start(TaskSpec::new("hello from coditect"));
    let events = handle.events();
    let outcome = within(handle.outcome()).await.unwrap();
    assert_eq!(outcome.output, json!("echo: hello from coditect"));
    let events: Vec<_> = within(events.collect::<Vec<_>>()).await;
    assert!(
        events.iter().any(|e| matches!(&e.event,
            RunEvent::StepProgress { data, .. } if *data == json!({"type": "text", "text": "working on it"}))),
        "the Python agent's working status became progress"
    );
    agent.stop().await;
}

#[tokio::test]
async fn cancellation_and_deadlines_reach_the_python_agent() {
    let Some(python) = python() else { return };
    let mut agent = PythonAgent::start(python).await;
    let rt = team_using(&agent.url).await;

    // Cancelled once the remote task is working.
    let mut handle = echo_plan(&rt).start(TaskSpec::new("slow").policy(no_retry()));
    let mut events = handle.events();
    while let Some(e) = within(events.next()).await {
        if matches!(e.event, RunEvent::StepProgress { .. }) {
            break;
        }
    }
    handle.cancel();
    assert!(agent.next_line().await.starts_with("CANCELLED "));
    let err = within(handle.outcome()).await.unwrap_err();
    assert!(matches!(err.kind, RunErrorKind::Cancelled), "{err:?}");

    // Out of time: the step's deadline ends the HTTP call and the remote task.
    let task = TaskSpec::new("slow").policy(RunPolicy {
        step_timeout: Some(Duration::from_millis(500)),
        ..no_retry()
    });
    let err = within(echo_plan(&rt).run(task)).await.unwrap_err();
    assert!(
        matches!(err.kind, RunErrorKind::StepFailed { .. }),
        "{err:?}"
    );
    assert!(agent.next_line().await.starts_with("CANCELLED "));
    agent.stop().await;
}

#[tokio::test]
async fn the_python_server_refuses_a_bad_token() {
    let Some(python) = python() else { return };
    let agent = PythonAgent::start(python).await;
    let remote = within(
        A2aRemote::builder(&agent.url)
            .bearer_token("wrong")
            .connect(),
    )
    .await
    .unwrap();
    let err = within(remote.call(json!("hi"))).await.unwrap_err();
    assert!(err.to_string().contains("unauthorized"), "{err}");
    agent.stop().await;
}
