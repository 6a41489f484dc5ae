//! The server side: a coditect orchestrator as an MCP server.
//!
//! One tool per capability of the registered agents (named after the
//! capability, described and typed by the agent's card) runs that capability
//! as a one-step run; `run_task` runs a whole task through the orchestrator's
//! planner. Both stream the run's events as MCP progress notifications when
//! the client asks for progress, and a client's cancellation cancels the run.

use std::borrow::Cow;
use std::sync::Arc;

use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, RunError, RunEvent, RunEventRecord, RunOutcome, StaticPlanner, Step,
    StepInput, TaskSpec,
};
use coditect_orchestrator::{AgentCard, Runtime};
use futures::{FutureExt, StreamExt};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam, ProgressToken,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{Value, json};

use super::client::McpToolInfo;
use super::error::{McpError, McpErrorKind};

/// The name of the tool that runs a whole task.
pub const RUN_TASK_TOOL: &str = "run_task";

/// Serves an orchestrator's agents as MCP tools.
///
/// # Examples
///
/// ```
/// use coditect_agents::mcp::McpOrchestratorServer;
/// use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
/// use coditect_orchestrator::orchestrator::{Orchestrator, Plan, StaticPlanner, Step, StepInput};
///
/// struct Upper;
/// impl Agent for Upper {
///     type Input = String;
///     type Output = String;
///     async fn handle(&mut self, s: String, _: &AgentContext) -> Result<String, AgentError> {
///         Ok(s.to_uppercase())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
/// runtime.kind("upper").description("Shouts.").capability("shout").register(|_| Upper).await?;
/// let planner = StaticPlanner::new(Plan::new([Step::new("a", "shout", StepInput::Goal)]));
/// let orchestrator = Orchestrator::new(runtime.clone(), planner);
/// let server = McpOrchestratorServer::new(runtime, orchestrator).name("shouter");
/// let names: Vec<String> = server.tools().into_iter().map(|t| t.name).collect();
/// assert_eq!(names, ["shout", "run_task"]);
/// // server.serve_stdio().await?  — or serve_http(addr, token)
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct McpOrchestratorServer {
    name: Arc<str>,
    orchestrator: Orchestrator,
    capabilities: Arc<Vec<CapabilityTool>>,
}

/// One capability, served as a tool that runs it as a one-step run.
struct CapabilityTool {
    tool: Tool,
    /// Whether the MCP arguments wrap a non-object input as `{"input": …}`.
    wrapped: bool,
    runner: Orchestrator,
}

