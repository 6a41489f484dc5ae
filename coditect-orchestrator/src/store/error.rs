//! The store's one error type, [`StoreError`], and its [`StoreErrorKind`].

use std::error::Error as StdError;
use std::fmt;
use std::time::SystemTime;

use crate::RunId;

use super::{FencingToken, RunStatus};

/// A boxed error from a backend (SQLite, PostgreSQL, NATS, I/O), kept as the
/// [`source`](std::error::Error::source) of a [`StoreError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a store operation failed.
///
/// Every variant names the run it is about (and, for a stored record, its
/// sequence number), so an error read in a log says where to look.
/// [`StoreError::kind`] gives a field-less kind to `match` on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another writer appended first: the journal's next sequence number is
    /// `actual`, not the `expected` one the append was made for. Read the
    /// journal again from `expected` and decide.
    #[error("run {run}: journal conflict: expected next seq {expected}, it is {actual}")]
    Conflict {
        /// The run.
        run: RunId,
        /// The next sequence number the writer expected.
        expected: u64,
        /// The journal's actual next sequence number.
        actual: u64,
    },
    /// The run's lease is held by another holder until `expires`.
    #[error("run {run} is busy: leased by {holder:?} until {}", fmt_time(*expires))]
    Busy {
        /// The run.
        run: RunId,
        /// Who holds the lease.
        holder: String,
        /// When the lease expires unless it is renewed.
        expires: SystemTime,
    },
    /// The write carried a fencing token that is no longer the run's current
    /// one (a newer lease was taken), or none while the run is leased: this
    /// writer must stop driving the run.
    #[error("run {run}: fenced: the write carried {}, the run's current fencing token is {current}", fmt_token(*token))]
    Fenced {
        /// The run.
        run: RunId,
        /// The token the write carried (`None`: no lease).
        token: Option<FencingToken>,
        /// The run's current token (0: never leased).
        current: u64,
    },
    /// No such run in the store.
    #[error("run {run}: not found")]
    NotFound {
        /// The run.
        run: RunId,
    },
    /// A run with this id already exists.
    #[error("run {run}: already exists")]
    AlreadyExists {
        /// The run.
        run: RunId,
    },
    /// The run is not finished (it is running or paused), so it may not be
    /// deleted.
    #[error("run {run} is {status}: only a finished, failed or cancelled run can be deleted")]
    RunActive {
        /// The run.
        run: RunId,
        /// Its status.
        status: RunStatus,
    },
    /// A record or snapshot is larger than the store's limit; nothing was
    /// written.
    #[error(
        "run {run}: a {what} of {size} bytes is over the limit of {limit} bytes; nothing was written"
    )]
    TooLarge {
        /// The run.
        run: RunId,
        /// `"record"` or `"snapshot"`, or `"append"` for a batch over a
        /// backend's own message limit.
        what: &'static str,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// A stored record or snapshot does not decode (checksum, length, or a
    /// sequence number that does not match its place).
    #[error("run {run}: stored {what} at seq {seq} is corrupt: {reason}")]
    Corrupt {
        /// The run.
        run: RunId,
        /// The sequence number of the record (or the snapshot's).
        seq: u64,
        /// `"record"` or `"snapshot"`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A stored record or snapshot has a format version this build does not
    /// know (written by a newer coditect): upgrade before reading this run.
    #[error(
        "run {run}: stored {what} at seq {seq} has format version {version}; this build reads up to {supported}"
    )]
    UnsupportedVersion {
        /// The run.
        run: RunId,
        /// The sequence number of the record (or the snapshot's).
        seq: u64,
        /// `"record"` or `"snapshot"`.
        what: &'static str,
        /// The version found.
        version: u8,
        /// The newest version this build reads.
        supported: u8,
    },
    /// The call itself is invalid (an empty record kind, a limit of 0, a
    /// cursor that is not one of ours).
    #[error("invalid store call: {0}")]
    Invalid(String),
    /// The backend failed (I/O, the database, the connection); the source
    /// says how.
    #[error("{backend} store: {op} failed")]
    Backend {
        /// `"sqlite"`, `"postgres"`, `"nats"`.
        backend: &'static str,
        /// What the store was doing.
        op: &'static str,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
}

/// What kind of failure a [`StoreError`] is, to `match` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// [`StoreError::Conflict`].
    Conflict,
    /// [`StoreError::Busy`].
    Busy,
    /// [`StoreError::Fenced`].
    Fenced,
    /// [`StoreError::NotFound`].
    NotFound,
    /// [`StoreError::AlreadyExists`].
    AlreadyExists,
    /// [`StoreError::RunActive`].
    RunActive,
    /// [`StoreError::TooLarge`].
    TooLarge,
    /// [`StoreError::Corrupt`].
    Corrupt,
    /// [`StoreError::UnsupportedVersion`].
    UnsupportedVersion,
    /// [`StoreError::Invalid`].
    Invalid,
    /// [`StoreError::Backend`].
    Backend,
}

impl StoreError {
    /// The kind of failure.
    ///
    /// ```
    /// use coditect_orchestrator::RunId;
    /// use coditect_orchestrator::store::{StoreError, StoreErrorKind};
    /// let e = StoreError::NotFound { run: RunId::new() };
    /// assert_eq!(e.kind(), StoreErrorKind::NotFound);
    /// ```
    pub fn kind(&self) -> StoreErrorKind {
        match self {
            Self::Conflict { .. } => StoreErrorKind::Conflict,
            Self::Busy { .. } => StoreErrorKind::Busy,
            Self::Fenced { .. } => StoreErrorKind::Fenced,
            Self::NotFound { .. } => StoreErrorKind::NotFound,
            Self::AlreadyExists { .. } => StoreErrorKind::AlreadyExists,
            Self::RunActive { .. } => StoreErrorKind::RunActive,
            Self::TooLarge { .. } => StoreErrorKind::TooLarge,
            Self::Corrupt { .. } => StoreErrorKind::Corrupt,
            Self::UnsupportedVersion { .. } => StoreErrorKind::UnsupportedVersion,
            Self::Invalid(_) => StoreErrorKind::Invalid,
            Self::Backend { .. } => StoreErrorKind::Backend,
        }
    }

    /// A backend failure with its source.
    #[allow(dead_code)] // Unused when no backend feature is on.
    pub(crate) fn backend(
        backend: &'static str,
        op: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        Self::Backend {
            backend,
            op,
            source: source.into(),
        }
    }
}

fn fmt_token(t: Option<FencingToken>) -> String {
    match t {
        Some(t) => format!("token {}", t.get()),
        None => "no token".to_owned(),
    }
}

fn fmt_time(t: SystemTime) -> String {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => format!("{}.{:03}s after the epoch", d.as_secs(), d.subsec_millis()),
        Err(_) => "before the epoch".to_owned(),
    }
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}
