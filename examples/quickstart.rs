//! `quickstart`: a team of agents takes one task from plan to answer, live.
//!
//! A developer defines a task. An LLM planner decomposes it into a plan over
//! the team's agent cards; three specialists work in parallel — the researcher
//! uses a tool, the risk analyst delegates a claim to a fact checker, the cost
//! estimator uses a calculator tool — and a synthesizer writes the final
//! recommendation. Progress prints as it happens: the plan, each step, tool
//! calls, delegations, and the final answer streamed word by word.
//!
//! The team itself (its tools, prompts and offline scripts) is in `team.rs`,
//! shared with `mcp_server` and `a2a_server`; this file runs a task over it.
//!
//! ```text
//! cargo run -p coditect-examples --bin quickstart
//! cargo run -p coditect-examples --bin quickstart -- --trace-html run.html --mermaid run.mmd
//! ```
//!
//! On a terminal each active step has a spinner; a table of steps, time,
//! tokens, cost and cache hits ends the run. `--trace-html FILE` writes the
//! run's HTML timeline, `--mermaid FILE` its sequence diagram.
//!
//! Environment:
//! - `ANTHROPIC_API_KEY` (optional): with a key the agents think with Claude;
//!   without one the example runs offline on `ScriptedModel` (scripted answers,
//!   not generated ones) and says so.
//! - `ANTHROPIC_BASE_URL` (optional): another endpoint, such as a proxy.
//! - `CLAUDE_MODEL` (optional): the model, `claude-sonnet-4-5` by default.
//!
//! Exits 0 with the answer, or 1 with a one-line error on stderr.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use coditect_agents::{AgentProgress, LlmPlanner};
use coditect_examples::team::{self, Brains, GOAL};
use coditect_orchestrator::orchestrator::{
    Orchestrator, RunEvent, RunOutcome, StepId, TaskSpec, TraceNode,
};
use coditect_orchestrator::{InMemoryTransport, Runtime};
use futures::StreamExt;

#[path = "live.rs"]
mod live;

// `main` returns an `ExitCode` rather than a `Result` so that a failure prints
// one line (the error's `Display`), never a `Debug` dump or a backtrace.
#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let pictures = live::Pictures::from_args()?;
    let (brains, note) = Brains::from_env()?;
    println!("{note}");

    // 1. The team: each agent kind registered with a card the planner reads
    //    (see `team.rs`: the tools, the prompts, the scripts).
    let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
    team::register(&runtime, &brains).await?;

    // 2. The task, with limits that end a runaway run with a clear error.
    let task = TaskSpec::new(GOAL).policy(team::policy());

    // 3. The orchestrator: an LLM planner over the team, then every ready step at once.
    let planner = LlmPlanner::shared(brains.planner.clone());
    let orchestrator = Orchestrator::new(runtime.clone(), planner);
    println!("task: {GOAL}\n");
    let mut handle = orchestrator.start(task);
    let printer = tokio::spawn(print_progress(handle.events()));
    let outcome = handle.outcome().await;
    // The event stream ends with the run; let the printer finish its lines.
    let (streamed, events) = match tokio::time::timeout(Duration::from_secs(5), printer).await {
        Ok(Ok(done)) => done,
        _ => (false, Vec::new()),
    };
    runtime.shutdown(Duration::from_secs(1)).await;
    let outcome = outcome?;
    summary(&outcome, streamed);
    println!("\n{}", live::table(&events));
    pictures.write(&events)?;
    Ok(())
}

