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
                    .with_writer(std::io::stderr)
                    .with_current_span(true)
                    .with_span_list(true),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(fmt::layer().with_writer(std::io::stderr).with_target(false))
            .try_init(),
    };
    drop(result);
}

/// Serves `GET /metrics` and `GET /healthz` on `addr` until shutdown: the metrics listener of
/// processes without the HTTP front. Returns the bound address and the server future.
pub async fn serve_metrics(
    metrics: Metrics,
    addr: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<(
    std::net::SocketAddr,
    impl std::future::Future<Output = ()> + Send + 'static,
)> {
    use warp::Filter;
    let scrape = warp::path!("metrics")
        .and(warp::get())
        .and(warp::header::optional::<String>("accept"))
        .map(move |accept: Option<String>| {
            let (body, content_type) = metrics.render_for(accept.as_deref());
            warp::reply::with_header(body, "content-type", content_type)
        });
    let health = warp::path!("healthz")
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let server = warp::serve(scrape.or(health))
        .incoming(listener)
        .graceful(async move { shutdown.cancelled().await })
        .run();
    Ok((bound, server))
}
