//! Rust errors as Python exceptions, and Python exceptions as agent errors.
//!
//! The exception classes live in `coditect._errors` (Python, so each carries
//! its docstring and attributes); this module picks the class from the Rust
//! error's kind, never from its message.

use coditect_orchestrator::orchestrator::{RunError, RunErrorKind};
use coditect_orchestrator::{AgentError, AgentErrorKind, Failure, FailureKind, RequestError};
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

/// A `ValueError` (made without the GIL; raised when Python gets it).
pub(crate) fn value_error(message: impl Into<String>) -> PyErr {
    PyValueError::new_err(message.into())
}

fn errors_module(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();
    ERRORS
        .get_or_try_init(py, || py.import("coditect._errors").map(Bound::unbind))
        .map(|m| m.bind(py))
}

/// An exception of class `name` from `coditect._errors` with attributes.
pub(crate) fn raise(
    py: Python<'_>,
    name: &str,
    message: &str,
    attrs: &[(&str, Py<PyAny>)],
) -> PyErr {
    let made = (|| -> PyResult<PyErr> {
        let class = errors_module(py)?.getattr(name)?;
        let kwargs = PyDict::new(py);
        for (k, v) in attrs {
            kwargs.set_item(*k, v)?;
        }
        let exc = class.call((message,), Some(&kwargs))?;
        Ok(PyErr::from_value(exc))
    })();
    made.unwrap_or_else(|e| e)
}

fn obj<'py, T>(py: Python<'py>, v: T) -> Py<PyAny>
where
    T: IntoPyObject<'py>,
{
    v.into_py_any(py).unwrap_or_else(|_| py.None())
}

fn class_of(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Handler | FailureKind::Panicked => "HandlerError",
        FailureKind::NoSuchAgent => "NoSuchAgent",
        FailureKind::BadInput => "BadInput",
        FailureKind::Timeout => "Timeout",
        FailureKind::Cancelled => "Cancelled",
        FailureKind::CallCycle => "CallCycle",
        FailureKind::ShuttingDown => "ShuttingDown",
        FailureKind::Policy => "PolicyViolation",
        _ => "CoditectError",
    }
}

fn kind_name<T: serde::Serialize>(kind: &T) -> String {
    match serde_json::to_value(kind) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(serde_json::Value::Object(m)) => m
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("other")
            .to_owned(),
        _ => "other".to_owned(),
    }
}

/// The type name a Python handler's failure message starts with (the
/// binding writes them as `"<type>: <message>"`).
fn error_type(message: &str) -> Option<&str> {
    let (head, _) = message.split_once(": ")?;
    let ident = !head.is_empty()
        && head
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'));
    ident.then_some(head)
}

fn failure_attrs(py: Python<'_>, f: &Failure) -> Vec<(&'static str, Py<PyAny>)> {
    let mut attrs = vec![
        ("kind", obj(py, kind_name(&f.kind))),
        ("agent", obj(py, f.agent.as_ref().map(|a| a.to_string()))),
        ("transient", obj(py, f.transient)),
        (
            "_failure",
            pythonize::pythonize(py, f)
                .map(Bound::unbind)
                .unwrap_or_else(|_| py.None()),
        ),
    ];
    if matches!(f.kind, FailureKind::Handler | FailureKind::Panicked) {
        attrs.push(("error_type", obj(py, error_type(&f.message))));
    }
    attrs
}

/// A failure that came back from an agent, as an exception.
pub(crate) fn from_failure(py: Python<'_>, f: &Failure) -> PyErr {
    raise(py, class_of(f.kind), &f.message, &failure_attrs(py, f))
}

/// A failed request, as an exception.
pub(crate) fn from_request(py: Python<'_>, e: &RequestError) -> PyErr {
    match e {
        RequestError::Failed(f) => from_failure(py, f),
        other => {
            let f = other.to_failure();
            let class = match other {
                RequestError::Send(_) => "TransportError",
                _ => class_of(f.kind),
            };
            raise(py, class, &other.to_string(), &failure_attrs(py, &f))
        }
    }
}

