//! Messages end to end against the stand-in: plain, tools, thinking, streaming.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use coditect_claude::testing::{Reply, StandIn, message, sse_text, text_message, tool_use_message};
use coditect_claude::types::{
    CacheControl, ContentBlock, MessageParam, MessageRequest, Role, StopReason, StreamEvent,
    System, SystemBlock, ThinkingConfig, Tool, ToolChoice,
};
use futures::StreamExt;
use serde_json::json;
use support::{KEY, client, request, within};

#[tokio::test]
async fn plain_text_round_trip_sends_the_right_headers_and_body() {
    let server = StandIn::start().await;
    server.push(
        Reply::message(&text_message("Hi there"))
            .header("anthropic-ratelimit-requests-limit", "50"),
    );
    let (msg, meta) = within(client(&server).messages().create_with_meta(&request()))
        .await
        .unwrap();
    assert_eq!(msg.text(), "Hi there");
    assert_eq!(msg.stop_reason, Some(StopReason::EndTurn));
    assert_eq!(msg.usage.input_tokens, 21);
    assert_eq!(msg.request_id.as_deref(), Some("req_standin"));
    assert_eq!(meta.rate_limits.requests.limit, Some(50));

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json().unwrap();
    assert_eq!(body["model"], "claude-sonnet-4-5");
    assert_eq!(body["max_tokens"], 1024);
    assert_eq!(
        body["messages"][0],
        json!({"role": "user", "content": [{"type": "text", "text": "Hello"}]})
    );
    assert!(body.get("stream").is_none());
}

#[tokio::test]
async fn every_request_field_reaches_the_wire() {
    let server = StandIn::start().await;
    server.push(Reply::message(&text_message("ok")));
    let client = support::builder(&server)
        .beta("a-beta")
        .beta("b-beta")
        .build()
        .unwrap();
    let mut req = MessageRequest::new("m", 4096)
        .message(MessageParam {
            role: Role::User,
            content: vec![ContentBlock::Text {
                text: "cached".into(),
                citations: None,
                cache_control: Some(CacheControl::ephemeral()),
            }],
        })
        .tool(Tool {
            name: "get_weather".into(),
            description: Some("Weather".into()),
            input_schema: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
            cache_control: None,
        })
        .tool_choice(ToolChoice::Tool {
            name: "get_weather".into(),
            disable_parallel_tool_use: Some(true),
        })
        .thinking(2048);
    req.system = Some(System::Blocks(vec![SystemBlock::text(
        "sys",
        Some(CacheControl::ephemeral()),
    )]));
    req.top_p = Some(0.5);
    req.top_k = Some(40);
    req.stop_sequences = Some(vec!["STOP".into()]);
    req.metadata = Some(coditect_claude::types::Metadata {
        user_id: Some("u-1".into()),
    });
    within(client.messages().create(&req)).await.unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.header("anthropic-beta"), Some("a-beta,b-beta"));
    let b = r.json().unwrap();
    assert_eq!(
        b["system"],
        json!([{"type": "text", "text": "sys", "cache_control": {"type": "ephemeral"}}])
    );
    assert_eq!(
        b["messages"][0]["content"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(b["tools"][0]["name"], "get_weather");
    assert_eq!(
        b["tool_choice"],
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        b["thinking"],
        json!({"type": "enabled", "budget_tokens": 2048})
    );
    assert_eq!(
        (b["top_p"].as_f64(), b["top_k"].as_u64()),
        (Some(0.5), Some(40))
    );
    assert_eq!(b["stop_sequences"], json!(["STOP"]));
    assert_eq!(b["metadata"], json!({"user_id": "u-1"}));
    assert_eq!(
        req.thinking,
        Some(ThinkingConfig::Enabled {
            budget_tokens: 2048
        })
    );
}

#[tokio::test]
async fn tool_use_round_trip() {
    let server = StandIn::start().await;
    let call = tool_use_message(
        "toolu_01",
        "get_weather",
        json!({"city": "Zürich", "days": 3}),
    );
    server.push(Reply::message(&call));
    server.push(Reply::message(&text_message("Sunny.")));
    let client = client(&server);

    let first = within(client.messages().create(&request())).await.unwrap();
    assert_eq!(first.stop_reason, Some(StopReason::ToolUse));
    let (id, name, input) = first.tool_uses().next().unwrap();
    assert_eq!((id, name), ("toolu_01", "get_weather"));
    assert_eq!(input["city"], "Zürich");

    let next = request().message(first.to_param()).message(MessageParam {
        role: Role::User,
        content: vec![ContentBlock::tool_result(id, "18°C, sunny", false)],
    });
    let second = within(client.messages().create(&next)).await.unwrap();
    assert_eq!(second.text(), "Sunny.");

    let sent = server.requests()[1].json().unwrap();
    assert_eq!(
        sent["messages"][1]["content"][1],
        json!({"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Zürich", "days": 3}})
    );
    assert_eq!(
        sent["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_01", "content": "18°C, sunny"})
    );
}

fn rich_message() -> coditect_claude::types::Message {
    let mut m = message(
        vec![
            ContentBlock::Thinking {
                thinking: "Let me think… about ünïcödé 🦀 carefully.".into(),
                signature: "sig-abc".into(),
            },
            ContentBlock::RedactedThinking {
                data: "opaque".into(),
            },
            ContentBlock::Text {
                text: "The answer is 42 — ✓ sure.".into(),
                citations: Some(vec![
                    json!({"type": "char_location", "cited_text": "42", "document_index": 0, "start_char_index": 0, "end_char_index": 2}),
                ]),
                cache_control: None,
            },
            ContentBlock::tool_use(
                "toolu_9",
                "calc",
                json!({"expr": "6*7", "nested": {"list": [1, 2, "三"]}}),
            ),
        ],
        StopReason::ToolUse,
    );
    m.usage.cache_read_input_tokens = 5;
    m.usage.cache_creation_input_tokens = 7;
    m
}

