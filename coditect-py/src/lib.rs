//! The `coditect` Python package's native module (`coditect._native`).
//!
//! A thin binding over the public API of `coditect-orchestrator`,
//! `coditect-agents` and `coditect-claude`: each Python class is a newtype
//! around the core handle (cheap to clone, shared by `Arc`), `error` maps
//! the core's error kinds to the exceptions of `coditect._errors`, and
//! `bridge` runs Rust futures and Python coroutines on the caller's asyncio
//! event loop. The Python package around it (`python/coditect`) adds the
//! `@tool` decorator, the exception classes and the type stubs.

mod agents;
mod bridge;
mod durable;
mod error;
mod orchestrate;
mod runtime;
mod value;

use pyo3::prelude::*;

/// The native part of the `coditect` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<runtime::PyRuntime>()?;
    m.add_class::<runtime::PyAgentId>()?;
    m.add_class::<runtime::PyContext>()?;
    m.add_class::<runtime::AgentDecorator>()?;
    m.add_class::<bridge::Awaitable>()?;
    m.add_class::<orchestrate::PyInput>()?;
    m.add_class::<orchestrate::PyStep>()?;
    m.add_class::<orchestrate::PyPlan>()?;
    m.add_class::<orchestrate::PyStaticPlanner>()?;
    m.add_class::<orchestrate::PyLlmPlanner>()?;
    m.add_class::<orchestrate::PyPolicy>()?;
    m.add_class::<orchestrate::PyOrchestrator>()?;
    m.add_class::<orchestrate::PyRunHandle>()?;
    m.add_class::<orchestrate::EventStream>()?;
    m.add_class::<orchestrate::PyOutcome>()?;
    m.add_class::<orchestrate::PyUsage>()?;
    m.add_class::<durable::PyMemoryStore>()?;
    m.add_class::<durable::PySqliteStore>()?;
    m.add_class::<durable::PyPostgresStore>()?;
    m.add_class::<durable::PyStoredRun>()?;
    m.add_class::<agents::PyScriptedModel>()?;
    m.add_class::<agents::PyScriptedReply>()?;
    m.add_class::<agents::PyClaude>()?;
    m.add_class::<agents::PyLlmAgent>()?;
    m.add_class::<agents::PyEcho>()?;
    m.add_class::<agents::PyRelay>()?;
    Ok(())
}
