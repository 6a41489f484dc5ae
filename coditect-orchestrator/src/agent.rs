//! The `Agent` trait, its card, and the error a handler returns.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::body::{Body, BodyError, Message};
use crate::context::AgentContext;
use crate::envelope::{Failure, FailureKind};
use crate::id::{AgentId, AgentKind};

/// An agent: state plus a handler for one kind of input.
///
/// A runtime makes one value per agent id on its first message (from the factory
/// given at registration) and calls [`Agent::handle`] for each message to that
/// id, one at a time, in arrival order — so `&mut self` is safe to use as the
/// agent's memory. Different ids run concurrently.
///
/// ```
/// use coditect_orchestrator::{Agent, AgentContext, AgentError};
///
/// /// Counts the words it is sent, remembering a running total per agent id.
/// #[derive(Default)]
/// struct WordCounter { total: usize }
///
/// impl Agent for WordCounter {
///     type Input = String;
///     type Output = usize;
///
///     async fn handle(&mut self, text: String, _ctx: &AgentContext) -> Result<usize, AgentError> {
///         self.total += text.split_whitespace().count();
///         Ok(self.total)
///     }
/// }
/// ```
pub trait Agent: Send + 'static {
    /// What the agent takes. Its JSON Schema goes on the agent's card.
    type Input: Message + JsonSchema;
    /// What the agent answers. Its JSON Schema goes on the agent's card.
    type Output: Message + JsonSchema;

    /// Handles one message.
    ///
    /// # Errors
    /// An [`AgentError`] goes back to the requester as a failure; mark it
    /// [`AgentError::transient`] if trying again may help.
    fn handle(
        &mut self,
        input: Self::Input,
        ctx: &AgentContext,
    ) -> impl Future<Output = Result<Self::Output, AgentError>> + Send;

    /// Called once when the agent id is activated, before its first message.
    ///
    /// # Errors
    /// An error refuses the activation: the message that caused it fails, and
    /// the next message tries again.
    fn on_activate(
        &mut self,
        _id: &AgentId,
    ) -> impl Future<Output = Result<(), AgentError>> + Send {
        async { Ok(()) }
    }

    /// Called when the activation is dropped: idle for too long, deactivated on
    /// request, or the runtime shuts down.
    fn on_deactivate(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The object-safe form of [`Agent`] the runtime keeps in its tables.
pub(crate) trait DynAgent: Send {
    fn handle_dyn<'a>(
        &'a mut self,
        body: Body,
        ctx: &'a AgentContext,
    ) -> BoxFuture<'a, Result<Body, AgentError>>;
    fn on_activate_dyn<'a>(&'a mut self, id: &'a AgentId) -> BoxFuture<'a, Result<(), AgentError>>;
    fn on_deactivate_dyn(&mut self) -> BoxFuture<'_, ()>;
}

impl<A: Agent> DynAgent for A {
    fn handle_dyn<'a>(
        &'a mut self,
        body: Body,
        ctx: &'a AgentContext,
    ) -> BoxFuture<'a, Result<Body, AgentError>> {
        Box::pin(async move {
            let input = body.take::<A::Input>().map_err(AgentError::bad_input)?;
            let output = self.handle(input, ctx).await?;
            Ok(Body::new(output))
        })
    }

    fn on_activate_dyn<'a>(&'a mut self, id: &'a AgentId) -> BoxFuture<'a, Result<(), AgentError>> {
        Box::pin(self.on_activate(id))
    }

    fn on_deactivate_dyn(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(self.on_deactivate())
    }
}

/// What an agent can do, for planners and routers to read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentCard {
    /// The kind the card describes.
    pub kind: AgentKind,
    /// A short name for people and models.
    pub name: String,
    /// What the agent does, written for a planner.
    pub description: String,
    /// The capabilities it offers; a plan step names one of these.
    pub capabilities: Vec<String>,
    /// JSON Schema of its input.
    pub input_schema: serde_json::Value,
    /// JSON Schema of its output.
    pub output_schema: serde_json::Value,
}

impl AgentCard {
    /// The card of agent type `A` registered as `kind`: named after the kind,
    /// offering the kind's name as its one capability, schemas from the types.
    pub fn of<A: Agent>(kind: AgentKind) -> Self {
        let name = kind.as_str().to_owned();
        Self {
            capabilities: vec![name.clone()],
            name,
            kind,
            description: String::new(),
            input_schema: schema_value::<A::Input>(),
            output_schema: schema_value::<A::Output>(),
        }
    }

