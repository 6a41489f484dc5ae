//! The client's error type.

use std::fmt;
use std::time::Duration;

use crate::rate_limits::RateLimits;
use crate::sse::SseError;

/// The error types the API reports in `{"type":"error","error":{"type":…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ApiErrorType {
    /// 400: the request is malformed.
    InvalidRequest,
    /// 401: the key is missing or wrong.
    Authentication,
    /// 402: the account's billing stops the request (no credit, a spend limit).
    Billing,
    /// 403: the key may not do this.
    Permission,
    /// 404: no such resource.
    NotFound,
    /// 413: the request is over 32 MB.
    RequestTooLarge,
    /// 429: a rate limit was hit.
    RateLimit,
    /// 500: the API failed.
    Api,
    /// 504: the API timed out while processing the request.
    Timeout,
    /// 529: the API is overloaded.
    Overloaded,
    /// A type this crate does not know yet (kept verbatim).
    Other(String),
}

impl ApiErrorType {
    /// Parses the wire name; unknown names are kept as [`ApiErrorType::Other`].
    pub fn parse(s: &str) -> Self {
        match s {
            "invalid_request_error" => Self::InvalidRequest,
            "authentication_error" => Self::Authentication,
            "billing_error" => Self::Billing,
            "permission_error" => Self::Permission,
            "not_found_error" => Self::NotFound,
            "request_too_large" => Self::RequestTooLarge,
            "rate_limit_error" => Self::RateLimit,
            "api_error" => Self::Api,
            "timeout_error" => Self::Timeout,
            "overloaded_error" => Self::Overloaded,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The type the API uses for an HTTP status, when the body does not say.
    pub fn from_status(status: u16) -> Self {
        match status {
            400 => Self::InvalidRequest,
            401 => Self::Authentication,
            402 => Self::Billing,
            403 => Self::Permission,
            404 => Self::NotFound,
            413 => Self::RequestTooLarge,
            429 => Self::RateLimit,
            504 => Self::Timeout,
            529 => Self::Overloaded,
            s if s >= 500 => Self::Api,
            s => Self::Other(format!("http_{s}")),
        }
    }

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidRequest => "invalid_request_error",
            Self::Authentication => "authentication_error",
            Self::Billing => "billing_error",
            Self::Permission => "permission_error",
            Self::NotFound => "not_found_error",
            Self::RequestTooLarge => "request_too_large",
            Self::RateLimit => "rate_limit_error",
            Self::Api => "api_error",
            Self::Timeout => "timeout_error",
            Self::Overloaded => "overloaded_error",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ApiErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error the API answered with (an HTTP error status or an `error` stream event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status; for an `error` event inside a stream, the stream's status (200).
    pub status: u16,
    /// The error type.
    pub error_type: ApiErrorType,
    /// The API's message.
    pub message: String,
    /// The `request-id` header, for support requests.
    pub request_id: Option<String>,
    /// The delay the API asked for (`retry-after-ms` / `retry-after`), if any.
    pub retry_after: Option<Duration>,
    /// The rate-limit headers of the response.
    pub rate_limits: RateLimits,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (status {}): {}",
            self.error_type, self.status, self.message
        )?;
        if let Some(id) = &self.request_id {
            write!(f, " [request {id}]")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// Which timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeoutKind {
    /// Opening the connection.
    Connect,
    /// Waiting for the response headers of a streaming request.
    FirstByte,
    /// Waiting for the next chunk of a stream.
    StreamIdle,
    /// The whole non-streaming request.
    Request,
}

impl fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::FirstByte => "first byte",
            Self::StreamIdle => "stream idle",
            Self::Request => "request",
        })
    }
}

/// What kind of failure an [`Error`] is, for callers that decide by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// 400 `invalid_request_error`.
    InvalidRequest,
    /// 401 `authentication_error`.
    Authentication,
    /// 402 `billing_error`: not retried, the account must be fixed first.
    Billing,
    /// 403 `permission_error`.
    Permission,
    /// 404 `not_found_error`.
    NotFound,
    /// 413 `request_too_large`, or refused locally before sending.
    RequestTooLarge,
    /// 429 `rate_limit_error`.
    RateLimited,
    /// 500 `api_error` and other 5xx.
    ServerError,
    /// 504 `timeout_error`: the API gave up on the request (retried). A
    /// timeout of this client is [`ErrorKind::Timeout`].
    ApiTimeout,
    /// 529 `overloaded_error`.
    Overloaded,
    /// An API error of a type this crate does not know.
    OtherApi,
    /// The connection failed or broke.
    Transport,
    /// A timeout fired.
    Timeout,
    /// The stream broke its protocol: it ended without `message_stop`, or its events
    /// contradict each other.
    Stream,
    /// Bytes that are not valid SSE or JSON.
    Decode,
    /// The client is misconfigured (no key, bad URL).
    Config,
    /// A structured-output answer did not match the requested type.
    StructuredOutput,
}

