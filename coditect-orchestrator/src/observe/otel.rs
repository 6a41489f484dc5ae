//! Spans as OpenTelemetry spans (feature `otel`): the trace context a
//! message carries joins the handler's span to its sender's, in this process
//! or another.
//!
//! Install `tracing-opentelemetry`'s layer with a tracer of your provider;
//! from then on every message sent inside a span carries that span as its
//! `traceparent`, and the `invoke_agent` span of its handler is the span's
//! child. Without the layer nothing changes.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::TraceContext;

/// The current span's trace context, if an OpenTelemetry layer gives it one.
pub(crate) fn current() -> Option<TraceContext> {
    let span = tracing::Span::current();
    if span.is_none() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    Some(TraceContext {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        parent_span: u64::from_be_bytes(sc.span_id().to_bytes()),
    })
}

/// Makes `span` a child of the remote span `trace` names.
pub(crate) fn adopt(span: &tracing::Span, trace: &TraceContext) {
    if trace.is_empty() || trace.parent_span == 0 || span.is_disabled() {
        return;
    }
    let sc = SpanContext::new(
        TraceId::from_bytes(trace.trace_id.to_be_bytes()),
        SpanId::from_bytes(trace.parent_span.to_be_bytes()),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
}
