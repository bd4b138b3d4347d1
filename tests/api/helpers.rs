//! The test harness: `spawn_app()` starts the real service on port 0 against the real broker
//! in a fresh vhost and a fresh PostgreSQL database, so tests run in parallel.
//!
//! Waiting: [`eventually`] polls a check with a bound on the whole wait, each check included
//! (a check that blocks fails the test at the bound instead of hanging it), and
//! [`TestApp::settled`] is the one "nothing more will arrive" wait: it holds only when the
//! named queues, their dead letters and every retry tier of the vhost hold exactly the expected
//! number of messages, ready and unacknowledged together, for a quiet period.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, time::Duration};

use lapin::{Connection, ConnectionProperties, options::BasicGetOptions};
use sea_orm::{ConnectionTrait, Database};
use tokio_util::sync::CancellationToken;
use warren::{
    App, Role, Running, Settings,
    broker::topology::{Management, encode},
    config::Secret,
};

/// Base AMQP URL without vhost.
pub fn amqp_base() -> String {
    std::env::var("WARREN_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".to_owned())
}

/// Management API URL with credentials.
pub fn management_url() -> String {
    std::env::var("WARREN_TEST_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".to_owned())
}

/// PostgreSQL URL without database.
pub fn pg_base() -> String {
    std::env::var("WARREN_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://warren:warren@127.0.0.1:5432".to_owned())
}

/// The broker's Prometheus endpoint (plugin `rabbitmq_prometheus`), for exact queue figures.
pub fn prometheus_url() -> String {
    std::env::var("WARREN_TEST_PROMETHEUS_URL")
        .unwrap_or_else(|_| "http://127.0.0.1:15692".to_owned())
}

