//! What each command does.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use coditect_orchestrator::observe::{CostReport, SubtreeCost, Tokens, mermaid, timeline};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RunEvent, RunEventRecord, StaticPlanner, StoredRun,
};
use coditect_orchestrator::store::{
    JetStreamStore, PostgresStore, RunQuery, RunStatus, SqliteStore, Store, StoreOptions,
};
use coditect_orchestrator::{InMemoryTransport, MessageId, RunId, Runtime, TenantId};

use crate::{Cli, Command};

type Error = Box<dyn std::error::Error + Send + Sync>;

pub(crate) async fn run(cli: Cli) -> Result<(), Error> {
    let tenant = TenantId::new(&cli.tenant)?;
    let store = open(
        cli.store
            .as_deref()
            .ok_or("no store: give --store or set CODITECT_STORE")?,
    )
    .await?;
    match cli.command {
        Command::Runs { status, limit } => {
            let mut query = RunQuery::new(tenant).limit(limit.clamp(1, 1000));
            if let Some(s) = status {
                query = query.status(parse_status(&s)?);
            }
            let page = store.list_runs(&query).await?;
            println!("{:<38} {:<10} GOAL", "RUN", "STATUS");
            for r in page.runs {
                println!(
                    "{:<38} {:<10} {}",
                    r.id,
                    r.status.as_str(),
                    clip(&r.goal, 60)
                );
            }
            Ok(())
        }
        Command::Show { run } => {
            let stored = replay(store, tenant, &run).await?;
            print!("{}", show(&stored));
            Ok(())
        }
        Command::Render {
            run,
            html,
            mermaid: mmd,
        } => {
            if html.is_none() && mmd.is_none() {
                return Err("render what? give --html FILE and/or --mermaid FILE".into());
            }
            let stored = replay(store, tenant, &run).await?;
            if let Some(path) = html {
                std::fs::write(&path, timeline::html(&stored.events))?;
                println!("wrote {}", path.display());
            }
            if let Some(path) = mmd {
                std::fs::write(&path, mermaid::sequence(&stored.events))?;
                println!("wrote {}", path.display());
            }
            Ok(())
        }
        Command::Follow { run, every_ms } => follow(store, &run, every_ms).await,
        Command::Respond {
            run,
            request,
            value,
            nats,
        } => {
            let value: serde_json::Value =
                serde_json::from_str(&value).map_err(|e| format!("the answer is not JSON: {e}"))?;
            let transport = coditect_orchestrator::transport::nats::NatsOptions::new(nats)
                .connect()
                .await?;
            let runtime = Runtime::builder(transport).tenant(tenant).build().await?;
            let orch =
                Orchestrator::new(runtime.clone(), StaticPlanner::new(Plan::new([]))).store(store);
            let run = parse_run(&run)?;
            let stored = orch.replay(run).await?;
            let Some(q) = stored
                .state
                .questions
                .iter()
                .find(|q| q.request.as_str() == request)
            else {
                return Err(format!("run {run} asked no question {request}").into());
            };
            let responded = orch.respond(run, &q.request, value).await?;
            if let coditect_orchestrator::orchestrator::Responded::Resumed(handle) = responded {
                let outcome = handle.outcome().await?;
                println!("run {run} finished: {}", outcome.output);
            } else {
                println!("answer delivered to the live run {run}");
            }
            runtime.shutdown(Duration::from_secs(2)).await;
            Ok(())
        }
    }
}

async fn open(url: &str) -> Result<Arc<dyn Store>, Error> {
    let options = StoreOptions::default();
    if let Some(path) = url.strip_prefix("sqlite:") {
        return Ok(Arc::new(SqliteStore::open(path, options).await?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url, options).await?));
    }
    if let Some(config) = url.strip_prefix("postgres:") {
        return Ok(Arc::new(PostgresStore::connect(config, options).await?));
    }
    if url.starts_with("nats://") {
        let client = async_nats::connect(url).await?;
        return Ok(Arc::new(JetStreamStore::open(client, options).await?));
    }
    Err(format!("unknown store {url:?}: use sqlite:PATH, postgres://… or nats://…").into())
}

fn parse_run(s: &str) -> Result<RunId, Error> {
    s.parse::<RunId>()
        .map_err(|e| format!("{s:?} is not a run id: {e}").into())
}

fn parse_status(s: &str) -> Result<RunStatus, Error> {
    for st in RunStatus::ALL {
        if st.as_str() == s {
            return Ok(st);
        }
    }
    Err(format!("unknown status {s:?}").into())
}

/// A run's events and state, through an orchestrator that only reads.
async fn replay(store: Arc<dyn Store>, tenant: TenantId, run: &str) -> Result<StoredRun, Error> {
    let run = parse_run(run)?;
    let runtime = Runtime::builder(InMemoryTransport::new())
        .tenant(tenant)
        .build()
        .await?;
    let orch = Orchestrator::new(runtime.clone(), StaticPlanner::new(Plan::new([]))).store(store);
    let stored = orch.replay(run).await;
    runtime.shutdown(Duration::from_secs(1)).await;
    Ok(stored?)
}

