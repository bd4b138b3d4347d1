//! The settings sections of the broker, the database, the runtime, the saga engine, the
//! scheduler, the outbox, the console, metrics and logging, each with its defaults.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::Secret;

/// The operator console (`/console`): dead letters, failed jobs, sagas and interventions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSettings {
    /// Serve `/console` (its pages need a token with the `admin` scope when tokens are set).
    pub enabled: bool,
    /// Grafana's address as the operator's browser reaches it, for links to warren's
    /// dashboards; empty: no Grafana links.
    pub grafana_url: String,
    /// The RabbitMQ management UI's address as the operator's browser reaches it; empty: the
    /// address of `amqp.management_url` without its credentials.
    pub management_ui_url: String,
    /// How long a console sign-in lasts (hours).
    pub session_hours: u64,
    /// Messages a dead-letter operation moves per page (progress is recorded after each).
    pub page_size: usize,
}

impl Default for ConsoleSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            grafana_url: "http://localhost:3000".to_owned(),
            management_ui_url: String::new(),
            session_hours: 8,
            page_size: 500,
        }
    }
}

/// The events outbox: where `POST /v1/events` and `POST /v1/jobs` store what the broker could
/// not confirm in time, and the relay that publishes it once the broker is back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSettings {
    /// Store in the database when the broker cannot confirm (202 with `stored: outbox`).
    /// Off: such a request is answered 503 with `Retry-After`.
    pub enabled: bool,
    /// How often the relay looks for stored messages when it has nothing to do (ms).
    pub relay_ms: u64,
    /// Most rows one relay pass publishes.
    pub batch: u64,
    /// After a failed publish, requests go straight to the outbox for this long (ms), instead
    /// of each waiting for the broker to fail again. The relay keeps probing the broker.
    pub breaker_ms: u64,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            relay_ms: 500,
            batch: 500,
            breaker_ms: 2_000,
        }
    }
}

/// What a scheduler does, at start, about ticks no instance fired while none ran.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MissedTicks {
    /// Fire the most recent missed tick of each schedule once (not every missed one), if the
    /// schedule has fired before.
    #[default]
    Latest,
    /// Fire nothing missed; wait for the next tick.
    Skip,
}

/// One cron schedule: publishes an event or enqueues a job at each tick.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Unique name (`nightly-cleanup`).
    pub name: String,
    /// Cron expression in UTC, 5 fields (minute granularity) or 6 (leading seconds):
    /// `0 30 3 * * *` is 03:30:00 every day.
    pub cron: String,
    /// Event to publish on `warren.events` (`report.requested`).
    #[serde(default)]
    pub event: Option<String>,
    /// Job to enqueue on `warren.commands` (`maintenance.cleanup`).
    #[serde(default)]
    pub job: Option<String>,
    /// The message's `data` (a JSON object; `{}` by default).
    #[serde(default = "empty_object")]
    pub data: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

/// Scheduler settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerSettings {
    /// The schedules (default: the nightly cleanup and the daily report).
    pub schedules: Vec<ScheduleSettings>,
    /// Ticks missed while no scheduler ran: `latest` or `skip`.
    pub missed: MissedTicks,
}

impl Default for SchedulerSettings {
    fn default() -> Self {
        Self {
            schedules: vec![
                ScheduleSettings {
                    name: "nightly-cleanup".to_owned(),
                    cron: "0 30 3 * * *".to_owned(),
                    event: None,
                    job: Some("maintenance.cleanup".to_owned()),
                    data: serde_json::json!({"older_than_days": 30}),
                },
                ScheduleSettings {
                    name: "daily-report".to_owned(),
                    cron: "0 0 7 * * *".to_owned(),
                    event: None,
                    job: Some("maintenance.report".to_owned()),
                    data: empty_object(),
                },
            ],
            missed: MissedTicks::Latest,
        }
    }
}

/// Metrics settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSettings {
    /// Where a process without the HTTP front (`worker`, `saga run`, a participant) serves
    /// `GET /metrics` and `GET /healthz`; `None` turns the listener off. Processes with the
    /// HTTP front serve `/metrics` on `http.addr`.
    pub addr: Option<SocketAddr>,
}

