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
    route::{Access, Endpoint, Reply, Request},
};
use crate::broker::names::EVENTS_EXCHANGE;
use parse::{Incoming, Mode};
pub use parse::{MAX_BATCH, validate_event_type};

/// The CloudEvents route.
pub(super) fn endpoints(body_limit: u64) -> Vec<Endpoint> {
    vec![
        Endpoint::post("/v1/events", Access::Publish)
            .input(
                warp::header::headers_cloned()
                    .and(warp::body::content_length_limit(body_limit))
                    .and(warp::body::bytes())
                    .map(|headers, body| (headers, body)),
            )
            .to(receive),
    ]
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
