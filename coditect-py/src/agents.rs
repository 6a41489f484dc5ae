//! Rust agents, models and tools for Python: `LlmAgent`, `ScriptedModel`,
//! `Claude`, Python tools, and two small Rust agents (`Echo`, `Relay`).

use std::sync::{Arc, Mutex};

use coditect_agents::model::{CompletionRequest, Message};
use coditect_agents::tool::{DynTool, ToolContext};
use coditect_agents::{
    DynLanguageModel, LlmAgent, ModelError, ModelErrorKind, ScriptedModel, ScriptedReply,
    ToolError, ToolErrorKind,
};
use coditect_claude::{ClaudeModel, Client, RetryPolicy};
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentKind, KindBuilder, RegisterError,
};
use futures::future::BoxFuture;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::Value;

use crate::bridge::{Awaitable, Bridge, Called, Out, drive};
use crate::error;
use crate::value::{from_json, to_json};

/// A model a Python caller made: scripted, or Claude.
fn model_of(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn DynLanguageModel>> {
    if let Ok(m) = obj.cast::<PyScriptedModel>() {
        return Ok(Arc::new(m.get().model.clone()));
    }
    if let Ok(m) = obj.cast::<PyClaude>() {
        return Ok(Arc::new(m.get().model.clone()));
    }
    Err(PyTypeError::new_err(
        "a model is a coditect.ScriptedModel or a coditect.Claude",
    ))
}

pub(crate) fn planner_model(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn DynLanguageModel>> {
    model_of(obj)
}

/// One scripted model turn: text, tool calls, or an error.
#[pyclass(module = "coditect._native", name = "ScriptedReply", frozen)]
#[derive(Clone)]
pub struct PyScriptedReply {
    reply: ScriptedReply,
}

#[pymethods]
impl PyScriptedReply {
    /// A text answer that ends the turn.
    #[staticmethod]
    fn text(text: String) -> Self {
        Self {
            reply: ScriptedReply::text(text),
        }
    }

    /// One tool call with these arguments.
    #[staticmethod]
    fn tool_call(name: String, input: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            reply: ScriptedReply::tool_call(name, to_json(input)?),
        })
    }

    /// Several tool calls in one turn: `(name, arguments)` pairs.
    #[staticmethod]
    fn tool_calls(calls: Vec<(String, Bound<'_, PyAny>)>) -> PyResult<Self> {
        let calls = calls
            .into_iter()
            .map(|(n, a)| Ok((n, to_json(&a)?)))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(Self {
            reply: ScriptedReply::tool_calls(calls),
        })
    }

    /// A failed model call.
    #[staticmethod]
    #[pyo3(signature = (message, *, retryable=false))]
    fn error(message: String, retryable: bool) -> Self {
        Self {
            reply: ScriptedReply::error(ModelError::new(ModelErrorKind::Other, message, retryable)),
        }
    }

    /// The same reply, reporting this usage.
    fn usage(&self, input_tokens: u64, output_tokens: u64) -> Self {
        let usage = coditect_agents::model::Usage {
            input_tokens,
            output_tokens,
            ..Default::default()
        };
        Self {
            reply: self.reply.clone().usage(usage),
        }
    }
}

fn reply_of(obj: &Bound<'_, PyAny>) -> PyResult<ScriptedReply> {
    if let Ok(r) = obj.cast::<PyScriptedReply>() {
        return Ok(r.get().reply.clone());
    }
    if let Ok(s) = obj.extract::<String>() {
        return Ok(ScriptedReply::text(s));
    }
    Err(PyTypeError::new_err(
        "a scripted reply is a str or a coditect.ScriptedReply",
    ))
}

/// A deterministic model answering from a script, for tests and offline runs.
#[pyclass(module = "coditect._native", name = "ScriptedModel", frozen)]
pub struct PyScriptedModel {
    model: ScriptedModel,
}

#[pymethods]
impl PyScriptedModel {
    #[new]
    #[pyo3(signature = (replies=None))]
    fn new(replies: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let model = ScriptedModel::new();
        if let Some(rs) = replies {
            for r in rs.try_iter()? {
                model.push(reply_of(&r?)?);
            }
        }
        Ok(Self { model })
    }

    /// Appends a reply to the script.
    fn push(&self, reply: &Bound<'_, PyAny>) -> PyResult<()> {
        self.model.push(reply_of(reply)?);
        Ok(())
    }

    /// Replies not used yet.
    fn turns_left(&self) -> usize {
        self.model.turns_left()
    }

    /// The requests the model got, oldest first: each as a dict with the
    /// last user text and the tool results it carried.
    fn requests(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let list = PyList::empty(py);
        for r in self.model.requests() {
            let d = PyDict::new(py);
            d.set_item("last_user_text", r.last_user_text())?;
            d.set_item("system", r.system.clone())?;
            let tools: Vec<String> = r.tools.iter().map(|t| t.name.clone()).collect();
            d.set_item("tools", tools)?;
            let results = PyList::empty(py);
            for (id, content, is_error) in r.last_tool_results() {
                let t = PyDict::new(py);
                t.set_item("id", id)?;
                t.set_item("content", content)?;
                t.set_item("is_error", is_error)?;
                results.append(t)?;
            }
            d.set_item("tool_results", results)?;
            list.append(d)?;
        }
        Ok(list.into_any().unbind())
    }
}

/// A Claude model through the Anthropic Messages API.
#[pyclass(module = "coditect._native", name = "Claude", frozen)]
pub struct PyClaude {
    model: ClaudeModel,
}

#[pymethods]
impl PyClaude {
    #[new]
    #[pyo3(signature = (model="claude-sonnet-4-5".to_owned(), *, api_key=None, base_url=None, max_retries=None))]
    fn new(
        py: Python<'_>,
        model: String,
        api_key: Option<String>,
        base_url: Option<String>,
        max_retries: Option<u32>,
    ) -> PyResult<Self> {
        let mut b = Client::builder().from_env();
        if let Some(k) = api_key {
            b = b.api_key(k);
        }
        if let Some(u) = base_url {
            b = b.base_url(u);
        }
        if let Some(n) = max_retries {
            b = b.retry(RetryPolicy {
                max_retries: n,
                ..RetryPolicy::default()
            });
        }
        let client = b.build().map_err(|e| error::from_claude(py, &e))?;
        Ok(Self {
            model: ClaudeModel::new(client, model),
        })
    }

    /// The model's name.
    #[getter]
    fn model(&self) -> String {
        self.model.model().to_owned()
    }

    /// Asks the model once and returns its text. Raises `ClaudeError` (with
    /// `status` and `request_id`) when the API answers with an error.
    #[pyo3(signature = (prompt, *, system=None, max_tokens=1024))]
    fn complete(
        &self,
        py: Python<'_>,
        prompt: String,
        system: Option<String>,
        max_tokens: u32,
    ) -> PyResult<Awaitable> {
        let bridge = crate::bridge::current(py)?;
        let model = self.model.clone();
        let mut req = CompletionRequest::new(vec![Message::user(prompt)], max_tokens);
        req.system = system;
        Ok(bridge.awaitable(Box::pin(async move {
            let r = model
                .client()
                .messages()
                .create(&model.to_request(req))
                .await;
            Box::new(move |py: Python<'_>| match r {
                Ok(m) => Ok(m.text().into_pyobject(py)?.into_any().unbind()),
                Err(e) => Err(error::from_claude(py, &e)),
            }) as Out
        })))
    }
}

