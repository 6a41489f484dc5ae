//! Metrics served to Prometheus (feature `prometheus`).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // Serves http://127.0.0.1:9464/metrics and starts emitting.
//! coditect_orchestrator::observe::prometheus::serve("127.0.0.1:9464".parse()?)?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

use super::metrics as m;

/// Buckets of duration histograms, in seconds (the GenAI conventions').
const SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
    81.92,
];
/// Buckets of the token histogram (the GenAI conventions').
const TOKENS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The builder coditect's metrics want: Prometheus' recommended names
/// (`_total` on counters, units as suffixes: `gen_ai_client_operation_duration_seconds`)
/// and real histograms with the GenAI conventions' buckets.
///
/// # Errors
/// Never in practice (the buckets are not empty).
pub fn builder() -> Result<PrometheusBuilder, PrometheusError> {
    let mut b = PrometheusBuilder::new().with_recommended_naming(true);
    for name in [
        m::OPERATION_DURATION,
        m::INVOKE_AGENT_DURATION,
        m::DISPATCH_LATENCY,
    ] {
        b = b.set_buckets_for_metric(Matcher::Full(name.to_owned()), SECONDS)?;
    }
    b = b.set_buckets_for_metric(Matcher::Full(m::TOKEN_USAGE.to_owned()), TOKENS)?;
    Ok(b)
}

/// Why the exporter could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the prometheus exporter: {0}")]
pub struct PrometheusError(#[from] BuildError);

/// Installs a Prometheus exporter as the global recorder, serving
/// `http://{addr}/metrics` (from a task of the current tokio runtime), and
/// [enables](super::metrics::enable) coditect's metrics.
///
/// # Errors
/// [`PrometheusError`] if a recorder is already installed or the address
/// cannot be bound.
pub fn serve(addr: SocketAddr) -> Result<(), PrometheusError> {
    builder()?.with_http_listener(addr).install()?;
    super::metrics::enable();
    Ok(())
}

/// Installs a Prometheus recorder without a listener and enables coditect's
/// metrics; the handle renders the exposition text (for your own endpoint).
///
/// # Errors
/// [`PrometheusError`] if a recorder is already installed.
pub fn recorder() -> Result<PrometheusHandle, PrometheusError> {
    let handle = builder()?.install_recorder()?;
    super::metrics::enable();
    Ok(handle)
}
