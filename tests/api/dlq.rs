//! The dead-letter tools against a real broker: messages are parked by a consumer on
//! `warren.notifications` that refuses everything as invalid until told to succeed, then
//! listed, peeked at, replayed and purged through the service, the HTTP API and the CLI.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use entities::failed_jobs;
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};
use reqwest::Method;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use uuid::Uuid;
use warren::{
    broker::{
        names::{self, H_ATTEMPT, header_int, header_str},
        topology::Topology,
    },
    config::Secret,
    jobs::{Consumer, Job, JobError},
    operator::dlq::{Dlq, Filter},
};

use crate::helpers::{TestApp, eventually, spawn_app, spawn_app_with, spawn_worker_with};

pub const QUEUE: &str = "warren.notifications";
pub const DEAD: &str = "warren.notifications.dead";

/// Refuses every message as invalid (parked at once) until `succeed` is set; records what it
/// saw.
#[derive(Clone, Default)]
pub struct Flaky {
    pub succeed: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Uuid, u32)>>>,
}

impl Flaky {
    pub fn seen(&self) -> Vec<(Uuid, u32)> {
        self.seen.lock().expect("lock").clone()
    }

    pub fn seen_of(&self, id: Uuid) -> Vec<u32> {
        self.seen()
            .into_iter()
            .filter(|(m, _)| *m == id)
            .map(|(_, a)| a)
            .collect()
    }
}

#[async_trait::async_trait]
impl Consumer for Flaky {
    fn name(&self) -> &str {
        "notifications"
    }

    fn queue(&self) -> &str {
        QUEUE
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.seen
            .lock()
            .expect("lock")
            .push((job.message_id, job.attempt));
        if self.succeed.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(JobError::Invalid("always invalid".into()))
        }
    }
}

async fn start(c: &Flaky) -> TestApp {
    let c = c.clone();
    spawn_worker_with(|s| s, move |a| a.consumer(c)).await
}

pub fn service(app: &TestApp) -> Dlq {
    let r = app.running.as_ref().expect("running");
    Dlq::new(
        r.broker.clone(),
        r.publisher.clone(),
        r.db.clone(),
        Arc::new(Topology::builtin().expect("topology")),
    )
}

pub async fn rows(app: &TestApp) -> Vec<failed_jobs::Model> {
    let db = app.db().await;
    let rows = failed_jobs::Entity::find().all(&db).await.expect("query");
    let _ = db.close().await;
    rows
}

fn statuses(rows: &[failed_jobs::Model], id: Uuid) -> Vec<String> {
    let mut s: Vec<String> = rows
        .iter()
        .filter(|r| r.message_id == Some(id))
        .map(|r| r.status.clone())
        .collect();
    s.sort();
    s
}

/// Posts `n` events the consumer parks; waits until all are parked with their rows.
pub async fn park(app: &TestApp, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let r = app
            .post_event(
                "user.registered",
                &json!({"email": format!("{i}@example.com")}),
            )
            .await;
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.expect("json");
        ids.push(
            body["event_id"]
                .as_str()
                .expect("id")
                .parse()
                .expect("uuid"),
        );
    }
    eventually(Duration::from_secs(15), "messages parked", || async {
        let parked = rows(app)
            .await
            .iter()
            .filter(|r| r.status == "parked")
            .count();
        (app.depth(DEAD).await as usize == n && parked == n).then_some(())
    })
    .await;
    ids
}

/// Waits until the dead-letter queue `dead` holds exactly `n` messages and its work queue and
/// the retry tiers none, ready and unacked together ([`TestApp::settled`]): messages a pass
/// held go back with `basic.nack(requeue)`, and a replayed message is handled, before this
/// holds.
async fn settled(app: &TestApp, dead: &str, n: u64) {
    let work = dead.strip_suffix(".dead").expect("a dead-letter queue");
    app.settled(&[(work, 0), (dead, n)]).await;
}

