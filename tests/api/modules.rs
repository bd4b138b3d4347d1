//! The built-in modules against real parts: e-mail through a real SMTP receiver,
//! notifications with the welcome e-mail, the audit log over HTTP.

use std::time::Duration;

use sea_orm::{EntityTrait, QueryOrder};
use serde_json::json;
use warren::broker::envelope::Event;

use crate::{
    helpers::{TestApp, eventually, spawn_worker_with},
    smtp::SmtpSink,
};

async fn start(sink: &SmtpSink, modules: &'static [&'static str]) -> TestApp {
    let url = sink.url();
    spawn_worker_with(
        move |mut s| {
            s.email.smtp_url = warren::config::Secret::new(url);
            s.email.smtp_timeout_ms = 5_000;
            s
        },
        move |a| a.modules(modules.iter().copied()),
    )
    .await
}

async fn email_log(app: &TestApp) -> Vec<entities::email_log::Model> {
    entities::email_log::Entity::find()
        .order_by_asc(entities::email_log::Column::Id)
        .all(&app.db().await)
        .await
        .expect("query")
}

#[tokio::test]
async fn an_email_job_posted_over_http_is_sent_through_smtp_and_logged() {
    let sink = SmtpSink::start().await;
    let app = start(&sink, &["email"]).await;
    let resp = app
        .request(reqwest::Method::POST, "/v1/jobs/email.send")
        .json(&json!({"email": "ada@example.com", "subject": "Hello", "content": "<p>Hi Ada</p>"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 202);
    let job_id = resp.json::<serde_json::Value>().await.expect("json")["job_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let mails = eventually(Duration::from_secs(10), "mail received", || async {
        let m = sink.mails();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(mails[0].to, vec!["<ada@example.com>"]);
    assert_eq!(mails[0].from, "<warren@localhost>");
    assert!(
        mails[0].data.contains("Subject: Hello"),
        "{}",
        mails[0].data
    );
    assert!(mails[0].data.contains("<p>Hi Ada</p>"));
    assert!(
        mails[0]
            .data
            .to_ascii_lowercase()
            .contains("content-type: text/html")
    );
    let log = eventually(Duration::from_secs(5), "email_log row", || async {
        let l = email_log(&app).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].status, "sent");
    assert_eq!(log[0].job_id.to_string(), job_id);
    assert_eq!(log[0].email, "ada@example.com");
    assert_eq!(log[0].subject, "Hello");
    app.cleanup().await;
}

#[tokio::test]
async fn an_email_the_server_defers_twice_is_sent_on_the_third_attempt() {
    let sink = SmtpSink::start().await;
    sink.refuse_next(&[451, 451]);
    let app = start(&sink, &["email"]).await;
    let resp = app
        .request(reqwest::Method::POST, "/v1/jobs/email.send")
        .json(&json!({"email": "bob@example.com", "subject": "Again", "content": "x"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 202);
    let log = eventually(Duration::from_secs(20), "three email_log rows", || async {
        let l = email_log(&app).await;
        (l.len() >= 3).then_some(l)
    })
    .await;
    let statuses: Vec<(&str, i32)> = log.iter().map(|r| (r.status.as_str(), r.attempt)).collect();
    assert_eq!(statuses, vec![("failed", 1), ("failed", 2), ("sent", 3)]);
    let gap = log[1].send_time - log[0].send_time;
    assert!(
        gap >= chrono::Duration::milliseconds(900),
        "waited in the failure tier: {gap}"
    );
    app.settled(&[("warren.email", 0)]).await;
    assert_eq!(sink.mails().len(), 1);
    assert_eq!(
        email_log(&app).await.len(),
        3,
        "no attempt after the sent one"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn an_email_that_keeps_failing_is_parked_with_an_email_failed_alert() {
    let sink = SmtpSink::start().await;
    sink.refuse_all(Some(451));
    let app = start(&sink, &["email"]).await;
    let resp = app
        .request(reqwest::Method::POST, "/v1/jobs/email.send")
        .json(&json!({"email": "eve@example.com", "subject": "Never", "content": "x"}))
        .send()
        .await
        .expect("sent");
    let job_id = resp.json::<serde_json::Value>().await.expect("json")["job_id"]
        .as_str()
        .expect("id")
        .to_owned();
    eventually(Duration::from_secs(20), "parked", || async {
        (app.depth("warren.email.dead").await == 1).then_some(())
    })
    .await;
    let alert = eventually(Duration::from_secs(5), "job.failed", || async {
        app.drain("warren.audit")
            .await
            .iter()
            .filter_map(|m| serde_json::from_slice::<Event>(&m.delivery.data).ok())
            .find(|e| e.event_name == "job.failed")
    })
    .await;
    assert_eq!(alert.data["type"], "email_failed");
    assert_eq!(alert.data["job_id"], job_id);
    assert_eq!(alert.data["attempts"], 3);
    assert_eq!(alert.data["data"]["email"], "eve@example.com");
    app.settled(&[("warren.email", 0), ("warren.email.dead", 1)])
        .await;
    let log = email_log(&app).await;
    assert_eq!(log.len(), 3, "one row per attempt");
    assert!(log.iter().all(|r| r.status == "failed"));
    app.cleanup().await;
}

#[tokio::test]
async fn an_email_without_address_or_subject_is_parked_at_once_and_unknown_jobs_are_refused() {
    let sink = SmtpSink::start().await;
    let app = start(&sink, &["email"]).await;
    for body in [
        json!({"subject": "no address"}),
        json!({"email": "x@example.com"}),
    ] {
        let r = app
            .request(reqwest::Method::POST, "/v1/jobs/email.send")
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 202);
    }
    // A message is parked (confirmed) before its failed_jobs row is written: wait for both.
    let rows = eventually(
        Duration::from_secs(10),
        "both parked and recorded",
        || async {
            let rows = entities::failed_jobs::Entity::find()
                .all(&app.db().await)
                .await
                .expect("query");
            (app.depth("warren.email.dead").await == 2 && rows.len() == 2).then_some(rows)
        },
    )
    .await;
    assert!(
        rows.iter()
            .all(|r| r.reason == "invalid" && r.attempts == 1)
    );
    assert!(sink.mails().is_empty());
    let r = app
        .request(reqwest::Method::POST, "/v1/jobs/fax.send")
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<serde_json::Value>().await.expect("json")["error"]["code"],
        "unknown_job"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn user_registered_stores_a_notification_and_sends_the_welcome_email_once() {
    let sink = SmtpSink::start().await;
    let app = start(&sink, &["email", "notifications", "audit"]).await;
    let resp = app
        .request(
            reqwest::Method::POST,
            "/v1/events/user.registered?aggregate_id=user-9",
        )
        .json(&json!({"email": "new@example.com", "name": "Neo"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 202);
    let mails = eventually(Duration::from_secs(10), "welcome mail", || async {
        let m = sink.mails();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert!(mails[0].data.contains("Welcome, Neo!"), "{}", mails[0].data);
    // The welcome e-mail is enqueued before the notification's transaction commits, so the
    // mail can arrive first.
    let list: serde_json::Value = eventually(Duration::from_secs(10), "notification", || async {
        let v: serde_json::Value = app
            .request(reqwest::Method::GET, "/v1/notifications?user_id=user-9")
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json");
        (!v["notifications"].as_array()?.is_empty()).then_some(v)
    })
    .await;
    let n = list["notifications"].as_array().expect("list");
    assert_eq!(n.len(), 1, "{list}");
    assert_eq!(n[0]["event_name"], "user.registered");
    assert_eq!(n[0]["title"], "User registered");
    let events: serde_json::Value = eventually(Duration::from_secs(10), "audit row", || async {
        let v: serde_json::Value = app
            .request(reqwest::Method::GET, "/v1/events?aggregate_id=user-9")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["events"].as_array()?.len() == 1).then_some(v)
    })
    .await;
    assert_eq!(events["events"][0]["event_name"], "user.registered");
    assert_eq!(events["events"][0]["data"]["name"], "Neo");
    // Counted once everything has settled: a second welcome job, a redelivered one or one in a
    // retry tier would have been sent by now.
    app.settled(&[
        ("warren.email", 0),
        ("warren.notifications", 0),
        ("warren.audit", 0),
    ])
    .await;
    let mails = sink.mails();
    assert_eq!(mails.len(), 1, "one welcome e-mail: {mails:?}");
    assert_eq!(
        mails[0].to,
        vec!["<new@example.com>".to_owned()],
        "{mails:?}"
    );
    let log = email_log(&app).await;
    assert_eq!(log.len(), 1, "one e-mail job: {log:?}");
    assert_eq!(
        (log[0].email.as_str(), log[0].status.as_str()),
        ("new@example.com", "sent")
    );
    app.cleanup().await;
}