impl Default for MetricsSettings {
    fn default() -> Self {
        Self {
            addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

/// Saga orchestrator settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SagaSettings {
    /// How long each step of the built-in order saga may take before it counts as failed
    /// (ms).
    pub deadline_ms: u64,
    /// Whether a failed "order created" notification rolls the order back (`true`, the
    /// article: every completed step is compensated) or completes the saga with a warning in
    /// its timeline (`false`).
    pub notify_rolls_back: bool,
    /// How often the orchestrator looks for passed deadlines (ms).
    pub tick_ms: u64,
    /// How often the outbox relay looks for commands not yet confirmed by the broker (ms).
    pub relay_ms: u64,
    /// A command stays in the outbox this long before the relay (rather than the process that
    /// stored it) publishes it (ms).
    pub relay_grace_ms: u64,
    /// More saga definitions (a JSON array of definitions: kind and steps), beside the
    /// built-in order saga.
    pub definitions_file: Option<PathBuf>,
}

impl Default for SagaSettings {
    fn default() -> Self {
        Self {
            deadline_ms: 30_000,
            notify_rolls_back: true,
            tick_ms: 500,
            relay_ms: 1_000,
            relay_grace_ms: 3_000,
            definitions_file: None,
        }
    }
}

impl SagaSettings {
    /// The step deadline.
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }
}

/// E-mail settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EmailSettings {
    /// SMTP server: `smtp://host:port` (plain), `smtp://host:587?tls=required` (STARTTLS),
    /// `smtps://user:pass@host` (TLS); credentials in the URL.
    pub smtp_url: Secret,
    /// The From address.
    pub from: String,
    /// Timeout of one SMTP conversation (ms).
    pub smtp_timeout_ms: u64,
}

impl Default for EmailSettings {
    fn default() -> Self {
        Self {
            smtp_url: Secret::new("smtp://127.0.0.1:25"),
            from: "warren <warren@localhost>".to_owned(),
            smtp_timeout_ms: 20_000,
        }
    }
}

/// Consumer runtime settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSettings {
    /// Attempts before a failing job is parked (the article's `maxAttempts`).
    pub max_attempts: u32,
    /// Wait after a reported failure: the TTL of the `warren.retry.60s` tier (ms). Changing it
    /// changes the declared queue argument: on a live broker, delete the tier queue first.
    pub failure_delay_ms: u64,
    /// Wait after an error, panic or timeout: the TTL of the `warren.retry.120s` tier (ms).
    pub error_delay_ms: u64,
    /// Handler timeout when a module sets none (ms).
    pub timeout_ms: u64,
    /// Unacked messages the broker may push to one consumer.
    pub prefetch: u16,
    /// Handlers running at once per module and process.
    pub concurrency: usize,
    /// How long shutdown waits for in-flight handlers (ms).
    pub shutdown_grace_ms: u64,
    /// Per-module overrides, by module name (`[jobs.modules.email] timeout_ms = 30000`).
    pub modules: std::collections::BTreeMap<String, ModuleSettings>,
}

impl Default for JobsSettings {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            failure_delay_ms: 60_000,
            error_delay_ms: 120_000,
            timeout_ms: 60_000,
            prefetch: 50,
            concurrency: 16,
            shutdown_grace_ms: 30_000,
            modules: std::collections::BTreeMap::new(),
        }
    }
}

/// One module's overrides of [`JobsSettings`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ModuleSettings {
    /// Handler timeout (ms).
    pub timeout_ms: Option<u64>,
    /// Prefetch.
    pub prefetch: Option<u16>,
    /// Concurrency.
    pub concurrency: Option<usize>,
    /// Attempts before parking.
    pub max_attempts: Option<u32>,
}

