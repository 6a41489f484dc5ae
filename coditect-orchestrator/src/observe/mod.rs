//! Seeing what a run did and what it cost.
//!
//! - [`spans`]: `tracing` spans on the OpenTelemetry GenAI conventions
//!   (`invoke_workflow`, `plan`, `invoke_agent`, and for agent crates `chat`
//!   and `execute_tool`), with coditect's run, step and tenant ids. With the
//!   `otel` feature a handler's span takes its parent from the envelope's
//!   trace context, so a run is one trace across processes.
//! - [`metrics`]: counters, gauges and histograms through the `metrics`
//!   facade, emitted once [`metrics::enable`] was called.
//! - [`cost`]: tokens and cost broken down per step, agent, delegation
//!   subtree, model and tenant ([`CostReport`]).
//! - [`mermaid`] and [`timeline`]: a run drawn as a Mermaid sequence diagram
//!   or a self-contained HTML timeline.
//!
//! Every view is a function of a run's ordered events
//! ([`RunEventRecord`](crate::orchestrator::RunEventRecord)), so it draws a
//! live run and a stored one alike. Nothing here costs more than an atomic
//! load when nothing listens.
//!
//! Message content (prompts, answers) is left out of spans unless the user
//! opts in with [`set_content`].
//!
//! ```
//! use coditect_orchestrator::observe::{self, Content};
//! assert_eq!(observe::content(), Content::Omit);
//! ```

pub mod cost;
pub mod mermaid;
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "prometheus")]
pub mod prometheus;
pub mod spans;
pub mod timeline;

use std::sync::atomic::{AtomicBool, Ordering};

pub use cost::{CostReport, Spend, SubtreeCost, Tokens};

/// Whether spans carry message content (prompts, answers, tool arguments).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Content {
    /// Leave content out: spans carry sizes, ids and usage only.
    #[default]
    Omit,
    /// Record content on spans (`gen_ai.input.messages`, `gen_ai.output.messages`).
    Record,
}

static RECORD_CONTENT: AtomicBool = AtomicBool::new(false);

/// Sets, for the whole process, whether spans carry message content.
///
/// ```
/// use coditect_orchestrator::observe::{self, Content};
/// observe::set_content(Content::Record);
/// assert_eq!(observe::content(), Content::Record);
/// observe::set_content(Content::Omit);
/// ```
pub fn set_content(content: Content) {
    RECORD_CONTENT.store(content == Content::Record, Ordering::Relaxed);
}

/// Whether spans carry message content now.
pub fn content() -> Content {
    if RECORD_CONTENT.load(Ordering::Relaxed) {
        Content::Record
    } else {
        Content::Omit
    }
}
