//! A job as a CloudEvents 1.0 HTTP request (the HTTP protocol binding, version 1.0.2).
//!
//! Attributes: `id` = the message id (the same on every attempt, so a receiver can drop
//! repeats), `source` = `/warren/<vhost>/<exchange>` (the vhost percent-encoded as one path
//! segment, so the default vhost `/` is `%2F`: `/warren/%2F/warren.events`), `type` = the
//! event or command name, `time` = when it happened (RFC 3339, UTC), `subject` = the
//! aggregate id when there is one, `datacontenttype` = `application/json`. An event that came
//! from outside as a CloudEvent keeps its own `id`, `source`, `dataschema`, extensions
//! (`ce-<name>` headers; members of the structured event) and `datacontenttype` (its data as
//! it came: JSON, text, or bytes, `data_base64` in structured mode).
//!
//! - Binary mode: the attributes in `ce-*` headers, each value percent-encoded as the
//!   binding's section 3.1.3.2 requires ([`percent_encode`]); `content-type:
//!   application/json`; the body is the event's `data`.
//! - Structured mode: `content-type: application/cloudevents+json; charset=utf-8`, the body
//!   is the JSON event format (attributes and `data` in one object), and no `ce-*` headers
//!   (receivers such as the Python SDK take any `ce-*` header to mean binary mode).
//!
//! Both modes also carry `traceparent` (a child of the message's trace), `x-request-id` (the
//! request that caused the message), `warren-attempt` (1-based) and `warren-subscription`,
//! the operator's static headers, and the Standard Webhooks headers when the subscription
//! signs ([`super::signature`]).

use base64::Engine;
use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

use super::signature::{SigningKeys, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP};
use crate::{
    broker::{
        cloudevent::{self, extension_text},
        names::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE},
        topology::topic_matches,
    },
    config::ContentMode,
    jobs::Job,
};

/// Header: the 1-based attempt number of this delivery.
pub(crate) const WARREN_ATTEMPT: &str = "warren-attempt";
/// Header: the subscription's name.
pub(crate) const WARREN_SUBSCRIPTION: &str = "warren-subscription";
/// `content-type` of a structured-mode delivery.
pub(crate) const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";
/// `datacontenttype` of every delivery: warren's `data` is JSON.
pub(crate) const DATA_CONTENT_TYPE: &str = "application/json";

