//! The `anthropic-ratelimit-*` response headers, parsed.

use http::HeaderMap;

/// One limit's state as the API reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// The most allowed per minute.
    pub limit: Option<u64>,
    /// What is left now.
    pub remaining: Option<u64>,
    /// When the limit is fully replenished (RFC 3339), as sent.
    pub reset: Option<String>,
}

impl RateLimit {
    fn from_headers(headers: &HeaderMap, name: &str) -> Self {
        let get = |suffix: &str| {
            headers
                .get(format!("anthropic-ratelimit-{name}-{suffix}"))
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        Self {
            limit: get("limit").and_then(|v| v.parse().ok()),
            remaining: get("remaining").and_then(|v| v.parse().ok()),
            reset: get("reset").map(str::to_owned),
        }
    }

    /// When the limit is fully replenished, if `reset` is a valid RFC 3339
    /// time (with any offset, fractional seconds allowed).
    pub fn reset_at(&self) -> Option<std::time::SystemTime> {
        let t = chrono::DateTime::parse_from_rfc3339(self.reset.as_deref()?).ok()?;
        let nanos = u64::try_from(t.timestamp_nanos_opt()?).ok()?;
        std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_nanos(nanos))
    }

    /// Whether the API sent anything for this limit.
    pub fn is_known(&self) -> bool {
        self.limit.is_some() || self.remaining.is_some()
    }
}

/// Every rate limit the API reports on a response.
///
/// # Examples
///
/// ```
/// use coditect_claude::RateLimits;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert("anthropic-ratelimit-requests-limit", "50".parse().unwrap());
/// headers.insert("anthropic-ratelimit-requests-remaining", "49".parse().unwrap());
/// let limits = RateLimits::from_headers(&headers);
/// assert_eq!(limits.requests.limit, Some(50));
/// assert_eq!(limits.input_tokens.limit, None);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimits {
    /// Requests per minute.
    pub requests: RateLimit,
    /// Tokens per minute (the most restrictive token limit).
    pub tokens: RateLimit,
    /// Input tokens per minute.
    pub input_tokens: RateLimit,
    /// Output tokens per minute.
    pub output_tokens: RateLimit,
}

impl RateLimits {
    /// Parses the headers; absent or malformed values are `None`.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        Self {
            requests: RateLimit::from_headers(headers, "requests"),
            tokens: RateLimit::from_headers(headers, "tokens"),
            input_tokens: RateLimit::from_headers(headers, "input-tokens"),
            output_tokens: RateLimit::from_headers(headers, "output-tokens"),
        }
    }
}

/// What a response said besides its body.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResponseMeta {
    /// The HTTP status.
    pub status: u16,
    /// The `request-id` header.
    pub request_id: Option<String>,
    /// The rate-limit headers.
    pub rate_limits: RateLimits,
}

impl ResponseMeta {
    pub(crate) fn from_response(status: u16, headers: &HeaderMap) -> Self {
        Self {
            status,
            request_id: request_id(headers),
            rate_limits: RateLimits::from_headers(headers),
        }
    }
}

pub(crate) fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}
