//! [`SubscriptionConsumer::handle`] against a real HTTP receiver on 127.0.0.1: one route per
//! answer a subscriber can give (and one that never answers), and a port nobody listens on.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use warp::{Filter, http::Response};

use super::*;
use crate::{
    broker::envelope::Event,
    config::ModuleSettings,
    jobs::{Job, JobError},
};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub(super) struct Captured {
    pub(super) path: String,
    pub(super) headers: warp::http::HeaderMap,
    pub(super) body: Bytes,
}

/// A receiver on 127.0.0.1:0: `/ok` 204, `/busy` 503 with `Retry-After: 7`, `/boom` 500,
/// `/missing` 404 with a body, `/moved` 301 to `/ok`, `/big` 422 with a 1 MiB body, `/hang`
/// never answers. Returns its address and what it received.
pub(super) async fn receiver() -> (SocketAddr, Arc<Mutex<Vec<Captured>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let route = warp::path::full()
        .and(warp::header::headers_cloned())
        .and(warp::body::bytes())
        .then(
            move |path: warp::path::FullPath, headers: warp::http::HeaderMap, body: Bytes| {
                let log = log.clone();
                async move {
                    let path = path.as_str().to_owned();
                    log.lock().expect("lock").push(Captured {
                        path: path.clone(),
                        headers,
                        body,
                    });
                    let r = Response::builder();
                    match path.as_str() {
                        "/ok" => r.status(204).body(Vec::new()),
                        "/busy" => r
                            .status(503)
                            .header("retry-after", "7")
                            .body(b"busy".to_vec()),
                        "/boom" => r.status(500).body(b"stack trace".to_vec()),
                        "/missing" => r.status(404).body(b"no such hook".to_vec()),
                        "/moved" => r.status(301).header("location", "/ok").body(Vec::new()),
                        "/big" => r.status(422).body(vec![b'x'; 1 << 20]),
                        _ => {
                            // `/hang`: holds the request until the client gives up.
                            std::future::pending::<()>().await;
                            r.status(200).body(Vec::new())
                        }
                    }
                    .expect("response")
                }
            },
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(warp::serve(route).incoming(listener).run());
    (addr, seen)
}

pub(super) fn job(name: &str, aggregate: Option<&str>) -> Job {
    let event = Event::new(
        name,
        aggregate.map(str::to_owned),
        serde_json::json!({"order_id": 42, "note": "ünïcode"}),
    );
    Job {
        message_id: event.event_id,
        // None given: ce-source's exchange comes from the subscription's patterns.
        exchange: String::new(),
        routing_key: name.to_owned(),
        event,
        attempt: 2,
        max_attempts: 3,
        queue: "warren.sub.test".to_owned(),
        correlation_id: None,
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
        request_id: Some("req-123".to_owned()),
    }
}

pub(super) fn settings(url: String) -> SubscriptionSettings {
    let mut sub = SubscriptionSettings::new("test", url);
    sub.events = vec!["order.*".to_owned()];
    sub.timeout_ms = 500;
    sub.max_response_bytes = 64;
    sub
}

fn consumer(sub: &SubscriptionSettings, metrics: &Metrics) -> SubscriptionConsumer {
    SubscriptionConsumer::new(sub, "/", http_client().expect("client"), metrics.clone())
        .expect("consumer")
}

#[tokio::test]
async fn each_answer_goes_its_way() {
    let (addr, seen) = receiver().await;
    let metrics = Metrics::new();
    let at = |path: &str| consumer(&settings(format!("http://{addr}{path}")), &metrics);
    let job = job("order.created", Some("order-42"));

    assert_eq!(at("/ok").handle(&job).await, Ok(()));

    let busy = at("/busy").deliver(&job).await;
    assert_eq!(busy.status, Some(503));
    assert_eq!(busy.retry_after, Some(Duration::from_secs(7)));
    assert!(
        matches!(busy.into_result(), Err(JobError::Failed(r)) if r.contains("503") && r.ends_with("busy"))
    );

    assert!(matches!(at("/boom").handle(&job).await, Err(JobError::Error(r)) if r.contains("500")));
    assert_eq!(
        at("/missing").handle(&job).await,
        Err(JobError::Invalid(
            "subscriber answered 404 Not Found: no such hook".into()
        ))
    );

    let before = seen.lock().expect("lock").len();
    let moved = at("/moved").handle(&job).await;
    assert!(matches!(moved, Err(JobError::Invalid(r)) if r.contains("301")));
    let paths: Vec<String> = seen.lock().expect("lock")[before..]
        .iter()
        .map(|c| c.path.clone())
        .collect();
    assert_eq!(paths, ["/moved"], "the redirect was not followed");

    let big = at("/big").deliver(&job).await;
    assert_eq!(big.status, Some(422));
    assert_eq!(
        big.body.len(),
        64,
        "only max_response_bytes of the body are kept"
    );

    let rendered = metrics.render();
    for outcome in ["delivered", "failed", "error", "invalid"] {
        assert!(
            rendered.contains(&format!(
                "subscription_deliveries_total{{subscription=\"test\",outcome=\"{outcome}\"}}"
            )),
            "{outcome} counted: {rendered}"
        );
    }
    assert!(
        rendered.contains("subscription_delivery_duration_seconds_count{subscription=\"test\"} 6"),
        "{rendered}"
    );
}

#[tokio::test]
async fn a_subscriber_that_hangs_costs_the_timeout_and_is_an_error() {
    let (addr, _seen) = receiver().await;
    let metrics = Metrics::new();
    let c = consumer(&settings(format!("http://{addr}/hang")), &metrics);
    let started = Instant::now();
    let out = c.deliver(&job("order.created", None)).await;
    let took = started.elapsed();
    assert_eq!(out.kind, "timeout", "{out:?}");
    assert!(
        took >= Duration::from_millis(500),
        "gave up early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(500) + HANDLER_MARGIN,
        "the client's timeout fires before the runner's: {took:?}"
    );
    assert!(matches!(out.into_result(), Err(JobError::Error(r)) if r.contains("500 ms")));
    assert!(c.timeout() > Duration::from_millis(500));
}

#[tokio::test]
async fn a_refused_connection_is_an_error() {
    // A port that was just free: bound, then closed.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = free.local_addr().expect("addr");
    drop(free);
    let c = consumer(&settings(format!("http://{addr}/ok")), &Metrics::new());
    let out = c.deliver(&job("order.created", None)).await;
    assert_eq!(out.kind, "connect", "{out:?}");
    assert!(
        matches!(out.into_result(), Err(JobError::Error(r)) if r.starts_with("cannot connect"))
    );
}

#[tokio::test]
async fn a_delivery_carries_the_binding_headers_and_the_static_ones() {
    let (addr, seen) = receiver().await;
    let mut sub = settings(format!("http://{addr}/ok"));
    sub.headers.insert(
        "authorization".into(),
        crate::config::Secret::new("Bearer s3cret-token"),
    );
    sub.secret = Some(crate::config::Secret::new(
        "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
    ));
    let c = consumer(&sub, &Metrics::new());
    assert!(!format!("{c:?}").contains("s3cret"), "{c:?}");
    let job = job("order.created", Some("order 42/ü"));
    assert_eq!(c.handle(&job).await, Ok(()));
    let got = seen.lock().expect("lock").pop().expect("a request");
    let h = |name: &str| {
        got.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(h("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(h("ce-id"), Some(job.message_id.to_string()));
    assert_eq!(h("ce-type").as_deref(), Some("order.created"));
    assert_eq!(
        h("ce-source").as_deref(),
        Some("/warren/%252F/warren.events")
    );
    assert_eq!(h("ce-subject").as_deref(), Some("order%2042/%C3%BC"));
    assert_eq!(h("ce-time"), Some(job.event.occurred_on_rfc3339()));
    assert_eq!(h("content-type").as_deref(), Some("application/json"));
    assert_eq!(h("authorization").as_deref(), Some("Bearer s3cret-token"));
    assert_eq!(h("warren-attempt").as_deref(), Some("2"));
    assert_eq!(h("warren-subscription").as_deref(), Some("test"));
    assert_eq!(h("x-request-id").as_deref(), Some("req-123"));
    let tp = h("traceparent").expect("traceparent");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && !tp.contains("00f067aa0ba902b7"),
        "a child span in the same trace: {tp}"
    );
    assert_eq!(h("webhook-id"), Some(job.message_id.to_string()));
    assert!(h("webhook-signature").is_some_and(|s| s.starts_with("v1,")));
    assert_eq!(got.body, serde_json::to_vec(&job.event.data).expect("json"));
}

#[test]
fn consumers_and_runner_limits_come_from_the_settings() {
    let mut settings = Settings::default();
    let mut a = settings_for("a");
    a.concurrency = 4;
    a.max_attempts = Some(7);
    a.timeout_ms = 1_000;
    let b = settings_for("b");
    settings.subscriptions = vec![a, b];
    settings.jobs.modules.insert(
        "sub.b".into(),
        ModuleSettings {
            prefetch: Some(3),
            ..ModuleSettings::default()
        },
    );
    let board = super::status::Board::new();
    let consumers = consumers(&settings, &Metrics::new(), &board, None).expect("consumers");
    assert!(!board.is_empty(), "each reports to the board");
    let names: Vec<(&str, &str)> = consumers.iter().map(|c| (c.name(), c.queue())).collect();
    assert_eq!(
        names,
        [("sub.a", "warren.sub.a"), ("sub.b", "warren.sub.b")]
    );
    // The consumer's own limits; the runner lets `jobs.modules."sub.<name>"` win over them
    // (sub.b's prefetch of 3 there).
    let a = consumers[0].limits();
    assert_eq!(
        (a.concurrency, a.prefetch, a.max_attempts, a.timeout_ms),
        (Some(4), Some(8), Some(7), Some(3_000))
    );
    let b = consumers[1].limits();
    assert_eq!(
        (b.concurrency, b.prefetch, b.max_attempts),
        (Some(16), Some(32), None),
        "attempts fall back to jobs.max_attempts"
    );
    drop(consumers);
    assert!(board.is_empty(), "a consumer dropped leaves the board");
}

fn settings_for(name: &str) -> SubscriptionSettings {
    let mut s = SubscriptionSettings::new(name, "http://127.0.0.1:9/hook");
    s.events = vec!["#".into()];
    s
}

#[test]
fn a_subscription_without_tls_files_shares_the_client_and_a_bad_tls_file_fails_the_start() {
    let shared = http_client().expect("client");
    let plain = SubscriptionSettings::new("plain", "https://h/x");
    assert!(client_for(&plain, &shared).is_ok());

    let mut missing = SubscriptionSettings::new("billing", "https://h/x");
    missing.tls_ca_file = Some("/nonexistent/ca.pem".into());
    let err = client_for(&missing, &shared)
        .expect_err("a missing CA file")
        .to_string();
    assert!(
        err.contains("billing")
            && err.contains("tls_ca_file")
            && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let mut no_pem = SubscriptionSettings::new("billing", "https://h/x");
    no_pem.tls_ca_file = Some(empty);
    let err = client_for(&no_pem, &shared)
        .expect_err("no certificate in the file")
        .to_string();
    assert!(err.contains("no PEM certificate"), "{err}");

    let mut bad_key = SubscriptionSettings::new("billing", "https://h/x");
    bad_key.tls_client_cert_file = Some(dir.path().join("empty.pem"));
    bad_key.tls_client_key_file = Some(dir.path().join("empty.pem"));
    let err = client_for(&bad_key, &shared)
        .expect_err("no key")
        .to_string();
    assert!(err.contains("tls_client_cert_file"), "{err}");
}
