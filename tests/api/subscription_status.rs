//! The state of HTTP subscriptions as operators see it: each worker's breaker and last error
//! in `GET /v1/subscriptions`, and pause and resume (the API, its audit, the console page in
//! a real browser), against real HTTP receivers (`subscriptions::Receiver`).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use serde_json::json;

use crate::{
    helpers::{TestApp, eventually, spawn_worker_with},
    subscriptions::{Answer, Receiver, answer, publish, start, subscription},
};

/// The row of subscription `name` in `GET /v1/subscriptions`.
async fn listed(app: &TestApp, name: &str) -> serde_json::Value {
    let v = app.get_json("/v1/subscriptions").await;
    v["subscriptions"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} listed: {v}"))
}

/// Polls the list until `check` holds for subscription `name`'s row; returns the row.
async fn listed_until(
    app: &TestApp,
    name: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(Duration::from_secs(20), what, || async {
        let row = listed(app, name).await;
        check(&row).then_some(row)
    })
    .await
}

/// `POST /v1/subscriptions/{name}/{action}` with `body`: status and JSON answer.
async fn control(
    app: &TestApp,
    name: &str,
    action: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut r = app.request(
        reqwest::Method::POST,
        &format!("/v1/subscriptions/{name}/{action}"),
    );
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.expect("sent");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

#[tokio::test]
async fn the_list_shows_a_workers_breaker_open_with_its_last_error_then_closed_again() {
    let failing = Answer {
        body: "database down",
        ..answer(500)
    };
    let (rx, addr) = Receiver::start(&[(
        "watched",
        vec![failing.clone(), failing.clone(), failing, answer(204)],
    )])
    .await;
    let mut sub = subscription("watched", addr, &["order.*"]);
    sub.concurrency = 1;
    sub.max_attempts = Some(5);
    sub.breaker.failures = 3;
    // Long enough for the list to see it open (the worker writes within a second).
    sub.breaker.cooldown_ms = 4_000;
    let app = start(vec![sub]).await;
    let running = listed_until(&app, "watched", "a worker reporting", |r| {
        r["state"] == "running"
    })
    .await;
    let worker = &running["workers"][0];
    assert_eq!(worker["breaker"], "closed", "{running}");
    assert_eq!(worker["stale"], false);
    assert_eq!(running["paused"], false);

    let mut want = BTreeSet::new();
    for n in 0..4 {
        want.insert(publish(&app, "order.created", json!({"n": n})).await);
    }
    let open = listed_until(&app, "watched", "the breaker open", |r| {
        r["state"] == "open"
    })
    .await;
    let worker = &open["workers"][0];
    assert_eq!(worker["breaker"], "open", "{open}");
    assert_eq!(worker["consecutive_failures"], 3, "{open}");
    assert!(
        worker["breaker_until"].is_string(),
        "when it tries again: {open}"
    );
    let error = worker["last_error"].as_str().expect("last error");
    assert!(
        error.contains("500") && error.contains("database down"),
        "the worker's last error, status and body: {error}"
    );
    assert_eq!(open["last_error"]["error"], error);

    // The trial succeeds: closed, and every message delivered.
    let closed = listed_until(&app, "watched", "the breaker closed", |r| {
        r["state"] == "running" && r["workers"][0]["breaker"] == "closed"
    })
    .await;
    assert_eq!(closed["workers"][0]["consecutive_failures"], 0, "{closed}");
    assert!(
        closed["workers"][0]["last_success_at"].is_string(),
        "{closed}"
    );
    let got = rx.wait("watched", 7, Duration::from_secs(30)).await;
    let gap = got[3].at - got[2].at;
    assert!(
        gap >= Duration::from_millis(3_950),
        "nothing delivered while it was open: {gap:?}"
    );
    app.settled(&[("warren.sub.watched", 0), ("warren.sub.watched.dead", 0)])
        .await;
    let delivered: BTreeSet<String> = rx
        .got("watched")
        .iter()
        .skip(3)
        .map(|g| g.header("ce-id").expect("ce-id").to_owned())
        .collect();
    assert_eq!(delivered, want);
    app.cleanup().await;
}

#[tokio::test]
async fn a_paused_subscription_takes_nothing_its_messages_wait_and_resume_delivers_each_once() {
    let (rx, addr) = Receiver::start(&[("held", vec![answer(204)])]).await;
    let mut sub = subscription("held", addr, &["order.*"]);
    // Prefetch 2: two messages wait unacked in the worker, the rest ready in the queue.
    sub.concurrency = 1;
    let app = start(vec![sub]).await;

    let (status, body) = control(&app, "nope", "pause", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "unknown_subscription");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope"))
    );

    let (status, body) = control(
        &app,
        "held",
        "pause",
        Some(json!({"reason": "receiver deploy"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["paused"].clone(), body["changed"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(body["reason"], "receiver deploy");
    // Twice is fine: nothing changes, the first pause stands.
    let (status, again) = control(&app, "held", "pause", None).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["changed"], false);
    assert_eq!(again["reason"], "receiver deploy");
    assert_eq!(again["at"], body["at"]);
    // The worker holds it (within about a second).
    let row = listed_until(&app, "held", "the worker holding the pause", |r| {
        r["workers"][0]["paused"] == true
    })
    .await;
    assert_eq!(row["state"], "paused");
    assert_eq!(row["control"]["reason"], "receiver deploy");
    assert_eq!(row["control"]["by"], "anonymous");

    let mut want = BTreeSet::new();
    for n in 0..10 {
        want.insert(publish(&app, "order.created", json!({"n": n})).await);
    }
    // The messages wait in the queue (all but the two prefetched), none delivered.
    eventually(Duration::from_secs(20), "8 ready in the queue", || async {
        (app.depth("warren.sub.held").await >= 8).then_some(())
    })
    .await;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert!(
            rx.got("held").is_empty(),
            "a paused subscription delivers nothing"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.depth("warren.sub.held").await, 8, "still waiting");

    let (status, body) = control(&app, "held", "resume", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["paused"].clone(), body["changed"].clone()),
        (json!(false), json!(true))
    );
    let resumed = Instant::now();
    rx.wait("held", 10, Duration::from_secs(20)).await;
    assert!(
        rx.got("held")[0].at - resumed < Duration::from_secs(4),
        "resumed within a poll or two (one a second)"
    );
    app.settled(&[("warren.sub.held", 0), ("warren.sub.held.dead", 0)])
        .await;
    let got = rx.got("held");
    let ids: BTreeSet<String> = got
        .iter()
        .map(|g| g.header("ce-id").expect("ce-id").to_owned())
        .collect();
    assert_eq!(ids, want, "each message delivered");
    assert_eq!(got.len(), 10, "once");
    assert!(
        got.iter().all(|g| g.header("warren-attempt") == Some("1")),
        "the wait spent no attempt"
    );
    let row = listed_until(&app, "held", "running again", |r| r["state"] == "running").await;
    assert_eq!(row["paused"], false);
    assert_eq!(row["workers"][0]["paused"], false);

    // Each request is in the audit log.
    let audit = app.get_json("/v1/console/audit").await;
    let actions: Vec<(&str, &str)> = audit["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|a| Some((a["action"].as_str()?, a["target"].as_str()?)))
        .collect();
    assert_eq!(
        actions,
        [
            ("subscription.resume", "held"),
            ("subscription.pause", "held"),
            ("subscription.pause", "held"),
        ],
        "newest first: {audit}"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn in_a_real_browser_a_subscription_is_paused_and_resumed_from_its_console_page() {
    let (rx, addr) = Receiver::start(&[("shown", vec![answer(204)])]).await;
    let sub = subscription("shown", addr, &["order.*"]);
    let mut app = spawn_worker_with(
        move |mut s| {
            s = crate::console::with_tokens(s);
            s.subscriptions = vec![sub];
            s
        },
        |a| a.modules(["sub.shown"]),
    )
    .await;
    crate::console::as_admin(&mut app);
    // The management API's figures of the new vhost's queue come with its next statistics
    // round; the page (and its screenshot) should show them.
    listed_until(&app, "shown", "queue figures", |r| r["consumers"].is_u64()).await;
    crate::console::browser(
        "subscriptions",
        &app.base,
        &[("SUBSCRIPTION", "shown".to_owned())],
    )
    .await;
    // Both clicks are in the audit log, by the operator who signed in, and the subscription
    // delivers again.
    let audit = app.get_json("/v1/console/audit").await;
    let actions: Vec<(&str, &str)> = audit["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .filter_map(|a| Some((a["action"].as_str()?, a["actor"].as_str()?)))
        .collect();
    assert_eq!(
        actions,
        [
            ("subscription.resume", "playwright (console, ops)"),
            ("subscription.pause", "playwright (console, ops)"),
        ],
        "{audit}"
    );
    let id = publish(&app, "order.created", json!({"n": 1})).await;
    let got = rx.wait("shown", 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("ce-id"), Some(id.as_str()));
    app.settled(&[("warren.sub.shown", 0), ("warren.sub.shown.dead", 0)])
        .await;
    app.cleanup().await;
}
