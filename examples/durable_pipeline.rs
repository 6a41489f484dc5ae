//! `durable_pipeline`: a run that survives its process. Kill it at any moment
//! and resume it as many times as you like: every step's side effect happens
//! exactly once.
//!
//! ```text
//! cargo run -p coditect-examples --bin durable_pipeline -- --db /tmp/runs.db
//! # run 0193…            <- kill it (Ctrl-C, kill -9) whenever you like, then:
//! cargo run -p coditect-examples --bin durable_pipeline -- --db /tmp/runs.db --resume 0193…
//! ```
//!
//! It runs a plan of `--steps N` steps (20 by default), each depending on the
//! one before, with the SQLite store at `--db PATH`. Each step, through an
//! exactly-once effect ([`AgentContext::effect`]), appends one line
//! `<run id> <step id>` to the file `PATH.effects`, then works for about
//! 100 ms. It prints `run <RUN_ID>` first and `finished <Status>` last.
//!
//! How the effect is exactly once: its result is recorded in the run's journal
//! before the step goes on, so a step executed again after a crash gets the
//! recorded result instead of appending again. The one window a journal
//! cannot close — the line written, the process killed before the record is
//! — is closed by the effect's idempotency key: the effect appends its line
//! only if the file does not hold it yet. (Each time the effect's body runs it
//! also notes its key and the step's attempt in `PATH.attempts`, so you can
//! see how rarely that window is hit.)
//!
//! Arguments:
//! - `--db PATH`: the SQLite file (created if missing).
//! - `--steps N`: the plan's length, for a new run.
//! - `--resume RUN_ID`: continue that run instead of starting one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use coditect_orchestrator::orchestrator::{
    DurableErrorKind, Orchestrator, Plan, RunEvent, RunStatus, StaticPlanner, Step, StepInput,
    TaskSpec,
};
use coditect_orchestrator::store::{SqliteStore, StoreOptions};
use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, RunId, Runtime};
use futures::StreamExt;

/// Appends the step's line once, then works a little.
struct Appender {
    effects: PathBuf,
    attempts: PathBuf,
}

impl Agent for Appender {
    type Input = serde_json::Value;
    type Output = u64;
    async fn handle(
        &mut self,
        input: serde_json::Value,
        ctx: &AgentContext,
    ) -> Result<u64, AgentError> {
        let (Some(run), Some(step)) = (ctx.run(), ctx.step()) else {
            return Err(AgentError::permanent(
                "durable_pipeline steps run inside a run",
            ));
        };
        let line = format!("{run} {step}");
        let (effects, attempts) = (self.effects.clone(), self.attempts.clone());
        let attempt = ctx.attempt();
        let written: u64 = ctx
            .effect("append", |key| async move {
                append_once(&effects, &attempts, &format!("{key} {attempt}"), &line)
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(input.as_u64().unwrap_or(0) + written)
    }
}

/// Appends `line` to `effects` unless it is there already (the idempotency
/// key at work); notes every execution in `attempts` (the effect's key and
/// the step's attempt). Returns 1.
fn append_once(effects: &Path, attempts: &Path, note: &str, line: &str) -> Result<u64, AgentError> {
    let io = |e: std::io::Error| AgentError::transient(format!("{}: {e}", effects.display()));
    let mut noted = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(attempts)
        .map_err(io)?;
    writeln!(noted, "{note}").map_err(io)?;
    let present = match std::fs::read_to_string(effects) {
        Ok(text) => text.lines().any(|l| l == line),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(e)),
    };
    if !present {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(effects)
            .map_err(io)?;
        // One write of the whole line: a kill cannot leave half of it.
        f.write_all(format!("{line}\n").as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)?;
    }
    Ok(1)
}

struct Args {
    db: PathBuf,
    steps: usize,
    resume: Option<RunId>,
}

fn args() -> Result<Args, String> {
    let mut db = None;
    let mut steps = 20;
    let mut resume = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--db" => db = Some(PathBuf::from(value()?)),
            "--steps" => {
                steps = value()?.parse().map_err(|e| format!("--steps: {e}"))?;
            }
            "--resume" => {
                resume = Some(value()?.parse().map_err(|e| format!("--resume: {e}"))?);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let db = db.ok_or("--db PATH is required")?;
    if steps == 0 {
        return Err("--steps must be at least 1".into());
    }
    Ok(Args { db, steps, resume })
}

fn plan(n: usize) -> Plan {
    Plan::new((0..n).map(|i| {
        let input = if i == 0 {
            StepInput::literal(0)
        } else {
            StepInput::output(format!("s{:03}", i - 1))
        };
        Step::new(format!("s{i:03}"), "append", input)
    }))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "durable_pipeline: {e}\nusage: durable_pipeline --db PATH [--steps N] [--resume RUN_ID]"
            );
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("durable_pipeline: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let store = Arc::new(SqliteStore::open(&args.db, StoreOptions::default()).await?);
    let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
    let (effects, attempts) = (
        with_suffix(&args.db, ".effects"),
        with_suffix(&args.db, ".attempts"),
    );
    runtime
        .kind("append")
        .capability("append")
        .description("Appends its step's line to the effects file, exactly once.")
        .register(move |_| Appender {
            effects: effects.clone(),
            attempts: attempts.clone(),
        })
        .await?;
    // One stable holder name: a restarted process takes its run's lease
    // back at once instead of waiting for the dead one's to expire.
    let orchestrator = Orchestrator::new(runtime, StaticPlanner::new(plan(args.steps)))
        .store(store)
        .lease_holder("durable_pipeline");
    let handle = match args.resume {
        // `submit` returns once the run is in the store: the id printed
        // below always names a run that can be resumed.
        None => {
            orchestrator
                .submit(TaskSpec::new(format!(
                    "a durable pipeline of {} steps",
                    args.steps
                )))
                .await?
        }
        Some(run) => match orchestrator.resume(run).await {
            Ok(h) => h,
            Err(e) if e.kind() == DurableErrorKind::Finished => {
                // It finished before the last process could say so.
                println!("run {run}");
                let stored = orchestrator.replay(run).await?;
                println!("finished {:?}", stored.state.status);
                return Ok(exit(stored.state.status));
            }
            Err(e) => return Err(e.into()),
        },
    };
    println!("run {}", handle.id());
    std::io::stdout().flush()?;
    let mut handle = handle;
    let mut events = handle.events();
    let printer = tokio::spawn(async move {
        while let Some(e) = events.next().await {
            if let RunEvent::StepSucceeded { step, attempt, .. } = &e.event {
                println!("{step} done (attempt {attempt})");
            }
        }
    });
    let outcome = handle.outcome().await;
    let _ = printer.await;
    let status = match &outcome {
        Ok(_) => RunStatus::Succeeded,
        Err(e) => {
            eprintln!("durable_pipeline: {e}");
            e.state.status
        }
    };
    println!("finished {status:?}");
    Ok(exit(status))
}

fn exit(status: RunStatus) -> ExitCode {
    if status == RunStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
