//! Message bodies from and for Python.
//!
//! A Python value sent to a Python agent in the same process moves as the
//! object itself ([`PyValue::Py`]): no conversion at all. Anything else is a
//! JSON value ([`PyValue::Json`]), converted with `pythonize` (no JSON string
//! in between) on the loop's thread, where the GIL is held anyway. So a tokio
//! thread never needs the GIL to move, read or decode a body; only encoding a
//! [`PyValue::Py`] for a Rust reader takes it, and values bound for Rust are
//! converted eagerly on the loop's thread instead.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use serde::{Deserialize, Serialize};

/// A message body made in or for Python.
pub(crate) enum PyValue {
    /// A Python object, for a Python reader in this process.
    Py(Py<PyAny>),
    /// A JSON value.
    Json(serde_json::Value),
}

impl PyValue {
    /// A body from a Python object: kept as the object when `keep` (the
    /// reader is Python, on this loop), else converted now.
    pub(crate) fn from_py(obj: &Bound<'_, PyAny>, keep: bool) -> PyResult<PyValue> {
        if keep {
            Ok(PyValue::Py(obj.clone().unbind()))
        } else {
            to_json(obj).map(PyValue::Json)
        }
    }

    /// The value as a Python object.
    pub(crate) fn to_py(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            PyValue::Py(o) => Ok(o.clone_ref(py)),
            PyValue::Json(v) => from_json(py, v),
        }
    }
}

/// A Python value as JSON: dicts, lists, str, int, float, bool and None as
/// they are; dataclasses, pydantic models, enums, tuples and sets through
/// `coditect._values.to_plain` first.
pub(crate) fn to_json(obj: &Bound<'_, PyAny>) -> PyResult<serde_json::Value> {
    match pythonize::depythonize::<serde_json::Value>(obj) {
        Ok(v) => Ok(v),
        Err(first) => {
            let py = obj.py();
            static TO_PLAIN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            let to_plain = TO_PLAIN.get_or_try_init(py, || {
                py.import(intern!(py, "coditect._values"))?
                    .getattr(intern!(py, "to_plain"))
                    .map(Bound::unbind)
            })?;
            let plain = to_plain.bind(py).call1((obj,))?;
            pythonize::depythonize::<serde_json::Value>(&plain).map_err(|e| {
                crate::error::value_error(format!(
                    "cannot send a {} as a message: {e} (first attempt: {first})",
                    obj.get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })
        }
    }
}

/// A JSON value as a Python object.
pub(crate) fn from_json(py: Python<'_>, v: &serde_json::Value) -> PyResult<Py<PyAny>> {
    pythonize::pythonize(py, v)
        .map(Bound::unbind)
        .map_err(|e| crate::error::value_error(format!("cannot convert a value for Python: {e}")))
}

impl Serialize for PyValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PyValue::Json(v) => v.serialize(s),
            PyValue::Py(o) => {
                let v =
                    Python::attach(|py| to_json(o.bind(py))).map_err(serde::ser::Error::custom)?;
                v.serialize(s)
            }
        }
    }
}

impl<'de> Deserialize<'de> for PyValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(PyValue::Json)
    }
}

impl schemars::JsonSchema for PyValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::Schema::from(true)
    }
}
