//! Typed tools: a model calls them by name with JSON arguments.
//!
//! A [`Tool`] names its argument type; the JSON Schema the model sees is derived
//! from that type with `schemars` (field docs become descriptions), never written
//! by hand. Before a tool runs, the model's arguments are deserialized into that
//! type; arguments that do not fit become a [`ToolError`] of kind
//! [`ToolErrorKind::InvalidArguments`], which the agent sends back to the model
//! as a tool error so it can correct itself — they never reach the tool and never
//! crash the agent.
//!
//! [`DynTool`] is the type-erased form a [`Toolbox`](crate::Toolbox) holds.
//!
//! # Examples
//!
//! ```
//! use coditect_agents::tool::{DynTool, Tool, ToolContext, ToolError, ToolErrorKind};
//!
//! /// Adds two numbers.
//! struct Add;
//!
//! #[derive(serde::Deserialize, schemars::JsonSchema)]
//! struct AddArgs {
//!     /// The first number.
//!     a: f64,
//!     /// The second number.
//!     b: f64,
//! }
//!
//! impl Tool for Add {
//!     type Args = AddArgs;
//!     type Output = f64;
//!     fn name(&self) -> String { "add".into() }
//!     fn description(&self) -> String { "Adds two numbers.".into() }
//!     async fn call(&self, args: AddArgs, _ctx: ToolContext<'_>) -> Result<f64, ToolError> {
//!         Ok(args.a + args.b)
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! assert!(Add.definition().input_schema["properties"]["a"].is_object());
//! let out = Add.call_json(serde_json::json!({"a": 1, "b": 2}), ToolContext::detached("t1")).await;
//! assert_eq!(out.unwrap(), "3.0");
//! // Arguments that do not fit the type are an error for the model, not a panic.
//! let err = Add.call_json(serde_json::json!({"a": "one"}), ToolContext::detached("t2")).await.unwrap_err();
//! assert_eq!(err.kind(), ToolErrorKind::InvalidArguments);
//! # });
//! ```

use std::future::Future;
use std::time::Duration;

use coditect_orchestrator::AgentContext;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{BoxFuture, ToolDefinition};

/// What a tool sees of its caller while it runs.
#[derive(Clone, Copy, Debug)]
pub struct ToolContext<'a> {
    agent: Option<&'a AgentContext>,
    call_id: &'a str,
}

impl<'a> ToolContext<'a> {
    /// The context of a call made by an agent handling a message.
    pub fn new(agent: &'a AgentContext, call_id: &'a str) -> Self {
        Self {
            agent: Some(agent),
            call_id,
        }
    }

    /// The context of a call made outside any agent (tests, direct use).
    pub fn detached(call_id: &'a str) -> Self {
        Self {
            agent: None,
            call_id,
        }
    }

    /// The calling agent's context, if the call comes from an agent.
    pub fn agent(&self) -> Option<&'a AgentContext> {
        self.agent
    }

    /// The model's id for this call.
    pub fn call_id(&self) -> &'a str {
        self.call_id
    }
}

/// A tool a model can call: typed arguments in, a serializable result out.
///
/// One required method, [`call`](Tool::call), plus the name and description the
/// model reads. The input schema comes from [`Tool::Args`].
pub trait Tool: Send + Sync + 'static {
    /// The arguments; their JSON Schema is what the model sees.
    type Args: DeserializeOwned + JsonSchema + Send;
    /// The result. A string goes back to the model as is; anything else as JSON.
    type Output: Serialize + Send;

    /// The tool's name, unique within a toolbox.
    fn name(&self) -> String;

    /// What the tool does, written for the model.
    fn description(&self) -> String;

    /// Runs the tool with arguments already checked against [`Tool::Args`].
    ///
    /// # Errors
    ///
    /// A [`ToolError`]; its message goes back to the model as the tool's result.
    fn call(
        &self,
        args: Self::Args,
        ctx: ToolContext<'_>,
    ) -> impl Future<Output = Result<Self::Output, ToolError>> + Send;

    /// This tool's own time limit per call, if it needs another than the
    /// toolbox's (a delegation waits for a whole agent, say).
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

/// The object-safe form of [`Tool`]: JSON in, text out.
///
/// Every [`Tool`] implements it; implement it directly only for tools whose
/// schema is known at run time.
pub trait DynTool: Send + Sync + 'static {
    /// The definition sent to the model: name, description, input schema.
    fn definition(&self) -> ToolDefinition;

    /// Checks and deserializes the arguments, runs the tool, renders its result.
    ///
    /// # Errors
    ///
    /// [`ToolErrorKind::InvalidArguments`] if `input` does not fit the tool's
    /// arguments (the tool does not run); otherwise the tool's own error.
    fn call_json<'a>(
        &'a self,
        input: Value,
        ctx: ToolContext<'a>,
    ) -> BoxFuture<'a, Result<String, ToolError>>;

    /// This tool's own time limit per call, if any.
    fn timeout(&self) -> Option<Duration> {
        None
    }
}

