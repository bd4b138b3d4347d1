//! Reading CloudEvents 1.0 from an HTTP request: which content mode it is in, and each mode's
//! attributes and data, checked against the spec's rules with a refusal naming the attribute.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;
use warp::http::HeaderMap;

use crate::{
    broker::envelope::{CloudEventAttributes, EVENT_VERSION, Event},
    http::{ApiError, MAX_EVENT_NAME},
};

/// Most events in one batch.
pub const MAX_BATCH: usize = 100;
/// Longest `id` and `source`, in bytes.
const MAX_IDENTITY: usize = 1024;
/// Longest `subject` (it becomes the aggregate id, bounded as on `POST /v1/events/{name}`).
const MAX_SUBJECT: usize = 255;

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// The content mode of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::http) enum Mode {
    /// One event in the JSON format.
    Structured,
    /// A JSON array of events.
    Batch,
    /// Attributes in `ce-*` headers, the body is the data.
    Binary,
}

impl Mode {
    /// The mode's name in spans.
    pub(in crate::http) fn as_str(self) -> &'static str {
        match self {
            Mode::Structured => "structured",
            Mode::Batch => "batched",
            Mode::Binary => "binary",
        }
    }
}

fn media(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The mode the headers say: a CloudEvents content type, else `ce-specversion` for binary.
pub(in crate::http) fn mode(headers: &HeaderMap) -> Result<Mode, ApiError> {
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().map(media).unwrap_or_default());
    match content_type.as_deref() {
        Some(STRUCTURED) => return Ok(Mode::Structured),
        Some(BATCH) => return Ok(Mode::Batch),
        _ => {}
    }
    if headers.contains_key("ce-specversion") {
        return Ok(Mode::Binary);
    }
    Err(ApiError::NotACloudEvent(match content_type {
        Some(ct) if ct.starts_with("application/cloudevents") => {
            format!("event format {ct:?} is not supported (JSON only)")
        }
        Some(ct) => format!("content type {ct:?} and no ce-specversion header"),
        None => "no content type and no ce-specversion header".to_owned(),
    }))
}

fn invalid(attribute: &str, reason: impl Into<String>) -> ApiError {
    ApiError::InvalidCloudEvent {
        attribute: attribute.to_owned(),
        reason: reason.into(),
    }
}

/// The warren event name rule for a CloudEvent `type`: dot-separated routing words, two or
/// more, each non-empty and made of ASCII letters, digits, `_` and `-` (so reverse-DNS types
/// such as `com.example.order.created` or `com.acme-shop.Order.Created` route as they are);
/// the topic wildcards `*` and `#` are refused; at most [`MAX_EVENT_NAME`] bytes.
pub fn validate_event_type(ty: &str) -> Result<(), String> {
    if ty.is_empty() {
        return Err("must be a non-empty string".to_owned());
    }
    if ty.len() > MAX_EVENT_NAME {
        return Err(format!("longer than {MAX_EVENT_NAME} bytes"));
    }
    let words: Vec<&str> = ty.split('.').collect();
    if words.len() < 2 {
        return Err(
            "needs two or more dot-separated words, e.g. com.example.order.created".to_owned(),
        );
    }
    for w in words {
        if w.is_empty() {
            return Err("has an empty word (two dots in a row, or a dot at an end)".to_owned());
        }
        if w.contains(['*', '#']) {
            return Err("* and # are routing wildcards, not names".to_owned());
        }
        if !w
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(format!(
                "word {w:?} may hold only ASCII letters, digits, _ and -"
            ));
        }
    }
    Ok(())
}

/// A CloudEvent read from a request, checked.
#[derive(Debug, Clone, PartialEq)]
pub(in crate::http) struct Incoming {
    /// The attributes that travel on in `Event::cloudevent`.
    pub(in crate::http) attrs: CloudEventAttributes,
    ty: String,
    subject: Option<String>,
    time: Option<DateTime<Utc>>,
    data: Value,
}

