//! `mcp_tools`: use the tools of any MCP server from coditect.
//!
//! Lists a server's tools, calls one, or lets an `LlmAgent` use them for a
//! prompt — the server a child process over stdio or a streamable HTTP URL.
//!
//! ```text
//! # list the tools (one line each: name, then description)
//! cargo run -p coditect-examples --bin mcp_tools -- --stdio "npx -y @modelcontextprotocol/server-everything"
//! cargo run -p coditect-examples --bin mcp_tools -- --http http://127.0.0.1:3001/mcp [--token T]
//! # call one
//! cargo run -p coditect-examples --bin mcp_tools -- --stdio "…" --call get-sum --args '{"a": 2, "b": 3}'
//! # an agent uses them (only those given with --allow, if any)
//! cargo run -p coditect-examples --bin mcp_tools -- --stdio "…" --prompt "Add 2 and 3" [--allow get-sum,echo]
//! ```
//!
//! The `--stdio` command line is split on spaces (no quoting).
//!
//! Environment:
//! - `ANTHROPIC_API_KEY` (optional, for `--prompt`): with a key the agent
//!   thinks with Claude; without one it runs offline on `ScriptedModel`,
//!   which calls the first granted tool it can fill in from the prompt, and
//!   says so.
//! - `CLAUDE_MODEL` (optional): the model, `claude-sonnet-4-5` by default.
//!
//! Exits 0 on success, 1 with a one-line error on stderr (or if the called
//! tool reports an error).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use coditect_agents::mcp::{McpClient, McpServer, McpToolInfo};
use coditect_agents::model::DynLanguageModel;
use coditect_agents::{AgentProgress, LlmAgent, ScriptedModel, ScriptedReply};
use coditect_claude::{ClaudeModel, Client};
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RunEvent, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{InMemoryTransport, Runtime};
use futures::StreamExt;
use serde_json::{Map, Value, json};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mcp_tools: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The command line.
#[derive(Default)]
struct Args {
    stdio: Option<String>,
    http: Option<String>,
    token: Option<String>,
    call: Option<String>,
    args: Option<String>,
    prompt: Option<String>,
    allow: Option<Vec<String>>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--stdio" => a.stdio = Some(value()?),
            "--http" => a.http = Some(value()?),
            "--token" => a.token = Some(value()?),
            "--call" => a.call = Some(value()?),
            "--args" => a.args = Some(value()?),
            "--prompt" => a.prompt = Some(value()?),
            "--allow" => {
                a.allow = Some(value()?.split(',').map(|s| s.trim().to_owned()).collect());
            }
            other => return Err(format!("unknown argument {other} (see the file's header)")),
        }
    }
    Ok(a)
}

