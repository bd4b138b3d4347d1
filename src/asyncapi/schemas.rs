//! The JSON schemas of the AsyncAPI document: warren's envelope (the body of every message),
//! the data of the message types warren defines (the saga protocol, `job.failed`, the saga
//! ends), and the AMQP headers every message carries. Each schema is written next to the
//! Rust type it describes; the tests in `super` check real serialized messages against them.

use serde_json::{Value, json};

use crate::broker::names::{
    H_ATTEMPT, H_DEFERRALS, H_ERROR, H_FAILED_AT, H_ORIGINAL_EXCHANGE, H_ORIGINAL_ROUTING_KEY,
    H_QUEUE, H_REASON, H_REPLAYED_AT, H_REQUEST_ID, H_TRACEPARENT, H_X_DEATH,
};

/// The CloudEvents headers of the RabbitMQ protocol binding (binary mode), and whether each is
/// on every message.
pub(super) const CLOUDEVENT_HEADERS: [(&str, &str, bool); 7] = [
    ("ce-specversion", "CloudEvents version, `1.0`.", true),
    (
        "ce-id",
        "The CloudEvent's `id`: the `event_id`, or the sender's own id for a CloudEvent that came from outside.",
        true,
    ),
    (
        "ce-source",
        "The CloudEvent's `source`: `/warren/<vhost>/<exchange>` for warren's own, the sender's for a CloudEvent from outside.",
        true,
    ),
    (
        "ce-type",
        "The CloudEvent's `type`: the event or command name.",
        true,
    ),
    ("ce-time", "When it happened, RFC 3339.", true),
    ("ce-subject", "The aggregate id, when there is one.", false),
    (
        "ce-dataschema",
        "The sender's `dataschema`, when it gave one.",
        false,
    ),
];

/// The schema of `Event` (`src/broker/envelope.rs`): the JSON body of every message, with
/// `data` described by `data`.
pub(super) fn envelope(data: Value) -> Value {
    json!({
        "type": "object",
        "description": "warren's envelope, the article's domain event: the body of every message warren publishes.",
        "required": ["event_id", "event_name", "occurred_on", "data"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid", "description": "UUID (v7 for warren's own, v5 of source and id for a CloudEvent from outside); also the AMQP message_id and ce-id."},
            "event_name": {"type": "string", "maxLength": 255, "description": "The event or command name: the routing key and the AMQP type."},
            "aggregate_id": {"type": ["string", "null"], "description": "The entity the event is about."},
            "occurred_on": {"type": "string", "format": "date-time"},
            "version": {"type": "string", "description": "Body format version, 1.0."},
            "data": data,
            "cloudevent": cloudevent_attributes(),
        },
        "additionalProperties": false,
    })
}

/// `CloudEventAttributes`: a foreign CloudEvent's own attributes, kept in the envelope.
fn cloudevent_attributes() -> Value {
    json!({
        "type": "object",
        "description": "The own attributes of a CloudEvent that came from outside warren; absent on warren's own events.",
        "required": ["id", "source"],
        "properties": {
            "id": {"type": "string"},
            "source": {"type": "string"},
            "datacontenttype": {"type": "string"},
            "dataschema": {"type": "string"},
            "data_base64": {"type": "boolean", "description": "data holds base64 of bytes that are not UTF-8 text."},
            "extensions": {
                "type": "object",
                "propertyNames": {"pattern": "^[a-z0-9]{1,20}$"},
                "additionalProperties": {"type": ["string", "integer", "boolean"]},
            },
        },
        "additionalProperties": false,
    })
}

/// Any JSON: the data of an event or job published over HTTP.
pub(super) fn any_data() -> Value {
    json!({"description": "The publisher's data, as it was sent."})
}

/// `CommandData` (`src/saga/protocol.rs`): a saga step's command or compensation.
pub(super) fn saga_command() -> Value {
    json!({
        "type": "object",
        "required": ["saga_id", "kind", "step", "step_name", "action", "idempotency_key", "payload"],
        "properties": {
            "saga_id": {"type": "string", "format": "uuid"},
            "kind": {"type": "string", "description": "The saga kind."},
            "step": {"type": "integer", "minimum": 0},
            "step_name": {"type": "string"},
            "action": {"type": "string", "enum": ["execute", "compensate"]},
            "idempotency_key": {"type": "string", "description": "saga_id:step:action; the participant applies it at most once."},
            "payload": {"description": "The saga's input."},
            "results": {"type": "object", "description": "The results of the steps that succeeded with one, by step name."},
        },
        "additionalProperties": false,
    })
}

/// `Reply` (`src/saga/protocol.rs`): a participant's answer on `warren.replies`.
pub(super) fn saga_reply() -> Value {
    json!({
        "type": "object",
        "required": ["saga_id", "step", "action", "ok"],
        "properties": {
            "saga_id": {"type": "string", "format": "uuid"},
            "step": {"type": "integer", "minimum": 0},
            "action": {"type": "string", "enum": ["execute", "compensate"]},
            "ok": {"type": "boolean"},
            "reason": {"type": "string"},
            "result": {"description": "What the participant returned with a success."},
        },
        "additionalProperties": false,
    })
}

/// `StartData` (`src/saga/protocol.rs`): `saga.start`.
pub(super) fn saga_start() -> Value {
    json!({
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"type": "string"},
            "business_key": {"type": ["string", "null"]},
            "payload": {},
        },
        "additionalProperties": false,
    })
}

