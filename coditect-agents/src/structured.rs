//! Structured output: ask a model for a value of a Rust type, checked, with repair.
//!
//! The model is given one tool whose input schema is the type's JSON Schema and
//! is told to call it; its arguments are deserialized into the type and checked
//! by a caller-supplied validation. A reply that is not a valid value — no call
//! and no JSON text, arguments that do not fit, or a value the validation
//! refuses — is sent back to the model with the error, a bounded number of
//! times; then the ask fails with the last error. Vendor-neutral: it only uses
//! tools and [`ToolChoice`], which every tool-calling model has.
//!
//! The [`LlmPlanner`](crate::LlmPlanner), the router and the critic are built on it.

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{
    CompletionRequest, ContentBlock, DynLanguageModel, Message, ModelError, Role, ToolChoice,
    ToolDefinition, Usage,
};
use crate::tool::schema_for;

/// How to ask for a structured value.
#[derive(Debug, Clone)]
pub struct StructuredAsk {
    /// The tool the model must call; its input is the value.
    pub tool_name: String,
    /// What the value is, for the model.
    pub description: String,
    /// How many times an invalid answer is sent back before giving up.
    pub max_repairs: u32,
}

impl StructuredAsk {
    /// Asks through a tool named `tool_name`, described by `description`,
    /// repairing up to twice.
    pub fn new(tool_name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            tool_name: tool_name.into(),
            description: description.into(),
            max_repairs: 2,
        }
    }

    /// Sets how many repairs are allowed.
    #[must_use]
    pub fn max_repairs(mut self, n: u32) -> Self {
        self.max_repairs = n;
        self
    }
}

/// A value the model gave, with what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Structured<T> {
    /// The value.
    pub value: T,
    /// Usage of every call made for it, repairs included.
    pub usage: Usage,
    /// The model that answered.
    pub model: String,
    /// Calls made (1 if the first answer was valid).
    pub attempts: u32,
}

/// Why no valid value came back.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StructuredError {
    /// The model call itself failed.
    #[error("{error}")]
    Model {
        /// The model's error.
        error: ModelError,
        /// Usage spent before it failed.
        usage: Usage,
    },
    /// Every answer was invalid.
    #[error("no valid answer after {attempts} attempts; the last was refused: {last_error}")]
    GaveUp {
        /// Calls made.
        attempts: u32,
        /// Why the last answer was refused.
        last_error: String,
        /// Usage spent.
        usage: Usage,
    },
}

impl StructuredError {
    /// The usage spent before failing.
    pub fn usage(&self) -> Usage {
        match self {
            StructuredError::Model { usage, .. } | StructuredError::GaveUp { usage, .. } => *usage,
        }
    }
}

/// Asks `model` for a `T`, checking each answer with `validate`.
///
/// `request` carries the prompt (system, messages, token cap); its tools and
/// tool choice are replaced by the one answer tool.
///
/// # Errors
///
/// [`StructuredError::Model`] if a call fails (not retried here: the model's
/// client retries what is worth retrying); [`StructuredError::GaveUp`] once
/// `1 + max_repairs` answers were invalid.
pub async fn ask_structured<T, V>(
    model: &dyn DynLanguageModel,
    mut request: CompletionRequest,
    ask: &StructuredAsk,
    validate: V,
) -> Result<Structured<T>, StructuredError>
where
    T: DeserializeOwned + JsonSchema,
    V: Fn(&T) -> Result<(), String>,
{
    request.tools = vec![ToolDefinition {
        name: ask.tool_name.clone(),
        description: ask.description.clone(),
        input_schema: schema_for::<T>(),
    }];
    request.tool_choice = ToolChoice::Tool {
        name: ask.tool_name.clone(),
    };
    let mut usage = Usage::default();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let response = match model.complete_boxed(request.clone()).await {
            Ok(r) => r,
            Err(error) => return Err(StructuredError::Model { error, usage }),
        };
        usage.add(&response.usage);
        let call = response
            .tool_calls()
            .find(|(_, name, _)| *name == ask.tool_name)
            .map(|(id, _, input)| (id.to_owned(), input.clone()));
        let (verdict, reply_block) = match &call {
            Some((id, input)) => {
                let v = check::<T, _>(input.clone(), &validate);
                let block = match &v {
                    Ok(_) => None,
                    Err(e) => Some(ContentBlock::tool_result(id, e.clone(), true)),
                };
                (v, block)
            }
            None => {
                // Some models answer in text; accept a JSON value there too.
                let text = response.text();
                let v = match parse_json_text(&text) {
                    Some(value) => check::<T, _>(value, &validate),
                    None => Err(format!(
                        "the answer was not JSON and did not call the tool {}",
                        ask.tool_name
                    )),
                };
                (v, None)
            }
        };
        match verdict {
            Ok(value) => {
                return Ok(Structured {
                    value,
                    usage,
                    model: response.model,
                    attempts,
                });
            }
            Err(last_error) => {
                if attempts > ask.max_repairs {
                    return Err(StructuredError::GaveUp {
                        attempts,
                        last_error,
                        usage,
                    });
                }
                // Every tool call must be answered before any text.
                let mut content: Vec<ContentBlock> = response
                    .tool_calls()
                    .filter(|(_, name, _)| *name != ask.tool_name)
                    .map(|(id, _, _)| {
                        ContentBlock::tool_result(
                            id,
                            "not available: answer with the one tool",
                            true,
                        )
                    })
                    .collect();
                content.extend(reply_block);
                content.push(ContentBlock::text(format!(
                    "That answer was refused: {last_error}. Call the tool {} again with a corrected value.",
                    ask.tool_name
                )));
                if !response.content.is_empty() {
                    request.messages.push(response.to_message());
                }
                request.messages.push(Message {
                    role: Role::User,
                    content,
                });
            }
        }
    }
}

