//! The Message Batches API: many requests at half price, answered within 24 hours.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Client, SentBody, api_error};
use crate::error::{ApiError, Error, Result};
use crate::types::{Message, MessageRequest};

/// One request of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRequest {
    /// Your id for it, unique in the batch; results are matched by it.
    pub custom_id: String,
    /// The request, as for [`Messages::create`](crate::Messages::create).
    pub params: MessageRequest,
}

/// Where a batch is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// Requests are being processed.
    InProgress,
    /// A cancel was asked for; in-flight requests are finishing.
    Canceling,
    /// Every request has a result.
    Ended,
    /// A status this crate does not know yet.
    #[serde(other)]
    Unknown,
}

/// How many requests of a batch are in each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchRequestCounts {
    /// Not done yet.
    #[serde(default)]
    pub processing: u64,
    /// Answered.
    #[serde(default)]
    pub succeeded: u64,
    /// Failed.
    #[serde(default)]
    pub errored: u64,
    /// Canceled before processing.
    #[serde(default)]
    pub canceled: u64,
    /// Not processed within 24 hours.
    #[serde(default)]
    pub expired: u64,
}

/// A message batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The batch id (`msgbatch_…`).
    pub id: String,
    /// Where it is.
    pub processing_status: BatchStatus,
    /// Counts per state.
    #[serde(default)]
    pub request_counts: BatchRequestCounts,
    /// When it was created (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
    /// When it ended (RFC 3339).
    #[serde(default)]
    pub ended_at: Option<String>,
    /// When it expires (RFC 3339).
    #[serde(default)]
    pub expires_at: Option<String>,
    /// When a cancel was asked for.
    #[serde(default)]
    pub cancel_initiated_at: Option<String>,
    /// Where the results are, once it ended.
    #[serde(default)]
    pub results_url: Option<String>,
}

/// The outcome of one request of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchResult {
    /// Answered.
    Succeeded(Message),
    /// Failed with this error.
    Errored(ApiError),
    /// Canceled before it was processed.
    Canceled,
    /// Not processed within 24 hours.
    Expired,
    /// A result type this crate does not know yet.
    Unknown(String),
}

#[derive(Deserialize)]
struct ResultLine {
    custom_id: String,
    result: WireResult,
}

#[derive(Deserialize)]
struct WireResult {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct BatchList {
    data: Vec<Batch>,
}

/// The Message Batches API: `client.batches()`.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use coditect_claude::{BatchRequest, BatchResult, Client, types::MessageRequest};
///
/// # async fn run() -> Result<(), coditect_claude::Error> {
/// let client = Client::from_env()?;
/// let requests = (0..3)
///     .map(|i| BatchRequest {
///         custom_id: format!("step-{i}"),
///         params: MessageRequest::new("claude-haiku-4-5", 256).user(format!("Summarize part {i}")),
///     })
///     .collect();
/// let batch = client.batches().create(requests).await?;
/// let batch = client.batches().wait(&batch.id, Duration::from_secs(60)).await?;
/// let results = client.batches().results(&batch).await?;
/// if let Some(BatchResult::Succeeded(message)) = results.get("step-0") {
///     println!("{}", message.text());
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Batches<'a> {
    client: &'a Client,
}

impl Client {
    /// The Message Batches API.
    pub fn batches(&self) -> Batches<'_> {
        Batches { client: self }
    }
}

