//! What LLM agents report while they work, as run progress events.
//!
//! An agent emits these through [`AgentContext::emit`]; inside an orchestrated
//! run they arrive as [`RunEvent::StepProgress`] with this value as `data`, so a
//! caller can show a run live and parse them back with
//! [`AgentProgress::from_value`].
//!
//! [`AgentContext::emit`]: coditect_orchestrator::AgentContext::emit
//! [`RunEvent::StepProgress`]: coditect_orchestrator::orchestrator::RunEvent::StepProgress

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One piece of progress from an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentProgress {
    /// More of the model's answer text.
    Text {
        /// The new text.
        text: String,
    },
    /// More of the model's visible reasoning.
    Thinking {
        /// The new reasoning.
        text: String,
    },
    /// The model asked for a tool.
    ToolCall {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// The arguments, as the model sent them.
        input: Value,
    },
    /// A tool call finished.
    ToolResult {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// Whether it succeeded.
        ok: bool,
        /// Its text (or error), cut to 200 characters.
        summary: String,
    },
    /// A running tool reported how far along it is (an MCP server's progress
    /// notification, say).
    ToolProgress {
        /// The call's id.
        id: String,
        /// The tool.
        name: String,
        /// How far along (grows with every report).
        progress: f64,
        /// The total, when known.
        total: Option<f64>,
        /// What the tool is doing, in words.
        message: Option<String>,
    },
    /// A subtask is being handed to another agent.
    Delegating {
        /// The capability asked for.
        capability: String,
        /// The subtask.
        task: String,
    },
    /// A model turn ended.
    Turn {
        /// Which turn (1 for the first).
        iteration: u32,
        /// Input tokens of the turn.
        input_tokens: u64,
        /// Output tokens of the turn.
        output_tokens: u64,
    },
    /// A pattern chose or decided something (route, vote, verdict).
    Decision {
        /// What was decided, in words.
        summary: String,
    },
}

impl AgentProgress {
    /// Reads progress back from an event's data; `None` if it is not progress
    /// of this form (another agent's own events).
    pub fn from_value(value: &Value) -> Option<Self> {
        serde_json::from_value(value.clone()).ok()
    }
}

/// Cuts `s` to at most `max` characters, marking the cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}
