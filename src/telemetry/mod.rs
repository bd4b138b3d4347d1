//! Logs, traces and metrics: the `tracing` subscriber and the Prometheus registry.

pub mod metrics;
pub mod trace;

pub use metrics::Metrics;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, LogSettings};

/// Installs the global `tracing` subscriber once; later calls are ignored (tests call it often).
/// Logs go to standard error, so command output on standard output stays clean.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match settings.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
            .try_init(),
    };
    drop(result);
}
