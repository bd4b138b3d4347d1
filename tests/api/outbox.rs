//! The events outbox: events accepted while the broker is away are stored, then published by
//! the relay in order per aggregate, once each, also with two HTTP fronts relaying.

use std::{collections::HashMap, time::Duration};

use sea_orm::{ConnectionTrait, EntityTrait, PaginatorTrait};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warren::Role;

use crate::{
    gate::BrokerGate,
    helpers::{TestApp, eventually, message_id, spawn_roles},
};

/// Starts the HTTP front with its broker behind `gate`.
async fn front_behind(gate: &BrokerGate, tweak: impl FnOnce(&mut warren::Settings)) -> TestApp {
    let port = gate.port;
    spawn_roles(
        &[Role::Http],
        move |mut s| {
            let mut url = url::Url::parse(s.amqp.url.expose()).expect("url");
            url.set_port(Some(port)).expect("port");
            s.amqp.url = warren::config::Secret::new(url.to_string());
            s.amqp.connect_timeout_ms = 500;
            s.amqp.publish_timeout_ms = 1_000;
            s.outbox.relay_ms = 200;
            // A publish that waits out its 1 s timeout makes a slow request, whose
            // `system.slow_request` event is kept in the outbox too (it goes through the events
            // service); these tests count only the messages they post.
            s.http.slow_request_ms = 60_000;
            tweak(&mut s);
            s
        },
        |a| a,
    )
    .await
}

/// Posts `order.updated` for `aggregate` with sequence number `n`; returns where it was stored.
async fn post(app: &TestApp, base: &str, aggregate: Option<&str>, n: u32) -> (String, String) {
    let path = match aggregate {
        Some(a) => format!("{base}/v1/events/order.updated?aggregate_id={a}"),
        None => format!("{base}/v1/events/order.updated"),
    };
    let r = app
        .http
        .post(path)
        .json(&json!({"n": n, "aggregate": aggregate}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202, "accepted");
    let body: Value = r.json().await.expect("json");
    (
        body["event_id"].as_str().expect("event_id").to_owned(),
        body["stored"].as_str().expect("stored").to_owned(),
    )
}

/// Waits until `warren.audit` holds exactly `n` messages (and the queues in `also` theirs)
/// and nothing more comes, nor waits in a retry tier or a dead-letter queue; then takes them:
/// their ids and bodies in queue order. Called once the outbox is empty: every row was deleted
/// after its confirm, so the `n` are there already, and fewer is a loss, said at once.
async fn audit_messages(app: &TestApp, n: usize, also: &[(&str, u64)]) -> Vec<(String, Value)> {
    eventually(
        Duration::from_secs(10),
        &format!("the {n} accepted events in warren.audit (the outbox is empty: fewer is a loss)"),
        || async { (app.depth("warren.audit").await as usize >= n).then_some(()) },
    )
    .await;
    let mut expect = vec![("warren.audit", n as u64)];
    expect.extend_from_slice(also);
    app.settled(&expect).await;
    app.drain("warren.audit")
        .await
        .into_iter()
        .map(|m| {
            let id = message_id(&m.properties);
            let body: Value = serde_json::from_slice(&m.data).expect("json body");
            (id, body)
        })
        .collect()
}

/// Checks that `messages` are the `accepted` ids, each once.
fn assert_each_once(messages: &[(String, Value)], accepted: &[String]) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (id, _) in messages {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "published more than once: {twice:?}");
    let lost: Vec<_> = accepted
        .iter()
        .filter(|id| !seen.contains_key(id.as_str()))
        .collect();
    assert!(lost.is_empty(), "accepted and never published: {lost:?}");
    let unknown: Vec<_> = seen
        .keys()
        .filter(|id| !accepted.iter().any(|a| a == *id))
        .collect();
    assert!(unknown.is_empty(), "published, never accepted: {unknown:?}");
    assert_eq!(messages.len(), accepted.len());
}

/// Waits until warren has seen the broker go: its connection pool no longer hands out the
/// connection the gate cut (a publish on it would wait for a confirm that never comes) and
/// gets each new one refused.
pub(crate) async fn until_broker_refused(app: &TestApp) {
    eventually(
        Duration::from_secs(15),
        "readyz to report the broker refused",
        || async {
            let r = app
                .request(reqwest::Method::GET, "/readyz")
                .send()
                .await
                .ok()?;
            let body: Value = r.json().await.ok()?;
            body["checks"]["broker"]
                .as_str()?
                .starts_with("cannot get an AMQP connection: ")
                .then_some(())
        },
    )
    .await;
}

async fn outbox_rows(app: &TestApp) -> u64 {
    entities::event_outbox::Entity::find()
        .count(&app.db().await)
        .await
        .expect("count")
}

/// Waits until the relay emptied the outbox.
async fn until_outbox_empty(app: &TestApp) {
    eventually(Duration::from_secs(10), "the outbox empties", || async {
        (outbox_rows(app).await == 0).then_some(())
    })
    .await;
}