/// How often the test brokers' quorum queues report their figures (`quorum_tick_interval` in
/// the advanced.config that `scripts/services.sh` writes), in milliseconds.
pub fn queue_tick_ms() -> u64 {
    std::env::var("WARREN_TEST_QUEUE_TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500)
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit` in all: a single
/// check that blocks past the limit (an HTTP or AMQP call without a timeout of its own) fails
/// the test there, as a check that keeps answering `None` does.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Some(v)) => return v,
            Ok(None) => {}
            Err(_) => panic!(
                "timed out after {limit:?} waiting for {what} (the last check was still running)"
            ),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The message id of a message warren (or a test) published; panics when it has none.
pub fn message_id(p: &lapin::BasicProperties) -> String {
    p.message_id()
        .as_ref()
        .map(|m| m.as_str().to_owned())
        .expect("a message id")
}

/// Ready and unacknowledged messages of one queue, as the broker counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueFigures {
    /// Ready for delivery.
    pub ready: u64,
    /// Delivered to a consumer and not yet acknowledged.
    pub unacked: u64,
}

impl QueueFigures {
    /// Everything the queue holds.
    pub fn total(&self) -> u64 {
        self.ready + self.unacked
    }
}

/// Parses the `queue_coarse_metrics` family of RabbitMQ's `/metrics/detailed` for `vhost`.
fn parse_queue_figures(text: &str, vhost: &str) -> BTreeMap<String, QueueFigures> {
    let mut out: BTreeMap<String, QueueFigures> = BTreeMap::new();
    for line in text.lines() {
        let (metric, ready) = if let Some(rest) =
            line.strip_prefix("rabbitmq_detailed_queue_messages_ready{")
        {
            (rest, true)
        } else if let Some(rest) = line.strip_prefix("rabbitmq_detailed_queue_messages_unacked{") {
            (rest, false)
        } else {
            continue;
        };
        let Some((labels, value)) = metric.rsplit_once("} ") else {
            continue;
        };
        let label = |key: &str| {
            let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
            let end = labels[start..].find('"')? + start;
            Some(labels[start..end].to_owned())
        };
        if label("vhost").as_deref() != Some(vhost) {
            continue;
        }
        let (Some(queue), Ok(n)) = (label("queue"), value.trim().parse::<f64>()) else {
            continue;
        };
        let figures = out.entry(queue).or_default();
        if ready {
            figures.ready = n as u64;
        } else {
            figures.unacked = n as u64;
        }
    }
    out
}

/// A fresh vhost on the test broker, with the guest user allowed in.
pub struct TestVhost {
    /// The vhost's name.
    pub name: String,
    /// Management API client.
    pub api: Management,
    /// The broker's AMQP URL without vhost.
    pub amqp_base: String,
    /// The broker's Prometheus endpoint (exact queue figures).
    pub prometheus: String,
    /// The client for that endpoint (10 s timeout), made once.
    prometheus_client: reqwest::Client,
}

impl TestVhost {
    /// Creates a fresh vhost on the test broker.
    pub async fn new() -> Self {
        Self::new_on(&management_url(), &amqp_base(), &prometheus_url()).await
    }

    /// Creates a fresh vhost on the broker with this management API, AMQP base URL and
    /// Prometheus endpoint. On a cluster, `management_url` and `prometheus` list every
    /// node's, comma-separated: the API calls go to the first node that answers, and the
    /// queue figures are read from every node (each reports the queues it leads).
    pub async fn new_on(management_url: &str, amqp_base: &str, prometheus: &str) -> Self {
        let name = format!("warren-test-{}", uuid::Uuid::now_v7().simple());
        let nodes: Vec<&str> = management_url.split(',').collect();
        let api = Management::nodes(&nodes, Duration::from_secs(10)).expect("management url");
        let management_url = nodes[0];
        api.put(&format!("vhosts/{}", encode(&name)), &serde_json::json!({}))
            .await
            .expect("create vhost");
        let user = url::Url::parse(management_url)
            .expect("url")
            .username()
            .to_owned();
        api.put(
            &format!("permissions/{}/{}", encode(&name), user),
            &serde_json::json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await
        .expect("grant permissions");
        Self {
            name,
            api,
            amqp_base: amqp_base.to_owned(),
            prometheus: prometheus.to_owned(),
            prometheus_client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
        }
    }

    /// The management API's connections in the vhost whose client named itself `name`.
    pub async fn connections_named(&self, name: &str) -> Vec<serde_json::Value> {
        self.api
            .get(&format!("vhosts/{}/connections", encode(&self.name)))
            .await
            .expect("connections")
            .into_iter()
            .filter(|c| c["client_properties"]["connection_name"] == name)
            .collect()
    }

    /// Ready and unacknowledged messages of every queue in the vhost, as the queues last
    /// reported them (each quorum queue reports every [`queue_tick_ms`]). `None` when the
    /// endpoint does not answer.
    /// On a cluster every node's endpoint is read and each figure is the highest any node
    /// reports, so a queue counts as empty only when no node says otherwise.
    pub async fn queue_figures(&self) -> Option<BTreeMap<String, QueueFigures>> {
        let mut all: BTreeMap<String, QueueFigures> = BTreeMap::new();
        for endpoint in self.prometheus.split(',') {
            let url = format!(
                "{endpoint}/metrics/detailed?family=queue_coarse_metrics&vhost={}",
                encode(&self.name)
            );
            let r = self.prometheus_client.get(url).send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            for (q, f) in parse_queue_figures(&r.text().await.ok()?, &self.name) {
                let e = all.entry(q).or_default();
                e.ready = e.ready.max(f.ready);
                e.unacked = e.unacked.max(f.unacked);
            }
        }
        Some(all)
    }

    /// The AMQP URL of this vhost.
    pub fn amqp_url(&self) -> String {
        format!("{}/{}", self.amqp_base, encode(&self.name))
    }

    /// Deletes the vhost.
    pub async fn delete(&self) {
        let _ = self
            .api
            .delete(&format!("vhosts/{}", encode(&self.name)))
            .await;
    }
}

/// A fresh PostgreSQL database.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// The server's URL without database.
    pub base: String,
}

impl TestDb {
    /// Creates a fresh database on the test server.
    pub async fn new() -> Self {
        Self::new_on(&pg_base()).await
    }

    /// Creates a fresh database on the server at `base` (a URL without database).
    pub async fn new_on(base: &str) -> Self {
        let name = format!("warren_test_{}", uuid::Uuid::now_v7().simple());
        let admin = Database::connect(format!("{base}/warren"))
            .await
            .expect("connect to the admin database");
        admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
        let _ = admin.close().await;
        let url = format!("{base}/{name}");
        Self {
            name,
            url,
            base: base.to_owned(),
        }
    }

    /// Drops the database.
    pub async fn drop_db(&self) {
        if let Ok(admin) = Database::connect(format!("{}/warren", self.base)).await {
            let _ = admin
                .execute_unprepared(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.name
                ))
                .await;
            let _ = admin.close().await;
        }
    }
}

/// Settings for a test: port 0, the vhost, the database, short timeouts.
pub fn test_settings(vhost: &TestVhost, db_url: &str) -> Settings {
    let mut s = Settings::default();
    s.amqp.url = Secret::new(vhost.amqp_url());
    s.amqp.management_url = Secret::new(management_url());
    s.amqp.publish_timeout_ms = 3_000;
    s.amqp.publish_channels = 2;
    s.database.url = Secret::new(db_url);
    s.database.max_connections = 3;
    s.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    s.http.body_limit_bytes = 4096;
    // Worker-only processes in tests get a metrics listener on a free port.
    s.metrics.addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    s
}

/// A running warren for one test.
pub struct TestApp {
    /// Base URL of the HTTP front.
    pub base: String,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The vhost.
    pub vhost: TestVhost,
    /// The database.
    pub db: TestDb,
    /// The running service.
    pub running: Option<Running>,
    /// Stops the service.
    pub shutdown: CancellationToken,
    /// The settings it runs with.
    pub settings: Settings,
}

/// Starts warren with default test settings.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|s| s, |a| a).await
}

/// Starts warren's HTTP front, letting the test adjust settings and the app (listeners).
pub async fn spawn_app_with(
    settings: impl FnOnce(Settings) -> Settings,
    app: impl FnOnce(App) -> App,
) -> TestApp {
    spawn_roles(&[Role::Http], settings, app).await
}

/// Starts the HTTP front and the worker role with short retry tiers (1 s failure, 2 s error)
/// and no built-in modules unless the test adds them.
pub async fn spawn_worker_with(
    settings: impl FnOnce(Settings) -> Settings,
    app: impl FnOnce(App) -> App,
) -> TestApp {
    spawn_roles(
        &[Role::Http, Role::Worker],
        |mut s| {
            s.jobs.failure_delay_ms = 1_000;
            s.jobs.error_delay_ms = 2_000;
            s.jobs.shutdown_grace_ms = 5_000;
            settings(s)
        },
        |a| app(a.modules(Vec::<String>::new())),
    )
    .await
}

/// Starts warren with `roles`.
pub async fn spawn_roles(
    roles: &[Role],
    settings: impl FnOnce(Settings) -> Settings,
    app: impl FnOnce(App) -> App,
) -> TestApp {
    warren::telemetry::init(&warren::config::LogSettings {
        filter: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ..Default::default()
    });
    spawn_roles_in(
        TestVhost::new().await,
        TestDb::new().await,
        roles,
        settings,
        app,
    )
    .await
}

/// [`spawn_roles`] in a given vhost and database (e.g. on another broker or server).
pub async fn spawn_roles_in(
    vhost: TestVhost,
    db: TestDb,
    roles: &[Role],
    settings: impl FnOnce(Settings) -> Settings,
    app: impl FnOnce(App) -> App,
) -> TestApp {
    warren::telemetry::init(&warren::config::LogSettings {
        filter: std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
        ..Default::default()
    });
    let s = settings(test_settings(&vhost, &db.url));
    let shutdown = CancellationToken::new();
    let running = app(App::new(s.clone()))
        .start(roles, shutdown.clone())
        .await
        .expect("warren starts");
    let addr = running.http_addr.expect("http runs");
    let app = TestApp {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
        vhost,
        db,
        running: Some(running),
        shutdown,
        settings: s,
    };
    app.wait_for_topology().await;
    app
}

impl TestApp {
    /// Waits until the topology is declared in the vhost (exchanges, queues and bindings).
    pub async fn wait_for_topology(&self) {
        let mut ready = self
            .running
            .as_ref()
            .expect("running")
            .topology_ready
            .clone();
        tokio::time::timeout(Duration::from_secs(15), ready.wait_for(|r| *r))
            .await
            .expect("topology declared within 15 s")
            .expect("declaring task alive");
    }

    /// `POST /v1/events/{name}` with a JSON body.
    pub async fn post_event(&self, name: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/events/{name}", self.base))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// A request builder for any path.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Declares `queue` (durable: RabbitMQ 4.0 deprecates transient non-exclusive queues) and
    /// binds it to `exchange` with `key`: a tap that sees what warren routes there, read with
    /// [`TestApp::drain`].
    pub async fn tap(&self, queue: &str, exchange: &str, key: &str) {
        let conn = Connection::connect(&self.vhost.amqp_url(), ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("tap queue");
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            Default::default(),
            Default::default(),
        )
        .await
        .expect("bind tap");
        let _ = conn.close(200, "".into()).await;
    }

    /// Takes every message waiting in `queue` (basic.get with ack).
    pub async fn drain(&self, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
        let conn = Connection::connect(&self.vhost.amqp_url(), ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let ch = conn.create_channel().await.expect("channel");
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            out.push(m);
        }
        let _ = conn.close(200, "".into()).await;
        out
    }

    /// Publishes raw bytes to `exchange` as a foreign client would (no warren envelope).
    pub async fn publish_raw(
        &self,
        exchange: &str,
        key: &str,
        body: &[u8],
        props: lapin::BasicProperties,
    ) {
        let conn = Connection::connect(&self.vhost.amqp_url(), ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        let confirm = ch
            .basic_publish(exchange.into(), key.into(), Default::default(), body, props)
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
        let _ = conn.close(200, "".into()).await;
    }

    /// Waits until the queues have settled, and fails the test when they do not within 60 s.
    /// See [`Self::settled_within`].
    pub async fn settled(&self, expect: &[(&str, u64)]) {
        self.settled_within(Duration::from_secs(60), expect).await;
    }

    /// Waits, for at most `limit`, until each queue in `expect` holds exactly its number of
    /// messages, ready and unacknowledged together; and with them the dead-letter queue of
    /// each (`<queue>.dead`) and every retry tier of the vhost (`warren.retry.*`), at zero
    /// unless `expect` names them. It holds only when every read over a quiet period (three
    /// queue ticks, at least 1.5 s) agrees, and when the ready figures match the exact count of
    /// a passive declare (so a stale report cannot pass). Messages delivered and unacked, or
    /// waiting in a tier to come back, keep it unsettled.
    pub async fn settled_within(&self, limit: Duration, expect: &[(&str, u64)]) {
        // Named queues must be reported; their dead-letter queues and the tiers are checked
        // when the vhost has them (a queue declared by a test has no `.dead`).
        let mut want: BTreeMap<String, (u64, bool)> = BTreeMap::new();
        for (q, n) in expect {
            want.insert((*q).to_owned(), (*n, true));
        }
        for (q, _) in expect {
            if !q.ends_with(".dead") && !q.starts_with("warren.retry.") {
                want.entry(format!("{q}.dead")).or_insert((0, false));
            }
        }
        let quiet = Duration::from_millis((3 * queue_tick_ms()).max(1_500));
        let conn = Connection::connect(&self.vhost.amqp_url(), ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let mut since: Option<tokio::time::Instant> = None;
        let mut last = String::new();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let read = self.settle_read(&conn, &want);
            let ok = match tokio::time::timeout(Duration::from_secs(10), read).await {
                Ok(Ok(())) => true,
                Ok(Err(why)) => {
                    last = why;
                    false
                }
                Err(_) => {
                    last = "a read blocked for 10 s".to_owned();
                    false
                }
            };
            let now = tokio::time::Instant::now();
            if ok {
                let start = *since.get_or_insert(now);
                if now - start >= quiet {
                    break;
                }
            } else {
                since = None;
            }
            assert!(
                now < deadline,
                "queues not settled after {limit:?} (want {want:?}): {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = conn.close(200, "".into()).await;
    }

    /// One read for [`Self::settled_within`]: `Err` says what is not yet as expected.
    async fn settle_read(
        &self,
        conn: &Connection,
        want: &BTreeMap<String, (u64, bool)>,
    ) -> Result<(), String> {
        let figures = self
            .vhost
            .queue_figures()
            .await
            .ok_or("the Prometheus endpoint did not answer")?;
        let mut want = want.clone();
        for q in figures.keys().filter(|q| q.starts_with("warren.retry.")) {
            want.entry(q.clone()).or_insert((0, false));
        }
        let ch = conn
            .create_channel()
            .await
            .map_err(|e| format!("channel: {e}"))?;
        let mut wrong = Vec::new();
        for (q, (n, required)) in &want {
            let Some(f) = figures.get(q) else {
                if *required {
                    wrong.push(format!("{q}: not reported yet"));
                }
                continue;
            };
            if f.total() != *n {
                wrong.push(format!("{q}: {f:?}, want {n}"));
                continue;
            }
            let exact = ch
                .queue_declare(
                    q.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .map_err(|e| format!("passive declare of {q}: {e}"))?
                .message_count();
            if u64::from(exact) != f.ready {
                wrong.push(format!("{q}: reported {f:?}, {exact} ready now"));
            }
        }
        let _ = ch.close(200, "".into()).await;
        if wrong.is_empty() {
            Ok(())
        } else {
            Err(wrong.join("; "))
        }
    }

    /// Messages ready in `queue` (exact, from a passive declare). Not a "drained" check: it
    /// misses unacked messages and messages in a retry tier; use [`Self::settled`] for that.
    pub async fn depth(&self, queue: &str) -> u32 {
        let conn = Connection::connect(&self.vhost.amqp_url(), ConnectionProperties::default())
            .await
            .expect("amqp connect");
        let ch = conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("queue exists");
        let _ = conn.close(200, "".into()).await;
        q.message_count()
    }

    /// Starts another warren on the same vhost and database (stopped by `shutdown`).
    pub async fn start_extra(
        &self,
        roles: &[Role],
        app: impl FnOnce(App) -> App,
        shutdown: CancellationToken,
    ) -> Running {
        self.start_extra_with(roles, |s| s, app, shutdown).await
    }

    /// [`Self::start_extra`] with adjusted settings.
    pub async fn start_extra_with(
        &self,
        roles: &[Role],
        settings: impl FnOnce(Settings) -> Settings,
        app: impl FnOnce(App) -> App,
        shutdown: CancellationToken,
    ) -> Running {
        let mut s = settings(self.settings.clone());
        s.http.addr = SocketAddr::from(([127, 0, 0, 1], 0));
        app(App::new(s))
            .start(roles, shutdown)
            .await
            .expect("extra warren starts")
    }

    /// The front's `GET /metrics`, as text.
    pub async fn metrics_text(&self) -> String {
        self.request(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text")
    }

    /// `GET path` answered 200, as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("request sent");
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.expect("JSON body")
    }

    /// A connection to the test database.
    pub async fn db(&self) -> sea_orm::DatabaseConnection {
        Database::connect(&self.db.url).await.expect("db")
    }

    /// Stops the service and removes the vhost and database.
    pub async fn cleanup(mut self) {
        self.shutdown.cancel();
        if let Some(r) = self.running.take() {
            r.wait().await;
        }
        self.vhost.delete().await;
        self.db.drop_db().await;
    }
}

#[test]
fn queue_figures_are_read_for_the_vhost_only() {
    let text = "\
# TYPE rabbitmq_detailed_queue_messages_ready gauge
rabbitmq_detailed_queue_messages_ready{vhost=\"a\",queue=\"warren.audit\"} 2
rabbitmq_detailed_queue_messages_unacked{vhost=\"a\",queue=\"warren.audit\"} 3
rabbitmq_detailed_queue_messages{vhost=\"a\",queue=\"warren.audit\"} 5
rabbitmq_detailed_queue_messages_ready{vhost=\"b\",queue=\"warren.audit\"} 7
rabbitmq_detailed_queue_messages_unacked{vhost=\"a\",queue=\"warren.retry.60s\"} 0
";
    let f = parse_queue_figures(text, "a");
    assert_eq!(f.len(), 2, "{f:?}");
    assert_eq!(
        f["warren.audit"],
        QueueFigures {
            ready: 2,
            unacked: 3
        }
    );
    assert_eq!(f["warren.audit"].total(), 5);
    assert_eq!(f["warren.retry.60s"].total(), 0);
}

/// The settled check sees what a passive declare misses: a delivered, unacknowledged message
/// and a message waiting in a retry tier keep a queue unsettled.
#[tokio::test]
async fn settled_counts_unacked_messages_and_the_retry_tiers() {
    let app = spawn_app().await;
    let props = lapin::BasicProperties::default();
    app.publish_raw("", "warren.audit", b"held", props.clone())
        .await;
    // Held unacked by a consumer of our own: ready 0, so depth() says "drained".
    let conn = Connection::connect(&app.vhost.amqp_url(), ConnectionProperties::default())
        .await
        .expect("amqp connect");
    let ch = conn.create_channel().await.expect("channel");
    let held = ch
        .basic_get("warren.audit".into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic.get")
        .expect("a message");
    assert_eq!(app.depth("warren.audit").await, 0);
    let app = std::sync::Arc::new(app);
    let unsettled = |expect: Vec<(&'static str, u64)>| {
        let app = app.clone();
        tokio::spawn(async move { app.settled_within(Duration::from_secs(4), &expect).await })
    };
    let r = unsettled(vec![("warren.audit", 0)]).await;
    assert!(
        r.is_err_and(|e| e.is_panic()),
        "an unacked message is not settled"
    );
    app.settled(&[("warren.audit", 1)]).await;
    held.delivery.ack(Default::default()).await.expect("ack");
    app.settled(&[("warren.audit", 0)]).await;
    // A message in a retry tier: not settled at zero until the tier is empty too.
    app.publish_raw("", "warren.retry.60s", b"waiting", props)
        .await;
    let r = unsettled(vec![("warren.audit", 0)]).await;
    assert!(
        r.is_err_and(|e| e.is_panic()),
        "a message in a tier is not settled"
    );
    app.settled(&[("warren.audit", 0), ("warren.retry.60s", 1)])
        .await;
    let _ = conn.close(200, "".into()).await;
    if let Ok(app) = std::sync::Arc::try_unwrap(app) {
        app.cleanup().await;
    }
}
