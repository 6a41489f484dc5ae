//! Errors of the NATS transport's own operations (connecting, setting up
//! streams); sends and attaches report the core [`crate::SendError`] and
//! [`crate::TransportError`].

use crate::transport::{TransportError, TransportErrorKind};

/// What went wrong talking to NATS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NatsErrorKind {
    /// Could not connect (bad URL, server down, TLS or credentials rejected).
    Connect,
    /// The options are invalid (unreadable credentials file, say).
    Options,
    /// A JetStream stream or consumer could not be set up.
    JetStream,
    /// The server refused it for these credentials.
    PermissionDenied,
}

/// An error of the NATS transport.
#[derive(Debug, Clone, thiserror::Error)]
#[error("nats {what}: {message}", what = kind_name(*.kind))]
pub struct NatsError {
    kind: NatsErrorKind,
    message: String,
}

fn kind_name(k: NatsErrorKind) -> &'static str {
    match k {
        NatsErrorKind::Connect => "connect",
        NatsErrorKind::Options => "options",
        NatsErrorKind::JetStream => "jetstream",
        NatsErrorKind::PermissionDenied => "permission denied",
    }
}

impl NatsError {
    pub(crate) fn new(kind: NatsErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> NatsErrorKind {
        self.kind
    }
}

impl From<NatsError> for TransportError {
    fn from(e: NatsError) -> Self {
        let kind = match e.kind {
            NatsErrorKind::Connect => TransportErrorKind::Connection,
            NatsErrorKind::PermissionDenied => TransportErrorKind::PermissionDenied,
            NatsErrorKind::Options | NatsErrorKind::JetStream => TransportErrorKind::Other,
        };
        TransportError::new(kind, e.to_string())
    }
}
