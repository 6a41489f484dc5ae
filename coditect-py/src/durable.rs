//! Durable runs for Python: the run stores, a stored run read back, and the
//! errors of resume / respond / replay / fork.
//!
//! A store class is a newtype around an `Arc<dyn Store>`, shared with every
//! orchestrator it is given to; what an orchestrator does with it (journal
//! every run, resume, answer questions) is the Rust core's.

use std::sync::Arc;

use coditect_orchestrator::RunId;
use coditect_orchestrator::orchestrator::{
    DurableError, DurableErrorKind, RunEventRecord, StoredRun,
};
use coditect_orchestrator::store::{
    MemoryStore, PostgresStore, SqliteStore, Store, StoreError, StoreErrorKind, StoreOptions,
};
use pyo3::IntoPyObjectExt;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::bridge::{self, Awaitable, Out};
use crate::error;
use crate::value::from_json;

/// A run id from Python text.
pub(crate) fn run_id(s: &str) -> PyResult<RunId> {
    s.parse()
        .map_err(|e: coditect_orchestrator::IdError| PyValueError::new_err(e.to_string()))
}

/// The store behind a Python store object.
pub(crate) fn store_of(obj: &Bound<'_, PyAny>) -> PyResult<Arc<dyn Store>> {
    if let Ok(s) = obj.cast::<PyMemoryStore>() {
        return Ok(s.get().store.clone());
    }
    if let Ok(s) = obj.cast::<PySqliteStore>() {
        return Ok(s.get().store.clone());
    }
    if let Ok(s) = obj.cast::<PyPostgresStore>() {
        return Ok(s.get().store.clone());
    }
    Err(PyTypeError::new_err(
        "a store is a coditect.MemoryStore, SqliteStore or PostgresStore",
    ))
}

/// The exception class of a durable-run error's kind.
fn class_of(kind: DurableErrorKind) -> &'static str {
    match kind {
        DurableErrorKind::NoStore => "NoStore",
        DurableErrorKind::NotFound => "RunNotFound",
        DurableErrorKind::Busy => "RunBusy",
        DurableErrorKind::Finished => "RunFinished",
        DurableErrorKind::NoSuchRequest => "NoSuchRequest",
        DurableErrorKind::AlreadyAnswered => "AlreadyAnswered",
        DurableErrorKind::InvalidAnswer => "InvalidAnswer",
        DurableErrorKind::Corrupt => "JournalCorrupt",
        DurableErrorKind::Store => "StoreError",
        _ => "DurableError",
    }
}

/// The `kind` attribute of a durable-run error (snake case, as in Rust).
fn kind_name(kind: DurableErrorKind) -> &'static str {
    match kind {
        DurableErrorKind::NoStore => "no_store",
        DurableErrorKind::NotFound => "not_found",
        DurableErrorKind::Busy => "busy",
        DurableErrorKind::Finished => "finished",
        DurableErrorKind::NoSuchRequest => "no_such_request",
        DurableErrorKind::AlreadyAnswered => "already_answered",
        DurableErrorKind::InvalidAnswer => "invalid_answer",
        DurableErrorKind::Corrupt => "corrupt",
        DurableErrorKind::Store => "store",
        _ => "other",
    }
}

fn store_kind_name(kind: StoreErrorKind) -> String {
    format!("{kind:?}").to_lowercase()
}

/// A durable-run error as an exception of its kind's class.
pub(crate) fn from_durable(py: Python<'_>, e: &DurableError, run: Option<RunId>) -> PyErr {
    let attrs = vec![
        ("kind", obj(py, kind_name(e.kind()))),
        ("run_id", obj(py, run.map(|r| r.to_string()))),
        (
            "store_kind",
            obj(py, e.store_error().map(|s| store_kind_name(s.kind()))),
        ),
    ];
    error::raise(py, class_of(e.kind()), &e.to_string(), &attrs)
}

/// A store's own error (opening it, say), as a `StoreError`.
pub(crate) fn from_store(py: Python<'_>, e: &StoreError) -> PyErr {
    let attrs = vec![
        ("kind", obj(py, "store")),
        ("store_kind", obj(py, store_kind_name(e.kind()))),
    ];
    error::raise(py, "StoreError", &e.to_string(), &attrs)
}

fn obj<'py, T: IntoPyObject<'py>>(py: Python<'py>, v: T) -> Py<PyAny> {
    v.into_py_any(py).unwrap_or_else(|_| py.None())
}

/// A run event as the dict Python sees (the event's fields and `type`, plus
/// `seq`, `at_ms` and `run_id`): the same for live and replayed events.
pub(crate) fn event_json(record: &RunEventRecord) -> PyResult<serde_json::Value> {
    let mut v =
        serde_json::to_value(&record.event).map_err(|e| PyValueError::new_err(e.to_string()))?;
    if let serde_json::Value::Object(m) = &mut v {
        m.insert("seq".into(), record.seq.into());
        m.insert("at_ms".into(), record.at_ms.into());
        m.insert("run_id".into(), record.run.to_string().into());
    }
    Ok(v)
}

/// Runs in memory: durable for as long as this process lives (runs
/// survive their orchestrator, not the process). For tests, and for
/// resume / respond / replay within one process.
#[pyclass(module = "coditect._native", name = "MemoryStore", frozen)]
pub struct PyMemoryStore {
    store: Arc<dyn Store>,
}

