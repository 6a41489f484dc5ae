//! Metrics served to Prometheus (feature `prometheus`).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! // Serves http://127.0.0.1:9464/metrics and starts emitting.
//! coditect_orchestrator::observe::prometheus::serve("127.0.0.1:9464".parse()?)?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;

use metrics_exporter_prometheus::{BuildError, PrometheusBuilder, PrometheusHandle};

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
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()?;
    super::metrics::enable();
    Ok(())
}

/// Installs a Prometheus recorder without a listener and enables coditect's
/// metrics; the handle renders the exposition text (for your own endpoint).
///
/// # Errors
/// [`PrometheusError`] if a recorder is already installed.
pub fn recorder() -> Result<PrometheusHandle, PrometheusError> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    super::metrics::enable();
    Ok(handle)
}
