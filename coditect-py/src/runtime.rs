//! `Runtime`, Python agents and their `Context`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use coditect_orchestrator::transport::NatsOptions;
use coditect_orchestrator::{
    Agent, AgentContext, AgentError, AgentId, AgentKind, CancellationToken, Destination,
    InMemoryTransport, RequestError, Runtime, TenantId, Transport,
};
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple, PyType};

use crate::bridge::{Awaitable, Bridge, Called, Out, drive};
use crate::error;
use crate::value::{PyValue, from_json, to_json};

/// The shared part of a runtime handle.
pub(crate) struct RtInner {
    pub(crate) rt: Runtime,
    pub(crate) bridge: Arc<Bridge>,
}

/// A coditect runtime: hosts agents (Python and Rust) on a transport.
#[pyclass(module = "coditect._native", name = "Runtime", frozen)]
pub struct PyRuntime {
    pub(crate) inner: Arc<RtInner>,
}

/// An agent's address: a kind and a key.
#[pyclass(module = "coditect._native", name = "AgentId", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PyAgentId {
    pub(crate) id: AgentId,
}

#[pymethods]
impl PyAgentId {
    #[new]
    fn new(kind: &str, key: &str) -> PyResult<Self> {
        AgentId::new(kind, key)
            .map(|id| PyAgentId { id })
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The agent's kind.
    #[getter]
    fn kind(&self) -> String {
        self.id.kind().to_string()
    }

    /// The agent's key.
    #[getter]
    fn key(&self) -> String {
        self.id.key().to_string()
    }

    fn __str__(&self) -> String {
        self.id.to_string()
    }

    fn __repr__(&self) -> String {
        format!(
            "AgentId({:?}, {:?})",
            self.id.kind().as_str(),
            self.id.key().as_str()
        )
    }
}

fn destination(to: &Bound<'_, PyAny>) -> PyResult<Destination> {
    if let Ok(id) = to.cast::<PyAgentId>() {
        return Ok(Destination::from(id.get().id.clone()));
    }
    let s: String = to.extract().map_err(|_| {
        PyTypeError::new_err("an agent is named by an AgentId or a \"kind\" / \"kind/key\" string")
    })?;
    let bad = |e: coditect_orchestrator::IdError| PyValueError::new_err(e.to_string());
    Ok(match s.split_once('/') {
        Some((kind, key)) => Destination::from(AgentId::new(kind, key).map_err(bad)?),
        None => Destination::from(AgentKind::new(&s).map_err(bad)?),
    })
}

fn out_value(r: Result<PyValue, RequestError>) -> Out {
    Box::new(move |py| match r {
        Ok(v) => v.to_py(py),
        Err(e) => Err(error::from_request(py, &e)),
    })
}

/// Runs a registration to its end from synchronous Python code.
fn block_on<T: Send>(py: Python<'_>, bridge: &Bridge, fut: impl Future<Output = T> + Send) -> T {
    let handle = bridge.tokio.clone();
    py.detach(move || {
        let _g = handle.enter();
        futures::executor::block_on(fut)
    })
}

#[pymethods]
impl PyRuntime {
    /// Starts a runtime on the running event loop: in memory, or on NATS.
    #[staticmethod]
    #[pyo3(signature = (*, nats=None, tenant=None, max_concurrency=None, default_timeout_s=None))]
    fn start(
        py: Python<'_>,
        nats: Option<String>,
        tenant: Option<String>,
        max_concurrency: Option<usize>,
        default_timeout_s: Option<f64>,
    ) -> PyResult<Awaitable> {
        let bridge = Bridge::for_running_loop(py)?;
        let tenant = match tenant {
            Some(t) => TenantId::new(&t).map_err(|e| PyValueError::new_err(e.to_string()))?,
            None => TenantId::default(),
        };
        let timeout = default_timeout_s.map(secs).transpose()?;
        let b = bridge.clone();
        let fut = async move {
            let built: Result<Runtime, String> = async {
                let transport: Arc<dyn Transport> = match nats {
                    Some(url) => Arc::new(
                        NatsOptions::new(url)
                            .tenant(tenant.clone())
                            .connect()
                            .await
                            .map_err(|e| e.to_string())?,
                    ),
                    None => Arc::new(InMemoryTransport::new()),
                };
                let mut builder = Runtime::builder_arc(transport).tenant(tenant);
                if let Some(n) = max_concurrency {
                    builder = builder.max_concurrency(n);
                }
                if let Some(t) = timeout {
                    builder = builder.default_timeout(t);
                }
                builder.build().await.map_err(|e| e.to_string())
            }
            .await;
            Box::new(move |py: Python<'_>| match built {
                Ok(rt) => Py::new(
                    py,
                    PyRuntime {
                        inner: Arc::new(RtInner { rt, bridge: b }),
                    },
                )
                .map(Py::into_any),
                Err(e) => {
                    let _ = b.close(py);
                    Err(error::other(py, "TransportError", &e))
                }
            }) as Out
        };
        Ok(bridge.awaitable(Box::pin(fut)))
    }

