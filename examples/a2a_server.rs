//! `a2a_server`: the quickstart's specialists, published as A2A agents.
//!
//! Any A2A client — another coditect process (`a2a_client`), the official
//! Python or JavaScript SDKs, LangGraph, ADK — can then use them:
//!
//! - `http://ADDR/` is the whole team: an orchestrator whose planner plans
//!   each message over the specialists (skills: every capability);
//! - `http://ADDR/<kind>` is one specialist (`researcher`, `analyst`,
//!   `fact_checker`, `estimator`, `synthesizer`), its capability its skill.
//!
//! Each has its card at `<url>/.well-known/agent-card.json` and JSON-RPC at
//! `<url>`; with `--token` every call needs `Authorization: Bearer <token>`.
//!
//! ```text
//! cargo run -p coditect-examples --bin a2a_server -- --addr 127.0.0.1:8700 --token s3cret
//! ```
//!
//! Environment:
//! - `ANTHROPIC_API_KEY` (optional): with a key the agents think with Claude;
//!   without one they answer from scripts (offline), and the server says so.
//! - `CLAUDE_MODEL` (optional): the model, `claude-sonnet-4-5` by default.
//! - `A2A_TOKEN` (optional): the bearer token, when `--token` is not given.
//!
//! Prints `listening on http://ADDR/` once it serves; Ctrl-C stops it.

use std::process::ExitCode;
use std::time::Duration;

use axum::serve::ListenerExt;
use coditect_agents::LlmPlanner;
use coditect_agents::a2a::A2aServer;
use coditect_examples::team::{self, Brains};
use coditect_orchestrator::{InMemoryTransport, Orchestrator, Runtime};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("a2a_server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command line: `--addr HOST:PORT` and `--token TOKEN`.
struct Args {
    addr: String,
    token: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:8700".into(),
        token: std::env::var("A2A_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => args.addr = value()?,
            "--token" => args.token = Some(value()?),
            other => return Err(format!("unknown argument {other:?} (use --addr, --token)")),
        }
    }
    Ok(args)
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = args()?;
    let (brains, note) = Brains::from_env()?;
    println!("{note}");

    // The quickstart's team (see `team.rs`).
    let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
    team::register(&runtime, &brains).await?;

    // Every message gets limits, tightened further by what a caller sends.
    let policy = team::policy();
    let listener = tokio::net::TcpListener::bind(&args.addr).await?;
    let base = format!("http://{}", listener.local_addr()?);

    let orchestrator =
        Orchestrator::new(runtime.clone(), LlmPlanner::shared(brains.planner.clone()));
    let mut whole = A2aServer::for_orchestrator(orchestrator)
        .name("coditect-quickstart-team")
        .description("Plans a question over a researcher, a risk analyst, a cost estimator and a synthesizer, and answers it.")
        .run_policy(policy.clone());
    if let Some(t) = &args.token {
        whole = whole.bearer_token(t.clone());
    }
    let mut app = whole.build()?.router(&format!("{base}/"));
    for (kind, _, _) in team::SPECIALISTS {
        let mut one = A2aServer::for_kind(&runtime, kind)?.run_policy(policy.clone());
        if let Some(t) = &args.token {
            one = one.bearer_token(t.clone());
        }
        app = app.nest(
            &format!("/{kind}"),
            one.build()?.router(&format!("{base}/{kind}")),
        );
    }

    println!("listening on {base}/");
    for (kind, capability, _) in team::SPECIALISTS {
        println!("  {base}/{kind}  (skill {capability})");
    }
    if args.token.is_none() {
        println!("no --token: calls are not authenticated");
    }
    // TCP_NODELAY: streamed events go out at once, not after a delayed ACK.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    runtime.shutdown(Duration::from_secs(2)).await;
    Ok(())
}