impl Batches<'_> {
    /// Submits a batch.
    ///
    /// # Errors
    ///
    /// As [`Messages::create`](crate::Messages::create); [`Error::Config`] for an empty
    /// batch or duplicate `custom_id`s (the API would refuse them).
    pub async fn create(&self, requests: Vec<BatchRequest>) -> Result<Batch> {
        if requests.is_empty() {
            return Err(Error::Config("a batch needs at least one request".into()));
        }
        let mut seen = std::collections::HashSet::new();
        if let Some(dup) = requests.iter().find(|r| !seen.insert(r.custom_id.as_str())) {
            return Err(Error::Config(format!(
                "duplicate custom_id in batch: {}",
                dup.custom_id
            )));
        }
        #[derive(Serialize)]
        struct Body<'a> {
            requests: &'a [BatchRequest],
        }
        let body = serde_json::to_vec(&Body {
            requests: &requests,
        })
        .map_err(|e| Error::decode("batch", e))?;
        let (batch, _, _) = self
            .client
            .json(
                Method::POST,
                "/v1/messages/batches",
                Some(Bytes::from(body)),
                "batch",
            )
            .await?;
        Ok(batch)
    }

    /// Fetches a batch's status.
    ///
    /// # Errors
    ///
    /// As [`Messages::create`](crate::Messages::create).
    pub async fn get(&self, id: &str) -> Result<Batch> {
        let path = format!("/v1/messages/batches/{id}");
        Ok(self.client.json(Method::GET, &path, None, "batch").await?.0)
    }

    /// Lists the most recent batches (first page).
    ///
    /// # Errors
    ///
    /// As [`Messages::create`](crate::Messages::create).
    pub async fn list(&self) -> Result<Vec<Batch>> {
        let (list, _, _): (BatchList, _, _) = self
            .client
            .json(Method::GET, "/v1/messages/batches", None, "batch list")
            .await?;
        Ok(list.data)
    }

    /// Asks the API to cancel a batch; requests already processed keep their results.
    ///
    /// # Errors
    ///
    /// As [`Messages::create`](crate::Messages::create).
    pub async fn cancel(&self, id: &str) -> Result<Batch> {
        let path = format!("/v1/messages/batches/{id}/cancel");
        Ok(self
            .client
            .json(Method::POST, &path, None, "batch")
            .await?
            .0)
    }

    /// Polls every `interval` until the batch has ended.
    ///
    /// # Errors
    ///
    /// The first failed poll.
    pub async fn wait(&self, id: &str, interval: Duration) -> Result<Batch> {
        loop {
            let batch = self.get(id).await?;
            if batch.processing_status == BatchStatus::Ended {
                return Ok(batch);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Fetches an ended batch's results, by `custom_id`.
    ///
    /// # Errors
    ///
    /// As [`Messages::create`](crate::Messages::create); [`Error::Decode`] for a result
    /// line that is not the JSON expected.
    pub async fn results(&self, batch: &Batch) -> Result<HashMap<String, BatchResult>> {
        let path = batch
            .results_url
            .clone()
            .unwrap_or_else(|| format!("/v1/messages/batches/{}/results", batch.id));
        let sent = self.client.execute(Method::GET, &path, None, false).await?;
        let body = match sent.body {
            SentBody::Full(b) => b,
            SentBody::Stream(_) => return Err(Error::Stream("unexpected streaming body".into())),
        };
        parse_results(&body)
    }
}

/// Parses a results `.jsonl` body.
fn parse_results(body: &[u8]) -> Result<HashMap<String, BatchResult>> {
    let mut out = HashMap::new();
    for line in body.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: ResultLine =
            serde_json::from_slice(line).map_err(|e| Error::decode("batch result", e))?;
        let result = match (
            line.result.kind.as_str(),
            line.result.message,
            line.result.error,
        ) {
            ("succeeded", Some(message), _) => BatchResult::Succeeded(message),
            ("errored", _, error) => {
                let body = error.map(|e| e.to_string()).unwrap_or_default();
                // The error is the API's usual error body; its status is not given.
                BatchResult::Errored(api_error(0, &http::HeaderMap::new(), body.as_bytes()))
            }
            ("canceled", _, _) => BatchResult::Canceled,
            ("expired", _, _) => BatchResult::Expired,
            (other, _, _) => BatchResult::Unknown(other.to_owned()),
        };
        out.insert(line.custom_id, result);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_result_type() {
        let body = br#"{"custom_id":"a","result":{"type":"succeeded","message":{"id":"m","type":"message","role":"assistant","model":"x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}}
{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}}}
{"custom_id":"c","result":{"type":"canceled"}}

{"custom_id":"d","result":{"type":"expired"}}
"#;
        let r = parse_results(body).unwrap();
        assert!(matches!(&r["a"], BatchResult::Succeeded(m) if m.text() == "hi"));
        assert!(
            matches!(&r["b"], BatchResult::Errored(e) if e.message == "bad" && e.error_type == crate::ApiErrorType::InvalidRequest)
        );
        assert_eq!(r["c"], BatchResult::Canceled);
        assert_eq!(r["d"], BatchResult::Expired);
        assert_eq!(
            parse_results(b"{oops").unwrap_err().kind(),
            crate::ErrorKind::Decode
        );
    }
}
