//! The publish path: HTTP -> confirm -> every bound durable queue.

use serde_json::json;
use warren::broker::{
    envelope::Event,
    names::{H_ATTEMPT, H_REQUEST_ID, H_TRACEPARENT, header_int, header_str},
};

use crate::helpers::{spawn_app, spawn_app_with};

const ALL_WORK_QUEUES: [&str; 7] = [
    "warren.email",
    "warren.notifications",
    "warren.audit",
    "warren.orders",
    "warren.inventory",
    "warren.payments",
    "warren.saga",
];

#[tokio::test]
async fn event_posted_over_http_reaches_each_bound_queue_and_only_those() {
    let app = spawn_app().await;
    let resp = app
        .request(
            reqwest::Method::POST,
            "/v1/events/order.created?aggregate_id=order-42",
        )
        .header("x-request-id", "req-abc-123")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .json(&json!({"order_id": 42, "customer": "张三"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.headers()["x-request-id"], "req-abc-123");
    assert!(
        resp.headers()["x-execution-time"]
            .to_str()
            .expect("ascii")
            .ends_with("ms")
    );
    let body: serde_json::Value = resp.json().await.expect("json");
    let event_id = body["event_id"].as_str().expect("event_id").to_owned();

    // order.* binds warren.notifications, # binds warren.audit; nothing else is bound. The
    // 202 came after the confirm, so the copies are there; settled shows no more come.
    let only = |queues: &[&'static str]| -> Vec<(&'static str, u64)> {
        ALL_WORK_QUEUES
            .iter()
            .map(|q| (*q, u64::from(queues.contains(q))))
            .collect()
    };
    app.settled(&only(&["warren.notifications", "warren.audit"]))
        .await;
    for queue in ["warren.notifications", "warren.audit"] {
        let msgs = app.drain(queue).await;
        assert_eq!(msgs.len(), 1, "{queue} got exactly one message");
        let m = &msgs[0];
        let p = &m.delivery.properties;
        assert_eq!(
            p.message_id().as_ref().map(|s| s.as_str()),
            Some(event_id.as_str())
        );
        assert_eq!(p.kind().as_ref().map(|s| s.as_str()), Some("order.created"));
        assert_eq!(p.delivery_mode(), &Some(2), "persistent");
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.as_str()),
            Some("req-abc-123")
        );
        assert_eq!(p.app_id().as_ref().map(|s| s.as_str()), Some("warren"));
        assert!(p.timestamp().is_some());
        assert_eq!(header_str(p, H_REQUEST_ID).as_deref(), Some("req-abc-123"));
        assert_eq!(header_int(p, H_ATTEMPT), Some(1));
        let tp = header_str(p, H_TRACEPARENT).expect("traceparent");
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "same trace: {tp}"
        );
        assert_eq!(m.delivery.exchange.as_str(), "warren.events");
        assert_eq!(m.delivery.routing_key.as_str(), "order.created");
        let event: Event = serde_json::from_slice(&m.delivery.data).expect("event body");
        assert_eq!(event.event_id.to_string(), event_id);
        assert_eq!(event.event_name, "order.created");
        assert_eq!(event.aggregate_id.as_deref(), Some("order-42"));
        assert_eq!(event.version, "1.0");
        assert_eq!(event.data, json!({"order_id": 42, "customer": "张三"}));
        assert_eq!(event.event_id.get_version_num(), 7);
    }

    // A user.* event goes to notifications and audit too; an unrelated one only to audit.
    for (name, queues) in [
        (
            "user.registered",
            &["warren.notifications", "warren.audit"][..],
        ),
        ("invoice.paid", &["warren.audit"][..]),
    ] {
        let r = app.post_event(name, &json!({"n": 1})).await;
        assert_eq!(r.status(), 202);
        let body: serde_json::Value = r.json().await.expect("json");
        app.settled(&only(queues)).await;
        for queue in queues {
            let msgs = app.drain(queue).await;
            assert_eq!(msgs.len(), 1, "{name} in {queue}");
            assert_eq!(
                msgs[0].properties.message_id().as_ref().map(|s| s.as_str()),
                body["event_id"].as_str(),
                "{name} in {queue}"
            );
        }
    }
    app.cleanup().await;
}

