//! A local stand-in for the Claude API, for tests (feature `test-utils`).
//!
//! [`StandIn::start`] serves on `127.0.0.1:0` and answers each request with the next
//! scripted [`Reply`], written byte for byte as the API writes it: JSON bodies, error
//! bodies, status codes, headers, and SSE streams cut into chunks wherever the test
//! likes — or a connection reset, or silence. It records every request, and can
//! enforce a requests-per-minute limit the way the API does (429 with `retry-after`
//! and `anthropic-ratelimit-*` headers). Other crates' tests use it through this
//! feature:
//!
//! ```toml
//! [dev-dependencies]
//! coditect-claude = { workspace = true, features = ["test-utils"] }
//! ```
//!
//! # Examples
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use coditect_claude::testing::{Reply, StandIn, tool_use_message};
//! use coditect_claude::{Client, types::MessageRequest};
//!
//! let server = StandIn::start().await;
//! server.push(Reply::error(529, "overloaded_error", "Overloaded"));
//! server.push(Reply::message(&tool_use_message("toolu_1", "search", serde_json::json!({"q": "rust"}))));
//!
//! let client = Client::builder().api_key("sk-test").base_url(server.url()).build()?;
//! let req = MessageRequest::new("claude-sonnet-4-5", 256).user("Find rust.");
//! let message = client.messages().create(&req).await?; // 529, retried
//! assert_eq!(message.tool_uses().count(), 1);
//! assert_eq!(server.requests().len(), 2);
//! # Ok::<_, coditect_claude::Error>(()) }).unwrap();
//! ```

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Method, Uri};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::types::{ContentBlock, Message, Role, StopReason, Usage};

/// What happens after a reply's chunks are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The response ends normally.
    Close,
    /// The connection is torn down mid-body.
    Reset,
    /// Nothing more is ever sent.
    Hang,
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    chunks: Vec<Bytes>,
    end: End,
    /// Never answer at all (not even headers).
    silent: bool,
}

