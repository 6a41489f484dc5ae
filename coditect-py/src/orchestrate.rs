//! Plans, planners, policies and the orchestrator, for Python.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use coditect_agents::LlmPlanner;
use coditect_orchestrator::orchestrator::{
    Fork, Orchestrator, Plan, Planner, Responded, RunEvents, RunHandle, RunOutcome, RunPolicy,
    StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{AgentId, CancellationToken};
use futures::StreamExt;
use pyo3::exceptions::{PyRuntimeError, PyStopAsyncIteration, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::bridge::{Awaitable, Bridge, Out};
use crate::durable::{self, PyStoredRun};
use crate::error;
use crate::runtime::{PyRuntime, secs};
use crate::value::{from_json, to_json};

/// How a step's input is built: the goal, the run's input, another step's
/// output, a literal, or dicts and lists of these.
#[pyclass(module = "coditect._native", name = "Input", frozen)]
#[derive(Clone)]
pub struct PyInput {
    input: StepInput,
}

#[pymethods]
impl PyInput {
    /// The run's goal, as a string.
    #[staticmethod]
    fn goal() -> Self {
        Self {
            input: StepInput::Goal,
        }
    }

    /// The run's input.
    #[staticmethod]
    fn task_input() -> Self {
        Self {
            input: StepInput::TaskInput,
        }
    }

    /// The output of step `step`.
    #[staticmethod]
    fn output(step: String) -> Self {
        Self {
            input: StepInput::output(step),
        }
    }

    /// A literal value.
    #[staticmethod]
    fn literal(value: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            input: StepInput::Literal(to_json(value)?),
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Input({})",
            serde_json::to_string(&self.input).unwrap_or_default()
        )
    }
}

fn has_input(obj: &Bound<'_, PyAny>) -> bool {
    if obj.cast::<PyInput>().is_ok() {
        return true;
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        return d.values().iter().any(|v| has_input(&v));
    }
    if let Ok(l) = obj.cast::<PyList>() {
        return l.iter().any(|v| has_input(&v));
    }
    false
}

fn input_of(obj: &Bound<'_, PyAny>) -> PyResult<StepInput> {
    if let Ok(i) = obj.cast::<PyInput>() {
        return Ok(i.get().input.clone());
    }
    if has_input(obj) {
        if let Ok(d) = obj.cast::<PyDict>() {
            let mut m = BTreeMap::new();
            for (k, v) in d.iter() {
                m.insert(k.extract::<String>()?, input_of(&v)?);
            }
            return Ok(StepInput::Object(m));
        }
        if let Ok(l) = obj.cast::<PyList>() {
            return Ok(StepInput::Array(
                l.iter().map(|v| input_of(&v)).collect::<PyResult<_>>()?,
            ));
        }
    }
    Ok(StepInput::Literal(to_json(obj)?))
}

/// One step of a plan: who does it (a capability or an agent id), with what
/// input, after which steps.
#[pyclass(module = "coditect._native", name = "Step", frozen)]
#[derive(Clone)]
pub struct PyStep {
    step: Step,
}

#[pymethods]
impl PyStep {
    #[new]
    #[pyo3(signature = (id, capability=None, input=None, *, agent=None, after=None, description=String::new()))]
    fn new(
        id: String,
        capability: Option<String>,
        input: Option<&Bound<'_, PyAny>>,
        agent: Option<String>,
        after: Option<Vec<String>>,
        description: String,
    ) -> PyResult<Self> {
        let input = match input {
            Some(i) => input_of(i)?,
            None => StepInput::Goal,
        };
        let mut step = match (capability, agent) {
            (Some(c), None) => Step::new(id, c, input),
            (None, Some(a)) => {
                let a: AgentId = a.parse().map_err(|e: coditect_orchestrator::IdError| {
                    PyValueError::new_err(e.to_string())
                })?;
                Step::for_agent(id, a, input)
            }
            _ => {
                return Err(PyTypeError::new_err(
                    "a step names exactly one of a capability or an agent",
                ));
            }
        };
        if let Some(deps) = after {
            step = step.after(deps);
        }
        if !description.is_empty() {
            step = step.describe(description);
        }
        Ok(Self { step })
    }

    /// The step's id.
    #[getter]
    fn id(&self) -> String {
        self.step.id.as_str().to_owned()
    }

    fn __repr__(&self) -> String {
        format!(
            "Step({})",
            serde_json::to_string(&self.step).unwrap_or_default()
        )
    }
}

/// A plan: a DAG of steps, validated when a run starts.
#[pyclass(module = "coditect._native", name = "Plan", frozen)]
#[derive(Clone)]
pub struct PyPlan {
    plan: Plan,
}

#[pymethods]
impl PyPlan {
    #[new]
    #[pyo3(signature = (steps, *, output=None))]
    fn new(steps: Vec<PyRef<'_, PyStep>>, output: Option<String>) -> Self {
        let mut plan = Plan::new(steps.iter().map(|s| s.step.clone()));
        if let Some(o) = output {
            plan = plan.output(o);
        }
        Self { plan }
    }

    /// The plan as a dict (what an LLM planner would submit).
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        pythonize::pythonize(py, &self.plan)
            .map(Bound::unbind)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

/// A planner that always answers the plan it was given.
#[pyclass(module = "coditect._native", name = "StaticPlanner", frozen)]
pub struct PyStaticPlanner {
    plan: Plan,
}

#[pymethods]
impl PyStaticPlanner {
    #[new]
    fn new(plan: PyRef<'_, PyPlan>) -> Self {
        Self {
            plan: plan.plan.clone(),
        }
    }
}

/// A planner that asks a model for a validated plan over the registered agents.
#[pyclass(module = "coditect._native", name = "LlmPlanner", frozen)]
pub struct PyLlmPlanner {
    planner: Arc<LlmPlanner>,
}

#[pymethods]
impl PyLlmPlanner {
    #[new]
    #[pyo3(signature = (model, *, instructions=None, max_tokens=None, max_repairs=None))]
    fn new(
        model: &Bound<'_, PyAny>,
        instructions: Option<String>,
        max_tokens: Option<u32>,
        max_repairs: Option<u32>,
    ) -> PyResult<Self> {
        let mut p = LlmPlanner::shared(crate::agents::planner_model(model)?);
        if let Some(i) = instructions {
            p = p.instructions(i);
        }
        if let Some(n) = max_tokens {
            p = p.max_tokens(n);
        }
        if let Some(n) = max_repairs {
            p = p.max_repairs(n);
        }
        Ok(Self {
            planner: Arc::new(p),
        })
    }
}

struct SharedPlanner(Arc<LlmPlanner>);

#[async_trait::async_trait]
impl Planner for SharedPlanner {
    async fn plan(
        &self,
        task: &TaskSpec,
        ctx: &coditect_orchestrator::orchestrator::PlanningContext,
    ) -> Result<Plan, coditect_orchestrator::orchestrator::PlanError> {
        self.0.plan(task, ctx).await
    }

    async fn replan(
        &self,
        task: &TaskSpec,
        state: &coditect_orchestrator::orchestrator::RunState,
        failure: &coditect_orchestrator::orchestrator::StepFailure,
        ctx: &coditect_orchestrator::orchestrator::PlanningContext,
    ) -> Result<Option<Plan>, coditect_orchestrator::orchestrator::PlanError> {
        self.0.replan(task, state, failure, ctx).await
    }
}

/// The limits of a run; each ends the run with a clear error.
#[pyclass(module = "coditect._native", name = "Policy", frozen)]
#[derive(Clone)]
pub struct PyPolicy {
    policy: RunPolicy,
}

#[pymethods]
impl PyPolicy {
    #[new]
    #[pyo3(signature = (*, max_tokens=None, max_cost_usd=None, max_depth=None, deadline_s=None, max_fanout=None, max_steps=None, step_timeout_s=None, max_attempts=None, max_replans=None, input_timeout_s=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        max_tokens: Option<u64>,
        max_cost_usd: Option<f64>,
        max_depth: Option<u16>,
        deadline_s: Option<f64>,
        max_fanout: Option<u32>,
        max_steps: Option<usize>,
        step_timeout_s: Option<f64>,
        max_attempts: Option<u32>,
        max_replans: Option<u32>,
        input_timeout_s: Option<f64>,
    ) -> PyResult<Self> {
        let mut p = RunPolicy {
            max_tokens,
            max_cost_usd,
            deadline: deadline_s.map(secs).transpose()?,
            step_timeout: step_timeout_s.map(secs).transpose()?,
            input_timeout: input_timeout_s.map(secs).transpose()?,
            ..RunPolicy::default()
        };
        if let Some(d) = max_depth {
            p.max_depth = d;
        }
        if let Some(f) = max_fanout {
            p.max_fanout = f;
        }
        if let Some(s) = max_steps {
            p.max_steps = s;
        }
        if let Some(a) = max_attempts {
            p.retry.max_attempts = a.max(1);
        }
        if let Some(r) = max_replans {
            p.max_replans = r;
        }
        Ok(Self { policy: p })
    }

    fn __repr__(&self) -> String {
        format!(
            "Policy({})",
            serde_json::to_string(&self.policy).unwrap_or_default()
        )
    }
}

/// Runs tasks: plans them, dispatches every ready step to an agent, and
/// returns one result.
///
/// With `store=`, every run is durable: journaled in the store under a
/// lease, resumable after a crash from any process (`resume`), able to ask
/// for input (`Context.ask`, answered with `respond`), and readable back
/// (`replay`, `fork`).
#[pyclass(module = "coditect._native", name = "Orchestrator", frozen)]
pub struct PyOrchestrator {
    orch: Orchestrator,
    bridge: Arc<Bridge>,
    policy: RunPolicy,
    tenant: coditect_orchestrator::TenantId,
    durable: bool,
}

struct CancelOnDrop(Option<CancellationToken>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.cancel();
        }
    }
}

