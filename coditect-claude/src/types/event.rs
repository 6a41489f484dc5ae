//! Server-sent events of a streamed message.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::content::ContentBlock;
use super::response::{Message, StopReason};

/// A delta inside `content_block_delta`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentDelta {
    /// More text.
    TextDelta {
        /// The new text.
        text: String,
    },
    /// A fragment of a tool call's JSON input; concatenate, parse at block stop.
    InputJsonDelta {
        /// The fragment.
        partial_json: String,
    },
    /// More reasoning.
    ThinkingDelta {
        /// The new reasoning text.
        thinking: String,
    },
    /// The thinking block's signature.
    SignatureDelta {
        /// The signature.
        signature: String,
    },
    /// A citation for the current text block.
    CitationsDelta {
        /// The citation object.
        citation: Value,
    },
    /// A delta type this crate does not know yet (ignored).
    #[serde(other)]
    Unknown,
}

/// The body of `message_delta`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageDeltaBody {
    /// Why Claude stopped.
    #[serde(default)]
    pub stop_reason: Option<StopReason>,
    /// The stop sequence produced, if any.
    #[serde(default)]
    pub stop_sequence: Option<String>,
}

/// The cumulative usage in `message_delta`; absent fields keep their earlier value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MessageDeltaUsage {
    /// Input tokens so far.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Output tokens so far.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Cache-creation tokens so far.
    #[serde(default)]
    pub cache_creation_input_tokens: Option<u64>,
    /// Cache-read tokens so far.
    #[serde(default)]
    pub cache_read_input_tokens: Option<u64>,
}

/// The body of an `error` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamErrorBody {
    /// The API error type, such as `overloaded_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The message.
    #[serde(default)]
    pub message: String,
}

/// One typed event of a streamed message, in the order the API sends them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamEvent {
    /// The message begins (empty content, no stop reason).
    MessageStart {
        /// The message so far.
        message: Message,
    },
    /// A content block begins.
    ContentBlockStart {
        /// The block's position.
        index: usize,
        /// The block, empty (text `""`, tool input `{}`).
        content_block: ContentBlock,
    },
    /// A content block grows.
    ContentBlockDelta {
        /// The block's position.
        index: usize,
        /// What was added.
        delta: ContentDelta,
    },
    /// A content block is complete.
    ContentBlockStop {
        /// The block's position.
        index: usize,
    },
    /// Top-level changes: stop reason and cumulative usage.
    MessageDelta {
        /// The changes.
        delta: MessageDeltaBody,
        /// Usage so far.
        #[serde(default)]
        usage: MessageDeltaUsage,
    },
    /// The message is complete.
    MessageStop,
    /// Keep-alive.
    Ping,
    /// The API failed mid-stream. [`MessageStream`](crate::MessageStream) turns this into an
    /// [`Error::Api`](crate::Error::Api) and ends.
    Error {
        /// What failed.
        error: StreamErrorBody,
    },
    /// An event type this crate does not know yet (ignored).
    #[serde(other)]
    Unknown,
}
