//! Idempotent publish: a publisher that retries, many times and at once, after timeouts it
//! caused itself, leaves one event in effect (one audit row, one notification) and gets one
//! `event_id`, for a CloudEvent's `source` + `id` and for an `Idempotency-Key`; a key reused
//! with another body is 422; keys are per caller; an expired key is forgotten and deleted.

use std::time::Duration;

use entities::{event_log, idempotency_keys, notifications};
use futures_util::future::join_all;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{Value, json};
use warren::config::{Scope, Secret, TokenSetting};

use crate::helpers::{TestApp, eventually, spawn_app_with, spawn_worker_with};

/// An answer: status, body, `Idempotent-Replayed`.
type Answer = (u16, Value, Option<String>);

/// The answer's `Idempotent-Replayed` header.
fn replayed(r: &reqwest::Response) -> Option<String> {
    r.headers()
        .get("idempotent-replayed")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Sends the request `build` makes until it is answered: the first try is cut off by the
/// client after `cut` when given (the publisher's own timeout), later tries wait for the answer.
async fn until_answered(
    build: impl Fn() -> reqwest::RequestBuilder,
    cut: Option<Duration>,
) -> Answer {
    for attempt in 0..50 {
        let mut req = build();
        if let (0, Some(cut)) = (attempt, cut) {
            req = req.timeout(cut);
        }
        let Ok(r) = req.send().await else { continue };
        let status = r.status().as_u16();
        let replayed = replayed(&r);
        let Ok(body) = r.json().await else { continue };
        return (status, body, replayed);
    }
    panic!("no answer in 50 tries");
}

/// Twenty publishers at once, every other one cutting off its first try after a few
/// milliseconds and retrying; returns every answer.
async fn twenty_retrying(build: impl Fn() -> reqwest::RequestBuilder + Clone) -> Vec<Answer> {
    let tasks = (0..20u64).map(|i| {
        let build = build.clone();
        let cut = (i % 2 == 0).then(|| Duration::from_millis(1 + i / 2));
        async move { until_answered(build, cut).await }
    });
    join_all(tasks).await
}

/// After the queues settled: one audit row and one notification, both of `event_id`.
async fn one_effect(app: &TestApp, event_id: &str) {
    app.settled(&[("warren.notifications", 0), ("warren.audit", 0)])
        .await;
    let db = app.db().await;
    // Only user.registered: on a busy machine a slow request adds a system.slow_request row.
    let rows: Vec<_> = event_log::Entity::find()
        .all(&db)
        .await
        .expect("audit rows")
        .into_iter()
        .filter(|r| r.event_name == "user.registered")
        .collect();
    assert_eq!(rows.len(), 1, "one audit row: {rows:?}");
    assert_eq!(rows[0].event_id.to_string(), event_id);
    let notes = notifications::Entity::find()
        .all(&db)
        .await
        .expect("notifications");
    assert_eq!(notes.len(), 1, "one notification: {notes:?}");
    assert_eq!(notes[0].event_id.to_string(), event_id);
}

fn one_id(answers: &[Answer], id_name: &str) -> String {
    for (status, body, _) in answers {
        assert_eq!(*status, 202, "{body}");
    }
    let first = answers[0].1[id_name].as_str().expect("an id").to_owned();
    for (_, body, _) in answers {
        assert_eq!(
            body[id_name],
            first.as_str(),
            "every answer names one event: {answers:?}"
        );
    }
    first
}

async fn worker() -> TestApp {
    spawn_worker_with(|s| s, |a| a.modules(["audit", "notifications"])).await
}

#[tokio::test]
async fn a_cloudevent_sent_again_and_again_at_once_is_one_event() {
    let app = worker().await;
    let body = json!({
        "specversion": "1.0", "id": "signup-1", "source": "/accounts",
        "type": "user.registered", "subject": "user-1", "data": {"name": "Ada"},
    })
    .to_string();
    let (http, url) = (app.http.clone(), format!("{}/v1/events", app.base));
    let answers = twenty_retrying(move || {
        http.post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(body.clone())
    })
    .await;
    let id = one_id(&answers, "event_id");
    assert_eq!(
        id,
        warren::broker::envelope::cloudevent_event_id("/accounts", "signup-1").to_string()
    );
    assert!(
        answers.iter().any(|a| a.2.as_deref() == Some("true")),
        "repeats are answered from the record: {answers:?}"
    );
    one_effect(&app, &id).await;
    app.cleanup().await;
}

#[tokio::test]
async fn an_idempotency_key_retried_again_and_again_at_once_is_one_event() {
    let app = worker().await;
    let (http, url) = (
        app.http.clone(),
        format!("{}/v1/events/user.registered?aggregate_id=user-2", app.base),
    );
    let answers = twenty_retrying(move || {
        http.post(&url)
            .header("idempotency-key", "signup-user-2")
            .json(&json!({"name": "Grace"}))
    })
    .await;
    let id = one_id(&answers, "event_id");
    let fresh = answers
        .iter()
        .filter(|a| a.2.as_deref() == Some("false"))
        .count();
    assert!(fresh >= 1, "{answers:?}");
    assert!(answers.iter().all(|a| a.2.is_some()), "{answers:?}");
    one_effect(&app, &id).await;
    app.cleanup().await;
}

async fn post(app: &TestApp, path: &str, key: &str, token: Option<&str>, body: &Value) -> Answer {
    let mut req = app
        .request(reqwest::Method::POST, path)
        .header("idempotency-key", key)
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("sent");
    let status = r.status().as_u16();
    let replayed = replayed(&r);
    (status, r.json().await.expect("json"), replayed)
}

#[tokio::test]
async fn a_key_reused_with_another_body_is_422_on_each_route() {
    let app = spawn_app_with(|s| s, |a| a).await;
    let order = |total: i64| json!({"order_no": "o-77", "user_id": "u-1", "items": [{"sku": "s-1", "qty": 1, "price": total}], "total_amount": total});
    for (path, id_name, first, other) in [
        (
            "/v1/events/order.created",
            "event_id",
            json!({"n": 1}),
            json!({"n": 2}),
        ),
        (
            "/v1/jobs/email.send",
            "job_id",
            json!({"email": "a@example.com"}),
            json!({"email": "b@example.com"}),
        ),
        ("/v1/orders", "saga_id", order(5), order(6)),
    ] {
        let (status, a, replayed) = post(&app, path, "k-1", None, &first).await;
        assert_eq!(
            (status, replayed.as_deref()),
            (202, Some("false")),
            "{path}: {a}"
        );
        let (status, again, replayed) = post(&app, path, "k-1", None, &first).await;
        assert_eq!(
            (status, replayed.as_deref()),
            (202, Some("true")),
            "{path}: {again}"
        );
        assert_eq!(again, a, "{path}: the same answer");
        let (status, e, _) = post(&app, path, "k-1", None, &other).await;
        assert_eq!(status, 422, "{path}: {e}");
        assert_eq!(e["error"]["code"], "idempotency_key_reused", "{path}: {e}");
        assert_eq!(
            e[id_name], a[id_name],
            "{path}: the 422 names the first answer's id"
        );
    }
    // A key too long is refused by name, as on POST /v1/sagas/{kind}.
    let (status, e, _) = post(
        &app,
        "/v1/events/order.created",
        &"k".repeat(256),
        None,
        &json!({}),
    )
    .await;
    assert_eq!(status, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("Idempotency-Key"),
        "{e}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn keys_are_per_caller_and_expire_after_the_retention_window() {
    let token = |t: &str, name: &str| TokenSetting::Scoped {
        token: Secret::new(t),
        scopes: vec![Scope::Publish, Scope::Read, Scope::Admin],
        name: Some(name.to_owned()),
    };
    let app = spawn_worker_with(
        |mut s| {
            s.http.tokens = vec![
                token("token-a-0123456789", "a"),
                token("token-b-0123456789", "b"),
            ];
            s.http.idempotency_retention_secs = 1;
            s
        },
        |a| a.modules(["maintenance"]),
    )
    .await;
    let path = "/v1/events/invoice.paid";
    let body = json!({"n": 1});
    let (_, a, _) = post(&app, path, "same", Some("token-a-0123456789"), &body).await;
    let (_, b, replayed) = post(&app, path, "same", Some("token-b-0123456789"), &body).await;
    assert_eq!(
        replayed.as_deref(),
        Some("false"),
        "another caller's key is its own: {b}"
    );
    assert_ne!(a["event_id"], b["event_id"]);
    // Past the window the key is forgotten: the same request is answered afresh (with the same
    // derived id, so an inbox still drops it).
    let again = eventually(Duration::from_secs(10), "the key to expire", || async {
        let (_, again, replayed) =
            post(&app, path, "same", Some("token-a-0123456789"), &body).await;
        (replayed.as_deref() == Some("false")).then_some(again)
    })
    .await;
    assert_eq!(again["event_id"], a["event_id"]);
    // The maintenance job deletes expired answers (the one just recorded expires a second
    // later: each check enqueues a cleanup and counts).
    let db = app.db().await;
    eventually(Duration::from_secs(15), "expired keys deleted", || async {
        let r = app
            .request(reqwest::Method::POST, "/v1/jobs/maintenance.cleanup")
            .bearer_auth("token-a-0123456789")
            .json(&json!({}))
            .send()
            .await
            .ok()?;
        assert_eq!(r.status(), 202);
        let n = idempotency_keys::Entity::find().count(&db).await.ok()?;
        (n == 0).then_some(())
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn with_the_broker_away_a_keyed_event_waits_in_the_outbox_once_and_its_answer_stands() {
    let gate = crate::gate::BrokerGate::to_test_broker().await;
    let port = gate.port;
    let app = crate::helpers::spawn_roles(
        &[warren::Role::Http],
        move |mut s| {
            let mut url = url::Url::parse(s.amqp.url.expose()).expect("url");
            url.set_port(Some(port)).expect("port");
            s.amqp.url = Secret::new(url.to_string());
            s.amqp.connect_timeout_ms = 500;
            s.amqp.publish_timeout_ms = 1_000;
            s.outbox.relay_ms = 200;
            // Only the messages this test posts: no system.slow_request events.
            s.http.slow_request_ms = 60_000;
            s
        },
        |a| a,
    )
    .await;
    gate.close();
    crate::outbox::until_broker_refused(&app).await;
    let path = "/v1/events/order.updated";
    let body = json!({"n": 1});
    let (status, first, _) = post(&app, path, "away-1", None, &body).await;
    assert_eq!(
        (status, first["stored"].as_str()),
        (202, Some("outbox")),
        "{first}"
    );
    let (_, again, replayed) = post(&app, path, "away-1", None, &body).await;
    assert_eq!(
        (again.clone(), replayed.as_deref()),
        (first.clone(), Some("true"))
    );
    let ce =
        json!({"specversion": "1.0", "id": "away-2", "source": "/shop", "type": "order.updated"})
            .to_string();
    let send_ce = || {
        app.request(reqwest::Method::POST, "/v1/events")
            .header("content-type", "application/cloudevents+json")
            .body(ce.clone())
            .send()
    };
    let c1: Value = send_ce().await.expect("sent").json().await.expect("json");
    assert_eq!(c1["stored"], "outbox", "{c1}");
    let c2 = send_ce().await.expect("sent");
    assert_eq!(c2.headers()["idempotent-replayed"], "true");
    assert_eq!(c2.json::<Value>().await.expect("json"), c1);
    let db = app.db().await;
    let rows = entities::event_outbox::Entity::find()
        .count(&db)
        .await
        .expect("count");
    assert_eq!(rows, 2, "one outbox row per event");

    gate.open();
    eventually(Duration::from_secs(20), "the outbox empties", || async {
        let n = entities::event_outbox::Entity::find()
            .count(&db)
            .await
            .ok()?;
        (n == 0).then_some(())
    })
    .await;
    app.settled(&[("warren.audit", 2)]).await;
    let mut ids: Vec<String> = app
        .drain("warren.audit")
        .await
        .iter()
        .map(|m| crate::helpers::message_id(&m.properties))
        .collect();
    ids.sort();
    let mut want = vec![
        first["event_id"].as_str().expect("id").to_owned(),
        c1["event_id"].as_str().expect("id").to_owned(),
    ];
    want.sort();
    assert_eq!(
        ids, want,
        "each published once, with the id the answer named"
    );
    // The record stands once the broker is back: the repeat is still answered, not republished.
    let (_, later, replayed) = post(&app, path, "away-1", None, &body).await;
    assert_eq!((later, replayed.as_deref()), (first, Some("true")));
    app.cleanup().await;
}
