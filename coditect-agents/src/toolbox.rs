//! A `Toolbox`: the tools one agent may call, by name, with a timeout per call.
//!
//! The toolbox is the agent's allow-list (OWASP LLM06, excessive agency): a model
//! that names a tool the agent was not given gets a tool error back, and nothing
//! runs. The calls of one model turn run concurrently; each is bounded by the
//! toolbox's timeout, and one turn may ask for at most
//! [`max_calls_per_turn`](Toolbox::max_calls_per_turn) calls.
//!
//! # Examples
//!
//! ```
//! use std::time::Duration;
//! use coditect_agents::{Toolbox, ToolCall};
//! # use coditect_agents::tool::{Tool, ToolContext, ToolError};
//! # struct Now;
//! # impl Tool for Now {
//! #     type Args = serde_json::Map<String, serde_json::Value>;
//! #     type Output = &'static str;
//! #     fn name(&self) -> String { "now".into() }
//! #     fn description(&self) -> String { "The time.".into() }
//! #     async fn call(&self, _: Self::Args, _: ToolContext<'_>) -> Result<&'static str, ToolError> { Ok("noon") }
//! # }
//!
//! let toolbox = Toolbox::new().with(Now).timeout(Duration::from_secs(5));
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
//! let results = toolbox
//!     .run(
//!         vec![
//!             ToolCall::new("t1", "now", serde_json::json!({})),
//!             ToolCall::new("t2", "rm_rf", serde_json::json!({})),
//!         ],
//!         None,
//!     )
//!     .await;
//! assert_eq!(results[0].result.as_deref(), Ok("noon"));
//! assert!(results[1].result.is_err()); // not in this agent's toolbox
//! # });
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use coditect_orchestrator::AgentContext;
use serde_json::Value;
use tracing::Instrument;

use crate::model::{ContentBlock, ToolDefinition};
use crate::tool::{DynTool, ToolContext, ToolError, ToolErrorKind};

/// One tool call a model asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The model's id for the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, unchecked.
    pub input: Value,
}

impl ToolCall {
    /// A call.
    pub fn new(id: impl Into<String>, name: impl Into<String>, input: Value) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
            input,
        }
    }
}

/// A finished tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutcome {
    /// The model's id for the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The tool's text, or why it failed.
    pub result: Result<String, ToolError>,
}

impl ToolOutcome {
    /// The tool-result block that answers the call.
    pub fn to_block(&self) -> ContentBlock {
        match &self.result {
            Ok(text) => ContentBlock::tool_result(&self.id, text.clone(), false),
            Err(e) => ContentBlock::tool_result(&self.id, e.message().to_owned(), true),
        }
    }
}

/// The tools an agent may call, with the limits on calling them.
#[derive(Clone)]
pub struct Toolbox {
    tools: BTreeMap<String, Arc<dyn DynTool>>,
    /// Each tool's definition, read once when the tool is added (a typed
    /// tool's schema is generated then, not on every model turn).
    definitions: BTreeMap<String, ToolDefinition>,
    timeout: Duration,
    max_calls_per_turn: usize,
    /// Tools whose every call a person approves first.
    approvals: std::collections::BTreeSet<String>,
}

/// A person's answer to a tool call that needs approval
/// ([`Toolbox::require_approval`]).
#[derive(
    Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Approval {
    /// Whether the call may run.
    pub approved: bool,
    /// Why (shown to the model when the call is rejected).
    #[serde(default)]
    pub reason: Option<String>,
}

impl Default for Toolbox {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Toolbox")
            .field("tools", &self.tools.keys().collect::<Vec<_>>())
            .field("timeout", &self.timeout)
            .field("max_calls_per_turn", &self.max_calls_per_turn)
            .finish()
    }
}

impl Toolbox {
    /// An empty toolbox: 30 s per call, at most 16 calls per turn.
    pub fn new() -> Self {
        Self {
            tools: BTreeMap::new(),
            definitions: BTreeMap::new(),
            timeout: Duration::from_secs(30),
            max_calls_per_turn: 16,
            approvals: std::collections::BTreeSet::new(),
        }
    }

    /// Makes every call of the tool `name` wait for a person's
    /// [`Approval`] first: the run pauses with a question (its request id
    /// names the tool and the model's call id, its schema is
    /// [`Approval`]'s) until someone
    /// [responds](coditect_orchestrator::orchestrator::Orchestrator::respond);
    /// a rejection goes back to the model as the call's error. Approval needs
    /// a durable run (an orchestrator with a store); elsewhere such calls are
    /// refused. An approved call is approved again from the journal when its
    /// step runs again.
    #[must_use]
    pub fn require_approval(mut self, name: impl Into<String>) -> Self {
        self.approvals.insert(name.into());
        self
    }

    /// Adds a tool. A tool with the same name replaces the earlier one.
    #[must_use]
    pub fn with(mut self, tool: impl DynTool) -> Self {
        self.add(Arc::new(tool));
        self
    }