    /// Registers a Python agent kind; used as a decorator over an
    /// `async def handler(task, ctx)` or a class with such a `handle` method.
    #[pyo3(signature = (kind, *, capabilities=None, description=String::new(), name=None))]
    fn agent(
        slf: Py<Self>,
        kind: String,
        capabilities: Option<Vec<String>>,
        description: String,
        name: Option<String>,
    ) -> AgentDecorator {
        AgentDecorator {
            runtime: slf,
            kind,
            capabilities: capabilities.unwrap_or_default(),
            description,
            name,
        }
    }

    /// Registers a Rust agent (an `LlmAgent`, `Echo` or `Relay`) as `kind`.
    #[pyo3(signature = (kind, agent, *, capabilities=None, description=None))]
    fn register(
        &self,
        py: Python<'_>,
        kind: &str,
        agent: &Bound<'_, PyAny>,
        capabilities: Option<Vec<String>>,
        description: Option<String>,
    ) -> PyResult<()> {
        let rust = crate::agents::rust_agent(agent)?;
        rust.bind_tools(&self.inner.bridge);
        let caps = capabilities.unwrap_or_else(|| rust.capabilities.clone());
        let desc = description.unwrap_or_else(|| rust.description.clone());
        let rt = self.inner.rt.clone();
        let kind = kind.to_owned();
        let r = block_on(py, &self.inner.bridge, async move {
            let mut b = rt.kind(&kind).description(desc);
            for c in caps {
                b = b.capability(c);
            }
            rust.register(b).await
        });
        r.map(|_| ())
            .map_err(|e| error::other(py, "RegistrationError", &e))
    }

    /// Asks an agent (an `AgentId`, `"kind/key"`, or `"kind"` for any agent of
    /// the kind) and awaits its answer.
    #[pyo3(signature = (to, message=None, *, timeout_s=None))]
    fn request(
        &self,
        to: &Bound<'_, PyAny>,
        message: Option<&Bound<'_, PyAny>>,
        timeout_s: Option<f64>,
    ) -> PyResult<Awaitable> {
        let dest = destination(to)?;
        let body = match message {
            Some(m) => PyValue::from_py(m, true)?,
            None => PyValue::Json(serde_json::Value::Null),
        };
        let rt = self.inner.rt.clone();
        let fut: Pin<Box<dyn Future<Output = Out> + Send>> = match timeout_s {
            None => Box::pin(async move { out_value(rt.request::<PyValue>(dest, body).await) }),
            Some(t) => {
                let options = coditect_orchestrator::RequestOptions::timeout(secs(t)?);
                Box::pin(
                    async move { out_value(rt.request_with::<PyValue>(dest, body, options).await) },
                )
            }
        };
        Ok(self.inner.bridge.awaitable(fut))
    }

