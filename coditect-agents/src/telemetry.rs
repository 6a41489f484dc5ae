//! The spans and metrics of model and tool calls, on the OpenTelemetry
//! GenAI conventions (names shared with
//! [`coditect_orchestrator::observe::spans`]).

use std::time::Instant;

use coditect_orchestrator::AgentContext;
use coditect_orchestrator::observe::{self, Content, metrics as meter};
use tracing::Span;
use tracing::field::Empty;

use crate::model::{CompletionRequest, CompletionResponse, ModelError, StopReason};

/// A model call being watched: its `chat {model}` span and start time.
pub(crate) struct Chat {
    pub(crate) span: Span,
    started: Instant,
    provider: String,
    model: String,
}

/// Opens the `chat` span of one model call.
pub(crate) fn chat(
    provider: &str,
    model: &str,
    request: &CompletionRequest,
    ctx: Option<&AgentContext>,
    iteration: u32,
) -> Chat {
    let span = tracing::info_span!(
        "chat",
        otel.name = if model.is_empty() { "chat".to_owned() } else { format!("chat {model}") },
        otel.kind = "client",
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
        gen_ai.request.max_tokens = request.max_tokens,
        gen_ai.response.model = Empty,
        gen_ai.response.id = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.usage.cache_read.input_tokens = Empty,
        gen_ai.usage.cache_creation.input_tokens = Empty,
        gen_ai.agent.id = ctx.map(|c| tracing::field::display(c.id())),
        gen_ai.system_instructions = Empty,
        gen_ai.input.messages = Empty,
        gen_ai.output.messages = Empty,
        coditect.run.id = ctx.and_then(|c| c.run()).map(tracing::field::display),
        coditect.step.id = ctx.and_then(|c| c.step()).map(tracing::field::display),
        coditect.iteration = iteration,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if observe::content() == Content::Record && !span.is_disabled() {
        if let Some(system) = &request.system {
            span.record("gen_ai.system_instructions", system.as_str());
        }
        if let Ok(json) = serde_json::to_string(&request.messages) {
            span.record("gen_ai.input.messages", json);
        }
    }
    Chat {
        span,
        started: Instant::now(),
        provider: provider.to_owned(),
        model: model.to_owned(),
    }
}

impl Chat {
    /// Records the answer.
    pub(crate) fn answered(&self, r: &CompletionResponse) {
        let u = &r.usage;
        let input = u
            .input_tokens
            .saturating_add(u.cache_read_input_tokens)
            .saturating_add(u.cache_creation_input_tokens);
        let span = &self.span;
        if !span.is_disabled() {
            span.record("gen_ai.response.model", r.model.as_str());
            if let Some(id) = &r.id {
                span.record("gen_ai.response.id", id.as_str());
            }
            span.record(
                "gen_ai.response.finish_reasons",
                format!("[\"{}\"]", finish_reason(&r.stop_reason)),
            );
            span.record("gen_ai.usage.input_tokens", input);
            span.record("gen_ai.usage.output_tokens", u.output_tokens);
            span.record(
                "gen_ai.usage.cache_read.input_tokens",
                u.cache_read_input_tokens,
            );
            span.record(
                "gen_ai.usage.cache_creation.input_tokens",
                u.cache_creation_input_tokens,
            );
            if observe::content() == Content::Record
                && let Ok(json) = serde_json::to_string(&r.content)
            {
                span.record("gen_ai.output.messages", json);
            }
        }
        meter::model_call(
            &meter::ModelCall {
                provider: &self.provider,
                model: self.model_or(&r.model),
                input_tokens: input,
                output_tokens: u.output_tokens,
                error: None,
            },
            self.started.elapsed(),
        );
    }

    /// Records a failed call.
    pub(crate) fn failed(&self, e: &ModelError) {
        let kind = format!("{:?}", e.kind()).to_lowercase();
        self.span.record("error.type", kind.as_str());
        self.span.record("otel.status_code", "ERROR");
        meter::model_call(
            &meter::ModelCall {
                provider: &self.provider,
                model: &self.model,
                input_tokens: 0,
                output_tokens: 0,
                error: Some(&kind),
            },
            self.started.elapsed(),
        );
    }

    fn model_or<'a>(&'a self, answered: &'a str) -> &'a str {
        if self.model.is_empty() {
            answered
        } else {
            &self.model
        }
    }
}

/// The OpenTelemetry name of a finish reason.
pub(crate) fn finish_reason(r: &StopReason) -> &str {
    match r {
        StopReason::EndTurn => "end_turn",
        StopReason::MaxTokens => "max_tokens",
        StopReason::StopSequence => "stop_sequence",
        StopReason::ToolUse => "tool_use",
        StopReason::PauseTurn => "pause_turn",
        StopReason::Refusal => "refusal",
        StopReason::ContextWindowExceeded => "model_context_window_exceeded",
        StopReason::Other(s) => s.as_str(),
    }
}

/// The `execute_tool` span of one tool call.
pub(crate) fn execute_tool(name: &str, call_id: &str, input: &serde_json::Value) -> Span {
    let span = tracing::info_span!(
        "execute_tool",
        otel.name = format!("execute_tool {name}"),
        otel.kind = "internal",
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = name,
        gen_ai.tool.call.id = call_id,
        gen_ai.tool.call.arguments = Empty,
        error.type = Empty,
        otel.status_code = Empty,
    );
    if observe::content() == Content::Record && !span.is_disabled() {
        span.record("gen_ai.tool.call.arguments", input.to_string());
    }
    span
}
