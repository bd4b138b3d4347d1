//! The message envelope (SPEC section 4): the domain-event body and the AMQP properties and
//! headers every warren message carries, and [`Outgoing`], the one builder of a message
//! warren publishes (an event with its metadata, the ids it carries on from its cause).

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::names::{H_ATTEMPT, H_REQUEST_ID, H_TRACEPARENT};

/// `app_id` on every message warren publishes.
pub const APP_ID: &str = "warren";
/// Version of the event body format.
pub const EVENT_VERSION: &str = "1.0";

/// The article's domain event, as JSON on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// UUID v7; also the AMQP `message_id`.
    pub event_id: Uuid,
    /// `segment.segment`, also the routing key and the AMQP `type`.
    pub event_name: String,
    /// The entity the event is about, when there is one.
    #[serde(default)]
    pub aggregate_id: Option<String>,
    /// When the event happened.
    pub occurred_on: DateTime<Utc>,
    /// Body format version, `1.0`.
    #[serde(default = "default_version")]
    pub version: String,
    /// The event's payload. When [`CloudEventAttributes::datacontenttype`] names a media type
    /// that is not JSON, this is a JSON string holding the payload: its text, or its bytes in
    /// standard base64 when [`CloudEventAttributes::data_base64`] is set.
    pub data: serde_json::Value,
    /// The CloudEvents attributes of an event that came from outside warren as a CloudEvent
    /// (`POST /v1/events` in a CloudEvents content mode, or a foreign message in the RabbitMQ
    /// binding), kept so that they travel on; absent for warren's own events, whose
    /// CloudEvents `id` is `event_id` and whose `source` is warren's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudevent: Option<CloudEventAttributes>,
}

/// A foreign CloudEvent's own attributes (CloudEvents 1.0), beside the ones warren's envelope
/// already holds (`type` = `event_name`, `time` = `occurred_on`, `subject` = `aggregate_id`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CloudEventAttributes {
    /// The sender's `id` (with `source`, the event's identity; `event_id` is derived from both).
    pub id: String,
    /// The sender's `source` (a URI-reference).
    pub source: String,
    /// `datacontenttype`, when the sender gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// `dataschema`, when the sender gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// `data` holds base64 of bytes that are not UTF-8 text.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub data_base64: bool,
    /// Extension attributes by name (lower-case `a-z0-9`), their values as the sender gave
    /// them (string, integer or boolean).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub extensions: std::collections::BTreeMap<String, serde_json::Value>,
}

/// The namespace of [`cloudevent_event_id`]'s UUID v5 ids.
const CLOUDEVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1c_43e2_9b0d_4f7e_8c55_2d3e_7f90_a1b4);

/// warren's `event_id` (and AMQP `message_id`) for a CloudEvent that came from outside with
/// `source` and `id`: a UUID v5 of both, so the same CloudEvent sent twice, over HTTP or over
/// AMQP, is the same message everywhere downstream and every inbox drops the repeat.
pub fn cloudevent_event_id(source: &str, id: &str) -> Uuid {
    let mut name = Vec::with_capacity(source.len() + id.len() + 1);
    name.extend_from_slice(source.as_bytes());
    // A byte no URI-reference holds, so ("a/b", "c") and ("a", "/bc") stay apart.
    name.push(0);
    name.extend_from_slice(id.as_bytes());
    Uuid::new_v5(&CLOUDEVENT_ID_NAMESPACE, &name)
}

fn default_version() -> String {
    EVENT_VERSION.to_owned()
}

impl Event {
    /// A new event with a fresh UUID v7 id, occurring now.
    pub fn new(
        name: impl Into<String>,
        aggregate_id: Option<String>,
        data: serde_json::Value,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_name: name.into(),
            aggregate_id,
            occurred_on: Utc::now(),
            version: EVENT_VERSION.to_owned(),
            data,
            cloudevent: None,
        }
    }

    /// The JSON body (UTF-8, non-ASCII characters unescaped as in the article).
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing this struct cannot fail: every field is plain data with string keys.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// `occurred_on` as RFC 3339.
    pub fn occurred_on_rfc3339(&self) -> String {
        self.occurred_on
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }
}

/// The envelope's metadata: AMQP properties and warren's headers.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// `message_id`, kept across retries.
    pub message_id: Uuid,
    /// `type`: the event or command name.
    pub kind: String,
    /// `correlation_id`: saga id or request id.
    pub correlation_id: Option<String>,
    /// `traceparent` header.
    pub traceparent: Option<String>,
    /// `x-request-id` header.
    pub request_id: Option<String>,
    /// `x-warren-attempt`, 1-based.
    pub attempt: u32,
    /// `timestamp` (seconds since the epoch).
    pub timestamp: DateTime<Utc>,
}