impl Reply {
    /// A reply with this status and body, sent as one chunk.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            chunks: vec![body.into()],
            end: End::Close,
            silent: false,
        }
    }

    /// A JSON reply.
    pub fn json(status: u16, body: &Value) -> Self {
        Self::raw(status, "application/json", body.to_string())
    }

    /// A 200 with this message as the API's JSON body.
    pub fn message(message: &Message) -> Self {
        Self::json(200, &message_json(message))
    }

    /// An API error in the API's format: `{"type":"error","error":{…},"request_id":…}`.
    pub fn error(status: u16, error_type: &str, message: &str) -> Self {
        Self::json(
            status,
            &json!({
                "type": "error",
                "error": {"type": error_type, "message": message},
                "request_id": "req_standin_error",
            }),
        )
    }

    /// A 200 SSE stream of this message, in the API's event order, text and tool input
    /// cut into small deltas, with a `ping` after `message_start`.
    pub fn stream(message: &Message) -> Self {
        Self::sse(sse_text(message))
    }

    /// A 200 SSE stream with exactly this text.
    pub fn sse(text: impl Into<String>) -> Self {
        Self::raw(200, "text/event-stream", text.into())
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Re-cuts the body into chunks that end at these byte offsets (anywhere, even
    /// inside a UTF-8 character).
    #[must_use]
    pub fn split_at(mut self, offsets: &[usize]) -> Self {
        let whole: Vec<u8> = self.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut chunks = Vec::new();
        let mut start = 0;
        for &end in offsets {
            let end = end.clamp(start, whole.len());
            if end > start {
                chunks.push(Bytes::copy_from_slice(
                    whole.get(start..end).unwrap_or_default(),
                ));
            }
            start = end;
        }
        if start < whole.len() {
            chunks.push(Bytes::copy_from_slice(
                whole.get(start..).unwrap_or_default(),
            ));
        }
        self.chunks = chunks;
        self
    }

    /// Re-cuts the body into chunks of `n` bytes.
    #[must_use]
    pub fn split_every(self, n: usize) -> Self {
        let len: usize = self.chunks.iter().map(Bytes::len).sum();
        let offsets: Vec<usize> = (1..)
            .map(|i| i * n.max(1))
            .take_while(|o| *o < len)
            .collect();
        self.split_at(&offsets)
    }

    /// Keeps only the first `n` bytes of the body.
    #[must_use]
    pub fn truncate(mut self, n: usize) -> Self {
        let whole: Vec<u8> = self.chunks.iter().flat_map(|c| c.iter().copied()).collect();
        self.chunks = vec![Bytes::copy_from_slice(
            whole.get(..n.min(whole.len())).unwrap_or_default(),
        )];
        self
    }

    /// After the body, tears the connection down instead of ending the response.
    #[must_use]
    pub fn then_reset(mut self) -> Self {
        self.end = End::Reset;
        self
    }

    /// After the body, sends nothing more, ever.
    #[must_use]
    pub fn then_hang(mut self) -> Self {
        self.end = End::Hang;
        self
    }

    /// Never answers, not even with headers.
    pub fn silence() -> Self {
        Self {
            silent: true,
            ..Self::raw(200, "application/json", Bytes::new())
        }
    }
}

/// A request the stand-in received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub path: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug)]
struct Limiter {
    per_minute: f64,
    level: f64,
    updated: Instant,
}

#[derive(Debug, Default)]
struct Script {
    replies: VecDeque<Reply>,
    fallback: Option<Reply>,
    requests: Vec<RecordedRequest>,
    limiter: Option<Limiter>,
    rejected: usize,
    served: usize,
}

type Shared = Arc<Mutex<Script>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Script> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// A local HTTP server that speaks the Claude API's wire format. Stops on drop.
#[derive(Debug)]
pub struct StandIn {
    url: String,
    shared: Shared,
    task: JoinHandle<()>,
}

impl StandIn {
    /// Starts a server on a free loopback port.
    ///
    /// # Panics
    ///
    /// If no loopback port can be bound (a broken test machine).
    #[allow(clippy::expect_used)]
    pub async fn start() -> Self {
        let shared: Shared = Arc::default();
        let app = axum::Router::new()
            .fallback(handle)
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// The base URL to give the client.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// A client for this server: key `sk-test`, no connection pooling (see
    /// [`http_client`]), retries without jitter so delays are exact.
    ///
    /// # Panics
    ///
    /// Never in practice: the configuration is valid.
    #[allow(clippy::expect_used)]
    pub fn client(&self) -> crate::Client {
        self.client_builder()
            .build()
            .expect("valid stand-in client")
    }

    /// The builder behind [`client`](Self::client), to adjust before building.
    pub fn client_builder(&self) -> crate::ClientBuilder {
        crate::Client::builder()
            .api_key("sk-test")
            .base_url(self.url())
            .http_client(http_client())
            .retry(crate::RetryPolicy {
                jitter: false,
                ..crate::RetryPolicy::default()
            })
    }

    /// Scripts the next reply (replies are used in order).
    pub fn push(&self, reply: Reply) {
        lock(&self.shared).replies.push_back(reply);
    }

    /// The reply used whenever the script is empty (else: a 500 saying so).
    pub fn set_fallback(&self, reply: Reply) {
        lock(&self.shared).fallback = Some(reply);
    }

    /// Enforces a requests-per-minute limit as the API does: a token bucket refilled
    /// continuously, 429 with `retry-after` when empty, `anthropic-ratelimit-requests-*`
    /// headers on every answer. Uses tokio's clock, so a paused clock governs it too.
    pub fn set_requests_per_minute(&self, limit: u64) {
        lock(&self.shared).limiter = Some(Limiter {
            per_minute: limit as f64,
            level: limit as f64,
            updated: Instant::now(),
        });
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared).requests.clone()
    }

    /// How many requests the rate limit refused with 429.
    pub fn rejected(&self) -> usize {
        lock(&self.shared).rejected
    }

    /// How many requests got a scripted or fallback reply.
    pub fn served(&self) -> usize {
        lock(&self.shared).served
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (reply, limit_headers) = {
        let mut script = lock(&shared);
        script.requests.push(RecordedRequest {
            method,
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned()),
            headers,
            body,
        });
        let mut limit_headers = Vec::new();
        let mut refused = None;
        if let Some(l) = script.limiter.as_mut() {
            let now = Instant::now();
            let dt = now.saturating_duration_since(l.updated).as_secs_f64();
            l.level = (l.level + dt * l.per_minute / 60.0).min(l.per_minute);
            l.updated = now;
            limit_headers.push((
                "anthropic-ratelimit-requests-limit".to_owned(),
                format!("{}", l.per_minute as u64),
            ));
            if l.level < 1.0 {
                let wait = (1.0 - l.level) * 60.0 / l.per_minute;
                limit_headers.push((
                    "anthropic-ratelimit-requests-remaining".to_owned(),
                    "0".to_owned(),
                ));
                refused = Some(Duration::from_secs_f64(wait));
            } else {
                l.level -= 1.0;
                limit_headers.push((
                    "anthropic-ratelimit-requests-remaining".to_owned(),
                    format!("{}", l.level.floor() as u64),
                ));
            }
        }
        let reply = if let Some(wait) = refused {
            script.rejected += 1;
            Reply::error(
                429,
                "rate_limit_error",
                "Number of requests has exceeded your rate limit",
            )
            .header(
                "retry-after",
                &format!("{}", wait.as_secs_f64().ceil() as u64),
            )
        } else if let Some(r) = script
            .replies
            .pop_front()
            .or_else(|| script.fallback.clone())
        {
            script.served += 1;
            r
        } else {
            Reply::error(500, "api_error", "stand-in: no reply scripted")
        };
        (reply, limit_headers)
    };
    if reply.silent {
        futures::future::pending::<()>().await;
    }
    let end = reply.end;
    let chunks = futures::stream::iter(reply.chunks.into_iter().map(Ok::<_, std::io::Error>)).then(
        |c| async {
            // Let each chunk go out on its own rather than coalesced with the next.
            tokio::task::yield_now().await;
            c
        },
    );
    let tail = futures::stream::once(async move {
        match end {
            End::Close => None,
            End::Reset => Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "reset",
            ))),
            End::Hang => futures::future::pending().await,
        }
    })
    .filter_map(futures::future::ready);
    let mut builder = Response::builder().status(reply.status);
    if !reply
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("request-id"))
    {
        builder = builder.header("request-id", "req_standin");
    }
    for (k, v) in reply.headers.iter().chain(limit_headers.iter()) {
        builder = builder.header(k.as_str(), v.as_str());
    }
    builder
        .body(Body::from_stream(chunks.chain(tail)))
        .unwrap_or_else(|_| Response::new(Body::from("stand-in: bad scripted reply")))
}