impl PyOrchestrator {
    fn task(
        &self,
        goal: String,
        input: Option<&Bound<'_, PyAny>>,
        policy: Option<PyRef<'_, PyPolicy>>,
    ) -> PyResult<TaskSpec> {
        let input = match input {
            Some(i) => to_json(i)?,
            None => serde_json::Value::Null,
        };
        Ok(TaskSpec::new(goal)
            .input(input)
            .tenant(self.tenant.clone())
            .policy(policy.map_or_else(|| self.policy.clone(), |p| p.policy.clone())))
    }

    fn start_handle(&self, task: TaskSpec) -> RunHandle {
        let _tokio = self.bridge.tokio.enter();
        self.orch.start(task)
    }

    /// An awaitable for a durable-run operation of run `run` ending in a
    /// handle.
    fn handle_awaitable(
        &self,
        run: Option<coditect_orchestrator::RunId>,
        fut: impl std::future::Future<
            Output = Result<RunHandle, coditect_orchestrator::orchestrator::DurableError>,
        > + Send
        + 'static,
    ) -> Awaitable {
        let bridge = self.bridge.clone();
        self.bridge.awaitable(Box::pin(async move {
            let r = fut.await;
            Box::new(move |py: Python<'_>| match r {
                Ok(h) => Py::new(py, PyRunHandle::of(h, bridge)).map(Py::into_any),
                Err(e) => Err(durable::from_durable(py, &e, run)),
            }) as Out
        }))
    }
}

