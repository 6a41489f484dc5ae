//! Errors, retries and timeouts end to end against the stand-in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use coditect_claude::testing::{Reply, StandIn, sse_text, text_message};
use coditect_claude::{ApiErrorType, Error, ErrorKind, RetryPolicy, TimeoutKind, Timeouts};
use futures::StreamExt;
use support::{KEY, builder, client, request, within};
use tokio::time::Instant;

#[tokio::test]
async fn every_error_status_becomes_its_typed_error_with_request_id() {
    let cases = [
        (400, "invalid_request_error", ErrorKind::InvalidRequest),
        (401, "authentication_error", ErrorKind::Authentication),
        (402, "billing_error", ErrorKind::Billing),
        (403, "permission_error", ErrorKind::Permission),
        (404, "not_found_error", ErrorKind::NotFound),
        (413, "request_too_large", ErrorKind::RequestTooLarge),
        (429, "rate_limit_error", ErrorKind::RateLimited),
        (500, "api_error", ErrorKind::ServerError),
        (504, "timeout_error", ErrorKind::ApiTimeout),
        (529, "overloaded_error", ErrorKind::Overloaded),
        (400, "a_future_error", ErrorKind::OtherApi),
    ];
    let server = StandIn::start().await;
    let client = builder(&server).retry(RetryPolicy::none()).build().unwrap();
    for (status, kind, expected) in cases {
        server.push(Reply::error(status, kind, "details here").header("request-id", "req_42"));
        let err = within(client.messages().create(&request()))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), expected, "{status} {kind}");
        let api = err.api_error().unwrap();
        assert_eq!(api.status, status);
        assert_eq!(api.error_type.as_str(), kind);
        assert_eq!(api.message, "details here");
        assert_eq!(err.request_id(), Some("req_42"));
        assert!(!err.to_string().contains("SECRET"));
    }
    // A 413 from a proxy in front of the API is not JSON.
    server.push(Reply::raw(
        413,
        "text/html",
        "<html>Request Entity Too Large</html>",
    ));
    let err = within(client.messages().create(&request()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RequestTooLarge);
    assert!(err.to_string().contains("Request Entity Too Large"));
}

#[tokio::test]
async fn other_4xx_are_not_retried() {
    let server = StandIn::start().await;
    for status in [400, 401, 402, 403, 404, 413, 422] {
        server.push(Reply::error(status, "x", "no"));
        server.push(Reply::message(&text_message("must not be reached")));
        let err = within(client(&server).messages().create(&request()))
            .await
            .unwrap_err();
        assert_eq!(err.api_error().unwrap().status, status);
        // Drain the unused reply for the next round.
        within(client(&server).messages().create(&request()))
            .await
            .unwrap();
    }
    assert_eq!(server.requests().len(), 14);
}

