//! coditect-agents: the building blocks of an LLM agent team, vendor-neutral.
//!
//! - [`LanguageModel`]: the one trait a model vendor implements (Claude plugs in
//!   through `coditect-claude`); [`ScriptedModel`] answers from a script, for
//!   tests and offline runs.
//! - [`Tool`] and [`Toolbox`]: typed tools whose JSON Schema comes from their
//!   argument type; invalid arguments go back to the model as tool errors.
//! - [`LlmAgent`]: an [`Agent`](coditect_orchestrator::Agent) that loops model →
//!   tools → model, streams progress, reports usage against the run's budgets,
//!   and delegates to other agents through the [`DelegateTool`].
//! - [`LlmPlanner`]: a [`Planner`](coditect_orchestrator::orchestrator::Planner)
//!   that asks a model for a validated plan over the registered agents
//!   (orchestrator-workers).
//! - [`patterns`]: router, parallel sectioning and voting, evaluator-optimizer.
//! - `a2a` (feature `a2a`): publish agents as A2A agents and use remote A2A
//!   agents as coditect agents, on the official A2A Rust SDK.
//!
//! # Example
//!
//! A planner decomposes a task into two steps over two agents; one of them
//! uses a tool. Everything runs offline on [`ScriptedModel`]s.
//!
//! ```
//! use coditect_agents::{LlmAgent, LlmPlanner, ScriptedModel, ScriptedReply};
//! use coditect_agents::tool::{Tool, ToolContext, ToolError};
//! use coditect_orchestrator::{InMemoryTransport, Runtime};
//! use coditect_orchestrator::orchestrator::{Orchestrator, TaskSpec};
//! use serde_json::json;
//!
//! /// Counts the words of a text.
//! struct WordCount;
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct Text { /// The text to count.
//!     text: String }
//! impl Tool for WordCount {
//!     type Args = Text;
//!     type Output = usize;
//!     fn name(&self) -> String { "word_count".into() }
//!     fn description(&self) -> String { "Counts the words of a text.".into() }
//!     async fn call(&self, a: Text, _: ToolContext<'_>) -> Result<usize, ToolError> {
//!         Ok(a.text.split_whitespace().count())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
//!
//! let writer = LlmAgent::builder(ScriptedModel::new().then(ScriptedReply::text("Agents plan, act and check.")))
//!     .system("You write one sentence.")
//!     .build();
//! runtime.kind("writer").description("Writes one sentence.").capability("write")
//!     .register(move |_| writer.clone()).await?;
//!
//! let counter = LlmAgent::builder(
//!     ScriptedModel::new()
//!         .then(ScriptedReply::tool_call("word_count", json!({"text": "Agents plan, act and check."})))
//!         .then(ScriptedReply::text("5 words")),
//! )
//! .tool(WordCount)
//! .build();
//! runtime.kind("counter").description("Counts words.").capability("count")
//!     .register(move |_| counter.clone()).await?;
//!
//! let planner = LlmPlanner::new(ScriptedModel::new().then(ScriptedReply::tool_call(
//!     "submit_plan",
//!     json!({"steps": [
//!         {"id": "draft", "target": {"capability": "write"}, "input": "goal"},
//!         {"id": "count", "target": {"capability": "count"}, "input": {"output": "draft"}}
//!     ]}),
//! )));
//! let outcome = Orchestrator::new(runtime.clone(), planner)
//!     .run(TaskSpec::new("Describe agents in one sentence, then count its words."))
//!     .await?;
//! assert_eq!(outcome.output, json!("5 words"));
//! assert!(outcome.usage.total_tokens() > 0); // every model turn was reported
//! # Ok(()) }
//! ```

#[cfg(feature = "a2a")]
pub mod a2a;
mod agent;
mod delegate;
#[cfg(feature = "mcp")]
pub mod mcp;
pub mod model;
pub mod patterns;
mod planner;
mod progress;
mod scripted;
pub mod structured;
mod telemetry;
pub mod tool;
mod toolbox;

pub use agent::{Answer, LlmAgent, LlmAgentBuilder, Pricing};
pub use delegate::{DELEGATE_TOOL, DelegateArgs, DelegateTool};
pub use model::{DynLanguageModel, LanguageModel, ModelError, ModelErrorKind};
pub use planner::{LlmPlanner, SUBMIT_PLAN_TOOL};
pub use progress::AgentProgress;
pub use scripted::{SCRIPTED_MODEL_NAME, ScriptedModel, ScriptedReply};
pub use tool::{Tool, ToolContext, ToolError, ToolErrorKind};
pub use toolbox::{Approval, ToolCall, ToolOutcome, Toolbox};
