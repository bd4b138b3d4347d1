//! CloudEvents ingress (`POST /v1/events`): the three content modes of the CloudEvents HTTP
//! binding, the required attributes, percent-decoded binary headers, a batch with a bad event,
//! reverse-DNS types, and the CloudEvents Python SDK as a foreign publisher.

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::{Value, json};
use warren::broker::envelope::cloudevent_event_id;

use crate::helpers::{TestApp, eventually, spawn_app, spawn_worker_with};

const STRUCTURED: &str = "application/cloudevents+json; charset=utf-8";
const BATCH: &str = "application/cloudevents-batch+json";

fn ce(id: &str, ty: &str) -> Value {
    json!({"specversion": "1.0", "id": id, "source": "/shop", "type": ty})
}

async fn post(app: &TestApp, content_type: &str, body: &Value) -> (u16, Value) {
    let r = app
        .request(reqwest::Method::POST, "/v1/events")
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .expect("sent");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

/// A binary-mode request with `headers` and `body`.
async fn post_binary(app: &TestApp, headers: &[(&str, &str)], body: &'static str) -> (u16, Value) {
    let mut req = app.request(reqwest::Method::POST, "/v1/events");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.body(body).send().await.expect("sent");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

/// The audit log's rows, once there are `n`.
async fn audit_rows(app: &TestApp, n: usize) -> Vec<Value> {
    eventually(Duration::from_secs(15), "audit rows", || async {
        let v = app.get_json("/v1/events?limit=100").await;
        let rows = v["events"].as_array()?.clone();
        (rows.len() >= n).then_some(rows)
    })
    .await
}

fn row<'a>(rows: &'a [Value], event_id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["event_id"] == event_id)
        .unwrap_or_else(|| panic!("no audit row {event_id} in {rows:?}"))
}

#[tokio::test]
async fn each_mode_is_accepted_and_reaches_the_audit_log_with_its_extensions() {
    let app = spawn_worker_with(|s| s, |a| a.modules(["audit"])).await;

    // Structured, reverse-DNS type, an extension, a subject.
    let mut order = ce("o-1", "com.example.order.created");
    order["subject"] = json!("order-1");
    order["tenant"] = json!("acme");
    order["priority"] = json!(2);
    order["data"] = json!({"total": 12});
    let (status, a) = post(&app, STRUCTURED, &order).await;
    assert_eq!(status, 202, "{a}");
    let structured_id = cloudevent_event_id("/shop", "o-1").to_string();
    assert_eq!(a["event_id"], structured_id.as_str(), "{a}");
    assert_eq!(
        (a["id"].as_str(), a["source"].as_str()),
        (Some("o-1"), Some("/shop"))
    );
    assert_eq!(a["status"], "accepted");
    assert_eq!(a["stored"], "broker");

    // Binary: percent-encoded values (a space, UTF-8, a percent sign), text data.
    let (status, b) = post_binary(
        &app,
        &[
            ("ce-specversion", "1.0"),
            ("ce-id", "note%201"),
            ("ce-source", "/shop"),
            ("ce-type", "com.acme-shop.Order.Noted"),
            ("ce-comment", "caf%C3%A9%20100%25"),
            ("content-type", "text/plain; charset=utf-8"),
        ],
        "hello",
    )
    .await;
    assert_eq!(status, 202, "{b}");
    assert_eq!(b["id"], "note 1", "the id is percent-decoded: {b}");
    let binary_id = cloudevent_event_id("/shop", "note 1").to_string();
    assert_eq!(b["event_id"], binary_id.as_str());

    // Batched: the middle event has no source and is refused on its own.
    let mut bad = ce("b-2", "com.example.order.created");
    bad.as_object_mut().map(|m| m.remove("source"));
    let batch = json!([
        ce("b-1", "com.example.order.paid"),
        bad,
        ce("b-3", "com.example.order.shipped")
    ]);
    let (status, c) = post(&app, BATCH, &batch).await;
    assert_eq!(status, 207, "{c}");
    assert_eq!(
        (c["accepted"].as_u64(), c["refused"].as_u64()),
        (Some(2), Some(1)),
        "{c}"
    );
    let results = c["results"].as_array().expect("results");
    assert_eq!(results.len(), 3);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["index"], i, "{c}");
    }
    assert_eq!(results[0]["status"], "accepted");
    assert_eq!(results[2]["status"], "accepted");
    assert_eq!(results[1]["status"], "refused");
    assert_eq!(results[1]["id"], "b-2");
    assert_eq!(results[1]["error"]["code"], "invalid_cloudevent");
    assert_eq!(results[1]["error"]["attribute"], "source");
    assert_eq!(results[1]["error"]["status"], 400);

    let rows = audit_rows(&app, 4).await;
    assert_eq!(
        rows.len(),
        4,
        "the refused event is not published: {rows:?}"
    );
    let s = row(&rows, &structured_id);
    assert_eq!(s["event_name"], "com.example.order.created");
    assert_eq!(s["aggregate_id"], "order-1");
    assert_eq!(s["data"], json!({"total": 12}));
    assert_eq!(s["cloudevent"]["id"], "o-1");
    assert_eq!(s["cloudevent"]["source"], "/shop");
    assert_eq!(
        s["cloudevent"]["extensions"],
        json!({"tenant": "acme", "priority": 2})
    );
    let b = row(&rows, &binary_id);
    assert_eq!(b["event_name"], "com.acme-shop.Order.Noted");
    assert_eq!(b["data"], "hello");
    assert_eq!(
        b["cloudevent"]["datacontenttype"],
        "text/plain; charset=utf-8"
    );
    assert_eq!(b["cloudevent"]["extensions"]["comment"], "café 100%");
    for id in ["b-1", "b-3"] {
        row(&rows, &cloudevent_event_id("/shop", id).to_string());
    }
    app.cleanup().await;
}