/// A Python function as a tool an `LlmAgent` can call.
pub(crate) struct PyTool {
    name: String,
    description: String,
    schema: Value,
    /// Validates the model's arguments and calls the function.
    invoke: Arc<Py<PyAny>>,
    bridge: Mutex<Option<Arc<Bridge>>>,
}

struct PyToolRef(Arc<PyTool>);

fn render(v: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = v.extract::<String>() {
        return Ok(s);
    }
    Ok(to_json(v)?.to_string())
}

fn tool_error(py: Python<'_>, e: &PyErr) -> ToolError {
    let invalid = py
        .import(intern!(py, "coditect._errors"))
        .and_then(|m| m.getattr(intern!(py, "ToolArgumentError")))
        .map(|c| e.value(py).is_instance(&c).unwrap_or(false))
        .unwrap_or(false);
    if invalid {
        let msg = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
        ToolError::new(
            ToolErrorKind::InvalidArguments,
            format!("{msg}; call it again with arguments matching its input schema"),
        )
    } else {
        ToolError::failed(error::describe(py, e))
    }
}

impl DynTool for PyToolRef {
    fn definition(&self) -> coditect_agents::model::ToolDefinition {
        coditect_agents::model::ToolDefinition {
            name: self.0.name.clone(),
            description: self.0.description.clone(),
            input_schema: self.0.schema.clone(),
        }
    }

