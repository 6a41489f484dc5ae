//! `nats_orchestrator`: submits a task to a bus of `nats_worker`s and prints
//! its progress and result.
//!
//! The plan: for each sentence, `shout` it, then `count` the words of what came
//! back. Steps run in parallel on whichever workers are up; the result shows
//! which worker did each one.
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

#[path = "nats_agents.rs"]
mod agents;

use std::time::Duration;

use coditect_orchestrator::orchestrator::{RunEvent, StaticPlanner};
use coditect_orchestrator::transport::nats::NatsOptions;
use coditect_orchestrator::{Orchestrator, Plan, Runtime, Step, StepInput, TaskSpec};
use futures::StreamExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = agents::arg("--nats", "NATS_URL", "nats://127.0.0.1:4222");
    let n: usize = agents::arg("--sentences", "SENTENCES", "6").parse()?;
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
    let orchestrator = Orchestrator::new(runtime.clone(), StaticPlanner::new(Plan::new(steps)))
        .cards(agents::cards()?);
    let mut run = orchestrator.start(TaskSpec::new("shout and count"));
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
