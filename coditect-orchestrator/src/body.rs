//! The body of a message: a typed value in memory, JSON bytes across processes.
//!
//! In one process a body moves as the value itself — no serialization on the
//! in-process path. It is encoded only at the edge (a network transport) or when
//! the receiver asks for a different type than the sender gave, in which case the
//! value goes through JSON exactly as it would between processes, so agents
//! behave the same whatever transport carries them.

use std::any::{Any, TypeId};
use std::fmt;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A value that can be a message body: serializable, so it can cross processes.
///
/// Implemented for every `Serialize + DeserializeOwned + Send + Sync + 'static`
/// type; the schema of a message type, when the type implements
/// `schemars::JsonSchema`, is what agent cards publish.
pub trait Message: Serialize + DeserializeOwned + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> Message for T {}

/// Why a body could not become the value asked for.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// The value could not be serialized.
    #[error("cannot encode a {type_name} body: {source}")]
    Encode {
        /// The Rust type of the value.
        type_name: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A typed value reported its own type but would not downcast to it.
    #[error("body is not a {expected}")]
    TypeMismatch {
        /// The Rust type asked for.
        expected: &'static str,
    },
    /// The bytes are not the JSON of the type asked for.
    #[error("body is not a valid {expected}: {source}")]
    Decode {
        /// The Rust type asked for.
        expected: &'static str,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },
}

trait Erased: Any + Send + Sync {
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error>;
    fn type_name(&self) -> &'static str;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
    fn to_value(&self) -> Result<serde_json::Value, serde_json::Error>;
}

impl<T: Message> Erased for T {
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }
    fn type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        self
    }
    fn to_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

enum Repr {
    Typed(Box<dyn Erased>),
    Json(Bytes),
}

/// The body of a message.
///
/// ```
/// use coditect_orchestrator::Body;
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Ask { question: String }
///
/// // In memory the value moves as it is…
/// let body = Body::new(Ask { question: "why?".into() });
/// assert_eq!(body.take::<Ask>()?, Ask { question: "why?".into() });
///
/// // …and a body that came over the wire decodes to the type asked for.
/// let wire = Body::from_json(br#"{"question":"how?"}"#.to_vec());
/// assert_eq!(wire.take::<Ask>()?.question, "how?");
/// # Ok::<(), coditect_orchestrator::BodyError>(())
/// ```
pub struct Body(Repr);

impl Body {
    /// A body holding a typed value.
    pub fn new<T: Message>(value: T) -> Self {
        Body(Repr::Typed(Box::new(value)))
    }

    /// A body made of JSON bytes (as it arrives from the wire). The bytes are
    /// checked when the body is taken, not here.
    pub fn from_json(bytes: impl Into<Bytes>) -> Self {
        Body(Repr::Json(bytes.into()))
    }

    /// The empty body: JSON `null`, which decodes as `()`.
    pub fn empty() -> Self {
        Body::new(())
    }

    /// Whether the body still holds a typed value (no serialization has happened).
    pub fn is_typed(&self) -> bool {
        matches!(self.0, Repr::Typed(_))
    }

    /// The Rust type name of a typed body, or `"json"`.
    pub fn type_name(&self) -> &'static str {
        match &self.0 {
            Repr::Typed(v) => v.type_name(),
            Repr::Json(_) => "json",
        }
    }

    /// Turns the body into a value of type `T`: a move if the body holds a `T`,
    /// otherwise a JSON round trip (as between processes).
    ///
    /// # Errors
    /// [`BodyError::Decode`] if the body is not a `T`; [`BodyError::Encode`] if a
    /// typed value of another type cannot be serialized.
    pub fn take<T: Message>(self) -> Result<T, BodyError> {
        match self.0 {
            Repr::Typed(v) => {
                if (*v).type_id() == TypeId::of::<T>() {
                    v.into_any()
                        .downcast::<T>()
                        .map(|v| *v)
                        .map_err(|_| BodyError::TypeMismatch {
                            expected: std::any::type_name::<T>(),
                        })
                } else {
                    let value = v.to_value().map_err(|source| BodyError::Encode {
                        type_name: v.type_name(),
                        source,
                    })?;
                    serde_json::from_value(value).map_err(|source| BodyError::Decode {
                        expected: std::any::type_name::<T>(),
                        source,
                    })
                }
            }
            Repr::Json(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| BodyError::Decode {
                    expected: std::any::type_name::<T>(),
                    source,
                })
            }
        }
    }

    /// The body as JSON bytes, for the wire.
    ///
    /// # Errors
    /// [`BodyError::Encode`] if the typed value cannot be serialized.
    pub fn encode(&self) -> Result<Bytes, BodyError> {
        match &self.0 {
            Repr::Typed(v) => v
                .encode()
                .map(Bytes::from)
                .map_err(|source| BodyError::Encode {
                    type_name: v.type_name(),
                    source,
                }),
            Repr::Json(b) => Ok(b.clone()),
        }
    }

    /// The body as a JSON value (for logs, traces and pictures of a run).
    ///
    /// # Errors
    /// [`BodyError`] if it cannot be encoded or the bytes are not JSON.
    pub fn to_json_value(&self) -> Result<serde_json::Value, BodyError> {
        match &self.0 {
            Repr::Typed(v) => v.to_value().map_err(|source| BodyError::Encode {
                type_name: v.type_name(),
                source,
            }),
            Repr::Json(b) => serde_json::from_slice(b).map_err(|source| BodyError::Decode {
                expected: "serde_json::Value",
                source,
            }),
        }
    }

    /// A copy of the body. A typed body is encoded once to JSON for this, so
    /// both copies then share the same bytes.
    ///
    /// # Errors
    /// [`BodyError::Encode`] if the typed value cannot be serialized.
    pub fn try_clone(&mut self) -> Result<Body, BodyError> {
        let bytes = self.encode()?;
        self.0 = Repr::Json(bytes.clone());
        Ok(Body(Repr::Json(bytes)))
    }

    /// The size of the encoded body in bytes, if it is already encoded.
    pub fn encoded_len(&self) -> Option<usize> {
        match &self.0 {
            Repr::Json(b) => Some(b.len()),
            Repr::Typed(_) => None,
        }
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Typed(v) => write!(f, "Body<{}>", v.type_name()),
            Repr::Json(b) => write!(f, "Body<json, {} bytes>", b.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct A {
        x: u32,
    }
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct B {
        x: u64,
    }

    #[test]
    fn same_type_moves_without_encoding() {
        let body = Body::new(A { x: 1 });
        assert!(body.is_typed());
        assert_eq!(body.take::<A>().unwrap(), A { x: 1 });
    }

    #[test]
    fn other_type_goes_through_json() {
        assert_eq!(Body::new(A { x: 7 }).take::<B>().unwrap(), B { x: 7 });
        let v = Body::new(A { x: 7 }).take::<serde_json::Value>().unwrap();
        assert_eq!(v, serde_json::json!({"x": 7}));
    }

    #[test]
    fn bad_json_is_a_typed_error() {
        let err = Body::from_json(&b"{not json"[..]).take::<A>().unwrap_err();
        assert!(matches!(err, BodyError::Decode { .. }), "{err}");
        let err = Body::new("text".to_string()).take::<A>().unwrap_err();
        assert!(matches!(err, BodyError::Decode { .. }), "{err}");
    }

    #[test]
    fn try_clone_shares_bytes() {
        let mut body = Body::new(A { x: 3 });
        let copy = body.try_clone().unwrap();
        assert_eq!(copy.take::<A>().unwrap(), A { x: 3 });
        assert_eq!(body.take::<A>().unwrap(), A { x: 3 });
    }
}