impl Meta {
    /// Metadata for publishing `event` for the first time.
    pub fn for_event(event: &Event) -> Self {
        Self {
            message_id: event.event_id,
            kind: event.event_name.clone(),
            correlation_id: None,
            traceparent: None,
            request_id: None,
            attempt: 1,
            timestamp: event.occurred_on,
        }
    }

    /// The AMQP properties: persistent JSON with id, type, timestamp and headers.
    pub fn properties(&self) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(
            H_ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        if let Some(tp) = &self.traceparent {
            headers.insert(
                H_TRACEPARENT.into(),
                AMQPValue::LongString(LongString::from(tp.as_str())),
            );
        }
        if let Some(rid) = &self.request_id {
            headers.insert(
                H_REQUEST_ID.into(),
                AMQPValue::LongString(LongString::from(rid.as_str())),
            );
        }
        let mut props = BasicProperties::default()
            .with_message_id(ShortString::from(self.message_id.to_string()))
            .with_type(short(&self.kind))
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(self.timestamp.timestamp()).unwrap_or_default())
            .with_app_id(APP_ID.into())
            .with_headers(headers);
        if let Some(c) = &self.correlation_id {
            props = props.with_correlation_id(short(c));
        }
        props
    }
}

/// The trace and request ids a message carries on from the one that caused it (a job's
/// delivery; the runtime implements this for `jobs::Job`).
pub trait Cause {
    /// The cause's `traceparent`.
    fn traceparent(&self) -> Option<&str>;
    /// The cause's `x-request-id`.
    fn request_id(&self) -> Option<&str>;
    /// The cause's `correlation_id`.
    fn correlation_id(&self) -> Option<&str>;
}

/// A message to publish: the event body and its envelope, built in one place.
///
/// `Outgoing::event("job.failed", aggregate, data).caused_by(&job)` or
/// `.for_request(request_id, traceparent)`; the routing key is the event name unless the
/// publisher is told another.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The body.
    pub event: Event,
    /// The properties and headers.
    pub meta: Meta,
}

impl Outgoing {
    /// A new event (fresh UUID v7 id, occurring now) with first-publish metadata.
    pub fn event(
        name: impl Into<String>,
        aggregate_id: Option<String>,
        data: serde_json::Value,
    ) -> Self {
        Self::from_event(Event::new(name, aggregate_id, data))
    }

    /// `event` with first-publish metadata (`message_id` = its id).
    pub fn from_event(event: Event) -> Self {
        let meta = Meta::for_event(&event);
        Self { event, meta }
    }

    /// Sets the event id and the `message_id` (a derived id makes a republish the same message).
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.event.event_id = id;
        self.meta.message_id = id;
        self
    }

    /// Sets when the event happened (the body's `occurred_on` and the AMQP `timestamp`).
    pub fn occurred_on(mut self, at: DateTime<Utc>) -> Self {
        self.event.occurred_on = at;
        self.meta.timestamp = at;
        self
    }

    /// Carries on the trace, request and correlation ids of `cause`.
    pub fn caused_by(mut self, cause: &impl Cause) -> Self {
        self.meta.traceparent = cause.traceparent().map(str::to_owned);
        self.meta.request_id = cause.request_id().map(str::to_owned);
        self.meta.correlation_id = cause.correlation_id().map(str::to_owned);
        self
    }

    /// Carries the HTTP request's id and trace context.
    pub fn for_request(mut self, request_id: Option<String>, traceparent: Option<String>) -> Self {
        self.meta.request_id = request_id;
        self.meta.traceparent = traceparent;
        self
    }

    /// Sets the `traceparent` header.
    pub fn traceparent(mut self, traceparent: Option<String>) -> Self {
        self.meta.traceparent = traceparent;
        self
    }

    /// Sets the `correlation_id` (a saga id, a schedule).
    pub fn correlated(mut self, correlation_id: impl Into<String>) -> Self {
        self.meta.correlation_id = Some(correlation_id.into());
        self
    }

    /// The JSON body.
    pub fn body(&self) -> Vec<u8> {
        self.event.to_json()
    }

    /// The routing key when none other is given: the event name.
    pub fn routing_key(&self) -> &str {
        &self.event.event_name
    }
}

