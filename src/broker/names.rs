//! Every name warren puts on the wire, in one place: the exchanges, the built-in queues, the
//! message headers, and the helpers that read headers back. The bottom layer: it depends on
//! nothing in warren, and every other module takes its names from here.

use lapin::{BasicProperties, types::AMQPValue};

// Exchanges.

/// The exchange HTTP events are published to.
pub const EVENTS_EXCHANGE: &str = "warren.events";
/// The exchange jobs and commands are published to.
pub const COMMANDS_EXCHANGE: &str = "warren.commands";
/// Exchange the participants reply on.
pub const REPLIES_EXCHANGE: &str = "warren.replies";
/// The delay tier a reported failure waits in.
pub const FAILURE_TIER: &str = "warren.retry.60s";
/// The delay tier an error, panic or timeout waits in.
pub const ERROR_TIER: &str = "warren.retry.120s";
/// Waited messages go back to their queue through this exchange.
pub const REQUEUE_EXCHANGE: &str = "warren.requeue";
/// Parked messages go to `Q.dead` through this exchange, keyed by queue.
pub const DEAD_EXCHANGE: &str = "warren.dead";

/// The `x-delivery-limit` of every parking queue `Q.dead`: so high that it is never reached.
/// Since RabbitMQ 4.0 a quorum queue declared without one has a limit of 20, and a parking
/// queue has no dead-letter exchange: a parked message that a DLQ pass (show, or a filtered
/// replay or purge) handed back 20 times would be dropped. 3.10 has no default limit. Both
/// accept this value (`-1`, 4.0's "no limit", means "dead-letter on the first return" on 3.10).
pub const PARKING_DELIVERY_LIMIT: i64 = 1_000_000;

// The built-in consumers' queues.

/// The e-mail module's queue.
pub const EMAIL_QUEUE: &str = "warren.email";
/// The notifications module's queue.
pub const NOTIFICATIONS_QUEUE: &str = "warren.notifications";
/// The audit module's queue.
pub const AUDIT_QUEUE: &str = "warren.audit";
/// The maintenance module's queue.
pub const MAINTENANCE_QUEUE: &str = "warren.maintenance";
/// The saga orchestrator's queue (replies and saga starts).
pub const SAGA_QUEUE: &str = "warren.saga";
/// The orders participant's queue.
pub const ORDERS_QUEUE: &str = "warren.orders";
/// The inventory participant's queue.
pub const INVENTORY_QUEUE: &str = "warren.inventory";
/// The payments participant's queue.
pub const PAYMENTS_QUEUE: &str = "warren.payments";

// Headers.

/// Header: 1-based attempt number, kept across retries.
pub const H_ATTEMPT: &str = "x-warren-attempt";
/// Header: how many times in a row the message was deferred (its receiver asked for a pause).
pub const H_DEFERRALS: &str = "x-warren-deferrals";
/// Header: W3C trace context.
pub const H_TRACEPARENT: &str = "traceparent";
/// Header: the HTTP request that caused the message.
pub const H_REQUEST_ID: &str = "x-request-id";
/// Header: why the message failed last.
pub const H_ERROR: &str = "x-warren-error";
/// Header: when it failed last (RFC 3339).
pub const H_FAILED_AT: &str = "x-warren-failed-at";
/// Header: the exchange it was first published to.
pub const H_ORIGINAL_EXCHANGE: &str = "x-warren-original-exchange";
/// Header: the routing key it was first published with.
pub const H_ORIGINAL_ROUTING_KEY: &str = "x-warren-original-routing-key";
/// Header on parked messages: `exhausted`, `invalid` or `undecodable`.
pub const H_REASON: &str = "x-warren-reason";
/// Header on parked messages: the queue they were parked from.
pub const H_QUEUE: &str = "x-warren-queue";
/// Header RabbitMQ writes when it dead-letters a message (a delay tier's TTL expiry).
pub const H_X_DEATH: &str = "x-death";
/// Header on replayed messages: when they were replayed.
pub const H_REPLAYED_AT: &str = "x-warren-replayed-at";
/// Header quorum queues add on redelivery; not carried over into a replayed message.
pub const H_DELIVERY_COUNT: &str = "x-delivery-count";

// CloudEvents headers (the RabbitMQ protocol binding's binary mode; `broker::cloudevent`).

/// Prefix of every CloudEvents attribute header, extensions included.
pub const CE_PREFIX: &str = "ce-";
/// Header: CloudEvents `specversion` (`1.0`).
pub const H_CE_SPECVERSION: &str = "ce-specversion";
/// Header: CloudEvents `id`.
pub const H_CE_ID: &str = "ce-id";
/// Header: CloudEvents `source`.
pub const H_CE_SOURCE: &str = "ce-source";
/// Header: CloudEvents `type`.
pub const H_CE_TYPE: &str = "ce-type";
/// Header: CloudEvents `time` (RFC 3339).
pub const H_CE_TIME: &str = "ce-time";
/// Header: CloudEvents `subject`.
pub const H_CE_SUBJECT: &str = "ce-subject";
/// Header: CloudEvents `dataschema`.
pub const H_CE_DATASCHEMA: &str = "ce-dataschema";

/// Reads a string header from AMQP properties.
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Reads an integer header from AMQP properties.
pub fn header_int(props: &BasicProperties, key: &str) -> Option<i64> {
    let headers = props.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// An AMQP field value as JSON (for showing headers: byte strings as lossy UTF-8, values
/// JSON cannot hold as their debug form).
pub fn amqp_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        AMQPValue::Boolean(b) => J::Bool(*b),
        AMQPValue::ShortShortInt(n) => J::from(*n),
        AMQPValue::ShortShortUInt(n) => J::from(*n),
        AMQPValue::ShortInt(n) => J::from(*n),
        AMQPValue::ShortUInt(n) => J::from(*n),
        AMQPValue::LongInt(n) => J::from(*n),
        AMQPValue::LongUInt(n) => J::from(*n),
        AMQPValue::LongLongInt(n) => J::from(*n),
        AMQPValue::Float(f) => J::from(f64::from(*f)),
        AMQPValue::Double(f) => J::from(*f),
        AMQPValue::ShortString(t) => J::String(t.as_str().to_owned()),
        AMQPValue::LongString(t) => J::String(String::from_utf8_lossy(t.as_bytes()).into_owned()),
        AMQPValue::ByteArray(b) => J::String(String::from_utf8_lossy(b.as_slice()).into_owned()),
        AMQPValue::Timestamp(t) => J::from(*t),
        AMQPValue::FieldArray(a) => J::Array(a.as_slice().iter().map(amqp_json).collect()),
        AMQPValue::FieldTable(t) => J::Object(
            t.inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), amqp_json(v)))
                .collect(),
        ),
        other => J::String(format!("{other:?}")),
    }
}