fn usd(t: &Tokens) -> String {
    format!("${:.4}", t.cost_usd())
}

fn tokens(t: &Tokens) -> String {
    let mut s = format!("{} in / {} out", t.input, t.output);
    if t.cache_read > 0 || t.cache_write > 0 {
        let _ = write!(
            s,
            " ({} cache read, {} written)",
            t.cache_read, t.cache_write
        );
    }
    s
}

/// The run as text: a header, the tree with costs, the breakdowns.
pub(crate) fn show(stored: &StoredRun) -> String {
    let state = &stored.state;
    let cost = CostReport::from_events(&stored.events);
    let mut out = String::new();
    let run = stored
        .events
        .first()
        .map(|e| e.run.to_string())
        .unwrap_or_default();
    let goal = state.task.as_ref().map(|t| t.goal.as_str()).unwrap_or("");
    let took = stored.events.last().map_or(0, |e| e.at_ms);
    let _ = writeln!(out, "run {run}: {:?} after {took} ms", state.status);
    let _ = writeln!(out, "goal: {}", clip(goal, 100));
    let _ = writeln!(out, "total: {}, {}", tokens(&cost.total), usd(&cost.total));
    let ok: HashMap<MessageId, Option<bool>> = ok_of(&stored.events);
    for tree in &cost.subtrees {
        node(&mut out, tree, 0, &ok);
    }
    if cost.outside_subtrees != Tokens::default() {
        let _ = writeln!(
            out,
            "(planning) {}, {}",
            tokens(&cost.outside_subtrees),
            usd(&cost.outside_subtrees)
        );
    }
    let _ = writeln!(out, "by model:");
    for (m, t) in &cost.by_model {
        let _ = writeln!(out, "  {m}: {}, {}", tokens(t), usd(t));
    }
    let _ = writeln!(out, "by agent:");
    for (a, t) in &cost.by_agent {
        let _ = writeln!(out, "  {a}: {}, {}", tokens(t), usd(t));
    }
    out
}

fn ok_of(events: &[RunEventRecord]) -> HashMap<MessageId, Option<bool>> {
    let mut state = coditect_orchestrator::orchestrator::RunState::default();
    for e in events {
        state.apply(e);
    }
    state
        .trace
        .iter()
        .map(|(m, e)| (*m, e.outcome.as_ref().map(Result::is_ok)))
        .collect()
}

fn node(out: &mut String, n: &SubtreeCost, depth: usize, ok: &HashMap<MessageId, Option<bool>>) {
    let status = match ok.get(&n.message).copied().flatten() {
        Some(true) => "ok",
        Some(false) => "failed",
        None => "open",
    };
    let what = match (depth, &n.step) {
        (0, Some(step)) => format!("step {step}"),
        _ => "delegated".to_owned(),
    };
    let agent = n.agent.as_ref().map_or("?".to_owned(), ToString::to_string);
    let _ = writeln!(
        out,
        "{}{what} {agent} [{status}] {}, {} (own {})",
        "  ".repeat(depth + 1),
        tokens(&n.total),
        usd(&n.total),
        usd(&n.own),
    );
    for c in &n.children {
        node(out, c, depth + 1, ok);
    }
}

/// Prints events as the journal grows, until the run finishes: pushed by
/// the server with a NATS store, read every `every_ms` with the others.
async fn follow(store: Arc<dyn Store>, run: &str, every_ms: u64) -> Result<(), Error> {
    let run = parse_run(run)?;
    let mut records = store.follow(run, 0, Duration::from_millis(every_ms.max(10)));
    while let Some(r) = records.next().await {
        let r = r?;
        // "finished": a succeeded run's end whose (large) result the journal
        // leaves out of the record; what is printed here does not show it.
        if r.kind != "event" && r.kind != "finished" {
            continue;
        }
        let e = serde_json::from_slice::<RunEventRecord>(&r.payload)
            .map_err(|e| format!("record {} of run {run} is not a run event: {e}", r.seq))?;
        println!("{:>8} ms  {}", e.at_ms, describe(&e.event));
        if matches!(e.event, RunEvent::RunFinished { .. }) {
            return Ok(());
        }
    }
    Err(format!("the journal of run {run} ended before the run did").into())
}

fn describe(e: &RunEvent) -> String {
    let json = serde_json::to_value(e).unwrap_or_default();
    let kind = json["type"].as_str().unwrap_or("event").to_owned();
    let detail = match e {
        RunEvent::StepDispatched { step, attempt, .. } => format!("{step} (attempt {attempt})"),
        RunEvent::StepStarted { step, agent, .. } => format!("{step} on {agent}"),
        RunEvent::StepSucceeded { step, .. } => step.to_string(),
        RunEvent::StepFailed { step, failure, .. } => format!("{step}: {}", failure.message),
        RunEvent::Delegated { agent, .. } => agent.to_string(),
        RunEvent::UsageReported { agent, usage, .. } => format!(
            "{agent}: {} in / {} out, ${:.4}",
            usage.input_tokens, usage.output_tokens, usage.cost_usd
        ),
        _ => String::new(),
    };
    format!("{kind} {detail}")
}

fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
