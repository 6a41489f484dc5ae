#![doc = include_str!("../README.md")]
//!
//! # Examples
//!
//! A whole round trip against the crate's own stand-in server (feature `test-utils`),
//! the same way the tests run it:
//!
//! ```
//! # #[cfg(feature = "test-utils")]
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use coditect_claude::testing::{StandIn, Reply, text_message};
//! use coditect_claude::{Client, types::MessageRequest};
//!
//! let server = StandIn::start().await;
//! server.push(Reply::stream(&text_message("Hello, world")));
//!
//! let client = Client::builder().api_key("sk-test").base_url(server.url()).build()?;
//! let req = MessageRequest::new("claude-sonnet-4-5", 256).user("Say hello.");
//! let message = client.messages().stream(&req).await?.final_message().await?;
//! assert_eq!(message.text(), "Hello, world");
//! # Ok::<_, coditect_claude::Error>(()) }).unwrap();
//! ```

mod batches;
mod client;
mod config;
mod error;
mod governor;
mod model;
mod pricing;
mod rate_limits;
mod retry;
pub mod sse;
mod stream;
mod structured;
#[cfg(feature = "test-utils")]
pub mod testing;
mod tokens;
pub mod types;

pub use batches::{Batch, BatchRequest, BatchRequestCounts, BatchResult, BatchStatus, Batches};
pub use client::{Client, Messages};
pub use config::{
    API_VERSION, ApiKey, ClientBuilder, DEFAULT_BASE_URL, MAX_REQUEST_BYTES, Timeouts,
};
pub use error::{ApiError, ApiErrorType, Error, ErrorKind, Result, TimeoutKind};
pub use governor::{GovernorConfig, GovernorPermit, RateGovernor};
pub use model::{ClaudeModel, PromptCache};
pub use pricing::{ModelPrice, PriceTable};

pub use rate_limits::{RateLimit, RateLimits, ResponseMeta};
pub use retry::RetryPolicy;
pub use stream::{MessageAccumulator, MessageStream, decode, decode_event};