fn outcome_out(r: Result<RunOutcome, coditect_orchestrator::orchestrator::RunError>) -> Out {
    Box::new(move |py: Python<'_>| match r {
        Ok(o) => Py::new(py, PyOutcome::of(py, &o)?).map(Py::into_any),
        Err(e) => Err(error::from_run(py, &e)),
    })
}

#[pymethods]
impl PyOrchestrator {
    #[new]
    #[pyo3(signature = (runtime, *, planner, policy=None, cards=None, store=None, lease_holder=None, lease_ttl_s=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        runtime: PyRef<'_, PyRuntime>,
        planner: &Bound<'_, PyAny>,
        policy: Option<PyRef<'_, PyPolicy>>,
        cards: Option<&Bound<'_, PyAny>>,
        store: Option<&Bound<'_, PyAny>>,
        lease_holder: Option<String>,
        lease_ttl_s: Option<f64>,
    ) -> PyResult<Self> {
        let rt = runtime.inner.rt.clone();
        let planner: Arc<dyn Planner> = if let Ok(p) = planner.cast::<PyStaticPlanner>() {
            Arc::new(StaticPlanner::new(p.get().plan.clone()))
        } else if let Ok(p) = planner.cast::<PyLlmPlanner>() {
            Arc::new(SharedPlanner(p.get().planner.clone()))
        } else {
            return Err(PyTypeError::new_err(
                "a planner is a coditect.StaticPlanner or a coditect.LlmPlanner",
            ));
        };
        let mut orch = Orchestrator::with_planner(rt.clone(), planner);
        if let Some(c) = cards {
            let cards: Vec<coditect_orchestrator::AgentCard> = pythonize::depythonize(c)
                .map_err(|e| PyValueError::new_err(format!("cards: {e}")))?;
            orch = orch.cards(cards);
        }
        if let Some(s) = store {
            orch = orch.store(durable::store_of(s)?);
        }
        if let Some(h) = lease_holder {
            orch = orch.lease_holder(h);
        }
        if let Some(t) = lease_ttl_s {
            orch = orch.lease_ttl(secs(t)?);
        }
        Ok(Self {
            durable: store.is_some(),
            tenant: rt.tenant().clone(),
            orch,
            bridge: runtime.inner.bridge.clone(),
            policy: policy.map(|p| p.policy.clone()).unwrap_or_default(),
        })
    }

    /// Runs a task to the end and returns its `Outcome`. Cancelling the
    /// awaiting task cancels the run.
    #[pyo3(signature = (goal, *, input=None, policy=None))]
    fn run(
        &self,
        goal: String,
        input: Option<&Bound<'_, PyAny>>,
        policy: Option<PyRef<'_, PyPolicy>>,
    ) -> PyResult<Awaitable> {
        let handle = self.start_handle(self.task(goal, input, policy)?);
        let mut guard = CancelOnDrop(Some(handle.cancellation()));
        Ok(self.bridge.awaitable(Box::pin(async move {
            let r = handle.outcome().await;
            let _ = guard.0.take();
            outcome_out(r)
        })))
    }

    /// Starts a task and returns its `RunHandle` (events, cancel, outcome).
    #[pyo3(signature = (goal, *, input=None, policy=None))]
    fn start(
        &self,
        goal: String,
        input: Option<&Bound<'_, PyAny>>,
        policy: Option<PyRef<'_, PyPolicy>>,
    ) -> PyResult<PyRunHandle> {
        let handle = self.start_handle(self.task(goal, input, policy)?);
        Ok(PyRunHandle::of(handle, self.bridge.clone()))
    }

    /// Starts a durable run (the orchestrator needs a store) and returns its
    /// `RunHandle` once the run's start is in the store's journal: from then
    /// on its `run_id` names a run that survives this process. Raises
    /// `NoStore` without a store, `StoreError` if the run could not be
    /// journaled.
    #[pyo3(signature = (goal, *, input=None, policy=None))]
    fn submit(
        &self,
        goal: String,
        input: Option<&Bound<'_, PyAny>>,
        policy: Option<PyRef<'_, PyPolicy>>,
    ) -> PyResult<Awaitable> {
        let task = self.task(goal, input, policy)?;
        let orch = self.orch.clone();
        Ok(self.handle_awaitable(None, async move { orch.submit(task).await }))
    }

    /// Continues a stored run that no orchestrator drives (its process died):
    /// succeeded steps are not run again, in-flight ones go again with their
    /// next attempt, and effects they already made return their recorded
    /// results. Returns its `RunHandle`. Raises `RunNotFound`, `RunBusy`
    /// (another orchestrator holds the run's lease), `RunFinished`, `NoStore`,
    /// `JournalCorrupt` or `StoreError`.
    fn resume(&self, run_id: &str) -> PyResult<Awaitable> {
        let run = durable::run_id(run_id)?;
        let orch = self.orch.clone();
        Ok(self.handle_awaitable(Some(run), async move { orch.resume(run).await }))
    }

    /// Answers the question `request_id` of run `run_id` (asked with
    /// `Context.ask`; the id is the `request` of its `input_requested` event)
    /// with `value`, checked against the question's JSON Schema first.
    ///
    /// Returns `None` when the run is driven here (the waiting handler has
    /// the answer now), or the `RunHandle` of the run resumed here with the
    /// answer when nobody drove it (its process died). Raises
    /// `InvalidAnswer` (nothing recorded, the run stays paused),
    /// `NoSuchRequest`, `AlreadyAnswered`, `RunBusy` (another process drives
    /// the run: answer through it), or as `resume`.
    fn respond(
        &self,
        run_id: &str,
        request_id: &str,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<Awaitable> {
        let run = durable::run_id(run_id)?;
        let request = coditect_orchestrator::EffectKey::from(request_id);
        let value = to_json(value)?;
        let orch = self.orch.clone();
        let bridge = self.bridge.clone();
        Ok(self.bridge.awaitable(Box::pin(async move {
            let r = orch.respond(run, &request, value).await;
            Box::new(move |py: Python<'_>| match r {
                Ok(Responded::Resumed(h)) => {
                    Py::new(py, PyRunHandle::of(h, bridge)).map(Py::into_any)
                }
                Ok(_) => Ok(py.None()),
                Err(e) => Err(durable::from_durable(py, &e, Some(run))),
            }) as Out
        })))
    }

    /// Reads a stored run back: a `StoredRun` with its events (the same
    /// dicts its handle's `events()` gave) and their fold (`state`,
    /// `status`, `open_questions`). Raises `RunNotFound`, `NoStore`,
    /// `JournalCorrupt` or `StoreError`.
    fn replay(&self, run_id: &str) -> PyResult<Awaitable> {
        let run = durable::run_id(run_id)?;
        let orch = self.orch.clone();
        Ok(self.bridge.awaitable(Box::pin(async move {
            let r = orch.replay(run).await;
            Box::new(move |py: Python<'_>| match r {
                Ok(stored) => Py::new(py, PyStoredRun::of(py, run, &stored)?).map(Py::into_any),
                Err(e) => Err(durable::from_durable(py, &e, Some(run))),
            }) as Out
        })))
    }

    /// Starts a new run from stored run `run_id`: its first `at` events
    /// (results, effects, answers) are kept, the rest runs anew. With `step`
    /// and `input` (an `Input` or a literal), that step and every step
    /// depending on it run anew with the new input. Returns the new run's
    /// `RunHandle`. Raises `NoSuchRequest` (no such step in the plan), or as
    /// `replay`.
    #[pyo3(signature = (run_id, *, at, step=None, input=None))]
    fn fork(
        &self,
        run_id: &str,
        at: u64,
        step: Option<String>,
        input: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Awaitable> {
        let run = durable::run_id(run_id)?;
        let mut fork = Fork::at(at);
        match (step, input) {
            (Some(s), Some(i)) => {
                let step = s.parse().map_err(|e: coditect_orchestrator::IdError| {
                    PyValueError::new_err(e.to_string())
                })?;
                fork = fork.with_input(step, input_of(i)?);
            }
            (None, None) => {}
            _ => {
                return Err(PyTypeError::new_err(
                    "fork takes step and input together, or neither",
                ));
            }
        }
        let orch = self.orch.clone();
        Ok(self.handle_awaitable(Some(run), async move { orch.fork(run, fork).await }))
    }

    /// Whether runs are durable here (the orchestrator has a store).
    #[getter]
    fn durable(&self) -> bool {
        self.durable
    }

    /// The cards plans may use.
    fn cards(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        pythonize::pythonize(py, &self.orch.all_cards())
            .map(Bound::unbind)
            .map_err(|e| PyValueError::new_err(e.to_string()))
    }
}