    fn call_json<'a>(
        &'a self,
        input: Value,
        _ctx: ToolContext<'a>,
    ) -> BoxFuture<'a, Result<String, ToolError>> {
        let tool = self.0.clone();
        Box::pin(async move {
            let bridge = tool.bridge.lock().ok().and_then(|b| b.clone());
            let Some(bridge) = bridge else {
                return Err(ToolError::failed(format!(
                    "tool {} is not on a runtime: register its agent with rt.register",
                    tool.name
                )));
            };
            let invoke = tool.invoke.clone();
            drive(
                bridge,
                move |py| {
                    let args = from_json(py, &input)?;
                    Called::of(py, invoke.bind(py).call1((args,))?)
                },
                |py, r| match r {
                    Ok(v) => render(&v).map_err(|e| tool_error(py, &e)),
                    Err(e) => Err(tool_error(py, &e)),
                },
            )
            .await
            .unwrap_or_else(|| {
                Err(ToolError::failed(
                    "the Python event loop stopped during the tool call",
                ))
            })
        })
    }
}

fn tool_of(obj: &Bound<'_, PyAny>) -> PyResult<Arc<PyTool>> {
    let py = obj.py();
    let get = |name: &str| {
        obj.getattr(name)
            .map_err(|_| PyTypeError::new_err("a tool is a function decorated with @coditect.tool"))
    };
    Ok(Arc::new(PyTool {
        name: get("name")?.extract()?,
        description: get("description")?.extract()?,
        schema: to_json(&get("schema")?)?,
        invoke: Arc::new(obj.getattr(intern!(py, "_invoke"))?.unbind()),
        bridge: Mutex::new(None),
    }))
}

/// An agent that thinks with a model and acts with tools (a Rust agent).
#[pyclass(module = "coditect._native", name = "LlmAgent", frozen)]
pub struct PyLlmAgent {
    agent: LlmAgent,
    tools: Vec<Arc<PyTool>>,
    capabilities: Vec<String>,
    description: String,
}

#[pymethods]
impl PyLlmAgent {
    #[new]
    #[pyo3(signature = (model, *, system=None, tools=None, capabilities=None, description=String::new(), delegate_to=None, max_iterations=None, max_tokens=None, streaming=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: &Bound<'_, PyAny>,
        system: Option<String>,
        tools: Option<Vec<Bound<'_, PyAny>>>,
        capabilities: Option<Vec<String>>,
        description: String,
        delegate_to: Option<Vec<(String, String)>>,
        max_iterations: Option<u32>,
        max_tokens: Option<u32>,
        streaming: Option<bool>,
    ) -> PyResult<Self> {
        let mut b = LlmAgent::builder_shared(model_of(model)?);
        if let Some(s) = system {
            b = b.system(s);
        }
        let tools = tools
            .unwrap_or_default()
            .iter()
            .map(tool_of)
            .collect::<PyResult<Vec<_>>>()?;
        for t in &tools {
            b = b.tool(PyToolRef(t.clone()));
        }
        for (cap, desc) in delegate_to.unwrap_or_default() {
            b = b.delegate_to(cap, desc);
        }
        if let Some(n) = max_iterations {
            b = b.max_iterations(n);
        }
        if let Some(n) = max_tokens {
            b = b.max_tokens(n);
        }
        if let Some(s) = streaming {
            b = b.streaming(s);
        }
        Ok(Self {
            agent: b.build(),
            tools,
            capabilities: capabilities.unwrap_or_default(),
            description,
        })
    }

    /// The names of the agent's tools.
    fn tool_names(&self) -> Vec<String> {
        self.agent.toolbox().names().map(str::to_owned).collect()
    }
}

