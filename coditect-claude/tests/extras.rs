//! Batches, token counting, structured output and the LanguageModel impl, end to end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use coditect_agents::model::{
    self as neutral, BlockStart, CompletionRequest, LanguageModel, ModelErrorKind, StreamDelta,
    ToolDefinition,
};
use coditect_claude::testing::{
    Reply, StandIn, message, message_json, text_message, tool_use_message,
};
use coditect_claude::types::{ContentBlock, StopReason};
use coditect_claude::{
    BatchRequest, BatchResult, BatchStatus, ClaudeModel, Error, ErrorKind, RetryPolicy,
};
use futures::StreamExt;
use serde_json::json;
use support::{builder, client, request, within};

fn batch_json(status: &str, results_url: Option<&str>) -> serde_json::Value {
    json!({
        "id": "msgbatch_1", "type": "message_batch", "processing_status": status,
        "request_counts": {"processing": 0, "succeeded": 1, "errored": 1, "canceled": 0, "expired": 0},
        "created_at": "2026-01-01T00:00:00Z", "ended_at": null, "expires_at": "2026-01-02T00:00:00Z",
        "archived_at": null, "cancel_initiated_at": null, "results_url": results_url,
    })
}

#[tokio::test(start_paused = true)]
async fn batches_create_poll_fetch_results_and_cancel() {
    let server = StandIn::start().await;
    let client = client(&server);
    server.push(Reply::json(200, &batch_json("in_progress", None)));
    let reqs = vec![
        BatchRequest {
            custom_id: "a".into(),
            params: request(),
        },
        BatchRequest {
            custom_id: "b".into(),
            params: request(),
        },
    ];
    let batch = within(client.batches().create(reqs)).await.unwrap();
    assert_eq!(batch.processing_status, BatchStatus::InProgress);
    let sent = server.requests()[0].json().unwrap();
    assert_eq!(server.requests()[0].path, "/v1/messages/batches");
    assert_eq!(sent["requests"][1]["custom_id"], "b");
    assert_eq!(sent["requests"][0]["params"]["model"], "claude-sonnet-4-5");
    assert!(sent["requests"][0]["params"].get("stream").is_none());

    // Poll twice, then ended.
    server.push(Reply::json(200, &batch_json("in_progress", None)));
    let results_url = format!("{}/v1/messages/batches/msgbatch_1/results", server.url());
    server.push(Reply::json(200, &batch_json("ended", Some(&results_url))));
    let ended = within(
        client
            .batches()
            .wait("msgbatch_1", std::time::Duration::from_secs(30)),
    )
    .await
    .unwrap();
    assert_eq!(ended.processing_status, BatchStatus::Ended);
    assert_eq!(server.requests()[2].path, "/v1/messages/batches/msgbatch_1");

    let ok = json!({"custom_id": "a", "result": {"type": "succeeded", "message": message_json(&text_message("done"))}});
    let bad = json!({"custom_id": "b", "result": {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": "bad model"}}}});
    server.push(Reply::raw(
        200,
        "application/binary",
        format!("{ok}\n{bad}\n"),
    ));
    let results = within(client.batches().results(&ended)).await.unwrap();
    assert!(matches!(&results["a"], BatchResult::Succeeded(m) if m.text() == "done"));
    assert!(matches!(&results["b"], BatchResult::Errored(e) if e.message == "bad model"));
    assert_eq!(
        server.requests()[3].path,
        "/v1/messages/batches/msgbatch_1/results"
    );
    assert_eq!(server.requests()[3].header("x-api-key"), Some(support::KEY));

    server.push(Reply::json(200, &batch_json("canceling", None)));
    let canceled = within(client.batches().cancel("msgbatch_1")).await.unwrap();
    assert_eq!(canceled.processing_status, BatchStatus::Canceling);
    assert_eq!(
        server.requests()[4].path,
        "/v1/messages/batches/msgbatch_1/cancel"
    );

    let dup = vec![
        BatchRequest {
            custom_id: "x".into(),
            params: request(),
        },
        BatchRequest {
            custom_id: "x".into(),
            params: request(),
        },
    ];
    assert_eq!(
        within(client.batches().create(dup))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Config
    );
}

#[tokio::test]
async fn count_tokens_sends_only_the_fields_it_accepts() {
    let server = StandIn::start().await;
    server.push(Reply::json(200, &json!({"input_tokens": 1234})));
    let n = within(
        client(&server)
            .messages()
            .count_tokens(&request().system("s").temperature(0.3)),
    )
    .await
    .unwrap();
    assert_eq!(n, 1234);
    let r = &server.requests()[0];
    assert_eq!(r.path, "/v1/messages/count_tokens");
    let body = r.json().unwrap();
    assert_eq!(body["system"], "s");
    assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());
}

#[derive(Debug, PartialEq, serde::Deserialize, schemars::JsonSchema)]
struct Plan {
    /// The steps, in order.
    steps: Vec<String>,
    parallel: bool,
}

#[tokio::test]
async fn structured_output_forces_the_tool_and_reports_what_came_back() {
    let server = StandIn::start().await;
    server.push(Reply::message(&tool_use_message(
        "t",
        "structured_output",
        json!({"steps": ["a", "b"], "parallel": false}),
    )));
    let plan: Plan = within(client(&server).messages().structured(&request()))
        .await
        .unwrap();
    assert_eq!(
        plan,
        Plan {
            steps: vec!["a".into(), "b".into()],
            parallel: false
        }
    );
    let body = server.requests()[0].json().unwrap();
    assert_eq!(
        body["tool_choice"],
        json!({"type": "tool", "name": "structured_output", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        body["tools"][0]["input_schema"]["properties"]["steps"]["description"],
        "The steps, in order."
    );

    server.push(Reply::message(&tool_use_message(
        "t",
        "structured_output",
        json!({"steps": "not a list"}),
    )));
    let err = within(client(&server).messages().structured::<Plan>(&request()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::StructuredOutput);
    assert!(
        matches!(&err, Error::StructuredOutput { raw, .. } if raw.contains("not a list")),
        "{err}"
    );

    server.push(Reply::message(&text_message("I'd rather chat.")));
    let err = within(client(&server).messages().structured::<Plan>(&request()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("I'd rather chat."), "{err}");

    // Non-object types are wrapped in {"value": …}.
    server.push(Reply::message(&tool_use_message(
        "t",
        "structured_output",
        json!({"value": [1, 2, 3]}),
    )));
    let v: Vec<u32> = within(client(&server).messages().structured(&request()))
        .await
        .unwrap();
    assert_eq!(v, [1, 2, 3]);
}

fn neutral_request() -> CompletionRequest {
    let mut req = CompletionRequest::new(vec![neutral::Message::user("What's the weather?")], 512);
    req.system = Some("Be brief.".into());
    req.tools = vec![ToolDefinition {
        name: "weather".into(),
        description: "Current weather".into(),
        input_schema: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
    }];
    req.tool_choice = neutral::ToolChoice::Any;
    req.stop_sequences = vec!["END".into()];
    req
}

#[tokio::test]
async fn claude_model_completes_and_streams_through_the_neutral_trait() {
    let server = StandIn::start().await;
    let mut answer = message(
        vec![
            ContentBlock::Thinking {
                thinking: "hmm".into(),
                signature: "s1".into(),
            },
            ContentBlock::RedactedThinking { data: "zzz".into() },
            ContentBlock::tool_use("toolu_1", "weather", json!({"city": "Oslo"})),
        ],
        StopReason::ToolUse,
    );
    answer.usage.cache_read_input_tokens = 3;
    server.push(Reply::message(&answer));
    server.push(Reply::stream(&answer).split_every(5));
    let model = ClaudeModel::new(client(&server), "claude-sonnet-4-5");

    let done = within(model.complete(neutral_request())).await.unwrap();
    assert_eq!(done.stop_reason, neutral::StopReason::ToolUse);
    assert_eq!(done.usage.cache_read_input_tokens, 3);
    assert_eq!(
        done.content.len(),
        2,
        "redacted thinking has no neutral form"
    );
    assert_eq!(
        done.tool_calls().next(),
        Some(("toolu_1", "weather", &json!({"city": "Oslo"})))
    );
    let sent = server.requests()[0].json().unwrap();
    assert_eq!(sent["tool_choice"], json!({"type": "any"}));
    // The system prompt goes as a block marked as a prompt-cache breakpoint
    // (the stable prefix is cached by default).
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}])
    );
    assert_eq!(sent["tools"][0]["description"], "Current weather");

    let deltas: Vec<StreamDelta> = within(
        within(model.stream(neutral_request()))
            .await
            .unwrap()
            .collect::<Vec<_>>(),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    assert_eq!(
        deltas.first(),
        Some(&StreamDelta::BlockStart {
            index: 0,
            block: BlockStart::Thinking
        })
    );
    assert!(deltas.contains(&StreamDelta::BlockStart {
        index: 1,
        block: BlockStart::ToolUse {
            id: "toolu_1".into(),
            name: "weather".into()
        }
    }));
    let json: String = deltas
        .iter()
        .filter_map(|d| match d {
            StreamDelta::ToolInputJson {
                index: 1,
                partial_json,
            } => Some(partial_json.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        json!({"city": "Oslo"})
    );
    assert_eq!(deltas.last(), Some(&StreamDelta::Done(done)));
}

#[tokio::test]
async fn claude_model_errors_map_to_neutral_kinds() {
    let server = StandIn::start().await;
    let model = ClaudeModel::new(
        builder(&server).retry(RetryPolicy::none()).build().unwrap(),
        "m",
    );
    for (status, kind, expected, retryable) in [
        (
            400,
            "invalid_request_error",
            ModelErrorKind::InvalidRequest,
            false,
        ),
        (
            401,
            "authentication_error",
            ModelErrorKind::Authentication,
            false,
        ),
        (402, "billing_error", ModelErrorKind::Authentication, false),
        (429, "rate_limit_error", ModelErrorKind::RateLimited, true),
        (504, "timeout_error", ModelErrorKind::Timeout, true),
        (529, "overloaded_error", ModelErrorKind::Unavailable, true),
    ] {
        server.push(Reply::error(status, kind, "nope"));
        let err = within(model.complete(neutral_request())).await.unwrap_err();
        assert_eq!(
            (err.kind(), err.is_retryable()),
            (expected, retryable),
            "{status}"
        );
    }
    server.push(Reply::sse("event: message_start\ndata: {oops}\n\n"));
    let mut stream = within(model.stream(neutral_request())).await.unwrap();
    let err = within(stream.next()).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ModelErrorKind::InvalidResponse);
}