/// A run in progress: its events, a way to cancel it, its outcome.
#[pyclass(module = "coditect._native", name = "RunHandle", frozen)]
pub struct PyRunHandle {
    run_id: String,
    cancel: CancellationToken,
    handle: Mutex<Option<RunHandle>>,
    events: Arc<futures::lock::Mutex<RunEvents>>,
    bridge: Arc<Bridge>,
}

impl PyRunHandle {
    fn of(mut handle: RunHandle, bridge: Arc<Bridge>) -> Self {
        let events = handle.events();
        Self {
            run_id: handle.id().to_string(),
            cancel: handle.cancellation(),
            handle: Mutex::new(Some(handle)),
            events: Arc::new(futures::lock::Mutex::new(events)),
            bridge,
        }
    }
}

#[pymethods]
impl PyRunHandle {
    /// The run's id.
    #[getter]
    fn run_id(&self) -> String {
        self.run_id.clone()
    }

    /// The run's events from its start, as they happen (`async for`).
    fn events(&self) -> EventStream {
        EventStream {
            events: self.events.clone(),
            bridge: self.bridge.clone(),
        }
    }

    /// Cancels the run: no more dispatching, every running handler is told.
    fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the run to end and returns its `Outcome`.
    fn outcome(&self) -> PyResult<Awaitable> {
        let handle = self
            .handle
            .lock()
            .ok()
            .and_then(|mut h| h.take())
            .ok_or_else(|| {
                PyRuntimeError::new_err("the outcome of this run was already awaited")
            })?;
        Ok(self
            .bridge
            .awaitable(Box::pin(async move { outcome_out(handle.outcome().await) })))
    }
}

