//! Claude as a coditect [`LanguageModel`].

use std::collections::HashMap;

use coditect_agents::model::{
    self as neutral, BlockStart, CompletionRequest, CompletionResponse, LanguageModel, ModelError,
    ModelErrorKind, ModelStream, StreamDelta,
};
use futures::StreamExt;

use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::stream::MessageStream;
use crate::types::{
    CacheControl, ContentBlock, ContentDelta, ImageSource, Message, MessageParam, MessageRequest,
    Role, StopReason, StreamEvent, System, SystemBlock, ThinkingConfig, Tool, ToolChoice,
    ToolResultContent, Usage,
};

/// A Claude model behind coditect's vendor-neutral [`LanguageModel`] trait.
///
/// # Examples
///
/// ```
/// # #[cfg(feature = "test-utils")]
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use coditect_agents::model::{CompletionRequest, LanguageModel, Message};
/// use coditect_claude::testing::{Reply, StandIn, text_message};
/// use coditect_claude::{ClaudeModel, Client};
///
/// let server = StandIn::start().await;
/// server.push(Reply::message(&text_message("4")));
/// let client = Client::builder().api_key("k").base_url(server.url()).build().unwrap();
/// let model = ClaudeModel::new(client, "claude-sonnet-4-5");
/// let answer = model.complete(CompletionRequest::new(vec![Message::user("2 + 2?")], 64)).await.unwrap();
/// assert_eq!(answer.text(), "4");
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct ClaudeModel {
    client: Client,
    model: String,
    thinking_budget: Option<u32>,
    cache: PromptCache,
}

/// Where requests place prompt-cache breakpoints (`cache_control`), so that
/// repeated turns and repeated steps read their stable prefix from the cache
/// at a tenth of the input price instead of paying for it again.
///
/// ```
/// use coditect_claude::PromptCache;
/// assert_eq!(PromptCache::default(), PromptCache::Conversation);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PromptCache {
    /// No breakpoints.
    Off,
    /// On the stable prefix: the tool definitions and the system prompt.
    Prefix,
    /// On the stable prefix and on the conversation's last block, so the
    /// next turn of an agent loop reads the whole conversation so far from
    /// the cache.
    #[default]
    Conversation,
}

impl ClaudeModel {
    /// `model` (such as `claude-sonnet-4-5`) through `client`.
    pub fn new(client: Client, model: impl Into<String>) -> Self {
        Self {
            client,
            model: model.into(),
            thinking_budget: None,
            cache: PromptCache::default(),
        }
    }

    /// Where requests place prompt-cache breakpoints
    /// ([`PromptCache::Conversation`] unless set).
    #[must_use]
    pub fn with_prompt_cache(mut self, cache: PromptCache) -> Self {
        self.cache = cache;
        self
    }

    /// Turns extended thinking on with this token budget for every request.
    #[must_use]
    pub fn with_thinking(mut self, budget_tokens: u32) -> Self {
        self.thinking_budget = Some(budget_tokens);
        self
    }

    /// The model name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The Messages API request for a vendor-neutral request.
    pub fn to_request(&self, req: CompletionRequest) -> MessageRequest {
        let mut request = self.to_request_uncached(req);
        place_breakpoints(&mut request, self.cache);
        request
    }

    fn to_request_uncached(&self, req: CompletionRequest) -> MessageRequest {
        let has_tools = !req.tools.is_empty();
        MessageRequest {
            model: self.model.clone(),
            max_tokens: req.max_tokens,
            messages: req.messages.into_iter().map(message_param).collect(),
            system: req.system.map(System::Text),
            temperature: req.temperature,
            stop_sequences: (!req.stop_sequences.is_empty()).then_some(req.stop_sequences),
            tools: has_tools.then(|| {
                req.tools
                    .into_iter()
                    .map(|t| Tool {
                        name: t.name,
                        description: Some(t.description),
                        input_schema: t.input_schema,
                        cache_control: None,
                    })
                    .collect()
            }),
            tool_choice: has_tools.then_some(match req.tool_choice {
                neutral::ToolChoice::Auto => ToolChoice::Auto {
                    disable_parallel_tool_use: None,
                },
                neutral::ToolChoice::Any => ToolChoice::Any {
                    disable_parallel_tool_use: None,
                },
                neutral::ToolChoice::None => ToolChoice::None,
                neutral::ToolChoice::Tool { name } => ToolChoice::Tool {
                    name,
                    disable_parallel_tool_use: None,
                },
            }),
            thinking: self
                .thinking_budget
                .map(|budget_tokens| ThinkingConfig::Enabled { budget_tokens }),
            ..MessageRequest::default()
        }
    }
}