/// Checks that each aggregate's `n` values arrived in increasing order.
fn assert_ordered_per_aggregate(messages: &[(String, Value)]) {
    let mut last: HashMap<String, i64> = HashMap::new();
    for (_, body) in messages {
        let Some(a) = body["aggregate_id"].as_str() else {
            continue;
        };
        let n = body["data"]["n"].as_i64().expect("n");
        if let Some(prev) = last.insert(a.to_owned(), n) {
            assert!(
                n > prev,
                "aggregate {a}: event {n} arrived after {prev}: {messages:?}"
            );
        }
    }
}

#[tokio::test]
async fn events_accepted_while_the_broker_is_away_are_stored_then_published_in_order_once() {
    let gate = BrokerGate::to_test_broker().await;
    // No breaker: each request tries the broker first, so only the per-aggregate rule keeps
    // A's later events behind its waiting ones.
    let app = front_behind(&gate, |s| s.outbox.breaker_ms = 0).await;
    let base = app.base.clone();
    let mut accepted = Vec::new();

    let (id, stored) = post(&app, &base, Some("A"), 0).await;
    assert_eq!(stored, "broker", "with the broker up, published directly");
    accepted.push(id);

    gate.close();
    for n in 1..=15 {
        for a in ["A", "B"] {
            let (id, stored) = post(&app, &base, Some(a), n).await;
            assert_eq!(stored, "outbox", "broker away: {a} {n} kept in the outbox");
            accepted.push(id);
        }
        let (id, stored) = post(&app, &base, None, n).await;
        assert_eq!(stored, "outbox");
        accepted.push(id);
    }
    // A job too: the same outbox, on warren.commands.
    let r = app
        .request(reqwest::Method::POST, "/v1/jobs/email.send")
        .json(&json!({"to": "a@example.com"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202);
    let job: Value = r.json().await.expect("json");
    assert_eq!(job["stored"], "outbox", "{job}");
    assert_eq!(
        outbox_rows(&app).await,
        46,
        "with the broker away, every accepted message waits in the outbox"
    );
    let metrics = app
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("event_outbox_stored_total 46"),
        "stored counter: {}",
        metrics
            .lines()
            .filter(|l| l.contains("event_outbox"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    gate.open();
    // Right after the broker is back, more events of A: never ahead of A's waiting ones.
    for n in 16..=20 {
        let (id, _) = post(&app, &base, Some("A"), n).await;
        accepted.push(id);
    }
    until_outbox_empty(&app).await;
    let messages = audit_messages(&app, accepted.len(), &[("warren.email", 1)]).await;
    assert_each_once(&messages, &accepted);
    assert_ordered_per_aggregate(&messages);
    let jobs: Vec<String> = app
        .drain("warren.email")
        .await
        .iter()
        .map(|m| message_id(&m.properties))
        .collect();
    assert_eq!(
        jobs,
        [job["job_id"].as_str().expect("job_id")],
        "the stored job too"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn two_fronts_relay_one_outbox_and_each_event_is_published_once() {
    let gate = BrokerGate::to_test_broker().await;
    let app = front_behind(&gate, |_| {}).await;
    let stop = CancellationToken::new();
    let second = app.start_extra(&[Role::Http], |a| a, stop.clone()).await;
    let second_base = format!("http://{}", second.http_addr.expect("http"));
    gate.close();
    let mut accepted = Vec::new();
    for n in 1..=40 {
        let base = if n % 2 == 0 { &app.base } else { &second_base };
        let (id, stored) = post(&app, base, Some(&format!("agg-{}", n % 4)), n).await;
        assert_eq!(stored, "outbox");
        accepted.push(id);
    }
    assert_eq!(
        outbox_rows(&app).await,
        40,
        "with the broker away, every accepted message waits in the outbox"
    );
    gate.open();
    // Both relays keep running: once the outbox is empty, the queue settles at the 40.
    until_outbox_empty(&app).await;
    let messages = audit_messages(&app, 40, &[]).await;
    assert_each_once(&messages, &accepted);
    assert_ordered_per_aggregate(&messages);
    stop.cancel();
    second.wait().await;
    app.cleanup().await;
}

#[tokio::test]
async fn with_neither_broker_nor_outbox_the_answer_is_503_and_nothing_is_claimed() {
    let gate = BrokerGate::to_test_broker().await;
    let app = front_behind(&gate, |_| {}).await;
    gate.close();
    // The database cannot take the row either.
    app.db()
        .await
        .execute_unprepared("ALTER TABLE event_outbox RENAME TO event_outbox_away")
        .await
        .expect("rename");
    let r = app.post_event("order.created", &json!({"id": 1})).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5", "http.retry_after_secs");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_stored", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("outbox could not store it"), "{message}");
    app.db()
        .await
        .execute_unprepared("ALTER TABLE event_outbox_away RENAME TO event_outbox")
        .await
        .expect("rename back");
    gate.open();
    app.cleanup().await;
}

#[tokio::test]
async fn with_the_outbox_off_a_broker_outage_is_a_503() {
    let gate = BrokerGate::to_test_broker().await;
    let app = front_behind(&gate, |s| s.outbox.enabled = false).await;
    gate.close();
    until_broker_refused(&app).await;
    let r = app.post_event("order.created", &json!({"id": 1})).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5", "http.retry_after_secs");
    let body: Value = r.json().await.expect("json");
    // The gate refuses every new connection at once (within the 500 ms connect timeout, well
    // inside the 1 s publish timeout): no channel could be had, which is "unavailable". (Had
    // the publish gone out on the cut connection before warren noticed, it would have waited
    // for its confirm and answered `broker_timeout`.)
    assert_eq!(body["error"]["code"], "broker_unavailable", "{body}");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("the broker could not take the message: "),
        "{message}"
    );
    assert_eq!(outbox_rows(&app).await, 0);
    gate.open();
    app.cleanup().await;
}

/// A consumer on `warren.notifications` that parks every job at once (invalid input).
struct Refuses;

#[async_trait::async_trait]
impl warren::jobs::Consumer for Refuses {
    fn name(&self) -> &str {
        "notifications"
    }

    fn queue(&self) -> &str {
        "warren.notifications"
    }

    async fn handle(&self, _: &warren::jobs::Job) -> Result<(), warren::jobs::JobError> {
        Err(warren::jobs::JobError::Invalid(
            "missing field email".into(),
        ))
    }
}

/// Limits `warren.audit` to `max` messages, refusing publishes over it (policy `policy`).
async fn audit_limit(app: &TestApp, policy: &str, max: u64) {
    app.vhost
        .api
        .put(
            policy,
            &json!({"pattern": "^warren\\.audit$", "apply-to": "queues",
                    "definition": {"max-length": max, "overflow": "reject-publish"}}),
        )
        .await
        .expect("policy");
}

#[tokio::test]
async fn a_job_failed_alert_the_broker_cannot_confirm_is_stored_then_delivered_once() {
    use warren::broker::topology::encode;
    // The worker runs only `Refuses`: nothing consumes warren.audit, so the test reads there
    // what warren published on warren.events.
    let app = crate::helpers::spawn_worker_with(
        |mut s| {
            s.outbox.relay_ms = 200;
            s
        },
        |a| a.consumer(Refuses),
    )
    .await;
    // warren.audit (bound to every event) refuses publishes once it holds more than one message (the
    // fillers): the broker nacks the job.failed alert, while the parked copy still reaches its
    // dead-letter queue.
    let policy = format!("policies/{}/audit-full", encode(&app.vhost.name));
    // A quorum queue refuses once it is over its limit: two fillers over a limit of one.
    for _ in 0..2 {
        let filler = warren::broker::envelope::Event::new("misc.noted", None, json!({}));
        app.publish_raw(
            "",
            "warren.audit",
            &filler.to_json(),
            warren::broker::envelope::Meta::for_event(&filler).properties(),
        )
        .await;
    }
    audit_limit(&app, &policy, 1).await;
    // The policy reaches the queue asynchronously; then the job, straight to its queue only.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let job = warren::broker::envelope::Event::new("user.registered", None, json!({}));
    app.publish_raw(
        "",
        "warren.notifications",
        &job.to_json(),
        warren::broker::envelope::Meta::for_event(&job).properties(),
    )
    .await;
    let stored = eventually(
        Duration::from_secs(20),
        "job.failed stored in the outbox",
        || async {
            let rows = entities::event_outbox::Entity::find()
                .all(&app.db().await)
                .await
                .ok()?;
            rows.into_iter()
                .find(|r| r.routing_key == "job.failed")
                .map(|r| r.id.to_string())
        },
    )
    .await;
    // The broker takes the alert again: the relay delivers it.
    // A quorum queue leaves its refusing state when it falls under its limit (deleting the
    // policy alone does not end it): a higher limit, and the fillers taken.
    audit_limit(&app, &policy, 100_000).await;
    let mut audit = app.drain("warren.audit").await;
    until_outbox_empty(&app).await;
    audit.extend(app.drain("warren.audit").await);
    let alerts: Vec<String> = audit
        .iter()
        .filter(|m| {
            serde_json::from_slice::<Value>(&m.delivery.data)
                .is_ok_and(|b| b["event_name"] == "job.failed")
        })
        .map(|m| message_id(&m.delivery.properties))
        .collect();
    assert_eq!(
        alerts.iter().filter(|id| **id == stored).count(),
        1,
        "the stored job.failed {stored} delivered once: {alerts:?}"
    );
    app.cleanup().await;
}
