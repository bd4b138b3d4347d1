//! CloudEvents ingress: `POST /v1/events` in the three content modes of the CloudEvents HTTP
//! protocol binding 1.0.2, each event becoming a warren event published like
//! `POST /v1/events/{name}` (confirm, or the events outbox).
//!
//! - **structured**: `Content-Type: application/cloudevents+json` (parameters such as
//!   `charset` allowed), the body one event in the JSON format;
//! - **batched**: `application/cloudevents-batch+json`, a JSON array of 1 to [`MAX_BATCH`]
//!   events, each accepted or refused on its own: 202 when all were accepted, 207 when one or
//!   more were refused or could not be stored, the answer listing each event's outcome in order;
//! - **binary**: a `ce-specversion` header; the attributes in `ce-*` headers (values
//!   percent-decoded, binding section 3.1.3.2), `Content-Type` is `datacontenttype`, the body
//!   is the data, whatever its media type.
//!
//! Mapping: `event_id` = `cloudevent_event_id(source, id)` (so a repeat is the same message
//! everywhere), `event_name` = `type` (the rule of [`validate_event_type`]), `aggregate_id` =
//! `subject`, `occurred_on` = `time` (now when absent); `data` is the JSON value when the
//! content type is JSON (`application/json`, `*/*+json`, or none), else a JSON string of the
//! text, or of standard base64 (with `data_base64` set) for bytes that are not UTF-8. The
//! CloudEvent's own attributes travel on in `Event::cloudevent`.
//!
//! Written by hand rather than with `cloudevents-sdk` 0.9: see docs/architecture.md.

mod parse;

use bytes::Bytes;
use serde_json::{Value, json};
use warp::{
    Filter,
    http::{HeaderMap, StatusCode},
};

use super::publish::publish_for_request;
use super::{
    ApiError,
    idempotent::{self, Keyed, Outcome},
    openapi::{Doc, Schema, shape},
    route::{Access, Endpoint, Reply, Request},
};
use crate::broker::names::EVENTS_EXCHANGE;
use parse::{Incoming, Mode};
pub use parse::{MAX_BATCH, validate_event_type};

/// The CloudEvents route.
pub(super) fn endpoints(body_limit: u64) -> Vec<Endpoint> {
    vec![
        Endpoint::post("/v1/events", Access::Publish)
            .doc(doc())
            .input(
                warp::header::headers_cloned()
                    .and(warp::body::content_length_limit(body_limit))
                    .and(warp::body::bytes())
                    .map(|headers, body| (headers, body)),
            )
            .to(receive),
    ]
}

/// The route's OpenAPI operation: one body per content mode.
fn doc() -> Doc {
    let header = |name, what| (name, what);
    let mut doc = Doc::new(
        "publish_cloudevents",
        "Publish CloudEvents (structured, batched or binary mode)",
    )
    .describe(
        "The CloudEvents HTTP binding 1.0.2. Structured: `application/cloudevents+json`, one \
         event. Batched: `application/cloudevents-batch+json`, 1 to 100 events, each accepted \
         or refused on its own (202 when all were accepted, 207 otherwise). Binary: the \
         attributes in percent-encoded `ce-*` headers and the body is the data, in the media \
         type `Content-Type` names. `source` + `id` is the event's identity: sending it again \
         answers the first answer (`Idempotent-Replayed: true`) and publishes nothing.",
    )
    .bodies(vec![
        ("application/cloudevents+json", cloudevent_schema()),
        (
            "application/cloudevents-batch+json",
            shape::array(cloudevent_schema()),
        ),
        ("application/octet-stream", binary_schema()),
    ]);
    for (name, what) in [
        header("ce-specversion", "Binary mode: `1.0`."),
        header("ce-id", "Binary mode: the event's id."),
        header(
            "ce-source",
            "Binary mode: the event's source (a URI-reference).",
        ),
        header(
            "ce-type",
            "Binary mode: the event's type (dot-separated words).",
        ),
        header("ce-time", "Binary mode: when it happened (RFC 3339)."),
        header("ce-subject", "Binary mode: the entity it is about."),
    ] {
        doc = doc.header(name, what);
    }
    doc.answer(
        202,
        "Accepted: one event (`event_id`, `id`, `source`, `status`, `stored`), or a batch whose \
         events were all accepted (`accepted`, `refused`, `results`).",
        shape::any_object(),
    )
    .answer_header(
        202,
        "Idempotent-Replayed",
        "`true` when the same CloudEvent was accepted before and this is its first answer.",
    )
    .answer(
        207,
        "A batch in which one or more events were refused or could not be stored; `results` \
         says which, in order.",
        shape::object(vec![
            ("accepted", shape::integer()),
            ("refused", shape::integer()),
            ("results", shape::array(shape::any_object())),
        ]),
    )
    .error(
        400,
        &[
            "invalid_cloudevent",
            "invalid_cloudevent_batch",
            "invalid_json",
        ],
    )
    .error(415, &["not_a_cloudevent"])
    .error(503, &["not_stored"])
    .unavailable()
}

