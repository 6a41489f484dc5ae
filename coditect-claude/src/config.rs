//! Client configuration: the key, where to send requests, timeouts and retries.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::governor::RateGovernor;
use crate::retry::RetryPolicy;

/// The public endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The API version this crate speaks.
pub const API_VERSION: &str = "2023-06-01";
/// The API refuses requests over 32 MB; this client refuses them before sending.
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;

/// An API key. It is never printed: `Debug` shows `ApiKey(<redacted>)`, there is no
/// `Display`, and the header it goes into is marked sensitive.
///
/// # Examples
///
/// ```
/// use coditect_claude::ApiKey;
///
/// let key = ApiKey::new("sk-ant-secret");
/// assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(Arc<str>);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(Arc::from(key.into()))
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl From<String> for ApiKey {
    fn from(key: String) -> Self {
        Self::new(key)
    }
}

impl From<&str> for ApiKey {
    fn from(key: &str) -> Self {
        Self::new(key)
    }
}

/// The client's timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Opening a connection (applies when the client builds its own `reqwest::Client`).
    pub connect: Duration,
    /// From sending a streaming request to its response headers.
    pub first_byte: Duration,
    /// The longest silence between two chunks of a stream (the API pings while idle).
    pub stream_idle: Duration,
    /// One whole non-streaming attempt, body included.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(120),
            stream_idle: Duration::from_secs(90),
            request: Duration::from_secs(600),
        }
    }
}

/// Builds a [`Client`](crate::Client).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use coditect_claude::{Client, RetryPolicy};
///
/// let client = Client::builder()
///     .api_key("sk-ant-example")
///     .base_url("http://127.0.0.1:9")
///     .beta("prompt-caching-2024-07-31")
///     .retry(RetryPolicy { max_retries: 4, ..RetryPolicy::default() })
///     .build()?;
/// assert_eq!(client.base_url(), "http://127.0.0.1:9");
/// # Ok::<_, coditect_claude::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientBuilder {
    pub(crate) api_key: Option<ApiKey>,
    pub(crate) base_url: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) betas: Vec<String>,
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: RetryPolicy,
    pub(crate) http: Option<reqwest::Client>,
    pub(crate) governor: Option<Arc<RateGovernor>>,
    pub(crate) tenant: Option<String>,
    pub(crate) max_request_bytes: Option<usize>,
}

impl ClientBuilder {
    /// Takes what is not set yet from `ANTHROPIC_API_KEY` and `ANTHROPIC_BASE_URL`.
    pub fn from_env(mut self) -> Self {
        if self.api_key.is_none() {
            self.api_key = std::env::var("ANTHROPIC_API_KEY")
                .ok()
                .filter(|k| !k.trim().is_empty())
                .map(ApiKey::new);
        }
        if self.base_url.is_none() {
            self.base_url = std::env::var("ANTHROPIC_BASE_URL")
                .ok()
                .filter(|u| !u.trim().is_empty());
        }
        self
    }

    /// Sets the API key.
    pub fn api_key(mut self, key: impl Into<ApiKey>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// Sets the base URL (default [`DEFAULT_BASE_URL`]).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Sets the `anthropic-version` header (default [`API_VERSION`]).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = Some(version.into());
        self
    }

    /// Adds an `anthropic-beta` feature.
    pub fn beta(mut self, beta: impl Into<String>) -> Self {
        self.betas.push(beta.into());
        self
    }

    /// Sets the timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Shares an existing `reqwest::Client` (its connection pool, proxy and TLS settings).
    pub fn http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// Sends every request through this governor (share one per API key).
    pub fn governor(mut self, governor: Arc<RateGovernor>) -> Self {
        self.governor = Some(governor);
        self
    }

    /// The tenant (run, team…) this client's requests count against in the governor.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Overrides the local request size limit (default [`MAX_REQUEST_BYTES`]).
    pub fn max_request_bytes(mut self, limit: usize) -> Self {
        self.max_request_bytes = Some(limit);
        self
    }

    /// Builds the client.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no API key was given or found, the base URL is not
    /// http(s), or the HTTP client cannot be built.
    pub fn build(self) -> Result<crate::Client> {
        crate::Client::from_builder(self)
    }

    pub(crate) fn build_http(&self) -> Result<reqwest::Client> {
        if let Some(http) = &self.http {
            return Ok(http.clone());
        }
        reqwest::Client::builder()
            .connect_timeout(self.timeouts.connect)
            .user_agent(concat!("coditect-claude/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("cannot build http client: {e}")))
    }
}
