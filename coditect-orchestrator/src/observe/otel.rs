//! Spans as OpenTelemetry spans (feature `otel`): the trace context a
//! message carries joins the handler's span to its sender's, in this process
//! or another.
//!
//! Install `tracing-opentelemetry`'s layer with a tracer of your provider;
//! from then on every message sent inside a span carries that span as its
//! `traceparent`, and the `invoke_agent` span of its handler is the span's
//! child. Without the layer nothing changes.
//!
//! [`layer`] is that layer set for agent runs: it records what the GenAI
//! spans say and leaves out what costs a step time and says nothing about
//! the run (source locations, thread ids, target, busy/idle time, and
//! activating an OpenTelemetry context on every poll).
//!
//! ```
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::layer::SubscriberExt;
//! let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
//! let subscriber = tracing_subscriber::registry()
//!     .with(coditect_orchestrator::observe::otel::layer(provider.tracer("my-service")));
//! let _guard = tracing::subscriber::set_default(subscriber);
//! // … runs: one trace per run, across processes …
//! ```

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::TraceContext;

/// `tracing-opentelemetry`'s layer exporting to `tracer`, set for agent
/// runs: no `code.*`, `thread.*` or `target` attributes, no busy/idle time,
/// and no OpenTelemetry context activated on each enter of a span (coditect
/// carries the trace context itself, in the envelope). On a no-op step that
/// is about a tenth of what the layer's defaults cost (`benches/README.md`).
/// Other settings remain the layer's own methods.
pub fn layer<S, T>(tracer: T) -> tracing_opentelemetry::OpenTelemetryLayer<S, T>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
    T: opentelemetry::trace::Tracer + 'static,
    T::Span: Send + Sync,
{
    tracing_opentelemetry::layer()
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_tracer(tracer)
}

/// The current span's trace context, if an OpenTelemetry layer gives it one.
pub(crate) fn current() -> Option<TraceContext> {
    // coditect's spans are INFO: where no subscriber wants those (none is
    // installed, most often), none of them can be current.
    if !tracing::level_enabled!(tracing::Level::INFO) {
        return None;
    }
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