/// RabbitMQ settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpSettings {
    /// AMQP URI, vhost percent-encoded (`%2f` is `/`). `heartbeat=10` is added when absent so a
    /// half-open connection is noticed within seconds.
    pub url: Secret,
    /// The nodes of a RabbitMQ cluster, one AMQP URI each (same vhost in all); when set it
    /// replaces `url`. A list, or one string with the URIs separated by commas (the form an
    /// environment variable takes: `WARREN_AMQP__URLS=amqp://h1,amqp://h2`). Connections
    /// are spread over the nodes in turn, and a connection that cannot be made, or is lost,
    /// is made to the next node that answers.
    #[serde(deserialize_with = "secret_list")]
    pub urls: Vec<Secret>,
    /// RabbitMQ management API base URL with credentials, used by `topology verify`.
    pub management_url: Secret,
    /// The management API of each node (a list or a comma-separated string, as `urls`);
    /// when set it replaces `management_url`, and each call goes to the first node that
    /// answers.
    #[serde(deserialize_with = "secret_list")]
    pub management_urls: Vec<Secret>,
    /// AMQP connections kept by the pool.
    pub pool_size: usize,
    /// Confirm channels the publisher spreads messages over (each keeps many confirms in flight).
    pub publish_channels: usize,
    /// How long a publish may wait for the broker's confirm before it is an error (ms).
    pub publish_timeout_ms: u64,
    /// How long to wait for a new AMQP connection (ms).
    pub connect_timeout_ms: u64,
    /// Path of a topology definitions file to use instead of the built-in `broker-topology.json`.
    pub topology_file: Option<PathBuf>,
    /// Declare the topology when a process starts.
    pub declare_topology: bool,
    /// With an `amqps://` URL: a PEM file of CA certificates to trust for the broker's
    /// certificate, on top of the system's roots (which must exist: package ca-certificates).
    pub tls_ca_file: Option<PathBuf>,
    /// With an `amqps://` URL: a PEM client certificate (chain) to present to the broker;
    /// needs `tls_client_key_file`.
    pub tls_client_cert_file: Option<PathBuf>,
    /// With an `amqps://` URL: the PEM (PKCS#8, PKCS#1 or SEC1) private key of
    /// `tls_client_cert_file`.
    pub tls_client_key_file: Option<PathBuf>,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            urls: Vec::new(),
            management_url: Secret::new("http://guest:guest@127.0.0.1:15672"),
            management_urls: Vec::new(),
            pool_size: 4,
            publish_channels: 8,
            publish_timeout_ms: 5_000,
            connect_timeout_ms: 3_000,
            topology_file: None,
            declare_topology: true,
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
        }
    }
}

impl AmqpSettings {
    /// The AMQP URI of each node: `urls`, or `url` alone when `urls` is empty.
    pub fn node_urls(&self) -> Vec<&str> {
        if self.urls.is_empty() {
            vec![self.url.expose()]
        } else {
            self.urls.iter().map(Secret::expose).collect()
        }
    }

    /// The first node's AMQP URI (what names the vhost and the AMQP user).
    pub fn primary_url(&self) -> &str {
        self.urls.first().unwrap_or(&self.url).expose()
    }

    /// The vhost every node's URI names.
    pub fn vhost(&self) -> String {
        crate::config::vhost_of(self.primary_url())
    }

    /// The management API of each node: `management_urls`, or `management_url` alone.
    pub fn management_node_urls(&self) -> Vec<&str> {
        if self.management_urls.is_empty() {
            vec![self.management_url.expose()]
        } else {
            self.management_urls.iter().map(Secret::expose).collect()
        }
    }

    /// The publish confirm timeout.
    pub fn publish_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_timeout_ms)
    }

    /// The connection timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Database settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// `postgres://user:pass@host/db` or `sqlite://path?mode=rwc`.
    pub url: Secret,
    /// Size of the HTTP front's and the consumers' pools unless `pools` sets them
    /// (PostgreSQL; SQLite always uses one writer connection, shared by every role).
    pub max_connections: u32,
    /// Each role's pool size (see [`PoolSettings`]).
    pub pools: PoolSettings,
    /// Run pending migrations at start.
    pub migrate: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://warren.db?mode=rwc"),
            max_connections: 10,
            pools: PoolSettings::default(),
            migrate: true,
        }
    }
}

