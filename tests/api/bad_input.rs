//! Bad input, over real HTTP and a real broker: oversized, deeply nested, non-UTF-8 and
//! non-object bodies, huge headers, event names that break the rule, and messages from foreign
//! publishers with undecodable bodies, garbage ids and forged `x-warren-*` or `x-death`
//! headers. Each is answered with a reason or parked with one; the service stays up.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldArray, FieldTable, LongString},
};
use reqwest::Method;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren::{
    broker::{
        envelope::Event,
        names::{self, H_ATTEMPT, header_int, header_str},
    },
    jobs::{Consumer, Job, JobError},
};

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with, spawn_worker_with};

/// The service still answers: `GET /healthz` is 200.
async fn still_alive(app: &TestApp) {
    let r = app
        .request(Method::GET, "/healthz")
        .send()
        .await
        .expect("the server still accepts connections");
    assert_eq!(r.status(), 200, "healthz after bad input");
}

/// Sends `request` as raw bytes on a new connection and returns the status and body.
async fn raw(app: &TestApp, request: &[u8]) -> (u16, String) {
    let addr = app.base.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer (and close) before it has read everything: a failed write is
    // not the result, the answer is.
    let _ = conn.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the server answered within 10 s");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The JSON content-type header line.
const JSON: &[u8] = b"content-type: application/json\r\n";

/// A raw `POST path` with `extra_headers` (whole lines) and `body`.
fn post_raw(path: &str, extra_headers: &[u8], body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nhost: warren\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(extra_headers);
    r.extend_from_slice(b"\r\n");
    r.extend_from_slice(body);
    r
}

/// The error code of a JSON error body.
fn code(body: &str) -> String {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(
        !v["error"]["message"].as_str().unwrap_or("").is_empty(),
        "an error names its reason: {v}"
    );
    v["error"]["code"].as_str().unwrap_or("").to_owned()
}

#[tokio::test]
async fn an_oversized_body_is_413_with_the_limit_and_a_chunked_one_is_411() {
    let app = spawn_app().await;
    let limit = app.settings.http.body_limit_bytes;
    let big = vec![b' '; usize::try_from(limit).expect("small") + 1];
    let (status, body) = raw(&app, &post_raw("/v1/events/order.created", JSON, &big)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(code(&body), "payload_too_large");
    assert!(body.contains(&limit.to_string()), "names the limit: {body}");
    // A declared length far beyond the limit is refused before any body is read.
    let (status, body) = raw(
        &app,
        b"POST /v1/events/order.created HTTP/1.1\r\nhost: warren\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: 1099511627776\r\n\r\n{}",
    )
    .await;
    assert_eq!((status, code(&body).as_str()), (413, "payload_too_large"));
    // A chunked body has no length to check up front: it is refused with a reason.
    let (status, body) = raw(
        &app,
        b"POST /v1/events/order.created HTTP/1.1\r\nhost: warren\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!((status, code(&body).as_str()), (411, "length_required"));
    still_alive(&app).await;
    assert!(
        app.drain("warren.audit").await.is_empty(),
        "nothing published"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn deeply_nested_json_is_400_without_a_stack_overflow() {
    let app = spawn_app_with(
        |mut s| {
            s.http.body_limit_bytes = 1024 * 1024;
            s
        },
        |a| a,
    )
    .await;
    for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
        let deep = format!("{{\"x\":{}1{}}}", open.repeat(10_000), close.repeat(10_000));
        let r = app
            .request(Method::POST, "/v1/events/order.created")
            .header("content-type", "application/json")
            .body(deep)
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 400);
        let body = r.text().await.expect("body");
        assert_eq!(code(&body), "invalid_json");
        assert!(body.contains("recursion limit"), "says why: {body}");
    }
    // Nesting within the limit is fine.
    let mut v = json!(1);
    for _ in 0..100 {
        v = json!([v]);
    }
    assert_eq!(
        app.post_event("order.created", &json!({"x": v}))
            .await
            .status(),
        202
    );
    still_alive(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_body_that_is_not_utf8_or_not_an_object_is_refused_with_its_reason() {
    let app = spawn_app().await;
    let cases: Vec<(&[u8], u16, &str)> = vec![
        (b"{\"name\": \"\xff\xfe\"}", 400, "invalid_json"),
        (b"\xef\xbb\xbf{}", 400, "invalid_json"),
        (b"{\"a\": \"\xed\xa0\x80\"}", 400, "invalid_json"),
        (b"{} {}", 400, "invalid_json"),
        (b"{\"a\": 1e999}", 400, "invalid_json"),
        (b"null", 422, "data_not_an_object"),
        (b"\"text\"", 422, "data_not_an_object"),
        (b"42", 422, "data_not_an_object"),
        (b"[]", 422, "data_not_an_object"),
    ];
    for (body, status, want) in cases {
        let r = app
            .request(Method::POST, "/v1/events/order.created")
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status().as_u16(), status, "{body:?}");
        assert_eq!(code(&r.text().await.expect("body")), want, "{body:?}");
    }
    // An empty body (with its length: 0) is not JSON either.
    let (status, body) = raw(&app, &post_raw("/v1/events/order.created", JSON, b"")).await;
    assert_eq!((status, code(&body).as_str()), (400, "invalid_json"));
    // A non-UTF-8 header value is refused by name, not ignored.
    let (status, body) = raw(
        &app,
        &post_raw(
            "/v1/events/order.created",
            b"content-type: application/\xffjson\r\n",
            b"{}",
        ),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(code(&body), "invalid_header");
    still_alive(&app).await;
    assert!(
        app.drain("warren.audit").await.is_empty(),
        "nothing published"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn huge_headers_are_refused_and_the_server_stays_up() {
    let app = spawn_app().await;
    // One 100 KiB header.
    let big = format!(
        "content-type: application/json\r\nx-padding: {}\r\n",
        "a".repeat(100 * 1024)
    );
    let (status, body) = raw(
        &app,
        &post_raw("/v1/events/order.created", big.as_bytes(), b"{}"),
    )
    .await;
    assert_eq!(status, 431, "{body}");
    assert_eq!(code(&body), "headers_too_large");
    // Many small ones adding up.
    let many: String = (0..90)
        .map(|i| format!("x-h{i}: {}\r\n", "b".repeat(1000)))
        .collect();
    let (status, _) = raw(
        &app,
        &post_raw("/v1/events/order.created", many.as_bytes(), b"{}"),
    )
    .await;
    assert_eq!(status, 431);
    // Beyond what the HTTP parser buffers at all: refused before warren sees it.
    let enormous = format!("x-padding: {}\r\n", "a".repeat(1024 * 1024));
    let (status, _) = raw(
        &app,
        &post_raw("/v1/events/order.created", enormous.as_bytes(), b"{}"),
    )
    .await;
    assert_eq!(status, 431);
    // A huge request id or trace context is not echoed or propagated.
    let r = app
        .request(Method::POST, "/v1/events/order.created")
        .header("x-request-id", "r".repeat(8 * 1024))
        .header("traceparent", "0".repeat(8 * 1024))
        .json(&json!({}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 202);
    let rid = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(rid.len() <= 128, "a fresh id, not the huge one");
    still_alive(&app).await;
    app.cleanup().await;
}

#[tokio::test]
async fn event_names_that_break_the_rule_are_400_with_the_rule() {
    let app = spawn_app().await;
    for name in [
        "order",
        "Order.created",
        "order.",
        ".created",
        "order..created",
        "order.*",
        "order.%23",
        "order.cr%C3%A9ated",
        "order.created%00",
        "order.created%20",
        "order%2Ecreated%2Fx",
        "1order.created",
        "order.cre-ated",
    ] {
        let r = app
            .request(Method::POST, &format!("/v1/events/{name}"))
            .json(&json!({}))
            .send()
            .await
            .expect("answered");
        assert_eq!(r.status(), 400, "{name}");
        let body = r.text().await.expect("body");
        assert_eq!(code(&body), "invalid_event_name", "{name}: {body}");
    }
    let long = format!("order.{}", "a".repeat(200));
    let r = app.post_event(&long, &json!({})).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.expect("body").contains("128"));
    // Percent-escapes are not decoded: `%` breaks the rule, whatever follows it.
    let r = app
        .request(Method::POST, "/v1/events/order.%FF")
        .json(&json!({}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 400);
    assert_eq!(code(&r.text().await.expect("body")), "invalid_event_name");
    // An unknown job (no module consumes it) is 404 with its name.
    let r = app
        .request(Method::POST, "/v1/jobs/nobody.does_this")
        .json(&json!({}))
        .send()
        .await
        .expect("answered");
    assert_eq!(r.status(), 404);
    assert_eq!(code(&r.text().await.expect("body")), "unknown_job");
    still_alive(&app).await;
    assert!(
        app.drain("warren.audit").await.is_empty(),
        "nothing published"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_well_formed_event_no_module_listens_to_is_accepted_and_audited() {
    // Events are facts: the audit queue takes every name, so a name no other module knows is
    // routable and accepted (when no queue at all is bound, the broker returns it and the
    // answer is 503 `unroutable`: see publish::unroutable_event_is_an_error_not_a_202).
    let app = spawn_app().await;
    let r = app
        .post_event("nobody.listens_here", &json!({"n": 1}))
        .await;
    assert_eq!(r.status(), 202);
    let audited = eventually(Duration::from_secs(5), "audited", || async {
        let m = app.drain("warren.audit").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(audited.len(), 1);
    assert!(app.drain("warren.notifications").await.is_empty());
    app.cleanup().await;
}

/// A consumer on `warren.notifications` that records every job and reports failure while
/// `attempt < data.fail_until`.
#[derive(Clone, Default)]
struct Recorder {
    jobs: Arc<Mutex<Vec<Job>>>,
}

impl Recorder {
    fn jobs(&self) -> Vec<Job> {
        self.jobs.lock().expect("lock").clone()
    }
}

#[async_trait::async_trait]
impl Consumer for Recorder {
    fn name(&self) -> &str {
        "notifications"
    }

    fn queue(&self) -> &str {
        "warren.notifications"
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.jobs.lock().expect("lock").push(job.clone());
        let until = job.event.data["fail_until"].as_u64().unwrap_or(0);
        if u64::from(job.attempt) < until {
            Err(JobError::Failed(format!(
                "attempt {} of {until}",
                job.attempt
            )))
        } else {
            Ok(())
        }
    }
}

async fn start_worker(c: &Recorder) -> TestApp {
    let c = c.clone();
    spawn_worker_with(|s| s, move |a| a.consumer(c)).await
}

fn headers(pairs: Vec<(&str, AMQPValue)>) -> FieldTable {
    let mut h = FieldTable::default();
    for (k, v) in pairs {
        h.insert(k.into(), v);
    }
    h
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Waits until `n` messages are parked in `warren.notifications.dead` and takes them.
async fn parked(app: &TestApp, n: usize) -> Vec<lapin::message::BasicGetMessage> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut all = Vec::new();
    loop {
        all.extend(app.drain("warren.notifications.dead").await);
        if all.len() >= n {
            return all;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {n} parked messages, got {}",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn undecodable_foreign_bodies_are_each_parked_with_the_decode_error_and_never_requeued() {
    let c = Recorder::default();
    let app = start_worker(&c).await;
    // Deeper than the decoder's recursion limit, and larger than a failed_jobs row keeps.
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let bodies: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\xff\xfe\x00garbage".to_vec(),
        deep.into_bytes(),
        br#"{"event_id": "not-a-uuid", "event_name": "order.created", "occurred_on": "now", "data": {}}"#.to_vec(),
        br#"{"event_name": "order.created"}"#.to_vec(),
        b"[1, 2, 3]".to_vec(),
    ];
    for body in &bodies {
        app.publish_raw(
            "warren.events",
            "order.created",
            body,
            BasicProperties::default()
                .with_message_id("garbage id".into())
                .with_type("???".into()),
        )
        .await;
    }
    let parked = parked(&app, bodies.len()).await;
    assert!(c.jobs().is_empty(), "no handler saw any of them");
    for m in &parked {
        let p = &m.delivery.properties;
        assert_eq!(
            header_str(p, names::H_REASON).as_deref(),
            Some("undecodable")
        );
        assert!(
            header_str(p, names::H_ERROR)
                .unwrap_or_default()
                .starts_with("undecodable message body: "),
        );
        assert_eq!(header_int(p, H_ATTEMPT), Some(1));
        assert!(bodies.contains(&m.delivery.data), "parked unchanged");
    }
    let rows = eventually(Duration::from_secs(5), "failed_jobs rows", || async {
        let rows = entities::failed_jobs::Entity::find()
            .all(&app.db().await)
            .await
            .expect("query");
        (rows.len() == bodies.len()).then_some(rows)
    })
    .await;
    assert!(rows.iter().all(|r| r.reason == "undecodable"));
    assert!(
        rows.iter()
            .any(|r| r.payload.starts_with("\u{FFFD}\u{FFFD}\u{FFFD}garbage")),
        "a body with NUL and invalid UTF-8 still gets its row"
    );
    assert!(
        rows.iter().any(|r| r.payload.contains("bytes in all")),
        "a large body is cut in its row"
    );
    // Not requeued: nothing comes back anywhere, and no handler ever saw one of them.
    app.settled(&[("warren.notifications", 0)]).await;
    assert!(c.jobs().is_empty(), "no handler saw any of them");
    app.cleanup().await;
}

#[tokio::test]
async fn a_foreign_message_with_garbage_ids_is_handled_under_its_body_id() {
    let c = Recorder::default();
    let app = start_worker(&c).await;
    let event = Event::new("order.created", None, json!({}));
    let props = BasicProperties::default()
        .with_message_id("not-a-uuid".into())
        .with_type("Something Else Entirely".into())
        .with_headers(headers(vec![
            ("traceparent", long("garbage")),
            ("x-request-id", long(&"r".repeat(10_000))),
        ]));
    app.publish_raw("warren.events", "order.created", &event.to_json(), props)
        .await;
    let jobs = eventually(Duration::from_secs(10), "handled", || async {
        let j = c.jobs();
        (!j.is_empty()).then_some(j)
    })
    .await;
    assert_eq!(jobs[0].message_id, event.event_id);
    assert_eq!(jobs[0].event.event_name, "order.created");
    assert_eq!(jobs[0].traceparent, None);
    assert_eq!(jobs[0].request_id, None);
    app.cleanup().await;
}

#[tokio::test]
async fn a_forged_attempt_count_does_not_skip_retries() {
    let c = Recorder::default();
    let app = start_worker(&c).await;
    let forged = [
        AMQPValue::LongLongInt(999),
        AMQPValue::LongLongInt(-7),
        long("3"),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongLongInt(3)])),
    ];
    let mut ids = Vec::new();
    for value in &forged {
        // Always fails: only the runner's own count decides when it is parked.
        let event = Event::new("order.created", None, json!({"fail_until": 99}));
        ids.push(event.event_id);
        let props = BasicProperties::default().with_headers(headers(vec![
            (H_ATTEMPT, value.clone()),
            (names::H_ORIGINAL_ROUTING_KEY, long("admin.forged")),
            (names::H_REASON, long("forged")),
        ]));
        app.publish_raw("warren.events", "order.created", &event.to_json(), props)
            .await;
    }
    let parked = parked(&app, forged.len()).await;
    let max = app.settings.jobs.max_attempts;
    for id in &ids {
        let attempts: Vec<u32> = c
            .jobs()
            .iter()
            .filter(|j| j.message_id == *id)
            .map(|j| j.attempt)
            .collect();
        assert_eq!(attempts, (1..=max).collect::<Vec<_>>(), "every attempt ran");
    }
    assert!(
        c.jobs().iter().all(|j| j.routing_key == "order.created"),
        "the forged origin is not believed"
    );
    for m in &parked {
        let p = &m.delivery.properties;
        assert_eq!(header_str(p, names::H_REASON).as_deref(), Some("exhausted"));
        assert_eq!(header_int(p, H_ATTEMPT), Some(i64::from(max)));
        assert_eq!(
            header_str(p, names::H_ORIGINAL_ROUTING_KEY).as_deref(),
            Some("order.created")
        );
    }
    app.cleanup().await;
}

#[tokio::test]
async fn a_forged_x_death_header_neither_breaks_a_retry_nor_is_read() {
    let c = Recorder::default();
    let app = start_worker(&c).await;
    let garbage_death = AMQPValue::FieldArray(FieldArray::from(vec![
        long("not a table"),
        AMQPValue::FieldTable(headers(vec![("count", long("many"))])),
    ]));
    let mut ids = Vec::new();
    for death in [long("garbage"), garbage_death, AMQPValue::LongLongInt(5)] {
        // Fails once: through the delay tier (where RabbitMQ itself rewrites x-death), back.
        let event = Event::new("order.created", None, json!({"fail_until": 2}));
        ids.push(event.event_id);
        let props = BasicProperties::default().with_headers(headers(vec![
            ("x-death", death),
            ("x-delivery-count", long("x")),
        ]));
        app.publish_raw("warren.events", "order.created", &event.to_json(), props)
            .await;
    }
    let attempts = |jobs: &[Job]| -> Vec<Vec<u32>> {
        ids.iter()
            .map(|id| {
                jobs.iter()
                    .filter(|j| j.message_id == *id)
                    .map(|j| j.attempt)
                    .collect()
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while attempts(&c.jobs()).iter().any(|a| a != &[1, 2]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "each message handled twice (attempts 1 and 2), got {:?}",
            attempts(&c.jobs())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(app.drain("warren.notifications.dead").await.is_empty());
    app.cleanup().await;
}
