//! Logs, traces and metrics: the `tracing` subscriber and the Prometheus registry.

pub(crate) mod metrics;
#[cfg(feature = "otlp")]
pub(crate) mod otlp;
pub(crate) mod trace;

pub use metrics::Metrics;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{LogFormat, LogSettings};

/// Installs the global `tracing` subscriber once; later calls are ignored (tests call it often).
/// Logs go to standard error, so command output on standard output stays clean. With
/// `log.otlp_endpoint` set (and the `otlp` feature built in), spans are exported over OTLP
/// too.
pub fn init(settings: &LogSettings) {
    crate::tls::install_crypto_provider();
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    #[cfg(feature = "otlp")]
    let (otel, otel_error) = match settings.otlp_endpoint.as_deref().map(otlp::provider) {
        Some(Ok(provider)) => {
            use opentelemetry::trace::TracerProvider as _;
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("warren"));
            (Some(layer), None)
        }
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    };
    #[cfg(not(feature = "otlp"))]
    let (otel, otel_error): (Option<tracing_subscriber::layer::Identity>, Option<String>) =
        match settings.otlp_endpoint {
            Some(_) => (
                None,
                Some("this warren was built without the `otlp` feature".to_owned()),
            ),
            None => (None, None),
        };
    let registry = tracing_subscriber::registry().with(filter).with(otel);
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
    if result.is_ok()
        && let Some(e) = otel_error
    {
        tracing::warn!(error = %e, "Spans are not exported over OTLP.");
    }
}

/// Sends spans still buffered for OTLP export (a no-op without it).
pub fn flush() {
    #[cfg(feature = "otlp")]
    otlp::flush();
}

/// Makes `span` (created, not yet entered) a child of the remote span named by the
/// `traceparent` header value, when spans are exported; otherwise does nothing.
pub fn set_remote_parent(span: &tracing::Span, traceparent: Option<&str>) {
    #[cfg(feature = "otlp")]
    if let Some(parent) = traceparent.and_then(trace::TraceParent::parse) {
        otlp::set_remote_parent(span, &parent);
    }
    #[cfg(not(feature = "otlp"))]
    let _ = (span, traceparent);
}

/// The `traceparent` to put on a message published now: the current span when spans are
/// exported (so the consumer's span is its child); otherwise a new span id in the caller's
/// trace (`incoming`), or a new trace.
pub fn outgoing(incoming: Option<&str>) -> trace::TraceParent {
    #[cfg(feature = "otlp")]
    if let Some(own) = otlp::current() {
        return own;
    }
    incoming
        .and_then(trace::TraceParent::parse)
        .map(|t| t.child())
        .unwrap_or_else(trace::TraceParent::start)
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
