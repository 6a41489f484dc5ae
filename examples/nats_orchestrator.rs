//! `nats_orchestrator`: submits a task to a bus of `nats_worker`s and prints
//! its progress and result.
//!
//! The plan: for each sentence, `shout` it, then `count` the words of what came
//! back. Steps run in parallel on whichever workers are up; the result shows
//! which worker did each one. The orchestrator links none of the agents: it
//! reads their cards (description, capabilities, schemas, load) from the
//! tenant's card directory, where every worker advertises what it hosts, and
//! waits for a worker offering each capability if none is up yet.
//!
//! ```text
//! nats-server -js &
//! cargo run -p coditect-examples --bin nats_worker -- --name w1 &
//! cargo run -p coditect-examples --bin nats_worker -- --name w2 &
//! cargo run -p coditect-examples --bin nats_worker -- --name w3 &
//! cargo run -p coditect-examples --bin nats_orchestrator -- --nats nats://127.0.0.1:4222
//! ```
//!
//! Arguments (or environment):
//! - `--nats URL` (`NATS_URL`): the server, `nats://127.0.0.1:4222` by default.
//! - `--sentences N` (`SENTENCES`): how many sentences, 6 by default.
//! - `--wait SECONDS` (`WAIT_FOR_WORKERS`): how long to wait for workers to
//!   offer `shout` and `count`, 30 by default.

use std::time::Duration;

use coditect_orchestrator::orchestrator::{NoWorker, RunEvent, RunPolicy, StaticPlanner};
use coditect_orchestrator::transport::nats::NatsOptions;
use coditect_orchestrator::{Orchestrator, Plan, Runtime, Step, StepInput, TaskSpec};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = arg("--nats", "NATS_URL", "nats://127.0.0.1:4222");
    let n: usize = arg("--sentences", "SENTENCES", "6").parse()?;
    let wait: u64 = arg("--wait", "WAIT_FOR_WORKERS", "30").parse()?;
    let transport = NatsOptions::new(&url)
        .name("coditect-orchestrator")
        .connect()
        .await?;
    let runtime = Runtime::builder(transport).build().await?;

    let mut steps = Vec::new();
    for i in 0..n {
        let text = format!("sentence number {i} goes through the bus");
        steps.push(Step::new(
            format!("shout{i}"),
            "shout",
            StepInput::literal(text),
        ));
        steps.push(Step::new(
            format!("count{i}"),
            "count",
            StepInput::Output(format!("shout{i}").into()),
        ));
    }
    let orchestrator = Orchestrator::new(runtime.clone(), StaticPlanner::new(Plan::new(steps)));
    for capability in ["shout", "count"] {
        runtime
            .wait_for_capability(capability, Duration::from_secs(wait))
            .await;
    }
    let mut fleet = runtime.fleet();
    fleet.sort_by(|a, b| (&a.card.kind, &a.node).cmp(&(&b.card.kind, &b.node)));
    for live in &fleet {
        println!(
            "discovered {} on {}: {} (capabilities {:?}, capacity {})",
            live.card.kind, live.node, live.card.description, live.card.capabilities, live.capacity
        );
    }
    let policy = RunPolicy {
        no_worker: NoWorker::Wait(Duration::from_secs(wait)),
        ..RunPolicy::default()
    };
    let mut run = orchestrator.start(TaskSpec::new("shout and count").policy(policy));
    let mut events = run.events();
    let progress = tokio::spawn(async move {
        while let Some(record) = events.next().await {
            let at = record.at_ms;
            match record.event {
                RunEvent::StepDispatched { step, attempt, .. } => {
                    println!("{at:>6} ms  dispatched {step} (attempt {attempt})");
                }
                RunEvent::StepSucceeded { step, output, .. } => {
                    println!("{at:>6} ms  done       {step}: {output}");
                }
                RunEvent::StepFailed { step, failure, .. } => {
                    println!("{at:>6} ms  failed     {step}: {failure}");
                }
                RunEvent::RunFinished { status, .. } => {
                    println!("{at:>6} ms  run finished: {status:?}");
                    break;
                }
                _ => {}
            }
        }
    });
    let outcome = run.outcome().await?;
    let _ = progress.await;
    println!("{}", serde_json::to_string_pretty(&outcome.output)?);
    runtime.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// `--name value` from the command line, else the environment variable, else
/// the default.
fn arg(name: &str, env: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .or_else(|| std::env::var(env).ok())
        .unwrap_or_else(|| default.to_owned())
}
