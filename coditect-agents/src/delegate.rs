//! The `delegate` tool: a model hands a subtask to another agent by capability.
//!
//! Agents are tools too. The tool goes through the calling agent's
//! [`AgentContext::delegate`], so the subtask travels through the runtime like
//! any other message: it counts as a delegation level (bounded by the run's
//! depth limit), counts against the run's units of work, carries the run's
//! remaining budget, is cancelled with its caller and appears in the run's
//! trace. The tool only reaches the capabilities it was given (an allow-list,
//! OWASP LLM06); asking for another is a tool error for the model.
//!
//! [`AgentContext::delegate`]: coditect_orchestrator::AgentContext::delegate

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use crate::progress::{AgentProgress, clip};
use crate::tool::{Tool, ToolContext, ToolError, ToolErrorKind};

/// The name of the delegate tool, as models see it.
pub const DELEGATE_TOOL: &str = "delegate";

/// Hands a subtask to an agent offering one of the allowed capabilities.
///
/// # Examples
///
/// ```
/// use coditect_agents::DelegateTool;
/// use coditect_agents::tool::DynTool;
///
/// let tool = DelegateTool::new().allow("fact_check", "Checks a claim against sources.");
/// assert_eq!(tool.definition().name, "delegate");
/// assert!(tool.definition().description.contains("fact_check"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct DelegateTool {
    allowed: Vec<(String, String)>,
    timeout: Option<Duration>,
}

/// The delegate tool's arguments.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DelegateArgs {
    /// The capability of the agent that should do the subtask (one of those listed).
    pub capability: String,
    /// The subtask, self-contained: the other agent sees only this text.
    pub task: String,
}

impl DelegateTool {
    /// A delegate tool that may reach no capability yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows delegating to `capability`, described for the model.
    #[must_use]
    pub fn allow(mut self, capability: impl Into<String>, description: impl Into<String>) -> Self {
        self.allowed.push((capability.into(), description.into()));
        self
    }

    /// How long one delegation may take (default: the runtime's request
    /// timeout, bounded by the caller's own deadline).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The capabilities this tool may reach.
    pub fn allowed(&self) -> impl Iterator<Item = &str> {
        self.allowed.iter().map(|(c, _)| c.as_str())
    }
}

impl Tool for DelegateTool {
    type Args = DelegateArgs;
    type Output = Value;

    fn name(&self) -> String {
        DELEGATE_TOOL.into()
    }

    fn description(&self) -> String {
        let mut d = String::from(
            "Hands a subtask to another agent and returns its answer. Use it for work another agent is better at. Capabilities you may delegate to:",
        );
        for (cap, desc) in &self.allowed {
            d.push_str(&format!("\n- {cap}: {desc}"));
        }
        d
    }

    fn timeout(&self) -> Option<Duration> {
        // The delegation is bounded by the runtime's request timeout and the
        // caller's deadline; the toolbox's per-call limit is for local tools.
        Some(self.timeout.unwrap_or(Duration::from_secs(60 * 60)))
    }

    async fn call(&self, args: DelegateArgs, ctx: ToolContext<'_>) -> Result<Value, ToolError> {
        if !self.allowed.iter().any(|(c, _)| *c == args.capability) {
            return Err(ToolError::new(
                ToolErrorKind::NotAllowed,
                format!(
                    "this agent may not delegate to {:?}; allowed: {}",
                    args.capability,
                    self.allowed
                        .iter()
                        .map(|(c, _)| c.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        let Some(agent) = ctx.agent() else {
            return Err(ToolError::failed(
                "delegation needs an agent context: run this agent on a runtime",
            ));
        };
        crate::agent::emit(
            agent,
            AgentProgress::Delegating {
                capability: args.capability.clone(),
                task: clip(&args.task, 200),
            },
        )
        .await;
        agent
            .delegate::<Value>(&args.capability, Value::String(args.task))
            .await
            .map_err(|e| {
                ToolError::failed(format!("delegation to {:?} failed: {e}", args.capability))
            })
    }
}
