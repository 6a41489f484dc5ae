//! MCP tools in and out, on the official [`rmcp`] SDK (feature `mcp`).
//!
//! **In:** an [`LlmAgent`](crate::LlmAgent) uses the tools of MCP servers —
//! a child process over stdio ([`McpServer::stdio`]) or streamable HTTP
//! ([`McpServer::http`]). Each granted tool is offered to the model with the
//! server's JSON Schema; results map onto coditect tool results (text,
//! structured content as JSON when there is no text, notes for images,
//! sounds and blobs; a result the tool marks as an error becomes a tool
//! error for the model). Every call
//! has a timeout; a server's progress notifications become
//! [`AgentProgress::ToolProgress`](crate::AgentProgress::ToolProgress) events;
//! a call abandoned (the step cancelled, the timeout hit) is cancelled on the
//! server. A server that dies mid-call fails the call at once with
//! [`McpErrorKind::ServerDied`] and is started again on the next call (at most
//! [`McpServer::max_restarts`] times); one that writes anything but MCP's
//! JSON-RPC fails it with [`McpErrorKind::OffProtocol`], naming the server.
//!
//! **Out:** [`McpOrchestratorServer`] serves an orchestrator's runtime as an
//! MCP server — one tool per capability, schemas from the agent cards, plus
//! `run_task`, which runs a whole task and streams its progress — over stdio
//! or streamable HTTP with a bearer token.
//!
//! # Example
//!
//! An agent that may use two tools of a server; the model is offered exactly
//! those two.
//!
//! ```no_run
//! use std::time::Duration;
//! use coditect_agents::{LlmAgent, ScriptedModel, ScriptedReply};
//! use coditect_agents::mcp::McpServer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let everything = McpServer::stdio("everything", "npx")
//!     .args(["-y", "@modelcontextprotocol/server-everything"])
//!     .call_timeout(Duration::from_secs(10))
//!     .connect()
//!     .await?;
//! let model = ScriptedModel::new()
//!     .then(ScriptedReply::tool_call("get-sum", serde_json::json!({"a": 2, "b": 3})))
//!     .then(ScriptedReply::text("2 + 3 = 5"));
//! let agent = LlmAgent::builder(model)
//!     .tools(everything.toolset().allow(["echo", "get-sum"]).build()?)
//!     .build();
//! let answer = agent.run(serde_json::json!("What is 2 + 3?"), None).await?;
//! assert_eq!(answer.text, "2 + 3 = 5");
//! # Ok(()) }
//! ```

mod client;
mod content;
mod error;
mod http;
mod server;
mod session;
mod stdio;
mod tool;

pub use client::{McpClient, McpServer, McpToolInfo};
pub use content::{CallOutcome, McpContent};
pub use error::{McpError, McpErrorKind};
pub use http::{MCP_PATH, McpHttpServer};
pub use server::{McpOrchestratorServer, RUN_TASK_TOOL};
pub use session::McpProgress;
pub use tool::McpToolset;
