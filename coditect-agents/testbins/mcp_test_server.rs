//! An MCP server for coditect's own tests, written with rmcp, that can
//! misbehave on purpose. Not part of the library.
//!
//! ```text
//! mcp-test-server tools          # tools over stdio: echo, slow, crash, garbage, …
//! mcp-test-server orchestrator   # a small coditect team served with McpOrchestratorServer over stdio
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use coditect_agents::mcp::McpOrchestratorServer;
use coditect_orchestrator::orchestrator::{Orchestrator, Plan, StaticPlanner, Step, StepInput};
use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ServerCapabilities,
    ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

#[tokio::main]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "tools".into());
    match mode.as_str() {
        "tools" => {
            let running = Tools::default()
                .serve(rmcp::transport::stdio())
                .await
                .unwrap();
            let _ = running.waiting().await;
        }
        "orchestrator" => orchestrator(None).await,
        // Serves over HTTP with a token; prints the URL as its first line.
        "orchestrator-http" => {
            let token = std::env::args().nth(2).expect("a token");
            orchestrator(Some(token)).await;
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}

#[derive(Clone, Default)]
struct Tools {
    cancellations: Arc<AtomicU64>,
}

fn schema(v: Value) -> Arc<JsonObject> {
    match v {
        Value::Object(m) => Arc::new(m),
        _ => Arc::new(JsonObject::new()),
    }
}

impl ServerHandler for Tools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let empty = json!({"type": "object", "properties": {}});
        Ok(ListToolsResult::with_all_items(vec![
            Tool::new(
                "echo",
                "Echoes the text.",
                schema(json!({
                    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]
                })),
            ),
            Tool::new(
                "slow",
                "Reports progress every `ms` for `steps` steps, then answers; notes a cancellation.",
                schema(json!({
                    "type": "object", "properties": {"steps": {"type": "integer"}, "ms": {"type": "integer"}}
                })),
            ),
            Tool::new(
                "cancellations",
                "How many calls were cancelled so far.",
                schema(empty.clone()),
            ),
            Tool::new("pid", "The server's process id.", schema(empty.clone())),
            Tool::new(
                "crash",
                "Exits the process in the middle of the call.",
                schema(empty.clone()),
            ),
            Tool::new(
                "garbage",
                "Writes a line that is not JSON-RPC, then never answers.",
                schema(empty.clone()),
            ),
            Tool::new("image", "A caption and a 1×1 PNG.", schema(empty.clone())),
            Tool::new("fail", "Always fails (a tool-level error).", schema(empty)),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "echo" => CallToolResult::success(vec![ContentBlock::text(
                args.get("text").and_then(Value::as_str).unwrap_or_default(),
            )]),
            "slow" => {
                let steps = args.get("steps").and_then(Value::as_u64).unwrap_or(3);
                let ms = args.get("ms").and_then(Value::as_u64).unwrap_or(10);
                let token = ctx.meta.get_progress_token();
                for i in 1..=steps {
                    tokio::select! {
                        () = ctx.ct.cancelled() => {
                            self.cancellations.fetch_add(1, Ordering::SeqCst);
                            return Ok(CallToolResult::error(vec![ContentBlock::text("cancelled")]).into());
                        }
                        () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    }
                    if let Some(t) = &token {
                        let p = ProgressNotificationParam::new(t.clone(), i as f64)
                            .with_total(steps as f64)
                            .with_message(format!("step {i}"));
                        let _ = ctx.peer.notify_progress(p).await;
                    }
                }
                CallToolResult::success(vec![ContentBlock::text(format!(
                    "done after {steps} steps"
                ))])
            }
            "cancellations" => CallToolResult::success(vec![ContentBlock::text(
                self.cancellations.load(Ordering::SeqCst).to_string(),
            )]),
            "pid" => {
                CallToolResult::success(vec![ContentBlock::text(std::process::id().to_string())])
            }
            "crash" => {
                eprintln!("crashing on purpose");
                std::process::exit(3);
            }
            "garbage" => {
                {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(b"<html>this is not json-rpc</html>\n");
                    let _ = out.flush();
                }
                ctx.ct.cancelled().await;
                CallToolResult::error(vec![ContentBlock::text("cancelled")])
            }
            "image" => CallToolResult::success(vec![
                ContentBlock::text("a red dot"),
                ContentBlock::image(
                    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==",
                    "image/png",
                ),
            ]),
            "fail" => CallToolResult::error(vec![ContentBlock::text("this tool always fails")]),
            other => {
                return Err(ErrorData::invalid_params(format!("no tool {other}"), None));
            }
        };
        Ok(result.into())
    }
}