impl DatabaseSettings {
    /// The size of `pool`'s connection pool on PostgreSQL.
    pub fn pool_size(&self, pool: Pool) -> u32 {
        let p = &self.pools;
        match pool {
            Pool::Http => p.http.unwrap_or(self.max_connections),
            Pool::Consumers => p.consumers.unwrap_or(self.max_connections),
            Pool::Relay => p.relay,
            Pool::Scheduler => p.scheduler,
        }
    }
}

/// The database pools of a process, one per role, so that one role's load cannot starve
/// another's: a burst of HTTP orders waiting for connections does not stop the consumers
/// from acking, and neither stops the relays from emptying the outboxes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pool {
    /// The HTTP front's requests (orders, reads, operator actions, the outbox when the broker
    /// is away).
    Http,
    /// The consumers: job modules, saga participants and the orchestrator's replies.
    Consumers,
    /// The relays of the events and saga outboxes, the saga deadline timer and gauges.
    Relay,
    /// The cron scheduler's tick claims.
    Scheduler,
}

impl Pool {
    /// Every pool.
    pub const ALL: [Pool; 4] = [Pool::Http, Pool::Consumers, Pool::Relay, Pool::Scheduler];

    /// The pool's name (`http`, `consumers`, `relay`, `scheduler`), as settings and metrics
    /// say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Pool::Http => "http",
            Pool::Consumers => "consumers",
            Pool::Relay => "relay",
            Pool::Scheduler => "scheduler",
        }
    }
}

/// Connections per role (`database.pools.*`, `WARREN_DATABASE__POOLS__HTTP`, ...). A process
/// opens only the pools of its roles, and connections only as they are needed.
///
/// The defaults: the HTTP front and the consumers keep `database.max_connections` (10) each,
/// the size the single shared pool had, so neither role has fewer connections than before;
/// a job holds one connection for its transaction, and jobs beyond the pool's size wait for
/// one (`jobs.concurrency` is 16 per module, so a busy worker waits here, not on the broker).
/// The relays and the scheduler run one short pass at a time and get 2 each: the pass, and a
/// spare for a gauge or a probe while it runs. A process with every role holds at most 24;
/// on PostgreSQL the sum over all processes must stay under its `max_connections`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PoolSettings {
    /// The HTTP front's pool; unset: `database.max_connections`.
    pub http: Option<u32>,
    /// The consumers' pool; unset: `database.max_connections`.
    pub consumers: Option<u32>,
    /// The relays', the saga timer's and the gauges' pool.
    pub relay: u32,
    /// The scheduler's pool.
    pub scheduler: u32,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            http: None,
            consumers: None,
            relay: 2,
            scheduler: 2,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Logging settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `tracing` filter directives (`RUST_LOG` syntax).
    pub filter: String,
    /// Text or JSON lines.
    pub format: LogFormat,
    /// OTLP/HTTP traces URL (`http://collector:4318/v1/traces`) to export spans to; needs a
    /// build with the cargo feature `otlp`. Off by default.
    pub otlp_endpoint: Option<String>,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            filter: "info,lapin=warn,sqlx=warn,sea_orm=warn".to_owned(),
            format: LogFormat::Text,
            otlp_endpoint: None,
        }
    }
}

/// How a subscription puts an event on the wire (CloudEvents HTTP binding, section 1.3).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Attributes in `ce-*` headers, the event's `data` as the body.
    #[default]
    Binary,
    /// The whole event as one `application/cloudevents+json` document.
    Structured,
}

/// Delivery order of a subscription's messages.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// No order: up to `concurrency` deliveries at once.
    #[default]
    None,
    /// One message at a time per aggregate id, in publish order: a failing message is
    /// retried in place and holds back only its own aggregate's later messages; the
    /// subscription's queue is declared with `x-single-active-consumer`, so one worker
    /// process delivers it at a time and the others wait as standbys (docs/subscriptions.md,
    /// "Ordering").
    Aggregate,
}