/// A Rust agent that answers with its input (for tests and benchmarks).
#[pyclass(module = "coditect._native", name = "Echo", frozen)]
pub struct PyEcho {
    capabilities: Vec<String>,
}

#[pymethods]
impl PyEcho {
    #[new]
    #[pyo3(signature = (*, capabilities=None))]
    fn new(capabilities: Option<Vec<String>>) -> Self {
        Self {
            capabilities: capabilities.unwrap_or_default(),
        }
    }
}

/// A Rust agent that hands its input to an agent offering `capability` and
/// answers with that agent's result.
#[pyclass(module = "coditect._native", name = "Relay", frozen)]
pub struct PyRelay {
    target: String,
    capabilities: Vec<String>,
}

#[pymethods]
impl PyRelay {
    #[new]
    #[pyo3(signature = (capability, *, capabilities=None))]
    fn new(capability: String, capabilities: Option<Vec<String>>) -> Self {
        Self {
            target: capability,
            capabilities: capabilities.unwrap_or_default(),
        }
    }
}

struct Echo;

impl Agent for Echo {
    type Input = Value;
    type Output = Value;

    async fn handle(&mut self, input: Value, _ctx: &AgentContext) -> Result<Value, AgentError> {
        Ok(input)
    }
}

struct Relay {
    target: Arc<str>,
}

impl Agent for Relay {
    type Input = Value;
    type Output = Value;

    async fn handle(&mut self, input: Value, ctx: &AgentContext) -> Result<Value, AgentError> {
        Ok(ctx.delegate::<Value>(&self.target, input).await?)
    }
}

enum Which {
    Llm(LlmAgent, Vec<Arc<PyTool>>),
    Echo,
    Relay(Arc<str>),
}

/// A Rust agent to register.
pub(crate) struct RustAgent {
    pub(crate) capabilities: Vec<String>,
    pub(crate) description: String,
    which: Which,
}

impl RustAgent {
    /// Puts the agent's Python tools on a runtime's loop.
    pub(crate) fn bind_tools(&self, bridge: &Arc<Bridge>) {
        if let Which::Llm(_, tools) = &self.which {
            for t in tools {
                if let Ok(mut b) = t.bridge.lock() {
                    *b = Some(bridge.clone());
                }
            }
        }
    }

    pub(crate) async fn register(self, b: KindBuilder<'_>) -> Result<AgentKind, RegisterError> {
        match self.which {
            Which::Llm(agent, _) => b.register(move |_| agent.clone()).await,
            Which::Echo => b.register(|_| Echo).await,
            Which::Relay(target) => {
                b.register(move |_| Relay {
                    target: target.clone(),
                })
                .await
            }
        }
    }
}

pub(crate) fn rust_agent(obj: &Bound<'_, PyAny>) -> PyResult<RustAgent> {
    if let Ok(a) = obj.cast::<PyLlmAgent>() {
        let a = a.get();
        return Ok(RustAgent {
            capabilities: a.capabilities.clone(),
            description: a.description.clone(),
            which: Which::Llm(a.agent.clone(), a.tools.clone()),
        });
    }
    if let Ok(a) = obj.cast::<PyEcho>() {
        return Ok(RustAgent {
            capabilities: a.get().capabilities.clone(),
            description: "Answers with its input.".to_owned(),
            which: Which::Echo,
        });
    }
    if let Ok(a) = obj.cast::<PyRelay>() {
        let a = a.get();
        return Ok(RustAgent {
            capabilities: a.capabilities.clone(),
            description: format!("Hands its input to {:?}.", a.target),
            which: Which::Relay(Arc::from(a.target.as_str())),
        });
    }
    Err(PyValueError::new_err(
        "rt.register takes a Rust agent (LlmAgent, Echo, Relay); use @rt.agent for Python handlers",
    ))
}