/// An error of the Claude client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The API answered with an error.
    #[error("api error: {0}")]
    Api(Box<ApiError>),
    /// The connection failed or broke.
    #[error("transport error: {}", chain(.0))]
    Transport(#[source] reqwest::Error),
    /// A timeout fired.
    #[error("{0} timeout")]
    Timeout(TimeoutKind),
    /// The stream broke its protocol.
    #[error("stream error: {0}")]
    Stream(String),
    /// The bytes of the event stream were not valid SSE.
    #[error("invalid event stream: {0}")]
    Sse(#[from] SseError),
    /// A body or event was not the JSON expected.
    #[error("invalid {what}: {message}")]
    Decode {
        /// What was being decoded.
        what: &'static str,
        /// Why it failed.
        message: String,
    },
    /// The request is over the API's size limit; it was not sent.
    #[error("request of {size} bytes exceeds the {limit} byte limit")]
    RequestTooLarge {
        /// The serialized size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The client is misconfigured.
    #[error("configuration error: {0}")]
    Config(String),
    /// A structured-output answer did not match the requested type.
    #[error("structured output invalid: {message}; got: {raw}")]
    StructuredOutput {
        /// Why it did not match.
        message: String,
        /// What came back (the tool input as JSON, or the text).
        raw: String,
    },
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Api(e) => match e.error_type {
                ApiErrorType::InvalidRequest => ErrorKind::InvalidRequest,
                ApiErrorType::Authentication => ErrorKind::Authentication,
                ApiErrorType::Billing => ErrorKind::Billing,
                ApiErrorType::Permission => ErrorKind::Permission,
                ApiErrorType::NotFound => ErrorKind::NotFound,
                ApiErrorType::RequestTooLarge => ErrorKind::RequestTooLarge,
                ApiErrorType::RateLimit => ErrorKind::RateLimited,
                ApiErrorType::Api => ErrorKind::ServerError,
                ApiErrorType::Timeout => ErrorKind::ApiTimeout,
                ApiErrorType::Overloaded => ErrorKind::Overloaded,
                ApiErrorType::Other(_) => ErrorKind::OtherApi,
            },
            Self::Transport(_) => ErrorKind::Transport,
            Self::Timeout(_) => ErrorKind::Timeout,
            Self::Stream(_) => ErrorKind::Stream,
            Self::Sse(_) | Self::Decode { .. } => ErrorKind::Decode,
            Self::RequestTooLarge { .. } => ErrorKind::RequestTooLarge,
            Self::Config(_) => ErrorKind::Config,
            Self::StructuredOutput { .. } => ErrorKind::StructuredOutput,
        }
    }

    /// The API error, if the API answered with one.
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::Api(e) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// The `request-id` of the failed request, when known.
    pub fn request_id(&self) -> Option<&str> {
        self.api_error().and_then(|e| e.request_id.as_deref())
    }

    /// Whether trying again later may succeed (the same rule the retry loop uses,
    /// without the `x-should-retry` header). A broken stream counts as transient.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api(e) => {
                // An `error` event inside a stream comes with status 200:
                // its type says whether the API failed on its side.
                crate::retry::status_is_retryable(e.status)
                    || matches!(
                        e.error_type,
                        ApiErrorType::Overloaded | ApiErrorType::Timeout
                    )
            }
            Self::Transport(_) | Self::Timeout(_) | Self::Stream(_) => true,
            _ => false,
        }
    }

    pub(crate) fn decode(what: &'static str, err: impl fmt::Display) -> Self {
        Self::Decode {
            what,
            message: err.to_string(),
        }
    }
}

/// An error and its sources on one line: reqwest's own message hides the cause
/// ("error sending request" — connection refused? DNS? TLS?).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
