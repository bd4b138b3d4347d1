//! What each fuzz target does with one input, and the properties it asserts. Dependency-free
//! beyond warren's own (no `arbitrary`), so warren's stable test suite can include this file
//! and replay the committed corpus through exactly the same code.
//!
//! Inputs are read with a small [`Reader`]: one selector byte or length-prefixed chunk per
//! field, the rest is the body. Every property is a panic on violation, so libFuzzer reports
//! it as a crash.

use std::sync::OnceLock;

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString},
};
use warren::{
    broker::{envelope::Event, names::REQUEUE_EXCHANGE},
    http::{ApiError, Call, Routes, parse_data, routes, validate_event_name},
    jobs::decode::{Delivered, decode, x_death_is_well_formed},
};

/// Reads fields off a fuzz input: selector bytes and length-prefixed chunks, then the rest.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// One byte (0 when the input is used up).
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    /// A chunk: one length byte, then up to that many bytes.
    pub fn chunk(&mut self) -> &'a [u8] {
        let n = usize::from(self.byte()).min(self.data.len());
        let (chunk, rest) = self.data.split_at(n);
        self.data = rest;
        chunk
    }

    /// A chunk as (lossy) text.
    pub fn text(&mut self) -> String {
        String::from_utf8_lossy(self.chunk()).into_owned()
    }

    /// A chunk as an AMQP short string.
    pub fn short(&mut self) -> ShortString {
        short_string(self.chunk())
    }

    /// Everything left.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Lossy text cut to 255 bytes, as an AMQP short string (a longer one cannot be built, nor sent).
pub fn short_string(bytes: &[u8]) -> ShortString {
    let mut s = String::from_utf8_lossy(bytes).into_owned();
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    ShortString::from(s)
}

/// An AMQP header value of a kind chosen by `r` (integers, strings, arrays, tables).
fn header_value(r: &mut Reader<'_>, depth: u8) -> AMQPValue {
    let raw = r.chunk();
    let int = i64::from_le_bytes({
        let mut b = [0u8; 8];
        let n = raw.len().min(8);
        b[..n].copy_from_slice(&raw[..n]);
        b
    });
    match r.byte() % 9 {
        0 => AMQPValue::LongLongInt(int),
        1 => AMQPValue::LongInt(int as i32),
        2 => AMQPValue::ShortShortUInt(int as u8),
        3 => AMQPValue::LongString(LongString::from(raw.to_vec())),
        4 => AMQPValue::ShortString(short_string(raw)),
        5 => AMQPValue::Boolean(int & 1 == 1),
        6 if depth < 3 => {
            let n = r.byte() % 4;
            AMQPValue::FieldArray(FieldArray::from(
                (0..n)
                    .map(|_| header_value(r, depth + 1))
                    .collect::<Vec<_>>(),
            ))
        }
        7 if depth < 3 => {
            let mut t = FieldTable::default();
            for _ in 0..r.byte() % 4 {
                let key = ["queue", "reason", "count", "exchange", "x"][usize::from(r.byte() % 5)];
                t.insert(key.into(), header_value(r, depth + 1));
            }
            AMQPValue::FieldTable(t)
        }
        _ => AMQPValue::Void,
    }
}

/// Target `envelope`: a delivery (exchange, routing key, properties, headers, body) through
/// [`decode`]. Properties: no panic; the attempt is within 1..=max and is 1 unless the
/// delivery came through `warren.requeue`; a decoded event survives a round trip through its
/// own JSON; the body's id stands in for a `message_id` that is not a UUID.
pub fn envelope(data: &[u8]) {
    let mut r = Reader::new(data);
    let selector = r.byte();
    let exchange = match selector % 4 {
        0 => "warren.events",
        1 => "warren.commands",
        2 => REQUEUE_EXCHANGE,
        _ => "",
    };
    let max_attempts = u32::from(selector >> 4);
    let routing_key = r.text();
    let mut headers = FieldTable::default();
    for key in [
        "x-warren-attempt",
        "x-warren-original-routing-key",
        "x-warren-original-exchange",
        "traceparent",
        "x-request-id",
        "x-death",
    ] {
        if r.byte() & 1 == 1 {
            headers.insert(key.into(), header_value(&mut r, 0));
        }
    }
    let mut props = BasicProperties::default().with_headers(headers.clone());
    if r.byte() & 1 == 1 {
        props = props.with_message_id(r.short());
    }
    if r.byte() & 1 == 1 {
        props = props.with_correlation_id(r.short());
    }
    let body = r.rest();
    let d = Delivered {
        body,
        properties: &props,
        exchange,
        routing_key: &routing_key,
    };
    if let Some(x_death) = headers.inner().get("x-death") {
        let _ = x_death_is_well_formed(x_death);
    }
    let attempt = d.attempt(max_attempts);
    assert!(attempt >= 1 && attempt <= max_attempts.max(1), "{attempt}");
    if exchange != REQUEUE_EXCHANGE {
        assert_eq!(attempt, 1, "an attempt believed off the requeue exchange");
    }
    match decode(&d, "warren.fuzz", max_attempts) {
        Ok(job) => {
            assert_eq!(job.attempt, attempt);
            let again: Event =
                serde_json::from_slice(&job.event.to_json()).expect("a decoded event re-parses");
            assert_eq!(again, job.event, "the event round-trips");
            let id_ok = props
                .message_id()
                .as_ref()
                .is_some_and(|m| m.as_str().parse::<uuid::Uuid>().is_ok());
            if !id_ok {
                assert_eq!(job.message_id, job.event.event_id);
            }
            if let Some(rid) = &job.request_id {
                assert!(rid.len() <= 128 && !rid.is_empty());
            }
        }
        Err(e) => {
            assert_eq!(e.attempt, attempt);
            assert!(e.to_string().starts_with("undecodable "), "{e}");
        }
    }
}