async fn run() -> Result<ExitCode, Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let server = match (&args.stdio, &args.http) {
        (Some(line), None) => {
            let mut words = line.split_whitespace();
            let program = words.next().ok_or("--stdio needs a command")?;
            McpServer::stdio("server", program).args(words)
        }
        (None, Some(url)) => {
            let s = McpServer::http("server", url.as_str());
            match &args.token {
                Some(t) => s.bearer_token(t.as_str()),
                None => s,
            }
        }
        _ => return Err("give exactly one of --stdio \"<command line>\" or --http URL".into()),
    };
    let client = server
        .connect_timeout(Duration::from_secs(60))
        .call_timeout(Duration::from_secs(60))
        .connect()
        .await?;

    if let Some(name) = &args.call {
        let input: Value = match &args.args {
            Some(json) => {
                serde_json::from_str(json).map_err(|e| format!("--args is not JSON: {e}"))?
            }
            None => Value::Null,
        };
        let outcome = client.call(name, input).await?;
        println!("{}", outcome.text());
        client.close().await;
        return Ok(if outcome.is_error {
            eprintln!("mcp_tools: the tool {name} reports an error");
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }

    if let Some(prompt) = &args.prompt {
        agent(&client, prompt, args.allow.as_deref()).await?;
        client.close().await;
        return Ok(ExitCode::SUCCESS);
    }

    for tool in client.tools() {
        println!("{}\t{}", tool.name, first_line(&tool.description));
    }
    client.close().await;
    Ok(ExitCode::SUCCESS)
}

/// An agent that may use the granted tools answers `prompt`; its tool calls,
/// the servers' progress and its answer print as they happen.
async fn agent(
    client: &McpClient,
    prompt: &str,
    allow: Option<&[String]>,
) -> Result<(), Box<dyn std::error::Error>> {
    let toolset = match allow {
        Some(names) => client.toolset().allow(names.iter().cloned()),
        None => client.toolset().allow_all(),
    };
    let tools = toolset.build()?;
    let granted: Vec<&McpToolInfo> = client
        .tools()
        .iter()
        .filter(|t| allow.is_none_or(|a| a.contains(&t.name)))
        .collect();
    let model: Arc<dyn DynLanguageModel> = match std::env::var("ANTHROPIC_API_KEY") {
        Ok(key) if !key.trim().is_empty() => {
            let name =
                std::env::var("CLAUDE_MODEL").unwrap_or_else(|_| "claude-sonnet-4-5".to_owned());
            println!("using Claude ({name})");
            Arc::new(ClaudeModel::new(
                Client::builder().from_env().build()?,
                name,
            ))
        }
        _ => {
            println!(
                "offline: no ANTHROPIC_API_KEY, so the agent runs on ScriptedModel — \
                 it calls the first granted tool it can fill in from the prompt; the answer is scripted"
            );
            Arc::new(scripted(&granted, prompt))
        }
    };
    let agent = LlmAgent::builder_shared(model)
        .system("Answer the user's request. Use the tools when they help.")
        .tools(tools)
        .build();

    // A one-step run, so the agent's progress arrives as run events.
    let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
    runtime
        .kind("assistant")
        .capability("assist")
        .register(move |_| agent.clone())
        .await?;
    let planner = StaticPlanner::new(Plan::new([Step::new("answer", "assist", StepInput::Goal)]));
    let orchestrator = Orchestrator::new(runtime.clone(), planner);
    let mut handle = orchestrator.start(TaskSpec::new(prompt));
    let mut events = handle.events();
    let printer = tokio::spawn(async move {
        while let Some(record) = events.next().await {
            let RunEvent::StepProgress { data, .. } = record.event else {
                continue;
            };
            match AgentProgress::from_value(&data) {
                Some(AgentProgress::ToolCall { name, input, .. }) => println!("→ {name} {input}"),
                Some(AgentProgress::ToolProgress {
                    name,
                    progress,
                    total,
                    message,
                    ..
                }) => println!(
                    "  {name}: {progress}{} {}",
                    total.map(|t| format!("/{t}")).unwrap_or_default(),
                    message.unwrap_or_default()
                ),
                Some(AgentProgress::ToolResult {
                    name, ok, summary, ..
                }) => println!("← {name} {}: {summary}", if ok { "ok" } else { "failed" }),
                _ => {}
            }
        }
    });
    let outcome = handle.outcome().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), printer).await;
    runtime.shutdown(Duration::from_secs(1)).await;
    let outcome = outcome?;
    let answer = match outcome.output {
        Value::String(s) => s,
        other => other.to_string(),
    };
    println!("\n{answer}");
    Ok(())
}

/// A scripted model that calls the first tool whose required arguments are
/// all strings (each filled with the prompt), then quotes its result.
fn scripted(tools: &[&McpToolInfo], prompt: &str) -> ScriptedModel {
    let choice = tools.iter().find_map(|t| {
        let required = t.input_schema["required"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let props = &t.input_schema["properties"];
        let mut args = Map::new();
        for r in &required {
            let name = r.as_str()?;
            if props[name]["type"] != "string" || props[name].get("enum").is_some() {
                return None;
            }
            args.insert(name.to_owned(), json!(prompt));
        }
        Some((t.name.clone(), Value::Object(args)))
    });
    let model = ScriptedModel::new();
    match choice {
        Some((name, args)) => model
            .when(
                |r| r.last_tool_results().is_empty(),
                ScriptedReply::tool_call(name.clone(), args),
            )
            .respond(
                |_| true,
                move |r| {
                    let result = r
                        .last_tool_results()
                        .first()
                        .map_or(String::new(), |(_, t, _)| (*t).to_owned());
                    ScriptedReply::text(format!("The tool {name} answered: {result}"))
                },
            ),
        None => model.respond(
            |_| true,
            |_| ScriptedReply::text("None of the granted tools can be filled in from the prompt."),
        ),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}
