//! A streamed message: typed events out of SSE bytes, and the accumulator that turns
//! them into the same [`Message`] a non-streaming call returns.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::Sleep;

use crate::client::deadline_after;
use crate::error::{ApiError, ApiErrorType, Error, Result, TimeoutKind};
use crate::governor::GovernorPermit;
use crate::rate_limits::{RateLimits, ResponseMeta};
use crate::sse::{SseEvent, SseParser};
use crate::types::{ContentBlock, ContentDelta, Message, StreamEvent, Usage};

/// Event names this crate knows: one of these with undecodable data is an error;
/// anything else is a new event type, tolerated.
const KNOWN_EVENTS: &[&str] = &[
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
];

/// Decodes one SSE event; `None` for an event type this crate does not know.
///
/// # Errors
///
/// [`Error::Decode`] when a known event's data is not the JSON expected.
pub fn decode_event(event: &SseEvent) -> Result<Option<StreamEvent>> {
    decode(&event.event, &event.data)
}

/// [`decode_event`] on borrowed fields, as [`SseParser::feed`] gives them.
///
/// # Errors
///
/// As [`decode_event`].
pub fn decode(event: &str, data: &str) -> Result<Option<StreamEvent>> {
    match serde_json::from_str::<StreamEvent>(data) {
        Ok(StreamEvent::Unknown) => Ok(None),
        Ok(ev) => Ok(Some(ev)),
        Err(e) if KNOWN_EVENTS.contains(&event) => Err(Error::Decode {
            what: "stream event",
            message: format!("{event}: {e}"),
        }),
        Err(_) => Ok(None),
    }
}

/// Builds a [`Message`] from stream events, checking that they fit together.
///
/// # Examples
///
/// ```
/// use coditect_claude::{MessageAccumulator, types::StreamEvent};
///
/// let events = [
///     r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,"usage":{"input_tokens":3,"output_tokens":1}}}"#,
///     r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t1","name":"get","input":{}}}"#,
///     r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"ci"}}"#,
///     r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"ty\":\"Oslo\"}"}}"#,
///     r#"{"type":"content_block_stop","index":0}"#,
///     r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":9}}"#,
///     r#"{"type":"message_stop"}"#,
/// ];
/// let mut acc = MessageAccumulator::new();
/// for e in events {
///     acc.push(&serde_json::from_str::<StreamEvent>(e).unwrap())?;
/// }
/// let message = acc.finish()?;
/// let (_, name, input) = message.tool_uses().next().unwrap();
/// assert_eq!((name, input["city"].as_str()), ("get", Some("Oslo")));
/// assert_eq!(message.usage.output_tokens, 9);
/// # Ok::<_, coditect_claude::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct MessageAccumulator {
    message: Option<Message>,
    /// Tool-input JSON fragments, by block index, until the block stops.
    partial_json: HashMap<usize, String>,
    open: Vec<bool>,
    stopped: bool,
}

fn started(message: &mut Option<Message>) -> Result<&mut Message> {
    message
        .as_mut()
        .ok_or_else(|| protocol("event before message_start"))
}

fn protocol(msg: impl Into<String>) -> Error {
    Error::Stream(msg.into())
}

impl MessageAccumulator {
    /// An empty accumulator.
    pub fn new() -> Self {
        Self::default()
    }

    /// The usage so far.
    pub fn usage(&self) -> Usage {
        self.message.as_ref().map(|m| m.usage).unwrap_or_default()
    }

    /// The message as accumulated so far (complete once `message_stop` was seen).
    pub fn message(&self) -> Option<&Message> {
        self.message.as_ref()
    }

    /// Whether `message_stop` was seen.
    pub fn is_complete(&self) -> bool {
        self.stopped
    }

