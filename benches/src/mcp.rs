//! `mcp_tool_call`: one MCP tool call through coditect (`McpClient::call`:
//! its session, the progress route and cancellation guard of the call, the
//! timeout, the mapping of the result onto coditect's types) beside the same
//! call with rmcp's client directly (`Peer::call_tool`). Each side talks to
//! its own copy of the same rmcp server — this binary as a child process
//! (`compare --child mcp_server`), newline-delimited JSON-RPC over stdio — and
//! calls its `echo` tool with the same arguments, sequentially.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coditect_agents::mcp::McpServer;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

use crate::report::{Mode, Report, median, quantile_ns, round2};

/// The bench's MCP server: one tool that echoes its text.
#[derive(Clone, Default)]
struct Echo;

impl ServerHandler for Echo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<PaginatedRequestParams>,
        _: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let schema = json!({
            "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]
        });
        let schema: JsonObject = match schema {
            Value::Object(m) => m,
            _ => JsonObject::new(),
        };
        Ok(ListToolsResult::with_all_items(vec![Tool::new(
            "echo",
            "Echoes the text.",
            Arc::new(schema),
        )]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let text = request
            .arguments
            .as_ref()
            .and_then(|a| a.get("text"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// The child process: serves `Echo` on stdin/stdout until stdin closes.
pub async fn serve_child() {
    let running = Echo.serve(rmcp::transport::stdio()).await.expect("serve");
    let _ = running.waiting().await;
}

fn args(i: usize) -> JsonObject {
    let mut m = JsonObject::new();
    m.insert("text".into(), json!(format!("hello from call {i}")));
    m
}

pub async fn run(mode: Mode) -> Report {
    let n: usize = match mode {
        Mode::Quick => 500,
        Mode::Full => 2_000,
    };
    let exe = std::env::current_exe().expect("current exe");
    let exe_str = exe.to_string_lossy().into_owned();

    // coditect's client, over its own stdio transport.
    let ours = McpServer::stdio("bench", exe_str)
        .args(["--child", "mcp_server"])
        .call_timeout(Duration::from_secs(30))
        .connect()
        .await
        .expect("connect");

    // rmcp's client over the pipes of a child started by hand.
    let mut child = tokio::process::Command::new(&exe)
        .args(["--child", "mcp_server"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stdin = child.stdin.take().expect("stdin");
    let raw = ().serve((stdout, stdin)).await.expect("rmcp handshake");
    let peer = raw.peer().clone();

    let call_ours = |i: usize| {
        let ours = &ours;
        async move {
            let out = ours
                .call("echo", Value::Object(args(i)))
                .await
                .expect("coditect call");
            assert!(!out.is_error);
            out
        }
    };
    let call_raw = |i: usize| {
        let peer = &peer;
        async move {
            let out = peer
                .call_tool(CallToolRequestParams::new("echo").with_arguments(args(i)))
                .await
                .expect("rmcp call");
            assert_ne!(out.is_error, Some(true));
            out
        }
    };
    for i in 0..200 {
        let a = call_ours(i).await;
        let b = call_raw(i).await;
        assert_eq!(a.text(), format!("hello from call {i}"));
        assert_eq!(b.content.len(), 1);
    }

    let (mut ours_ns, mut base_ns) = (Vec::new(), Vec::new());
    let (mut ours_lat, mut base_lat) = (Vec::new(), Vec::new());
    for _ in 0..mode.rounds() {
        let start = Instant::now();
        for i in 0..n {
            let t0 = Instant::now();
            std::hint::black_box(call_ours(i).await);
            ours_lat.push(t0.elapsed());
        }
        ours_ns.push(start.elapsed().as_nanos() as f64 / n as f64);

        let start = Instant::now();
        for i in 0..n {
            let t0 = Instant::now();
            std::hint::black_box(call_raw(i).await);
            base_lat.push(t0.elapsed());
        }
        base_ns.push(start.elapsed().as_nanos() as f64 / n as f64);
    }
    ours.close().await;
    let _ = raw.cancel().await;
    let _ = child.kill().await;
    Report::new(
        "mcp_tool_call",
        "rmcp client (Peer::call_tool) over the same child's stdio",
        median(&mut ours_ns),
        median(&mut base_ns),
    )
    .field("n", n as u64)
    .field("transport", "stdio (child process, rmcp server)")
    .field("target_slowdown_max", 1.1)
    .field("p50_us", round2(quantile_ns(&mut ours_lat, 0.5) / 1e3))
    .field("p99_us", round2(quantile_ns(&mut ours_lat, 0.99) / 1e3))
    .field(
        "baseline_p50_us",
        round2(quantile_ns(&mut base_lat, 0.5) / 1e3),
    )
    .field(
        "baseline_p99_us",
        round2(quantile_ns(&mut base_lat, 0.99) / 1e3),
    )
}