/// A `reqwest::Client` for tests against the stand-in: it opens a new connection per
/// request. Tests on tokio's paused clock need this, since a pooled keep-alive
/// connection can leave the runtime idle mid-request, and the paused clock then jumps
/// straight to the next timer (usually a timeout).
///
/// # Panics
///
/// If reqwest cannot build a client (no TLS backend at all).
#[allow(clippy::expect_used)]
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("build a reqwest client")
}

/// The API's JSON body for a message.
pub fn message_json(message: &Message) -> Value {
    let mut v = serde_json::to_value(message).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("type".into(), json!("message"));
    }
    v
}

/// A finished message with these blocks.
pub fn message(content: Vec<ContentBlock>, stop_reason: StopReason) -> Message {
    Message {
        id: "msg_standin".into(),
        role: Role::Assistant,
        model: "claude-sonnet-4-5".into(),
        content,
        stop_reason: Some(stop_reason),
        stop_sequence: None,
        usage: Usage {
            input_tokens: 21,
            output_tokens: 13,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 0,
        },
        request_id: None,
    }
}

/// A finished text answer.
pub fn text_message(text: &str) -> Message {
    message(vec![ContentBlock::text(text)], StopReason::EndTurn)
}

/// An answer that calls one tool.
pub fn tool_use_message(id: &str, name: &str, input: Value) -> Message {
    message(
        vec![
            ContentBlock::text("Let me check."),
            ContentBlock::tool_use(id, name, input),
        ],
        StopReason::ToolUse,
    )
}

/// Cuts a string into pieces of about `n` bytes, at character boundaries.
fn pieces(s: &str, n: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < s.len() {
        let mut end = (start + n).min(s.len());
        while !s.is_char_boundary(end) {
            end += 1;
        }
        out.push(s.get(start..end).unwrap_or_default());
        start = end;
    }
    out
}

/// The `(event, data)` pairs the API would stream for this message.
pub fn sse_events(message: &Message) -> Vec<(&'static str, Value)> {
    let mut start = message_json(message);
    if let Value::Object(m) = &mut start {
        m.insert("content".into(), json!([]));
        m.insert("stop_reason".into(), Value::Null);
        m.insert("stop_sequence".into(), Value::Null);
        m.insert(
            "usage".into(),
            json!({
                "input_tokens": message.usage.input_tokens,
                "output_tokens": 1,
                "cache_creation_input_tokens": message.usage.cache_creation_input_tokens,
                "cache_read_input_tokens": message.usage.cache_read_input_tokens,
            }),
        );
    }
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": start}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for (index, block) in message.content.iter().enumerate() {
        let delta = |d: Value| {
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": d}),
            )
        };
        let begin = |b: Value| {
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": index, "content_block": b}),
            )
        };
        match block {
            ContentBlock::Text {
                text, citations, ..
            } => {
                events.push(begin(json!({"type": "text", "text": ""})));
                for p in pieces(text, 7) {
                    events.push(delta(json!({"type": "text_delta", "text": p})));
                }
                for c in citations.iter().flatten() {
                    events.push(delta(json!({"type": "citations_delta", "citation": c})));
                }
            }
            ContentBlock::ToolUse {
                id, name, input, ..
            } => {
                events.push(begin(
                    json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                ));
                for p in pieces(&input.to_string(), 5) {
                    events.push(delta(
                        json!({"type": "input_json_delta", "partial_json": p}),
                    ));
                }
            }
            ContentBlock::Thinking {
                thinking,
                signature,
            } => {
                events.push(begin(json!({"type": "thinking", "thinking": ""})));
                for p in pieces(thinking, 9) {
                    events.push(delta(json!({"type": "thinking_delta", "thinking": p})));
                }
                events.push(delta(
                    json!({"type": "signature_delta", "signature": signature}),
                ));
            }
            other => events.push(begin(serde_json::to_value(other).unwrap_or(Value::Null))),
        }
        events.push((
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push((
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": message.stop_reason, "stop_sequence": message.stop_sequence},
            "usage": {"output_tokens": message.usage.output_tokens},
        }),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    events
}

/// The SSE text the API would stream for this message.
pub fn sse_text(message: &Message) -> String {
    encode_events(&sse_events(message))
}

/// Writes `(event, data)` pairs as SSE.
pub fn encode_events(events: &[(&str, Value)]) -> String {
    let mut out = String::new();
    for (name, data) in events {
        out.push_str("event: ");
        out.push_str(name);
        out.push_str("\ndata: ");
        out.push_str(&data.to_string());
        out.push_str("\n\n");
    }
    out
}
