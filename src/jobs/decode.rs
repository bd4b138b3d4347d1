//! Turning a delivery (body bytes, AMQP properties, the exchange and routing key it came
//! through) into a [`Job`]: pure, no broker, so it is unit-tested, property-checked and fuzzed
//! (`fuzz/`, `docs/fuzzing.md`) on its own. The runner calls it for every message.
//!
//! # Which headers are believed
//!
//! Any client with write access to the vhost can publish with any headers, so warren's own
//! headers on a delivery are evidence, not fact:
//!
//! - `x-warren-attempt` and `x-warren-original-exchange` / `-routing-key` are read only from a
//!   delivery that came through `warren.requeue` (the way back from a delay tier, and a
//!   dead-letter replay), the one path on which warren itself sets them. On a message
//!   published anywhere else they are ignored: the attempt is 1, and the origin is the
//!   exchange and routing key the message really came through. A forged attempt of 999 on
//!   `warren.events` therefore does not skip the retries.
//! - A believed attempt that is not an integer of at least 1 counts as 1; one above the
//!   module's `max_attempts` (a limit lowered since it was set, or a forged header on the
//!   requeue exchange) counts as the last attempt: the message is handled once more and, if
//!   it fails, parked.
//! - `traceparent` is kept only when it parses as W3C trace context; `x-request-id` only when it
//!   is 1 to 128 visible ASCII bytes (as the HTTP front accepts it). Anything else is dropped,
//!   so a foreign 100 KiB header never reaches spans, logs or the alert event.
//! - `message_id` is used when it is a UUID; otherwise the body's `event_id` is the id (the
//!   inbox keys on it).
//! - Other headers (a forged `x-warren-reason`) are carried along untouched and never read; the
//!   runner overwrites warren's failure headers when it retries or parks.
//! - `x-death` is never read, but RabbitMQ reads it when it dead-letters a message (a delay
//!   tier's TTL expiry): RabbitMQ 3.10's at-least-once dead-letter worker crashes on an
//!   `x-death` array holding anything but tables with an integer `count`, and the message then
//!   stays in the tier for good. So the runner drops an `x-death` that is not
//!   [well formed](x_death_is_well_formed) before it republishes a message.

use lapin::{BasicProperties, types::AMQPValue};
use uuid::Uuid;

use super::Job;
use crate::{
    broker::{
        cloudevent::{self, ForeignError},
        envelope::Event,
        names::{
            H_ATTEMPT, H_ORIGINAL_EXCHANGE, H_ORIGINAL_ROUTING_KEY, H_REQUEST_ID, H_TRACEPARENT,
            REQUEUE_EXCHANGE, header_int, header_str,
        },
    },
    telemetry::trace::TraceParent,
};

/// Longest `x-request-id` taken from a message (the HTTP front's limit).
pub const MAX_REQUEST_ID: usize = 128;

/// One delivery as the decoder sees it.
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    /// The message body.
    pub body: &'a [u8],
    /// Its AMQP properties, headers included.
    pub properties: &'a BasicProperties,
    /// The exchange it came through.
    pub exchange: &'a str,
    /// The routing key it came with.
    pub routing_key: &'a str,
}

/// A delivery that is not a warren message.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct DecodeError {
    /// The attempt the delivery counts as (recorded when it is parked).
    pub attempt: u32,
    /// Why it did not decode.
    #[source]
    pub source: Undecodable,
}

/// Why a delivery did not decode.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    /// A message without `ce-specversion` whose body is not warren's envelope.
    #[error("undecodable message body: {0}")]
    Body(#[source] serde_json::Error),
    /// A foreign CloudEvent (RabbitMQ binding, binary mode) that breaks the binding's rules.
    #[error("undecodable CloudEvent: {0}")]
    CloudEvent(#[source] ForeignError),
}

impl Delivered<'_> {
    /// Whether warren's retry headers on this delivery are believed: it came through
    /// `warren.requeue`.
    pub fn trusted(&self) -> bool {
        self.exchange == REQUEUE_EXCHANGE
    }

    /// The attempt this delivery counts as, 1 to `max_attempts` (see the module docs).
    pub fn attempt(&self, max_attempts: u32) -> u32 {
        if !self.trusted() {
            return 1;
        }
        let max = max_attempts.max(1);
        match header_int(self.properties, H_ATTEMPT) {
            Some(a) if a >= 1 => u32::try_from(a).map_or(max, |a| a.min(max)),
            _ => 1,
        }
    }

    /// The exchange and routing key the message was first published with.
    pub fn origin(&self) -> (String, String) {
        let believed = |key| {
            self.trusted()
                .then(|| header_str(self.properties, key))
                .flatten()
        };
        (
            believed(H_ORIGINAL_EXCHANGE).unwrap_or_else(|| self.exchange.to_owned()),
            believed(H_ORIGINAL_ROUTING_KEY).unwrap_or_else(|| self.routing_key.to_owned()),
        )
    }

    /// The `traceparent` header, when it is valid W3C trace context.
    pub fn traceparent(&self) -> Option<String> {
        header_str(self.properties, H_TRACEPARENT).filter(|t| TraceParent::parse(t).is_some())
    }

    /// The `x-request-id` header, when it is 1 to 128 visible ASCII bytes.
    pub fn request_id(&self) -> Option<String> {
        header_str(self.properties, H_REQUEST_ID).filter(|r| valid_request_id(r))
    }
}