/// Percent-encodes a header value as the CloudEvents HTTP binding (section 3.1.3.2) says:
/// space, `"`, `%` and every character outside printable ASCII (U+0021 to U+007E) become
/// `%XY` per UTF-8 byte, upper-case hex; everything else is kept as it is.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for &b in value.as_bytes() {
        if (0x21..=0x7e).contains(&b) && b != b'"' && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The `source` attribute for `exchange` on `vhost`: `/warren/<vhost>/<exchange>` (the
/// broker's, so one event has one identity over HTTP and AMQP).
pub(crate) use crate::broker::cloudevent::source;

/// What a subscription puts on every request, prepared once from its settings.
#[derive(Debug, Clone)]
pub(crate) struct Binding {
    /// The subscription's name (`warren-subscription`).
    pub subscription: String,
    /// Binary or structured.
    pub mode: ContentMode,
    /// The broker vhost, for `source`.
    pub vhost: String,
    /// Its patterns on `warren.events`.
    pub events: Vec<String>,
    /// Its patterns on `warren.commands`.
    pub commands: Vec<String>,
    /// The operator's static headers.
    pub headers: HeaderMap,
    /// The signing keys (none: unsigned).
    pub keys: SigningKeys,
}

/// A delivery ready to send: every header and the exact body (what the signature covers).
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// Every header warren sends.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

/// The CloudEvents attributes of a job (the broker's mapping: a foreign CloudEvent's own
/// `id`, `source`, `dataschema` and extensions when the job carries one).
pub(crate) type Attributes = cloudevent::Attributes;

impl Binding {
    /// The exchange a job came from when it does not say (published straight to the queue),
    /// read from the subscription's patterns: `warren.events` when an events pattern matches its routing key, else
    /// `warren.commands` when a commands pattern does; else the side the subscription has.
    pub(crate) fn exchange_of(&self, routing_key: &str) -> &'static str {
        let matches = |ps: &[String]| ps.iter().any(|p| topic_matches(p, routing_key));
        if matches(&self.events) {
            EVENTS_EXCHANGE
        } else if matches(&self.commands) || self.events.is_empty() {
            COMMANDS_EXCHANGE
        } else {
            EVENTS_EXCHANGE
        }
    }

    /// The attributes of `job`: `id` = its message id (the same on every attempt) and
    /// `source` = warren's for its exchange, unless it came from outside as a CloudEvent.
    pub(crate) fn attributes(&self, job: &Job) -> Attributes {
        let mut attrs = Attributes::of(
            &job.event,
            || job.message_id.to_string(),
            || {
                source(
                    &self.vhost,
                    if job.exchange.is_empty() {
                        self.exchange_of(&job.routing_key)
                    } else {
                        &job.exchange
                    },
                )
            },
        );
        if attrs.kind.is_empty() {
            attrs.kind = job.routing_key.clone();
        }
        attrs
    }

    /// The request for `job`, signed (when keys are set) at `timestamp` (seconds since the
    /// epoch) with a new span id in the job's trace (`traceparent`).
    pub(crate) fn request(
        &self,
        job: &Job,
        timestamp: i64,
        traceparent: Option<String>,
    ) -> Request {
        let attrs = self.attributes(job);
        let data = Data::of(&job.event);
        let mut headers = self.headers.clone();
        let body = match self.mode {
            ContentMode::Binary => {
                put(&mut headers, "ce-specversion", "1.0");
                put(&mut headers, "ce-id", &percent_encode(&attrs.id));
                put(&mut headers, "ce-source", &percent_encode(&attrs.source));
                put(&mut headers, "ce-type", &percent_encode(&attrs.kind));
                put(&mut headers, "ce-time", &percent_encode(&attrs.time));
                if let Some(subject) = &attrs.subject {
                    put(&mut headers, "ce-subject", &percent_encode(subject));
                }
                if let Some(schema) = &attrs.dataschema {
                    put(&mut headers, "ce-dataschema", &percent_encode(schema));
                }
                for (name, value) in &attrs.extensions {
                    put_extension(&mut headers, name, &percent_encode(&extension_text(value)));
                }
                if let Ok(v) = HeaderValue::from_str(data.content_type) {
                    headers.insert(CONTENT_TYPE, v);
                }
                data.bytes()
            }
            ContentMode::Structured => {
                headers.insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(STRUCTURED_CONTENT_TYPE),
                );
                Bytes::from(structured(&attrs, &data))
            }
        };
        if let Some(tp) = traceparent {
            put(&mut headers, crate::broker::names::H_TRACEPARENT, &tp);
        }
        if let Some(rid) = &job.request_id {
            put(&mut headers, crate::broker::names::H_REQUEST_ID, rid);
        }
        put(&mut headers, WARREN_ATTEMPT, &job.attempt.to_string());
        put(&mut headers, WARREN_SUBSCRIPTION, &self.subscription);
        if let Some(signature) = self.keys.sign(&attrs.id, timestamp, &body) {
            put(&mut headers, WEBHOOK_ID, &attrs.id);
            put(&mut headers, WEBHOOK_TIMESTAMP, &timestamp.to_string());
            put(&mut headers, WEBHOOK_SIGNATURE, &signature);
        }
        Request { headers, body }
    }
}

/// A job's data as a delivery carries it: warren's own is JSON; a foreign CloudEvent's is in
/// its own content type, text or (`data_base64`) bytes.
struct Data<'a> {
    content_type: &'a str,
    value: &'a Value,
    /// `value` is a JSON value (else a string holding text or base64).
    json: bool,
    /// `value` is a string of base64.
    base64: bool,
}

impl<'a> Data<'a> {
    fn of(event: &'a crate::broker::envelope::Event) -> Self {
        let ce = event.cloudevent.as_ref();
        let content_type = ce
            .and_then(|c| c.datacontenttype.as_deref())
            .unwrap_or(DATA_CONTENT_TYPE);
        let json = cloudevent::is_json(Some(content_type));
        Self {
            content_type,
            value: &event.data,
            json,
            base64: !json && ce.is_some_and(|c| c.data_base64),
        }
    }

