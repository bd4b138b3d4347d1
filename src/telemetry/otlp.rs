//! OTLP trace export (cargo feature `otlp`, setting `log.otlp_endpoint`): `tracing` spans go to
//! an OpenTelemetry collector over OTLP/HTTP (protobuf), batched on a background thread.
//!
//! Spans join the trace carried in messages: the HTTP front's span is a child of the caller's
//! `traceparent`, a consumer's span a child of the message's `traceparent`, and the
//! `traceparent` warren publishes names the HTTP front's exported span, so a tracing backend
//! shows the request and every job it caused as one tree.

use std::sync::OnceLock;

use opentelemetry::{
    Context,
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::trace::TraceParent;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// A tracer provider exporting to `endpoint` (the full traces URL), kept for [`flush`].
pub(crate) fn provider(
    endpoint: &str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name("warren").build())
        .build();
    let _ = PROVIDER.set(provider.clone());
    Ok(provider)
}

/// Sends the spans still buffered (at shutdown, or in a test).
pub(crate) fn flush() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// Makes `span` (created, not yet entered) a child of the remote span `parent`.
pub(crate) fn set_remote_parent(span: &tracing::Span, parent: &TraceParent) -> bool {
    if PROVIDER.get().is_none() {
        return false;
    }
    let (Ok(trace_id), Ok(span_id)) = (
        TraceId::from_hex(&parent.trace_id),
        SpanId::from_hex(&parent.span_id),
    ) else {
        return false;
    };
    let remote = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(parent.flags),
        true,
        TraceState::default(),
    );
    span.set_parent(Context::new().with_remote_span_context(remote))
        .is_ok()
}

/// The `traceparent` naming the current span, when spans are exported.
pub(crate) fn current() -> Option<TraceParent> {
    PROVIDER.get()?;
    let cx = tracing::Span::current().context();
    let own = cx.span().span_context().clone();
    own.is_valid().then(|| TraceParent {
        trace_id: own.trace_id().to_string(),
        span_id: own.span_id().to_string(),
        flags: own.trace_flags().to_u8(),
    })
}
