//! When and how long to wait before trying a failed request again.
//!
//! The rules are the official SDKs': connection errors, timeouts, 408, 409, 429 and
//! every status ≥ 500 are retried; `x-should-retry` overrides either way; the delay is
//! the API's `retry-after-ms`/`retry-after` when it is within 0–60 s, else
//! `min(0.5 s · 2^n, 8 s)` times a jitter factor in (0.75, 1].

use std::time::Duration;

use http::HeaderMap;

/// How many times and how patiently to retry.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use coditect_claude::RetryPolicy;
///
/// let policy = RetryPolicy { max_retries: 5, ..RetryPolicy::default() };
/// assert_eq!(policy.initial_backoff, Duration::from_millis(500));
/// // Without jitter the n-th retry waits 0.5 s · 2^n, capped.
/// let exact = RetryPolicy { jitter: false, ..policy };
/// assert_eq!(exact.backoff(0), Duration::from_millis(500));
/// assert_eq!(exact.backoff(10), Duration::from_secs(8));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (so `max_retries + 1` attempts in all).
    pub max_retries: u32,
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
    /// Multiply each backoff by a random factor in (0.75, 1] so that many clients
    /// that failed together do not retry together.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The backoff before retry number `retry` (0-based), jitter included.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = 2f64.powi(retry.min(30) as i32);
        let secs = (self.initial_backoff.as_secs_f64() * exp).min(self.max_backoff.as_secs_f64());
        let factor = if self.jitter {
            1.0 - rand::random::<f64>() * 0.25
        } else {
            1.0
        };
        Duration::try_from_secs_f64((secs * factor).max(0.0)).unwrap_or(self.max_backoff)
    }

    /// The delay before retry number `retry`: the API's own when it asked for 0–60 s.
    pub(crate) fn delay(&self, retry: u32, headers: Option<&HeaderMap>) -> Duration {
        headers
            .and_then(retry_after)
            .filter(|d| *d <= Duration::from_secs(60))
            .unwrap_or_else(|| self.backoff(retry))
    }
}

/// Whether an HTTP status is worth retrying (before `x-should-retry`).
pub(crate) fn status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 409 | 429) || status >= 500
}

/// Whether to retry a response with this status and headers.
pub(crate) fn should_retry(status: u16, headers: &HeaderMap) -> bool {
    match headers.get("x-should-retry").and_then(|v| v.to_str().ok()) {
        Some("true") => true,
        Some("false") => false,
        _ => status_is_retryable(status),
    }
}

/// The delay the API asked for: `retry-after-ms` (milliseconds, may be fractional)
/// first, then `retry-after` in seconds. HTTP-date forms are ignored.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let parse = |name: &str, scale: f64| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| v.is_finite() && *v >= 0.0)
            .and_then(|v| Duration::try_from_secs_f64(v * scale).ok())
    };
    parse("retry-after-ms", 0.001).or_else(|| parse("retry-after", 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn statuses_follow_the_sdk_rules() {
        for s in [408, 409, 429, 500, 502, 503, 529] {
            assert!(should_retry(s, &HeaderMap::new()), "{s}");
        }
        for s in [400, 401, 403, 404, 413, 422] {
            assert!(!should_retry(s, &HeaderMap::new()), "{s}");
        }
        assert!(should_retry(400, &headers(&[("x-should-retry", "true")])));
        assert!(!should_retry(529, &headers(&[("x-should-retry", "false")])));
    }

    #[test]
    fn retry_after_prefers_ms_and_is_ignored_past_a_minute() {
        let p = RetryPolicy {
            jitter: false,
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.delay(
                0,
                Some(&headers(&[
                    ("retry-after-ms", "1500"),
                    ("retry-after", "9")
                ]))
            ),
            Duration::from_millis(1500)
        );
        assert_eq!(
            p.delay(0, Some(&headers(&[("retry-after", "3")]))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(1, Some(&headers(&[("retry-after", "120")]))),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.delay(2, Some(&headers(&[("retry-after", "soon")]))),
            Duration::from_secs(2)
        );
        assert_eq!(
            p.delay(0, Some(&headers(&[("retry-after", "-1")]))),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn jitter_stays_within_a_quarter_below() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let d = p.backoff(1);
            assert!(
                d > Duration::from_millis(750) && d <= Duration::from_secs(1),
                "{d:?}"
            );
        }
    }
}
