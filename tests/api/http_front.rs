//! The HTTP front: sync dispatch, validation, auth, metrics.

use reqwest::Method;
use sea_orm::{Database, EntityTrait};
use serde_json::json;
use warren::{
    broker::envelope::Event,
    config::Secret,
    dispatch::{Listener, ListenerError},
};

use crate::{
    helpers::{spawn_app, spawn_app_with},
    smtp::SmtpSink,
};

struct Answer(&'static str);

#[async_trait::async_trait]
impl Listener for Answer {
    async fn handle(&self, event: &Event) -> Result<serde_json::Value, ListenerError> {
        Ok(json!({"by": self.0, "saw": event.event_name}))
    }
}

struct Fails;

#[async_trait::async_trait]
impl Listener for Fails {
    async fn handle(&self, _: &Event) -> Result<serde_json::Value, ListenerError> {
        Err(ListenerError::new("smtp refused the message"))
    }
}

#[tokio::test]
async fn sync_mode_returns_results_in_priority_order_with_a_failing_listener_in_the_middle() {
    let sink = SmtpSink::start().await;
    let smtp = sink.url();
    let app = spawn_app_with(
        move |mut s| {
            s.email.smtp_url = Secret::new(smtp);
            s
        },
        |a| {
            a.listener(
                "send_welcome_email",
                "user.registered",
                100,
                Answer("email"),
            )
            .listener("credit_points", "user.*", 50, Fails)
            .listener("fraud_check", "user.registered", 300, Answer("fraud"))
            .listener("order_only", "order.*", 1000, Answer("never"))
        },
    )
    .await;
    let resp = app
        .request(
            Method::POST,
            "/v1/events/user.registered?mode=sync&aggregate_id=u-7",
        )
        .json(&json!({"email": "x@example.com"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    let results = body["results"].as_array().expect("results");
    let order: Vec<(&str, &str)> = results
        .iter()
        .map(|r| {
            (
                r["listener"].as_str().unwrap_or(""),
                r["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        order,
        vec![
            ("fraud_check", "success"),
            ("send_welcome_email", "success"),
            ("credit_points", "failed"),
            ("email.welcome", "success"),
            ("notifications.store", "success"),
            ("audit.record", "success"),
        ]
    );
    // The built-in listeners did the consumers' work inside the request: the welcome e-mail
    // reached the SMTP server, the notification row exists.
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(mails[0].to[0].contains("x@example.com"), "{mails:?}");
    assert!(mails[0].data.contains("Welcome"), "{mails:?}");
    assert_eq!(
        results[1]["result"],
        json!({"by": "email", "saw": "user.registered"})
    );
    assert_eq!(results[2]["error"], "smtp refused the message");
    // The built-in audit listener really wrote the row.
    let event_id: uuid::Uuid = body["event_id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("uuid");
    let db = Database::connect(&app.db.url).await.expect("db");
    let row = entities::event_log::Entity::find_by_id(event_id)
        .one(&db)
        .await
        .expect("query");
    let row = row.expect("audit row written");
    assert_eq!(row.aggregate_id.as_deref(), Some("u-7"));
    assert_eq!(row.data, json!({"email": "x@example.com"}));
    let notes = entities::notifications::Entity::find()
        .all(&db)
        .await
        .expect("query");
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].event_id, event_id);
    assert_eq!(notes[0].user_id.as_deref(), Some("u-7"));
    // Sync mode does not publish.
    app.settled(&[
        ("warren.audit", 0),
        ("warren.notifications", 0),
        ("warren.email", 0),
    ])
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn each_kind_of_bad_input_gets_its_4xx_with_a_reason() {
    let app = spawn_app().await;
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            app.request(Method::POST, "/v1/events/Order.Created")
                .json(&json!({})),
            400,
            "invalid_event_name",
        ),
        (
            app.request(Method::POST, "/v1/events/order")
                .json(&json!({})),
            400,
            "invalid_event_name",
        ),
        (
            app.request(Method::POST, &format!("/v1/events/a.{}", "b".repeat(200)))
                .json(&json!({})),
            400,
            "invalid_event_name",
        ),
        (
            app.request(Method::POST, "/v1/events/order.created")
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "invalid_json",
        ),
        (
            app.request(Method::POST, "/v1/events/order.created")
                .json(&json!([1, 2])),
            422,
            "data_not_an_object",
        ),
        (
            app.request(Method::POST, "/v1/events/order.created")
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            app.request(Method::POST, "/v1/events/order.created")
                .json(&json!({"big": "x".repeat(5000)})),
            413,
            "payload_too_large",
        ),
        (
            app.request(Method::POST, "/v1/events/order.created?mode=later")
                .json(&json!({})),
            400,
            "invalid_query",
        ),
        (
            app.request(Method::GET, "/v1/events/order.created"),
            405,
            "method_not_allowed",
        ),
        (app.request(Method::GET, "/nowhere"), 404, "not_found"),
    ];
    for (req, status, code) in cases {
        let resp = req.send().await.expect("sent");
        assert_eq!(resp.status().as_u16(), status, "expected {status} {code}");
        assert!(resp.headers().contains_key("x-request-id"));
        assert!(resp.headers().contains_key("x-execution-time"));
        let body: serde_json::Value = resp.json().await.expect("json error body");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{body}"
        );
    }
    // Nothing was published by any of them.
    app.settled(&[("warren.audit", 0)]).await;
    app.cleanup().await;
}

#[tokio::test]
async fn auth_rejects_a_missing_or_wrong_token_and_accepts_the_right_one() {
    let app = spawn_app_with(
        |mut s| {
            s.http.tokens = vec![
                Secret::new("first-token-0123456789").into(),
                Secret::new("second-token-0123456789").into(),
            ];
            s
        },
        |a| a,
    )
    .await;
    let url = "/v1/events/order.created";
    let missing = app
        .request(Method::POST, url)
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["www-authenticate"], "Bearer");
    let wrong = app
        .request(Method::POST, url)
        .bearer_auth("first-token-0123456780")
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(wrong.status(), 401);
    let body: serde_json::Value = wrong.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    for token in ["first-token-0123456789", "second-token-0123456789"] {
        let ok = app
            .request(Method::POST, url)
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .expect("sent");
        assert_eq!(ok.status(), 202, "{token}");
    }
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(
        app.request(Method::GET, "/healthz")
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );
    assert_eq!(
        app.request(Method::GET, "/metrics")
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );
    app.cleanup().await;
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_publishes_by_outcome() {
    let app = spawn_app().await;
    for name in ["order.created", "order.paid", "user.registered"] {
        assert_eq!(app.post_event(name, &json!({})).await.status(), 202);
    }
    let nowhere = app
        .request(Method::GET, "/nowhere/123")
        .send()
        .await
        .expect("sent");
    assert_eq!(nowhere.status(), 404);
    let resp = app
        .request(Method::GET, "/readyz")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let text = app
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(
            r#"http_requests_total{method="POST",path="/v1/events/{name}",status="202"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{method="GET",path="unmatched",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"http_request_duration_seconds_count{method="POST",path="/v1/events/{name}"} 3"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"messages_published_total{exchange="warren.events",outcome="confirmed"} 3"#
        ),
        "{text}"
    );
    assert!(!text.contains("order.created"), "no raw paths in labels");
    app.cleanup().await;
}
