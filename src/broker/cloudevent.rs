//! CloudEvents on the wire: the binary content mode of the RabbitMQ protocol binding for
//! CloudEvents (knative-extensions/eventing-rabbitmq, `cloudevents-protocol-spec/spec.md`),
//! both ways.
//!
//! - Out: [`Attributes::of`] names the CloudEvent a warren message is (its data is warren's
//!   whole envelope, the body as it always was) and [`with_headers`] writes it as `ce-*`
//!   headers beside warren's own; `content_type` (the `datacontenttype`) is the envelope's
//!   `application/json`. Every value is a string, as the binding and the CloudEvents SDKs
//!   write them.
//! - In: [`foreign_event`] turns a message a foreign client published in the binding (its
//!   body is the event's data, not warren's envelope) into warren's [`Event`].
//!
//! The decision and the mapping table: docs/architecture.md, "CloudEvents on the wire".

use std::collections::BTreeMap;

use base64::Engine;
use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use serde_json::Value;
use uuid::Uuid;

use super::envelope::{CloudEventAttributes, EVENT_VERSION, Event, cloudevent_event_id};
use super::names::{
    CE_PREFIX, H_CE_DATASCHEMA, H_CE_ID, H_CE_SOURCE, H_CE_SPECVERSION, H_CE_SUBJECT, H_CE_TIME,
    H_CE_TYPE, header_str,
};

/// The CloudEvents version warren speaks.
pub const SPECVERSION: &str = "1.0";

/// Attribute names that are not extensions (never written or read as `ce-<extension>`).
const CORE: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataschema",
    "datacontenttype",
];

/// The `source` of warren's own events published on `exchange` of `vhost`:
/// `/warren/<vhost>/<exchange>`, the vhost percent-encoded as one path segment (the default
/// vhost `/` is `%2F`). HTTP subscription deliveries use the same, so one event has one
/// identity over HTTP and AMQP.
pub fn source(vhost: &str, exchange: &str) -> String {
    let segment: String =
        percent_encoding::utf8_percent_encode(vhost, percent_encoding::NON_ALPHANUMERIC).collect();
    format!("/warren/{segment}/{exchange}")
}

/// The CloudEvents attributes of one warren message.
#[derive(Debug, Clone, PartialEq)]
pub struct Attributes {
    /// `id`.
    pub id: String,
    /// `source`.
    pub source: String,
    /// `type`.
    pub kind: String,
    /// `time`, RFC 3339.
    pub time: String,
    /// `subject`.
    pub subject: Option<String>,
    /// `dataschema`.
    pub dataschema: Option<String>,
    /// Extension attributes by name.
    pub extensions: BTreeMap<String, Value>,
}