    /// The body of a binary-mode delivery.
    fn bytes(&self) -> Bytes {
        match (self.json, self.value) {
            // Serializing a JSON value cannot fail.
            (true, v) => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
            (false, Value::String(s)) if self.base64 => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .unwrap_or_default(),
            ),
            (false, Value::String(s)) => Bytes::from(s.clone().into_bytes()),
            (false, v) => Bytes::from(v.to_string().into_bytes()),
        }
    }
}

/// The JSON event format of `attrs` and `data`: extensions as members with their own JSON
/// types, bytes as `data_base64`.
fn structured(attrs: &Attributes, data: &Data<'_>) -> Vec<u8> {
    let mut event = Map::new();
    for (name, value) in &attrs.extensions {
        event.insert(name.clone(), value.clone());
    }
    event.insert("specversion".into(), Value::from("1.0"));
    event.insert("id".into(), Value::from(attrs.id.as_str()));
    event.insert("source".into(), Value::from(attrs.source.as_str()));
    event.insert("type".into(), Value::from(attrs.kind.as_str()));
    event.insert("time".into(), Value::from(attrs.time.as_str()));
    if let Some(subject) = &attrs.subject {
        event.insert("subject".into(), Value::from(subject.as_str()));
    }
    if let Some(schema) = &attrs.dataschema {
        event.insert("dataschema".into(), Value::from(schema.as_str()));
    }
    event.insert("datacontenttype".into(), Value::from(data.content_type));
    let key = if data.base64 { "data_base64" } else { "data" };
    event.insert(key.into(), data.value.clone());
    serde_json::to_vec(&Value::Object(event)).unwrap_or_default()
}

/// Sets `ce-<name>` for an extension (its name is checked: a name that makes no header is
/// left out).
fn put_extension(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (
        HeaderName::from_bytes(format!("ce-{name}").as_bytes()),
        HeaderValue::from_str(value),
    ) {
        headers.insert(n, v);
    }
}

/// Sets a header whose name is a constant and whose value is checked here: a value that is
/// not a valid header value (a foreign publisher's request id with a newline) is left out.
fn put(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_follows_the_binding() {
        // The binding's own example (section 3.1.3.2).
        assert_eq!(
            percent_encode("Euro \u{20ac} \u{1f600}"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        // Space, double quote and percent are encoded; other printable ASCII is kept.
        assert_eq!(percent_encode(r#"a "b" 100%"#), "a%20%22b%22%20100%25");
        assert_eq!(
            percent_encode("!#$&'()*+,/:;<=>?@[\\]^_`{|}~"),
            "!#$&'()*+,/:;<=>?@[\\]^_`{|}~"
        );
        // Controls, DEL and C1 controls are encoded too (RECOMMENDED by the binding).
        assert_eq!(
            percent_encode("a\tb\r\n\u{7f}\u{85}"),
            "a%09b%0D%0A%7F%C2%85"
        );
        assert_eq!(percent_encode(""), "");
        // An already-encoded value is encoded again: the percent sign is data.
        assert_eq!(percent_encode("%20"), "%2520");
    }

    #[test]
    fn every_encoded_value_is_a_valid_header_value() {
        for s in [
            "\u{0}",
            "é",
            "\u{fffd}",
            "a\u{2028}b",
            " leading",
            "trailing ",
        ] {
            let encoded = percent_encode(s);
            assert!(
                HeaderValue::from_str(&encoded).is_ok(),
                "{s:?} -> {encoded}"
            );
            assert!(!encoded.starts_with(' ') && !encoded.ends_with(' '));
        }
    }

    #[test]
    fn source_names_vhost_and_exchange() {
        assert_eq!(source("/", "warren.events"), "/warren/%2F/warren.events");
        assert_eq!(
            source("prod", "warren.commands"),
            "/warren/prod/warren.commands"
        );
        assert_eq!(
            crate::broker::vhost_of("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "/"
        );
        assert_eq!(crate::broker::vhost_of("amqp://127.0.0.1:5672"), "/");
        assert_eq!(
            crate::broker::vhost_of("amqp://h/prod?heartbeat=10"),
            "prod"
        );
    }
}