    /// Adds a shared tool. A tool with the same name replaces the earlier one.
    /// Its definition is read now, once: what the model is offered for it on
    /// every turn.
    pub fn add(&mut self, tool: Arc<dyn DynTool>) {
        let definition = tool.definition();
        self.tools.insert(definition.name.clone(), tool);
        self.definitions.insert(definition.name.clone(), definition);
    }

    /// The longest one call may run (default 30 s); a call past it is a
    /// [`ToolErrorKind::Timeout`] error for the model.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The most calls one model turn may make (default 16); calls past it are
    /// refused with an error for the model.
    #[must_use]
    pub fn max_calls_per_turn(mut self, n: usize) -> Self {
        self.max_calls_per_turn = n.max(1);
        self
    }

    /// The tools' definitions, sorted by name, for a model request (as they
    /// were when each tool was added).
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        self.definitions.values().cloned().collect()
    }

    /// The tools' names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tools.keys().map(String::as_str)
    }

    /// Whether there are no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Runs one turn's calls concurrently, each under the timeout, and returns
    /// their outcomes in the order asked. Never fails as a whole: each failure
    /// (unknown tool, invalid arguments, timeout, the tool's own error) is that
    /// call's outcome, for the model to read.
    pub async fn run(
        &self,
        calls: Vec<ToolCall>,
        agent: Option<&AgentContext>,
    ) -> Vec<ToolOutcome> {
        let max = self.max_calls_per_turn;
        // Delegations of one turn are one fan-out: bounded by the run's limit.
        let max_fanout = agent.map_or(usize::MAX, |a| a.budget().max_fanout as usize);
        let mut delegations = 0usize;
        let over_fanout: Vec<bool> = calls
            .iter()
            .map(|c| {
                if c.name == crate::delegate::DELEGATE_TOOL {
                    delegations += 1;
                    delegations > max_fanout
                } else {
                    false
                }
            })
            .collect();
        let over_fanout = &over_fanout;
        let futures = calls.into_iter().enumerate().map(|(i, call)| async move {
            let result = if i >= max {
                Err(ToolError::new(
                    ToolErrorKind::NotAllowed,
                    format!("too many tool calls in one turn: at most {max} are allowed"),
                ))
            } else if over_fanout[i] {
                Err(ToolError::new(
                    ToolErrorKind::NotAllowed,
                    format!(
                        "too many delegations in one turn: the run allows {max_fanout} at once"
                    ),
                ))
            } else {
                self.run_one(&call, agent).await
            };
            ToolOutcome {
                id: call.id,
                name: call.name,
                result,
            }
        });
        futures::future::join_all(futures).await
    }

    async fn run_one(
        &self,
        call: &ToolCall,
        agent: Option<&AgentContext>,
    ) -> Result<String, ToolError> {
        let Some(tool) = self.tools.get(&call.name) else {
            let known: Vec<&str> = self.names().collect();
            return Err(ToolError::new(
                ToolErrorKind::UnknownTool,
                format!(
                    "there is no tool {:?} for this agent; its tools are: {}",
                    call.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        if self.approvals.contains(&call.name) {
            approve(call, agent).await?;
        }
        let ctx = match agent {
            Some(a) => ToolContext::new(a, &call.id),
            None => ToolContext::detached(&call.id),
        };
        let span = crate::telemetry::execute_tool(&call.name, &call.id, &call.input);
        let limit = tool.timeout().unwrap_or(self.timeout);
        let call_fut = tool
            .call_json(call.input.clone(), ctx)
            .instrument(span.clone());
        let result = match tokio::time::timeout(limit, call_fut).await {
            Ok(result) => result,
            Err(_) => Err(ToolError::new(
                ToolErrorKind::Timeout,
                format!(
                    "tool {} did not finish within {limit:?}; it was stopped",
                    call.name
                ),
            )),
        };
        if let Err(e) = &result {
            span.record("error.type", format!("{:?}", e.kind()).to_lowercase());
            span.record("otel.status_code", "ERROR");
        }
        result
    }
}

/// Asks a person to approve one tool call; `Ok` when they did.
async fn approve(call: &ToolCall, agent: Option<&AgentContext>) -> Result<(), ToolError> {
    let Some(agent) = agent else {
        return Err(ToolError::new(
            ToolErrorKind::NotAllowed,
            format!(
                "tool {} needs a person's approval, and no run is there to ask",
                call.name
            ),
        ));
    };
    let prompt = format!(
        "Approve the call of tool {} with {}?",
        call.name, call.input
    );
    let question = format!("approve:{}:{}", call.name, call.id);
    match agent.ask::<Approval>(&question, &prompt).await {
        Ok(a) if a.approved => Ok(()),
        Ok(a) => Err(ToolError::new(
            ToolErrorKind::NotAllowed,
            format!(
                "a person rejected this call of {}{}",
                call.name,
                a.reason.map(|r| format!(": {r}")).unwrap_or_default()
            ),
        )),
        Err(e) => Err(ToolError::new(
            ToolErrorKind::NotAllowed,
            format!("tool {} needs a person's approval: {e}", call.name),
        )),
    }
}
