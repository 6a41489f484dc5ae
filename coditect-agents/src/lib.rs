//! coditect-agents (under construction).

pub mod model;

pub use model::{DynLanguageModel, LanguageModel, ModelError, ModelErrorKind};