impl std::fmt::Debug for McpOrchestratorServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpOrchestratorServer")
            .field("name", &self.name)
            .field(
                "tools",
                &self
                    .capabilities
                    .iter()
                    .map(|c| c.tool.name.as_ref())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl McpOrchestratorServer {
    /// Serves `orchestrator`, whose steps run on `runtime`: a tool per
    /// capability of the cards it plans with (read now, so register the
    /// agents first), and `run_task`.
    pub fn new(runtime: Runtime, orchestrator: Orchestrator) -> Self {
        let mut capabilities: Vec<CapabilityTool> = Vec::new();
        for card in orchestrator.all_cards() {
            for capability in &card.capabilities {
                let name = tool_name(capability);
                if name == RUN_TASK_TOOL || capabilities.iter().any(|c| c.tool.name == name) {
                    continue; // one tool per capability, whoever else offers it
                }
                let plan =
                    Plan::new([Step::new("call", capability.as_str(), StepInput::TaskInput)]);
                capabilities.push(CapabilityTool {
                    tool: capability_tool(&name, capability, &card),
                    wrapped: !is_object_schema(&card.input_schema),
                    runner: Orchestrator::new(runtime.clone(), StaticPlanner::new(plan))
                        .cards(vec![card.clone()]),
                });
            }
        }
        Self {
            name: Arc::from("coditect"),
            orchestrator,
            capabilities: Arc::new(capabilities),
        }
    }

    /// The name the server gives clients (default `coditect`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Arc::from(name.into());
        self
    }

    /// The tools the server offers, capabilities first, `run_task` last.
    pub fn tools(&self) -> Vec<McpToolInfo> {
        self.wire_tools()
            .into_iter()
            .map(McpToolInfo::from)
            .collect()
    }

    pub(crate) fn server_name(&self) -> &str {
        &self.name
    }

    fn wire_tools(&self) -> Vec<Tool> {
        let mut tools: Vec<Tool> = self.capabilities.iter().map(|c| c.tool.clone()).collect();
        tools.push(run_task_tool());
        tools
    }

    /// Serves one client on this process's stdin and stdout until it
    /// disconnects. Nothing else may write to stdout meanwhile (log to stderr).
    ///
    /// # Errors
    ///
    /// [`McpErrorKind::Serve`] if the handshake fails.
    pub async fn serve_stdio(self) -> Result<(), McpError> {
        let name = self.name.to_string();
        let running = self.serve(rmcp::transport::stdio()).await.map_err(|e| {
            McpError::new(
                McpErrorKind::Serve,
                &name,
                format!("the MCP handshake failed: {e}"),
            )
            .with_source(e)
        })?;
        let _ = running.waiting().await;
        Ok(())
    }

    async fn call(
        &self,
        params: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let name = params.name.as_ref();
        let args = params.arguments.unwrap_or_default();
        let (runner, task) = if name == RUN_TASK_TOOL {
            let Some(goal) = args.get("goal").and_then(Value::as_str) else {
                return Err(ErrorData::invalid_params(
                    "run_task needs a string argument \"goal\"",
                    None,
                ));
            };
            let mut task = TaskSpec::new(goal);
            if let Some(input) = args.get("input") {
                task = task.input(input.clone());
            }
            (&self.orchestrator, task)
        } else {
            let Some(cap) = self.capabilities.iter().find(|c| c.tool.name == name) else {
                return Err(ErrorData::invalid_params(
                    format!("there is no tool {name:?} on this server"),
                    None,
                ));
            };
            let input = if cap.wrapped {
                args.get("input").cloned().unwrap_or(Value::Null)
            } else {
                Value::Object(args)
            };
            let task = TaskSpec::new(format!("{name} (called over MCP)")).input(input);
            (&cap.runner, task)
        };
        let outcome = run(runner, task, &ctx).await;
        Ok(match outcome {
            Ok(outcome) => success(&outcome),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
        })
    }
}

/// Runs a task, streaming its events as progress when the client asked for
/// progress; the client's cancellation (or going away) cancels the run.
async fn run(
    orchestrator: &Orchestrator,
    task: TaskSpec,
    ctx: &RequestContext<RoleServer>,
) -> Result<RunOutcome, RunError> {
    let mut handle = orchestrator.start(task);
    let cancel = handle.cancellation();
    // If this handler is dropped (the session ends), the run ends with it.
    let _cancel_on_drop = cancel.clone().drop_guard();
    let mut reporter = ctx
        .meta
        .get_progress_token()
        .map(|token| Reporter::new(ctx.peer.clone(), token));
    let mut events = handle.events().fuse();
    let mut events_open = true;
    let outcome = handle.outcome();
    tokio::pin!(outcome);
    let result = loop {
        tokio::select! {
            biased;
            () = ctx.ct.cancelled(), if !cancel.is_cancelled() => cancel.cancel(),
            record = events.next(), if events_open => match record {
                Some(record) => {
                    if let Some(r) = reporter.as_mut() {
                        r.report(&record).await;
                    }
                }
                None => events_open = false,
            },
            r = &mut outcome => break r,
        }
    };
    // Events published before the end, not yet read.
    while let Some(Some(record)) = events.next().now_or_never() {
        if let Some(r) = reporter.as_mut() {
            r.report(&record).await;
        }
    }
    result
}

/// Turns run events into MCP progress: progress counts finished steps, the
/// total is the plan's size, the message says what happened.
struct Reporter {
    peer: Peer<RoleServer>,
    token: ProgressToken,
    done: f64,
    total: Option<f64>,
}

impl Reporter {
    fn new(peer: Peer<RoleServer>, token: ProgressToken) -> Self {
        Self {
            peer,
            token,
            done: 0.0,
            total: None,
        }
    }

