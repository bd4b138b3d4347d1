//! HTTP subscriptions end to end: warren delivers from each subscription's queue to a real
//! HTTP receiver started by the test, and every answer goes the way the article's runner
//! sends a Rust module's result (done, the 60 s tier, the 120 s tier, parked), through the
//! same queues, dead letters, `failed_jobs` rows and `job.failed` alerts. Tiers are 1 s and
//! 2 s here (`spawn_worker_with`).

use std::{
    collections::{BTreeSet, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use sea_orm::EntityTrait;
use serde_json::json;
use warp::{Filter, http::Response};

use warren::{
    broker::{
        envelope::Event,
        names::{self, H_ATTEMPT, header_int, header_str},
    },
    config::SubscriptionSettings,
};

use crate::helpers::{TestApp, eventually, spawn_worker_with};

/// One answer the receiver gives: status, extra headers, body, and how long it waits first.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(&'static str, &'static str)>,
    pub(crate) body: &'static str,
    pub(crate) delay: Duration,
}

pub(crate) fn answer(status: u16) -> Answer {
    Answer {
        status,
        headers: Vec::new(),
        body: "",
        delay: Duration::ZERO,
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub(crate) struct Got {
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: Bytes,
    pub(crate) at: Instant,
}

impl Got {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A real HTTP receiver on 127.0.0.1: `POST /{name}` plays `name`'s script (one answer per
/// request, the last one for ever after) and records each request.
#[derive(Clone, Default)]
pub(crate) struct Receiver {
    scripts: Arc<Mutex<HashMap<String, Vec<Answer>>>>,
    got: Arc<Mutex<HashMap<String, Vec<Got>>>>,
}

impl Receiver {
    pub(crate) async fn start(scripts: &[(&str, Vec<Answer>)]) -> (Self, SocketAddr) {
        let r = Receiver::default();
        for (name, script) in scripts {
            r.scripts
                .lock()
                .expect("lock")
                .insert((*name).to_owned(), script.clone());
        }
        let state = r.clone();
        let route = warp::post()
            .and(warp::path::param::<String>())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .then(
                move |name: String, headers: warp::http::HeaderMap, body: Bytes| {
                    let state = state.clone();
                    async move { state.answer(name, headers, body).await }
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(warp::serve(route).incoming(listener).run());
        (r, addr)
    }

    async fn answer(
        &self,
        name: String,
        headers: warp::http::HeaderMap,
        body: Bytes,
    ) -> Response<String> {
        let n = {
            let mut got = self.got.lock().expect("lock");
            let list = got.entry(name.clone()).or_default();
            list.push(Got {
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                    .collect(),
                body,
                at: Instant::now(),
            });
            list.len()
        };
        let a = {
            let scripts = self.scripts.lock().expect("lock");
            let script = scripts.get(&name).cloned().unwrap_or_default();
            script
                .get(n - 1)
                .or(script.last())
                .cloned()
                .unwrap_or_else(|| answer(204))
        };
        if !a.delay.is_zero() {
            tokio::time::sleep(a.delay).await;
        }
        let mut resp = Response::builder().status(a.status);
        for (k, v) in &a.headers {
            resp = resp.header(*k, *v);
        }
        resp.body(a.body.to_owned()).expect("response")
    }

    pub(crate) fn got(&self, name: &str) -> Vec<Got> {
        self.got
            .lock()
            .expect("lock")
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    pub(crate) async fn wait(&self, name: &str, n: usize, limit: Duration) -> Vec<Got> {
        eventually(limit, &format!("{n} requests to /{name}"), || async {
            let got = self.got(name);
            (got.len() >= n).then_some(got)
        })
        .await
    }
}

pub(crate) fn subscription(name: &str, addr: SocketAddr, events: &[&str]) -> SubscriptionSettings {
    let mut s = SubscriptionSettings::new(name, format!("http://{addr}/{name}"));
    s.events = events.iter().map(|e| (*e).to_owned()).collect();
    s
}

pub(crate) async fn start(subs: Vec<SubscriptionSettings>) -> TestApp {
    let modules: Vec<String> = subs.iter().map(|s| format!("sub.{}", s.name)).collect();
    spawn_worker_with(
        move |mut s| {
            s.subscriptions = subs;
            s
        },
        move |a| a.modules(modules),
    )
    .await
}

/// The inbox rows of job module `module`.
async fn inbox_rows(app: &TestApp, module: &str) -> usize {
    use sea_orm::{ColumnTrait, QueryFilter};
    entities::processed_messages::Entity::find()
        .filter(entities::processed_messages::Column::Consumer.eq(module))
        .all(&app.db().await)
        .await
        .expect("query")
        .len()
}

pub(crate) async fn publish(app: &TestApp, name: &str, data: serde_json::Value) -> String {
    let r = app.post_event(name, &data).await;
    assert_eq!(r.status(), 202, "{name} accepted");
    r.json::<serde_json::Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned()
}

#[tokio::test]
async fn each_subscribed_event_is_delivered_once_as_a_cloudevent_and_only_those() {
    let (rx, addr) = Receiver::start(&[("orders", vec![answer(204)])]).await;
    let mut sub = subscription("orders", addr, &["order.*"]);
    sub.concurrency = 4;
    let app = start(vec![sub]).await;
    let mut want = BTreeSet::new();
    for n in 0..30 {
        want.insert(publish(&app, "order.created", json!({"n": n})).await);
        // Not subscribed: never delivered.
        publish(&app, "user.registered", json!({"n": n})).await;
    }
    rx.wait("orders", 30, Duration::from_secs(20)).await;
    app.settled(&[("warren.sub.orders", 0)]).await;
    let got = rx.got("orders");
    let ids: BTreeSet<String> = got
        .iter()
        .map(|g| g.header("ce-id").expect("ce-id").to_owned())
        .collect();
    assert_eq!(ids, want, "every subscribed event, each once, nothing else");
    assert_eq!(got.len(), 30, "no request repeated");
    for g in &got {
        assert_eq!(g.header("ce-specversion"), Some("1.0"));
        assert_eq!(g.header("ce-type"), Some("order.created"));
        assert!(
            g.header("ce-source")
                .is_some_and(|s| s.starts_with("/warren/") && s.ends_with("/warren.events")),
            "{:?}",
            g.header("ce-source")
        );
        assert_eq!(g.header("warren-subscription"), Some("orders"));
        assert_eq!(g.header("warren-attempt"), Some("1"));
        assert_eq!(g.header("content-type"), Some("application/json"));
        assert!(g.header("traceparent").is_some());
        let data: serde_json::Value = serde_json::from_slice(&g.body).expect("json body");
        assert!(data["n"].is_number(), "the event's data is the body");
    }
    assert_eq!(
        inbox_rows(&app, "sub.orders").await,
        30,
        "the inbox has each"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn each_answer_goes_its_way_through_the_tiers_and_the_dead_letters() {
    let retry_after = Answer {
        headers: vec![("retry-after", "1")],
        ..answer(429)
    };
    let hang = Answer {
        delay: Duration::from_secs(5),
        ..answer(204)
    };
    let refusal = Answer {
        body: "{\"error\":\"no such customer\"}",
        ..answer(404)
    };
    let (rx, addr) = Receiver::start(&[
        ("reported", vec![answer(503), answer(204)]),
        ("broken", vec![answer(500), answer(204)]),
        ("slow", vec![hang, answer(204)]),
        ("busy", vec![retry_after, answer(204)]),
        ("refused", vec![refusal]),
        ("exhausted", vec![answer(503)]),
        ("alerts", vec![answer(204)]),
    ])
    .await;
    let names = ["reported", "broken", "slow", "busy", "refused", "exhausted"];
    let subs: Vec<SubscriptionSettings> = names
        .iter()
        .map(|n| {
            let mut s = subscription(n, addr, &["invoice.*"]);
            s.timeout_ms = 500;
            s.max_attempts = Some(2);
            s
        })
        .collect();
    // The job.failed alerts reach an HTTP service like any event.
    let mut subs = subs;
    subs.push(subscription("alerts", addr, &["job.failed"]));
    let app = start(subs).await;
    let id = publish(&app, "invoice.issued", json!({"invoice": 7})).await;

    // 503 (a reported failure): the failure tier, then delivered on attempt 2.
    let got = rx.wait("reported", 2, Duration::from_secs(20)).await;
    let attempts: Vec<_> = got.iter().map(|g| g.header("warren-attempt")).collect();
    assert_eq!(attempts, [Some("1"), Some("2")]);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited in the 1 s tier: {gap:?}"
    );
    // 500 (an error): the error tier.
    let got = rx.wait("broken", 2, Duration::from_secs(20)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1_950),
        "waited in the 2 s tier: {gap:?}"
    );
    // No answer within timeout_ms: an error too.
    let got = rx.wait("slow", 2, Duration::from_secs(20)).await;
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(2_400),
        "timeout, then the 2 s tier: {gap:?}"
    );
    // 429 with Retry-After: a pause, and the same attempt again.
    let got = rx.wait("busy", 2, Duration::from_secs(20)).await;
    let attempts: Vec<_> = got.iter().map(|g| g.header("warren-attempt")).collect();
    assert_eq!(
        attempts,
        [Some("1"), Some("1")],
        "a pause spends no attempt"
    );
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "paused for Retry-After: {gap:?}"
    );
    for got in [&rx.got("reported"), &rx.got("broken"), &rx.got("busy")] {
        assert!(got.iter().all(|g| g.header("ce-id") == Some(id.as_str())));
    }

    // 404 (a refusal): parked at once; 503 every time: parked after max_attempts (2).
    let parked = |queue: String| {
        let app = &app;
        async move {
            eventually(
                Duration::from_secs(20),
                &format!("{queue} parked"),
                || async {
                    let m = app.drain(&queue).await;
                    (!m.is_empty()).then_some(m)
                },
            )
            .await
        }
    };
    let refused = parked("warren.sub.refused.dead".to_owned()).await;
    assert_eq!(rx.got("refused").len(), 1, "a refusal is not retried");
    let p = &refused[0].delivery.properties;
    assert_eq!(header_str(p, names::H_REASON).as_deref(), Some("invalid"));
    let error = header_str(p, names::H_ERROR).expect("error header");
    assert!(
        error.contains("404") && error.contains("no such customer"),
        "status and body kept: {error}"
    );
    assert_eq!(
        header_str(p, "x-warren-http-status").as_deref(),
        Some("404")
    );
    assert_eq!(
        header_str(p, "x-warren-http-body").as_deref(),
        Some("{\"error\":\"no such customer\"}")
    );
    assert_eq!(
        header_str(p, "x-warren-http-outcome").as_deref(),
        Some("invalid")
    );
    let exhausted = parked("warren.sub.exhausted.dead".to_owned()).await;
    assert_eq!(
        rx.got("exhausted").len(),
        2,
        "exactly max_attempts deliveries"
    );
    let p = &exhausted[0].delivery.properties;
    assert_eq!(header_str(p, names::H_REASON).as_deref(), Some("exhausted"));
    assert_eq!(header_int(p, H_ATTEMPT), Some(2));
    assert_eq!(
        header_str(p, "x-warren-http-status").as_deref(),
        Some("503")
    );
    let body: Event = serde_json::from_slice(&exhausted[0].delivery.data).expect("kept");
    assert_eq!(body.event_id.to_string(), id);

    // Both have a failed_jobs row and a job.failed alert naming the subscription.
    let db = app.db().await;
    let rows = entities::failed_jobs::Entity::find()
        .all(&db)
        .await
        .expect("query");
    let mut queues: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.queue.as_str(), r.reason.as_str()))
        .collect();
    queues.sort_unstable();
    assert_eq!(
        queues,
        [
            ("warren.sub.exhausted", "exhausted"),
            ("warren.sub.refused", "invalid")
        ]
    );
    let alerts = rx.wait("alerts", 2, Duration::from_secs(10)).await;
    let mut kinds: Vec<String> = alerts
        .iter()
        .map(|g| {
            assert_eq!(g.header("ce-type"), Some("job.failed"));
            let data: serde_json::Value = serde_json::from_slice(&g.body).expect("json");
            assert_eq!(data["job_id"], id.as_str());
            data["type"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["sub.exhausted_failed", "sub.refused_failed"]);
    let names: Vec<String> = names
        .iter()
        .chain(&["alerts"])
        .flat_map(|n| [format!("warren.sub.{n}"), format!("warren.sub.{n}.dead")])
        .collect();
    let queues: Vec<(&str, u64)> = names.iter().map(|q| (q.as_str(), 0)).collect();
    app.settled(&queues).await;
    app.cleanup().await;
}

#[tokio::test]
async fn a_job_type_an_http_service_subscribes_to_is_accepted_and_delivered() {
    let (rx, addr) = Receiver::start(&[("invoices", vec![answer(200)])]).await;
    // Its events pattern matches the job type too: ce-source must still name the exchange
    // the job came from.
    let mut sub = subscription("invoices", addr, &["invoice.*"]);
    sub.commands = vec!["invoice.render".to_owned()];
    // Without the inbox: no database write per delivery.
    sub.inbox = false;
    let app = start(vec![sub]).await;
    let r = app
        .request(reqwest::Method::POST, "/v1/jobs/invoice.render")
        .json(&json!({"invoice": 42}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202, "a subscribed job type is known");
    let job_id = r.json::<serde_json::Value>().await.expect("json")["job_id"]
        .as_str()
        .expect("job_id")
        .to_owned();
    // A job type nobody takes is still refused.
    let r = app
        .request(reqwest::Method::POST, "/v1/jobs/invoice.void")
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 404);
    let got = rx.wait("invoices", 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].header("ce-id"), Some(job_id.as_str()));
    assert_eq!(got[0].header("ce-type"), Some("invoice.render"));
    let source = got[0].header("ce-source").expect("ce-source");
    assert!(source.ends_with("/warren.commands"), "{source}");
    app.settled(&[("warren.sub.invoices", 0)]).await;
    assert_eq!(rx.got("invoices").len(), 1);
    assert_eq!(inbox_rows(&app, "sub.invoices").await, 0, "inbox = false");
    app.cleanup().await;
}

#[tokio::test]
async fn the_breaker_opens_after_failures_in_a_row_holds_the_queue_then_one_trial_closes_it() {
    let (rx, addr) = Receiver::start(&[(
        "flaky",
        vec![answer(500), answer(500), answer(500), answer(204)],
    )])
    .await;
    let mut sub = subscription("flaky", addr, &["order.*"]);
    sub.concurrency = 1;
    sub.max_attempts = Some(5);
    sub.breaker.failures = 3;
    sub.breaker.cooldown_ms = 1_500;
    let app = start(vec![sub]).await;
    let mut want = BTreeSet::new();
    for n in 0..5 {
        want.insert(publish(&app, "order.created", json!({"n": n})).await);
    }
    // Three failures in a row open it: the fourth request comes only after the cooldown,
    // although two messages were waiting (without the breaker it came at once).
    let got = rx.wait("flaky", 4, Duration::from_secs(20)).await;
    let gap = got[3].at - got[2].at;
    assert!(
        gap >= Duration::from_millis(1_450),
        "no delivery while open: {gap:?}"
    );
    assert_eq!(
        got[3].header("warren-attempt"),
        Some("1"),
        "the waiting message kept its attempts"
    );
    // The trial went alone, then the breaker closed: every message delivered, each once
    // delivered (the three failed ones again after their tier).
    let got = rx.wait("flaky", 8, Duration::from_secs(20)).await;
    app.settled(&[("warren.sub.flaky", 0), ("warren.sub.flaky.dead", 0)])
        .await;
    let delivered: Vec<String> = rx
        .got("flaky")
        .iter()
        .skip(3)
        .map(|g| g.header("ce-id").expect("ce-id").to_owned())
        .collect();
    assert_eq!(delivered.len(), 5, "{got:?}");
    assert_eq!(
        delivered.iter().cloned().collect::<BTreeSet<_>>(),
        want,
        "each message delivered once after the failures"
    );
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(r#"subscription_breaker_state{subscription="flaky"} 0"#),
        "closed again"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_worker_killed_mid_delivery_loses_nothing_and_the_next_one_delivers_it() {
    let hang = Answer {
        delay: Duration::from_secs(60),
        ..answer(204)
    };
    let (rx, addr) = Receiver::start(&[("killed", vec![hang, answer(204)])]).await;
    // HTTP front in-process (it declares the subscription's queue, so nothing published
    // before the worker is up misses it); the subscription's worker is a separate
    // `warren worker`.
    let mut sub = subscription("killed", addr, &["order.*"]);
    sub.concurrency = 4;
    let app = spawn_worker_with(
        move |mut s| {
            s.subscriptions = vec![sub];
            s
        },
        |a| a,
    )
    .await;
    let config = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        config.path(),
        format!(
            "[[subscriptions]]\nname = \"killed\"\nevents = [\"order.*\"]\n\
             url = \"http://{addr}/killed\"\nconcurrency = 4\n"
        ),
    )
    .expect("config written");
    let worker = || {
        crate::reliability::KillOnDrop(
            std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(["worker", "--modules", "sub.killed"])
                .env("WARREN_CONFIG", config.path())
                .env("WARREN_AMQP__URL", app.vhost.amqp_url())
                .env(
                    "WARREN_AMQP__MANAGEMENT_URL",
                    crate::helpers::management_url(),
                )
                .env("WARREN_DATABASE__URL", &app.db.url)
                .env("WARREN_LOG__FILTER", "warn")
                .env("WARREN_JOBS__FAILURE_DELAY_MS", "1000")
                .env("WARREN_JOBS__ERROR_DELAY_MS", "2000")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("worker starts"),
        )
    };
    let mut first = worker();
    let mut want = BTreeSet::new();
    for n in 0..10 {
        want.insert(publish(&app, "order.created", json!({"n": n})).await);
    }
    // The fault lands on work in flight: the receiver holds the first delivery open.
    let held = rx.wait("killed", 1, Duration::from_secs(30)).await[0]
        .header("ce-id")
        .expect("ce-id")
        .to_owned();
    first.0.kill().expect("SIGKILL");
    let _ = first.0.wait();
    let _second = worker();
    // Every message answered 2xx (every request after the held one), the held one among
    // them: delivered again, with the same id for the receiver to recognise.
    eventually(Duration::from_secs(30), "all ten delivered", || async {
        let answered: BTreeSet<String> = rx
            .got("killed")
            .iter()
            .skip(1)
            .filter_map(|g| g.header("ce-id").map(str::to_owned))
            .collect();
        (answered == want).then_some(())
    })
    .await;
    app.settled(&[("warren.sub.killed", 0), ("warren.sub.killed.dead", 0)])
        .await;
    let again: Vec<Got> = rx
        .got("killed")
        .into_iter()
        .skip(1)
        .filter(|g| g.header("ce-id") == Some(held.as_str()))
        .collect();
    assert!(!again.is_empty(), "the held delivery came again");
    assert_eq!(
        again[0].header("webhook-id").or(again[0].header("ce-id")),
        Some(held.as_str()),
        "the same id on the redelivery"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_subscriptions_dead_letters_replayed_from_the_console_are_delivered_once_each() {
    // Refused (404) until the subscriber is fixed, then taken.
    let script = vec![answer(404), answer(404), answer(404), answer(204)];
    let (rx, addr) = Receiver::start(&[("fixed", script)]).await;
    let mut sub = subscription("fixed", addr, &["order.*"]);
    sub.url = format!("http://{addr}/fixed?token=s3cret");
    sub.concurrency = 1;
    let app = start(vec![sub]).await;
    let mut want = BTreeSet::new();
    for n in 0..3 {
        want.insert(publish(&app, "order.created", json!({"n": n})).await);
    }
    rx.wait("fixed", 3, Duration::from_secs(20)).await;
    app.settled(&[("warren.sub.fixed", 0), ("warren.sub.fixed.dead", 3)])
        .await;
    // What its owner sees first: where it delivers (no query: it may carry a token), what it
    // takes, its queue, the parked count and the last parked failure.
    let v = app.get_json("/v1/subscriptions").await;
    let row = &v["subscriptions"][0];
    assert_eq!(row["name"], "fixed");
    assert_eq!(row["url"], format!("http://{addr}/fixed"));
    assert!(!v.to_string().contains("s3cret"), "{v}");
    assert_eq!(row["events"], json!(["order.*"]));
    assert_eq!(row["queue"], "warren.sub.fixed");
    assert_eq!(row["parked"], 3);
    assert_eq!(row["last_parked"]["reason"], "invalid");
    assert!(
        row["last_parked"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("404")),
        "{row}"
    );
    // The console's operation: counted, confirmed, run under the queue's lock.
    let r = app
        .request(reqwest::Method::POST, "/v1/console/operations")
        .json(&json!({"action": "replay", "queue": "warren.sub.fixed", "confirm": true}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202);
    let op = r.json::<serde_json::Value>().await.expect("json")["operation"]["id"]
        .as_str()
        .expect("operation id")
        .to_owned();
    let done = eventually(Duration::from_secs(20), "replay done", || async {
        let v = app.get_json(&format!("/v1/console/operations/{op}")).await;
        (v["status"] == "done").then_some(v)
    })
    .await;
    assert_eq!(done["moved"], 3, "{done}");
    let got = rx.wait("fixed", 6, Duration::from_secs(20)).await;
    app.settled(&[("warren.sub.fixed", 0), ("warren.sub.fixed.dead", 0)])
        .await;
    let replayed: BTreeSet<String> = got[3..]
        .iter()
        .map(|g| g.header("ce-id").expect("ce-id").to_owned())
        .collect();
    assert_eq!(replayed, want, "each parked message delivered, once");
    assert_eq!(rx.got("fixed").len(), 6, "nothing delivered twice");
    app.cleanup().await;
}

#[tokio::test]
async fn an_https_subscriber_that_fails_the_tls_handshake_is_an_error_not_a_crash() {
    // A plain HTTP server behind an https:// URL: the TLS handshake fails.
    let (rx, addr) = Receiver::start(&[("tls", vec![answer(204)])]).await;
    let mut sub = SubscriptionSettings::new("tls", format!("https://{addr}/tls"));
    sub.events = vec!["order.*".to_owned()];
    sub.max_attempts = Some(1);
    let app = start(vec![sub]).await;
    let id = publish(&app, "order.created", json!({"n": 1})).await;
    let parked = eventually(Duration::from_secs(20), "parked", || async {
        let m = app.drain("warren.sub.tls.dead").await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    let p = &parked[0].delivery.properties;
    assert_eq!(header_str(p, names::H_REASON).as_deref(), Some("exhausted"));
    let outcome = header_str(p, "x-warren-http-outcome").expect("outcome header");
    assert!(
        ["connect", "transport"].contains(&outcome.as_str()),
        "a transport failure, in the error tier: {outcome}"
    );
    assert_eq!(header_str(p, "x-warren-http-status"), None, "no response");
    let body: Event = serde_json::from_slice(&parked[0].delivery.data).expect("kept");
    assert_eq!(body.event_id.to_string(), id);
    assert!(rx.got("tls").is_empty(), "no HTTP request got through");
    app.settled(&[("warren.sub.tls", 0), ("warren.sub.tls.dead", 0)])
        .await;
    app.cleanup().await;
}

/// The ten-line Python receiver of the README's "Receive events in any language", as
/// written there (its port swapped for a free one).
fn readme_receiver(port: u16) -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split_once("## Receive events in any language")
        .expect("the section")
        .1;
    let code = section
        .split_once("```python\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a python block")
        .0;
    assert!(
        code.contains("9000"),
        "the README's receiver listens on 9000"
    );
    code.replace("9000", &port.to_string())
}

#[tokio::test]
async fn the_readme_receiver_gets_a_published_event() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let script = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(script.path(), readme_receiver(port)).expect("written");
    let mut child = crate::reliability::KillOnDrop(
        std::process::Command::new("python3")
            .arg(script.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut sub = SubscriptionSettings::new("printer", format!("http://127.0.0.1:{port}/"));
    sub.events = vec!["user.*".to_owned(), "order.*".to_owned()];
    let app = start(vec![sub]).await;
    let id = publish(&app, "user.registered", json!({"email": "ann@example.com"})).await;
    let line = tokio::time::timeout(Duration::from_secs(20), lines.recv())
        .await
        .expect("the receiver printed within 20 s")
        .expect("a line");
    assert_eq!(
        line,
        format!("user.registered {id} {{\"email\":\"ann@example.com\"}}"),
        "type, id and data as the README says"
    );
    app.settled(&[("warren.sub.printer", 0), ("warren.sub.printer.dead", 0)])
        .await;
    app.cleanup().await;
}