/// The events of a run, for `async for`.
#[pyclass(module = "coditect._native", name = "EventStream", frozen)]
pub struct EventStream {
    events: Arc<futures::lock::Mutex<RunEvents>>,
    bridge: Arc<Bridge>,
}

#[pymethods]
impl EventStream {
    fn __aiter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __anext__(&self) -> Awaitable {
        let events = self.events.clone();
        self.bridge.awaitable(Box::pin(async move {
            let next = events.lock().await.next().await;
            Box::new(move |py: Python<'_>| match next {
                None => Err(PyStopAsyncIteration::new_err(())),
                Some(record) => from_json(py, &durable::event_json(&record)?),
            }) as Out
        }))
    }
}

/// Tokens and money a run spent.
#[pyclass(module = "coditect._native", name = "Usage", frozen, get_all)]
pub struct PyUsage {
    /// Input (prompt) tokens.
    input_tokens: u64,
    /// Output tokens.
    output_tokens: u64,
    /// Cost in US dollars.
    cost_usd: f64,
}

#[pymethods]
impl PyUsage {
    /// Input plus output tokens.
    #[getter]
    fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    fn __repr__(&self) -> String {
        format!(
            "Usage(input_tokens={}, output_tokens={}, cost_usd={})",
            self.input_tokens, self.output_tokens, self.cost_usd
        )
    }
}

