//! The one error family of the MCP edge, with a [`McpErrorKind`] to match on.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong talking MCP, for callers that decide by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum McpErrorKind {
    /// The server's process could not be started (no such program, no permission).
    Spawn,
    /// The MCP handshake (or the first tool listing) failed.
    Connect,
    /// The server wrote something that is not MCP's JSON-RPC: the session
    /// was closed, since nothing after it can be trusted.
    OffProtocol,
    /// The server's process exited or its connection closed while a call was
    /// waiting (or before it was sent).
    ServerDied,
    /// The server died too often and is no longer restarted.
    Unavailable,
    /// A call took longer than the server's call timeout; the server was told
    /// to cancel it.
    Timeout,
    /// The caller gave up on the call; the server was told to cancel it.
    Cancelled,
    /// The server answered the request with a JSON-RPC error (an unknown
    /// tool, invalid parameters, an internal error).
    Rejected,
    /// The tool is not one the caller was granted, or the server has no such tool.
    NotAllowed,
    /// A coditect MCP server could not start serving (the address is taken, say).
    Serve,
}

/// An error of the MCP edge: which server, what happened, and why.
///
/// # Examples
///
/// ```
/// use coditect_agents::mcp::{McpError, McpErrorKind};
///
/// let e = McpError::new(McpErrorKind::Timeout, "files", "tool read_file did not answer within 5s");
/// assert_eq!(e.kind(), McpErrorKind::Timeout);
/// assert_eq!(e.server(), "files");
/// assert_eq!(e.to_string(), "mcp server files: tool read_file did not answer within 5s");
/// ```
pub struct McpError {
    kind: McpErrorKind,
    server: String,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync>>,
}

impl McpError {
    /// An error of `kind` about `server`.
    pub fn new(kind: McpErrorKind, server: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            server: server.into(),
            message: message.into(),
            source: None,
        }
    }

    /// The same error, caused by `source`.
    #[must_use]
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> McpErrorKind {
        self.kind
    }

    /// The name of the server it concerns.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// What happened, without the server's name.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Debug for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpError")
            .field("kind", &self.kind)
            .field("server", &self.server)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for McpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "mcp server {}: {}", self.server, self.message)
    }
}

impl StdError for McpError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}