    /// Sends a message to an agent without waiting for an answer.
    fn send(&self, to: &Bound<'_, PyAny>, message: &Bound<'_, PyAny>) -> PyResult<Awaitable> {
        let dest = destination(to)?;
        let body = PyValue::from_py(message, true)?;
        let rt = self.inner.rt.clone();
        Ok(self.inner.bridge.awaitable(Box::pin(async move {
            let r = rt.send(dest, body).await;
            Box::new(move |py: Python<'_>| match r {
                Ok(()) => Ok(py.None()),
                Err(e) => Err(error::other(py, "TransportError", &e)),
            }) as Out
        })))
    }

    /// The cards of the agent kinds registered here (what planners read).
    fn cards(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        pythonize::pythonize(py, &self.inner.rt.cards())
            .map(Bound::unbind)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }

    /// The tenant this runtime serves.
    #[getter]
    fn tenant(&self) -> String {
        self.inner.rt.tenant().to_string()
    }

    /// Requests from this runtime still waiting for a reply.
    fn pending_requests(&self) -> usize {
        self.inner.rt.pending_requests()
    }

    /// Stops taking messages, lets running work finish for up to `grace_s`
    /// seconds, then cancels the rest.
    #[pyo3(signature = (grace_s=1.0))]
    fn shutdown(&self, grace_s: f64) -> PyResult<Awaitable> {
        let grace = secs(grace_s)?;
        let inner = self.inner.clone();
        Ok(self.inner.bridge.awaitable(Box::pin(async move {
            let report = inner.rt.shutdown(grace).await;
            Box::new(move |py: Python<'_>| {
                inner.bridge.close(py)?;
                Ok(report
                    .drained
                    .into_pyobject(py)?
                    .to_owned()
                    .into_any()
                    .unbind())
            }) as Out
        })))
    }

    /// `async with` support: the runtime itself.
    fn __aenter__(slf: Py<Self>, py: Python<'_>) -> Awaitable {
        let bridge = slf.get().inner.bridge.clone();
        let me = slf.clone_ref(py);
        bridge.awaitable(Box::pin(async move {
            Box::new(move |_py: Python<'_>| Ok(me.into_any())) as Out
        }))
    }

    /// `async with` support: shuts the runtime down (grace of one second).
    #[pyo3(signature = (*_exc))]
    fn __aexit__(&self, _exc: &Bound<'_, PyTuple>) -> PyResult<Awaitable> {
        self.shutdown(1.0)
    }

    fn __repr__(&self) -> String {
        format!(
            "Runtime(tenant={:?}, transport={:?})",
            self.inner.rt.tenant().as_str(),
            self.inner.rt.transport().name()
        )
    }
}

pub(crate) fn secs(s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| PyValueError::new_err(format!("not a duration in seconds: {s}")))
}

/// `@rt.agent(...)`: registers what it decorates and returns it unchanged.
#[pyclass(module = "coditect._native", frozen)]
pub struct AgentDecorator {
    runtime: Py<PyRuntime>,
    kind: String,
    capabilities: Vec<String>,
    description: String,
    name: Option<String>,
}

/// How a Python agent kind is called.
struct PyAgentDef {
    /// The handler function, or the class whose instances handle messages.
    target: Py<PyAny>,
    is_class: bool,
    wants_ctx: bool,
    bridge: Arc<Bridge>,
}

#[pymethods]
impl AgentDecorator {
    fn __call__<'py>(
        &self,
        py: Python<'py>,
        target: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let is_class = target.is_instance_of::<PyType>();
        let wants_ctx: bool = py
            .import(intern!(py, "coditect._values"))?
            .call_method1(intern!(py, "handler_takes_context"), (&target, is_class))?
            .extract()?;
        let rt = self.runtime.get();
        let def = Arc::new(PyAgentDef {
            target: target.clone().unbind(),
            is_class,
            wants_ctx,
            bridge: rt.inner.bridge.clone(),
        });
        let runtime = rt.inner.rt.clone();
        let (kind, caps, desc, name) = (
            self.kind.clone(),
            self.capabilities.clone(),
            self.description.clone(),
            self.name.clone(),
        );
        let r = block_on(py, &rt.inner.bridge, async move {
            let mut b = runtime.kind(&kind).description(desc);
            if let Some(n) = name {
                b = b.name(n);
            }
            for c in caps {
                b = b.capability(c);
            }
            b.register(move |_id: &AgentId| PyAgent {
                def: def.clone(),
                instance: Arc::new(Mutex::new(None)),
            })
            .await
        });
        r.map_err(|e| error::other(py, "RegistrationError", &e))?;
        Ok(target)
    }
}

/// A Python agent, as the runtime hosts it.
struct PyAgent {
    def: Arc<PyAgentDef>,
    /// The instance of a class agent, made on its first message.
    instance: Arc<Mutex<Option<Py<PyAny>>>>,
}

