//! Token counting: `POST /v1/messages/count_tokens`.

use bytes::Bytes;
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::Messages;
use crate::error::{Error, Result};
use crate::types::{MessageParam, MessageRequest, System, ThinkingConfig, Tool, ToolChoice};

/// The fields `count_tokens` accepts (it refuses sampling fields such as `max_tokens`).
#[derive(Serialize)]
struct CountRequest<'a> {
    model: &'a str,
    messages: &'a [MessageParam],
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<&'a System>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a Vec<Tool>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<&'a ToolChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<&'a ThinkingConfig>,
}

#[derive(Deserialize)]
struct CountResponse {
    input_tokens: u64,
}

impl Messages<'_> {
    /// Counts the input tokens `request` would use, without generating anything.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn run(client: coditect_claude::Client) -> Result<(), coditect_claude::Error> {
    /// use coditect_claude::types::MessageRequest;
    /// let req = MessageRequest::new("claude-sonnet-4-5", 1024).user("How long is this?");
    /// let tokens = client.messages().count_tokens(&req).await?;
    /// assert!(tokens > 0);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`create`](Messages::create).
    pub async fn count_tokens(&self, request: &MessageRequest) -> Result<u64> {
        let body = CountRequest {
            model: &request.model,
            messages: &request.messages,
            system: request.system.as_ref(),
            tools: request.tools.as_ref(),
            tool_choice: request.tool_choice.as_ref(),
            thinking: request.thinking.as_ref(),
        };
        let body = serde_json::to_vec(&body).map_err(|e| Error::decode("request", e))?;
        let (count, _, _): (CountResponse, _, _) = self
            .client
            .json(
                Method::POST,
                "/v1/messages/count_tokens",
                Some(Bytes::from(body)),
                "token count",
            )
            .await?;
        Ok(count.input_tokens)
    }
}