/// A finished run.
#[pyclass(module = "coditect._native", name = "Outcome", frozen, get_all)]
pub struct PyOutcome {
    /// The run's id.
    run_id: String,
    /// The final result.
    output: Py<PyAny>,
    /// Every step's result, by step id.
    steps: Py<PyAny>,
    /// Who asked whom: steps, and under each the subtasks it caused.
    trace: Py<PyAny>,
    /// Tokens and money spent over the whole run.
    usage: Py<PyUsage>,
    /// Wall-clock time of the run, in seconds.
    duration_s: f64,
}

impl PyOutcome {
    fn of(py: Python<'_>, o: &RunOutcome) -> PyResult<Self> {
        let conv = |e: pythonize::PythonizeError| PyValueError::new_err(e.to_string());
        Ok(Self {
            run_id: o.run.to_string(),
            output: from_json(py, &o.output)?,
            steps: pythonize::pythonize(py, &o.steps).map_err(conv)?.unbind(),
            trace: pythonize::pythonize(py, &o.trace).map_err(conv)?.unbind(),
            usage: Py::new(
                py,
                PyUsage {
                    input_tokens: o.usage.input_tokens,
                    output_tokens: o.usage.output_tokens,
                    cost_usd: o.usage.cost_usd,
                },
            )?,
            duration_s: o.duration.as_secs_f64(),
        })
    }
}

#[pymethods]
impl PyOutcome {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Outcome(run_id={:?}, output={})",
            self.run_id,
            self.output
                .bind(py)
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_default()
        )
    }
}