/// Marks the breakpoints `policy` asks for (at most three of the API's four).
fn place_breakpoints(request: &mut MessageRequest, policy: PromptCache) {
    if policy == PromptCache::Off {
        return;
    }
    if let Some(last) = request.tools.as_mut().and_then(|t| t.last_mut()) {
        last.cache_control = Some(CacheControl::ephemeral());
    }
    request.system = match request.system.take() {
        Some(System::Text(text)) => Some(System::Blocks(vec![SystemBlock::text(
            text,
            Some(CacheControl::ephemeral()),
        )])),
        Some(System::Blocks(mut blocks)) => {
            if let Some(last) = blocks.last_mut() {
                last.cache_control = Some(CacheControl::ephemeral());
            }
            Some(System::Blocks(blocks))
        }
        None => None,
    };
    if policy != PromptCache::Conversation {
        return;
    }
    // The last block that can carry a breakpoint (thinking blocks cannot).
    let last = request
        .messages
        .iter_mut()
        .rev()
        .flat_map(|m| m.content.iter_mut().rev())
        .find_map(|b| match b {
            ContentBlock::Text { cache_control, .. }
            | ContentBlock::Image { cache_control, .. }
            | ContentBlock::Document { cache_control, .. }
            | ContentBlock::ToolUse { cache_control, .. }
            | ContentBlock::ToolResult { cache_control, .. } => Some(cache_control),
            _ => None,
        });
    if let Some(c) = last {
        *c = Some(CacheControl::ephemeral());
    }
}

fn message_param(m: neutral::Message) -> MessageParam {
    MessageParam {
        role: match m.role {
            neutral::Role::User => Role::User,
            neutral::Role::Assistant => Role::Assistant,
        },
        content: m.content.into_iter().map(block_to_wire).collect(),
    }
}

fn block_to_wire(b: neutral::ContentBlock) -> ContentBlock {
    match b {
        neutral::ContentBlock::Text { text } => ContentBlock::text(text),
        neutral::ContentBlock::Image { source } => ContentBlock::Image {
            source: match source {
                neutral::ImageSource::Base64 { media_type, data } => {
                    ImageSource::Base64 { media_type, data }
                }
                neutral::ImageSource::Url { url } => ImageSource::Url { url },
            },
            cache_control: None,
        },
        neutral::ContentBlock::ToolUse { id, name, input } => {
            ContentBlock::tool_use(id, name, input)
        }
        neutral::ContentBlock::ToolResult {
            tool_use_id,
            content,
            is_error,
        } => ContentBlock::ToolResult {
            tool_use_id,
            content: Some(ToolResultContent::Text(content)),
            is_error: is_error.then_some(true),
            cache_control: None,
        },
        neutral::ContentBlock::Thinking {
            thinking,
            signature,
        } => ContentBlock::Thinking {
            thinking,
            signature: signature.unwrap_or_default(),
        },
    }
}

/// The neutral form of a block Claude sent; `None` for blocks the neutral types
/// cannot carry (redacted thinking, server tools).
fn block_from_wire(b: &ContentBlock) -> Option<neutral::ContentBlock> {
    Some(match b {
        ContentBlock::Text { text, .. } => neutral::ContentBlock::text(text.clone()),
        ContentBlock::ToolUse {
            id, name, input, ..
        } => neutral::ContentBlock::ToolUse {
            id: id.clone(),
            name: name.clone(),
            input: input.clone(),
        },
        ContentBlock::Thinking {
            thinking,
            signature,
        } => neutral::ContentBlock::Thinking {
            thinking: thinking.clone(),
            signature: (!signature.is_empty()).then(|| signature.clone()),
        },
        _ => return None,
    })
}

fn stop_reason(r: Option<&StopReason>) -> neutral::StopReason {
    match r {
        Some(StopReason::EndTurn) => neutral::StopReason::EndTurn,
        Some(StopReason::MaxTokens) => neutral::StopReason::MaxTokens,
        Some(StopReason::StopSequence) => neutral::StopReason::StopSequence,
        Some(StopReason::ToolUse) => neutral::StopReason::ToolUse,
        Some(StopReason::PauseTurn) => neutral::StopReason::PauseTurn,
        Some(StopReason::Refusal) => neutral::StopReason::Refusal,
        Some(StopReason::ModelContextWindowExceeded) => neutral::StopReason::ContextWindowExceeded,
        Some(StopReason::Other(s)) => neutral::StopReason::Other(s.clone()),
        None => neutral::StopReason::Other("none".into()),
    }
}