/// What a handler's `Context` asks of the Rust side.
enum Cmd {
    Delegate {
        capability: String,
        task: PyValue,
        reply: oneshot::Sender<Result<PyValue, RequestError>>,
    },
    DelegateAll {
        tasks: Vec<(String, PyValue)>,
        reply: oneshot::Sender<Result<Vec<Result<PyValue, RequestError>>, RequestError>>,
    },
    Request {
        to: Destination,
        message: PyValue,
        reply: oneshot::Sender<Result<PyValue, RequestError>>,
    },
    Emit {
        data: serde_json::Value,
    },
    Effect {
        name: String,
        func: Py<PyAny>,
        reply: oneshot::Sender<Result<serde_json::Value, EffectError>>,
    },
    Ask {
        name: String,
        prompt: String,
        schema: serde_json::Value,
        reply: oneshot::Sender<Result<serde_json::Value, AgentError>>,
    },
}

/// Why `Context.effect` failed: the effect function raised (its exception
/// goes back to the handler unchanged), or the journal refused.
enum EffectError {
    Raised(PyErr),
    Agent(AgentError),
}

fn run_cmd<'a>(ctx: &'a AgentContext, bridge: Arc<Bridge>, cmd: Cmd) -> BoxFuture<'a, ()> {
    match cmd {
        Cmd::Delegate {
            capability,
            task,
            reply,
        } => async move {
            let _ = reply.send(ctx.delegate::<PyValue>(&capability, task).await);
        }
        .boxed(),
        Cmd::DelegateAll { tasks, reply } => async move {
            let _ = reply.send(ctx.delegate_all::<PyValue, PyValue>(tasks).await);
        }
        .boxed(),
        Cmd::Request { to, message, reply } => async move {
            let _ = reply.send(ctx.request::<PyValue>(to, message).await);
        }
        .boxed(),
        Cmd::Emit { data } => async move {
            if let Err(e) = ctx.emit(data).await {
                tracing_warn(&e);
            }
        }
        .boxed(),
        Cmd::Effect { name, func, reply } => async move {
            let _ = reply.send(run_effect(ctx, bridge, &name, func).await);
        }
        .boxed(),
        Cmd::Ask {
            name,
            prompt,
            schema,
            reply,
        } => async move {
            let _ = reply.send(ctx.ask_value(&name, &prompt, schema).await);
        }
        .boxed(),
    }
}

/// Runs a Python effect function through `AgentContext::effect`: called
/// with the effect's key only when the journal has no result for it.
async fn run_effect(
    ctx: &AgentContext,
    bridge: Arc<Bridge>,
    name: &str,
    func: Py<PyAny>,
) -> Result<serde_json::Value, EffectError> {
    let raised: Arc<Mutex<Option<PyErr>>> = Arc::new(Mutex::new(None));
    let stash = raised.clone();
    let r = ctx
        .effect::<serde_json::Value, _, _>(name, move |key| {
            let driven = drive(
                bridge,
                move |py| Called::of(py, func.bind(py).call1((key.to_string(),))?),
                // On the loop's thread, with the GIL: the message is made
                // here so that no tokio thread takes the GIL for it.
                |py, r| {
                    r.and_then(|v| to_json(&v))
                        .map_err(|e| (error::describe(py, &e), e))
                },
            );
            async move {
                match driven.await {
                    Some(Ok(v)) => Ok(v),
                    Some(Err((message, e))) => {
                        if let Ok(mut s) = stash.lock() {
                            *s = Some(e);
                        }
                        Err(AgentError::permanent(message))
                    }
                    None => Err(AgentError::permanent(
                        "the Python event loop stopped before the effect finished",
                    )),
                }
            }
        })
        .await;
    r.map_err(|e| match raised.lock().ok().and_then(|mut s| s.take()) {
        Some(py_err) => EffectError::Raised(py_err),
        None => EffectError::Agent(e),
    })
}

/// An error of the core's context (a refused record, a question outside a
/// durable run, a timed-out wait) as the exception a handler sees; raised
/// on, it reaches the run as the same failure.
fn agent_error(py: Python<'_>, e: &AgentError, agent: &AgentId) -> PyErr {
    error::from_failure(py, &e.to_failure(agent))
}

fn tracing_warn(e: &dyn std::fmt::Display) {
    // The binding has no logger of its own; a lost progress event is not
    // worth failing a handler for.
    let _ = e;
}

impl Agent for PyAgent {
    type Input = PyValue;
    type Output = PyValue;

