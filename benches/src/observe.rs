//! `observe_wide`: what watching a run costs. `orchestrate_wide` (1,000
//! parallel no-op steps) with every GenAI span recorded by an OpenTelemetry
//! layer (spans built and handed to a no-op exporter) and every metric
//! recorded by a Prometheus recorder — against the same workload with
//! nothing installed, earlier in the same process.

use coditect_orchestrator::observe;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;

use crate::report::{Mode, Report, round2};

const STEPS: usize = 1_000;

/// Takes spans and drops them: the cost of building and exporting a span,
/// without a collector.
#[derive(Debug)]
struct Discard;

impl SpanExporter for Discard {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        std::hint::black_box(batch);
        Ok(())
    }
}

/// Runs the workload: `orchestrate_wide` as it is (nothing listens), then
/// with the subscriber and recorder installed and every span and metric
/// recorded. Each run is beside its own hand-driven baseline, so the figure
/// compared is the slowdown against it (which cancels a machine that got
/// slower in between); the raw medians are in the line too.
pub async fn run(mode: Mode) -> Report {
    let quiet = crate::orchestrate::one("wide", mode).await;
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(Discard)
        .build();
    let (filter, _switch) = reload::Layer::new(LevelFilter::INFO);
    // coditect's layer settings, or (`OBSERVE_DEFAULT_LAYER=1`) the
    // tracing-opentelemetry layer's defaults.
    let tracer = provider.tracer("bench");
    let layer = if std::env::var_os("OBSERVE_DEFAULT_LAYER").is_some() {
        tracing_opentelemetry::layer().with_tracer(tracer)
    } else {
        observe::otel::layer(tracer)
    };
    let subscriber = tracing_subscriber::registry().with(filter).with(layer);
    let installed = tracing::subscriber::set_global_default(subscriber).is_ok();
    let recorder = observe::prometheus::builder()
        .expect("prometheus builder")
        .build_recorder();
    let handle = recorder.handle();
    let recorded = metrics::set_global_recorder(recorder).is_ok();
    // `OBSERVE_SPANS_ONLY=1` leaves metrics off, to see what spans alone cost.
    if std::env::var_os("OBSERVE_SPANS_ONLY").is_none() {
        observe::metrics::enable();
    }
    let watched = crate::orchestrate::one("wide", mode).await;
    observe::metrics::disable();
    let exposition = handle.render();
    let _ = provider.shutdown();
    let (on, off) = (watched.slowdown(), quiet.slowdown());
    Report::new(
        "observe_wide",
        "orchestrate_wide with nothing listening (slowdowns against each run's own JoinSet baseline)",
        on,
        off,
    )
    .field("steps", STEPS)
    .field("watched_ns_per_step", round2(watched.ours_ns_per_op()))
    .field("quiet_ns_per_step", round2(quiet.ours_ns_per_op()))
    .field("subscriber_installed", installed)
    .field("recorder_installed", recorded)
    .field("exposition_bytes", exposition.len())
}