/// Target `http_request`: an event name, a content type and a body through
/// [`validate_event_name`] and [`parse_data`]. Properties: no panic; an accepted name is 3 to
/// 128 bytes of `a-z 0-9 _ .` with a dot and no empty segment; accepted data is a JSON object
/// that round-trips; every refusal maps to a 4xx.
pub fn http_request(data: &[u8]) {
    let mut r = Reader::new(data);
    let name = r.text();
    let content_type = match r.byte() % 3 {
        0 => None,
        1 => Some("application/json".to_owned()),
        _ => Some(r.text()),
    };
    let body = r.rest();
    match validate_event_name(&name) {
        Ok(()) => {
            assert!(name.len() <= 128, "{name:?}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'_'
                    || b == b'.'),
                "{name:?}"
            );
            assert!(
                name.contains('.') && !name.split('.').any(str::is_empty),
                "{name:?}"
            );
        }
        Err(e) => assert_eq!(e.status().as_u16(), 400, "{e}"),
    }
    match parse_data(content_type.as_deref(), body) {
        Ok(v) => {
            assert!(v.is_object());
            let again: serde_json::Value =
                serde_json::from_slice(&serde_json::to_vec(&v).expect("serializes"))
                    .expect("re-parses");
            assert_eq!(again, v, "data round-trips");
        }
        Err(e) => assert!(e.status().is_client_error(), "{e}"),
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime")
    })
}

/// The body limit the `http_routes` target parses with.
pub const BODY_LIMIT: u64 = 4096;

fn table() -> &'static Routes {
    static TABLE: OnceLock<Routes> = OnceLock::new();
    TABLE.get_or_init(|| routes(BODY_LIMIT))
}

fn tree() -> &'static warp::filters::BoxedFilter<(Call,)> {
    static TREE: OnceLock<warp::filters::BoxedFilter<(Call,)>> = OnceLock::new();
    TREE.get_or_init(|| table().filter())
}

/// Target `http_routes`: a whole request (method, path and query, headers, body) through
/// warren's route tree with `warp::test`. Properties: no panic; every rejection maps to a
/// known 4xx error (never the 500 of an unhandled rejection); a parsed request's template is
/// the one its raw path names.
pub fn http_routes(data: &[u8]) {
    let mut r = Reader::new(data);
    let method = match r.byte() % 4 {
        0 => "POST".to_owned(),
        1 => "GET".to_owned(),
        2 => "PUT".to_owned(),
        _ => r.text(),
    };
    let prefixes = [
        "/v1/events/",
        "/v1/jobs/",
        "/v1/dlq/",
        "/v1/orders",
        "/v1/sagas/",
        "/v1/interventions/",
        "/v1/failed-jobs",
        "/",
    ];
    let path = format!(
        "{}{}",
        prefixes[usize::from(r.byte()) % prefixes.len()],
        r.text()
    );
    if warp::http::Method::from_bytes(method.as_bytes()).is_err()
        || path.parse::<warp::http::Uri>().is_err()
    {
        return;
    }
    let mut req = warp::test::request().method(&method).path(&path);
    for _ in 0..r.byte() % 6 {
        let names = [
            "content-type",
            "content-length",
            "authorization",
            "traceparent",
            "x-request-id",
            "transfer-encoding",
        ];
        let name = names[usize::from(r.byte()) % names.len()];
        let value = r.chunk();
        if let Ok(v) = warp::http::HeaderValue::from_bytes(value) {
            req = req.header(name, v);
        }
    }
    let req = req.body(r.rest());
    let result = runtime().block_on(req.filter(tree()));
    match result {
        Ok(call) => {
            // The route the tree chose is the one the raw path names: the metric label of a
            // parsed request and of a rejected one come from the same declaration.
            let raw = path.split('?').next().unwrap_or_default();
            assert_eq!(
                call.template(),
                table().template_for(raw),
                "{method} {path}"
            );
        }
        Err(rejection) => {
            let e = ApiError::from_rejection(&rejection, BODY_LIMIT);
            assert!(
                e.status().is_client_error(),
                "{method} {path}: {rejection:?} maps to {e}"
            );
        }
    }
}