    /// Applies one event.
    ///
    /// # Errors
    ///
    /// [`Error::Stream`] when the event does not fit (a delta for a block that does
    /// not exist or of the wrong kind, events after `message_stop`…), [`Error::Decode`]
    /// when a tool's assembled input is not JSON, [`Error::Api`] for an `error` event.
    pub fn push(&mut self, event: &StreamEvent) -> Result<()> {
        if self.stopped && !matches!(event, StreamEvent::Ping | StreamEvent::Unknown) {
            return Err(protocol("event after message_stop"));
        }
        match event {
            StreamEvent::MessageStart { message } => {
                if self.message.is_some() {
                    return Err(protocol("second message_start"));
                }
                self.open = vec![false; message.content.len()];
                self.message = Some(message.clone());
            }
            StreamEvent::ContentBlockStart {
                index,
                content_block,
            } => {
                let message = started(&mut self.message)?;
                if *index != message.content.len() {
                    return Err(protocol(format!("block {index} started out of order")));
                }
                if let ContentBlock::ToolUse { .. } = content_block {
                    // The start carries `{}`; the real input comes in fragments.
                    self.partial_json.insert(*index, String::new());
                }
                message.content.push(content_block.clone());
                self.open.push(true);
            }
            StreamEvent::ContentBlockDelta { index, delta } => {
                if !self.open.get(*index).copied().unwrap_or(false) {
                    return Err(protocol(format!(
                        "delta for block {index}, which is not open"
                    )));
                }
                let message = started(&mut self.message)?;
                let block = message
                    .content
                    .get_mut(*index)
                    .ok_or_else(|| protocol(format!("delta for unknown block {index}")))?;
                match (block, delta) {
                    (ContentBlock::Text { text, .. }, ContentDelta::TextDelta { text: more }) => {
                        text.push_str(more)
                    }
                    (
                        ContentBlock::Text { citations, .. },
                        ContentDelta::CitationsDelta { citation },
                    ) => {
                        citations
                            .get_or_insert_with(Vec::new)
                            .push(citation.clone());
                    }
                    (
                        ContentBlock::ToolUse { .. },
                        ContentDelta::InputJsonDelta { partial_json },
                    ) => {
                        self.partial_json
                            .entry(*index)
                            .or_default()
                            .push_str(partial_json);
                    }
                    (
                        ContentBlock::Thinking { thinking, .. },
                        ContentDelta::ThinkingDelta { thinking: more },
                    ) => {
                        thinking.push_str(more);
                    }
                    (
                        ContentBlock::Thinking { signature, .. },
                        ContentDelta::SignatureDelta { signature: sig },
                    ) => {
                        signature.push_str(sig);
                    }
                    // New delta types, and deltas for block types this crate does not
                    // know, are skipped rather than fatal.
                    (_, ContentDelta::Unknown) | (ContentBlock::Unknown, _) => {}
                    (_, other) => {
                        return Err(protocol(format!(
                            "delta {other:?} does not fit block {index}"
                        )));
                    }
                }
            }
            StreamEvent::ContentBlockStop { index } => {
                match self.open.get_mut(*index) {
                    Some(open) if *open => *open = false,
                    _ => {
                        return Err(protocol(format!(
                            "stop for block {index}, which is not open"
                        )));
                    }
                }
                let json = self.partial_json.remove(index);
                let message = started(&mut self.message)?;
                if let (Some(ContentBlock::ToolUse { input, .. }), Some(json)) =
                    (message.content.get_mut(*index), json)
                {
                    // No fragments: the input the start carried stands.
                    if !json.trim().is_empty() {
                        *input = serde_json::from_str(&json).map_err(|e| Error::Decode {
                            what: "tool input",
                            message: format!("{e}; got: {json}"),
                        })?;
                    }
                }
            }
            StreamEvent::MessageDelta { delta, usage } => {
                let message = started(&mut self.message)?;
                if delta.stop_reason.is_some() {
                    message.stop_reason = delta.stop_reason.clone();
                }
                if delta.stop_sequence.is_some() {
                    message.stop_sequence = delta.stop_sequence.clone();
                }
                let u = &mut message.usage;
                let set = |field: &mut u64, value: Option<u64>| {
                    if let Some(v) = value {
                        *field = v;
                    }
                };
                set(&mut u.input_tokens, usage.input_tokens);
                set(&mut u.output_tokens, usage.output_tokens);
                set(
                    &mut u.cache_creation_input_tokens,
                    usage.cache_creation_input_tokens,
                );
                set(
                    &mut u.cache_read_input_tokens,
                    usage.cache_read_input_tokens,
                );
            }
            StreamEvent::MessageStop => {
                started(&mut self.message)?;
                if self.open.iter().any(|o| *o) {
                    return Err(protocol("message_stop with a block still open"));
                }
                self.stopped = true;
            }
            StreamEvent::Ping | StreamEvent::Unknown => {}
            StreamEvent::Error { error } => {
                return Err(Error::Api(Box::new(ApiError {
                    status: 200,
                    error_type: ApiErrorType::parse(&error.kind),
                    message: error.message.clone(),
                    request_id: None,
                    retry_after: None,
                    rate_limits: RateLimits::default(),
                })));
            }
        }
        Ok(())
    }

