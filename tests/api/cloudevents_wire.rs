//! CloudEvents on the wire, both ways, checked with the CloudEvents Python SDK's RabbitMQ
//! binding (`cloudevents.core.bindings.rabbitmq`) through pika (`tests/wire/amqp_cloudevent.py`,
//! run with `WARREN_TEST_PYTHON`, the venv `scripts/test.sh` makes):
//!
//! - warren's own event, published over HTTP, read by a foreign consumer with `from_binary`:
//!   every attribute is what warren answered, and its data is warren's envelope;
//! - a foreign CloudEvent, made with `to_binary` and published by pika, taken by warren's
//!   consumers (the audit module and an HTTP subscription) like its own, once when it is
//!   published twice.

use std::{path::PathBuf, process::Command, time::Duration};

use chrono::{DateTime, Utc};
use lapin::{
    Connection, ConnectionProperties,
    options::{QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};
use warren::broker::{cloudevent, envelope::cloudevent_event_id, names::EVENTS_EXCHANGE, vhost_of};

use crate::{
    helpers::{TestApp, eventually, spawn_worker_with},
    subscriptions::{Receiver, answer, subscription},
};

/// The queue the foreign consumer reads warren's event from.
const READER: &str = "ce.reader";

fn python() -> PathBuf {
    match std::env::var_os("WARREN_TEST_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "WARREN_TEST_PYTHON is not set: run scripts/test.sh, which makes the venv \
             target/pyenv (cloudevents, pika) and exports it"
        ),
    }
}

/// Runs the SDK helper; its stdout, or the test fails with its stderr.
fn sdk(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/wire/amqp_cloudevent.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .expect("the SDK helper runs");
    assert!(
        out.status.success(),
        "amqp_cloudevent.py {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn start(rx_addr: std::net::SocketAddr) -> TestApp {
    let sub = subscription("shop", rx_addr, &["com.example.#"]);
    let app = spawn_worker_with(
        move |mut s| {
            s.subscriptions = vec![sub];
            s
        },
        |a| a.modules(["audit", "sub.shop"]),
    )
    .await;
    // The foreign consumer's queue, bound before warren publishes.
    let conn = Connection::connect(&app.vhost.amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        READER.into(),
        // Durable: RabbitMQ 4.0 deprecates transient non-exclusive queues.
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.queue_bind(
        READER.into(),
        EVENTS_EXCHANGE.into(),
        "order.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let _ = conn.close(200, "".into()).await;
    app
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|| panic!("not an RFC 3339 time: {v}"))
}

#[tokio::test]
async fn warrens_event_is_a_cloudevent_to_the_sdk_and_the_sdks_event_is_taken_once() {
    let (rx, addr) = Receiver::start(&[("shop", vec![answer(204)])]).await;
    let app = start(addr).await;
    let url = app.vhost.amqp_url();

    // (a) warren publishes; the SDK reads it.
    let resp = app
        .request(
            reqwest::Method::POST,
            "/v1/events/order.created?aggregate_id=o-42",
        )
        .header("x-request-id", "req-ce-1")
        .json(&json!({"order_id": 42, "customer": "张三"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 202);
    let answered: Value = resp.json().await.expect("json");
    let event_id = answered["event_id"].as_str().expect("event_id");
    let read: Value = serde_json::from_str(&sdk(&["read", &url, READER])).expect("JSON");
    let attrs = &read["attributes"];
    assert_eq!(attrs["specversion"], "1.0");
    assert_eq!(attrs["id"], event_id, "ce-id is the event id: {read}");
    assert_eq!(
        attrs["source"],
        cloudevent::source(&vhost_of(&url), EVENTS_EXCHANGE)
    );
    assert_eq!(attrs["type"], "order.created");
    assert_eq!(attrs["subject"], "o-42");
    assert_eq!(attrs["datacontenttype"], "application/json");
    assert!(attrs.get("dataschema").is_none(), "{read}");
    // The data is warren's envelope, the body every consumer already reads.
    let data = &read["data"];
    assert_eq!(data["event_id"], event_id);
    assert_eq!(data["event_name"], "order.created");
    assert_eq!(data["aggregate_id"], "o-42");
    assert_eq!(data["data"], json!({"order_id": 42, "customer": "张三"}));
    // ce-time in milliseconds, as the HTTP deliveries write it.
    let occurred = time(&data["occurred_on"]);
    assert_eq!(
        time(&attrs["time"]).timestamp_millis(),
        occurred.timestamp_millis()
    );
    // warren's own headers stay beside the ce-* ones.
    let warren_headers = read["warren_headers"].as_array().expect("list");
    for h in ["x-request-id", "x-warren-attempt", "traceparent"] {
        assert!(warren_headers.contains(&json!(h)), "{h}: {read}");
    }

    // (b) the SDK publishes (twice, a publisher's retry); warren takes it once.
    let ce_attrs = json!({
        "id": "order-7",
        "source": "/shop/eu",
        "type": "com.example.order.created",
        "subject": "order-7",
        "time": "2026-12-02T10:00:00Z",
        "tenant": "acme",
    })
    .to_string();
    let ce_data = json!({"total": 12.5}).to_string();
    for _ in 0..2 {
        sdk(&[
            "publish",
            &url,
            EVENTS_EXCHANGE,
            "com.example.order.created",
            &ce_attrs,
            &ce_data,
        ]);
    }
    let want_id = cloudevent_event_id("/shop/eu", "order-7").to_string();
    let _first: Value = eventually(Duration::from_secs(15), "the audit row", || async {
        let v: Value = app
            .request(reqwest::Method::GET, "/v1/events?aggregate_id=order-7")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (!v["events"].as_array()?.is_empty()).then_some(v)
    })
    .await;
    let got = rx.wait("shop", 1, Duration::from_secs(15)).await;
    // Both copies consumed, by both consumers, nothing parked or waiting.
    app.settled(&[("warren.audit", 0), ("warren.sub.shop", 0)])
        .await;
    let rows: Value = app.get_json("/v1/events?aggregate_id=order-7").await;
    let list = rows["events"].as_array().expect("events");
    assert_eq!(
        list.len(),
        1,
        "one audit row for the same CloudEvent twice: {rows}"
    );
    assert_eq!(list[0]["event_id"], want_id.as_str());
    assert_eq!(list[0]["event_name"], "com.example.order.created");
    assert_eq!(list[0]["data"], json!({"total": 12.5}));
    let got_all = rx.got("shop");
    assert_eq!(got_all.len(), 1, "one delivery: {got_all:?}; first {got:?}");
    let d = &got_all[0];
    assert_eq!(d.header("ce-id"), Some("order-7"));
    assert_eq!(d.header("ce-source"), Some("/shop/eu"));
    assert_eq!(d.header("ce-type"), Some("com.example.order.created"));
    assert_eq!(d.header("ce-subject"), Some("order-7"));
    assert_eq!(d.header("ce-tenant"), Some("acme"));
    assert_eq!(
        serde_json::from_slice::<Value>(&d.body).expect("JSON body"),
        json!({"total": 12.5})
    );
    app.cleanup().await;
}