#[pymethods]
impl PyMemoryStore {
    #[new]
    fn new() -> Self {
        Self {
            store: Arc::new(MemoryStore::new()),
        }
    }

    fn __repr__(&self) -> String {
        "MemoryStore()".to_owned()
    }
}

/// Runs in a SQLite file: they survive the process (a crash, `kill -9`) and
/// are resumed, answered and replayed from any process that opens the file.
#[pyclass(module = "coditect._native", name = "SqliteStore", frozen)]
pub struct PySqliteStore {
    store: Arc<dyn Store>,
    path: String,
}

#[pymethods]
impl PySqliteStore {
    /// Opens (or creates) the store at `path`, blocking until it is open;
    /// inside a coroutine prefer `await SqliteStore.open(path)`.
    #[new]
    fn new(py: Python<'_>, path: String) -> PyResult<Self> {
        let p = path.clone();
        let opened = py.detach(move || {
            pyo3_async_runtimes::tokio::get_runtime()
                .block_on(async move { SqliteStore::open(&p, StoreOptions::default()).await })
        });
        match opened {
            Ok(s) => Ok(Self {
                store: Arc::new(s),
                path,
            }),
            Err(e) => Err(from_store(py, &e)),
        }
    }

    /// Opens (or creates) the store at `path`; await it.
    #[staticmethod]
    fn open(py: Python<'_>, path: String) -> PyResult<Awaitable> {
        let bridge = bridge::current(py)?;
        Ok(bridge.awaitable(Box::pin(async move {
            let opened = SqliteStore::open(&path, StoreOptions::default()).await;
            Box::new(move |py: Python<'_>| match opened {
                Ok(s) => Py::new(
                    py,
                    PySqliteStore {
                        store: Arc::new(s),
                        path,
                    },
                )
                .map(Py::into_any),
                Err(e) => Err(from_store(py, &e)),
            }) as Out
        })))
    }

    /// The file the store is in.
    #[getter]
    fn path(&self) -> String {
        self.path.clone()
    }

    fn __repr__(&self) -> String {
        format!("SqliteStore({:?})", self.path)
    }
}

/// Runs in PostgreSQL: shared by every machine that connects to it.
#[pyclass(module = "coditect._native", name = "PostgresStore", frozen)]
pub struct PyPostgresStore {
    store: Arc<dyn Store>,
}

#[pymethods]
impl PyPostgresStore {
    /// Connects to the database (a libpq connection string, e.g.
    /// `"host=127.0.0.1 port=5432 user=coditect dbname=coditect"`, or a
    /// `postgresql://` URL) and creates the store's tables if missing; await it.
    #[staticmethod]
    fn connect(py: Python<'_>, dsn: String) -> PyResult<Awaitable> {
        let bridge = bridge::current(py)?;
        Ok(bridge.awaitable(Box::pin(async move {
            let connected = PostgresStore::connect(&dsn, StoreOptions::default()).await;
            Box::new(move |py: Python<'_>| match connected {
                Ok(s) => Py::new(py, PyPostgresStore { store: Arc::new(s) }).map(Py::into_any),
                Err(e) => Err(from_store(py, &e)),
            }) as Out
        })))
    }

    fn __repr__(&self) -> String {
        "PostgresStore(...)".to_owned()
    }
}

/// A stored run read back (`await orch.replay(run_id)`): its events in
/// journal order, as the live stream gave them, and their fold.
#[pyclass(module = "coditect._native", name = "StoredRun", frozen, get_all)]
pub struct PyStoredRun {
    /// The run's id.
    run_id: String,
    /// Every event, in order (the dicts `RunHandle.events()` yields).
    events: Py<PyAny>,
    /// The fold of the events: status, steps, plan, questions, output, …
    state: Py<PyAny>,
    /// The run's status: `"pending"`, `"running"`, `"paused"`,
    /// `"succeeded"`, `"failed"` or `"cancelled"`.
    status: String,
    /// The questions still waiting for an answer (dicts with `request`,
    /// `step`, `agent`, `prompt` and `schema`).
    open_questions: Py<PyAny>,
}

impl PyStoredRun {
    pub(crate) fn of(py: Python<'_>, run: RunId, stored: &StoredRun) -> PyResult<Self> {
        let events = stored
            .events
            .iter()
            .map(event_json)
            .collect::<PyResult<Vec<_>>>()?;
        let conv = |e: serde_json::Error| PyValueError::new_err(e.to_string());
        let state = serde_json::to_value(&stored.state).map_err(conv)?;
        let status = match serde_json::to_value(stored.state.status).map_err(conv)? {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        let open: Vec<_> = stored.state.open_questions().collect();
        let open = serde_json::to_value(open).map_err(conv)?;
        Ok(Self {
            run_id: run.to_string(),
            events: from_json(py, &serde_json::Value::Array(events))?,
            state: from_json(py, &state)?,
            status,
            open_questions: from_json(py, &open)?,
        })
    }
}

#[pymethods]
impl PyStoredRun {
    fn __repr__(&self, py: Python<'_>) -> String {
        let n = self.events.bind(py).len().unwrap_or(0);
        format!(
            "StoredRun(run_id={:?}, status={:?}, events={n})",
            self.run_id, self.status
        )
    }
}