/// Whether `s` is acceptable as a request id: 1 to [`MAX_REQUEST_ID`] visible ASCII bytes.
pub fn valid_request_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_REQUEST_ID && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether an `x-death` header value has the shape RabbitMQ writes: an array of tables, each
/// with `queue` and `reason` strings and an integer `count`.
pub fn x_death_is_well_formed(value: &AMQPValue) -> bool {
    let AMQPValue::FieldArray(entries) = value else {
        return false;
    };
    entries.as_slice().iter().all(|entry| {
        let AMQPValue::FieldTable(t) = entry else {
            return false;
        };
        let t = t.inner();
        let string = |k: &str| {
            matches!(
                t.get(k),
                Some(AMQPValue::LongString(_) | AMQPValue::ShortString(_))
            )
        };
        let count = matches!(
            t.get("count"),
            Some(
                AMQPValue::LongLongInt(_)
                    | AMQPValue::LongInt(_)
                    | AMQPValue::LongUInt(_)
                    | AMQPValue::ShortInt(_)
                    | AMQPValue::ShortUInt(_)
                    | AMQPValue::ShortShortInt(_)
                    | AMQPValue::ShortShortUInt(_)
            )
        );
        string("queue") && string("reason") && count
    })
}

/// Decodes a delivery consumed from `queue` into the [`Job`] a handler sees.
pub fn decode(d: &Delivered<'_>, queue: &str, max_attempts: u32) -> Result<Job, DecodeError> {
    let attempt = d.attempt(max_attempts);
    let own = serde_json::from_slice::<Event>(d.body);
    let (event, message_id) = match own {
        // A message in the CloudEvents binding whose body is not warren's envelope for its
        // ce-id: a foreign CloudEvent, whose body is its data. Its id is derived from its
        // source and id, whatever message_id it came with, so a repeat is the same message.
        Ok(ref e)
            if cloudevent::is_cloudevent(d.properties) && !cloudevent::is_own(e, d.properties) =>
        {
            foreign(d, attempt)?
        }
        Err(_) if cloudevent::is_cloudevent(d.properties) => foreign(d, attempt)?,
        Ok(event) => {
            let message_id = d
                .properties
                .message_id()
                .as_ref()
                .and_then(|m| m.as_str().parse::<Uuid>().ok())
                .unwrap_or(event.event_id);
            (event, message_id)
        }
        Err(e) => {
            return Err(DecodeError {
                attempt,
                source: Undecodable::Body(e),
            });
        }
    };
    let (exchange, routing_key) = d.origin();
    Ok(Job {
        exchange,
        routing_key,
        event,
        message_id,
        attempt,
        max_attempts,
        queue: queue.to_owned(),
        correlation_id: d
            .properties
            .correlation_id()
            .as_ref()
            .map(|c| c.as_str().to_owned()),
        traceparent: d.traceparent(),
        request_id: d.request_id(),
    })
}

