//! Errors of requests and registrations.

use std::time::Duration;

use crate::body::BodyError;
use crate::envelope::{CallChain, Destination, Failure, FailureKind};
use crate::id::IdError;
use crate::transport::{SendError, SendErrorKind, TransportError};

/// A request did not get a good answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Nothing handles messages for that destination: no such agent.
    #[error("no such agent: nothing handles messages to {0}")]
    NoSuchAgent(Destination),
    /// No answer came before the deadline; the handler was told to stop.
    #[error("request to {to} timed out after {after:?}")]
    Timeout {
        /// Where the request went.
        to: Destination,
        /// How long the caller waited.
        after: Duration,
    },
    /// The caller's own work was cancelled while it waited.
    #[error("request to {0} was cancelled")]
    Cancelled(Destination),
    /// The request would have waited on an agent that is itself waiting in the
    /// same call chain: it would never be answered.
    #[error(
        "call cycle: {0} (a request to an agent already waiting in its own call chain would deadlock)"
    )]
    CallCycle(CallChain),
    /// The agent answered with a failure.
    #[error("{0}")]
    Failed(Failure),
    /// The transport could not send the request.
    #[error(transparent)]
    Send(Box<SendError>),
    /// The answer was not the type asked for.
    #[error("bad reply: {0}")]
    BadReply(#[source] BodyError),
    /// The runtime stopped before the answer came.
    #[error("the runtime shut down before the reply arrived")]
    ShuttingDown,
}

impl RequestError {
    /// The failure kind this error corresponds to.
    pub fn kind(&self) -> FailureKind {
        match self {
            RequestError::NoSuchAgent(_) => FailureKind::NoSuchAgent,
            RequestError::Timeout { .. } => FailureKind::Timeout,
            RequestError::Cancelled(_) => FailureKind::Cancelled,
            RequestError::CallCycle(_) => FailureKind::CallCycle,
            RequestError::Failed(f) => f.kind,
            RequestError::Send(e) => match e.kind() {
                SendErrorKind::NoRoute => FailureKind::NoSuchAgent,
                SendErrorKind::Refused => e.failure().map_or(FailureKind::Other, |f| f.kind),
                _ => FailureKind::Other,
            },
            RequestError::BadReply(_) => FailureKind::BadInput,
            RequestError::ShuttingDown => FailureKind::ShuttingDown,
        }
    }

    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            RequestError::Failed(f) => f.transient,
            RequestError::Timeout { .. } | RequestError::ShuttingDown => true,
            RequestError::Send(e) => matches!(
                e.kind(),
                SendErrorKind::Closed | SendErrorKind::Refused | SendErrorKind::Other
            ),
            _ => false,
        }
    }

    /// This error as a failure that can travel in a reply.
    pub fn to_failure(&self) -> Failure {
        match self {
            RequestError::Failed(f) => f.clone(),
            other => {
                let mut f = Failure::new(other.kind(), other.to_string());
                f.transient = other.is_transient();
                f
            }
        }
    }

    pub(crate) fn from_send(e: SendError, to: &Destination) -> Self {
        match e.kind() {
            SendErrorKind::NoRoute => RequestError::NoSuchAgent(to.clone()),
            _ => RequestError::Send(Box::new(e)),
        }
    }

    pub(crate) fn from_failure(f: Failure, to: &Destination) -> Self {
        match f.kind {
            FailureKind::NoSuchAgent => RequestError::NoSuchAgent(to.clone()),
            _ => RequestError::Failed(f),
        }
    }
}

impl From<RequestError> for crate::agent::AgentError {
    /// The failure passes on unchanged (its kind and the agent that failed
    /// first), and the request error stays reachable as the source.
    fn from(e: RequestError) -> Self {
        crate::agent::AgentError::from(e.to_failure()).with_source(e)
    }
}

impl From<SendError> for crate::agent::AgentError {
    fn from(e: SendError) -> Self {
        let transient = !matches!(e.kind(), SendErrorKind::NoRoute | SendErrorKind::TooLarge);
        let msg = e.to_string();
        if transient {
            crate::agent::AgentError::transient(msg).with_source(e)
        } else {
            crate::agent::AgentError::permanent(msg).with_source(e)
        }
    }
}

/// Registering an agent kind failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The kind's name is not valid.
    #[error(transparent)]
    InvalidName(#[from] IdError),
    /// The kind is already registered on this runtime.
    #[error("agent kind {0} is already registered on this runtime")]
    AlreadyRegistered(String),
    /// The runtime is shutting down.
    #[error("the runtime is shutting down")]
    ShuttingDown,
    /// The transport would not attach the kind's route.
    #[error("cannot attach the route: {0}")]
    Transport(#[from] TransportError),
}