#[tokio::test]
async fn each_missing_required_attribute_is_a_400_naming_it() {
    let app = spawn_app().await;
    for attr in ["id", "source", "specversion", "type"] {
        let mut e = ce("m-1", "order.created");
        e.as_object_mut().map(|m| m.remove(attr));
        let (status, body) = post(&app, STRUCTURED, &e).await;
        assert_eq!(status, 400, "structured without {attr}: {body}");
        assert_eq!(body["error"]["code"], "invalid_cloudevent", "{body}");
        assert_eq!(body["error"]["attribute"], attr, "{body}");

        let mut headers = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "m-1"),
            ("ce-source", "/shop"),
            ("ce-type", "order.created"),
        ];
        headers.retain(|(k, _)| *k != format!("ce-{attr}"));
        if attr == "specversion" {
            // Without ce-specversion a request is in no CloudEvents mode at all.
            let (status, body) = post_binary(&app, &headers, "{}").await;
            assert_eq!(status, 415, "{body}");
            assert_eq!(body["error"]["code"], "not_a_cloudevent", "{body}");
            continue;
        }
        let (status, body) = post_binary(&app, &headers, "{}").await;
        assert_eq!(status, 400, "binary without {attr}: {body}");
        assert_eq!(body["error"]["attribute"], attr, "{body}");
    }
    // Wrong spec version, a type warren cannot route, a bad extension name.
    for (field, value, attr) in [
        ("specversion", json!("0.3"), "specversion"),
        ("type", json!("order.*"), "type"),
        ("type", json!("order..created"), "type"),
        ("Tenant", json!("x"), "Tenant"),
    ] {
        let mut e = ce("m-2", "order.created");
        e[field] = value;
        let (status, body) = post(&app, STRUCTURED, &e).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["attribute"], attr, "{body}");
    }
    // Plain JSON is not a CloudEvent: the answer says what is accepted.
    let (status, body) = post(&app, "application/json", &json!({"a": 1})).await;
    assert_eq!(status, 415, "{body}");
    let msg = body["error"]["message"].as_str().expect("message");
    assert!(
        msg.contains("application/cloudevents+json") && msg.contains("ce-specversion"),
        "{msg}"
    );
    // An empty batch and an over-long one.
    for n in [0, warren::http::MAX_BATCH + 1] {
        // Small items: the count is checked before any event (and the tests' body limit is 4 KiB).
        let items: Vec<Value> = (0..n).map(|_| json!({})).collect();
        let (status, body) = post(&app, BATCH, &json!(items)).await;
        assert_eq!(status, 400, "{n} events: {body}");
        assert_eq!(body["error"]["code"], "invalid_cloudevent_batch");
    }
    app.cleanup().await;
}

fn python() -> PathBuf {
    match std::env::var_os("WARREN_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "WARREN_TEST_PYTHON is not set: run scripts/test.sh, which makes target/pyenv with \
             the cloudevents package (or export WARREN_TEST_PYTHON=target/pyenv/bin/python)"
        ),
    }
}

/// The README's Python example, run against a live warren: the SDK's structured and binary
/// messages are accepted, and their attributes and extensions reach the audit log.
#[tokio::test]
async fn the_cloudevents_python_sdk_publishes_in_both_modes() {
    let app = spawn_worker_with(|s| s, |a| a.modules(["audit"])).await;
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wire/publish_cloudevents.py");
    let base = app.base.clone();
    let out =
        tokio::task::spawn_blocking(move || Command::new(python()).arg(script).arg(base).output())
            .await
            .expect("joined")
            .expect("python runs");
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    let order_id = cloudevent_event_id("/shop", "order-42").to_string();
    let note_id = cloudevent_event_id("/shop", "note-7").to_string();
    assert_eq!(answers[0]["event_id"], order_id.as_str());
    assert_eq!(answers[1]["event_id"], note_id.as_str());
    let rows = audit_rows(&app, 2).await;
    let order = row(&rows, &order_id);
    assert_eq!(order["event_name"], "com.example.order.created");
    assert_eq!(order["aggregate_id"], "order-42");
    assert_eq!(order["data"], json!({"order_no": "42", "total": 1999}));
    assert_eq!(order["cloudevent"]["extensions"], json!({"tenant": "acme"}));
    let note = row(&rows, &note_id);
    assert_eq!(note["data"], "thanks ✓");
    assert_eq!(
        note["cloudevent"]["extensions"]["comment"],
        "café, 100% \"fresh\""
    );
    app.cleanup().await;
}