fn usage(u: &Usage) -> neutral::Usage {
    neutral::Usage {
        input_tokens: u.input_tokens,
        output_tokens: u.output_tokens,
        cache_creation_input_tokens: u.cache_creation_input_tokens,
        cache_read_input_tokens: u.cache_read_input_tokens,
    }
}

/// The neutral response for a Claude message.
pub(crate) fn response(m: &Message) -> CompletionResponse {
    CompletionResponse {
        content: m.content.iter().filter_map(block_from_wire).collect(),
        stop_reason: stop_reason(m.stop_reason.as_ref()),
        usage: usage(&m.usage),
        model: m.model.clone(),
        id: (!m.id.is_empty()).then(|| m.id.clone()),
    }
}

/// The neutral error for a client error.
pub(crate) fn model_error(e: &Error) -> ModelError {
    let kind = match e.kind() {
        ErrorKind::InvalidRequest | ErrorKind::NotFound | ErrorKind::RequestTooLarge => {
            ModelErrorKind::InvalidRequest
        }
        ErrorKind::Authentication | ErrorKind::Permission | ErrorKind::Billing => {
            ModelErrorKind::Authentication
        }
        ErrorKind::RateLimited => ModelErrorKind::RateLimited,
        ErrorKind::ServerError | ErrorKind::Overloaded => ModelErrorKind::Unavailable,
        ErrorKind::Timeout | ErrorKind::ApiTimeout => ModelErrorKind::Timeout,
        ErrorKind::Transport => ModelErrorKind::Transport,
        ErrorKind::Stream | ErrorKind::Decode | ErrorKind::StructuredOutput => {
            ModelErrorKind::InvalidResponse
        }
        _ => ModelErrorKind::Other,
    };
    ModelError::new(kind, e.to_string(), e.is_retryable())
}

/// Turns Claude's events into neutral deltas, renumbering blocks so that indices match
/// the neutral response's content (which leaves out blocks it cannot carry).
#[derive(Default)]
struct Deltas {
    index_map: HashMap<usize, usize>,
}

impl Deltas {
    fn map(&mut self, event: StreamEvent, stream: &MessageStream) -> Option<StreamDelta> {
        match event {
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let block = match content_block {
                    ContentBlock::Text { .. } => BlockStart::Text,
                    ContentBlock::ToolUse { id, name, .. } => BlockStart::ToolUse { id, name },
                    ContentBlock::Thinking { .. } => BlockStart::Thinking,
                    _ => return None,
                };
                let ours = self.index_map.len();
                self.index_map.insert(index, ours);
                Some(StreamDelta::BlockStart { index: ours, block })
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                let index = *self.index_map.get(&index)?;
                match delta {
                    ContentDelta::TextDelta { text } => Some(StreamDelta::Text { index, text }),
                    ContentDelta::InputJsonDelta { partial_json } => {
                        Some(StreamDelta::ToolInputJson {
                            index,
                            partial_json,
                        })
                    }
                    ContentDelta::ThinkingDelta { thinking } => {
                        Some(StreamDelta::Thinking { index, thinking })
                    }
                    _ => None,
                }
            }
            StreamEvent::ContentBlockStop { index } => {
                let index = *self.index_map.get(&index)?;
                Some(StreamDelta::BlockStop { index })
            }
            StreamEvent::MessageStop => stream
                .message_so_far()
                .map(|m| StreamDelta::Done(response(m))),
            _ => None,
        }
    }
}

impl LanguageModel for ClaudeModel {
    async fn complete(&self, request: CompletionRequest) -> Result<CompletionResponse, ModelError> {
        let message = self
            .client
            .messages()
            .create(&self.to_request(request))
            .await
            .map_err(|e| model_error(&e))?;
        Ok(response(&message))
    }

    fn provider(&self) -> &str {
        "anthropic"
    }

    fn model_name(&self) -> &str {
        &self.model
    }

    async fn stream(&self, request: CompletionRequest) -> Result<ModelStream, ModelError> {
        let stream = self
            .client
            .messages()
            .stream(&self.to_request(request))
            .await
            .map_err(|e| model_error(&e))?;
        let deltas = futures::stream::unfold(
            (stream, Deltas::default()),
            |(mut stream, mut deltas)| async move {
                loop {
                    match stream.next().await? {
                        Err(e) => return Some((Err(model_error(&e)), (stream, deltas))),
                        Ok(event) => {
                            if let Some(d) = deltas.map(event, &stream) {
                                return Some((Ok(d), (stream, deltas)));
                            }
                        }
                    }
                }
            },
        );
        Ok(Box::pin(deltas))
    }
}
