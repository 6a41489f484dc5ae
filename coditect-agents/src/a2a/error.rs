//! The error of every A2A operation coditect performs: connecting to a remote
//! agent, calling it, publishing and serving agents.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong at the A2A edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum A2aErrorKind {
    /// The URL, token or option given was not usable.
    Config,
    /// The peer could not be reached (refused, reset, timed out on connect).
    Connect,
    /// The peer refused the credentials (HTTP 401 or 403).
    Unauthorized,
    /// The peer answered something that is not A2A: a body that is not an
    /// agent card, a JSON-RPC answer without a result, an unknown event.
    Protocol,
    /// The peer answered with an A2A / JSON-RPC error; see
    /// [`A2aError::code`].
    Remote,
    /// The remote task ended failed or rejected.
    TaskFailed,
    /// The remote task was cancelled.
    Cancelled,
    /// The caller's deadline passed before the remote task finished.
    Deadline,
    /// The run's budget (tokens, cost) was spent before the call.
    Budget,
    /// The published agent kind is not registered on the runtime.
    UnknownKind,
    /// Binding or serving the HTTP listener failed.
    Serve,
}

/// An error at the A2A edge, with a [`kind`](A2aError::kind) to match on,
/// the peer's A2A error code where it sent one, and the cause chained.
///
/// ```
/// use coditect_agents::a2a::{A2aError, A2aErrorKind};
/// let e = A2aError::new(A2aErrorKind::Config, "bearer token is empty");
/// assert_eq!(e.kind(), A2aErrorKind::Config);
/// assert_eq!(e.to_string(), "bearer token is empty");
/// ```
pub struct A2aError {
    kind: A2aErrorKind,
    message: String,
    code: Option<i32>,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl A2aError {
    /// An error of `kind` with a short lowercase message.
    pub fn new(kind: A2aErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            code: None,
            source: None,
        }
    }

    /// Attaches a cause.
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Which kind of error this is.
    pub fn kind(&self) -> A2aErrorKind {
        self.kind
    }

    /// The A2A / JSON-RPC error code the peer answered with, if it did
    /// (`-32700` parse error, `-32600` invalid request, `-32602` invalid
    /// params, `-32001` task not found, …).
    pub fn code(&self) -> Option<i32> {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether trying again may help (the peer was unreachable).
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, A2aErrorKind::Connect)
    }

    /// An error the SDK reported for a call to `peer`, classified.
    pub(crate) fn from_sdk(peer: &str, e: a2a_types::A2AError) -> Self {
        use a2a_types::error_code;
        let message = e.message.to_lowercase();
        // The SDK's HTTP transport reports transport failures as internal
        // errors whose message starts with a fixed phrase; they are the
        // SDK's own words, not the peer's, so reading them is stable.
        let kind =
            if e.code == error_code::INTERNAL_ERROR && message.starts_with("http request failed") {
                A2aErrorKind::Connect
            } else if e.code == error_code::INTERNAL_ERROR
                && (message.starts_with("failed to parse")
                    || message.starts_with("failed to deserialize"))
            {
                A2aErrorKind::Protocol
            } else if e.code == UNAUTHENTICATED_CODE {
                A2aErrorKind::Unauthorized
            } else {
                A2aErrorKind::Remote
            };
        let mut err = Self::new(kind, format!("a2a agent {peer}: {}", e.message));
        if kind == A2aErrorKind::Remote || kind == A2aErrorKind::Unauthorized {
            err.code = Some(e.code);
        }
        err.with_source(e)
    }
}

/// The JSON-RPC error code coditect's A2A server puts in the body of its
/// HTTP 401 answer (a server-defined code from JSON-RPC's reserved range;
/// A2A itself signals authentication at the HTTP layer).
pub const UNAUTHENTICATED_CODE: i32 = -32040;

impl fmt::Debug for A2aError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("A2aError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("code", &self.code)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for A2aError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for A2aError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
