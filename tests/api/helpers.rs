//! The test harness: `spawn_app()` starts the real service on port 0 against the real broker
//! in a fresh vhost and a fresh PostgreSQL database, so tests run in parallel.

use std::{future::Future, net::SocketAddr, time::Duration};

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

/// Polls `check` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh vhost on the test broker, with the guest user allowed in.
pub struct TestVhost {
    /// The vhost's name.
    pub name: String,
    /// Management API client.
    pub api: Management,
    /// The broker's AMQP URL without vhost.
    pub amqp_base: String,
}

impl TestVhost {
    /// Creates a fresh vhost on the test broker.
    pub async fn new() -> Self {
        Self::new_on(&management_url(), &amqp_base()).await
    }

    /// Creates a fresh vhost on the broker with this management API and AMQP base URL.
    pub async fn new_on(management_url: &str, amqp_base: &str) -> Self {
        let name = format!("warren-test-{}", uuid::Uuid::now_v7().simple());
        let api = Management::new(management_url).expect("management url");
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
        }
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

    /// Messages ready in `queue` (exact, from a passive declare).
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
