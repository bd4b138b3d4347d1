//! What operators see: the metrics (checked by promtool), the worker metrics listener, slow
//! requests, and one trace id carried through publish, retry, dead-letter, saga command and
//! reply.

use std::{
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

#[tokio::test]
async fn slow_requests_are_counted_and_announced_as_events() {
    // Every request counts as slow with a 0 ms threshold; no module consumes warren.audit,
    // so the announcements wait there.
    let app = crate::helpers::spawn_app_with(
        |mut s| {
            s.http.slow_request_ms = 0;
            s.http.slow_request_events_per_sec = 2;
            s
        },
        |a| a,
    )
    .await;
    for i in 0..5 {
        let r = app.post_event("order.created", &json!({"i": i})).await;
        assert_eq!(r.status(), 202);
    }
    let text = metrics_text(&app, &app.base).await;
    assert!(
        text.contains(r#"http_slow_requests_total{method="POST",path="/v1/events/{name}"} 5"#),
        "{text}"
    );
    let slow = eventually(Duration::from_secs(10), "slow_request events", || async {
        let msgs = app.drain("warren.audit").await;
        let slow: Vec<Value> = msgs
            .iter()
            .filter_map(|m| serde_json::from_slice::<Value>(&m.delivery.data).ok())
            .filter(|v| v["event_name"] == "system.slow_request")
            .collect();
        (!slow.is_empty()).then_some(slow)
    })
    .await;
    assert!(slow.len() <= 2, "capped at 2 per second: {}", slow.len());
    assert_eq!(slow[0]["data"]["path"], "/v1/events/{name}");
    assert_eq!(slow[0]["data"]["threshold_ms"], 0);
    assert!(slow[0]["data"]["duration_ms"].is_number());
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
    ch.queue_declare("test.trace".into(), Default::default(), Default::default())
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
    let tapped = app.drain("test.trace").await;
    assert_eq!(tapped.len(), 8, "4 commands and 4 replies");
    for m in &tapped {
        let tp = warren::broker::envelope::header_str(&m.delivery.properties, "traceparent")
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
    let parked = eventually(Duration::from_secs(30), "the job is parked", || async {
        let m = app.drain("warren.email.dead").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    let tp = warren::broker::envelope::header_str(&parked[0].delivery.properties, "traceparent")
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
