//! The coditect core: agents, envelopes, transports, and the runtime that
//! hosts agents on them.
//!
//! A developer registers agent kinds on a [`Runtime`]; an agent id
//! (`kind/key`) is activated on its first message and handles its messages one
//! at a time, in order, while different ids run concurrently. Agents talk to
//! each other through their [`AgentContext`]: `send`, `publish`, `request` and
//! `delegate`. The same agents run in one process over the
//! [`InMemoryTransport`] or across processes over NATS.
//!
//! ```
//! use coditect_orchestrator::{Agent, AgentContext, AgentError, AgentId, InMemoryTransport, Runtime};
//!
//! /// Asks a spell checker, then counts the words of the fixed text.
//! struct Editor;
//! impl Agent for Editor {
//!     type Input = String;
//!     type Output = usize;
//!     async fn handle(&mut self, text: String, ctx: &AgentContext) -> Result<usize, AgentError> {
//!         let fixed: String = ctx.delegate("spelling", text).await?;
//!         Ok(fixed.split_whitespace().count())
//!     }
//! }
//!
//! struct Speller;
//! impl Agent for Speller {
//!     type Input = String;
//!     type Output = String;
//!     async fn handle(&mut self, text: String, _ctx: &AgentContext) -> Result<String, AgentError> {
//!         Ok(text.replace("teh", "the"))
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
//! runtime.register("editor", |_id| Editor).await?;
//! runtime.kind("speller").capability("spelling").register(|_id| Speller).await?;
//!
//! let words: usize = runtime.request(AgentId::new("editor", "doc-1")?, "teh cat sat".to_string()).await?;
//! assert_eq!(words, 3);
//! runtime.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

mod agent;
mod body;
mod budget;
mod call_context;
mod context;
mod envelope;
mod error;
mod id;
pub mod journal;
pub mod observe;
pub mod orchestrator;
pub mod report;
pub mod runtime;
pub mod store;
pub mod transport;

#[cfg(feature = "test-utils")]
pub mod testing;

pub use agent::{Agent, AgentCard, AgentError, AgentErrorKind};
pub use body::{Body, BodyError, Message};
pub use budget::{Budget, Usage};
pub use call_context::CallContext;
pub use context::AgentContext;
pub use envelope::{
    CallChain, Deadline, Destination, Envelope, Failure, FailureKind, Payload, TraceContext,
};
pub use error::{RegisterError, RequestError};
pub use id::{
    AgentId, AgentKey, AgentKind, IdError, IdErrorReason, MAX_NAME_LEN, MessageId, NodeId, RunId,
    StepId, TenantId, Topic,
};
pub use journal::EffectKey;
pub use orchestrator::{Orchestrator, Plan, Step, StepInput, TaskSpec};
pub use report::{ReportError, ReportErrorKind, Signal, SignalKind, Tally};
pub use runtime::{Answer, KindBuilder, RequestOptions, Runtime, RuntimeBuilder, ShutdownReport};
pub use transport::{
    Acker, Delivery, DeliveryStream, InMemoryTransport, Inbox, Route, RouteTarget, SendError,
    SendErrorKind, Subscription, Transport, TransportError, TransportErrorKind, TransportExt,
};

// The README's example is compiled and run as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;

/// Re-exported so users name the same token type the runtime uses.
pub use tokio_util::sync::CancellationToken;