/// The data of `saga.completed`, `saga.compensated` and `saga.needs_intervention`
/// (`src/saga/outbox.rs`).
pub(super) fn saga_finished() -> Value {
    json!({
        "type": "object",
        "required": ["saga_id", "kind", "status"],
        "properties": {
            "saga_id": {"type": "string", "format": "uuid"},
            "kind": {"type": "string"},
            "business_key": {"type": ["string", "null"]},
            "status": {"type": "string", "enum": ["completed", "compensated", "needs_intervention"]},
            "reason": {"type": ["string", "null"]},
            "definition_hash": {"type": ["string", "null"]},
            "started_at": {"type": "string", "format": "date-time"},
            "links": {"type": "object", "properties": {"self": {"type": "string"}}},
        },
        "additionalProperties": false,
    })
}

/// The data of `job.failed` (`src/jobs/settle.rs`, the article's `sendAlert`).
pub(super) fn job_failed() -> Value {
    json!({
        "type": "object",
        "required": ["type", "queue", "attempts", "reason", "error"],
        "properties": {
            "type": {"type": "string", "description": "<consumer>_failed"},
            "queue": {"type": "string"},
            "job_id": {"type": ["string", "null"], "format": "uuid"},
            "job_name": {"type": ["string", "null"]},
            "attempts": {"type": "integer", "minimum": 0},
            "reason": {"type": "string", "description": "Why it was parked: exhausted, invalid or undecodable."},
            "error": {"type": "string"},
            "data": {"description": "The failed job's data, when it could be decoded."},
        },
        "additionalProperties": false,
    })
}

/// The AMQP headers of warren's messages: its own, the CloudEvents binding's, and the ones a
/// retry, a park or the broker adds. Other headers may be present (a foreign publisher's).
pub(super) fn headers() -> Value {
    let text = |description: &str| json!({"type": "string", "description": description});
    let mut properties = serde_json::Map::new();
    properties.insert(
        H_ATTEMPT.to_owned(),
        json!({"type": "integer", "minimum": 1, "description": "1-based attempt number, kept across retries."}),
    );
    properties.insert(
        H_TRACEPARENT.to_owned(),
        text("W3C trace context of the cause."),
    );
    properties.insert(
        H_REQUEST_ID.to_owned(),
        text("The HTTP request that caused the message."),
    );
    for (name, description, _) in CLOUDEVENT_HEADERS {
        properties.insert(name.to_owned(), text(description));
    }
    properties.insert(
        H_DEFERRALS.to_owned(),
        json!({"type": "integer", "minimum": 0, "description": "Times in a row its receiver asked for a pause."}),
    );
    properties.insert(
        H_ERROR.to_owned(),
        text("On a retried or parked message: why it failed last."),
    );
    properties.insert(
        H_FAILED_AT.to_owned(),
        text("On a retried or parked message: when it failed last (RFC 3339)."),
    );
    properties.insert(
        H_ORIGINAL_EXCHANGE.to_owned(),
        text("On a retried or parked message: the exchange it was first published to."),
    );
    properties.insert(
        H_ORIGINAL_ROUTING_KEY.to_owned(),
        text("On a retried or parked message: its first routing key."),
    );
    properties.insert(
        H_REASON.to_owned(),
        json!({"type": "string", "enum": ["exhausted", "invalid", "undecodable"], "description": "On a parked message: why it was parked."}),
    );
    properties.insert(
        H_QUEUE.to_owned(),
        text("On a parked message: the queue it was parked from."),
    );
    properties.insert(
        H_REPLAYED_AT.to_owned(),
        text("On a replayed message: when it was replayed."),
    );
    properties.insert(
        H_X_DEATH.to_owned(),
        json!({"type": "array", "description": "Written by RabbitMQ when a delay tier's TTL dead-letters the message."}),
    );
    let required: Vec<&str> = std::iter::once(H_ATTEMPT)
        .chain(
            CLOUDEVENT_HEADERS
                .iter()
                .filter(|(_, _, always)| *always)
                .map(|(name, _, _)| *name),
        )
        .collect();
    json!({
        "type": "object",
        "required": required,
        "properties": properties,
        "description": "AMQP headers. Extension attributes of a CloudEvent travel as further ce-<name> headers.",
    })
}