/// Prints a run's events as they happen; says whether the final answer was
/// streamed.
async fn print_progress(
    mut events: coditect_orchestrator::orchestrator::RunEvents,
) -> (
    bool,
    Vec<coditect_orchestrator::orchestrator::RunEventRecord>,
) {
    let mut view = live::Live::new();
    let mut final_step: Option<StepId> = None;
    let mut streaming = false;
    let mut streamed_final = false;
    let mut out = std::io::stdout();
    while let Some(record) = events.next().await {
        view.on(&record);
        let line = match record.event {
            RunEvent::PlanMade { revision, plan } => {
                final_step = plan
                    .output
                    .clone()
                    .or_else(|| plan.sinks().first().map(|s| (*s).clone()));
                let steps: Vec<String> = plan
                    .steps
                    .iter()
                    .map(|s| {
                        let deps = s.dependencies();
                        if deps.is_empty() {
                            s.id.to_string()
                        } else {
                            let deps: Vec<&str> = deps.iter().map(StepId::as_str).collect();
                            format!("{} (after {})", s.id, deps.join(", "))
                        }
                    })
                    .collect();
                let what = if revision == 0 {
                    "plan"
                } else {
                    "revised plan"
                };
                Some(format!("[{what}] {}", steps.join(" · ")))
            }
            RunEvent::StepStarted { step, agent, .. } => {
                Some(format!("[{step}] started on {agent}"))
            }
            RunEvent::Delegated {
                step, agent, depth, ..
            } => Some(format!(
                "[{}] ↳ delegated to {agent} (depth {depth})",
                step.as_ref().map_or("?", StepId::as_str)
            )),
            RunEvent::StepProgress { step, agent, data } => {
                let step_name = step.as_ref().map_or("?".to_owned(), ToString::to_string);
                match AgentProgress::from_value(&data) {
                    Some(AgentProgress::Text { text }) if step.is_some() && step == final_step => {
                        streamed_final = true;
                        view.suspend(|| {
                            if !streaming {
                                println!("\n── {step_name}, streamed by {agent} ──");
                                streaming = true;
                            }
                            print!("{text}");
                            let _ = out.flush();
                        });
                        None
                    }
                    Some(AgentProgress::ToolCall { name, input, .. }) if name != "delegate" => {
                        Some(format!(
                            "[{step_name}] {} calls {name} {input}",
                            agent.kind()
                        ))
                    }
                    Some(AgentProgress::ToolResult {
                        name,
                        ok: false,
                        summary,
                        ..
                    }) => Some(format!("[{step_name}] {name} failed: {summary}")),
                    Some(AgentProgress::Delegating { capability, task }) => Some(format!(
                        "[{step_name}] {} asks {capability}: {task}",
                        agent.kind()
                    )),
                    _ => None,
                }
            }
            RunEvent::StepSucceeded { step, output, .. } => {
                if streaming && Some(&step) == final_step.as_ref() {
                    streaming = false;
                    Some(String::new())
                } else {
                    let text = output
                        .as_str()
                        .map_or_else(|| output.to_string(), str::to_owned);
                    Some(format!("[{step}] done: {}", first_line(&text, 90)))
                }
            }
            RunEvent::StepFailed {
                step,
                failure,
                will_retry,
                ..
            } => Some(format!(
                "[{step}] failed{}: {failure}",
                if will_retry { " (will retry)" } else { "" }
            )),
            _ => None,
        };
        if let Some(line) = line {
            if streaming {
                println!();
                streaming = false;
            }
            view.println(&line);
        }
    }
    (streamed_final, view.events)
}

/// The text on one line, cut to `max` characters.
fn first_line(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

fn summary(outcome: &RunOutcome, streamed: bool) {
    // The answer was streamed above as the last step wrote it, unless that
    // step's agent does not stream or the plan ends in several steps.
    if !streamed || !outcome.output.is_string() {
        let answer = match outcome.output.as_str() {
            Some(s) => s.to_owned(),
            None => outcome.output.to_string(),
        };
        println!("\n── answer ──\n{answer}");
    }
    println!("\n── who asked whom ──");
    for node in &outcome.trace {
        print_trace(node, 0);
    }
    let u = &outcome.usage;
    let cost = if u.cost_usd > 0.0 {
        format!(", ${:.4}", u.cost_usd)
    } else {
        String::new()
    };
    println!(
        "\n{} steps and delegations, {} tokens in / {} out{cost}, {:.1?}",
        outcome.state.units, u.input_tokens, u.output_tokens, outcome.duration
    );
}

fn print_trace(node: &TraceNode, depth: usize) {
    println!(
        "{}{} → {}",
        "  ".repeat(depth + 1),
        node.step.as_ref().map_or("?", StepId::as_str),
        node.agent
            .as_ref()
            .map_or("?".to_owned(), ToString::to_string)
    );
    for c in &node.children {
        print_trace(c, depth + 1);
    }
}
