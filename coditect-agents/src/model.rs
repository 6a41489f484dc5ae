//! The vendor-neutral [`LanguageModel`] trait and the types it speaks.
//!
//! Agents think through this trait; a vendor crate (such as `coditect-claude`)
//! implements it by converting these types to and from its own wire format. Nothing
//! here knows any one vendor: a request is a system prompt, messages made of
//! [`ContentBlock`]s and tool definitions; a response is content blocks, a
//! [`StopReason`] and a [`Usage`].
//!
//! The trait returns `impl Future + Send`, so it is not object-safe; code that must
//! hold models of different types (`Arc<dyn …>`) uses [`DynLanguageModel`], which
//! every [`LanguageModel`] implements through a blanket impl.
//!
//! # Examples
//!
//! ```
//! use coditect_agents::model::{
//!     CompletionRequest, CompletionResponse, ContentBlock, LanguageModel, Message, ModelError,
//!     ModelStream, StopReason, Usage,
//! };
//!
//! /// A model that always answers "pong".
//! struct Pong;
//!
//! impl LanguageModel for Pong {
//!     async fn complete(&self, _req: CompletionRequest) -> Result<CompletionResponse, ModelError> {
//!         Ok(CompletionResponse {
//!             content: vec![ContentBlock::text("pong")],
//!             stop_reason: StopReason::EndTurn,
//!             usage: Usage::default(),
//!             model: "pong-1".into(),
//!             id: None,
//!         })
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let req = CompletionRequest::new(vec![Message::user("ping")], 64);
//! let res = Pong.complete(req.clone()).await?;
//! assert_eq!(res.text(), "pong");
//!
//! // The default `stream` replays `complete` as deltas.
//! use futures::StreamExt;
//! let mut stream: ModelStream = Pong.stream(req).await?;
//! let mut n = 0;
//! while let Some(delta) = stream.next().await {
//!     delta?;
//!     n += 1;
//! }
//! assert!(n >= 3);
//! # Ok::<_, ModelError>(()) }).unwrap();
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who said a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The caller (including tool results sent back to the model).
    User,
    /// The model.
    Assistant,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ImageSource {
    /// Inline bytes, base64-encoded.
    Base64 {
        /// MIME type, such as `image/png`.
        media_type: String,
        /// The base64-encoded bytes.
        data: String,
    },
    /// An image the model's vendor fetches by URL.
    Url {
        /// The image's address.
        url: String,
    },
}

/// One piece of a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// An image.
    Image {
        /// Where the image comes from.
        source: ImageSource,
    },
    /// The model asks to call a tool.
    ToolUse {
        /// The call's id, echoed by the matching [`ContentBlock::ToolResult`].
        id: String,
        /// The tool's name.
        name: String,
        /// The arguments, a JSON value matching the tool's input schema.
        input: Value,
    },
    /// The result of a tool call, sent back by the caller.
    ToolResult {
        /// The id of the [`ContentBlock::ToolUse`] this answers.
        tool_use_id: String,
        /// What the tool returned, as text.
        content: String,
        /// Whether the tool failed.
        #[serde(default)]
        is_error: bool,
    },
    /// The model's visible reasoning.
    Thinking {
        /// The reasoning text.
        thinking: String,
        /// An opaque vendor signature that must be sent back unchanged, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
}

impl ContentBlock {
    /// A text block.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text { text: text.into() }
    }

    /// A tool result block.
    pub fn tool_result(
        tool_use_id: impl Into<String>,
        content: impl Into<String>,
        is_error: bool,
    ) -> Self {
        Self::ToolResult {
            tool_use_id: tool_use_id.into(),
            content: content.into(),
            is_error,
        }
    }
}

/// One turn of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said.
    pub content: Vec<ContentBlock>,
}

impl Message {
    /// A user message with one text block.
    pub fn user(text: impl Into<String>) -> Self {
        Self {
            role: Role::User,
            content: vec![ContentBlock::text(text)],
        }
    }