impl Incoming {
    /// The warren event, with `event_id` (derived from `source` and `id`).
    pub(in crate::http) fn into_event(self, event_id: Uuid) -> Event {
        Event {
            event_id,
            event_name: self.ty,
            aggregate_id: self.subject,
            occurred_on: self.time.unwrap_or_else(Utc::now),
            version: EVENT_VERSION.to_owned(),
            data: self.data,
            cloudevent: Some(self.attrs),
        }
    }
}

fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|ct| {
        let m = media(ct);
        m == "application/json" || m == "text/json" || m.ends_with("+json")
    })
}

/// Data bytes as warren keeps them: JSON for a JSON content type, else text, else base64.
fn data_from_bytes(content_type: Option<&str>, bytes: &[u8]) -> Result<(Value, bool), ApiError> {
    if bytes.is_empty() {
        return Ok((Value::Null, false));
    }
    if is_json(content_type) {
        return serde_json::from_slice(bytes)
            .map(|v| (v, false))
            .map_err(|e| {
                invalid(
                    "data",
                    format!("not valid JSON, as its content type says: {e}"),
                )
            });
    }
    Ok(match std::str::from_utf8(bytes) {
        Ok(text) => (Value::String(text.to_owned()), false),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
            true,
        ),
    })
}

/// The attributes as strings or typed values, before the checks.
struct Raw {
    get: BTreeMap<String, Value>,
}

impl Raw {
    fn string(&mut self, name: &str, required: bool) -> Result<Option<String>, ApiError> {
        match self.get.remove(name) {
            None | Some(Value::Null) if required => {
                Err(invalid(name, "required attribute missing"))
            }
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => {
                Err(invalid(name, "must be a non-empty string"))
            }
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(invalid(name, "must be a string")),
        }
    }

    /// Checks every attribute and makes the event; `data` is already read.
    fn finish(mut self, data: Value, data_base64: bool) -> Result<Incoming, ApiError> {
        let specversion = self.string("specversion", true)?.unwrap_or_default();
        if specversion != "1.0" {
            return Err(invalid(
                "specversion",
                format!("must be \"1.0\", got {specversion:?}"),
            ));
        }
        let id = self.string("id", true)?.unwrap_or_default();
        let source = self.string("source", true)?.unwrap_or_default();
        for (name, value) in [("id", &id), ("source", &source)] {
            if value.len() > MAX_IDENTITY {
                return Err(invalid(name, format!("longer than {MAX_IDENTITY} bytes")));
            }
        }
        let ty = self.string("type", true)?.unwrap_or_default();
        validate_event_type(&ty).map_err(|reason| invalid("type", reason))?;
        let datacontenttype = self.string("datacontenttype", false)?;
        let dataschema = self.string("dataschema", false)?;
        let subject = self.string("subject", false)?;
        if subject.as_ref().is_some_and(|s| s.len() > MAX_SUBJECT) {
            return Err(invalid(
                "subject",
                format!("longer than {MAX_SUBJECT} bytes (it is the aggregate id)"),
            ));
        }
        let time = self
            .string("time", false)?
            .map(|t| {
                DateTime::parse_from_rfc3339(&t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|e| invalid("time", format!("not an RFC 3339 timestamp: {e}")))
            })
            .transpose()?;
        let mut extensions = BTreeMap::new();
        for (name, value) in self.get {
            if name.is_empty()
                || name.len() > 20
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            {
                return Err(invalid(
                    &name,
                    "extension attribute names are 1 to 20 characters of a-z and 0-9",
                ));
            }
            let ok = match &value {
                Value::String(_) | Value::Bool(_) => true,
                Value::Number(n) => n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()),
                _ => false,
            };
            if !ok {
                return Err(invalid(
                    &name,
                    "an extension's value must be a string, a boolean or a 32-bit integer",
                ));
            }
            extensions.insert(name, value);
        }
        Ok(Incoming {
            attrs: CloudEventAttributes {
                id,
                source,
                datacontenttype,
                dataschema,
                data_base64,
                extensions,
            },
            ty,
            subject,
            time,
            data,
        })
    }
}