impl Attributes {
    /// The attributes of `event`: for warren's own, `id` = `own_id` and `source` =
    /// `own_source`; for an event that came from outside as a CloudEvent, its own `id`,
    /// `source`, `dataschema` and extensions. `type` = the event name, `time` = when it
    /// happened, `subject` = the aggregate id.
    pub fn of(
        event: &Event,
        own_id: impl FnOnce() -> String,
        own_source: impl FnOnce() -> String,
    ) -> Self {
        let (id, source, dataschema, extensions) = match &event.cloudevent {
            Some(ce) => (
                ce.id.clone(),
                ce.source.clone(),
                ce.dataschema.clone(),
                ce.extensions
                    .iter()
                    .filter(|(name, _)| !CORE.contains(&name.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            None => (own_id(), own_source(), None, BTreeMap::new()),
        };
        Self {
            id,
            source,
            kind: event.event_name.clone(),
            time: event.occurred_on_rfc3339(),
            subject: event.aggregate_id.clone(),
            dataschema,
            extensions,
        }
    }
}

/// An extension value as a header string: a string as it is, a boolean `true`/`false`, an
/// integer in decimal (the CloudEvents type system's canonical strings).
pub fn extension_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `props` with the `ce-*` headers of `attrs` added to its headers (warren's stay as they
/// are). The `content_type` property (`datacontenttype`) is left as it is.
pub fn with_headers(props: BasicProperties, attrs: &Attributes) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    insert_headers(&mut headers, attrs);
    props.with_headers(headers)
}

/// Inserts the `ce-*` headers of `attrs` into `headers`.
pub fn insert_headers(headers: &mut FieldTable, attrs: &Attributes) {
    let mut put = |name: &str, value: &str| {
        headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
    };
    put(H_CE_SPECVERSION, SPECVERSION);
    put(H_CE_ID, &attrs.id);
    put(H_CE_SOURCE, &attrs.source);
    put(H_CE_TYPE, &attrs.kind);
    put(H_CE_TIME, &attrs.time);
    if let Some(subject) = &attrs.subject {
        put(H_CE_SUBJECT, subject);
    }
    if let Some(schema) = &attrs.dataschema {
        put(H_CE_DATASCHEMA, schema);
    }
    for (name, value) in &attrs.extensions {
        put(&format!("{CE_PREFIX}{name}"), &extension_text(value));
    }
}

/// Whether a delivery says it is a CloudEvent in the binding's binary mode (`ce-specversion`).
pub fn is_cloudevent(props: &BasicProperties) -> bool {
    props
        .headers()
        .as_ref()
        .is_some_and(|h| h.inner().contains_key(H_CE_SPECVERSION))
}

/// Whether `event` (a body that parsed as warren's envelope) is the CloudEvent the `ce-id` of
/// `props` names: its `event_id`, or the id of the foreign CloudEvent it carries.
pub fn is_own(event: &Event, props: &BasicProperties) -> bool {
    let Some(id) = header_str(props, H_CE_ID) else {
        return false;
    };
    id.parse::<Uuid>().is_ok_and(|u| u == event.event_id)
        || event.cloudevent.as_ref().is_some_and(|ce| ce.id == id)
}

/// Why a foreign CloudEvent message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForeignError {
    /// A required attribute's header is missing, empty or not a string.
    #[error("required attribute {0} is missing or empty")]
    Missing(&'static str),
    /// `ce-specversion` is not `1.0`.
    #[error("ce-specversion {0:?} is not 1.0")]
    SpecVersion(String),
    /// `ce-time` is not RFC 3339.
    #[error("ce-time {0:?} is not an RFC 3339 timestamp")]
    Time(String),
    /// The content type says JSON but the body is not.
    #[error("the body is not JSON as content_type {content_type:?} says: {error}")]
    Data {
        /// The content type.
        content_type: String,
        /// The parse error.
        error: String,
    },
}

/// Whether `content_type` is JSON: absent, `application/json` or any `+json` type
/// (parameters and case ignored).
pub fn is_json(content_type: Option<&str>) -> bool {
    let Some(ct) = content_type else {
        return true;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence.is_empty() || essence == "application/json" || essence.ends_with("+json")
}

fn required(props: &BasicProperties, header: &'static str) -> Result<String, ForeignError> {
    header_str(props, header)
        .filter(|v| !v.is_empty())
        .ok_or(ForeignError::Missing(header))
}

/// An extension header's value as JSON: strings as strings, integers as numbers, booleans as
/// booleans; anything else (tables, arrays, floats) is not a CloudEvents value and is left out.
fn extension_value(value: &AMQPValue) -> Option<Value> {
    Some(match value {
        AMQPValue::LongString(s) => Value::from(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Value::from(s.as_str()),
        AMQPValue::Boolean(b) => Value::from(*b),
        AMQPValue::LongLongInt(v) => Value::from(*v),
        AMQPValue::LongInt(v) => Value::from(*v),
        AMQPValue::LongUInt(v) => Value::from(*v),
        AMQPValue::ShortInt(v) => Value::from(*v),
        AMQPValue::ShortUInt(v) => Value::from(*v),
        AMQPValue::ShortShortInt(v) => Value::from(*v),
        AMQPValue::ShortShortUInt(v) => Value::from(*v),
        _ => return None,
    })
}

/// Whether `name` is a valid extension attribute name (lower-case `a-z0-9`, 1 to 20).
fn valid_extension_name(name: &str) -> bool {
    (1..=20).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// warren's event for a foreign CloudEvent message: `event_id` =
/// [`cloudevent_event_id`]`(source, id)`, `event_name` = `type`, `aggregate_id` =
/// `subject`, `occurred_on` = `time` (or `now` when absent), `data` = the body parsed as
/// JSON when `content_type` is JSON ([`is_json`]), else its text, else its bytes in base64
/// (`data_base64`); the attributes kept in [`Event::cloudevent`].
pub fn foreign_event(
    props: &BasicProperties,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Event, ForeignError> {
    let specversion = required(props, H_CE_SPECVERSION)?;
    if specversion != SPECVERSION {
        return Err(ForeignError::SpecVersion(specversion));
    }
    let id = required(props, H_CE_ID)?;
    let source = required(props, H_CE_SOURCE)?;
    let kind = required(props, H_CE_TYPE)?;
    let occurred_on = match header_str(props, H_CE_TIME) {
        Some(t) => DateTime::parse_from_rfc3339(&t)
            .map_err(|_| ForeignError::Time(t.clone()))?
            .with_timezone(&Utc),
        None => now,
    };
    let content_type = props.content_type().as_ref().map(|c| c.as_str().to_owned());
    let mut data_base64 = false;
    let data = if is_json(content_type.as_deref()) {
        if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body).map_err(|e| ForeignError::Data {
                content_type: content_type.clone().unwrap_or_default(),
                error: e.to_string(),
            })?
        }
    } else {
        match std::str::from_utf8(body) {
            Ok(text) => Value::from(text),
            Err(_) => {
                data_base64 = true;
                Value::from(base64::engine::general_purpose::STANDARD.encode(body))
            }
        }
    };
    let extensions = props
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter_map(|(k, v)| {
                    let name = k.as_str().to_ascii_lowercase();
                    let name = name.strip_prefix(CE_PREFIX)?.to_owned();
                    (valid_extension_name(&name) && !CORE.contains(&name.as_str()))
                        .then(|| extension_value(v).map(|v| (name, v)))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Event {
        event_id: cloudevent_event_id(&source, &id),
        event_name: kind,
        aggregate_id: header_str(props, H_CE_SUBJECT).filter(|s| !s.is_empty()),
        occurred_on,
        version: EVENT_VERSION.to_owned(),
        data,
        cloudevent: Some(CloudEventAttributes {
            id,
            source,
            datacontenttype: content_type,
            dataschema: header_str(props, H_CE_DATASCHEMA).filter(|s| !s.is_empty()),
            data_base64,
            extensions,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::envelope::Meta;
    use serde_json::json;

    fn headers_of(props: &BasicProperties) -> BTreeMap<String, String> {
        props
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .filter_map(|(k, v)| match v {
                        AMQPValue::LongString(s) => Some((
                            k.as_str().to_owned(),
                            String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        )),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn binary(headers: &[(&str, AMQPValue)], content_type: Option<&str>) -> BasicProperties {
        let mut h = FieldTable::default();
        for (k, v) in headers {
            h.insert((*k).into(), v.clone());
        }
        let p = BasicProperties::default().with_headers(h);
        match content_type {
            Some(ct) => p.with_content_type(ct.into()),
            None => p,
        }
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn warren_events_carry_their_attributes_beside_warrens_headers() {
        let event = Event::new("order.created", Some("o-1".into()), json!({"n": 1}));
        let meta = Meta::for_event(&event);
        let attrs = Attributes::of(
            &event,
            || event.event_id.to_string(),
            || source("/", "warren.events"),
        );
        let props = with_headers(meta.properties(), &attrs);
        let h = headers_of(&props);
        assert_eq!(h["ce-specversion"], "1.0");
        assert_eq!(h["ce-id"], event.event_id.to_string());
        assert_eq!(h["ce-source"], "/warren/%2F/warren.events");
        assert_eq!(h["ce-type"], "order.created");
        assert_eq!(h["ce-time"], event.occurred_on_rfc3339());
        assert_eq!(h["ce-subject"], "o-1");
        assert!(!h.contains_key("ce-dataschema"));
        assert_eq!(
            props.content_type().as_ref().map(|c| c.as_str()),
            Some("application/json")
        );
        // warren's own headers stay.
        assert!(
            props
                .headers()
                .as_ref()
                .is_some_and(|h| h.inner().contains_key("x-warren-attempt"))
        );
        assert!(is_cloudevent(&props) && is_own(&event, &props));
        // Without an aggregate id, no ce-subject.
        let bare = Event::new("a.b", None, json!({}));
        let attrs = Attributes::of(&bare, || "x".into(), || "/s".into());
        assert!(
            !headers_of(&with_headers(BasicProperties::default(), &attrs))
                .contains_key("ce-subject")
        );
    }

    #[test]
    fn a_foreign_cloudevent_keeps_its_own_identity_and_extensions() {
        let mut event = Event::new("com.example.order.created", None, json!({}));
        event.cloudevent = Some(CloudEventAttributes {
            id: "o-7".into(),
            source: "/shop".into(),
            dataschema: Some("https://example.com/order.json".into()),
            extensions: [
                ("tenant".to_owned(), json!("acme")),
                ("priority".to_owned(), json!(3)),
                ("urgent".to_owned(), json!(true)),
                // Never written over a core attribute.
                ("id".to_owned(), json!("forged")),
            ]
            .into_iter()
            .collect(),
            ..CloudEventAttributes::default()
        });
        let attrs = Attributes::of(&event, || "own".into(), || "/warren".into());
        let h = headers_of(&with_headers(BasicProperties::default(), &attrs));
        assert_eq!(h["ce-id"], "o-7");
        assert_eq!(h["ce-source"], "/shop");
        assert_eq!(h["ce-dataschema"], "https://example.com/order.json");
        assert_eq!(h["ce-tenant"], "acme");
        assert_eq!(h["ce-priority"], "3");
        assert_eq!(h["ce-urgent"], "true");
        let props = with_headers(BasicProperties::default(), &attrs);
        assert!(is_own(&event, &props), "its ce-id is the carried id");
    }

    #[test]
    fn json_content_types() {
        for ct in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/cloudevents+json"),
            Some("application/vnd.acme+json"),
        ] {
            assert!(is_json(ct), "{ct:?}");
        }
        for ct in ["text/plain", "application/octet-stream", "application/xml"] {
            assert!(!is_json(Some(ct)), "{ct}");
        }
    }

    fn required_headers() -> Vec<(&'static str, AMQPValue)> {
        vec![
            ("ce-specversion", s("1.0")),
            ("ce-id", s("o-1")),
            ("ce-source", s("/shop")),
            ("ce-type", s("com.example.order.created")),
        ]
    }

    #[test]
    fn a_foreign_json_event_decodes_with_derived_id_and_extensions() {
        let mut h = required_headers();
        h.push(("ce-time", s("2026-12-02T10:00:00.5+01:00")));
        h.push(("ce-subject", s("o-1")));
        h.push(("ce-tenant", s("acme")));
        h.push(("ce-count", AMQPValue::LongInt(2)));
        h.push(("ce-Bad_Name", s("x")));
        h.push(("x-other", s("ignored")));
        let props = binary(&h, Some("application/json"));
        let e = foreign_event(&props, br#"{"n": 1}"#, Utc::now()).expect("decodes");
        assert_eq!(e.event_id, cloudevent_event_id("/shop", "o-1"));
        assert_eq!(e.event_name, "com.example.order.created");
        assert_eq!(e.aggregate_id.as_deref(), Some("o-1"));
        assert_eq!(e.occurred_on_rfc3339(), "2026-12-02T09:00:00.500Z");
        assert_eq!(e.data, json!({"n": 1}));
        let ce = e.cloudevent.expect("kept");
        assert_eq!((ce.id.as_str(), ce.source.as_str()), ("o-1", "/shop"));
        assert_eq!(ce.datacontenttype.as_deref(), Some("application/json"));
        assert!(!ce.data_base64);
        assert_eq!(
            ce.extensions,
            [
                ("count".to_owned(), json!(2)),
                ("tenant".to_owned(), json!("acme"))
            ]
            .into_iter()
            .collect()
        );
    }

    #[test]
    fn foreign_text_and_bytes_are_kept_as_a_string_or_base64() {
        let now = Utc::now();
        let text = foreign_event(
            &binary(&required_headers(), Some("text/plain")),
            "héllo".as_bytes(),
            now,
        )
        .expect("text");
        assert_eq!(text.data, json!("héllo"));
        assert_eq!(text.occurred_on, now, "no ce-time: now");
        assert!(!text.cloudevent.as_ref().expect("ce").data_base64);
        let bytes = foreign_event(
            &binary(&required_headers(), Some("application/octet-stream")),
            &[0xff, 0x00, 0xfe],
            now,
        )
        .expect("bytes");
        assert_eq!(bytes.data, json!("/wD+"));
        assert!(bytes.cloudevent.as_ref().expect("ce").data_base64);
        // No content type: JSON, as the binding's SDKs write a dict.
        let json = foreign_event(&binary(&required_headers(), None), b"[1]", now).expect("json");
        assert_eq!(json.data, json!([1]));
    }

    #[test]
    fn a_foreign_event_that_breaks_the_rules_is_refused_with_the_reason() {
        let now = Utc::now();
        for missing in ["ce-id", "ce-source", "ce-type", "ce-specversion"] {
            let h: Vec<_> = required_headers()
                .into_iter()
                .filter(|(k, _)| *k != missing)
                .collect();
            assert_eq!(
                foreign_event(&binary(&h, None), b"{}", now),
                Err(ForeignError::Missing(
                    [H_CE_ID, H_CE_SOURCE, H_CE_TYPE, H_CE_SPECVERSION]
                        .into_iter()
                        .find(|n| *n == missing)
                        .expect("known")
                )),
                "{missing}"
            );
        }
        let mut h = required_headers();
        h[0] = ("ce-specversion", s("0.3"));
        assert_eq!(
            foreign_event(&binary(&h, None), b"{}", now),
            Err(ForeignError::SpecVersion("0.3".into()))
        );
        let mut h = required_headers();
        h.push(("ce-time", s("yesterday")));
        let e = foreign_event(&binary(&h, None), b"{}", now).expect_err("bad time");
        assert_eq!(
            e.to_string(),
            "ce-time \"yesterday\" is not an RFC 3339 timestamp"
        );
        let e = foreign_event(
            &binary(&required_headers(), Some("application/json")),
            b"<x/>",
            now,
        )
        .expect_err("not JSON");
        assert!(matches!(e, ForeignError::Data { .. }), "{e}");
    }
}
