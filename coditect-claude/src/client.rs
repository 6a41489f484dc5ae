//! The client: one HTTP pipeline (headers, size check, governor, timeouts, retries)
//! under every endpoint.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::Method;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use crate::config::{
    API_VERSION, ApiKey, ClientBuilder, DEFAULT_BASE_URL, MAX_REQUEST_BYTES, Timeouts,
};
use crate::error::{ApiError, ApiErrorType, Error, Result, TimeoutKind};
use crate::governor::{GovernorPermit, RateGovernor};
use crate::rate_limits::{RateLimits, ResponseMeta, request_id};
use crate::retry::{self, RetryPolicy};
use crate::stream::MessageStream;
use crate::types::{Message, MessageRequest};

/// A client for the Claude API. Cheap to clone; clones share connections.
///
/// # Examples
///
/// ```no_run
/// use coditect_claude::{Client, types::MessageRequest};
///
/// # async fn run() -> Result<(), coditect_claude::Error> {
/// let client = Client::from_env()?; // ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL
/// let req = MessageRequest::new("claude-sonnet-4-5", 512).user("Say hi.");
/// let message = client.messages().create(&req).await?;
/// println!("{}", message.text());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    tenant: Arc<str>,
}

struct Inner {
    http: reqwest::Client,
    base_url: String,
    headers: HeaderMap,
    timeouts: Timeouts,
    retry: RetryPolicy,
    governor: Option<Arc<RateGovernor>>,
    max_request_bytes: usize,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The headers hold the key: show neither.
        f.debug_struct("Client")
            .field("base_url", &self.inner.base_url)
            .field("tenant", &self.tenant)
            .field("timeouts", &self.inner.timeouts)
            .field("retry", &self.inner.retry)
            .field("governed", &self.inner.governor.is_some())
            .finish_non_exhaustive()
    }
}

/// What a successful attempt produced.
pub(crate) struct Sent {
    pub(crate) meta: ResponseMeta,
    pub(crate) permit: Option<GovernorPermit>,
    pub(crate) body: SentBody,
}

pub(crate) enum SentBody {
    Full(Bytes),
    Stream(reqwest::Response),
}

struct Failure {
    error: Error,
    headers: Option<HeaderMap>,
    retry: bool,
}

impl Client {
    /// A builder with nothing set.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// A client configured from `ANTHROPIC_API_KEY` and `ANTHROPIC_BASE_URL`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `ANTHROPIC_API_KEY` is not set.
    pub fn from_env() -> Result<Self> {
        Self::builder().from_env().build()
    }