/// Shouts its input.
struct Upper;
impl Agent for Upper {
    type Input = String;
    type Output = String;
    async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
        Ok(s.to_uppercase())
    }
}

/// How many `wait` runs were cancelled, for the `cancelled_waits` capability;
/// a watch channel, so a reader can wait for the count to reach a number.
static CANCELLED_WAITS: std::sync::LazyLock<tokio::sync::watch::Sender<u64>> =
    std::sync::LazyLock::new(|| tokio::sync::watch::Sender::new(0));

/// Reports progress, then waits until cancelled (counting it) or for `seconds`.
struct Wait;

#[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
struct WaitArgs {
    /// How long to wait.
    seconds: u64,
}

impl Agent for Wait {
    type Input = WaitArgs;
    type Output = String;
    async fn handle(&mut self, a: WaitArgs, ctx: &AgentContext) -> Result<String, AgentError> {
        // On stderr, which the test prints if the cancellation goes missing.
        eprintln!("mcp-test-server: wait {} started", ctx.message_id());
        let _ = ctx
            .emit(json!({"type": "waiting", "seconds": a.seconds}))
            .await;
        tokio::select! {
            () = ctx.cancelled() => {
                eprintln!("mcp-test-server: wait {} cancelled", ctx.message_id());
                CANCELLED_WAITS.send_modify(|n| *n += 1);
                Err(AgentError::permanent("cancelled"))
            }
            () = tokio::time::sleep(Duration::from_secs(a.seconds)) => Ok(format!("waited {}s", a.seconds)),
        }
    }
}

/// Says how many `wait` runs were cancelled, once there are at least
/// `at_least` of them (or after 20 s): the cancellation reaches the handler
/// after the client has moved on, so a caller asks to be told when it has.
struct Stats;

#[derive(serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
struct StatsArgs {
    /// Answer once this many waits were cancelled (0: at once).
    #[serde(default)]
    at_least: u64,
}

impl Agent for Stats {
    type Input = StatsArgs;
    type Output = u64;
    async fn handle(&mut self, a: StatsArgs, _: &AgentContext) -> Result<u64, AgentError> {
        let mut count = CANCELLED_WAITS.subscribe();
        // The sender is a static: it is never dropped, so waiting cannot fail.
        let _ = tokio::time::timeout(
            Duration::from_secs(20),
            count.wait_for(|n| *n >= a.at_least),
        )
        .await;
        Ok(*count.borrow())
    }
}

async fn orchestrator(http_token: Option<String>) {
    let runtime = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .unwrap();
    runtime
        .kind("upper")
        .description("Shouts a text.")
        .capability("shout")
        .register(|_| Upper)
        .await
        .unwrap();
    runtime
        .kind("waiter")
        .description("Waits a number of seconds.")
        .capability("wait")
        .register(|_| Wait)
        .await
        .unwrap();
    runtime
        .kind("stats")
        .description("Counts cancelled waits.")
        .capability("cancelled_waits")
        .register(|_| Stats)
        .await
        .unwrap();
    // run_task: shout the goal, then shout it again.
    let planner = StaticPlanner::new(Plan::new([
        Step::new("first", "shout", StepInput::Goal),
        Step::new("second", "shout", StepInput::output("first")),
    ]));
    let orchestrator = Orchestrator::new(runtime.clone(), planner);
    let server = McpOrchestratorServer::new(runtime, orchestrator).name("coditect-test");
    match http_token {
        None => server.serve_stdio().await.unwrap(),
        Some(token) => {
            let http = server
                .serve_http("127.0.0.1:0".parse().unwrap(), Some(token))
                .await
                .unwrap();
            println!("{}", http.url());
            // Serve until stdin closes (the test ends) or the process is killed.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut tokio::io::stdin(), &mut sink).await;
            http.shutdown().await;
        }
    }
}
