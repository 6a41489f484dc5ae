//! `mcp_server`: the quickstart's team, served as an MCP server.
//!
//! Any MCP client (Claude Desktop, an IDE, the MCP inspector, another agent
//! framework) sees one tool per capability — `research`, `risk_analysis`,
//! `fact_check`, `cost_estimate`, `synthesize`, schemas from the agent cards —
//! and `run_task`, which plans and runs a whole task over the team and
//! reports its progress. A client's cancellation cancels the run.
//!
//! ```text
//! cargo run -p coditect-examples --bin mcp_server                                      # stdio
//! cargo run -p coditect-examples --bin mcp_server -- --http 127.0.0.1:8080 --token s3cret
//! ```
//!
//! Over stdio the MCP client starts it (its command line is the first line
//! above; build it first so the client does not wait for the compiler);
//! everything else it prints goes to stderr. Over HTTP the endpoint is
//! `http://ADDR/mcp`; with `--token`, requests must carry
//! `Authorization: Bearer <token>` (others get 401). Stop it with Ctrl-C.
//!
//! Environment:
//! - `ANTHROPIC_API_KEY` (optional): with a key the agents think with Claude;
//!   without one they run offline on `ScriptedModel` (scripted answers, not
//!   generated ones), and the server says so on stderr.
//! - `ANTHROPIC_BASE_URL` (optional): another endpoint, such as a proxy.
//! - `CLAUDE_MODEL` (optional): the model, `claude-sonnet-4-5` by default.

use std::net::SocketAddr;
use std::process::ExitCode;

use coditect_agents::LlmPlanner;
use coditect_agents::mcp::McpOrchestratorServer;
use coditect_examples::team::{self, Brains};
use coditect_orchestrator::orchestrator::Orchestrator;
use coditect_orchestrator::{InMemoryTransport, Runtime};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mcp_server: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut http: Option<SocketAddr> = None;
    let mut token: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--http" => http = Some(args.next().ok_or("--http needs an address")?.parse()?),
            "--token" => token = Some(args.next().ok_or("--token needs a value")?),
            other => return Err(format!("unknown argument {other} (see the file's header)").into()),
        }
    }

    // Notes go to stderr: over stdio, stdout is the protocol.
    let (brains, note) = Brains::from_env()?;
    eprintln!("{note}");

    // The quickstart's team (see `team.rs`).
    let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
    team::register(&runtime, &brains).await?;
    let orchestrator =
        Orchestrator::new(runtime.clone(), LlmPlanner::shared(brains.planner.clone()));
    let server = McpOrchestratorServer::new(runtime, orchestrator).name("coditect-quickstart");

    match http {
        None => {
            eprintln!("serving MCP on stdio");
            server.serve_stdio().await?;
        }
        Some(addr) => {
            let running = server.serve_http(addr, token.clone()).await?;
            eprintln!(
                "serving MCP at {}{}",
                running.url(),
                if token.is_some() {
                    " (bearer token required)"
                } else {
                    " (no token: anyone who can connect may use it)"
                }
            );
            tokio::signal::ctrl_c().await?;
            running.shutdown().await;
        }
    }
    Ok(())
}