/// A subscription's circuit breaker: after `failures` failed deliveries in a row it stops
/// taking messages for a cooldown that doubles from `cooldown_ms` up to `max_cooldown_ms`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failed deliveries that open the breaker.
    pub failures: u32,
    /// The first cooldown (ms).
    pub cooldown_ms: u64,
    /// The longest cooldown (ms).
    pub max_cooldown_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown_ms: 1_000,
            max_cooldown_ms: 60_000,
        }
    }
}

fn default_sub_timeout_ms() -> u64 {
    10_000
}

fn default_sub_concurrency() -> usize {
    16
}

fn default_max_retry_after_secs() -> u64 {
    300
}

fn default_max_response_bytes() -> usize {
    4_096
}

/// Serializes a secret as `[redacted]`: settings are shown (`warren config`) by serializing
/// them, so a subscription's signing secrets never reach that output. Nothing deserializes
/// a serialized `Settings` back (the loader's defaults have no subscriptions).
fn redact_secret<S: serde::Serializer>(secret: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match secret {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

fn redact_secrets<S: serde::Serializer>(secrets: &[Secret], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(secrets.len()))?;
    for _ in secrets {
        seq.serialize_element("[redacted]")?;
    }
    seq.end()
}

fn redact_header_values<S: serde::Serializer>(
    headers: &std::collections::BTreeMap<String, Secret>,
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(headers.len()))?;
    for name in headers.keys() {
        map.serialize_entry(name, "[redacted]")?;
    }
    map.end()
}

/// One HTTP subscription (`[[subscriptions]]`): warren delivers the events and commands
/// matching its patterns to `url`, from its own queue `warren.sub.<name>`, with the runner's
/// retries and dead letters. See `docs/subscriptions.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSettings {
    /// Unique name, `[a-z0-9_-]`, at most 64 characters: in the queue name, metrics and logs.
    pub name: String,
    /// Binding patterns on `warren.events` (`order.*`, `user.registered`, `#`).
    #[serde(default)]
    pub events: Vec<String>,
    /// Binding patterns on `warren.commands` (`invoice.render`): jobs an HTTP service does.
    #[serde(default)]
    pub commands: Vec<String>,
    /// Where deliveries are POSTed: `http://` or `https://` (the certificate checked against
    /// the system's roots, plus `tls_ca_file`), no credentials in the URL (put them in
    /// `headers`).
    pub url: String,
    /// With an `https://` URL: a PEM file of CA certificates to trust for the receiver's
    /// certificate, on top of the system's roots (an internal CA). Read at start.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// With an `https://` URL: a PEM client certificate (chain) warren presents to a
    /// receiver that asks for one (mutual TLS); needs `tls_client_key_file`. Read at start.
    #[serde(default)]
    pub tls_client_cert_file: Option<PathBuf>,
    /// The PEM (PKCS#8, PKCS#1 or SEC1) private key of `tls_client_cert_file`.
    #[serde(default)]
    pub tls_client_key_file: Option<PathBuf>,
    /// How long one delivery may take, connect to the last byte of the response (ms).
    #[serde(default = "default_sub_timeout_ms")]
    pub timeout_ms: u64,
    /// Deliveries in flight at once per worker process.
    #[serde(default = "default_sub_concurrency")]
    pub concurrency: usize,
    /// Attempts before a message is parked in `warren.sub.<name>.dead`; unset:
    /// `jobs.max_attempts`.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Static headers sent with every delivery (`authorization = "Bearer ..."`). Values are
    /// shown as `[redacted]` by `warren config`: they often are credentials. Hop-by-hop
    /// headers and the ones warren sets (`ce-*`, `webhook-*`, `warren-*`, `idempotency-key`,
    /// `content-type`, ...) are refused.
    #[serde(default, serialize_with = "redact_header_values")]
    pub headers: std::collections::BTreeMap<String, Secret>,
    /// Signing secret in the Standard Webhooks form `whsec_<base64>` (24 to 64 bytes).
    #[serde(default, serialize_with = "redact_secret")]
    pub secret: Option<Secret>,
    /// More signing secrets, for rotation: every secret (with `secret`) signs each delivery.
    #[serde(default, serialize_with = "redact_secrets")]
    pub secrets: Vec<Secret>,
    /// `binary` (default) or `structured`.
    #[serde(default)]
    pub content_mode: ContentMode,
    /// `none` (default) or `aggregate`.
    #[serde(default)]
    pub ordering: Ordering,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// The longest pause a `Retry-After` on 429/503 can ask for (s).
    #[serde(default = "default_max_retry_after_secs")]
    pub max_retry_after_secs: u64,
    /// How much of a failed response's body is kept for the failure record (bytes); no more
    /// is ever read.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Whether the runner's inbox skips a message already delivered (its ack was lost):
    /// `true` (default) costs a database write per delivery; `false` leaves a rare repeat to
    /// the receiver, which has `ce-id` / `webhook-id` to recognise it.
    #[serde(default = "default_true")]
    pub inbox: bool,
}

