//! Export spans over OTLP (feature `otlp`).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use opentelemetry::trace::TracerProvider as _;
//! use tracing_subscriber::layer::SubscriberExt;
//! let provider = coditect_orchestrator::observe::otlp::tracer_provider("http://127.0.0.1:4317", "my-service")?;
//! let layer = coditect_orchestrator::observe::otel::layer(provider.tracer("coditect"));
//! tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))?;
//! // … runs …
//! provider.shutdown()?;
//! # Ok(()) }
//! ```

use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Why the OTLP exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the otlp exporter: {0}")]
pub struct OtlpError(#[from] opentelemetry_otlp::ExporterBuildError);

/// A tracer provider exporting to the OTLP/gRPC collector at `endpoint`
/// (`http://host:4317`) in batches, as service `service`. Call its
/// `shutdown` (or `force_flush`) before the process ends.
///
/// # Errors
/// [`OtlpError`] if the endpoint is not a valid address.
pub fn tracer_provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, OtlpError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}
