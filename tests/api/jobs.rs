//! The consumer runtime: broker-side retries through the delay tiers, dead letters, the
//! failed-job record and alert, the inbox, timeouts, panics and graceful shutdown.
//! Tiers are shortened to 1 s (failure) and 2 s (error) by `spawn_worker_with`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lapin::{BasicProperties, types::AMQPValue};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use serde_json::json;
use warren::{
    broker::{
        envelope::Event,
        names::{self, H_ATTEMPT, header_int, header_str},
    },
    jobs::{Consumer, Job, JobError},
};

use crate::helpers::{TestApp, eventually, spawn_worker_with};

#[derive(Clone, Copy, Debug)]
enum Step {
    Ok,
    Fail,
    Error,
    Invalid,
    Panic,
    Sleep(u64),
    Defer,
}

/// A consumer on `warren.notifications` that plays a script, one step per attempt, and
/// records each call.
#[derive(Clone)]
struct Scripted {
    steps: Vec<Step>,
    calls: Arc<Mutex<Vec<(u32, Instant)>>>,
    done: Arc<Mutex<u32>>,
}

impl Scripted {
    fn new(steps: Vec<Step>) -> Self {
        Self {
            steps,
            calls: Arc::default(),
            done: Arc::default(),
        }
    }

    fn calls(&self) -> Vec<(u32, Instant)> {
        self.calls.lock().expect("lock").clone()
    }
}

#[async_trait::async_trait]
impl Consumer for Scripted {
    fn name(&self) -> &str {
        "notifications"
    }

    fn queue(&self) -> &str {
        "warren.notifications"
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        let n = {
            let mut calls = self.calls.lock().expect("lock");
            calls.push((job.attempt, Instant::now()));
            calls.len()
        };
        let step = self.steps.get(n - 1).copied().unwrap_or(Step::Ok);
        let result = match step {
            Step::Ok => Ok(()),
            Step::Fail => Err(JobError::Failed("recipient mailbox full".into())),
            Step::Error => Err(JobError::Error("smtp connection refused".into())),
            Step::Invalid => Err(JobError::Invalid("missing field email".into())),
            Step::Panic => panic!("handler bug"),
            Step::Defer => Err(JobError::Deferred(
                "receiver said 429, retry after 1s".into(),
            )),
            Step::Sleep(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            }
        };
        if result.is_ok() {
            *self.done.lock().expect("lock") += 1;
        }
        result
    }
}

async fn start(
    consumer: Scripted,
    tweak: impl FnOnce(&mut warren::Settings) + Send + 'static,
) -> TestApp {
    spawn_worker_with(
        move |mut s| {
            tweak(&mut s);
            s
        },
        move |a| a.consumer(consumer),
    )
    .await
}

async fn wait_calls(c: &Scripted, n: usize, limit: Duration) -> Vec<(u32, Instant)> {
    eventually(limit, &format!("{n} handler calls"), || async {
        let calls = c.calls();
        (calls.len() >= n).then_some(calls)
    })
    .await
}

fn gaps(calls: &[(u32, Instant)]) -> Vec<Duration> {
    calls.windows(2).map(|w| w[1].1 - w[0].1).collect()
}

async fn metric(app: &TestApp, needle: &str) -> bool {
    app.metrics_text().await.contains(needle)
}

#[tokio::test]
async fn a_job_that_reports_failure_twice_then_succeeds_is_handled_three_times_via_the_60s_tier() {
    let c = Scripted::new(vec![Step::Fail, Step::Fail, Step::Ok]);
    // The error tier is made much longer here, so a gap well under it proves the failure tier
    // was used even on a loaded machine (where a 1 s TTL can take 2 s to come back).
    let app = start(c.clone(), |s| s.jobs.error_delay_ms = 20_000).await;
    assert_eq!(
        app.post_event("user.registered", &json!({"email": "a@example.com"}))
            .await
            .status(),
        202
    );
    let calls = wait_calls(&c, 3, Duration::from_secs(20)).await;
    assert_eq!(calls.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 2, 3]);
    for gap in gaps(&calls) {
        assert!(
            gap >= Duration::from_millis(950),
            "waited in the failure tier: {gap:?}"
        );
        assert!(gap < Duration::from_secs(15), "not the error tier: {gap:?}");
    }
    eventually(Duration::from_secs(5), "success metric", || async {
        metric(
            &app,
            r#"queue_jobs_total{queue="warren.notifications",status="success"} 1"#,
        )
        .await
        .then_some(())
    })
    .await;
    assert!(
        metric(
            &app,
            r#"queue_jobs_total{queue="warren.notifications",status="retried_60s"} 2"#
        )
        .await
    );
    // Acked: nothing waits anywhere (ready, unacked, a retry tier), nothing parked.
    app.settled(&[("warren.notifications", 0)]).await;
    let db = app.db().await;
    let inbox = entities::processed_messages::Entity::find()
        .filter(entities::processed_messages::Column::Consumer.eq("notifications"))
        .all(&db)
        .await
        .expect("query");
    assert_eq!(inbox.len(), 1, "one inbox row");
    app.cleanup().await;
}