    pub(crate) fn from_builder(b: ClientBuilder) -> Result<Self> {
        let key: ApiKey = b
            .api_key
            .clone()
            .ok_or_else(|| Error::Config("no api key: set ANTHROPIC_API_KEY or give one".into()))?;
        let base_url = b
            .base_url
            .clone()
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            return Err(Error::Config(format!(
                "base url must be http(s): {base_url}"
            )));
        }
        let mut headers = HeaderMap::new();
        let mut key_value = HeaderValue::from_str(key.expose())
            .map_err(|_| Error::Config("api key has characters not allowed in a header".into()))?;
        key_value.set_sensitive(true);
        headers.insert("x-api-key", key_value);
        let version = b.version.clone().unwrap_or_else(|| API_VERSION.to_owned());
        headers.insert(
            "anthropic-version",
            HeaderValue::from_str(&version)
                .map_err(|_| Error::Config("invalid anthropic-version".into()))?,
        );
        if !b.betas.is_empty() {
            headers.insert(
                "anthropic-beta",
                HeaderValue::from_str(&b.betas.join(","))
                    .map_err(|_| Error::Config("invalid anthropic-beta".into()))?,
            );
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let http = b.build_http()?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base_url,
                headers,
                timeouts: b.timeouts,
                retry: b.retry,
                governor: b.governor.clone(),
                max_request_bytes: b.max_request_bytes.unwrap_or(MAX_REQUEST_BYTES),
            }),
            tenant: Arc::from(b.tenant.unwrap_or_else(|| "default".to_owned())),
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The same client, counting its requests against `tenant` in the governor.
    pub fn for_tenant(&self, tenant: impl Into<String>) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            tenant: Arc::from(tenant.into()),
        }
    }

    /// The governor this client goes through, if any.
    pub fn governor(&self) -> Option<&Arc<RateGovernor>> {
        self.inner.governor.as_ref()
    }

    /// The Messages API.
    pub fn messages(&self) -> Messages<'_> {
        Messages { client: self }
    }

    /// Sends a request with retries and returns the successful response.
    pub(crate) async fn execute(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        streaming: bool,
    ) -> Result<Sent> {
        if let Some(b) = &body
            && b.len() > self.inner.max_request_bytes
        {
            return Err(Error::RequestTooLarge {
                size: b.len(),
                limit: self.inner.max_request_bytes,
            });
        }
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{}", self.inner.base_url, path)
        };
        // A rough input-token estimate for the governor; the response corrects it.
        let estimate = body.as_ref().map_or(0, |b| (b.len() / 4) as u64);
        let mut retries = 0;
        loop {
            let permit = match &self.inner.governor {
                Some(g) => Some(g.acquire(&self.tenant, estimate).await),
                None => None,
            };
            match self
                .attempt(&method, &url, body.clone(), streaming, &permit)
                .await
            {
                Ok((meta, body)) => return Ok(Sent { meta, permit, body }),
                Err(failure) => {
                    drop(permit);
                    if !failure.retry || retries >= self.inner.retry.max_retries {
                        return Err(failure.error);
                    }
                    let delay = self.inner.retry.delay(retries, failure.headers.as_ref());
                    tracing::warn!(
                        error = %failure.error,
                        retry = retries + 1,
                        delay_ms = delay.as_millis() as u64,
                        "claude request failed, retrying"
                    );
                    tokio::time::sleep(delay).await;
                    retries += 1;
                }
            }
        }
    }

    async fn attempt(
        &self,
        method: &Method,
        url: &str,
        body: Option<Bytes>,
        streaming: bool,
        permit: &Option<GovernorPermit>,
    ) -> Result<(ResponseMeta, SentBody), Failure> {
        let timeouts = &self.inner.timeouts;
        let (limit, kind) = if streaming {
            (timeouts.first_byte, TimeoutKind::FirstByte)
        } else {
            (timeouts.request, TimeoutKind::Request)
        };
        let deadline = deadline_after(limit);
        let mut req = self
            .inner
            .http
            .request(method.clone(), url)
            .headers(self.inner.headers.clone());
        if let Some(body) = body {
            req = req.body(body);
        }
        let transient = |error| Failure {
            error,
            headers: None,
            retry: true,
        };
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => return Err(transient(Error::Timeout(kind))),
            Ok(Err(e)) => return Err(transport_failure(e, kind)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let meta = ResponseMeta::from_response(status, &headers);
        if let Some(p) = permit {
            p.observe(&meta.rate_limits);
        }
        if resp.status().is_success() {
            if streaming {
                return Ok((meta, SentBody::Stream(resp)));
            }
            return match tokio::time::timeout_at(deadline, resp.bytes()).await {
                Err(_) => Err(transient(Error::Timeout(kind))),
                Ok(Err(e)) => Err(transport_failure(e, kind)),
                Ok(Ok(bytes)) => Ok((meta, SentBody::Full(bytes))),
            };
        }
        // An error body that cannot be read still leaves a typed error by status.
        let body = match tokio::time::timeout_at(deadline, resp.bytes()).await {
            Ok(Ok(b)) => b,
            _ => Bytes::new(),
        };
        let error = api_error(status, &headers, &body);
        if status == 429
            && let Some(p) = permit
        {
            p.rate_limited(error.retry_after);
        }
        Err(Failure {
            retry: retry::should_retry(status, &headers),
            error: Error::Api(Box::new(error)),
            headers: Some(headers),
        })
    }

    /// Sends a JSON request and decodes a JSON response.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        what: &'static str,
    ) -> Result<(T, ResponseMeta, Option<GovernorPermit>)> {
        let sent = self.execute(method, path, body, false).await?;
        let bytes = match sent.body {
            SentBody::Full(b) => b,
            SentBody::Stream(_) => return Err(Error::Stream("unexpected streaming body".into())),
        };
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::decode(what, e))?;
        Ok((value, sent.meta, sent.permit))
    }
}