    /// The finished message.
    ///
    /// # Errors
    ///
    /// [`Error::Stream`] when `message_stop` was not seen: the answer may be cut short.
    pub fn finish(self) -> Result<Message> {
        if !self.stopped {
            return Err(protocol("stream ended without message_stop"));
        }
        self.message
            .ok_or_else(|| protocol("stream ended without message_start"))
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>;

/// A streamed answer: a [`Stream`] of typed [`StreamEvent`]s.
///
/// The stream checks the events as they pass (through a [`MessageAccumulator`]): an
/// `error` event, bytes that are not SSE or JSON, events that contradict each other,
/// a connection that breaks or goes silent past the idle timeout, and an end without
/// `message_stop` all arrive as an `Err` item, after which the stream ends. `ping`s are
/// yielded (they show the connection is alive); unknown event types are skipped.
pub struct MessageStream {
    body: ByteStream,
    parser: SseParser,
    /// Decoded events not yet yielded (`None`: an unknown type, skipped).
    pending: VecDeque<Result<Option<StreamEvent>>>,
    idle: Duration,
    /// Created at the first poll, so that building a stream needs no runtime.
    timer: Option<Pin<Box<Sleep>>>,
    acc: MessageAccumulator,
    meta: ResponseMeta,
    permit: Option<GovernorPermit>,
    body_done: bool,
    done: bool,
}

impl std::fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream")
            .field("meta", &self.meta)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl MessageStream {
    pub(crate) fn from_response(
        resp: reqwest::Response,
        meta: ResponseMeta,
        permit: Option<GovernorPermit>,
        idle: Duration,
    ) -> Self {
        let body = resp.bytes_stream().map(|r| r.map_err(Error::Transport));
        let mut s = Self::from_byte_stream(body, idle);
        s.meta = meta;
        s.permit = permit;
        s
    }

    /// A stream over raw SSE bytes from anywhere (a recorded stream, a test), with
    /// this idle timeout between chunks.
    pub fn from_byte_stream<S>(bytes: S, idle: Duration) -> Self
    where
        S: Stream<Item = Result<Bytes>> + Send + 'static,
    {
        Self {
            body: Box::pin(bytes),
            parser: SseParser::new(),
            pending: VecDeque::new(),
            idle,
            timer: None,
            acc: MessageAccumulator::new(),
            meta: ResponseMeta::default(),
            permit: None,
            body_done: false,
            done: false,
        }
    }

    /// The response's status, request id and rate-limit headers.
    pub fn meta(&self) -> &ResponseMeta {
        &self.meta
    }

    /// The message as accumulated from the events so far; complete once the stream
    /// has yielded `message_stop`.
    pub fn message_so_far(&self) -> Option<&Message> {
        self.acc.message()
    }

    /// Consumes the rest of the stream and returns the whole message, equal to what
    /// [`Messages::create`](crate::Messages::create) would have returned.
    ///
    /// # Errors
    ///
    /// The first error of the stream.
    pub async fn final_message(mut self) -> Result<Message> {
        while let Some(event) = self.next().await {
            event?;
        }
        let request_id = self.meta.request_id.clone();
        let mut message = std::mem::take(&mut self.acc).finish()?;
        message.request_id = request_id;
        Ok(message)
    }

    fn fail(&mut self, error: Error) -> Poll<Option<Result<StreamEvent>>> {
        self.done = true;
        self.pending.clear();
        Poll::Ready(Some(Err(error)))
    }
}

impl Stream for MessageStream {
    type Item = Result<StreamEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(decoded) = this.pending.pop_front() {
                let event = match decoded {
                    Ok(Some(event)) => event,
                    Ok(None) => continue,
                    Err(e) => return this.fail(e),
                };
                if let Err(mut e) = this.acc.push(&event) {
                    if let Error::Api(api) = &mut e {
                        api.request_id = this.meta.request_id.clone();
                    }
                    return this.fail(e);
                }
                if matches!(event, StreamEvent::MessageStop)
                    && let Some(p) = this.permit.take()
                {
                    p.record_usage(&this.acc.usage());
                }
                return Poll::Ready(Some(Ok(event)));
            }
            if this.body_done {
                this.done = true;
                this.permit = None;
                if !this.acc.is_complete() {
                    return Poll::Ready(Some(Err(protocol("stream ended without message_stop"))));
                }
                return Poll::Ready(None);
            }
            match this.body.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    if let Some(timer) = this.timer.as_mut() {
                        timer.as_mut().reset(deadline_after(this.idle));
                    }
                    let pending = &mut this.pending;
                    if let Err(e) = this
                        .parser
                        .feed(&chunk, |event, data| pending.push_back(decode(event, data)))
                    {
                        return this.fail(e.into());
                    }
                }
                Poll::Ready(Some(Err(e))) => return this.fail(e),
                Poll::Ready(None) => {
                    this.parser.finish();
                    this.body_done = true;
                }
                Poll::Pending => {
                    let idle = this.idle;
                    let timer = this.timer.get_or_insert_with(|| {
                        Box::pin(tokio::time::sleep_until(deadline_after(idle)))
                    });
                    if timer.as_mut().poll(cx).is_ready() {
                        return this.fail(Error::Timeout(TimeoutKind::StreamIdle));
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
