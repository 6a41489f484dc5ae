//! Typed answers: ask for a Rust type through a forced tool call.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::client::Messages;
use crate::error::{Error, Result};
use crate::types::{ContentBlock, MessageRequest, Tool, ToolChoice};

/// The name of the tool the answer is requested through.
pub(crate) const TOOL_NAME: &str = "structured_output";

/// The tool whose input schema is `T`'s; non-object types are wrapped in `{"value": …}`
/// because tool inputs must be objects. Returns whether it wrapped.
fn tool_for<T: JsonSchema>() -> (Tool, bool) {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
    }
    let is_object = schema.get("type").and_then(Value::as_str) == Some("object");
    let (input_schema, wrapped) = if is_object {
        (schema, false)
    } else {
        let defs = schema.as_object_mut().and_then(|m| m.remove("$defs"));
        let mut wrapper =
            json!({"type": "object", "properties": {"value": schema}, "required": ["value"]});
        if let (Some(defs), Value::Object(w)) = (defs, &mut wrapper) {
            w.insert("$defs".into(), defs);
        }
        (wrapper, true)
    };
    let tool = Tool {
        name: TOOL_NAME.into(),
        description: Some("Give the answer, exactly in this schema.".into()),
        input_schema,
        cache_control: None,
    };
    (tool, wrapped)
}

impl Messages<'_> {
    /// Asks for an answer of type `T`: `T`'s JSON Schema becomes the one tool Claude
    /// must call, and the call's input is deserialized into `T`.
    ///
    /// Extended thinking cannot be combined with a forced tool, so leave it off here.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[cfg(feature = "test-utils")]
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use coditect_claude::testing::{Reply, StandIn, tool_use_message};
    /// use coditect_claude::{Client, types::MessageRequest};
    ///
    /// #[derive(serde::Deserialize, schemars::JsonSchema, Debug, PartialEq)]
    /// struct Verdict { approve: bool, reason: String }
    ///
    /// let server = StandIn::start().await;
    /// let input = serde_json::json!({"approve": true, "reason": "tests pass"});
    /// server.push(Reply::message(&tool_use_message("t1", "structured_output", input)));
    /// let client = Client::builder().api_key("k").base_url(server.url()).build()?;
    /// let req = MessageRequest::new("claude-sonnet-4-5", 512).user("Review this PR.");
    /// let verdict: Verdict = client.messages().structured(&req).await?;
    /// assert_eq!(verdict, Verdict { approve: true, reason: "tests pass".into() });
    /// # Ok::<_, coditect_claude::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    ///
    /// As [`create`](Messages::create), and [`Error::StructuredOutput`] (with what came
    /// back) when Claude did not call the tool or its input does not fit `T`.
    pub async fn structured<T: JsonSchema + DeserializeOwned>(
        &self,
        request: &MessageRequest,
    ) -> Result<T> {
        let (tool, wrapped) = tool_for::<T>();
        let mut request = request.clone();
        let mut tools = request.tools.take().unwrap_or_default();
        tools.retain(|t| t.name != TOOL_NAME);
        tools.push(tool);
        request.tools = Some(tools);
        request.tool_choice = Some(ToolChoice::Tool {
            name: TOOL_NAME.into(),
            disable_parallel_tool_use: Some(true),
        });
        let message = self.create(&request).await?;
        let input = message.content.iter().find_map(|b| match b {
            ContentBlock::ToolUse { name, input, .. } if name == TOOL_NAME => Some(input),
            _ => None,
        });
        let Some(input) = input else {
            return Err(Error::StructuredOutput {
                message: "the model did not call the output tool".into(),
                raw: message.text(),
            });
        };
        let value = if wrapped {
            input.get("value").cloned().unwrap_or(Value::Null)
        } else {
            input.clone()
        };
        serde_json::from_value(value).map_err(|e| Error::StructuredOutput {
            message: e.to_string(),
            raw: input.to_string(),
        })
    }
}