#[tokio::test]
async fn thinking_blocks_and_streaming_equal_the_non_streaming_result() {
    let server = StandIn::start().await;
    let expected = rich_message();
    server.push(Reply::message(&expected));
    // Cut every 3 bytes: chunk boundaries fall inside lines and inside UTF-8 characters.
    server.push(Reply::stream(&expected).split_every(3));
    let client = client(&server);

    let created = within(client.messages().create(&request())).await.unwrap();
    let streamed = within(
        within(client.messages().stream(&request()))
            .await
            .unwrap()
            .final_message(),
    )
    .await
    .unwrap();
    assert_eq!(created, streamed);
    assert_eq!(streamed.content.len(), 4);
    assert!(
        matches!(&streamed.content[0], ContentBlock::Thinking { signature, .. } if signature == "sig-abc")
    );
    assert_eq!(server.requests()[1].json().unwrap()["stream"], true);
}

#[tokio::test]
async fn stream_yields_typed_events_in_order_pings_included() {
    let server = StandIn::start().await;
    server.push(Reply::stream(&text_message("Hello, wörld")).split_every(1));
    let mut stream = within(client(&server).messages().stream(&request()))
        .await
        .unwrap();
    assert_eq!(stream.meta().request_id.as_deref(), Some("req_standin"));
    let mut names = Vec::new();
    let mut text = String::new();
    while let Some(ev) = within(stream.next()).await {
        let ev = ev.unwrap();
        if let StreamEvent::ContentBlockDelta {
            delta: coditect_claude::types::ContentDelta::TextDelta { text: t },
            ..
        } = &ev
        {
            text.push_str(t);
        }
        let name = serde_json::to_value(&ev).unwrap()["type"]
            .as_str()
            .unwrap()
            .to_owned();
        if names.last() != Some(&name) {
            names.push(name);
        }
    }
    assert_eq!(text, "Hello, wörld");
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
}

#[tokio::test]
async fn unknown_event_and_block_types_are_tolerated() {
    let server = StandIn::start().await;
    let text = sse_text(&text_message("fine"));
    // A new event type, and a new delta type inside a known block, before message_stop.
    let extra = "event: brand_new_event\ndata: {\"type\":\"brand_new_event\",\"x\":1}\n\n\
                 event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"future_delta\",\"v\":2}}\n\n";
    let pos = text.find("event: content_block_stop").unwrap();
    let text = format!("{}{}{}", &text[..pos], extra, &text[pos..]);
    server.push(Reply::sse(text));
    let msg = within(
        within(client(&server).messages().stream(&request()))
            .await
            .unwrap()
            .final_message(),
    )
    .await
    .unwrap();
    assert_eq!(msg.text(), "fine");

    server.push(Reply::json(200, &json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": "m",
        "content": [{"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}}, {"type": "text", "text": "ok"}],
        "stop_reason": "some_new_reason", "stop_sequence": null,
        "usage": {"input_tokens": 1, "output_tokens": 2, "cache_creation_input_tokens": null, "cache_read_input_tokens": null}
    })));
    let msg = within(client(&server).messages().create(&request()))
        .await
        .unwrap();
    assert_eq!(msg.content[0], ContentBlock::Unknown);
    assert_eq!(
        msg.stop_reason,
        Some(StopReason::Other("some_new_reason".into()))
    );
    assert_eq!(msg.text(), "ok");
}

#[tokio::test]
async fn every_stop_reason_is_typed() {
    for (wire, expected) in [
        ("end_turn", StopReason::EndTurn),
        ("max_tokens", StopReason::MaxTokens),
        ("stop_sequence", StopReason::StopSequence),
        ("tool_use", StopReason::ToolUse),
        ("pause_turn", StopReason::PauseTurn),
        ("refusal", StopReason::Refusal),
        (
            "model_context_window_exceeded",
            StopReason::ModelContextWindowExceeded,
        ),
    ] {
        let parsed: StopReason = serde_json::from_value(json!(wire)).unwrap();
        assert_eq!(parsed, expected);
        assert_eq!(serde_json::to_value(&parsed).unwrap(), json!(wire));
    }
}

#[test]
fn the_api_key_never_shows_in_debug_output() {
    let client = coditect_claude::Client::builder()
        .api_key(KEY)
        .base_url("http://127.0.0.1:9")
        .build()
        .unwrap();
    let shown = format!("{client:?} {:?}", coditect_claude::ApiKey::new(KEY));
    assert!(!shown.contains("SECRET"), "{shown}");
    let builder = coditect_claude::Client::builder().api_key(KEY);
    assert!(!format!("{builder:?}").contains("SECRET"));
}

/// Collects everything a tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_api_key_never_shows_in_logs_or_errors() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = StandIn::start().await;
    server.push(Reply::error(529, "overloaded_error", "Overloaded"));
    server.push(Reply::error(
        401,
        "authentication_error",
        "invalid x-api-key",
    ));
    let err = within(client(&server).messages().create(&request()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), coditect_claude::ErrorKind::Authentication);
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "the retry was logged: {logs}");
    for shown in [logs, err.to_string(), format!("{err:?}")] {
        assert!(!shown.contains("SECRET"), "{shown}");
    }
    // The key did go out, in its header.
    assert_eq!(server.requests()[0].header("x-api-key"), Some(KEY));
}