#[tokio::test]
async fn unroutable_event_is_an_error_not_a_202() {
    let app = spawn_app().await;
    // Remove the two queues that would take invoice.paid: the message is now unroutable, and
    // with `mandatory` the broker returns it instead of dropping it silently.
    for q in ["warren.audit", "warren.notifications"] {
        app.vhost
            .api
            .delete(&format!(
                "queues/{}/{q}",
                warren::broker::topology::encode(&app.vhost.name)
            ))
            .await
            .expect("delete queue");
    }
    let resp = app.post_event("invoice.paid", &json!({"n": 1})).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "5", "http.retry_after_secs");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unroutable", "{body}");
    app.cleanup().await;
}

#[tokio::test]
async fn unreachable_broker_gives_503_with_retry_after_and_readyz_fails() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let app = spawn_app_with_broker_at(port).await;
    let resp = app.post_event("order.created", &json!({"id": 1})).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "7");
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    assert!(body["request_id"].is_string());

    let ready = app
        .request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.expect("json");
    assert_eq!(body["status"], "not_ready", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    assert!(
        body["checks"]["broker"].as_str().is_some_and(|b| {
            b.starts_with("cannot get an AMQP connection: ") && b.contains("Connection refused")
        }),
        "the broker's refusal, not a timeout: {body}"
    );
    assert_eq!(body["checks"]["topology"], "not declared yet", "{body}");
    // Liveness does not depend on the broker.
    let live = app
        .request(reqwest::Method::GET, "/healthz")
        .send()
        .await
        .expect("sent");
    assert_eq!(live.status(), 200);
    app.cleanup().await;
}

async fn spawn_app_with_broker_at(port: u16) -> crate::helpers::TestApp {
    use crate::helpers::{TestApp, TestDb, TestVhost, test_settings};
    // Built by hand: spawn_app waits for the topology, which never comes here.
    let vhost = TestVhost::new().await;
    let db = TestDb::new().await;
    let mut s = test_settings(&vhost, &db.url);
    s.amqp.url = warren::config::Secret::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
    // Nothing listens on the port, so connecting fails at once whatever the timeout; the
    // timeout also bounds /readyz's database check, which 500 ms failed once on a loaded
    // machine ("database" not ok while PostgreSQL was up).
    s.amqp.connect_timeout_ms = 5_000;
    s.http.retry_after_secs = 7;
    // Without the events outbox (tests/api/outbox.rs covers it), an outage is a 503.
    s.outbox.enabled = false;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = warren::App::new(s.clone())
        .start(&[warren::Role::Http], shutdown.clone())
        .await
        .expect("starts without a broker");
    let addr = running.http_addr.expect("http");
    TestApp {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        vhost,
        db,
        running: Some(running),
        shutdown,
        settings: s,
    }
}

#[tokio::test]
async fn sqlite_is_the_zero_setup_database() {
    let dir = std::env::temp_dir().join(format!("warren-test-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let url = format!("sqlite://{}?mode=rwc", dir.join("warren.db").display());
    let u2 = url.clone();
    let app = spawn_app_with(
        move |mut s| {
            s.database.url = warren::config::Secret::new(u2);
            s
        },
        |a| a,
    )
    .await;
    // Sync mode runs the built-in audit listener, which writes through sea-orm to SQLite.
    let resp = app
        .request(
            reqwest::Method::POST,
            "/v1/events/user.registered?mode=sync",
        )
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    let audit = body["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["listener"] == "audit.record")
        .cloned()
        .expect("the audit listener ran");
    assert_eq!(audit["status"], "success", "{body}");
    let ready = app
        .request(reqwest::Method::GET, "/readyz")
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200);
    app.cleanup().await;
    let _ = std::fs::remove_dir_all(dir);
}