    /// An assistant message with one text block.
    pub fn assistant(text: impl Into<String>) -> Self {
        Self {
            role: Role::Assistant,
            content: vec![ContentBlock::text(text)],
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The tool's name, unique in the request.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// JSON Schema of the tool's input object.
    pub input_schema: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// The model must call some tool.
    Any,
    /// The model must not call a tool.
    None,
    /// The model must call this tool.
    Tool {
        /// The tool's name.
        name: String,
    },
}

/// A request to a language model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// The system prompt, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The conversation so far, oldest first.
    pub messages: Vec<Message>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDefinition>,
    /// Whether and which tool the model must call.
    #[serde(default)]
    pub tool_choice: ToolChoice,
    /// The most tokens the model may generate.
    pub max_tokens: u32,
    /// Sampling temperature, if not the model's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Strings that end generation when produced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_sequences: Vec<String>,
}

impl CompletionRequest {
    /// A request with these messages and token cap, and nothing else set.
    pub fn new(messages: Vec<Message>, max_tokens: u32) -> Self {
        Self {
            system: None,
            messages,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            max_tokens,
            temperature: None,
            stop_sequences: Vec::new(),
        }
    }
}

impl CompletionRequest {
    /// The text of the last user message (its text blocks, joined), or `""`.
    pub fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| {
                m.content
                    .iter()
                    .filter_map(|b| match b {
                        ContentBlock::Text { text } => Some(text.as_str()),
                        _ => None,
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// The tool results in the last message, if it is the caller's.
    pub fn last_tool_results(&self) -> Vec<(&str, &str, bool)> {
        match self.messages.last() {
            Some(m) if m.role == Role::User => m
                .content
                .iter()
                .filter_map(|b| match b {
                    ContentBlock::ToolResult {
                        tool_use_id,
                        content,
                        is_error,
                    } => Some((tool_use_id.as_str(), content.as_str(), *is_error)),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The model finished its turn.
    EndTurn,
    /// The token cap was reached: the answer may be cut short.
    MaxTokens,
    /// A stop sequence was produced.
    StopSequence,
    /// The model wants tool results before it goes on.
    ToolUse,
    /// A long turn was paused; send the response back to let it continue.
    PauseTurn,
    /// The model declined to answer.
    Refusal,
    /// The conversation no longer fits the model's context window.
    ContextWindowExceeded,
    /// A reason this crate does not know yet.
    Other(String),
}

/// Tokens a call used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens billed at the normal rate.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens written to the prompt cache.
    pub cache_creation_input_tokens: u64,
    /// Input tokens read from the prompt cache.
    pub cache_read_input_tokens: u64,
}

impl Usage {
    /// Adds another call's usage to this one.
    pub fn add(&mut self, other: &Usage) {
        // Saturating: usage figures come from outside and must not panic a run.
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_creation_input_tokens = self
            .cache_creation_input_tokens
            .saturating_add(other.cache_creation_input_tokens);
        self.cache_read_input_tokens = self
            .cache_read_input_tokens
            .saturating_add(other.cache_read_input_tokens);
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompletionResponse {
    /// What the model said.
    pub content: Vec<ContentBlock>,
    /// Why it stopped.
    pub stop_reason: StopReason,
    /// Tokens used.
    pub usage: Usage,
    /// The model that answered.
    pub model: String,
    /// The provider's id of the answer (`gen_ai.response.id`), if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

impl CompletionResponse {
    /// All text blocks, concatenated.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The tool calls the model asked for, as `(id, name, input)`.
    pub fn tool_calls(&self) -> impl Iterator<Item = (&str, &str, &Value)> {
        self.content.iter().filter_map(|b| match b {
            ContentBlock::ToolUse { id, name, input } => Some((id.as_str(), name.as_str(), input)),
            _ => None,
        })
    }

    /// The assistant [`Message`] to append to the conversation.
    pub fn to_message(&self) -> Message {
        Message {
            role: Role::Assistant,
            content: self.content.clone(),
        }
    }
}

/// The kind of block a [`StreamDelta::BlockStart`] opens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlockStart {
    /// A text block.
    Text,
    /// A tool call; its input arrives as [`StreamDelta::ToolInputJson`] fragments.
    ToolUse {
        /// The call's id.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// A thinking block.
    Thinking,
}

/// One step of a streamed answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamDelta {
    /// A content block begins at `index`.
    BlockStart {
        /// The block's position in the final content.
        index: usize,
        /// What kind of block.
        block: BlockStart,
    },
    /// More text for the block at `index`.
    Text {
        /// The block's position.
        index: usize,
        /// The new text.
        text: String,
    },
    /// A fragment of a tool call's JSON input; fragments concatenate to the input.
    ToolInputJson {
        /// The block's position.
        index: usize,
        /// The fragment.
        partial_json: String,
    },
    /// More reasoning for the thinking block at `index`.
    Thinking {
        /// The block's position.
        index: usize,
        /// The new reasoning text.
        thinking: String,
    },
    /// The block at `index` is complete.
    BlockStop {
        /// The block's position.
        index: usize,
    },
    /// The answer is complete: the whole response, with usage.
    Done(CompletionResponse),
}

/// A stream of [`StreamDelta`]s, ending with [`StreamDelta::Done`].
pub type ModelStream =
    Pin<Box<dyn Stream<Item = Result<StreamDelta, ModelError>> + Send + 'static>>;

/// What went wrong, for callers that decide by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ModelErrorKind {
    /// The request was malformed or refused as invalid.
    InvalidRequest,
    /// The credentials were missing, wrong or not allowed (billing included).
    Authentication,
    /// The rate limit was hit.
    RateLimited,
    /// The service is overloaded or failed on its side.
    Unavailable,
    /// The call took too long.
    Timeout,
    /// The connection failed or broke.
    Transport,
    /// The answer could not be understood (malformed or cut short).
    InvalidResponse,
    /// Anything else.
    Other,
}

/// A language model call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
#[error("model call failed: {message}")]
pub struct ModelError {
    kind: ModelErrorKind,
    message: String,
    retryable: bool,
}

impl ModelError {
    /// A new error; `retryable` says whether trying again later may succeed.
    pub fn new(kind: ModelErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        Self {
            kind,
            message: message.into(),
            retryable,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ModelErrorKind {
        self.kind
    }

    /// The human-readable reason.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether the failure is transient: the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

/// A language model: takes a conversation, returns the next assistant turn.
///
/// One required method, [`complete`](LanguageModel::complete); [`stream`](LanguageModel::stream)
/// defaults to replaying `complete` as deltas, so a model that cannot stream still works
/// everywhere. Use [`DynLanguageModel`] to hold models behind `Arc<dyn …>`.
pub trait LanguageModel: Send + Sync {
    /// Sends the request and waits for the whole answer.
    ///
    /// # Errors
    ///
    /// A [`ModelError`] whose [`kind`](ModelError::kind) says what failed.
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<CompletionResponse, ModelError>> + Send;

    /// Sends the request and streams the answer as it is generated.
    ///
    /// # Errors
    ///
    /// A [`ModelError`] if the call cannot start; errors during the stream arrive as
    /// stream items.
    fn stream(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<ModelStream, ModelError>> + Send {
        async move {
            let response = self.complete(request).await?;
            Ok(replay(response))
        }
    }

    /// Who serves the model, as the OpenTelemetry GenAI conventions name
    /// providers (`gen_ai.provider.name`: `anthropic`, `openai`…).
    fn provider(&self) -> &str {
        "unknown"
    }

    /// The model requests go to (`gen_ai.request.model`), if this model
    /// knows it before answering.
    fn model_name(&self) -> &str {
        ""
    }
}

/// Turns a complete response into the deltas a streaming model would have sent.
pub fn replay(response: CompletionResponse) -> ModelStream {
    replay_chunked(response, &|text| vec![text.to_owned()])
}

/// [`replay`], cutting each text block into the chunks `chunk` gives.
pub(crate) fn replay_chunked(
    response: CompletionResponse,
    chunk: &dyn Fn(&str) -> Vec<String>,
) -> ModelStream {
    let mut deltas = Vec::new();
    for (index, block) in response.content.iter().enumerate() {
        match block {
            ContentBlock::Text { text } => {
                deltas.push(StreamDelta::BlockStart {
                    index,
                    block: BlockStart::Text,
                });
                deltas.extend(
                    chunk(text)
                        .into_iter()
                        .map(|text| StreamDelta::Text { index, text }),
                );
            }
            ContentBlock::ToolUse { id, name, input } => {
                deltas.push(StreamDelta::BlockStart {
                    index,
                    block: BlockStart::ToolUse {
                        id: id.clone(),
                        name: name.clone(),
                    },
                });
                deltas.push(StreamDelta::ToolInputJson {
                    index,
                    partial_json: input.to_string(),
                });
            }
            ContentBlock::Thinking { thinking, .. } => {
                deltas.push(StreamDelta::BlockStart {
                    index,
                    block: BlockStart::Thinking,
                });
                deltas.push(StreamDelta::Thinking {
                    index,
                    thinking: thinking.clone(),
                });
            }
            // Blocks a model does not produce (images, tool results) have no delta form.
            ContentBlock::Image { .. } | ContentBlock::ToolResult { .. } => continue,
        }
        deltas.push(StreamDelta::BlockStop { index });
    }
    deltas.push(StreamDelta::Done(response));
    Box::pin(futures::stream::iter(deltas.into_iter().map(Ok)))
}

/// A boxed future, as returned by [`DynLanguageModel`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe form of [`LanguageModel`], for `Arc<dyn DynLanguageModel>`.
///
/// Every [`LanguageModel`] implements it; `Arc<dyn DynLanguageModel>` implements
/// [`LanguageModel`] in turn, so erased models go wherever typed ones do.
pub trait DynLanguageModel: Send + Sync {
    /// [`LanguageModel::complete`], boxed.
    fn complete_boxed(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<CompletionResponse, ModelError>>;
    /// [`LanguageModel::stream`], boxed.
    fn stream_boxed(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<ModelStream, ModelError>>;
    /// [`LanguageModel::provider`].
    fn provider_dyn(&self) -> &str;
    /// [`LanguageModel::model_name`].
    fn model_name_dyn(&self) -> &str;
}

impl<M: LanguageModel> DynLanguageModel for M {
    fn complete_boxed(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<CompletionResponse, ModelError>> {
        Box::pin(self.complete(request))
    }

    fn stream_boxed(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<ModelStream, ModelError>> {
        Box::pin(self.stream(request))
    }

    fn provider_dyn(&self) -> &str {
        self.provider()
    }

    fn model_name_dyn(&self) -> &str {
        self.model_name()
    }
}

impl LanguageModel for dyn DynLanguageModel {
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<CompletionResponse, ModelError>> + Send {
        self.complete_boxed(request)
    }

    fn stream(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<ModelStream, ModelError>> + Send {
        self.stream_boxed(request)
    }

    fn provider(&self) -> &str {
        self.provider_dyn()
    }

    fn model_name(&self) -> &str {
        self.model_name_dyn()
    }
}

impl<M: LanguageModel + ?Sized> LanguageModel for Arc<M> {
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<CompletionResponse, ModelError>> + Send {
        (**self).complete(request)
    }

    fn stream(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<ModelStream, ModelError>> + Send {
        (**self).stream(request)
    }

    fn provider(&self) -> &str {
        (**self).provider()
    }

    fn model_name(&self) -> &str {
        (**self).model_name()
    }
}

impl<M: LanguageModel + ?Sized> LanguageModel for Box<M> {
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<CompletionResponse, ModelError>> + Send {
        (**self).complete(request)
    }

    fn stream(
        &self,
        request: CompletionRequest,
    ) -> impl Future<Output = Result<ModelStream, ModelError>> + Send {
        (**self).stream(request)
    }

    fn provider(&self) -> &str {
        (**self).provider()
    }

    fn model_name(&self) -> &str {
        (**self).model_name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    struct Echo;

    impl LanguageModel for Echo {
        async fn complete(&self, req: CompletionRequest) -> Result<CompletionResponse, ModelError> {
            let last = req.messages.last().cloned().ok_or_else(|| {
                ModelError::new(ModelErrorKind::InvalidRequest, "no messages", false)
            })?;
            Ok(CompletionResponse {
                content: last.content,
                stop_reason: StopReason::EndTurn,
                usage: Usage {
                    input_tokens: 1,
                    output_tokens: 2,
                    ..Usage::default()
                },
                model: "echo".into(),
                id: None,
            })
        }
    }

    #[tokio::test]
    async fn dyn_and_arc_forward_to_the_model() {
        let model: Arc<dyn DynLanguageModel> = Arc::new(Echo);
        let res = model
            .complete(CompletionRequest::new(vec![Message::user("hi")], 8))
            .await
            .unwrap();
        assert_eq!(res.text(), "hi");
        let err = model
            .complete(CompletionRequest::new(vec![], 8))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ModelErrorKind::InvalidRequest);
        assert!(!err.is_retryable());
    }

    #[tokio::test]
    async fn default_stream_replays_blocks_and_ends_with_done() {
        let msg = Message {
            role: Role::User,
            content: vec![
                ContentBlock::text("a"),
                ContentBlock::ToolUse {
                    id: "t1".into(),
                    name: "f".into(),
                    input: serde_json::json!({"x": 1}),
                },
            ],
        };
        let deltas: Vec<_> = Box::new(Echo)
            .stream(CompletionRequest::new(vec![msg], 8))
            .await
            .unwrap()
            .collect()
            .await;
        let deltas: Vec<StreamDelta> = deltas.into_iter().map(Result::unwrap).collect();
        assert_eq!(deltas.len(), 7);
        assert!(
            matches!(&deltas[4], StreamDelta::ToolInputJson { index: 1, partial_json } if partial_json == r#"{"x":1}"#)
        );
        assert!(matches!(deltas.last(), Some(StreamDelta::Done(r)) if r.tool_calls().count() == 1));
    }

    #[test]
    fn types_round_trip_through_json() {
        let mut req = CompletionRequest::new(vec![Message::user("q")], 10);
        req.tool_choice = ToolChoice::Tool { name: "f".into() };
        req.stop_sequences = vec!["END".into()];
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            serde_json::from_str::<CompletionRequest>(&json).unwrap(),
            req
        );
        let stop = StopReason::Other("new_reason".into());
        assert_eq!(
            serde_json::from_value::<StopReason>(serde_json::to_value(&stop).unwrap()).unwrap(),
            stop
        );
    }
}