/// One event in the JSON format, from a parsed value.
pub(in crate::http) fn event(value: Value) -> Result<Incoming, ApiError> {
    let Value::Object(map) = value else {
        return Err(invalid("(event)", "an event must be a JSON object"));
    };
    let mut get: BTreeMap<String, Value> = map.into_iter().collect();
    let data = get.remove("data");
    let data_base64 = get.remove("data_base64");
    let content_type = match get.get("datacontenttype") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let (data, is_base64) = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "data_base64",
                "data and data_base64 exclude each other",
            ));
        }
        (Some(d), None) => (d, false),
        (None, Some(Value::String(b64))) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| invalid("data_base64", format!("not base64: {e}")))?;
            data_from_bytes(content_type.as_deref(), &bytes)?
        }
        (None, Some(_)) => return Err(invalid("data_base64", "must be a base64 string")),
        (None, None) => (Value::Null, false),
    };
    Raw { get }.finish(data, is_base64)
}

/// The structured mode's body.
pub(in crate::http) fn structured(body: &[u8]) -> Result<Incoming, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    event(value)
}

/// The batched mode's body: 1 to [`MAX_BATCH`] values, each still to be read with [`event`].
pub(in crate::http) fn batch(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let Value::Array(items) = value else {
        return Err(ApiError::InvalidBatch(
            "the body must be a JSON array of events".to_owned(),
        ));
    };
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(ApiError::InvalidBatch(format!(
            "a batch holds 1 to {MAX_BATCH} events, got {}",
            items.len()
        )));
    }
    Ok(items)
}

/// A batch item's `id` and `source` as sent, for its line in the answer.
pub(in crate::http) fn identity(item: &Value) -> (Value, Value) {
    (item["id"].clone(), item["source"].clone())
}