#[tokio::test]
async fn an_error_a_timeout_and_a_panic_each_wait_in_the_120s_tier() {
    let c = Scripted::new(vec![Step::Error, Step::Sleep(2_000), Step::Panic, Step::Ok]);
    let app = start(c.clone(), |s| {
        s.jobs.max_attempts = 4;
        s.jobs.modules.insert(
            "notifications".into(),
            warren::config::ModuleSettings {
                timeout_ms: Some(300),
                ..Default::default()
            },
        );
    })
    .await;
    assert_eq!(
        app.post_event("order.created", &json!({"id": 1}))
            .await
            .status(),
        202
    );
    let calls = wait_calls(&c, 4, Duration::from_secs(30)).await;
    assert_eq!(
        calls.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    for gap in gaps(&calls) {
        assert!(
            gap >= Duration::from_millis(1_950),
            "waited in the error tier: {gap:?}"
        );
    }
    eventually(Duration::from_secs(5), "success", || async {
        metric(
            &app,
            r#"queue_jobs_total{queue="warren.notifications",status="success"} 1"#,
        )
        .await
        .then_some(())
    })
    .await;
    for status in ["error", "timeout", "panic"] {
        assert!(
            metric(
                &app,
                &format!(r#"queue_jobs_total{{queue="warren.notifications",status="{status}"}} 1"#)
            )
            .await,
            "{status} counted"
        );
    }
    assert!(
        metric(
            &app,
            r#"queue_jobs_total{queue="warren.notifications",status="retried_120s"} 3"#
        )
        .await
    );
    assert_eq!(
        *c.done.lock().expect("lock"),
        1,
        "the timed-out run was cut off, not completed"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_job_that_always_fails_is_parked_after_exactly_three_attempts_with_a_record_and_an_alert()
{
    let c = Scripted::new(vec![Step::Fail, Step::Error, Step::Fail, Step::Ok]);
    let app = start(c.clone(), |_| {}).await;
    let resp = app
        .post_event("user.registered", &json!({"email": "b@example.com"}))
        .await;
    let event_id = resp.json::<serde_json::Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let parked = eventually(Duration::from_secs(20), "message parked", || async {
        let m = app.drain("warren.notifications.dead").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(c.calls().len(), 3, "exactly three attempts");
    assert_eq!(parked.len(), 1);
    let p = &parked[0].delivery.properties;
    assert_eq!(
        p.message_id().as_ref().map(|m| m.as_str()),
        Some(event_id.as_str())
    );
    assert_eq!(header_int(p, H_ATTEMPT), Some(3));
    assert_eq!(header_str(p, names::H_REASON).as_deref(), Some("exhausted"));
    assert_eq!(
        header_str(p, names::H_ORIGINAL_EXCHANGE).as_deref(),
        Some("warren.events")
    );
    assert_eq!(
        header_str(p, names::H_ORIGINAL_ROUTING_KEY).as_deref(),
        Some("user.registered")
    );
    assert!(
        header_str(p, names::H_ERROR)
            .expect("error header")
            .contains("mailbox full")
    );
    assert!(header_str(p, names::H_FAILED_AT).is_some());
    let body: Event = serde_json::from_slice(&parked[0].delivery.data).expect("body kept");
    assert_eq!(body.data, json!({"email": "b@example.com"}));

    let db = app.db().await;
    let rows = entities::failed_jobs::Entity::find()
        .all(&db)
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].queue, "warren.notifications");
    assert_eq!(rows[0].attempts, 3);
    assert_eq!(rows[0].reason, "exhausted");
    assert_eq!(
        rows[0].message_id.map(|m| m.to_string()),
        Some(event_id.clone())
    );
    assert_eq!(rows[0].job_name.as_deref(), Some("user.registered"));

    // The alert: a job.failed event (the audit queue takes every event).
    let alerts = eventually(Duration::from_secs(5), "job.failed", || async {
        let all = app.drain("warren.audit").await;
        let alerts: Vec<Event> = all
            .iter()
            .filter_map(|m| serde_json::from_slice::<Event>(&m.delivery.data).ok())
            .filter(|e| e.event_name == "job.failed")
            .collect();
        (!alerts.is_empty()).then_some(alerts)
    })
    .await;
    let data = &alerts[0].data;
    assert_eq!(data["type"], "notifications_failed");
    assert_eq!(data["job_id"], event_id);
    assert_eq!(data["attempts"], 3);
    assert_eq!(data["data"], json!({"email": "b@example.com"}));
    app.cleanup().await;
}

#[tokio::test]
async fn invalid_input_is_parked_after_one_attempt() {
    let c = Scripted::new(vec![Step::Invalid, Step::Ok]);
    let app = start(c.clone(), |_| {}).await;
    assert_eq!(
        app.post_event("user.registered", &json!({})).await.status(),
        202
    );
    let parked = eventually(Duration::from_secs(10), "parked", || async {
        let m = app.drain("warren.notifications.dead").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(c.calls().len(), 1, "no retry for invalid input");
    let p = &parked[0].delivery.properties;
    assert_eq!(header_str(p, names::H_REASON).as_deref(), Some("invalid"));
    assert_eq!(header_int(p, H_ATTEMPT), Some(1));
    let rows = entities::failed_jobs::Entity::find()
        .all(&app.db().await)
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].reason, "invalid");
    app.cleanup().await;
}

#[tokio::test]
async fn an_undecodable_message_from_a_foreign_client_is_parked_with_the_decode_error() {
    let c = Scripted::new(vec![]);
    let app = start(c.clone(), |_| {}).await;
    app.publish_raw(
        "warren.events",
        "order.created",
        b"<xml>not json</xml>",
        BasicProperties::default(),
    )
    .await;
    let parked = eventually(Duration::from_secs(10), "parked", || async {
        let m = app.drain("warren.notifications.dead").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert!(c.calls().is_empty(), "the handler never saw it");
    assert_eq!(parked[0].delivery.data, b"<xml>not json</xml>");
    let p = &parked[0].delivery.properties;
    assert_eq!(
        header_str(p, names::H_REASON).as_deref(),
        Some("undecodable")
    );
    assert!(
        header_str(p, names::H_ERROR)
            .expect("error")
            .contains("undecodable message body")
    );
    let rows = entities::failed_jobs::Entity::find()
        .all(&app.db().await)
        .await
        .expect("query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].reason, "undecodable");
    assert_eq!(rows[0].message_id, None);
    assert_eq!(rows[0].payload, "<xml>not json</xml>");
    // Not requeued: nothing comes back to the queue, a tier or the dead letters (drained above).
    app.settled(&[("warren.notifications", 0)]).await;
    assert!(c.calls().is_empty(), "the handler never saw it");
    assert_eq!(
        entities::failed_jobs::Entity::find()
            .all(&app.db().await)
            .await
            .expect("query")
            .len(),
        1,
        "parked once"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_foreign_message_with_the_event_body_is_accepted_and_a_duplicate_has_its_effect_once() {
    let c = Scripted::new(vec![]);
    let app = start(c.clone(), |_| {}).await;
    let event = Event::new("order.created", Some("o-1".into()), json!({"id": 1}));
    let mut headers = lapin::types::FieldTable::default();
    headers.insert("x-custom".into(), AMQPValue::Boolean(true));
    let props = BasicProperties::default()
        .with_message_id(event.event_id.to_string().into())
        .with_headers(headers);
    // Published twice, as a publisher retrying after a lost confirm would.
    for _ in 0..2 {
        app.publish_raw(
            "warren.events",
            "order.created",
            &event.to_json(),
            props.clone(),
        )
        .await;
    }
    eventually(Duration::from_secs(10), "duplicate counted", || async {
        metric(
            &app,
            r#"queue_jobs_total{queue="warren.notifications",status="duplicate"} 1"#,
        )
        .await
        .then_some(())
    })
    .await;
    // Both copies are gone (the duplicate acked, not requeued or retried) before counting.
    app.settled(&[("warren.notifications", 0)]).await;
    assert_eq!(c.calls().len(), 1, "handled once");
    assert_eq!(c.calls()[0].0, 1, "no attempt header means attempt 1");
    app.cleanup().await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_work_and_acks_it() {
    let c = Scripted::new(vec![Step::Sleep(1_500)]);
    let app = start(c.clone(), |_| {}).await;
    assert_eq!(
        app.post_event("order.created", &json!({"id": 1}))
            .await
            .status(),
        202
    );
    wait_calls(&c, 1, Duration::from_secs(10)).await;
    let mut app = app;
    let running = app.running.take().expect("running");
    running.stop().await;
    assert_eq!(
        *c.done.lock().expect("lock"),
        1,
        "in-flight handler finished"
    );
    // Stopped: had the message not been acked, the closed channel would have handed it back.
    app.settled(&[("warren.notifications", 0)]).await;
    app.cleanup().await;
}

#[tokio::test]
async fn the_audit_module_records_every_event() {
    let app = spawn_worker_with(|s| s, |a| a.modules(["audit"])).await;
    let mut ids = Vec::new();
    for name in ["order.created", "user.registered", "invoice.paid"] {
        let r = app.post_event(name, &json!({"n": name})).await;
        assert_eq!(r.status(), 202, "{name}");
        ids.push(
            r.json::<serde_json::Value>().await.expect("json")["event_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    let db = app.db().await;
    let rows = eventually(Duration::from_secs(10), "3 event_log rows", || async {
        let rows = entities::event_log::Entity::find().all(&db).await.ok()?;
        (rows.len() == 3).then_some(rows)
    })
    .await;
    let mut got: Vec<String> = rows.iter().map(|r| r.event_id.to_string()).collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids);
    app.cleanup().await;
}

#[tokio::test]
async fn a_deferred_job_keeps_its_attempt_and_one_that_only_defers_ends_parked() {
    // Two deferrals, then success: three calls, all of them attempt 1.
    let c = Scripted::new(vec![Step::Defer, Step::Defer, Step::Ok]);
    let app = start(c.clone(), |s| s.jobs.max_attempts = 3).await;
    let resp = app
        .post_event("user.registered", &json!({"email": "d@example.com"}))
        .await;
    assert_eq!(resp.status(), 202);
    let calls = wait_calls(&c, 3, Duration::from_secs(20)).await;
    assert_eq!(calls.iter().map(|c| c.0).collect::<Vec<_>>(), vec![1, 1, 1]);
    app.settled(&[("warren.notifications", 0)]).await;
    assert_eq!(c.calls().len(), 3, "done after the third call");
    assert!(
        metric(
            &app,
            r#"queue_jobs_total{queue="warren.notifications",status="deferred"} 2"#
        )
        .await
    );
    app.cleanup().await;

    // Deferring for ever: max_attempts (2) deferrals in a row make one failed attempt, so the
    // message ends in the dead-letter queue after 2 attempts of 3 calls each.
    let c = Scripted::new(vec![Step::Defer; 10]);
    let app = start(c.clone(), |s| s.jobs.max_attempts = 2).await;
    app.post_event("user.registered", &json!({"email": "e@example.com"}))
        .await;
    let parked = eventually(Duration::from_secs(20), "message parked", || async {
        let m = app.drain("warren.notifications.dead").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(
        c.calls().iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![1, 1, 1, 2, 2, 2]
    );
    let p = &parked[0].delivery.properties;
    assert_eq!(header_int(p, H_ATTEMPT), Some(2));
    assert_eq!(header_str(p, names::H_REASON).as_deref(), Some("exhausted"));
    assert!(
        header_str(p, names::H_ERROR)
            .expect("error header")
            .contains("retry after")
    );
    app.settled(&[
        ("warren.notifications", 0),
        ("warren.notifications.dead", 0),
    ])
    .await;
    app.cleanup().await;
}

/// A consumer whose `ready` holds every message until the test opens its gate.
#[derive(Clone)]
struct Gated {
    open: Arc<tokio::sync::Semaphore>,
    handled: Arc<Mutex<Vec<u32>>>,
}

#[async_trait::async_trait]
impl Consumer for Gated {
    fn name(&self) -> &str {
        "notifications"
    }

    fn queue(&self) -> &str {
        "warren.notifications"
    }

    async fn ready(&self, _job: &Job) {
        if let Ok(permit) = self.open.acquire().await {
            permit.forget();
        }
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.handled.lock().expect("lock").push(job.attempt);
        Ok(())
    }
}

#[tokio::test]
async fn a_consumer_that_is_not_ready_holds_its_messages_unacked_with_their_attempts() {
    let g = Gated {
        open: Arc::new(tokio::sync::Semaphore::new(0)),
        handled: Arc::default(),
    };
    let app = spawn_worker_with(|s| s, {
        let g = g.clone();
        move |a| a.consumer(g)
    })
    .await;
    for n in 0..3 {
        app.post_event(
            "user.registered",
            &json!({"email": format!("{n}@example.com")}),
        )
        .await;
    }
    // Held: all three still in the queue (delivered, unacked), none handled.
    app.settled(&[("warren.notifications", 3)]).await;
    assert!(g.handled.lock().expect("lock").is_empty());
    g.open.add_permits(3);
    eventually(Duration::from_secs(10), "three handled", || async {
        (g.handled.lock().expect("lock").len() == 3).then_some(())
    })
    .await;
    app.settled(&[("warren.notifications", 0)]).await;
    assert_eq!(
        *g.handled.lock().expect("lock"),
        vec![1, 1, 1],
        "no attempt spent"
    );
    app.cleanup().await;
}