/// A run that ended without a result, as an exception.
pub(crate) fn from_run(py: Python<'_>, e: &RunError) -> PyErr {
    let mut attrs: Vec<(&str, Py<PyAny>)> = vec![
        ("run_id", obj(py, e.run.to_string())),
        ("kind", obj(py, kind_name(&e.kind))),
        (
            "finished_steps",
            pythonize::pythonize(py, &e.finished_steps())
                .map(Bound::unbind)
                .unwrap_or_else(|_| py.None()),
        ),
    ];
    let class = match &e.kind {
        RunErrorKind::InvalidPlan(_) => "PlanInvalid",
        RunErrorKind::StepFailed {
            step,
            agent,
            failure,
        } => {
            let mut fa = failure_attrs(py, failure);
            fa.retain(|(k, _)| *k != "kind" && *k != "agent");
            attrs.extend(fa);
            attrs.push(("step", obj(py, step.as_str())));
            attrs.push(("agent", obj(py, agent.as_ref().map(|a| a.to_string()))));
            attrs.push(("failure_kind", obj(py, kind_name(&failure.kind))));
            class_of(failure.kind)
        }
        RunErrorKind::TokenBudget { used, limit } => {
            attrs.push(("budget", obj(py, "tokens")));
            attrs.push(("used", obj(py, *used)));
            attrs.push(("limit", obj(py, *limit)));
            "BudgetExceeded"
        }
        RunErrorKind::CostBudget { used, limit } => {
            attrs.push(("budget", obj(py, "cost_usd")));
            attrs.push(("used", obj(py, *used)));
            attrs.push(("limit", obj(py, *limit)));
            "BudgetExceeded"
        }
        RunErrorKind::StepBudget { used, limit } => {
            attrs.push(("budget", obj(py, "steps")));
            attrs.push(("used", obj(py, *used)));
            attrs.push(("limit", obj(py, *limit)));
            "BudgetExceeded"
        }
        RunErrorKind::Deadline => "Timeout",
        RunErrorKind::Cancelled => "Cancelled",
        _ => "CoditectError",
    };
    raise(py, class, &e.message, &attrs)
}

/// Any other Rust error, as an exception of class `name`.
pub(crate) fn other(py: Python<'_>, name: &str, e: &dyn std::fmt::Display) -> PyErr {
    raise(py, name, &e.to_string(), &[])
}

/// An error of the Claude client, as a `ClaudeError`.
pub(crate) fn from_claude(py: Python<'_>, e: &coditect_claude::Error) -> PyErr {
    let api = e.api_error();
    let attrs = vec![
        ("kind", obj(py, format!("{:?}", e.kind()).to_lowercase())),
        ("status", obj(py, api.map(|a| a.status))),
        ("request_id", obj(py, e.request_id())),
        (
            "error_type",
            obj(py, api.map(|a| a.error_type.as_str().to_owned())),
        ),
        ("retryable", obj(py, e.is_retryable())),
    ];
    raise(py, "ClaudeError", &e.to_string(), &attrs)
}

/// An exception raised by Python code run for an agent, as the agent's
/// error. A coditect exception from a nested request passes its failure on
/// unchanged; `CancelledError` is a cancellation; a coditect exception made
/// with `transient=True` is a transient failure (the run may retry the
/// step); anything else is a handler failure named `"<type>: <message>"`.
pub(crate) fn to_agent_error(py: Python<'_>, e: &PyErr) -> AgentError {
    let value = e.value(py);
    if let Ok(f) = value.getattr(intern!(py, "_failure"))
        && !f.is_none()
        && let Ok(failure) = pythonize::depythonize::<Failure>(&f)
    {
        return AgentError::from(failure);
    }
    if let Ok(cancelled) = crate::bridge::asyncio(py).and_then(|a| a.getattr("CancelledError"))
        && value.is_instance(&cancelled).unwrap_or(false)
    {
        return AgentError::with_kind(AgentErrorKind::Cancelled, "the handler was cancelled");
    }
    // A handler asks for a retry by raising a coditect error made with
    // `transient=True` (e.g. `HandlerError("busy", transient=True)`).
    if let Ok(base) = errors_module(py).and_then(|m| m.getattr("CoditectError"))
        && value.is_instance(&base).unwrap_or(false)
        && value
            .getattr(intern!(py, "transient"))
            .and_then(|t| t.is_truthy())
            .unwrap_or(false)
    {
        return AgentError::transient(describe(py, e));
    }
    AgentError::permanent(describe(py, e))
}

/// `"<type>: <message>"` of a Python exception.
pub(crate) fn describe(py: Python<'_>, e: &PyErr) -> String {
    let ty = e
        .get_type(py)
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    let msg = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    format!("{ty}: {msg}")
}
