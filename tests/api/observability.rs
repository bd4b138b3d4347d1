//! What operators see: the metrics (checked by promtool), the worker metrics listener, slow
//! requests, and one trace id carried through publish, retry, dead-letter, saga command and
//! reply.

use std::{
    collections::BTreeSet,
    io::Write,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use warren::{
    Role,
    jobs::{Consumer, Job, JobError},
};

use crate::{
    helpers::{TestApp, eventually},
    saga::{ALL, order, place, seed, spawn_saga, until_status},
};

/// Runs `promtool check metrics` on `text`; returns (success, its output).
pub fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool finishes");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn metrics_text(app: &TestApp, base: &str) -> String {
    app.http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("text")
}

/// Always reports failure: every job waits in the failure tier twice, then is parked.
#[derive(Clone, Default)]
struct AlwaysFails {
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
}

#[async_trait::async_trait]
impl Consumer for AlwaysFails {
    fn name(&self) -> &str {
        "email"
    }

    fn queue(&self) -> &str {
        "warren.email"
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.traceparents
            .lock()
            .expect("lock")
            .push(job.traceparent.clone());
        Err(JobError::Failed("the SMTP server said 451".into()))
    }
}

#[tokio::test]
async fn metrics_pass_promtool_and_every_process_can_be_scraped() {
    let failing = AlwaysFails::default();
    let app = spawn_saga(ALL, |s| s, {
        let f = failing.clone();
        move |a| a.consumer(f)
    })
    .await;
    seed(&app, json!({"SKU-1": 1}), json!({"u-1": 1_000})).await;
    // One unit of stock: the first order takes it, then the second is short. Placed one after
    // the other: placed at once, which of them gets the unit is a race (it failed CI runs).
    let done = place(&app, &order("M-1", "u-1", "SKU-1", 1, 100)).await;
    until_status(&app, &done, "completed", Duration::from_secs(60)).await;
    let short = place(&app, &order("M-2", "u-1", "SKU-1", 1, 100)).await;
    until_status(&app, &short, "compensated", Duration::from_secs(60)).await;
    let r = app
        .request(reqwest::Method::POST, "/v1/jobs/email.send")
        .json(&json!({"email": "a@example.com", "subject": "s", "content": "c"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202);
    let text = eventually(
        Duration::from_secs(30),
        "the job is dead-lettered",
        || async {
            let t = metrics_text(&app, &app.base).await;
            t.contains(r#"queue_messages_total{queue="warren.email",action="dead_lettered"} 1"#)
                .then_some(t)
        },
    )
    .await;
    for needle in [
        r#"queue_messages_total{queue="warren.email",action="retried_60s"} 2"#,
        r#"queue_messages_total{queue="warren.orders",action="consumed"}"#,
        r#"messages_in_flight{queue="warren.orders"} 0"#,
        r#"sagas_finished_total{kind="order",outcome="completed"} 1"#,
        r#"sagas_finished_total{kind="order",outcome="compensated"} 1"#,
        r#"saga_duration_seconds_count{kind="order",outcome="completed"} 1"#,
        r#"sagas_started_total{kind="order"} 2"#,
        r#"active_connections{kind="amqp_connections"}"#,
        r#"active_connections{kind="amqp_channels"}"#,
        r#"active_connections{kind="database_in_use"}"#,
        "process_resident_memory_bytes ",
        "process_cpu_seconds_total ",
        r#"messages_published_total{exchange="warren.commands",outcome="confirmed"}"#,
    ] {
        assert!(text.contains(needle), "{needle} missing in\n{text}");
    }
    // Saga gauges are refreshed every few seconds.
    eventually(Duration::from_secs(15), "saga gauges", || async {
        let t = metrics_text(&app, &app.base).await;
        (t.contains(r#"sagas{kind="order",state="running"} 0"#)
            && t.contains("saga_interventions_open 0")
            && t.contains("saga_outbox_depth 0"))
        .then_some(())
    })
    .await;
    let (ok, out) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics:\n{out}\n---\n{text}");
    // Labels stay bounded: no raw ids in any label value.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("M-1") && !line.contains(&done), "{line}");
    }

    // A worker-only process has its own metrics listener.
    let stop = CancellationToken::new();
    let worker = app
        .start_extra(&[Role::Worker], |a| a.modules(["audit"]), stop.clone())
        .await;
    let addr = worker.metrics_addr.expect("worker metrics listener");
    let worker_text = eventually(Duration::from_secs(10), "worker scraped", || async {
        let t = metrics_text(&app, &format!("http://{addr}")).await;
        t.contains(r#"queue_messages_total{queue="warren.audit",action="consumed"}"#)
            .then_some(t)
    })
    .await;
    let (ok, out) = promtool_check_metrics(&worker_text);
    assert!(ok, "{out}");
    stop.cancel();
    worker.wait().await;
    app.cleanup().await;
}

/// The wall-clock second, as the budget of slow-request events counts them.
fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Every set of requests (by index) that a budget of `per_sec` events per wall-clock second
/// can have announced, for requests made one after another, request `i` checked by the budget
/// in a second within `seconds[i]` (the seconds read just before sending it and just after
/// its answer). One set when the times leave no doubt.
fn announced_sets(seconds: &[(u64, u64)], per_sec: usize) -> BTreeSet<Vec<usize>> {
    fn assign(
        seconds: &[(u64, u64)],
        at: &mut Vec<u64>,
        per_sec: usize,
        out: &mut BTreeSet<Vec<usize>>,
    ) {
        let i = at.len();
        if i == seconds.len() {
            let announced = (0..i)
                .filter(|&j| at[..j].iter().filter(|&&s| s == at[j]).count() < per_sec)
                .collect();
            out.insert(announced);
            return;
        }
        // One after another: a request's check comes no earlier than the one before it.
        let from = seconds[i].0.max(at.last().copied().unwrap_or(0));
        for s in from..=seconds[i].1 {
            at.push(s);
            assign(seconds, at, per_sec, out);
            at.pop();
        }
    }
    let mut out = BTreeSet::new();
    assign(seconds, &mut Vec::new(), per_sec, &mut out);
    out
}

#[test]
fn the_announced_sets_follow_the_per_second_budget() {
    // All in one second: the first two.
    assert_eq!(
        announced_sets(&[(5, 5), (5, 5), (5, 5), (5, 5)], 2),
        BTreeSet::from([vec![0, 1]])
    );
    // Two seconds: two of each.
    assert_eq!(
        announced_sets(&[(5, 5), (5, 5), (5, 5), (6, 6), (6, 6), (6, 6)], 2),
        BTreeSet::from([vec![0, 1, 3, 4]])
    );
    // The third straddles the boundary: over budget in 5 (and the next two are 6's), or the
    // first of 6 (and the last is over 6's budget).
    assert_eq!(
        announced_sets(&[(5, 5), (5, 5), (5, 6), (6, 6), (6, 6)], 2),
        BTreeSet::from([vec![0, 1, 2, 3], vec![0, 1, 3, 4]])
    );
    // A straddle that changes nothing: within budget on either side.
    assert_eq!(
        announced_sets(&[(5, 5), (5, 6)], 2),
        BTreeSet::from([vec![0, 1]])
    );
    // The first of a run straddling: alone in 4 (and two more in 5), or one of three in 5.
    assert_eq!(
        announced_sets(&[(4, 5), (5, 5), (5, 5)], 2),
        BTreeSet::from([vec![0, 1], vec![0, 1, 2]])
    );
}

#[tokio::test]
async fn slow_requests_are_counted_and_announced_as_events() {
    const PER_SEC: u32 = 2;
    // Which requests the budget announces depends on the wall-clock second each was checked
    // in. The test reads the second before and after each request; when a request straddles a
    // boundary in a way that changes the outcome, it starts over on a fresh app.
    let mut attempt = 0;
    let (app, requests, expected) = loop {
        attempt += 1;
        assert!(attempt <= 5, "5 runs in a row straddled a second boundary");
        // Every request counts as slow with a 0 ms threshold; no module consumes
        // warren.audit, so the announcements wait there.
        let app = crate::helpers::spawn_app_with(
            |mut s| {
                s.http.slow_request_ms = 0;
                s.http.slow_request_events_per_sec = PER_SEC;
                s
            },
            |a| a,
        )
        .await;
        // (request id, event id, seconds)
        let mut requests = Vec::new();
        for i in 0..5 {
            let from = unix_second();
            let r = app.post_event("order.created", &json!({ "i": i })).await;
            let to = unix_second();
            assert_eq!(r.status(), 202);
            let request_id = r.headers()["x-request-id"]
                .to_str()
                .expect("ascii")
                .to_owned();
            let body: Value = r.json().await.expect("json");
            let event_id = body["event_id"].as_str().expect("event_id").to_owned();
            requests.push((request_id, event_id, (from, to)));
        }
        let seconds: Vec<(u64, u64)> = requests.iter().map(|r| r.2).collect();
        let possible = announced_sets(&seconds, PER_SEC as usize);
        if let [expected] = possible.into_iter().collect::<Vec<_>>().as_slice() {
            break (app, requests, expected.clone());
        }
        app.cleanup().await;
    };
    // Exactly the 5 events and the expected announcements arrive, and nothing more.
    app.settled(&[("warren.audit", (requests.len() + expected.len()) as u64)])
        .await;
    let mut events = BTreeSet::new();
    let mut announced = BTreeSet::new();
    for m in app.drain("warren.audit").await {
        let v: Value = serde_json::from_slice(&m.delivery.data).expect("json event");
        match v["event_name"].as_str() {
            Some("order.created") => {
                let id = v["event_id"].as_str().expect("event_id");
                assert!(events.insert(id.to_owned()), "published twice: {v}");
            }
            Some("system.slow_request") => {
                assert_eq!(v["data"]["method"], "POST", "{v}");
                assert_eq!(v["data"]["path"], "/v1/events/{name}", "{v}");
                assert_eq!(v["data"]["status"], 202, "{v}");
                assert_eq!(v["data"]["threshold_ms"], 0, "{v}");
                assert!(
                    v["data"]["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
                    "{v}"
                );
                let id = v["data"]["request_id"].as_str().expect("request_id");
                assert!(announced.insert(id.to_owned()), "announced twice: {v}");
            }
            other => panic!("unexpected {other:?}: {v}"),
        }
    }
    let want_events: BTreeSet<String> = requests.iter().map(|r| r.1.clone()).collect();
    assert_eq!(events, want_events);
    let want_announced: BTreeSet<String> =
        expected.iter().map(|&i| requests[i].0.clone()).collect();
    assert_eq!(
        announced,
        want_announced,
        "announced at most {PER_SEC} a second, in request order (seconds: {:?})",
        requests.iter().map(|r| r.2).collect::<Vec<_>>()
    );
    // Every one of them is counted, announced or not.
    let text = metrics_text(&app, &app.base).await;
    assert!(
        text.contains(r#"http_slow_requests_total{method="POST",path="/v1/events/{name}"} 5"#),
        "{text}"
    );
    app.cleanup().await;
}

/// `system.slow_request` goes through the events service like a published event: with the
/// broker away (behind a closed gate) it is kept in the events outbox, and published by the
/// relay once the broker is back.
#[tokio::test]
async fn a_slow_request_event_is_kept_in_the_outbox_when_the_broker_cannot_confirm() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    let gate = crate::gate::BrokerGate::to_test_broker().await;
    let port = gate.port;
    let app = crate::helpers::spawn_roles(
        &[Role::Http],
        move |mut s| {
            let mut url = url::Url::parse(s.amqp.url.expose()).expect("url");
            url.set_port(Some(port)).expect("port");
            s.amqp.url = warren::config::Secret::new(url.to_string());
            s.amqp.connect_timeout_ms = 500;
            s.amqp.publish_timeout_ms = 1_000;
            s.outbox.relay_ms = 200;
            s.http.slow_request_ms = 0;
            s.http.slow_request_events_per_sec = 1_000;
            s
        },
        |a| a,
    )
    .await;
    gate.close();
    crate::outbox::until_broker_refused(&app).await;

    let r = app
        .post_event("order.created", &json!({"slow": true}))
        .await;
    assert_eq!(r.status(), 202);
    let request_id = r.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["stored"], "outbox", "{body}");
    let kept = eventually(
        Duration::from_secs(15),
        "the slow request's event kept in the outbox",
        || async {
            let db = app.db().await;
            let rows = entities::event_outbox::Entity::find()
                .filter(entities::event_outbox::Column::RoutingKey.eq("system.slow_request"))
                .filter(entities::event_outbox::Column::RequestId.eq(request_id.as_str()))
                .all(&db)
                .await
                .expect("query");
            let _ = db.close().await;
            rows.into_iter().next()
        },
    )
    .await;
    let stored: Value = serde_json::from_str(&kept.body).expect("json body");
    assert_eq!(stored["data"]["path"], "/v1/events/{name}", "{stored}");
    assert_eq!(
        stored["data"]["request_id"],
        request_id.as_str(),
        "{stored}"
    );

    gate.open();
    let published = eventually(
        Duration::from_secs(30),
        "the kept event published once the broker is back",
        || async {
            app.drain("warren.audit").await.into_iter().find_map(|m| {
                let v: Value = serde_json::from_slice(&m.delivery.data).ok()?;
                (v["event_name"] == "system.slow_request"
                    && v["data"]["request_id"] == request_id.as_str())
                .then_some(v)
            })
        },
    )
    .await;
    assert_eq!(published["event_id"], stored["event_id"], "{published}");
    app.cleanup().await;
}

fn trace_id_of(header: &str) -> &str {
    header.get(3..35).unwrap_or("")
}

#[tokio::test]
async fn one_trace_id_follows_a_request_through_retries_dead_letters_and_saga_steps() {
    let failing = AlwaysFails::default();
    let app = spawn_saga(ALL, |s| s, {
        let f = failing.clone();
        move |a| a.consumer(f)
    })
    .await;
    // A tap on every command and reply, to read their headers afterwards.
    let conn = lapin::Connection::connect(&app.vhost.amqp_url(), Default::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    // Durable: RabbitMQ 4.0 deprecates transient non-exclusive queues.
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("test.trace".into(), durable, Default::default())
        .await
        .expect("declare");
    for (ex, key) in [("warren.commands", "#"), ("warren.replies", "saga")] {
        ch.queue_bind(
            "test.trace".into(),
            ex.into(),
            key.into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("bind");
    }
    let _ = conn.close(200, "".into()).await;

    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    seed(&app, json!({"SKU-1": 5}), json!({"u-1": 1_000})).await;
    let r = app
        .request(reqwest::Method::POST, "/v1/orders")
        .header("traceparent", &incoming)
        .json(&order("T-1", "u-1", "SKU-1", 1, 100))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202);
    let saga: Value = r.json().await.expect("json");
    let id = saga["saga_id"].as_str().expect("id").to_owned();
    let view = until_status(&app, &id, "completed", Duration::from_secs(30)).await;
    assert_eq!(
        trace_id_of(view["traceparent"].as_str().expect("stored")),
        trace
    );
    app.settled(&[("test.trace", 8)]).await;
    let tapped = app.drain("test.trace").await;
    assert_eq!(tapped.len(), 8, "4 commands and 4 replies");
    for m in &tapped {
        let tp = warren::broker::names::header_str(&m.delivery.properties, "traceparent")
            .expect("traceparent header");
        assert_eq!(trace_id_of(&tp), trace, "{:?}", m.delivery.routing_key);
    }

    // A job that retries and is parked keeps the caller's trace id at every hop.
    let trace2 = "0af7651916cd43dd8448eb211c80319c";
    let r = app
        .request(reqwest::Method::POST, "/v1/jobs/email.send")
        .header("traceparent", format!("00-{trace2}-b7ad6b7169203331-01"))
        .json(&json!({"email": "a@example.com", "subject": "s", "content": "c"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202);
    // Parked once, after its three attempts, and nothing left in the queue or a tier.
    app.settled(&[("warren.email", 0), ("warren.email.dead", 1)])
        .await;
    let parked = app.drain("warren.email.dead").await;
    let tp = warren::broker::names::header_str(&parked[0].delivery.properties, "traceparent")
        .expect("traceparent kept on the dead letter");
    assert_eq!(trace_id_of(&tp), trace2);
    let seen = failing.traceparents.lock().expect("lock").clone();
    assert_eq!(seen.len(), 3, "three attempts");
    for tp in seen {
        assert_eq!(
            trace_id_of(&tp.expect("traceparent on every attempt")),
            trace2
        );
    }
    app.cleanup().await;
}