/// The message ids parked in `queue`'s dead-letter queue, as `GET /v1/dlq/{queue}` shows them.
pub async fn parked_ids(app: &TestApp, queue: &str) -> std::collections::BTreeSet<String> {
    let (status, peek) = call(
        app,
        Method::GET,
        &format!("/v1/dlq/{queue}?limit=100"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{peek}");
    peek["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["message_id"].as_str().expect("message id").to_owned())
        .collect()
}

/// A replay or purge answer without its `action_id` (which must be there: the action is in
/// the audit log).
fn audited(answer: &Value) -> Value {
    let mut v = answer.clone();
    let id = v
        .as_object_mut()
        .and_then(|o| o.remove("action_id"))
        .unwrap_or_default();
    assert!(
        id.as_str().is_some_and(|s| s.parse::<Uuid>().is_ok()),
        "{answer}"
    );
    v
}

async fn call(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = app.request(method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("text");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn replay_moves_parked_messages_back_with_attempt_one_and_cannot_loop() {
    let c = Flaky::default();
    let app = start(&c).await;
    let dlq = service(&app);
    let ids = park(&app, 3).await;

    // list: exact counts for every work queue.
    let list = dlq.list().await.expect("list");
    assert_eq!(list.len(), 8, "every work queue: {list:?}");
    for q in &list {
        let want = if q.queue == QUEUE { 3 } else { 0 };
        assert_eq!(q.parked, want, "{q:?}");
        assert_eq!(q.dead_queue, format!("{}.dead", q.queue));
    }

    // show: peeks without removing.
    let peek = dlq.show(QUEUE, &Filter::default(), 10).await.expect("show");
    assert_eq!(peek.parked, 3);
    assert_eq!(peek.messages.len(), 3);
    for m in &peek.messages {
        assert_eq!(m.reason.as_deref(), Some("invalid"));
        assert_eq!(m.attempt, Some(1));
        assert_eq!(m.kind.as_deref(), Some("user.registered"));
        assert_eq!(m.error.as_deref(), Some("always invalid"));
        assert_eq!(m.original_exchange.as_deref(), Some("warren.events"));
        assert_eq!(m.original_routing_key.as_deref(), Some("user.registered"));
        assert!(m.failed_at.is_some() && m.replayed_at.is_none());
        assert!(m.body.contains("example.com") && !m.body_truncated);
    }
    let one = dlq
        .show(
            "warren.notifications.dead",
            &Filter {
                message_id: Some(ids[1]),
                ..Filter::default()
            },
            10,
        )
        .await
        .expect("show by id");
    assert_eq!(one.messages.len(), 1);
    assert_eq!(one.messages[0].message_id, Some(ids[1].to_string()));
    settled(&app, DEAD, 3).await;

    // Replay everything while the consumer still refuses: each message comes straight back
    // to the DLQ during the pass, and the pass still reports exactly 3.
    assert_eq!(
        dlq.replay(QUEUE, &Filter::default()).await.expect("replay"),
        3
    );
    eventually(Duration::from_secs(15), "parked again", || async {
        let r = rows(&app).await;
        let parked = r.iter().filter(|r| r.status == "parked").count();
        let retried = r.iter().filter(|r| r.status == "retried").count();
        (app.depth(DEAD).await == 3 && parked == 3 && retried == 3).then_some(())
    })
    .await;
    for id in &ids {
        assert_eq!(c.seen_of(*id), vec![1, 1], "attempt reset on replay");
    }

    // Now the consumer succeeds: replay exactly one message by id.
    c.succeed.store(true, Ordering::SeqCst);
    let filter = Filter {
        message_id: Some(ids[0]),
        ..Filter::default()
    };
    assert_eq!(dlq.replay(QUEUE, &filter).await.expect("replay"), 1);
    eventually(Duration::from_secs(10), "handled again", || async {
        (c.seen_of(ids[0]).len() == 3).then_some(())
    })
    .await;
    assert_eq!(c.seen_of(ids[0]), vec![1, 1, 1]);
    settled(&app, DEAD, 2).await;
    let r = rows(&app).await;
    assert_eq!(statuses(&r, ids[0]), vec!["retried", "retried"]);
    assert_eq!(statuses(&r, ids[1]), vec!["parked", "retried"]);
    assert!(
        r.iter()
            .filter(|r| r.status == "retried")
            .all(|r| r.updated_at.is_some())
    );
    assert!(
        r.iter()
            .filter(|r| r.status == "parked")
            .all(|r| r.updated_at.is_none())
    );

    // Nothing was parked an hour ago.
    let old = Filter {
        older_than: Some(Duration::from_secs(3600)),
        ..Filter::default()
    };
    assert_eq!(dlq.replay(QUEUE, &old).await.expect("replay"), 0);
    settled(&app, DEAD, 2).await;

    // The rest.
    assert_eq!(
        dlq.replay(QUEUE, &Filter::default()).await.expect("replay"),
        2
    );
    eventually(Duration::from_secs(10), "all handled", || async {
        (c.seen_of(ids[1]).len() == 3 && c.seen_of(ids[2]).len() == 3).then_some(())
    })
    .await;
    assert!(c.seen().iter().all(|(_, attempt)| *attempt == 1));
    settled(&app, DEAD, 0).await;
    // Each message seen exactly three times: parked, replayed and refused, replayed and handled.
    for id in &ids {
        assert_eq!(c.seen_of(*id), vec![1, 1, 1], "{id}");
    }
    assert_eq!(c.seen().len(), 9, "no message beyond the parked ones");
    let r = rows(&app).await;
    assert_eq!(r.len(), 6);
    assert!(r.iter().all(|r| r.status == "retried"), "{r:?}");

    // Unknown queues are refused by name.
    let err = dlq
        .replay("warren.nope", &Filter::default())
        .await
        .expect_err("unknown");
    assert!(err.to_string().contains("not a work queue"), "{err}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_replayed_message_keeps_body_properties_and_origin_and_carries_the_replay_mark() {
    // No consumer on warren.email: the replayed message waits there to be inspected.
    let app = spawn_app().await;
    let id = Uuid::now_v7();
    let failed_at = Utc::now() - chrono::TimeDelta::hours(2);
    let long = |s: &str| AMQPValue::LongString(LongString::from(s));
    let mut headers = FieldTable::default();
    headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(3));
    headers.insert(names::H_REASON.into(), long("exhausted"));
    headers.insert(names::H_QUEUE.into(), long("warren.email"));
    headers.insert(names::H_ERROR.into(), long("smtp refused"));
    headers.insert(names::H_FAILED_AT.into(), long(&failed_at.to_rfc3339()));
    headers.insert(names::H_ORIGINAL_EXCHANGE.into(), long("warren.commands"));
    headers.insert(names::H_ORIGINAL_ROUTING_KEY.into(), long("email.send"));
    headers.insert("x-custom".into(), AMQPValue::Boolean(true));
    let props = BasicProperties::default()
        .with_message_id(id.to_string().into())
        .with_type("email.send".into())
        .with_content_type("application/json".into())
        .with_correlation_id("saga-9".into())
        .with_delivery_mode(2)
        .with_headers(headers);
    let body = br#"{"to":"a@example.com"}"#;
    app.publish_raw("warren.dead", "warren.email", body, props)
        .await;
    app.settled(&[("warren.email", 0), ("warren.email.dead", 1)])
        .await;

    let (status, answer) = call(
        &app,
        Method::POST,
        "/v1/dlq/warren.email/replay",
        Some(json!({"older_than_secs": 3600})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        audited(&answer),
        json!({"queue": "warren.email", "replayed": 1})
    );
    // No consumer on warren.email: the replayed copy waits there, and only there.
    app.settled(&[
        ("warren.email", 1),
        ("warren.email.dead", 0),
        ("warren.audit", 0),
        ("warren.notifications", 0),
        ("warren.orders", 0),
    ])
    .await;

    let back = app.drain("warren.email").await;
    assert_eq!(back.len(), 1, "routed to exactly its queue");
    let d = &back[0].delivery;
    assert_eq!(d.data, body);
    assert_eq!(d.exchange.as_str(), "warren.requeue");
    assert_eq!(d.routing_key.as_str(), "warren.email");
    let p = &d.properties;
    assert_eq!(
        p.message_id().as_ref().map(|m| m.as_str()),
        Some(id.to_string().as_str())
    );
    assert_eq!(p.kind().as_ref().map(|k| k.as_str()), Some("email.send"));
    assert_eq!(
        p.correlation_id().as_ref().map(|c| c.as_str()),
        Some("saga-9")
    );
    assert_eq!(header_int(p, H_ATTEMPT), Some(1), "attempt reset");
    let replayed_at = header_str(p, names::H_REPLAYED_AT).expect("replay mark");
    let replayed_at = chrono::DateTime::parse_from_rfc3339(&replayed_at).expect("rfc3339");
    assert!(Utc::now().signed_duration_since(replayed_at) < chrono::TimeDelta::minutes(1));
    assert_eq!(
        header_str(p, names::H_ORIGINAL_EXCHANGE).as_deref(),
        Some("warren.commands")
    );
    assert_eq!(
        header_str(p, names::H_ORIGINAL_ROUTING_KEY).as_deref(),
        Some("email.send")
    );
    assert!(matches!(
        p.headers().as_ref().and_then(|h| h.inner().get("x-custom")),
        Some(AMQPValue::Boolean(true))
    ));
    app.cleanup().await;
}

/// Every pass (a show, a filtered replay or purge) hands the messages it does not move back
/// with a requeue, which counts as a delivery. RabbitMQ 4.0 gives a quorum queue without
/// `x-delivery-limit` a limit of 20, and a parking queue has no dead-letter exchange: without
/// the parking queues' own limit the 21st show would drop the message. On 3.10 and 4.0 alike,
/// it stays parked, shown each time.
#[tokio::test]
async fn a_parked_message_outlives_more_passes_than_rabbitmq_4s_default_delivery_limit() {
    let c = Flaky::default();
    let app = start(&c).await;
    let ids = park(&app, 1).await;
    let dlq = service(&app);
    for pass in 1..=25 {
        let peek = dlq.show(QUEUE, &Filter::default(), 10).await.expect("show");
        assert_eq!(
            peek.messages
                .iter()
                .map(|m| m.message_id.clone())
                .collect::<Vec<_>>(),
            vec![Some(ids[0].to_string())],
            "pass {pass}: the parked message is shown"
        );
    }
    settled(&app, DEAD, 1).await;
    app.cleanup().await;
}

#[tokio::test]
async fn the_http_api_lists_shows_and_purges_with_filters() {
    let c = Flaky::default();
    let app = start(&c).await;
    let ids = park(&app, 4).await;

    let (status, list) = call(&app, Method::GET, "/v1/dlq", None).await;
    assert_eq!(status, 200);
    let queues = list["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), 8);
    assert!(queues.contains(&json!({"queue": QUEUE, "dead_queue": DEAD, "parked": 4})));
    assert!(queues.contains(
        &json!({"queue": "warren.email", "dead_queue": "warren.email.dead", "parked": 0})
    ));

    let (status, peek) = call(
        &app,
        Method::GET,
        "/v1/dlq/warren.notifications?limit=2",
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(peek["parked"], 4);
    assert_eq!(peek["messages"].as_array().expect("messages").len(), 2);
    assert_eq!(peek["messages"][0]["reason"], "invalid");
    assert_eq!(peek["messages"][0]["type"], "user.registered");
    let (status, peek) = call(
        &app,
        Method::GET,
        &format!("/v1/dlq/warren.notifications?message_id={}", ids[3]),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(peek["messages"][0]["message_id"], ids[3].to_string());
    assert_eq!(peek["messages"].as_array().expect("messages").len(), 1);

    let (status, err) = call(&app, Method::GET, "/v1/dlq/warren.nope", None).await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "unknown_queue");
    let (status, _) = call(
        &app,
        Method::GET,
        "/v1/dlq/warren.notifications?limit=0",
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = call(&app, Method::DELETE, "/v1/dlq/warren.notifications", None).await;
    assert_eq!(status, 405);

    // A misspelt filter is refused, not taken as "everything".
    let (status, err) = call(
        &app,
        Method::POST,
        "/v1/dlq/warren.notifications/purge",
        Some(json!({"messageId": ids[0]})),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "invalid_json");
    settled(&app, DEAD, 4).await;

    let (status, answer) = call(
        &app,
        Method::POST,
        "/v1/dlq/warren.notifications/purge",
        Some(json!({"message_id": ids[0]})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(audited(&answer), json!({"queue": QUEUE, "purged": 1}));
    // The purge by id removed that message, and only it.
    settled(&app, DEAD, 3).await;
    let rest: std::collections::BTreeSet<String> =
        ids[1..].iter().map(ToString::to_string).collect();
    assert_eq!(parked_ids(&app, QUEUE).await, rest, "purged {}", ids[0]);
    assert_eq!(statuses(&rows(&app).await, ids[0]), vec!["purged"]);
    let (status, answer) = call(
        &app,
        Method::POST,
        "/v1/dlq/warren.notifications.dead/purge",
        Some(json!({"limit": 1})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(audited(&answer), json!({"queue": QUEUE, "purged": 1}));
    settled(&app, DEAD, 2).await;
    let left = parked_ids(&app, QUEUE).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.is_subset(&rest), "{left:?} of {rest:?}");
    // No body at all: every parked message.
    let resp = app
        .request(Method::POST, "/v1/dlq/warren.notifications/purge")
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        audited(&resp.json::<Value>().await.expect("json")),
        json!({"queue": QUEUE, "purged": 2})
    );
    settled(&app, DEAD, 0).await;
    assert_eq!(c.seen().len(), 4, "purged messages are not handled");
    let purged_ids: std::collections::BTreeSet<Uuid> = rows(&app)
        .await
        .iter()
        .filter(|r| r.status == "purged")
        .filter_map(|r| r.message_id)
        .collect();
    assert_eq!(purged_ids, ids.iter().copied().collect(), "each row purged");

    let (status, purged) = call(&app, Method::GET, "/v1/failed-jobs?status=purged", None).await;
    assert_eq!(status, 200);
    let purged = purged["failed_jobs"].as_array().expect("rows").clone();
    assert_eq!(purged.len(), 4);
    assert!(purged.iter().all(|r| r["updated_at"].is_string()));
    let (_, parked) = call(&app, Method::GET, "/v1/failed-jobs?status=parked", None).await;
    assert_eq!(parked["failed_jobs"], json!([]));
    let (status, _) = call(&app, Method::GET, "/v1/failed-jobs?status=bogus", None).await;
    assert_eq!(status, 400);

    // Metrics carry templates, not raw paths.
    let (_, _) = call(&app, Method::GET, "/v1/failed-jobs", None).await;
    let metrics = app
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    for template in [
        "/v1/dlq",
        "/v1/dlq/{queue}",
        "/v1/dlq/{queue}/purge",
        "/v1/failed-jobs",
    ] {
        assert!(
            metrics.contains(&format!("path=\"{template}\"")),
            "{template} in metrics"
        );
    }
    assert!(!metrics.contains("warren.notifications/purge"));
    app.cleanup().await;
}

#[tokio::test]
async fn retrying_a_failed_job_replays_its_message_once() {
    let c = Flaky::default();
    let app = start(&c).await;
    let ids = park(&app, 2).await;

    let (status, list) = call(
        &app,
        Method::GET,
        "/v1/failed-jobs?queue=warren.notifications&limit=10",
        None,
    )
    .await;
    assert_eq!(status, 200);
    let list = list["failed_jobs"].as_array().expect("rows").clone();
    assert_eq!(list.len(), 2);
    // Both parked (handlers run concurrently, so the parking order is not fixed); newest
    // first by row id.
    let mut listed: Vec<String> = list
        .iter()
        .map(|r| r["message_id"].as_str().expect("id").to_owned())
        .collect();
    listed.sort();
    let mut expected: Vec<String> = ids.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(listed, expected);
    assert!(
        list[0]["id"].as_str() > list[1]["id"].as_str(),
        "newest first"
    );
    let row = list
        .iter()
        .find(|r| r["message_id"] == ids[0].to_string())
        .expect("row of the first job");
    assert_eq!(row["status"], "parked");
    assert_eq!(row["reason"], "invalid");
    let row_id = row["id"].as_str().expect("id").to_owned();

    c.succeed.store(true, Ordering::SeqCst);
    let path = format!("/v1/failed-jobs/{row_id}/retry");
    let (status, answer) = call(&app, Method::POST, &path, None).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["replayed"], 1);
    assert_eq!(answer["queue"], QUEUE);
    assert_eq!(answer["message_id"], ids[0].to_string());
    eventually(Duration::from_secs(10), "handled", || async {
        (c.seen_of(ids[0]).len() == 2).then_some(())
    })
    .await;
    settled(&app, DEAD, 1).await;
    assert_eq!(c.seen_of(ids[0]), vec![1, 1], "replayed once, handled once");
    assert_eq!(c.seen_of(ids[1]), vec![1], "the other stays parked");
    let r = rows(&app).await;
    assert_eq!(statuses(&r, ids[0]), vec!["retried"]);
    assert_eq!(statuses(&r, ids[1]), vec!["parked"]);

    let (status, err) = call(&app, Method::POST, &path, None).await;
    assert_eq!(status, 409);
    assert_eq!(err["error"]["code"], "not_parked");
    let (status, err) = call(
        &app,
        Method::POST,
        &format!("/v1/failed-jobs/{}/retry", Uuid::now_v7()),
        None,
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "failed_job_not_found");
    let (status, _) = call(&app, Method::POST, "/v1/failed-jobs/not-a-uuid/retry", None).await;
    assert_eq!(status, 404);

    let (status, answer) = call(
        &app,
        Method::POST,
        "/v1/dlq/warren.notifications/replay",
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(audited(&answer), json!({"queue": QUEUE, "replayed": 1}));
    eventually(Duration::from_secs(10), "handled", || async {
        (c.seen_of(ids[1]).len() == 2).then_some(())
    })
    .await;
    settled(&app, DEAD, 0).await;
    app.cleanup().await;
}

#[tokio::test]
async fn the_dlq_endpoints_need_the_bearer_token() {
    let token = "dlq-test-token-0123456789";
    let app = spawn_app_with(
        move |mut s| {
            s.http.tokens = vec![Secret::new(token).into()];
            s
        },
        |a| a,
    )
    .await;
    for (method, path) in [
        (Method::GET, "/v1/dlq"),
        (Method::GET, "/v1/dlq/warren.email"),
        (Method::POST, "/v1/dlq/warren.email/replay"),
        (Method::POST, "/v1/dlq/warren.email/purge"),
        (Method::GET, "/v1/failed-jobs"),
    ] {
        let (status, _) = call(&app, method.clone(), path, None).await;
        assert_eq!(status, 401, "{method} {path}");
    }
    let resp = app
        .request(Method::GET, "/v1/dlq")
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status(), 200);
    let list: Value = resp.json().await.expect("json");
    assert!(
        list["queues"]
            .as_array()
            .expect("queues")
            .iter()
            .all(|q| q["parked"] == 0)
    );
    app.cleanup().await;
}

pub async fn cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    cli_with(app, args, &[]).await
}

/// Runs the `warren` binary against `app`'s broker and database with `args`, and `env` on
/// top; returns its exit code, stdout and stderr.
pub async fn cli_with(app: &TestApp, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("WARREN_CONFIG")
        .env("WARREN_AMQP__URL", app.vhost.amqp_url())
        .env(
            "WARREN_AMQP__MANAGEMENT_URL",
            crate::helpers::management_url(),
        )
        .env("WARREN_DATABASE__URL", &app.db.url)
        .env("WARREN_LOG__FILTER", "warn")
        .output()
        .await
        .expect("warren runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_cli_lists_shows_replays_and_purges() {
    let c = Flaky::default();
    let app = start(&c).await;
    let ids = park(&app, 3).await;

    let (code, out, err) = cli(&app, &["dlq", "list"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let counts: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(counts.contains(&vec![DEAD, "3"]), "{out}");
    assert!(counts.contains(&vec!["warren.email.dead", "0"]), "{out}");

    let (code, out, err) = cli(&app, &["dlq", "show", QUEUE, "--limit", "1"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("3 parked in warren.notifications.dead; showing 1"),
        "{out}"
    );
    assert!(out.contains("reason:     invalid"), "{out}");

    let (code, _, err) = cli(&app, &["dlq", "purge", QUEUE]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");
    settled(&app, DEAD, 3).await;

    let (code, out, err) = cli(&app, &["dlq", "replay", QUEUE, "--older-than", "1h"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("replayed 0 messages from warren.notifications.dead"),
        "{out}"
    );

    let id = ids[2].to_string();
    let (code, out, err) = cli(&app, &["dlq", "purge", QUEUE, "--message-id", &id, "--yes"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("purged 1 message from warren.notifications.dead"),
        "{out}"
    );

    c.succeed.store(true, Ordering::SeqCst);
    let (code, out, err) = cli(&app, &["dlq", "replay", DEAD]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("replayed 2 messages from warren.notifications.dead"),
        "{out}"
    );
    eventually(Duration::from_secs(10), "handled", || async {
        (c.seen().len() == 5).then_some(())
    })
    .await;
    settled(&app, DEAD, 0).await;
    for (id, times) in [(ids[0], 2), (ids[1], 2), (ids[2], 1)] {
        assert_eq!(c.seen_of(id).len(), times, "{id}");
    }
    let r = rows(&app).await;
    assert_eq!(statuses(&r, ids[0]), vec!["retried"]);
    assert_eq!(statuses(&r, ids[2]), vec!["purged"]);

    let (code, _, err) = cli(&app, &["dlq", "replay", "warren.nope"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not a work queue"), "{err}");
    app.cleanup().await;
}

/// Confirm, then ack: a replayed copy the broker does not take (here unroutable: the requeue
/// binding of the work queue is removed) leaves its parked copy where it was, and the replay
/// reports the failure instead of a count. Once the binding is back, each message moves once.
#[tokio::test]
async fn a_replay_the_broker_refuses_acks_nothing_and_leaves_every_message_parked() {
    use lapin::options::QueueBindOptions;
    let c = Flaky::default();
    let app = start(&c).await;
    let ids = park(&app, 3).await;
    settled(&app, DEAD, 3).await;
    let conn = lapin::Connection::connect(&app.vhost.amqp_url(), Default::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_unbind(
        QUEUE.into(),
        "warren.requeue".into(),
        QUEUE.into(),
        FieldTable::default(),
    )
    .await
    .expect("unbind");
    c.succeed.store(true, Ordering::SeqCst);
    let err = service(&app)
        .replay(QUEUE, &Filter::default())
        .await
        .expect_err("a replay the broker returned");
    match &err {
        warren::operator::dlq::DlqError::Stopped { done, source, .. } => {
            assert_eq!(*done, 0, "{err}");
            assert!(
                matches!(**source, warren::operator::dlq::DlqError::Publish { .. }),
                "{err}"
            );
        }
        other => panic!("not a stopped replay: {other}"),
    }
    settled(&app, DEAD, 3).await;
    let parked: std::collections::BTreeSet<String> = ids.iter().map(ToString::to_string).collect();
    assert_eq!(
        parked_ids(&app, QUEUE).await,
        parked,
        "every copy still parked"
    );
    let r = rows(&app).await;
    for id in &ids {
        assert_eq!(statuses(&r, *id), vec!["parked"], "{id}");
        assert_eq!(c.seen_of(*id), vec![1], "{id} not handled");
    }
    ch.queue_bind(
        QUEUE.into(),
        "warren.requeue".into(),
        QUEUE.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind again");
    let _ = conn.close(200, "".into()).await;
    assert_eq!(
        service(&app)
            .replay(QUEUE, &Filter::default())
            .await
            .expect("replay"),
        3
    );
    settled(&app, DEAD, 0).await;
    for id in &ids {
        assert_eq!(
            c.seen_of(*id),
            vec![1, 1],
            "{id} handled once after the replay"
        );
    }
    app.cleanup().await;
}
