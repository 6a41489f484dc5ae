//! `observe_wide`: what watching a run costs. `orchestrate_wide` (1,000
//! parallel no-op steps) with every GenAI span recorded by an OpenTelemetry
//! layer (spans built and handed to a no-op exporter) and every metric
//! recorded by a Prometheus recorder — against the same run with the same
//! subscriber switched off (level filter `OFF`) and metrics disabled, in the
//! same process, alternating.

use std::time::{Duration, Instant};

use coditect_orchestrator::observe;
use coditect_orchestrator::orchestrator::{
    Orchestrator, Plan, StaticPlanner, Step, StepInput, TaskSpec,
};
use coditect_orchestrator::{InMemoryTransport, Runtime};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;

use crate::orchestrate::Noop;
use crate::report::{Mode, Report, median, round2};

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

/// Runs the workload.
pub async fn run(mode: Mode) -> Report {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(Discard)
        .build();
    let (filter, switch) = reload::Layer::new(LevelFilter::OFF);
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")));
    let installed = tracing::subscriber::set_global_default(subscriber).is_ok();
    let recorder = observe::prometheus::builder()
        .expect("prometheus builder")
        .build_recorder();
    let handle = recorder.handle();
    let _ = metrics::set_global_recorder(recorder);

    let rt = Runtime::builder(InMemoryTransport::new())
        .build()
        .await
        .expect("runtime");
    rt.kind("noop")
        .instances(16)
        .register(|_| Noop)
        .await
        .expect("register");
    let plan =
        Plan::new((0..STEPS).map(|i| Step::new(format!("s{i}"), "noop", StepInput::literal(i))));
    let orch = Orchestrator::new(rt.clone(), StaticPlanner::new(plan));
    let set = |on: bool| {
        let _ = switch.reload(if on {
            LevelFilter::INFO
        } else {
            LevelFilter::OFF
        });
        if on {
            observe::metrics::enable();
        } else {
            observe::metrics::disable();
        }
    };
    set(true);
    orch.run(TaskSpec::new("warm")).await.expect("run");
    set(false);
    orch.run(TaskSpec::new("warm")).await.expect("run");
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for _ in 0..mode.rounds() * 2 {
        set(true);
        let start = Instant::now();
        orch.run(TaskSpec::new("bench")).await.expect("run");
        on.push(start.elapsed().as_nanos() as f64 / STEPS as f64);
        set(false);
        let start = Instant::now();
        orch.run(TaskSpec::new("bench")).await.expect("run");
        off.push(start.elapsed().as_nanos() as f64 / STEPS as f64);
    }
    set(false);
    rt.shutdown(Duration::from_secs(5)).await;
    let exposition = handle.render();
    let _ = provider.shutdown();
    let on = median(&mut on);
    let off = median(&mut off);
    Report::new(
        "observe_wide",
        "orchestrate_wide with the subscriber off and metrics disabled",
        on,
        off,
    )
    .field("steps", STEPS)
    .field("overhead_ns_per_step", round2(on - off))
    .field("subscriber_installed", installed)
    .field("exposition_bytes", exposition.len())
}
