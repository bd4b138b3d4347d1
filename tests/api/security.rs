//! Security and limits over real HTTP, RabbitMQ and PostgreSQL: token scopes (401/403), the
//! per-caller publish rate (429 + `Retry-After`), the in-flight bound (fast 503s), secrets
//! kept out of logs, `/metrics`, `/readyz` and error bodies, and AMQPS with a test CA.

use std::{
    net::IpAddr,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use warren::{
    Role, Settings,
    broker::{Broker, envelope::Event, topology::encode},
    config::{Scope, Secret, TokenSetting},
    dispatch::{Listener, ListenerError},
};

use crate::{
    helpers::{TestApp, TestDb, TestVhost, eventually, management_url, spawn_app_with},
    reliability::KillOnDrop,
    saga::order,
};

const PUBLISHER: &str = "publisher-token-0123456789";
const READER: &str = "reader-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const PLAIN: &str = "plain-token-0123456789";

fn scoped(token: &str, scopes: &[Scope]) -> TokenSetting {
    TokenSetting::Scoped {
        token: Secret::new(token),
        scopes: scopes.to_vec(),
        name: None,
    }
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut req = app.request(method, path);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.expect("sent");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A route of the scope table.
struct ScopedRoute {
    method: Method,
    path: String,
    /// The scope it needs.
    scope: Scope,
    /// The body of the n-th call (a new order number each time).
    body: fn(usize) -> Option<Value>,
    /// What a permitted call answers: the status, and the error code when it is an error.
    answer: (u16, Option<&'static str>),
}

#[tokio::test]
async fn each_route_needs_its_scope_and_a_wrong_scope_is_403_naming_it() {
    let app = spawn_app_with(
        |mut s| {
            s.http.tokens = vec![
                scoped(PUBLISHER, &[Scope::Publish]),
                scoped(READER, &[Scope::Read]),
                scoped(OPERATOR, &[Scope::Admin]),
                Secret::new(PLAIN).into(),
            ];
            s
        },
        |a| a,
    )
    .await;
    let unknown = uuid::Uuid::now_v7();
    let route = |method: Method,
                 path: &str,
                 scope: Scope,
                 body: fn(usize) -> Option<Value>,
                 answer: (u16, Option<&'static str>)| ScopedRoute {
        method,
        path: path.to_owned(),
        scope,
        body,
        answer,
    };
    let none = |_| None;
    // Past the gate each route gives its own answer: 2xx for a real request, 404 with the
    // route's own code for the made-up order number and ids.
    let routes = vec![
        route(
            Method::POST,
            "/v1/events/order.created",
            Scope::Publish,
            |n| Some(json!({ "n": n })),
            (202, None),
        ),
        route(
            Method::POST,
            "/v1/jobs/email.send",
            Scope::Publish,
            |_| Some(json!({"email": "a@example.com", "subject": "s"})),
            (202, None),
        ),
        route(
            Method::POST,
            "/v1/orders",
            Scope::Publish,
            |n| Some(order(&format!("S-{n}"), "u-1", "SKU-1", 1, 100)),
            (202, None),
        ),
        route(
            Method::POST,
            "/v1/sagas/order",
            Scope::Publish,
            |n| {
                let key = format!("SG-{n}");
                Some(json!({"business_key": key, "payload": order(&key, "u-1", "SKU-1", 1, 100)}))
            },
            (202, None),
        ),
        route(
            Method::GET,
            "/v1/orders/A-1",
            Scope::Read,
            none,
            (404, Some("order_not_found")),
        ),
        route(Method::GET, "/v1/events", Scope::Read, none, (200, None)),
        route(
            Method::GET,
            "/v1/notifications",
            Scope::Read,
            none,
            (200, None),
        ),
        route(Method::GET, "/v1/dlq", Scope::Read, none, (200, None)),
        route(
            Method::GET,
            "/v1/dlq/warren.email",
            Scope::Read,
            none,
            (200, None),
        ),
        route(
            Method::GET,
            "/v1/failed-jobs",
            Scope::Read,
            none,
            (200, None),
        ),
        route(Method::GET, "/v1/sagas", Scope::Read, none, (200, None)),
        route(
            Method::GET,
            "/v1/subscriptions",
            Scope::Read,
            none,
            (200, None),
        ),
        route(
            Method::GET,
            &format!("/v1/sagas/{unknown}"),
            Scope::Read,
            none,
            (404, Some("saga_not_found")),
        ),
        route(
            Method::GET,
            "/v1/interventions",
            Scope::Read,
            none,
            (200, None),
        ),
        route(
            Method::POST,
            "/v1/dlq/warren.email/replay",
            Scope::Admin,
            none,
            (200, None),
        ),
        route(
            Method::POST,
            "/v1/dlq/warren.email/purge",
            Scope::Admin,
            none,
            (200, None),
        ),
        route(
            Method::POST,
            &format!("/v1/failed-jobs/{unknown}/retry"),
            Scope::Admin,
            none,
            (404, Some("failed_job_not_found")),
        ),
        route(
            Method::POST,
            &format!("/v1/interventions/{unknown}/retry"),
            Scope::Admin,
            none,
            (404, Some("intervention_not_found")),
        ),
        route(
            Method::POST,
            &format!("/v1/interventions/{unknown}/resolve"),
            Scope::Admin,
            |_| Some(json!({"note": "fixed by hand"})),
            (404, Some("intervention_not_found")),
        ),
        // No subscription in these settings: past the gate, 404 with the reason.
        route(
            Method::POST,
            "/v1/subscriptions/nope/pause",
            Scope::Admin,
            |_| Some(json!({"reason": "deploy"})),
            (404, Some("unknown_subscription")),
        ),
        route(
            Method::POST,
            "/v1/subscriptions/nope/resume",
            Scope::Admin,
            none,
            (404, Some("unknown_subscription")),
        ),
        route(
            Method::POST,
            "/v1/admin/seed",
            Scope::Admin,
            |_| Some(json!({"inventory": {"SKU-1": 5}, "accounts": {"u-1": 1_000}})),
            (200, None),
        ),
    ];
    let mut calls = 0;
    let mut events = Vec::new();
    let mut jobs = Vec::new();
    for r in &routes {
        let (method, path, needed) = (&r.method, r.path.as_str(), r.scope);
        for (token, scopes) in [
            (PUBLISHER, &[Scope::Publish][..]),
            (READER, &[Scope::Read][..]),
            (OPERATOR, &[Scope::Admin, Scope::Read][..]),
            (PLAIN, &[Scope::Publish, Scope::Read, Scope::Admin][..]),
        ] {
            calls += 1;
            let body = (r.body)(calls);
            let (status, answer) =
                send(&app, method.clone(), path, Some(token), body.as_ref()).await;
            if scopes.contains(&needed) {
                assert!(
                    status < 500,
                    "{method} {path} with {token}: a server error: {status} {answer}"
                );
                let (want, code) = r.answer;
                assert_eq!(status, want, "{method} {path} with {token}: {answer}");
                match code {
                    Some(code) => assert_eq!(
                        answer["error"]["code"], code,
                        "{method} {path} with {token}: {answer}"
                    ),
                    None => assert!(
                        answer.get("error").is_none(),
                        "{method} {path} with {token}: {answer}"
                    ),
                }
                if let Some(id) = answer["event_id"].as_str() {
                    events.push(id.to_owned());
                }
                if let Some(id) = answer["job_id"].as_str() {
                    jobs.push(id.to_owned());
                }
            } else {
                assert_eq!(status, 403, "{method} {path} with {token}: {answer}");
                assert_eq!(answer["error"]["code"], "forbidden", "{answer}");
                assert_eq!(
                    answer["error"]["required_scope"],
                    needed.as_str(),
                    "{answer}"
                );
                assert!(
                    answer["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(needed.as_str())),
                    "{answer}"
                );
            }
        }
        // No token, or an unknown one, is 401 everywhere (before any scope check).
        for token in [None, Some("unknown-token-0123456789")] {
            calls += 1;
            let body = (r.body)(calls);
            let (status, answer) = send(&app, method.clone(), path, token, body.as_ref()).await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
            assert_eq!(answer["error"]["code"], "unauthorized", "{answer}");
        }
    }
    // The permitted publishes went out (the publisher's and the plain token's), and nothing
    // the refused tokens sent did.
    let (status, answer) = send(
        &app,
        Method::POST,
        "/v1/events/order.created",
        Some(PUBLISHER),
        Some(&json!({})),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    events.push(answer["event_id"].as_str().expect("event_id").to_owned());
    assert_eq!((events.len(), jobs.len()), (3, 2));
    app.settled(&[
        ("warren.audit", events.len() as u64),
        ("warren.email", jobs.len() as u64),
    ])
    .await;
    events.sort();
    jobs.sort();
    assert_eq!(message_ids(&app.drain("warren.audit").await), events);
    assert_eq!(message_ids(&app.drain("warren.email").await), jobs);
    // Probes stay open.
    for path in ["/healthz", "/metrics"] {
        let (status, _) = send(&app, Method::GET, path, None, None).await;
        assert_eq!(status, 200, "{path}");
    }
    app.cleanup().await;
}

async fn post_event(
    app: &TestApp,
    client: &reqwest::Client,
    token: Option<&str>,
) -> reqwest::Response {
    let mut req = client
        .post(format!("{}/v1/events/order.created", app.base))
        .json(&json!({"n": 1}));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("sent")
}

/// The value of one sample line of `/metrics` (0 when absent).
async fn metric(app: &TestApp, line_start: &str) -> f64 {
    let text = app
        .request(Method::GET, "/metrics")
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Publishes with `send(i)` one after another until the first is refused, and checks every
/// answer against a bucket of `burst` that refills at `per_sec`, using the times measured
/// around each request (the bucket's check of request `i` happened while it was in flight):
/// the first `burst` pass whatever the timing; a later one passes only when enough time had
/// gone by since the first to refill a token for it; and one the measured time cannot have
/// refilled a token for must be refused. Returns the accepted bodies and the refusal, which
/// must come within `burst + 20` requests.
async fn publish_until_refused<F, Fut>(
    burst: u32,
    per_sec: u32,
    mut send: F,
) -> (Vec<Value>, reqwest::Response)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let first_sent = Instant::now();
    let mut first_answered = None;
    let mut accepted = Vec::new();
    for i in 0..burst as usize + 20 {
        let r = send(i).await;
        let answered = Instant::now();
        first_answered.get_or_insert(answered);
        // At most this long after the first request's check (sent with the first, checked at
        // the end of this one): the bucket cannot have refilled more than this many tokens.
        let most = (answered - first_sent).as_secs_f64() * f64::from(per_sec);
        let tokens_at_most = (f64::from(burst) - i as f64 + most).min(f64::from(burst));
        let status = r.status();
        if i < burst as usize {
            assert_eq!(status, 202, "request {i} is within the burst of {burst}");
        } else if status == 202 {
            assert!(
                tokens_at_most >= 1.0,
                "request {i} passed {:?} after the first; it must be refused: the bucket had \
                 at most {tokens_at_most:.2} tokens",
                answered - first_sent
            );
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "request {i}");
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return (accepted, r);
        }
        accepted.push(r.json().await.expect("json"));
    }
    panic!(
        "no refusal in {} requests over {:?}",
        burst + 20,
        first_sent.elapsed()
    );
}

/// The message ids in `messages`, sorted.
fn message_ids(messages: &[lapin::message::BasicGetMessage]) -> Vec<String> {
    let mut ids: Vec<String> = messages
        .iter()
        .map(|m| crate::helpers::message_id(&m.properties))
        .collect();
    ids.sort();
    ids
}

/// Checks a 429: exactly one second to wait (a bucket refilled at one per second is refused
/// with less than one token left, and the request before it passed with at least one), and the
/// code.
async fn assert_rate_limited(refused: reqwest::Response) {
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
}

#[tokio::test]
async fn publishes_over_a_tokens_rate_are_429_with_retry_after_and_other_tokens_are_not_held_back()
{
    let app = spawn_app_with(
        |mut s| {
            s.http.tokens = vec![
                scoped(PUBLISHER, &[Scope::Publish]),
                Secret::new(PLAIN).into(),
            ];
            s.http.rate_limit_per_sec = 1;
            s.http.rate_limit_burst = 3;
            s
        },
        |a| a,
    )
    .await;
    let client = reqwest::Client::new();
    // The burst passes (events and jobs share the token's bucket: the third is a job), then
    // one is refused with a wait.
    let (accepted, refused) = publish_until_refused(3, 1, |i| {
        let req = if i == 2 {
            client
                .post(format!("{}/v1/jobs/email.send", app.base))
                .json(&json!({"email": "a@example.com", "subject": "s"}))
        } else {
            client
                .post(format!("{}/v1/events/order.created", app.base))
                .json(&json!({ "n": i }))
        };
        let req = req.bearer_auth(PUBLISHER);
        async move { req.send().await.expect("sent") }
    })
    .await;
    assert_rate_limited(refused).await;
    let mut events: Vec<String> = accepted
        .iter()
        .filter_map(|b| b["event_id"].as_str().map(str::to_owned))
        .collect();
    let jobs: Vec<String> = accepted
        .iter()
        .filter_map(|b| b["job_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(jobs.len(), 1, "{accepted:?}");
    // Another token has its own bucket.
    let other = post_event(&app, &client, Some(PLAIN)).await;
    assert_eq!(other.status(), 202);
    let other: Value = other.json().await.expect("json");
    events.push(other["event_id"].as_str().expect("event_id").to_owned());
    // The refusal is counted, and the refused request published nothing: the queues hold
    // exactly the accepted ones.
    assert_eq!(
        metric(
            &app,
            r#"http_publish_refused_total{path="/v1/events/{name}",reason="rate_limited"} "#
        )
        .await,
        1.0
    );
    app.settled(&[("warren.audit", events.len() as u64), ("warren.email", 1)])
        .await;
    events.sort();
    assert_eq!(message_ids(&app.drain("warren.audit").await), events);
    assert_eq!(message_ids(&app.drain("warren.email").await), jobs);
    // The bucket refills at one per second: a publish passes again within the second it said
    // (the bound leaves a loaded machine room; without a refill it would never pass).
    eventually(Duration::from_secs(10), "the bucket to refill", || async {
        (post_event(&app, &client, Some(PUBLISHER)).await.status() == 202).then_some(())
    })
    .await;
    app.cleanup().await;
}

#[tokio::test]
async fn without_tokens_the_rate_applies_per_client_address() {
    let app = spawn_app_with(
        |mut s| {
            s.http.rate_limit_per_sec = 1;
            s.http.rate_limit_burst = 2;
            s
        },
        |a| a,
    )
    .await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(IpAddr::from(ip))
            .build()
            .expect("client")
    };
    let (a, b) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    let (_, refused) = publish_until_refused(2, 1, |_| post_event(&app, &a, None)).await;
    assert_rate_limited(refused).await;
    assert_eq!(
        post_event(&app, &b, None).await.status(),
        202,
        "another address"
    );
    app.cleanup().await;
}

/// A sync listener that holds each request until the test lets it go.
struct Gate(Arc<Semaphore>);

#[async_trait::async_trait]
impl Listener for Gate {
    async fn handle(&self, _event: &Event) -> Result<Value, ListenerError> {
        let permit = self
            .0
            .acquire()
            .await
            .map_err(|e| ListenerError::new(e.to_string()))?;
        permit.forget();
        Ok(json!({"released": true}))
    }
}

#[tokio::test]
async fn a_full_in_flight_bound_answers_503_at_once_and_frees_up_after() {
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let app = spawn_app_with(
        |mut s| {
            s.http.max_in_flight_publishes = 2;
            s.http.retry_after_secs = 7;
            // Far above the answer bound below: a refusal that waited for a publish to time
            // out first would miss it.
            s.amqp.publish_timeout_ms = 30_000;
            s
        },
        move |a| a.listener("test.gate", "slow.#", 0, Gate(g)),
    )
    .await;
    // Two publishes held inside the handler fill the bound.
    let held: Vec<_> = (0..2)
        .map(|_| {
            let req = app
                .request(Method::POST, "/v1/events/slow.thing?mode=sync")
                .json(&json!({}));
            tokio::spawn(async move { req.send().await.expect("sent").status() })
        })
        .collect();
    eventually(
        Duration::from_secs(10),
        "two publishes in flight",
        || async {
            let r = post_event(&app, &reqwest::Client::new(), None).await;
            (r.status() == 503).then_some(())
        },
    )
    .await;
    // Every further publish is refused at once, on every publish route, without queuing: the
    // two slots stay taken until the test opens the gate, so a refusal that waited for a slot
    // would not come at all (checked: both held requests are still unanswered after the
    // refusals). The time bound catches a refusal that waits for something else first; 5 s
    // leaves a loaded machine room and stays far below the 30 s publish timeout.
    let client = reqwest::Client::new();
    for path in [
        "/v1/events/order.created",
        "/v1/jobs/email.send",
        "/v1/orders",
        "/v1/sagas/order",
    ] {
        let started = Instant::now();
        let r = client
            .post(format!("{}{path}", app.base))
            .json(&json!({"email": "a@example.com", "subject": "s"}))
            .send()
            .await
            .expect("sent");
        let took = started.elapsed();
        assert_eq!(r.status(), 503, "{path}");
        assert!(
            took < Duration::from_secs(5),
            "{path}: answered in {took:?}"
        );
        assert_eq!(r.headers()["retry-after"], "7");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
    }
    assert!(
        held.iter().all(|h| !h.is_finished()),
        "the held publishes were answered before the gate opened"
    );
    // Reads are not publishes: not bounded.
    let (status, _) = send(&app, Method::GET, "/v1/events", None, None).await;
    assert_eq!(status, 200);
    // Each refusal is counted on its route: the events route twice (the wait above ended at
    // its first 503, then the loop's), the others once.
    for (path, n) in [
        ("/v1/events/{name}", 2.0),
        ("/v1/jobs/{name}", 1.0),
        ("/v1/orders", 1.0),
        ("/v1/sagas/{kind}", 1.0),
    ] {
        assert_eq!(
            metric(
                &app,
                &format!(r#"http_publish_refused_total{{path="{path}",reason="overloaded"}} "#)
            )
            .await,
            n,
            "{path}"
        );
    }
    // Let the held ones finish: they answer normally and their slots come back.
    gate.add_permits(2);
    for h in held {
        let status = tokio::time::timeout(Duration::from_secs(30), h)
            .await
            .expect("the held publishes are answered once released")
            .expect("task");
        assert_eq!(status, 200);
    }
    assert_eq!(post_event(&app, &client, None).await.status(), 202);
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Secrets

/// A RabbitMQ user with a password, allowed into `vhost`.
async fn broker_user(vhost: &TestVhost, password: &str) -> String {
    let user = format!("warren-sec-{}", uuid::Uuid::now_v7().simple());
    vhost
        .api
        .put(
            &format!("users/{user}"),
            &json!({"password": password, "tags": "management"}),
        )
        .await
        .expect("create user");
    vhost
        .api
        .put(
            &format!("permissions/{}/{user}", encode(&vhost.name)),
            &json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await
        .expect("grant permissions");
    user
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn with_password(url: &str, user: &str, password: &str) -> String {
    let mut u = url::Url::parse(url).expect("url");
    u.set_username(user).expect("user");
    u.set_password(Some(password)).expect("password");
    u.to_string()
}

#[tokio::test]
async fn secrets_stay_out_of_logs_metrics_readyz_and_error_bodies() {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let amqp_password = format!("amqp-pw-{id}");
    let smtp_password = format!("smtp-pw-{id}");
    let token = format!("secret-token-{id}");
    let publish_token = format!("publish-token-{id}");
    let vhost = TestVhost::new().await;
    let db = TestDb::new().await;
    let user = broker_user(&vhost, &amqp_password).await;
    let amqp_url = with_password(&vhost.amqp_url(), &user, &amqp_password);
    let management = with_password(&management_url(), &user, &amqp_password);
    let db_url = db.url.clone();
    // The database password of the test server is not unique, but user:password@ is.
    let db_credentials = {
        let u = url::Url::parse(&db_url).expect("db url");
        format!("{}:{}@", u.username(), u.password().unwrap_or_default())
    };
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = std::env::temp_dir().join(format!("warren-secrets-{id}.log"));
    let log = std::fs::File::create(&log_path).expect("log file");
    let tokens = format!(r#"["{token}", {{token="{publish_token}", scopes=["publish"]}}]"#);
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .arg("all")
            .env("WARREN_AMQP__URL", &amqp_url)
            .env("WARREN_AMQP__MANAGEMENT_URL", &management)
            .env("WARREN_DATABASE__URL", &db_url)
            .env("WARREN_HTTP__ADDR", format!("127.0.0.1:{port}"))
            .env("WARREN_HTTP__TOKENS", &tokens)
            .env(
                "WARREN_EMAIL__SMTP_URL",
                format!("smtp://mailer:{smtp_password}@127.0.0.1:1"),
            )
            .env("WARREN_METRICS__ADDR", format!("127.0.0.1:{}", free_port()))
            .env("WARREN_JOBS__MAX_ATTEMPTS", "1")
            // Everything warren itself logs, and the libraries at debug.
            .env(
                "WARREN_LOG__FILTER",
                "debug,warren=trace,hyper=info,h2=info",
            )
            .env("WARREN_LOG__FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("warren starts"),
    );
    let http = reqwest::Client::new();
    let mut seen = Vec::<String>::new();
    let get = |path: &str, token: Option<&str>| {
        let mut r = http.get(format!("{base}{path}"));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match get("/readyz", None).await {
            Ok(r) if r.status() == 200 => break,
            _ if Instant::now() > deadline => {
                let logs = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = logs
                    .chars()
                    .rev()
                    .take(4000)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                panic!("warren not ready within 60 s; its log ends with:\n{tail}");
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    // Error answers: no token, a wrong token, a wrong scope, a bad body.
    let error_code = |text: &str| {
        serde_json::from_str::<Value>(text).expect("a JSON error body")["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    for (token, path, want, code) in [
        (None, "/v1/dlq", 401, "unauthorized"),
        (
            Some("wrong-token-0123456789"),
            "/v1/dlq",
            401,
            "unauthorized",
        ),
        (Some(publish_token.as_str()), "/v1/dlq", 403, "forbidden"),
    ] {
        let r = get(path, token).await.expect("sent");
        assert_eq!(r.status(), want);
        let text = r.text().await.expect("body");
        assert_eq!(error_code(&text), code, "{text}");
        seen.push(text);
    }
    let bad = http
        .post(format!("{base}/v1/events/order.created"))
        .bearer_auth(&token)
        .body("{not json")
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    let text = bad.text().await.expect("body");
    assert_eq!(error_code(&text), "invalid_json", "{text}");
    seen.push(text);
    // An e-mail job against an SMTP server that is not there: the job fails and is parked.
    let job = http
        .post(format!("{base}/v1/jobs/email.send"))
        .bearer_auth(&publish_token)
        .json(&json!({"email": "a@example.com", "subject": "hello"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(job.status(), 202, "{:?}", job.text().await);
    let parked = eventually(Duration::from_secs(30), "the e-mail job parked", || async {
        let r = get("/v1/failed-jobs?queue=warren.email", Some(&token))
            .await
            .ok()?;
        let body: Value = r.json().await.ok()?;
        let rows = body["failed_jobs"].as_array()?;
        (!rows.is_empty()).then_some(body)
    })
    .await;
    // One job, parked once, with its reason (not a secret in it: checked with the rest).
    let rows = parked["failed_jobs"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "{parked}");
    assert_eq!(rows[0]["queue"], "warren.email", "{parked}");
    assert_eq!(rows[0]["status"], "parked", "{parked}");
    let parked = parked.to_string();
    seen.push(parked);
    // The broker refuses warren's password now: its connections are closed and the password
    // changed, so every reconnect is refused.
    vhost
        .api
        .put(
            &format!("users/{user}"),
            &json!({"password": format!("changed-{id}"), "tags": "management"}),
        )
        .await
        .expect("change password");
    let api = warren::broker::topology::Management::new(&management_url()).expect("api");
    let mut last = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let down = loop {
        // Close whatever connections warren has (again, should one have been opened since).
        for c in api
            .get(&format!("vhosts/{}/connections", encode(&vhost.name)))
            .await
            .expect("connections")
        {
            if let Some(name) = c["name"].as_str() {
                let _ = api.delete(&format!("connections/{}", encode(name))).await;
            }
        }
        if let Ok(r) = get("/readyz", None).await {
            let status = r.status();
            last = r.text().await.unwrap_or_default();
            if status == 503 && last.contains("ACCESS_REFUSED") {
                break last;
            }
        }
        assert!(
            Instant::now() < deadline,
            "readyz did not report the refused login within 60 s; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    seen.push(down);
    let refused = http
        .post(format!("{base}/v1/events/order.created"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    // The broker refuses warren, the database is there and the outbox is on (the default):
    // the event is stored in the outbox and accepted.
    assert_eq!(refused.status(), 202);
    let text = refused.text().await.expect("body");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["stored"], "outbox", "{body}");
    seen.push(text);
    // The dead-letter list needs the broker itself: a 503 naming the broker's refusal.
    let dlq = get("/v1/dlq", Some(&token)).await.expect("sent");
    assert_eq!(dlq.status(), 503);
    let dlq = dlq.text().await.expect("body");
    assert_eq!(error_code(&dlq), "broker_unavailable", "{dlq}");
    seen.push(dlq);
    seen.push(
        get("/metrics", None)
            .await
            .expect("sent")
            .text()
            .await
            .expect("metrics"),
    );
    let _ = child.0.kill();
    let _ = child.0.wait();

    // A second start with a wrong database password fails, and says so without the password.
    let db_password = format!("db-pw-{id}");
    let wrong_db = with_password(&db_url, "warren", &db_password);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_warren"));
    cmd.arg("serve")
        .env("WARREN_AMQP__URL", &amqp_url)
        .env("WARREN_DATABASE__URL", &wrong_db)
        .env("WARREN_HTTP__ADDR", "127.0.0.1:0")
        .env("WARREN_LOG__FILTER", "debug")
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("warren gives up on a refused database within 60 s")
        .expect("warren runs");
    assert_eq!(out.status.code(), Some(1), "starts without its database?");
    let failed_start = String::from_utf8_lossy(&out.stderr).into_owned();
    // The last word on stderr is warren's own, with the server's reason.
    let reason = failed_start
        .lines()
        .rev()
        .find(|l| l.starts_with("warren: "))
        .unwrap_or_else(|| panic!("no `warren: ` line on stderr: {failed_start}"));
    assert!(
        reason.starts_with("warren: cannot connect to the database: ")
            && reason.contains(r#"password authentication failed for user "warren""#),
        "the reason is given: {reason}"
    );

    // `warren config` prints the settings with every secret redacted, scopes kept.
    let config = Command::new(env!("CARGO_BIN_EXE_warren"))
        .arg("config")
        .env("WARREN_AMQP__URL", &amqp_url)
        .env("WARREN_AMQP__MANAGEMENT_URL", &management)
        .env("WARREN_DATABASE__URL", &wrong_db)
        .env("WARREN_HTTP__TOKENS", &tokens)
        .env(
            "WARREN_EMAIL__SMTP_URL",
            format!("smtp://mailer:{smtp_password}@127.0.0.1:1"),
        )
        .output()
        .expect("warren config runs");
    assert!(config.status.success(), "{config:?}");
    let config = String::from_utf8_lossy(&config.stdout).into_owned();
    assert!(config.contains("\"publish\""), "scopes are shown: {config}");
    seen.push(config);

    let logs = std::fs::read_to_string(&log_path).expect("logs");
    let _ = std::fs::remove_file(&log_path);
    assert!(logs.contains("Starting warren"), "the log was captured");
    let secrets = [
        amqp_password.as_str(),
        smtp_password.as_str(),
        token.as_str(),
        publish_token.as_str(),
        db_password.as_str(),
        db_credentials.as_str(),
    ];
    for (what, text) in std::iter::once(("log of warren all", &logs))
        .chain(std::iter::once((
            "stderr of the failed start",
            &failed_start,
        )))
        .chain(
            seen.iter()
                .map(|s| ("a response body or `warren config`", s)),
        )
    {
        for secret in secrets {
            if let Some(at) = text.find(secret) {
                let from = at.saturating_sub(200);
                panic!(
                    "{what} holds the secret {secret:?}: ...{}...",
                    &text[from..(at + secret.len() + 100).min(text.len())]
                );
            }
        }
    }
    let _ = vhost.api.delete(&format!("users/{user}")).await;
    vhost.delete().await;
    db.drop_db().await;
}

// ---------------------------------------------------------------------------------------------
// AMQPS

fn amqps_base() -> String {
    std::env::var("WARREN_TEST_AMQPS_URL")
        .unwrap_or_else(|_| "amqps://guest:guest@127.0.0.1:5671".to_owned())
}

fn tls_file(name: &str) -> std::path::PathBuf {
    std::path::Path::new(
        &std::env::var("WARREN_TEST_TLS_DIR").unwrap_or_else(|_| "/etc/rabbitmq/tls".to_owned()),
    )
    .join(name)
}

fn tls_settings(vhost: &TestVhost, db_url: &str, ca: &str) -> Settings {
    let mut s = crate::helpers::test_settings(vhost, db_url);
    s.amqp.url = Secret::new(format!("{}/{}", amqps_base(), encode(&vhost.name)));
    s.amqp.tls_ca_file = Some(tls_file(ca));
    s
}

#[tokio::test]
async fn amqps_with_the_test_ca_publishes_and_consumes_and_a_wrong_ca_is_refused() {
    warren::telemetry::init(&warren::config::LogSettings {
        filter: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ..Default::default()
    });
    let vhost = TestVhost::new().await;
    let db = TestDb::new().await;
    // warren over TLS: the HTTP front publishes with confirms on AMQPS connections.
    let settings = tls_settings(&vhost, &db.url, "ca.pem");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = warren::App::new(settings.clone())
        .start(&[Role::Http], shutdown.clone())
        .await
        .expect("warren starts over amqps");
    let base = format!("http://{}", running.http_addr.expect("http"));
    let mut ready = running.topology_ready.clone();
    tokio::time::timeout(Duration::from_secs(15), ready.wait_for(|r| *r))
        .await
        .expect("topology declared over TLS")
        .expect("task alive");
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/events/order.created"))
        .json(&json!({"over": "tls"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
    // Consume it over TLS with warren's own connection code.
    let broker = Broker::new(&settings, "warren tls consumer").expect("broker");
    let ch = broker.channel().await.expect("a channel over TLS");
    let mut consumer = ch
        .basic_consume(
            "warren.audit".into(),
            "tls-test".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("consume");
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a delivery within 10 s")
        .expect("stream open")
        .expect("delivery");
    let body: Value = serde_json::from_slice(&delivery.data).expect("json");
    assert_eq!(body["data"]["over"], "tls");
    // The broker agrees that both connections are TLS (the management API's view lags).
    let conns = eventually(
        Duration::from_secs(15),
        "the TLS connections listed",
        || async {
            let c = vhost.connections_named("warren tls consumer").await;
            (!c.is_empty()).then_some(c)
        },
    )
    .await;
    assert!(
        conns.iter().all(|c| c["ssl"] == true && c["port"] == 5671),
        "{conns:?}"
    );
    broker.close();

    // A client certificate from the same CA is presented and accepted.
    let mut with_cert = settings.clone();
    with_cert.amqp.tls_client_cert_file = Some(tls_file("client.pem"));
    with_cert.amqp.tls_client_key_file = Some(tls_file("client.key"));
    let broker = Broker::new(&with_cert, "warren tls client cert").expect("broker");
    broker
        .ping()
        .await
        .expect("connects with a client certificate");
    let conns = eventually(
        Duration::from_secs(15),
        "the client-cert connection",
        || async {
            let c = vhost.connections_named("warren tls client cert").await;
            (!c.is_empty()).then_some(c)
        },
    )
    .await;
    assert!(
        conns[0]["peer_cert_subject"]
            .as_str()
            .is_some_and(|s| s.contains("CN=client")),
        "{conns:?}"
    );
    broker.close();

    // A CA that did not sign the broker's certificate: refused, with the reason.
    let wrong = tls_settings(&vhost, &db.url, "other-ca.pem");
    let err = Broker::new(&wrong, "warren wrong ca")
        .expect("broker")
        .ping()
        .await
        .expect_err("the broker's certificate must not verify");
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot get an AMQP connection: ")
            && msg.ends_with("invalid peer certificate: UnknownIssuer"),
        "a clear reason: {msg}"
    );
    // A CA file that does not exist: the error names the setting and the file.
    let mut missing = settings.clone();
    missing.amqp.tls_ca_file = Some("/nonexistent/ca.pem".into());
    let err = Broker::new(&missing, "x")
        .expect_err("no such file")
        .to_string();
    assert!(
        err.contains("amqp.tls_ca_file") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );

    shutdown.cancel();
    running.wait().await;
    vhost.delete().await;
    db.drop_db().await;
}