    async fn handle(&mut self, input: PyValue, ctx: &AgentContext) -> Result<PyValue, AgentError> {
        let def = self.def.clone();
        let bridge = def.bridge.clone();
        let inline = bridge.on_loop_thread();
        let (tx, mut rx) = mpsc::unbounded();
        let info = CtxInfo {
            agent: ctx.id().to_string(),
            run: ctx.run().map(|r| r.to_string()),
            step: ctx.step().map(|s| s.as_str().to_owned()),
            tenant: ctx.tenant().to_string(),
            depth: ctx.depth(),
            attempt: ctx.attempt(),
            deadline: ctx.deadline().map(|d| d.instant().into_std()),
            cancel: ctx.cancellation().clone(),
            idempotency_key: ctx.idempotency_key(),
            agent_id: ctx.id().clone(),
        };
        let instance = self.instance.clone();
        let b = bridge.clone();
        let mut driven = drive(
            bridge.clone(),
            move |py| {
                let task = input.to_py(py)?;
                let target = if def.is_class {
                    let mut slot = instance
                        .lock()
                        .map_err(|_| PyValueError::new_err("agent instance poisoned"))?;
                    let inst = match slot.as_ref() {
                        Some(i) => i.clone_ref(py),
                        None => {
                            let made = def.target.bind(py).call0()?.unbind();
                            *slot = Some(made.clone_ref(py));
                            made
                        }
                    };
                    inst.bind(py).getattr(intern!(py, "handle"))?
                } else {
                    def.target.bind(py).clone()
                };
                let r = if def.wants_ctx {
                    let pyctx = Py::new(
                        py,
                        PyContext {
                            tx,
                            info,
                            bridge: b,
                            keep: inline,
                        },
                    )?;
                    target.call1((task, pyctx))?
                } else {
                    drop(tx);
                    target.call1((task,))?
                };
                Called::of(py, r)
            },
            move |py, r| match r {
                Ok(v) => PyValue::from_py(&v, inline).map_err(|e| {
                    AgentError::permanent(format!(
                        "the handler's result cannot be sent: {}",
                        error::describe(py, &e)
                    ))
                }),
                Err(e) => Err(error::to_agent_error(py, &e)),
            },
        );
        let mut work = FuturesUnordered::new();
        let mut emits = FuturesUnordered::new();
        let mut cancelled = Box::pin(ctx.cancelled());
        let mut cancel_sent = false;
        let result = futures::future::poll_fn(|cx| {
            if !cancel_sent && cancelled.as_mut().poll(cx).is_ready() {
                cancel_sent = true;
                driven.cancel();
            }
            loop {
                while let Poll::Ready(Some(cmd)) = rx.poll_next_unpin(cx) {
                    match cmd {
                        Cmd::Emit { .. } => emits.push(run_cmd(ctx, bridge.clone(), cmd)),
                        other => work.push(run_cmd(ctx, bridge.clone(), other)),
                    }
                }
                while let Poll::Ready(Some(())) = work.poll_next_unpin(cx) {}
                while let Poll::Ready(Some(())) = emits.poll_next_unpin(cx) {}
                if let Poll::Ready(r) = Pin::new(&mut driven).poll(cx) {
                    return Poll::Ready(r);
                }
                match rx.poll_next_unpin(cx) {
                    Poll::Ready(Some(cmd)) => match cmd {
                        Cmd::Emit { .. } => emits.push(run_cmd(ctx, bridge.clone(), cmd)),
                        other => work.push(run_cmd(ctx, bridge.clone(), other)),
                    },
                    _ => return Poll::Pending,
                }
            }
        })
        .await;
        // Progress the handler reported before it returned reaches the run
        // before its result does.
        rx.close();
        while let Ok(cmd) = rx.try_recv() {
            if let Cmd::Emit { .. } = cmd {
                emits.push(run_cmd(ctx, bridge.clone(), cmd));
            }
        }
        drop(work);
        while emits.next().await.is_some() {}
        match result {
            Some(r) => r,
            None => Err(AgentError::permanent(
                "the Python event loop stopped before the handler finished",
            )),
        }
    }
}

/// What a handler's context knows of the message it handles.
struct CtxInfo {
    agent: String,
    run: Option<String>,
    step: Option<String>,
    tenant: String,
    depth: u16,
    attempt: u32,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    idempotency_key: String,
    agent_id: AgentId,
}

/// What a Python agent sees of the system while it handles one message.
#[pyclass(module = "coditect._native", name = "Context", frozen)]
pub struct PyContext {
    tx: mpsc::UnboundedSender<Cmd>,
    info: CtxInfo,
    bridge: Arc<Bridge>,
    /// Whether values may stay Python objects (the handler runs inline).
    keep: bool,
}

