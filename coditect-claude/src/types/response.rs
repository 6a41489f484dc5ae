//! The response of `POST /v1/messages`.

use serde::{Deserialize, Serialize};

use super::content::ContentBlock;
use super::request::Role;

/// Why Claude stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum StopReason {
    /// The turn is complete.
    EndTurn,
    /// `max_tokens` was reached.
    MaxTokens,
    /// One of the stop sequences was produced.
    StopSequence,
    /// Claude wants tool results.
    ToolUse,
    /// A long turn was paused; send it back to continue.
    PauseTurn,
    /// Claude declined.
    Refusal,
    /// The context window is full.
    ModelContextWindowExceeded,
    /// A reason this crate does not know yet.
    Other(String),
}

impl StopReason {
    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::EndTurn => "end_turn",
            Self::MaxTokens => "max_tokens",
            Self::StopSequence => "stop_sequence",
            Self::ToolUse => "tool_use",
            Self::PauseTurn => "pause_turn",
            Self::Refusal => "refusal",
            Self::ModelContextWindowExceeded => "model_context_window_exceeded",
            Self::Other(s) => s,
        }
    }
}

impl From<String> for StopReason {
    fn from(s: String) -> Self {
        match s.as_str() {
            "end_turn" => Self::EndTurn,
            "max_tokens" => Self::MaxTokens,
            "stop_sequence" => Self::StopSequence,
            "tool_use" => Self::ToolUse,
            "pause_turn" => Self::PauseTurn,
            "refusal" => Self::Refusal,
            "model_context_window_exceeded" => Self::ModelContextWindowExceeded,
            _ => Self::Other(s),
        }
    }
}

impl From<StopReason> for String {
    fn from(r: StopReason) -> Self {
        r.as_str().to_owned()
    }
}

/// Tokens billed for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens at the normal rate.
    #[serde(default, deserialize_with = "super::u64_or_null")]
    pub input_tokens: u64,
    /// Output tokens.
    #[serde(default, deserialize_with = "super::u64_or_null")]
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    #[serde(default, deserialize_with = "super::u64_or_null")]
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    #[serde(default, deserialize_with = "super::u64_or_null")]
    pub cache_read_input_tokens: u64,
}

/// Claude's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The message id (`msg_…`).
    pub id: String,
    /// Always `assistant`.
    pub role: Role,
    /// The model that answered.
    pub model: String,
    /// What Claude said.
    pub content: Vec<ContentBlock>,
    /// Why it stopped (`None` only in a stream's `message_start`).
    pub stop_reason: Option<StopReason>,
    /// The stop sequence produced, if that is why it stopped.
    #[serde(default)]
    pub stop_sequence: Option<String>,
    /// Tokens billed.
    #[serde(default)]
    pub usage: Usage,
    /// The `request-id` response header, for support requests (not part of the body).
    #[serde(skip)]
    pub request_id: Option<String>,
}

impl Message {
    /// All text blocks, concatenated.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// This answer as the assistant turn of the next request, leaving out block types
    /// this crate does not know (they cannot be sent back faithfully).
    pub fn to_param(&self) -> super::MessageParam {
        super::MessageParam {
            role: Role::Assistant,
            content: self
                .content
                .iter()
                .filter(|b| !matches!(b, ContentBlock::Unknown))
                .cloned()
                .collect(),
        }
    }

    /// The tool calls, as `(id, name, input)`.
    pub fn tool_uses(&self) -> impl Iterator<Item = (&str, &str, &serde_json::Value)> {
        self.content.iter().filter_map(|b| match b {
            ContentBlock::ToolUse {
                id, name, input, ..
            } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }
}