    async fn report(&mut self, record: &RunEventRecord) {
        let message = match &record.event {
            RunEvent::PlanMade { plan, .. } => {
                self.total = Some(plan.steps.len() as f64);
                let steps: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
                format!("plan: {}", steps.join(", "))
            }
            RunEvent::StepStarted { step, agent, .. } => format!("{step} started on {agent}"),
            RunEvent::StepSucceeded { step, .. } => {
                self.done += 1.0;
                format!("{step} done")
            }
            RunEvent::StepFailed {
                step,
                failure,
                will_retry,
                ..
            } => format!(
                "{step} failed{}: {failure}",
                if *will_retry { " (will retry)" } else { "" }
            ),
            RunEvent::Delegated { agent, .. } => format!("delegated to {agent}"),
            RunEvent::StepProgress { step, data, .. } => {
                // Streamed text would be one notification per token: skip it.
                if data.get("type").and_then(Value::as_str) == Some("text") {
                    return;
                }
                format!(
                    "{}: {}",
                    step.as_ref().map_or("?", |s| s.as_str()),
                    clip(&data.to_string(), 200)
                )
            }
            _ => return,
        };
        let mut p =
            ProgressNotificationParam::new(self.token.clone(), self.done).with_message(message);
        if let Some(total) = self.total {
            p = p.with_total(total);
        }
        if let Err(e) = self.peer.notify_progress(p).await {
            tracing::debug!(error = %e, "progress not delivered to the MCP client");
        }
    }
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

fn success(outcome: &RunOutcome) -> CallToolResult {
    let text = match &outcome.output {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(json!({
        "output": outcome.output,
        "run": outcome.run.to_string(),
        "usage": {
            "input_tokens": outcome.usage.input_tokens,
            "output_tokens": outcome.usage.output_tokens,
            "cost_usd": outcome.usage.cost_usd,
        },
    }));
    result
}

/// A capability's name as an MCP tool name: letters, digits, `_`, `-`, `.`.
fn tool_name(capability: &str) -> String {
    let name: String = capability
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(128)
        .collect();
    if name.is_empty() {
        "_".to_owned()
    } else {
        name
    }
}

fn is_object_schema(schema: &Value) -> bool {
    schema.get("type").and_then(Value::as_str) == Some("object")
}

/// A card's schema without the markers models and clients do not need.
fn bare(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(m) = &mut schema {
        m.remove("$schema");
        m.remove("title");
    }
    schema
}

fn capability_tool(name: &str, capability: &str, card: &AgentCard) -> Tool {
    let input_schema: JsonObject = if is_object_schema(&card.input_schema) {
        match bare(&card.input_schema) {
            Value::Object(m) => m,
            _ => JsonObject::new(),
        }
    } else {
        let mut inner = bare(&card.input_schema);
        if !inner.is_object() {
            inner = json!({}); // `true`: anything goes
        }
        match json!({
            "type": "object",
            "properties": {"input": inner},
            "required": ["input"],
        }) {
            Value::Object(m) => m,
            _ => JsonObject::new(),
        }
    };
    let description = if card.description.is_empty() {
        format!("Runs capability {capability} on agent {}.", card.name)
    } else {
        format!(
            "{} (capability {capability} of agent {})",
            card.description, card.name
        )
    };
    Tool::new(name.to_owned(), description, Arc::new(input_schema))
}

fn run_task_tool() -> Tool {
    let schema = match json!({
        "type": "object",
        "properties": {
            "goal": {"type": "string", "description": "The task, in words: the planner decomposes it over the registered agents."},
            "input": {"description": "Data for the task, if any (any JSON)."}
        },
        "required": ["goal"]
    }) {
        Value::Object(m) => m,
        _ => JsonObject::new(),
    };
    Tool::new(
        RUN_TASK_TOOL,
        Cow::Borrowed(
            "Runs a whole task: plans it over the registered agents, runs the steps, and returns the final result. Reports progress as steps start and finish.",
        ),
        Arc::new(schema),
    )
}

impl ServerHandler for McpOrchestratorServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                self.name.to_string(),
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Each tool but run_task runs one capability of a coditect agent; run_task runs a whole task through the planner.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.wire_tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.call(request, context).await.map(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names_become_valid_tool_names() {
        assert_eq!(tool_name("fact_check"), "fact_check");
        assert_eq!(tool_name("review code"), "review_code");
        assert_eq!(tool_name(""), "_");
    }
}