    /// Whether the agent offers a capability.
    pub fn can(&self, capability: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
    }
}

fn schema_value<T: JsonSchema>() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(T)).unwrap_or(serde_json::Value::Null)
}

/// Whether an error is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AgentErrorKind {
    /// Trying again may succeed (a timeout, a rate limit, a flaky dependency).
    Transient,
    /// Trying again will fail the same way.
    Permanent,
    /// The input was not what the agent takes.
    BadInput,
    /// A run policy (depth, fan-out, budget) stopped the work.
    Policy,
    /// The work was cancelled.
    Cancelled,
}

/// The error an agent's handler returns.
///
/// ```
/// use coditect_orchestrator::{AgentError, AgentErrorKind};
/// let e = AgentError::transient("search service is busy");
/// assert_eq!(e.kind(), AgentErrorKind::Transient);
/// assert_eq!(e.to_string(), "search service is busy");
/// ```
pub struct AgentError {
    kind: AgentErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
    /// The failure this error passes on unchanged (a request that failed).
    failure: Option<Box<Failure>>,
}

impl AgentError {
    /// A permanent error with a message.
    pub fn new(message: impl Into<String>) -> Self {
        Self::with_kind(AgentErrorKind::Permanent, message)
    }

    /// An error of the given kind.
    pub fn with_kind(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            failure: None,
        }
    }

    /// A transient error: the orchestrator may retry the step.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::with_kind(AgentErrorKind::Transient, message)
    }

    /// A permanent error.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::with_kind(AgentErrorKind::Permanent, message)
    }

    /// The input could not be read.
    pub fn bad_input(source: BodyError) -> Self {
        Self {
            kind: AgentErrorKind::BadInput,
            message: source.to_string(),
            source: Some(Box::new(source)),
            failure: None,
        }
    }

    /// Wraps any error as a permanent agent error.
    pub fn other(source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            kind: AgentErrorKind::Permanent,
            message: source.to_string(),
            source: Some(Box::new(source)),
            failure: None,
        }
    }

    /// Attaches a cause.
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Which kind of error this is.
    pub fn kind(&self) -> AgentErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again may help.
    pub fn is_transient(&self) -> bool {
        self.kind == AgentErrorKind::Transient
    }

    /// The failure this error becomes on the wire. An error that came from a
    /// failed request passes that failure on unchanged (its kind and the agent
    /// that failed first), so a call cycle or a timeout deep in a chain is seen
    /// as what it is at the top.
    pub fn to_failure(&self, agent: &AgentId) -> Failure {
        if let Some(f) = &self.failure {
            return (**f).clone();
        }
        let kind = match self.kind {
            AgentErrorKind::BadInput => FailureKind::BadInput,
            AgentErrorKind::Policy => FailureKind::Policy,
            AgentErrorKind::Cancelled => FailureKind::Cancelled,
            AgentErrorKind::Transient | AgentErrorKind::Permanent => FailureKind::Handler,
        };
        let mut f = Failure::new(kind, self.message.clone()).at(agent);
        f.transient = self.is_transient();
        f
    }
}

impl fmt::Debug for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for AgentError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

impl From<&str> for AgentError {
    fn from(message: &str) -> Self {
        Self::new(message)
    }
}

impl From<String> for AgentError {
    fn from(message: String) -> Self {
        Self::new(message)
    }
}

impl From<BodyError> for AgentError {
    fn from(e: BodyError) -> Self {
        Self::bad_input(e)
    }
}

impl From<serde_json::Error> for AgentError {
    fn from(e: serde_json::Error) -> Self {
        Self::other(e)
    }
}

impl From<std::io::Error> for AgentError {
    fn from(e: std::io::Error) -> Self {
        Self::other(e)
    }
}

impl From<Failure> for AgentError {
    fn from(f: Failure) -> Self {
        let kind = match f.kind {
            FailureKind::BadInput => AgentErrorKind::BadInput,
            FailureKind::Policy => AgentErrorKind::Policy,
            FailureKind::Cancelled => AgentErrorKind::Cancelled,
            _ if f.transient => AgentErrorKind::Transient,
            _ => AgentErrorKind::Permanent,
        };
        Self {
            kind,
            message: f.message.clone(),
            source: None,
            failure: Some(Box::new(f)),
        }
    }
}