/// An AMQP short string: at most 255 bytes (cut at a character boundary), since building a
/// longer one panics.
fn short(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::names::{header_int, header_str};
    use serde_json::json;

    #[test]
    fn event_round_trips_with_unescaped_unicode() {
        let e = Event::new(
            "user.registered",
            Some("u-1".into()),
            json!({"name": "张三"}),
        );
        let bytes = e.to_json();
        assert!(String::from_utf8_lossy(&bytes).contains("张三"));
        let back: Event = serde_json::from_slice(&bytes).expect("parses");
        assert_eq!(back, e);
        assert_eq!(e.event_id.get_version_num(), 7);
    }

    #[test]
    fn a_cloudevent_has_one_event_id_for_its_source_and_id() {
        let a = cloudevent_event_id("/shop", "o-1");
        assert_eq!(a, cloudevent_event_id("/shop", "o-1"));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(a, cloudevent_event_id("/shop", "o-2"));
        assert_ne!(a, cloudevent_event_id("/shop2", "o-1"));
        assert_ne!(
            cloudevent_event_id("a/b", "c"),
            cloudevent_event_id("a", "/bc")
        );
    }

    #[test]
    fn foreign_body_without_version_is_accepted() {
        let body = json!({"event_id": Uuid::now_v7(), "event_name": "order.created", "occurred_on": "2026-11-27T10:00:00Z", "data": {}});
        let e: Event = serde_json::from_value(body).expect("parses");
        assert_eq!(e.version, "1.0");
        assert_eq!(e.aggregate_id, None);
    }

    #[test]
    fn numbers_in_data_survive_the_round_trip_exactly() {
        // The http_request fuzz target's find: parsed without serde_json's float_roundtrip,
        // this number came back 1 ULP off.
        let body = br#"{"event_id": "0193a8a0-0000-7000-8000-000000000001", "event_name": "a.b", "occurred_on": "2026-11-27T10:00:00Z", "data": {"id": 4444444444444442444444444441, "f": 4.444444444444424e32}}"#;
        let e: Event = serde_json::from_slice(body).expect("parses");
        let back: Event = serde_json::from_slice(&e.to_json()).expect("re-parses");
        assert_eq!(back, e);
    }

    #[test]
    fn over_long_names_and_correlation_ids_are_cut_not_a_panic() {
        let props_of = |name: String, correlation: Option<String>| {
            let e = Event::new(name, None, json!({}));
            let mut m = Meta::for_event(&e);
            m.correlation_id = correlation;
            let p = m.properties();
            (
                p.kind().as_ref().map(|k| k.as_str().to_owned()),
                p.correlation_id().as_ref().map(|c| c.as_str().to_owned()),
            )
        };
        // 300 two-byte characters: cut to the last whole character within 255 bytes (127 of
        // them, 254 bytes), not in the middle of the 128th.
        let (kind, correlation) = props_of("ä".repeat(300), Some("c".repeat(1000)));
        assert_eq!(kind.as_deref(), Some("ä".repeat(127).as_str()));
        assert_eq!(correlation.as_deref(), Some("c".repeat(255).as_str()));
        // Three-byte characters: 85 of them fill exactly 255 bytes.
        let (kind, _) = props_of("€".repeat(100), None);
        assert_eq!(kind.as_deref(), Some("€".repeat(85).as_str()));
        // At the limit nothing is cut; under it the name is kept as it is.
        let at_limit = format!("a.{}", "b".repeat(253));
        assert_eq!(props_of(at_limit.clone(), None).0, Some(at_limit));
        assert_eq!(
            props_of("order.created".into(), None),
            (Some("order.created".to_owned()), None)
        );
    }

    struct Delivered;

    impl Cause for Delivered {
        fn traceparent(&self) -> Option<&str> {
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        }
        fn request_id(&self) -> Option<&str> {
            Some("req-7")
        }
        fn correlation_id(&self) -> Option<&str> {
            None
        }
    }

    #[test]
    fn outgoing_keeps_the_body_and_the_envelope_in_step() {
        let id = Uuid::now_v7();
        let out = Outgoing::event("job.failed", Some("a-1".into()), json!({"x": 1}))
            .with_id(id)
            .caused_by(&Delivered)
            .correlated("saga-1");
        assert_eq!(out.event.event_id, id);
        assert_eq!(out.meta.message_id, id);
        assert_eq!(out.meta.kind, "job.failed");
        assert_eq!(out.routing_key(), "job.failed");
        assert_eq!(out.meta.request_id.as_deref(), Some("req-7"));
        assert_eq!(out.meta.correlation_id.as_deref(), Some("saga-1"));
        assert_eq!(out.meta.timestamp, out.event.occurred_on);
        let p = out.meta.properties();
        assert_eq!(
            header_str(&p, H_TRACEPARENT).as_deref(),
            Delivered.traceparent()
        );
    }

    #[test]
    fn properties_carry_the_envelope() {
        let e = Event::new("order.created", None, json!({}));
        let mut m = Meta::for_event(&e);
        m.request_id = Some("req-1".into());
        m.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let p = m.properties();
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str().to_owned()),
            Some(e.event_id.to_string())
        );
        assert_eq!(header_str(&p, H_REQUEST_ID).as_deref(), Some("req-1"));
        assert_eq!(header_int(&p, H_ATTEMPT), Some(1));
    }
}
