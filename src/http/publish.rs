//! The publish routes: `POST /v1/events/{name}` (publish, or run the in-process listeners
//! with `?mode=sync`) and `POST /v1/jobs/{name}`, both through the events service (a confirm,
//! or the events outbox) and both taking an `Idempotency-Key` (see `idempotent`), and the lists
//! `GET /v1/events` (the audit log) and `GET /v1/notifications`. CloudEvents come in on
//! `POST /v1/events` (`cloudevents`).

use serde::Deserialize;
use serde_json::json;
use warp::{Filter, http::StatusCode};

use super::{
    ApiError, JsonBody,
    idempotent::{self, Keyed, Outcome},
    json_body,
    openapi::{Doc, Schema, shape},
    route::{Access, Endpoint, Reply, Request, json},
};
use crate::{
    broker::{
        envelope::{Event, Outgoing},
        names::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE},
    },
    config::Scope,
    store::ListQuery,
};

/// Longest accepted event name.
pub const MAX_EVENT_NAME: usize = 128;
/// Query of `POST /v1/events/{name}`.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
pub(super) struct EventQuery {
    /// `async` (default: publish and answer 202) or `sync` (run in-process listeners).
    #[param(value_type = Option<EventMode>)]
    pub mode: Option<String>,
    /// The entity the event is about.
    pub aggregate_id: Option<String>,
}

/// The values of `?mode=` (documentation only: the handler names a wrong one).
#[derive(utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
enum EventMode {
    /// Publish and answer 202.
    Async,
    /// Run the in-process listeners and answer their results.
    Sync,
}

/// The 202 of a published event (`event_id`) or job (`job_id`).
fn accepted_shape(id: &str, status: &str) -> Schema {
    shape::object(vec![
        (id, shape::uuid()),
        ("status", shape::one_of(&[status])),
        ("stored", shape::one_of(&["broker", "outbox"])),
    ])
}

/// The publish routes.
pub(super) fn endpoints(body_limit: u64) -> Vec<Endpoint> {
    let read = Access::Scoped(Scope::Read);
    let list = |id, summary, field| {
        Doc::new(id, summary)
            .query::<ListQuery>()
            .answer(200, "The rows, newest first.", shape::rows(field))
            .unavailable()
    };
    vec![
        Endpoint::post("/v1/events/{name}", Access::Publish)
            .doc(idempotent_doc(
                Doc::new("publish_event", "Publish an event")
                    .describe(
                        "The body is the event's data (a JSON object). The name is two or \
                         more lowercase segments joined by dots (`order.created`).",
                    )
                    .query::<EventQuery>()
                    .uses::<EventMode>()
                    .json_body_schema(shape::any_object())
                    .answer(
                        202,
                        "Published (confirmed by the broker, or kept in the outbox).",
                        accepted_shape("event_id", "accepted"),
                    )
                    .answer(
                        200,
                        "`?mode=sync`: the in-process listeners' results.",
                        shape::object(vec![
                            ("event_id", shape::uuid()),
                            ("event_name", shape::string()),
                            ("mode", shape::one_of(&["sync"])),
                            ("results", shape::array(shape::any())),
                        ]),
                    )
                    .error(400, &["invalid_event_name"])
                    .error(503, &["not_stored"])
                    .unavailable(),
            ))
            .input(
                warp::query::<EventQuery>()
                    .and(json_body(body_limit))
                    .and(idempotency_key())
                    .map(|query, body, key| (query, body, key)),
            )
            .to(publish_event),
        Endpoint::post("/v1/jobs/{name}", Access::Publish)
            .doc(idempotent_doc(
                Doc::new("enqueue_job", "Queue a job for the module that takes it")
                    .json_body_schema(shape::any_object())
                    .answer(202, "Queued.", accepted_shape("job_id", "queued"))
                    .error(400, &["invalid_event_name"])
                    .error(404, &["unknown_job"])
                    .error(503, &["not_stored"])
                    .unavailable(),
            ))
            .input(
                json_body(body_limit)
                    .and(idempotency_key())
                    .map(|body, key| (body, key)),
            )
            .to(enqueue_job),
        Endpoint::get("/v1/events", read)
            .doc(list("list_events", "The audit log of events", "events"))
            .input(warp::query::<ListQuery>())
            .to(|req: Request, (), query: ListQuery| async move {
                check_list(&query)?;
                let rows = req.state.reads.events(&query).await?;
                json(&json!({"events": rows}))
            }),
        Endpoint::get("/v1/notifications", read)
            .doc(list("list_notifications", "Notifications", "notifications"))
            .input(warp::query::<ListQuery>())
            .to(|req: Request, (), query: ListQuery| async move {
                check_list(&query)?;
                let rows = req.state.reads.notifications(&query).await?;
                json(&json!({"notifications": rows}))
            }),
    ]
}