fn check<T: DeserializeOwned, V: Fn(&T) -> Result<(), String>>(
    value: Value,
    validate: &V,
) -> Result<T, String> {
    let v: T =
        serde_json::from_value(value).map_err(|e| format!("it does not fit the schema: {e}"))?;
    validate(&v)?;
    Ok(v)
}

/// A JSON value in a text answer: the whole text, or a fenced block.
fn parse_json_text(text: &str) -> Option<Value> {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str(t) {
        return Some(v);
    }
    let start = t.find("```")?;
    let after = &t[start + 3..];
    let body_start = after.find('\n')? + 1;
    let body = &after[body_start..];
    let end = body.find("```")?;
    serde_json::from_str(body[..end].trim()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripted::{ScriptedModel, ScriptedReply};

    #[derive(Debug, serde::Deserialize, JsonSchema, PartialEq)]
    struct Pick {
        n: u32,
    }

    fn req() -> CompletionRequest {
        CompletionRequest::new(vec![Message::user("pick")], 100)
    }

    #[tokio::test]
    async fn invalid_answers_are_sent_back_until_one_is_valid() {
        let m = ScriptedModel::new()
            .then(ScriptedReply::text("I think seven"))
            .then(ScriptedReply::tool_call(
                "pick",
                serde_json::json!({"n": "7"}),
            ))
            .then(ScriptedReply::tool_call(
                "pick",
                serde_json::json!({"n": 70}),
            ))
            .then(ScriptedReply::text("```json\n{\"n\": 7}\n```"));
        let ask = StructuredAsk::new("pick", "a number").max_repairs(3);
        let out = ask_structured::<Pick, _>(&m, req(), &ask, |p| {
            if p.n < 10 {
                Ok(())
            } else {
                Err(format!("{} is too big", p.n))
            }
        })
        .await
        .unwrap();
        assert_eq!(out.value, Pick { n: 7 });
        assert_eq!(out.attempts, 4);
        let reqs = m.requests();
        assert_eq!(
            reqs[0].tool_choice,
            ToolChoice::Tool {
                name: "pick".into()
            }
        );
        // The third request carries the schema error as a tool error.
        let results = reqs[2].last_tool_results();
        assert_eq!(results.len(), 1);
        assert!(results[0].2 && results[0].1.contains("does not fit"));
        assert!(reqs[3].last_user_text().contains("70 is too big"));
    }

    #[tokio::test]
    async fn it_gives_up_after_the_repairs_and_says_why() {
        let m = ScriptedModel::new().when(|_| true, ScriptedReply::text("no"));
        let ask = StructuredAsk::new("pick", "a number").max_repairs(1);
        let e = ask_structured::<Pick, _>(&m, req(), &ask, |_| Ok(()))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, StructuredError::GaveUp { attempts: 2, .. }),
            "{e}"
        );
        assert!(e.usage().output_tokens > 0);
        assert_eq!(m.requests().len(), 2);
    }
}