#[tokio::test(start_paused = true)]
async fn a_429_is_retried_after_its_retry_after() {
    let server = StandIn::start().await;
    server.push(Reply::error(429, "rate_limit_error", "slow down").header("retry-after", "7"));
    server.push(Reply::message(&text_message("ok")));
    let start = Instant::now();
    let msg = within(client(&server).messages().create(&request()))
        .await
        .unwrap();
    let waited = start.elapsed();
    assert_eq!(msg.text(), "ok");
    assert!(
        waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
        "{waited:?}"
    );
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_ms_wins_and_a_far_retry_after_falls_back_to_backoff() {
    let server = StandIn::start().await;
    server.push(
        Reply::error(429, "rate_limit_error", "x")
            .header("retry-after-ms", "1500")
            .header("retry-after", "9"),
    );
    server.push(Reply::error(429, "rate_limit_error", "x").header("retry-after", "3600"));
    server.push(Reply::message(&text_message("ok")));
    let client = builder(&server)
        .retry(RetryPolicy {
            max_retries: 2,
            jitter: false,
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let start = Instant::now();
    within(client.messages().create(&request())).await.unwrap();
    // 1.5 s asked for, then the hour ignored for the 2nd backoff (1 s).
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_millis(3500),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn overloaded_529_is_retried_with_exponential_backoff_then_succeeds() {
    let server = StandIn::start().await;
    server.push(Reply::error(529, "overloaded_error", "Overloaded"));
    server.push(Reply::error(529, "overloaded_error", "Overloaded"));
    server.push(Reply::message(&text_message("finally")));
    let start = Instant::now();
    let msg = within(client(&server).messages().create(&request()))
        .await
        .unwrap();
    assert_eq!(msg.text(), "finally");
    let waited = start.elapsed();
    // 0.5 s then 1 s, no jitter.
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_millis(2000),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_exhausted_returns_the_last_error() {
    let server = StandIn::start().await;
    server.set_fallback(Reply::error(500, "api_error", "boom"));
    let err = within(client(&server).messages().create(&request()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert!(err.is_retryable());
    assert_eq!(
        server.requests().len(),
        3,
        "1 attempt + 2 retries by default"
    );
}

#[tokio::test(start_paused = true)]
async fn x_should_retry_overrides_the_status_either_way() {
    let server = StandIn::start().await;
    server.push(Reply::error(500, "api_error", "final").header("x-should-retry", "false"));
    let err = within(client(&server).messages().create(&request()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ServerError);
    assert_eq!(server.requests().len(), 1);

    server.push(
        Reply::error(400, "invalid_request_error", "transient").header("x-should-retry", "true"),
    );
    server.push(Reply::message(&text_message("ok")));
    within(client(&server).messages().create(&request()))
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_silent_server_times_out_and_is_retried() {
    let server = StandIn::start().await;
    server.push(Reply::silence());
    server.push(Reply::message(&text_message("second try")));
    let client = builder(&server)
        .timeouts(Timeouts {
            request: Duration::from_secs(30),
            first_byte: Duration::from_secs(10),
            ..Timeouts::default()
        })
        .build()
        .unwrap();
    let msg = within(client.messages().create(&request())).await.unwrap();
    assert_eq!(msg.text(), "second try");

    server.set_fallback(Reply::silence());
    let err = within(client.messages().stream(&request()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::FirstByte)),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_goes_silent_hits_the_idle_timeout() {
    let server = StandIn::start().await;
    let text = sse_text(&text_message("partial answer"));
    server.push(
        Reply::sse(text.clone())
            .truncate(text.len() / 2)
            .then_hang(),
    );
    let client = builder(&server)
        .timeouts(Timeouts {
            stream_idle: Duration::from_secs(5),
            ..Timeouts::default()
        })
        .build()
        .unwrap();
    let stream = within(client.messages().stream(&request())).await.unwrap();
    let err = within(stream.final_message()).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::StreamIdle)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_connection_reset_mid_stream_is_a_transport_error() {
    let server = StandIn::start().await;
    let text = sse_text(&text_message("an answer that will be cut"));
    server.push(
        Reply::sse(text.clone())
            .truncate(text.len() / 2)
            .then_reset(),
    );
    let mut stream = within(client(&server).messages().stream(&request()))
        .await
        .unwrap();
    // Events before the reset may or may not arrive (the server's last writes can be
    // lost with the connection); what matters is that the stream ends in an error.
    let err = loop {
        match within(stream.next()).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => break e,
            None => panic!("stream ended without an error"),
        }
    };
    assert!(
        matches!(err.kind(), ErrorKind::Transport | ErrorKind::Stream),
        "{err:?}"
    );
    assert!(
        within(stream.next()).await.is_none(),
        "the stream ends after its error"
    );
    assert_eq!(server.requests().len(), 1, "a broken stream is not retried");
}

#[tokio::test]
async fn an_error_event_mid_stream_is_a_typed_api_error() {
    let server = StandIn::start().await;
    let text = sse_text(&text_message("half"));
    let pos = text.find("event: content_block_stop").unwrap();
    let text = format!(
        "{}event: error\ndata: {{\"type\": \"error\", \"error\": {{\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}}}\n\n",
        &text[..pos]
    );
    server.push(Reply::sse(text));
    let stream = within(client(&server).messages().stream(&request()))
        .await
        .unwrap();
    let err = within(stream.final_message()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Overloaded);
    let api = err.api_error().unwrap();
    assert_eq!(api.error_type, ApiErrorType::Overloaded);
    assert_eq!(api.message, "Overloaded");
    assert_eq!(api.request_id.as_deref(), Some("req_standin"));
    assert_eq!(server.requests().len(), 1, "an error event is not retried");
}

#[tokio::test]
async fn a_malformed_event_is_a_decode_error() {
    let server = StandIn::start().await;
    let text = sse_text(&text_message("x"));
    let pos = text.find("event: content_block_stop").unwrap();
    server.push(Reply::sse(format!(
        "{}event: content_block_delta\ndata: {{not json\n\n{}",
        &text[..pos],
        &text[pos..]
    )));
    let err = within(
        within(client(&server).messages().stream(&request()))
            .await
            .unwrap()
            .final_message(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);

    server.push(Reply::sse(
        b"event: message_start\ndata: \xff\xfe\n\n"
            .to_vec()
            .into_iter()
            .map(char::from)
            .collect::<String>(),
    ));
    let err = within(
        within(client(&server).messages().stream(&request()))
            .await
            .unwrap()
            .final_message(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Decode);
}

#[tokio::test]
async fn a_stream_without_message_stop_is_an_error_not_a_short_answer() {
    let server = StandIn::start().await;
    let text = sse_text(&text_message("looks complete"));
    let pos = text.find("event: message_stop").unwrap();
    server.push(Reply::sse(text[..pos].to_owned()));
    let err = within(
        within(client(&server).messages().stream(&request()))
            .await
            .unwrap()
            .final_message(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Stream);
    assert!(err.to_string().contains("message_stop"), "{err}");
}

#[tokio::test]
async fn requests_over_the_size_limit_are_refused_locally() {
    let server = StandIn::start().await;
    let huge = "x".repeat(coditect_claude::MAX_REQUEST_BYTES + 1);
    let err = within(client(&server).messages().create(&request().user(huge)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::RequestTooLarge);
    assert!(matches!(err, Error::RequestTooLarge { .. }));
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_a_transport_error() {
    // Bind and drop a listener to get a port with nothing behind it.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let client = coditect_claude::Client::builder()
        .api_key(KEY)
        .base_url(format!("http://{addr}"))
        .retry(RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::from_millis(1),
            ..RetryPolicy::default()
        })
        .build()
        .unwrap();
    let err = within(client.messages().create(&request()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transport);
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("SECRET"));
}

#[test]
fn a_missing_key_is_a_config_error() {
    let err = coditect_claude::Client::builder()
        .base_url("http://127.0.0.1:9")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let err = coditect_claude::Client::builder()
        .api_key("k")
        .base_url("ftp://x")
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_stalls_hits_the_whole_request_timeout() {
    let server = StandIn::start().await;
    let body = serde_json::to_string(&coditect_claude::testing::message_json(&text_message(
        "an answer cut short",
    )))
    .unwrap();
    // The headers and half the body come at once; the rest never does. Only
    // the whole-request timeout can end the wait.
    server.push(
        Reply::raw(200, "application/json", body.clone())
            .truncate(body.len() / 2)
            .then_hang(),
    );
    let client = builder(&server)
        .retry(RetryPolicy::none())
        .timeouts(Timeouts {
            request: Duration::from_secs(40),
            ..Timeouts::default()
        })
        .build()
        .unwrap();
    let start = Instant::now();
    let err = within(client.messages().create(&request()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Request)),
        "{err:?}"
    );
    assert!(err.is_retryable());
    // Virtual time: the deadline is the one set, counted from the send.
    assert_eq!(start.elapsed().as_secs(), 40);
}

#[tokio::test(start_paused = true)]
async fn a_connection_nobody_accepts_hits_the_connect_timeout() {
    // A loopback listener with a backlog of one that never accepts: once its
    // queue is full the kernel drops further SYNs, so a connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    let _listener = socket.listen(1).unwrap();
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(300)) {
            Ok(s) => held.push(s),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "the listener's queue never filled");
    // The client's own HTTP client (no `http_client`), where the connect
    // timeout applies.
    let client = coditect_claude::Client::builder()
        .api_key(KEY)
        .base_url(format!("http://{addr}"))
        .retry(RetryPolicy::none())
        .timeouts(Timeouts {
            connect: Duration::from_secs(3),
            ..Timeouts::default()
        })
        .build()
        .unwrap();
    let err = within(client.messages().create(&request()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout(TimeoutKind::Connect)),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(err.is_retryable());
    drop(held);
}
