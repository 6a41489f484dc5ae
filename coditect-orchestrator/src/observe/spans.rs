//! Spans on the OpenTelemetry GenAI semantic conventions.
//!
//! | span | made by | name (`otel.name`) |
//! |---|---|---|
//! | a run | the orchestrator | `invoke_workflow` |
//! | planning | the orchestrator | `plan` |
//! | a step attempt or a delegation | the runtime hosting the agent | `invoke_agent {gen_ai.agent.name}` |
//! | a model call | an agent (coditect-agents) | `chat {gen_ai.request.model}` |
//! | a tool call | an agent (coditect-agents) | `execute_tool {gen_ai.tool.name}` |
//!
//! `tracing` span names are fixed at compile time, so each span is named by
//! its operation and carries its full name in `otel.name`, the field
//! `tracing-opentelemetry` names the exported span by. Attributes a span only
//! knows at its end (`error.type`, usage, the response model) are declared
//! empty and recorded then. `invoke_agent` carries the agent's id and kind,
//! the run, step, tenant, message and parent message ids, and
//! `coditect.attempt` only on a retry (attempt 2 and later): every attribute
//! is a string the exporting layer allocates per step.
//!
//! The attribute names are the constants of this module; agent crates use
//! them so that every span speaks the same names.

use std::time::Instant;

use tracing::Span;
use tracing::field::Empty;

use crate::envelope::{Envelope, Failure, FailureKind, TraceContext};
use crate::id::{AgentId, RunId};
use crate::orchestrator::TaskSpec;

/// `gen_ai.operation.name`.
pub const OPERATION_NAME: &str = "gen_ai.operation.name";
/// `gen_ai.provider.name`.
pub const PROVIDER_NAME: &str = "gen_ai.provider.name";
/// `gen_ai.request.model`.
pub const REQUEST_MODEL: &str = "gen_ai.request.model";
/// `gen_ai.response.model`.
pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
/// `gen_ai.response.id`.
pub const RESPONSE_ID: &str = "gen_ai.response.id";
/// `gen_ai.response.finish_reasons`.
pub const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
/// `gen_ai.usage.input_tokens`.
pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// `gen_ai.usage.output_tokens`.
pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// `gen_ai.usage.cache_read.input_tokens`.
pub const CACHE_READ_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
/// `gen_ai.usage.cache_creation.input_tokens`.
pub const CACHE_CREATION_TOKENS: &str = "gen_ai.usage.cache_creation.input_tokens";
/// `gen_ai.agent.id`.
pub const AGENT_ID: &str = "gen_ai.agent.id";
/// `gen_ai.agent.name`.
pub const AGENT_NAME: &str = "gen_ai.agent.name";
/// `gen_ai.tool.name`.
pub const TOOL_NAME: &str = "gen_ai.tool.name";
/// `gen_ai.tool.call.id`.
pub const TOOL_CALL_ID: &str = "gen_ai.tool.call.id";
/// `error.type`.
pub const ERROR_TYPE: &str = "error.type";
/// `coditect.run.id`.
pub const RUN_ID: &str = "coditect.run.id";
/// `coditect.step.id`.
pub const STEP_ID: &str = "coditect.step.id";
/// `coditect.tenant.id`.
pub const TENANT_ID: &str = "coditect.tenant.id";
/// `coditect.message.id`.
pub const MESSAGE_ID: &str = "coditect.message.id";

/// The span of a run: `invoke_workflow`.
pub(crate) fn workflow(run: RunId, task: &TaskSpec) -> Span {
    tracing::info_span!(
        "invoke_workflow",
        otel.name = "invoke_workflow",
        gen_ai.operation.name = "invoke_workflow",
        coditect.run.id = %run,
        coditect.tenant.id = %task.tenant,
        error.type = Empty,
        otel.status_code = Empty,
    )
}

/// The span of planning (or re-planning) a run: `plan`.
pub(crate) fn plan(run: RunId) -> Span {
    tracing::info_span!(
        "plan",
        otel.name = "plan",
        gen_ai.operation.name = "plan",
        coditect.run.id = %run,
    )
}

/// The span of one handling of a message by an agent: a step attempt or a
/// delegated subtask. Finish it with [`AgentSpan::finish`].
pub(crate) struct AgentSpan {
    pub(crate) span: Span,
    /// When it began and the agent's kind, kept only while metrics are on.
    timing: Option<(Instant, crate::id::AgentKind)>,
}

/// Opens the `invoke_agent` span of `agent` handling `env`.
pub(crate) fn invoke_agent(agent: &AgentId, env: &Envelope) -> AgentSpan {
    let ctx = &env.ctx;
    let timing = super::metrics::is_enabled().then(|| (Instant::now(), agent.kind().clone()));
    // Without a subscriber that wants it, no span is made at all (with
    // tracing's `log` feature on, a disabled span still records its fields).
    if !tracing::level_enabled!(tracing::Level::INFO) {
        return AgentSpan {
            span: Span::none(),
            timing,
        };
    }
    let span = tracing::info_span!(
        "invoke_agent",
        otel.name = format!("invoke_agent {}", agent.kind()),
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.id = %agent,
        gen_ai.agent.name = %agent.kind(),
        coditect.run.id = ctx.run.map(tracing::field::display),
        coditect.step.id = ctx.step.as_ref().map(tracing::field::display),
        coditect.tenant.id = %env.tenant,
        coditect.message.id = %env.id,
        coditect.parent.message.id = ctx.parent.map(tracing::field::display),
        coditect.attempt = (ctx.attempt > 1).then_some(ctx.attempt),
        error.type = Empty,
        otel.status_code = Empty,
    );
    #[cfg(feature = "otel")]
    super::otel::adopt(&span, &ctx.trace);
    AgentSpan { span, timing }
}

impl AgentSpan {
    /// Records how the handling ended.
    pub(crate) fn finish<T>(&self, result: &Result<T, Failure>) {
        let error = result.as_ref().err().map(|f| failure_kind(f.kind));
        if let Some(kind) = error {
            self.span.record("error.type", kind);
            self.span.record("otel.status_code", "ERROR");
        }
        if let Some((started, kind)) = &self.timing {
            super::metrics::agent_handled(kind, error, started.elapsed());
        }
    }
}

/// The trace context a message sent now carries: the current span's, when an
/// OpenTelemetry layer is installed (feature `otel`), else `fallback`.
pub(crate) fn outgoing(fallback: TraceContext) -> TraceContext {
    #[cfg(feature = "otel")]
    if let Some(t) = super::otel::current() {
        return t;
    }
    fallback
}

/// The `error.type` of a failure kind (snake case, as on the wire).
pub fn failure_kind(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Handler => "handler",
        FailureKind::Panicked => "panicked",
        FailureKind::NoSuchAgent => "no_such_agent",
        FailureKind::BadInput => "bad_input",
        FailureKind::BadOutput => "bad_output",
        FailureKind::UnresolvedInput => "unresolved_input",
        FailureKind::Timeout => "timeout",
        FailureKind::Cancelled => "cancelled",
        FailureKind::CallCycle => "call_cycle",
        FailureKind::ShuttingDown => "shutting_down",
        FailureKind::Policy => "policy",
        FailureKind::Other => "other",
    }
}