const CTX_GONE: &str = "this Context belongs to a handler that has finished";

impl PyContext {
    fn ask_cmd<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Cmd,
        out: impl FnOnce(T) -> Out + Send + 'static,
    ) -> Awaitable {
        let (reply, rx) = oneshot::channel();
        let sent = self.tx.unbounded_send(make(reply)).is_ok();
        self.bridge.awaitable(Box::pin(async move {
            match (sent, rx.await) {
                (true, Ok(v)) => out(v),
                _ => Box::new(|py: Python<'_>| Err(error::other(py, "CoditectError", &CTX_GONE)))
                    as Out,
            }
        }))
    }
}

#[pymethods]
impl PyContext {
    /// Hands a subtask to an agent offering `capability` and awaits its result.
    fn delegate(&self, capability: String, task: &Bound<'_, PyAny>) -> PyResult<Awaitable> {
        let task = PyValue::from_py(task, self.keep)?;
        Ok(self.ask_cmd(
            |reply| Cmd::Delegate {
                capability,
                task,
                reply,
            },
            out_value,
        ))
    }

    /// Hands several subtasks (`(capability, task)` pairs) at once and awaits
    /// every result, in order. The first failure is raised, unless
    /// `return_exceptions` puts each failure in its place instead.
    #[pyo3(signature = (subtasks, *, return_exceptions=false))]
    fn delegate_all(
        &self,
        subtasks: &Bound<'_, PyAny>,
        return_exceptions: bool,
    ) -> PyResult<Awaitable> {
        let mut tasks = Vec::new();
        for item in subtasks.try_iter()? {
            let item = item?;
            let pair = item
                .cast::<PyTuple>()
                .map_err(|_| PyTypeError::new_err("delegate_all takes (capability, task) pairs"))?;
            if pair.len() != 2 {
                return Err(PyTypeError::new_err(
                    "delegate_all takes (capability, task) pairs",
                ));
            }
            let cap: String = pair.get_item(0)?.extract()?;
            tasks.push((cap, PyValue::from_py(&pair.get_item(1)?, self.keep)?));
        }
        Ok(self.ask_cmd(
            |reply| Cmd::DelegateAll { tasks, reply },
            move |r| {
                Box::new(move |py: Python<'_>| {
                    let results = r.map_err(|e| error::from_request(py, &e))?;
                    let list = PyList::empty(py);
                    for r in results {
                        match r {
                            Ok(v) => list.append(v.to_py(py)?)?,
                            Err(e) if return_exceptions => {
                                list.append(error::from_request(py, &e).into_value(py))?
                            }
                            Err(e) => return Err(error::from_request(py, &e)),
                        }
                    }
                    Ok(list.into_any().unbind())
                }) as Out
            },
        ))
    }

    /// Asks one agent (an `AgentId`, `"kind/key"` or `"kind"`) and awaits
    /// its answer.
    fn request(&self, to: &Bound<'_, PyAny>, message: &Bound<'_, PyAny>) -> PyResult<Awaitable> {
        let to = destination(to)?;
        let message = PyValue::from_py(message, self.keep)?;
        Ok(self.ask_cmd(|reply| Cmd::Request { to, message, reply }, out_value))
    }

    /// Reports progress: it reaches the run's events (before the result).
    fn emit(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = to_json(data)?;
        self.tx
            .unbounded_send(Cmd::Emit { data })
            .map_err(|_| error::other(py, "CoditectError", &CTX_GONE))
    }

    /// Runs a side effect at most once per run and returns its result.
    ///
    /// `func(key)` (an `async def` or a plain function) gets the effect's
    /// stable key (`str`: the same on every attempt of the step, so hand it
    /// to outside systems as an idempotency key) and returns a JSON-able
    /// value. In a durable run that value is recorded in the run's journal
    /// before this returns; when the step runs again (resumed after a crash,
    /// retried), the effect returns the recorded value without calling
    /// `func`. Effects are told apart by `name` and by how many of that name
    /// the handler made before, so keep their order deterministic. Outside a
    /// durable run `func` simply runs. An exception `func` raises comes back
    /// unchanged (nothing is recorded; the next attempt calls it again).
    fn effect(&self, name: String, func: Bound<'_, PyAny>) -> PyResult<Awaitable> {
        if !func.is_callable() {
            return Err(PyTypeError::new_err(
                "effect takes a function of the effect key (str)",
            ));
        }
        let func = func.unbind();
        let agent = self.info.agent_id.clone();
        Ok(self.ask_cmd(
            |reply| Cmd::Effect { name, func, reply },
            move |r| {
                Box::new(move |py: Python<'_>| match r {
                    Ok(v) => from_json(py, &v),
                    Err(EffectError::Raised(e)) => Err(e),
                    Err(EffectError::Agent(e)) => Err(agent_error(py, &e, &agent)),
                }) as Out
            },
        ))
    }

    /// Asks for input from outside the run (a person's approval, a missing
    /// fact) and returns the answer once someone gives it with
    /// `Orchestrator.respond(run_id, request_id, value)`, from any process,
    /// after any restart. The run is paused meanwhile; its
    /// `input_requested` event carries the `request` id, `prompt` and
    /// `schema`.
    ///
    /// `schema` is a JSON Schema (a dict) or a type — a pydantic model, a
    /// dataclass, a `TypedDict`, … — whose schema the answer must satisfy;
    /// given a type, the answer comes back as that type. Without a schema
    /// any JSON value is accepted. An answered question is answered again
    /// from the journal when the step runs again. Needs a durable run (an
    /// orchestrator with a store).
    #[pyo3(signature = (name, prompt, *, schema=None))]
    fn ask(
        &self,
        py: Python<'_>,
        name: String,
        prompt: String,
        schema: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Awaitable> {
        let (schema, typ) = match schema {
            None => (serde_json::json!({}), None),
            Some(s) if s.is_instance_of::<pyo3::types::PyDict>() => (to_json(&s)?, None),
            Some(s) => {
                let made = py
                    .import(intern!(py, "coditect._values"))?
                    .call_method1(intern!(py, "schema_of"), (&s,))?;
                (to_json(&made)?, Some(s.unbind()))
            }
        };
        let agent = self.info.agent_id.clone();
        Ok(self.ask_cmd(
            |reply| Cmd::Ask {
                name,
                prompt,
                schema,
                reply,
            },
            move |r| {
                Box::new(move |py: Python<'_>| {
                    let v = r.map_err(|e| agent_error(py, &e, &agent))?;
                    let answer = from_json(py, &v)?;
                    match typ {
                        None => Ok(answer),
                        Some(t) => py
                            .import(intern!(py, "coditect._values"))?
                            .call_method1(intern!(py, "answer_as"), (answer, t))
                            .map(Bound::unbind),
                    }
                }) as Out
            },
        ))
    }

    /// The stable key of this step: the same on every attempt (after a
    /// crash, a timeout, a retry), different for every step and run. Hand it
    /// to systems outside coditect as an idempotency key. Outside a run, the
    /// message's id.
    #[getter]
    fn idempotency_key(&self) -> String {
        self.info.idempotency_key.clone()
    }

    /// Waits until the work is cancelled.
    fn wait_cancelled(&self) -> Awaitable {
        let token = self.info.cancel.clone();
        self.bridge.awaitable(Box::pin(async move {
            token.cancelled().await;
            Box::new(|py: Python<'_>| Ok(py.None())) as Out
        }))
    }

    /// The run this message belongs to, if any.
    #[getter]
    fn run_id(&self) -> Option<String> {
        self.info.run.clone()
    }

    /// The plan step this work is for, if any.
    #[getter]
    fn step(&self) -> Option<String> {
        self.info.step.clone()
    }

    /// This agent's id (`kind/key`).
    #[getter]
    fn agent_id(&self) -> String {
        self.info.agent.clone()
    }

    /// The tenant.
    #[getter]
    fn tenant(&self) -> String {
        self.info.tenant.clone()
    }

    /// How many delegations deep this message is.
    #[getter]
    fn depth(&self) -> u16 {
        self.info.depth
    }

    /// Which attempt at this message this is (1 for the first).
    #[getter]
    fn attempt(&self) -> u32 {
        self.info.attempt
    }

    /// Seconds left before the caller stops waiting, if it waits.
    #[getter]
    fn deadline(&self) -> Option<f64> {
        self.info
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()).as_secs_f64())
    }

    /// Whether the work has been cancelled.
    #[getter]
    fn cancelled(&self) -> bool {
        self.info.cancel.is_cancelled()
    }

    fn __repr__(&self) -> String {
        format!(
            "Context(agent={:?}, run={:?})",
            self.info.agent, self.info.run
        )
    }
}