/// A CloudEvent in the JSON event format (required attributes, the optional ones warren
/// reads; extensions are further members).
fn cloudevent_schema() -> Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("specversion", shape::one_of(&["1.0"]))
        .required("specversion")
        .property("id", text().min_length(Some(1)))
        .required("id")
        .property("source", text().min_length(Some(1)))
        .required("source")
        .property("type", text().min_length(Some(1)))
        .required("type")
        .property(
            "time",
            text().format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::DateTime,
            ))),
        )
        .property("subject", text())
        .property("datacontenttype", text())
        .property("dataschema", text())
        .property("data", shape::any())
        .property("data_base64", text())
        .into()
}

/// The binary mode's body: the data, in any media type.
fn binary_schema() -> Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(utoipa::openapi::SchemaFormat::Custom(
            "binary".to_owned(),
        )))
        .into()
}

#[tracing::instrument(skip_all, fields(request_id = %req.ctx.request_id, mode, events))]
async fn receive(req: Request, (): (), (headers, body): (HeaderMap, Bytes)) -> Reply {
    let mode = parse::mode(&headers)?;
    tracing::Span::current().record("mode", mode.as_str());
    let traceparent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match mode {
        Mode::Structured => {
            let event = parse::structured(&body)?;
            let outcome = publish_once(&req, event, traceparent.as_deref()).await?;
            Ok(outcome.into_response(true))
        }
        Mode::Binary => {
            let event = parse::binary(&headers, &body)?;
            let outcome = publish_once(&req, event, traceparent.as_deref()).await?;
            Ok(outcome.into_response(true))
        }
        Mode::Batch => batch(&req, &body, traceparent.as_deref()).await,
    }
}

/// Publishes `event` once per CloudEvent identity (a repeat answers the first answer).
async fn publish_once(
    req: &Request,
    event: Incoming,
    traceparent: Option<&str>,
) -> Result<Outcome, ApiError> {
    let keyed = Keyed::cloudevent(&event.attrs.source, &event.attrs.id);
    idempotent::once(&req.state, Some(&keyed), "event_id", || async {
        let (id, source) = (event.attrs.id.clone(), event.attrs.source.clone());
        let message = event.into_event(keyed.id);
        let event_id = message.event_id;
        let stored = publish_for_request(req, EVENTS_EXCHANGE, message, traceparent).await?;
        Ok(Outcome::fresh(
            StatusCode::ACCEPTED,
            json!({
                "event_id": event_id,
                "id": id,
                "source": source,
                "status": "accepted",
                "stored": stored.as_str(),
            }),
        ))
    })
    .await
}

/// The batched mode: each event on its own, in order.
async fn batch(req: &Request, body: &[u8], traceparent: Option<&str>) -> Reply {
    let items = parse::batch(body)?;
    tracing::Span::current().record("events", items.len());
    let mut results = Vec::with_capacity(items.len());
    let (mut accepted, mut refused) = (0usize, 0usize);
    for (index, item) in items.into_iter().enumerate() {
        let (id, source) = parse::identity(&item);
        let result = match parse::event(item) {
            Err(e) => Err(e),
            Ok(event) => publish_once(req, event, traceparent).await,
        };
        match result {
            Ok(outcome) => {
                accepted += 1;
                let mut r = outcome.body;
                r["index"] = json!(index);
                r["replayed"] = json!(outcome.replayed);
                results.push(r);
            }
            Err(e) => {
                refused += 1;
                let mut error = e.body(&req.ctx.request_id)["error"].take();
                error["status"] = json!(e.status().as_u16());
                results.push(json!({
                    "index": index,
                    "id": id,
                    "source": source,
                    "status": if e.status().is_server_error() { "failed" } else { "refused" },
                    "error": error,
                }));
            }
        }
    }
    let status = if refused == 0 {
        StatusCode::ACCEPTED
    } else {
        StatusCode::MULTI_STATUS
    };
    let body: Value = json!({"accepted": accepted, "refused": refused, "results": results});
    Ok(Outcome::fresh(status, body).into_response(false))
}
