//! `a2a_client`: an orchestrator whose plan uses a remote A2A agent.
//!
//! Reads the remote agent's card (`<url>/.well-known/agent-card.json`),
//! registers it on a local runtime as the kind `remote` offering its skills,
//! and runs a two-step plan: the remote agent answers the goal (step
//! `remote`, on its first skill or `--skill`), then a local agent writes the
//! report (step `report`). The remote agent's progress prints as it streams;
//! the run's deadline and budget travel with the call, and Ctrl-C cancels the
//! remote task.
//!
//! ```text
//! cargo run -p coditect-examples --bin a2a_server -- --token s3cret &
//! cargo run -p coditect-examples --bin a2a_client -- --url http://127.0.0.1:8700/researcher --token s3cret
//! ```
//!
//! Any A2A agent works as the remote, coditect's or not. Arguments:
//! `--url URL` (default `http://127.0.0.1:8700/`), `--token TOKEN` (or the
//! environment variable `A2A_TOKEN`), `--skill ID`, `--goal TEXT`.
//!
//! Exits 0 with the report, or 1 with a one-line error on stderr.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use coditect_agents::AgentProgress;
use coditect_agents::a2a::A2aRemote;
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RunEvent, RunPolicy, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
use futures::StreamExt;
use serde_json::Value;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("a2a_client: {e}");
            ExitCode::FAILURE
        }
    }
}

struct Args {
    url: String,
    token: Option<String>,
    skill: Option<String>,
    goal: String,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:8700/".into(),
        token: std::env::var("A2A_TOKEN").ok().filter(|t| !t.is_empty()),
        skill: None,
        goal: "Should our team adopt Rust for the new log-ingestion service?".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--token" => args.token = Some(value()?),
            "--skill" => args.skill = Some(value()?),
            "--goal" => args.goal = value()?,
            other => {
                return Err(format!(
                    "unknown argument {other:?} (use --url, --token, --skill, --goal)"
                ));
            }
        }
    }
    Ok(args)
}

/// Writes the report from the remote agent's answer (a local agent).
struct Reporter;

impl Agent for Reporter {
    type Input = Value;
    type Output = String;
    async fn handle(&mut self, answer: Value, _: &AgentContext) -> Result<String, AgentError> {
        let text = match answer {
            Value::String(s) => s,
            other => serde_json::to_string_pretty(&other)?,
        };
        Ok(format!("── report ──\n{}", text.trim()))
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;

    // The remote agent becomes a kind of this runtime, found by its skills.
    let mut remote = A2aRemote::builder(&args.url);
    if let Some(t) = &args.token {
        remote = remote.bearer_token(t.clone());
    }
    let remote = remote.connect().await?;
    let skills = remote.capabilities();
    println!(
        "remote agent {:?} at {}: skills {}",
        remote.card().name,
        args.url,
        skills.join(", ")
    );
    remote.register(&runtime, "remote").await?;
    runtime
        .kind("reporter")
        .capability("report")
        .register(|_| Reporter)
        .await?;

    let skill = match args.skill {
        Some(s) => s,
        None => skills
            .first()
            .cloned()
            .ok_or("the remote agent has no skills")?,
    };
    let plan = Plan::new([
        Step::new("remote", skill.clone(), StepInput::Goal),
        Step::new("report", "report", StepInput::output("remote")),
    ]);
    let task = TaskSpec::new(args.goal).policy(RunPolicy {
        max_tokens: Some(300_000),
        max_cost_usd: Some(2.0),
        deadline: Some(Duration::from_secs(300)),
        ..RunPolicy::default()
    });
    let orchestrator = Orchestrator::new(runtime.clone(), StaticPlanner::new(plan));
    let mut handle = orchestrator.start(task);
    let cancel = handle.cancellation();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            cancel.cancel();
        }
    });
    let mut events = handle.events();
    let printer = tokio::spawn(async move {
        // Streamed text prints as it comes; everything else on a line of its own.
        let mut mid_line = false;
        let line = |text: String, mid_line: &mut bool| {
            if std::mem::take(mid_line) {
                println!();
            }
            println!("{text}");
        };
        while let Some(record) = events.next().await {
            match record.event {
                RunEvent::StepStarted { step, agent, .. } => {
                    line(format!("[{step}] started on {agent}"), &mut mid_line);
                }
                RunEvent::StepProgress { step, data, .. } => {
                    let step = step.map_or_else(|| "?".to_owned(), |s| s.to_string());
                    match AgentProgress::from_value(&data) {
                        Some(AgentProgress::Text { text }) => {
                            if !mid_line {
                                print!("[{step}] (remote) ");
                                mid_line = true;
                            }
                            print!("{text}");
                            let _ = std::io::stdout().flush();
                        }
                        Some(AgentProgress::ToolCall { name, input, .. }) => {
                            line(
                                format!("[{step}] (remote) calls {name} {input}"),
                                &mut mid_line,
                            );
                        }
                        Some(AgentProgress::Delegating { capability, task }) => line(
                            format!("[{step}] (remote) asks {capability}: {task}"),
                            &mut mid_line,
                        ),
                        Some(AgentProgress::Turn { .. } | AgentProgress::ToolResult { .. }) => {}
                        _ => line(format!("[{step}] (remote) {data}"), &mut mid_line),
                    }
                }
                RunEvent::StepSucceeded { step, .. } => {
                    line(format!("[{step}] done"), &mut mid_line);
                }
                RunEvent::StepFailed { step, failure, .. } => {
                    line(format!("[{step}] failed: {failure}"), &mut mid_line);
                }
                _ => {}
            }
        }
    });
    let outcome = handle.outcome().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), printer).await;
    runtime.shutdown(Duration::from_secs(1)).await;
    let outcome = outcome?;
    println!(
        "\n{}\n\n{} tokens in / {} out across the boundary, {:.1?}",
        outcome.output.as_str().unwrap_or_default(),
        outcome.usage.input_tokens,
        outcome.usage.output_tokens,
        outcome.duration
    );
    Ok(())
}