/// The event and message id of a foreign CloudEvent message.
fn foreign(d: &Delivered<'_>, attempt: u32) -> Result<(Event, Uuid), DecodeError> {
    let event =
        cloudevent::foreign_event(d.properties, d.body, chrono::Utc::now()).map_err(|e| {
            DecodeError {
                attempt,
                source: Undecodable::CloudEvent(e),
            }
        })?;
    let id = event.event_id;
    Ok((event, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::envelope::Meta;
    use lapin::types::{FieldArray, FieldTable, LongString};
    use serde_json::json;

    fn with_headers(pairs: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in pairs {
            h.insert((*k).into(), v.clone());
        }
        BasicProperties::default().with_headers(h)
    }

    fn delivered<'a>(
        body: &'a [u8],
        props: &'a BasicProperties,
        exchange: &'a str,
    ) -> Delivered<'a> {
        Delivered {
            body,
            properties: props,
            exchange,
            routing_key: "order.created",
        }
    }

    #[test]
    fn a_forged_attempt_on_a_first_delivery_counts_as_attempt_one() {
        for forged in [
            AMQPValue::LongLongInt(999),
            AMQPValue::LongLongInt(3),
            AMQPValue::LongLongInt(-5),
            AMQPValue::LongString(LongString::from("3")),
            AMQPValue::Boolean(true),
        ] {
            let p = with_headers(&[(H_ATTEMPT, forged.clone())]);
            for exchange in ["warren.events", "warren.commands", "", "amq.direct"] {
                assert_eq!(
                    delivered(b"{}", &p, exchange).attempt(3),
                    1,
                    "{forged:?} via {exchange:?}"
                );
            }
        }
    }

    #[test]
    fn an_attempt_from_the_requeue_exchange_is_believed_within_one_to_max() {
        let cases = [
            (AMQPValue::LongLongInt(2), 2),
            (AMQPValue::LongInt(3), 3),
            (AMQPValue::LongLongInt(999), 3),
            (AMQPValue::LongLongInt(i64::MAX), 3),
            (AMQPValue::LongLongInt(0), 1),
            (AMQPValue::LongLongInt(-1), 1),
            (AMQPValue::LongString(LongString::from("2")), 1),
        ];
        for (value, want) in cases {
            let p = with_headers(&[(H_ATTEMPT, value.clone())]);
            assert_eq!(
                delivered(b"{}", &p, REQUEUE_EXCHANGE).attempt(3),
                want,
                "{value:?}"
            );
        }
        assert_eq!(
            delivered(b"{}", &BasicProperties::default(), REQUEUE_EXCHANGE).attempt(0),
            1,
            "a zero limit still allows one attempt"
        );
    }

    #[test]
    fn a_forged_origin_is_ignored_unless_the_message_came_back_through_requeue() {
        let p = with_headers(&[
            (H_ORIGINAL_EXCHANGE, AMQPValue::LongString("x".into())),
            (
                H_ORIGINAL_ROUTING_KEY,
                AMQPValue::LongString("admin.delete_everything".into()),
            ),
        ]);
        assert_eq!(
            delivered(b"{}", &p, "warren.events").origin(),
            ("warren.events".to_owned(), "order.created".to_owned())
        );
        assert_eq!(
            delivered(b"{}", &p, REQUEUE_EXCHANGE).origin(),
            ("x".to_owned(), "admin.delete_everything".to_owned())
        );
    }

    #[test]
    fn a_warren_message_decodes_to_the_job_it_was_made_from() {
        let event = Event::new("order.created", Some("o-1".into()), json!({"n": 1}));
        let mut meta = Meta::for_event(&event);
        meta.correlation_id = Some("corr".into());
        meta.request_id = Some("req-1".into());
        meta.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let props = meta.properties();
        let body = event.to_json();
        let job = decode(
            &delivered(&body, &props, "warren.events"),
            "warren.audit",
            3,
        )
        .expect("decodes");
        assert_eq!(job.event, event);
        assert_eq!(job.message_id, event.event_id);
        assert_eq!(job.attempt, 1);
        assert_eq!(job.routing_key, "order.created");
        assert_eq!(job.correlation_id.as_deref(), Some("corr"));
        assert_eq!(job.request_id.as_deref(), Some("req-1"));
        assert_eq!(job.traceparent, meta.traceparent);
        assert_eq!(job.queue, "warren.audit");
    }

    #[test]
    fn garbage_ids_and_trace_headers_fall_back_or_are_dropped() {
        let event = Event::new("order.created", None, json!({}));
        let props = with_headers(&[
            (H_TRACEPARENT, AMQPValue::LongString("not-a-trace".into())),
            (
                H_REQUEST_ID,
                AMQPValue::LongString("x".repeat(100_000).as_str().into()),
            ),
        ])
        .with_message_id("not-a-uuid".into());
        let body = event.to_json();
        let job = decode(&delivered(&body, &props, "warren.events"), "q", 3).expect("decodes");
        assert_eq!(job.message_id, event.event_id, "the body's id stands in");
        assert_eq!(job.traceparent, None);
        assert_eq!(job.request_id, None);
    }

    #[test]
    fn a_body_that_is_not_an_event_is_a_decode_error_with_its_attempt() {
        let p = with_headers(&[(H_ATTEMPT, AMQPValue::LongLongInt(2))]);
        for body in [
            &b"<xml/>"[..],
            b"",
            b"\xff\xfe",
            b"{\"event_name\": \"x\"}",
            b"[1]",
        ] {
            let e = decode(&delivered(body, &p, REQUEUE_EXCHANGE), "q", 3).expect_err("refused");
            assert_eq!(e.attempt, 2);
            assert!(
                e.to_string().starts_with("undecodable message body: "),
                "{e}"
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(&delivered(deep.as_bytes(), &p, "warren.events"), "q", 3).is_err());
    }

    fn ce(headers: &[(&str, &str)], content_type: Option<&str>) -> BasicProperties {
        let pairs: Vec<(&str, AMQPValue)> = headers
            .iter()
            .map(|(k, v)| (*k, AMQPValue::LongString((*v).into())))
            .collect();
        let p = with_headers(&pairs);
        match content_type {
            Some(ct) => p.with_content_type(ct.into()),
            None => p,
        }
    }

    const FOREIGN: [(&str, &str); 5] = [
        ("ce-specversion", "1.0"),
        ("ce-id", "o-1"),
        ("ce-source", "/shop"),
        ("ce-type", "com.example.order.created"),
        ("ce-tenant", "acme"),
    ];

    #[test]
    fn warrens_own_cloudevent_decodes_as_its_envelope() {
        let event = Event::new("order.created", Some("o-1".into()), json!({"n": 1}));
        let meta = Meta::for_event(&event);
        let attrs = cloudevent::Attributes::of(
            &event,
            || event.event_id.to_string(),
            || cloudevent::source("/", "warren.events"),
        );
        let props = cloudevent::with_headers(meta.properties(), &attrs);
        let body = event.to_json();
        let job = decode(&delivered(&body, &props, "warren.events"), "q", 3).expect("decodes");
        assert_eq!(
            job.event, event,
            "the envelope, not a CloudEvent whose data it is"
        );
        assert_eq!(job.message_id, event.event_id);
    }

    #[test]
    fn a_foreign_json_cloudevent_decodes_with_its_derived_id_whatever_its_message_id() {
        let props = ce(&FOREIGN, Some("application/json"))
            .with_message_id(Uuid::now_v7().to_string().as_str().into());
        // A body that even parses as an envelope, but for another id, is the event's data.
        let envelope = Event::new("x.y", None, json!({})).to_json();
        for body in [&br#"{"n": 1}"#[..], &envelope] {
            let job = decode(&delivered(body, &props, "warren.events"), "q", 3).expect("decodes");
            let id = crate::broker::envelope::cloudevent_event_id("/shop", "o-1");
            assert_eq!((job.event.event_id, job.message_id), (id, id));
            assert_eq!(job.event.event_name, "com.example.order.created");
            assert_eq!(
                job.event.data,
                serde_json::from_slice::<serde_json::Value>(body).expect("json")
            );
            let attrs = job.event.cloudevent.expect("kept");
            assert_eq!(attrs.extensions.get("tenant"), Some(&json!("acme")));
        }
    }

    #[test]
    fn foreign_text_and_bytes_decode_as_a_string_and_as_base64() {
        let props = ce(&FOREIGN, Some("text/plain; charset=utf-8"));
        let job = decode(&delivered(b"hello", &props, "warren.events"), "q", 3).expect("text");
        assert_eq!(job.event.data, json!("hello"));
        let props = ce(&FOREIGN, Some("application/octet-stream"));
        let job =
            decode(&delivered(&[0x89, 0x50], &props, "warren.events"), "q", 3).expect("bytes");
        assert_eq!(job.event.data, json!("iVA="));
        assert!(job.event.cloudevent.expect("kept").data_base64);
    }

    #[test]
    fn a_foreign_cloudevent_without_ce_id_is_undecodable_with_the_reason() {
        let props = ce(&FOREIGN[..1], None);
        let e = decode(&delivered(b"{}", &props, "warren.events"), "q", 3).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "undecodable CloudEvent: required attribute ce-id is missing or empty"
        );
        assert_eq!(e.attempt, 1);
        // Not a loop: the runner parks an undecodable message (runner.rs `admit`).
    }

    #[test]
    fn only_an_x_death_of_the_shape_rabbitmq_writes_is_well_formed() {
        let entry = |count: AMQPValue| {
            let mut t = FieldTable::default();
            t.insert(
                "queue".into(),
                AMQPValue::LongString("warren.retry.60s".into()),
            );
            t.insert("reason".into(), AMQPValue::LongString("expired".into()));
            t.insert("count".into(), count);
            AMQPValue::FieldTable(t)
        };
        let array = |v: Vec<AMQPValue>| AMQPValue::FieldArray(FieldArray::from(v));
        assert!(x_death_is_well_formed(&array(vec![])));
        assert!(x_death_is_well_formed(&array(vec![
            entry(AMQPValue::LongLongInt(2)),
            entry(AMQPValue::LongInt(1)),
        ])));
        for bad in [
            AMQPValue::LongString("garbage".into()),
            AMQPValue::LongLongInt(5),
            array(vec![AMQPValue::LongString("not a table".into())]),
            array(vec![entry(AMQPValue::LongString("many".into()))]),
            array(vec![AMQPValue::FieldTable(FieldTable::default())]),
        ] {
            assert!(!x_death_is_well_formed(&bad), "{bad:?}");
        }
    }
}