impl SubscriptionSettings {
    /// A subscription with every optional field at its default.
    pub fn new(name: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            events: Vec::new(),
            commands: Vec::new(),
            url: url.into(),
            tls_ca_file: None,
            tls_client_cert_file: None,
            tls_client_key_file: None,
            timeout_ms: default_sub_timeout_ms(),
            concurrency: default_sub_concurrency(),
            max_attempts: None,
            headers: std::collections::BTreeMap::new(),
            secret: None,
            secrets: Vec::new(),
            content_mode: ContentMode::default(),
            ordering: Ordering::default(),
            breaker: BreakerSettings::default(),
            max_retry_after_secs: default_max_retry_after_secs(),
            max_response_bytes: default_max_response_bytes(),
            inbox: true,
        }
    }

    /// The subscription's durable queue: `warren.sub.<name>`.
    pub fn queue(&self) -> String {
        format!("warren.sub.{}", self.name)
    }

    /// Its dead-letter queue: `warren.sub.<name>.dead`.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.queue())
    }

    /// The delivery timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Every signing secret: `secret`, then `secrets`.
    pub fn signing_secrets(&self) -> impl Iterator<Item = &Secret> {
        self.secret.iter().chain(self.secrets.iter())
    }
}

/// The prefix of a Standard Webhooks secret.
pub const WHSEC_PREFIX: &str = "whsec_";

/// Decodes a Standard Webhooks secret, `whsec_` followed by the base64 (standard alphabet,
/// padded or not) of 24 to 64 random bytes, into the HMAC key. The error says what is wrong
/// without repeating the value.
pub fn decode_whsec(secret: &str) -> Result<Vec<u8>, String> {
    use base64::{
        Engine,
        alphabet::STANDARD,
        engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    };
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let encoded = secret
        .strip_prefix(WHSEC_PREFIX)
        .ok_or_else(|| format!("must start with {WHSEC_PREFIX:?} (the Standard Webhooks form)"))?;
    let key = LENIENT
        .decode(encoded)
        .map_err(|e| format!("is not base64 after {WHSEC_PREFIX:?}: {e}"))?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!(
            "decodes to {} bytes; the Standard Webhooks specification asks for 24 to 64",
            key.len()
        ));
    }
    Ok(key)
}

impl SubscriptionSettings {
    /// The HMAC keys of every signing secret, in order (see [`decode_whsec`]).
    pub fn signing_keys(&self) -> Result<Vec<Vec<u8>>, String> {
        self.signing_secrets()
            .map(|s| decode_whsec(s.expose()))
            .collect()
    }
}

fn default_true() -> bool {
    true
}

/// A list of secrets from a list, or from one string of comma-separated values (an
/// environment variable's form); blanks around each value are dropped, empty values skipped.
fn secret_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let values = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(str::to_owned).collect(),
        OneOrMany::Many(v) => v,
    };
    Ok(values
        .iter()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(Secret::new)
        .collect())
}
