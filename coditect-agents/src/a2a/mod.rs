//! A2A (Agent2Agent) at coditect's edge, behind the feature `a2a`: publish
//! coditect agents as A2A agents, and use remote A2A agents as coditect
//! agents.
//!
//! Built on the official A2A Rust SDK (`a2a-lf` types, `a2a-server-lf` for
//! the JSON-RPC endpoint, SSE streaming, task store and push notifications,
//! `a2a-client-lf` for the JSON-RPC client), speaking A2A protocol version
//! 1.0 over JSON-RPC 2.0 on HTTP.
//!
//! - [`A2aServer`] publishes one agent kind of a [`Runtime`] (its capabilities
//!   are the skills) or a whole [`Orchestrator`] (every capability is a
//!   skill; the planner plans each message). The card is served at
//!   `/.well-known/agent-card.json`; JSON-RPC at `/`: `SendMessage`,
//!   `SendStreamingMessage` (SSE), `GetTask` (status, artifacts, history),
//!   `ListTasks`, `CancelTask`, `SubscribeToTask`, and the push-notification
//!   config methods (the server posts task events to the caller's webhook,
//!   see [`PushPolicy`]). With a bearer token,
//!   the card declares an HTTP bearer security scheme and a call without the
//!   token is answered HTTP 401; a malformed call is answered with the
//!   JSON-RPC error the spec names (parse error `-32700`, invalid request
//!   `-32600`, invalid params `-32602`, method not found `-32601`).
//! - [`A2aRemote`] reads a remote agent's card and registers it on a
//!   [`Runtime`] as a kind whose capabilities are the remote skills, so a
//!   plan routes steps to it like to any local agent. Its [`A2aAgent`]
//!   streams the remote task, forwarding each working status as a progress
//!   event; a cancelled step cancels the remote task (`CancelTask`); the
//!   caller's deadline bounds the call and travels with it
//!   (`coditect.deadline_ms`), as does the run's remaining budget
//!   (`coditect.budget`); the usage a coditect server reports back
//!   (`coditect.usage`) counts against the caller's run.
//!
//! Each skill's input and output JSON Schema travel in the card extension
//! [`SCHEMA_EXTENSION`]. A value travels as a text part when it is a string
//! and as a data part otherwise; data parts are protobuf `Struct`s on the
//! wire, so whole numbers are read back as integers.
//!
//! Remote tasks that stop in `input-required` or `auth-required` are
//! cancelled and fail the step: a coditect step has no way to answer them.
//!
//! # Example
//!
//! Publish an agent kind, then use it from another runtime through A2A, on
//! loopback:
//!
//! ```
//! use coditect_agents::a2a::{A2aRemote, A2aServer};
//! use coditect_orchestrator::orchestrator::{Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec};
//! use coditect_orchestrator::{Agent, AgentContext, AgentError, InMemoryTransport, Runtime};
//!
//! /// Shouts what it is told.
//! struct Upper;
//! impl Agent for Upper {
//!     type Input = String;
//!     type Output = String;
//!     async fn handle(&mut self, s: String, _ctx: &AgentContext) -> Result<String, AgentError> {
//!         Ok(s.to_uppercase())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // One process publishes the kind "upper" as an A2A agent…
//! let team = Runtime::builder(InMemoryTransport::new()).build().await?;
//! team.kind("upper").description("Shouts.").capability("shout").register(|_| Upper).await?;
//! let serving = A2aServer::for_kind(&team, "upper")?
//!     .bearer_token("s3cret")
//!     .build()?
//!     .serve(tokio::net::TcpListener::bind("127.0.0.1:0").await?)
//!     .await?;
//!
//! // …another uses it as a kind of its own, found by capability.
//! let runtime = Runtime::builder(InMemoryTransport::new()).build().await?;
//! let remote = A2aRemote::builder(serving.url()).bearer_token("s3cret").connect().await?;
//! assert_eq!(remote.capabilities(), ["shout"]);
//! remote.register(&runtime, "remote_upper").await?;
//! let plan = Plan::new([Step::new("a", "shout", StepInput::Goal)]);
//! let outcome = Orchestrator::new(runtime, StaticPlanner::new(plan))
//!     .run(TaskSpec::new("hello"))
//!     .await?;
//! assert_eq!(outcome.output, "HELLO");
//! serving.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! [`Runtime`]: coditect_orchestrator::Runtime
//! [`Orchestrator`]: coditect_orchestrator::Orchestrator

mod client;
mod convert;
mod error;
mod executor;
mod server;

pub use client::{A2aAgent, A2aRemote, A2aRemoteBuilder};
pub use convert::{
    BEARER_SCHEME, META_BUDGET, META_CAPABILITY, META_DEADLINE_MS, META_USAGE, SCHEMA_EXTENSION,
    WireBudget,
};
pub use error::{A2aError, A2aErrorKind, UNAUTHENTICATED_CODE};
pub use server::{A2aServer, A2aServerBuilder, A2aServing, PushPolicy};

/// The A2A SDK's protocol types (cards, messages, tasks), re-exported so
/// callers name the same types coditect uses.
pub use a2a_types as types;