impl<T: Tool> DynTool for T {
    fn definition(&self) -> ToolDefinition {
        ToolDefinition {
            name: self.name(),
            description: self.description(),
            input_schema: schema_for::<T::Args>(),
        }
    }

    fn call_json<'a>(
        &'a self,
        input: Value,
        ctx: ToolContext<'a>,
    ) -> BoxFuture<'a, Result<String, ToolError>> {
        Box::pin(async move {
            let args: T::Args = serde_json::from_value(input).map_err(|e| {
                ToolError::new(
                    ToolErrorKind::InvalidArguments,
                    format!(
                        "invalid arguments for tool {}: {e}; call it again with arguments matching its input schema",
                        self.name()
                    ),
                )
            })?;
            let output = self.call(args, ctx).await?;
            render(&output)
        })
    }

    fn timeout(&self) -> Option<Duration> {
        Tool::timeout(self)
    }
}

/// The JSON Schema of `T` as a tool's input schema: an object schema without the
/// `$schema` marker (models want the bare schema).
pub fn schema_for<T: JsonSchema>() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(T)).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
        map.remove("title");
    }
    schema
}

/// A tool's result as the text the model reads.
fn render<O: Serialize>(output: &O) -> Result<String, ToolError> {
    match serde_json::to_value(output) {
        Ok(Value::String(s)) => Ok(s),
        Ok(v) => Ok(v.to_string()),
        Err(e) => Err(ToolError::new(
            ToolErrorKind::Failed,
            format!("the tool's result could not be serialized: {e}"),
        )),
    }
}

/// What kind of tool failure, for callers that decide by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolErrorKind {
    /// The model's arguments did not fit the tool's argument type.
    InvalidArguments,
    /// The model named a tool this agent does not have.
    UnknownTool,
    /// The agent may not do this (a capability outside its delegation allow-list).
    NotAllowed,
    /// The call took longer than the toolbox allows.
    Timeout,
    /// The tool ran and failed.
    Failed,
}

/// A tool call failed; the message goes back to the model as the tool's result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ToolError {
    kind: ToolErrorKind,
    message: String,
}

impl ToolError {
    /// An error of a kind, with a message for the model.
    pub fn new(kind: ToolErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The tool ran and failed.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::Failed, message)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ToolErrorKind {
        self.kind
    }

    /// The message the model reads.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes a word a number of times.
    struct Repeat;

    #[derive(serde::Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct RepeatArgs {
        /// The word.
        word: String,
        /// How many times.
        times: u8,
    }

    impl Tool for Repeat {
        type Args = RepeatArgs;
        type Output = Vec<String>;
        fn name(&self) -> String {
            "repeat".into()
        }
        fn description(&self) -> String {
            "Repeats a word.".into()
        }
        async fn call(&self, a: RepeatArgs, _: ToolContext<'_>) -> Result<Vec<String>, ToolError> {
            Ok(vec![a.word; a.times as usize])
        }
    }

    #[test]
    fn the_schema_comes_from_the_argument_type_and_its_docs() {
        let def = Repeat.definition();
        assert_eq!(def.name, "repeat");
        let s = &def.input_schema;
        assert_eq!(s["type"], "object");
        assert_eq!(s["properties"]["word"]["description"], "The word.");
        assert!(s.get("$schema").is_none());
        let required: Vec<&str> = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(required.contains(&"word") && required.contains(&"times"));
    }

    #[tokio::test]
    async fn arguments_are_checked_before_the_tool_runs() {
        let ok = Repeat
            .call_json(
                serde_json::json!({"word": "hi", "times": 2}),
                ToolContext::detached("1"),
            )
            .await
            .unwrap();
        assert_eq!(ok, r#"["hi","hi"]"#);
        for bad in [
            serde_json::json!({"word": "hi"}),
            serde_json::json!({"word": "hi", "times": 300}),
            serde_json::json!({"word": "hi", "times": 1, "extra": true}),
            serde_json::json!("hi"),
        ] {
            let e = Repeat
                .call_json(bad.clone(), ToolContext::detached("1"))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ToolErrorKind::InvalidArguments, "{bad}");
            assert!(e.message().contains("repeat"), "{e}");
        }
    }
}