/// The `Idempotency-Key` header, when sent.
pub(super) fn idempotency_key()
-> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("idempotency-key")
}

/// `doc` of a route that honours `Idempotency-Key` (declare its answers first).
pub(super) fn idempotent_doc(doc: Doc) -> Doc {
    doc.header(
        "Idempotency-Key",
        "1 to 255 characters. The same key with the same body within the retention window \
         (`http.idempotency_retention_secs`, 24 h by default) answers the first answer again \
         and has one effect; with another body it is refused (422).",
    )
    .answer_header(
        202,
        "Idempotent-Replayed",
        "`true` when this is the first answer to the same key, given again.",
    )
    .error(422, &["idempotency_key_reused"])
}

/// The list filters go to the database as text, which cannot hold a NUL character.
fn check_list(query: &ListQuery) -> Result<(), ApiError> {
    let fields = [
        ("aggregate_id", &query.aggregate_id),
        ("name", &query.name),
        ("user_id", &query.user_id),
    ];
    for (name, value) in fields {
        super::no_nul(name, value.as_deref())?;
    }
    Ok(())
}

/// Checks the event naming rule: two or more lowercase segments separated by dots, each
/// starting with a letter and made of `a-z`, `0-9`, `_`; at most [`MAX_EVENT_NAME`] bytes.
pub fn validate_event_name(name: &str) -> Result<(), ApiError> {
    let err = |reason| ApiError::InvalidEventName {
        name: name.chars().take(MAX_EVENT_NAME).collect(),
        reason,
    };
    if name.len() > MAX_EVENT_NAME {
        return Err(err("longer than 128 bytes"));
    }
    let segments: Vec<&str> = name.split('.').collect();
    if segments.len() < 2 {
        return Err(err("must be segment.segment, e.g. order.created"));
    }
    for s in segments {
        let mut bytes = s.bytes();
        match bytes.next() {
            None => return Err(err("empty segment")),
            Some(b) if !b.is_ascii_lowercase() => {
                return Err(err("each segment must start with a lowercase letter"));
            }
            Some(_) => {}
        }
        if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(err("segments may hold only a-z, 0-9 and _"));
        }
    }
    Ok(())
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[tracing::instrument(skip_all, fields(event_name = %name, request_id = %req.ctx.request_id, event_id, trace_id))]
async fn publish_event(
    req: Request,
    (name,): (String,),
    (query, body, key): (EventQuery, JsonBody, Option<String>),
) -> Reply {
    validate_event_name(&name)?;
    let sync = match query.mode.as_deref() {
        None | Some("async") => false,
        Some("sync") => true,
        Some(other) => {
            return Err(ApiError::InvalidQuery(format!(
                "mode must be async or sync, got {other:?}"
            )));
        }
    };
    let data = parse_data(body.content_type.as_deref(), &body.bytes)?;
    if let Some(a) = &query.aggregate_id
        && (a.is_empty() || a.len() > 255)
    {
        return Err(ApiError::InvalidQuery(
            "aggregate_id must be 1 to 255 bytes".into(),
        ));
    }
    let mode = if sync { "sync" } else { "async" };
    let aggregate = query.aggregate_id.as_deref().unwrap_or("");
    let keyed = Keyed::header(
        &req,
        "/v1/events/{name}",
        key,
        &[
            name.as_bytes(),
            mode.as_bytes(),
            aggregate.as_bytes(),
            &body.bytes,
        ],
    )?;
    let mut event = Event::new(name, query.aggregate_id, data);
    if let Some(k) = &keyed {
        event.event_id = k.id;
    }
    tracing::Span::current().record("event_id", tracing::field::display(event.event_id));
    let outcome = idempotent::once(&req.state, keyed.as_ref(), "event_id", || async {
        if sync {
            let results = req.state.dispatcher.dispatch_sync(&event).await;
            return Ok(Outcome::fresh(
                StatusCode::OK,
                json!({
                    "event_id": event.event_id,
                    "event_name": event.event_name,
                    "mode": "sync",
                    "results": results,
                }),
            ));
        }
        let event_id = event.event_id;
        let stored =
            publish_for_request(&req, EVENTS_EXCHANGE, event, body.traceparent.as_deref()).await?;
        Ok(accepted(("event_id", event_id), "accepted", stored))
    })
    .await?;
    Ok(outcome.into_response(keyed.is_some()))
}

