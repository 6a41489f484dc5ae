//! The Messages API's request, response and stream-event types.
//!
//! These mirror the wire format field for field (snake_case JSON), so every option the
//! API has is reachable. Unknown content-block and event types deserialize to an
//! `Unknown` variant instead of failing: the API adds new ones over time.

mod content;
mod event;
mod request;
mod response;

pub use content::{
    CacheControl, CitationsConfig, ContentBlock, DocumentSource, ImageSource, ToolResultContent,
};
pub use event::{ContentDelta, MessageDeltaBody, MessageDeltaUsage, StreamErrorBody, StreamEvent};
pub use request::{
    MessageParam, MessageRequest, Metadata, Role, System, SystemBlock, ThinkingConfig, Tool,
    ToolChoice,
};
pub use response::{Message, StopReason, Usage};

/// Deserializes a number that the API may send as `null` (treated as 0).
pub(crate) fn u64_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::Deserialize;
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}