/// `now + limit`, saturating for absurdly long limits instead of panicking.
pub(crate) fn deadline_after(limit: std::time::Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(100 * 365 * 24 * 3600))
}

fn transport_failure(e: reqwest::Error, kind: TimeoutKind) -> Failure {
    let error = if e.is_timeout() {
        Error::Timeout(if e.is_connect() {
            TimeoutKind::Connect
        } else {
            kind
        })
    } else {
        Error::Transport(e)
    };
    // Connection errors and timeouts are retried; a request reqwest could not even
    // build will fail the same way again.
    let retry = !matches!(&error, Error::Transport(e) if e.is_builder());
    Failure {
        error,
        headers: None,
        retry,
    }
}

/// Builds the typed error for an error response; tolerates non-JSON bodies (a 413
/// from a proxy) and unknown error types.
pub(crate) fn api_error(status: u16, headers: &HeaderMap, body: &[u8]) -> ApiError {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Inner,
        #[serde(default)]
        request_id: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        message: String,
    }
    let (error_type, message, body_id) = match serde_json::from_slice::<Envelope>(body) {
        Ok(env) => (
            ApiErrorType::parse(&env.error.kind),
            env.error.message,
            env.request_id,
        ),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text: String = text.trim().chars().take(200).collect();
            let message = if text.is_empty() {
                format!("http status {status}")
            } else {
                text
            };
            (ApiErrorType::from_status(status), message, None)
        }
    };
    ApiError {
        status,
        error_type,
        message,
        request_id: request_id(headers).or(body_id),
        retry_after: retry::retry_after(headers),
        rate_limits: RateLimits::from_headers(headers),
    }
}

/// The Messages API: `client.messages()`.
#[derive(Debug, Clone, Copy)]
pub struct Messages<'a> {
    pub(crate) client: &'a Client,
}

impl Messages<'_> {
    /// Sends a message and waits for the whole answer.
    ///
    /// # Errors
    ///
    /// [`Error::Api`] for an API error (after retries), [`Error::Transport`] or
    /// [`Error::Timeout`] when the API could not be reached, [`Error::RequestTooLarge`]
    /// before sending anything over 32 MB, [`Error::Decode`] for an unreadable answer.
    pub async fn create(&self, request: &MessageRequest) -> Result<Message> {
        Ok(self.create_with_meta(request).await?.0)
    }

    /// [`create`](Self::create), plus the response's request id and rate-limit headers.
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create).
    pub async fn create_with_meta(
        &self,
        request: &MessageRequest,
    ) -> Result<(Message, ResponseMeta)> {
        let body = encode(request, false)?;
        let (mut message, meta, permit): (Message, _, _) = self
            .client
            .json(Method::POST, "/v1/messages", Some(body), "message")
            .await?;
        if let Some(p) = &permit {
            p.record_usage(&message.usage);
        }
        message.request_id = meta.request_id.clone();
        Ok((message, meta))
    }

    /// Sends a message and streams the answer as typed events.
    ///
    /// Retries apply until the response headers arrive; once streaming, an `error`
    /// event or a broken connection is an error of the stream, not retried (each
    /// retry would be a new, billed generation).
    ///
    /// # Errors
    ///
    /// As [`create`](Self::create), for the part before the stream starts.
    pub async fn stream(&self, request: &MessageRequest) -> Result<MessageStream> {
        let body = encode(request, true)?;
        let sent = self
            .client
            .execute(Method::POST, "/v1/messages", Some(body), true)
            .await?;
        let resp = match sent.body {
            SentBody::Stream(r) => r,
            SentBody::Full(_) => return Err(Error::Stream("expected a streaming body".into())),
        };
        Ok(MessageStream::from_response(
            resp,
            sent.meta,
            sent.permit,
            self.client.inner.timeouts.stream_idle,
        ))
    }
}

/// Serializes a request, adding `"stream"`.
pub(crate) fn encode(request: &MessageRequest, stream: bool) -> Result<Bytes> {
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        #[serde(flatten)]
        request: &'a MessageRequest,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        stream: bool,
    }
    serde_json::to_vec(&Wire { request, stream })
        .map(Bytes::from)
        .map_err(|e| Error::decode("request", e))
}