/// The 202 of a published message: its id, what happened, and where it is stored.
fn accepted(
    (id_key, id): (&str, uuid::Uuid),
    status: &str,
    stored: crate::outbox::Stored,
) -> Outcome {
    Outcome::fresh(
        StatusCode::ACCEPTED,
        json!({
            (id_key): id,
            "status": status,
            "stored": stored.as_str(),
        }),
    )
}

/// Publishes `message` (routing key = its name) with the request's id as correlation id and
/// `x-request-id`, and a child of the caller's trace (or a new trace), and waits for the
/// confirm; when the broker cannot confirm, stores it in the events outbox.
pub(super) async fn publish_for_request(
    req: &Request,
    exchange: &'static str,
    message: Event,
    traceparent: Option<&str>,
) -> Result<crate::outbox::Stored, ApiError> {
    let ctx = &req.ctx;
    let trace = crate::telemetry::outgoing(traceparent);
    tracing::Span::current().record("trace_id", trace.trace_id.as_str());
    let outgoing = Outgoing::from_event(message)
        .for_request(Some(ctx.request_id.clone()), Some(trace.header()))
        .correlated(ctx.request_id.clone());
    Ok(req.state.events.send_outgoing(exchange, &outgoing).await?)
}

/// Checks the content type and parses the body as a JSON object (a message's `data`). Nesting
/// deeper than serde_json's recursion limit (128) is refused as invalid JSON, never a stack
/// overflow.
pub fn parse_data(content_type: Option<&str>, body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if let Some(ct) = content_type {
        let media = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if media != "application/json" && !media.ends_with("+json") {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    let data: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    if !data.is_object() {
        return Err(ApiError::NotAnObject(json_kind(&data)));
    }
    Ok(data)
}

#[tracing::instrument(skip_all, fields(job_name = %name, request_id = %req.ctx.request_id, job_id, trace_id))]
async fn enqueue_job(
    req: Request,
    (name,): (String,),
    (body, key): (JsonBody, Option<String>),
) -> Reply {
    validate_event_name(&name)?;
    if !req.state.reads.takes_job(&name) {
        return Err(ApiError::UnknownJob(name));
    }
    let data = parse_data(body.content_type.as_deref(), &body.bytes)?;
    let keyed = Keyed::header(
        &req,
        "/v1/jobs/{name}",
        key,
        &[name.as_bytes(), &body.bytes],
    )?;
    let mut job = Event::new(name, None, data);
    if let Some(k) = &keyed {
        job.event_id = k.id;
    }
    tracing::Span::current().record("job_id", tracing::field::display(job.event_id));
    let outcome = idempotent::once(&req.state, keyed.as_ref(), "job_id", || async {
        let job_id = job.event_id;
        let stored =
            publish_for_request(&req, COMMANDS_EXCHANGE, job, body.traceparent.as_deref()).await?;
        Ok(accepted(("job_id", job_id), "queued", stored))
    })
    .await?;
    Ok(outcome.into_response(keyed.is_some()))
}