/// The binary mode: `ce-*` headers (percent-decoded) and the body as the data.
pub(in crate::http) fn binary(headers: &HeaderMap, body: &[u8]) -> Result<Incoming, ApiError> {
    let mut get = BTreeMap::new();
    for name in headers.keys() {
        let Some(attr) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let mut values = headers.get_all(name).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(invalid(attr, "given more than once"));
        };
        let text = value
            .to_str()
            .map_err(|_| invalid(attr, "header value is not ASCII (percent-encode it)"))?;
        let decoded = percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map_err(|_| invalid(attr, "not UTF-8 once percent-decoded"))?;
        get.insert(attr.to_owned(), Value::String(decoded.into_owned()));
    }
    for inside in ["data", "data_base64", "datacontenttype"] {
        if get.contains_key(inside) {
            return Err(invalid(
                inside,
                "not a header in the binary mode (the body is the data, Content-Type its type)",
            ));
        }
    }
    let content_type = headers
        .get("content-type")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| invalid("datacontenttype", "Content-Type is not ASCII"))
        })
        .transpose()?;
    let (data, is_base64) = data_from_bytes(content_type.as_deref(), body)?;
    if let Some(ct) = content_type {
        get.insert("datacontenttype".to_owned(), Value::String(ct));
    }
    Raw { get }.finish(data, is_base64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use warp::http::HeaderValue;

    fn minimal() -> Value {
        json!({"specversion": "1.0", "id": "o-1", "source": "/shop", "type": "com.example.order.created"})
    }

    fn attribute_of(e: ApiError) -> String {
        match e {
            ApiError::InvalidCloudEvent { attribute, .. } => attribute,
            other => panic!("expected invalid_cloudevent, got {other:?}"),
        }
    }

    #[test]
    fn types_follow_the_routing_rule() {
        for ok in [
            "com.example.order.created",
            "order.created",
            "com.acme-shop.Order.Created",
            "io.k8s.v1.pod_added",
        ] {
            assert_eq!(validate_event_type(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "order",
            "order..created",
            ".order.created",
            "order.*",
            "order.#",
            "order.cre ated",
            "order.créé",
        ] {
            assert!(validate_event_type(bad).is_err(), "{bad}");
        }
        assert!(validate_event_type(&format!("a.{}", "b".repeat(MAX_EVENT_NAME))).is_err());
    }

    #[test]
    fn each_required_attribute_is_named_when_missing() {
        for attr in ["id", "source", "specversion", "type"] {
            let mut v = minimal();
            v.as_object_mut().map(|m| m.remove(attr));
            assert_eq!(attribute_of(event(v).expect_err("refused")), attr);
        }
        let mut v = minimal();
        v["specversion"] = json!("0.3");
        assert_eq!(attribute_of(event(v).expect_err("refused")), "specversion");
        let mut v = minimal();
        v["Bad-Name"] = json!("x");
        assert_eq!(attribute_of(event(v).expect_err("refused")), "Bad-Name");
    }

    #[test]
    fn structured_data_and_extensions_are_kept() {
        let mut v = minimal();
        v["data"] = json!({"n": 1});
        v["tenant"] = json!("t-1");
        v["priority"] = json!(3);
        v["subject"] = json!("o-1");
        v["time"] = json!("2026-12-02T10:00:00Z");
        let e = event(v).expect("accepted").into_event(Uuid::nil());
        assert_eq!(e.data, json!({"n": 1}));
        assert_eq!(e.aggregate_id.as_deref(), Some("o-1"));
        assert_eq!(e.occurred_on.to_rfc3339(), "2026-12-02T10:00:00+00:00");
        let ce = e.cloudevent.expect("attributes");
        assert_eq!(ce.extensions["tenant"], json!("t-1"));
        assert_eq!(ce.extensions["priority"], json!(3));
    }

    #[test]
    fn base64_data_becomes_text_or_stays_base64() {
        let mut v = minimal();
        v["datacontenttype"] = json!("application/octet-stream");
        v["data_base64"] = json!("/wA=");
        let e = event(v).expect("accepted");
        assert_eq!(e.data, json!("/wA="));
        assert!(e.attrs.data_base64);
        let mut v = minimal();
        v["datacontenttype"] = json!("text/plain");
        v["data_base64"] = json!("aGk=");
        let e = event(v).expect("accepted");
        assert_eq!(e.data, json!("hi"));
        assert!(!e.attrs.data_base64);
    }

    #[test]
    fn binary_headers_are_percent_decoded() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "a%20b"),
            ("ce-source", "/shop"),
            ("ce-type", "com.example.order.created"),
            ("ce-note", "caf%C3%A9 %25"),
            ("content-type", "application/json"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        assert_eq!(mode(&h).expect("a mode"), Mode::Binary);
        let e = binary(&h, br#"{"x":1}"#).expect("accepted");
        assert_eq!(e.attrs.id, "a b");
        assert_eq!(e.attrs.extensions["note"], json!("café %"));
        assert_eq!(e.data, json!({"x": 1}));
    }

    #[test]
    fn modes_come_from_the_content_type_then_ce_specversion() {
        let mut h = HeaderMap::new();
        h.insert(
            "content-type",
            HeaderValue::from_static("Application/CloudEvents+JSON; charset=utf-8"),
        );
        assert_eq!(mode(&h).expect("a mode"), Mode::Structured);
        h.insert(
            "content-type",
            HeaderValue::from_static("application/cloudevents-batch+json"),
        );
        assert_eq!(mode(&h).expect("a mode"), Mode::Batch);
        h.insert("content-type", HeaderValue::from_static("application/json"));
        assert!(matches!(mode(&h), Err(ApiError::NotACloudEvent(_))));
        assert!(batch(b"[]").is_err());
    }
}
