//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::time::Duration;

use coditect_claude::testing::StandIn;
use coditect_claude::types::MessageRequest;
use coditect_claude::{Client, ClientBuilder, RetryPolicy};

/// Every await in a test goes through this, so a bug fails fast instead of hanging.
/// Generous because paused-clock tests advance virtual time through retry delays.
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(300), f)
        .await
        .expect("test step timed out")
}

pub const KEY: &str = "sk-ant-test-SECRET-0123456789";

pub fn builder(server: &StandIn) -> ClientBuilder {
    Client::builder()
        .api_key(KEY)
        .base_url(server.url())
        .http_client(coditect_claude::testing::http_client())
        .retry(RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        })
}

pub fn client(server: &StandIn) -> Client {
    builder(server).build().expect("client")
}

pub fn request() -> MessageRequest {
    MessageRequest::new("claude-sonnet-4-5", 1024).user("Hello")
}
