//! Typed settings, loaded once at start-up.
//!
//! Layers, later ones win: built-in defaults, an optional TOML file (`--config` or
//! `WARREN_CONFIG`), then `WARREN_*` environment variables with `__` between nested keys
//! (`WARREN_AMQP__URL`, `WARREN_HTTP__ADDR`, `WARREN_HTTP__TOKENS='["t1","t2"]'`). Nothing else
//! in warren reads the environment. Secrets (URLs with passwords, tokens) are wrapped in
//! [`Secret`], whose `Debug` and `Display` never print the value.
//!
//! Scoped bearer tokens fit in one variable too, as a TOML-like inline array:
//! `WARREN_HTTP__TOKENS='[{token="…", scopes=["publish"]}, {token="…", scopes=["admin"]}]'`.

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use croner::{
    Cron,
    parser::{CronParser, Seconds},
};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// A value that must never reach a log line: printed as `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where the value is handed to its consumer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// A URL with its password replaced by `***`, for logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // set_password only fails for URLs that cannot have one, which we checked.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "[unparseable url]".to_owned(),
    }
}

/// Everything warren can be configured with.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// RabbitMQ connection and publishing.
    pub amqp: AmqpSettings,
    /// The database behind sea-orm.
    pub database: DatabaseSettings,
    /// The HTTP front.
    pub http: HttpSettings,
    /// Logging.
    pub log: LogSettings,
    /// The consumer runtime: retries, timeouts, prefetch, per-module overrides.
    pub jobs: JobsSettings,
    /// The e-mail module's SMTP server.
    pub email: EmailSettings,
    /// The saga orchestrator.
    pub saga: SagaSettings,
    /// The metrics listener of processes without the HTTP front.
    pub metrics: MetricsSettings,
    /// The cron scheduler.
    pub scheduler: SchedulerSettings,
    /// The HTTP front's events outbox (events accepted while the broker is away).
    pub outbox: OutboxSettings,
    /// The operator console at `/console`.
    pub console: ConsoleSettings,
}

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
    /// RabbitMQ management API base URL with credentials, used by `topology verify`.
    pub management_url: Secret,
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
            management_url: Secret::new("http://guest:guest@127.0.0.1:15672"),
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
    /// Pool size for PostgreSQL (SQLite always uses one writer connection).
    pub max_connections: u32,
    /// Run pending migrations at start.
    pub migrate: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://warren.db?mode=rwc"),
            max_connections: 10,
            migrate: true,
        }
    }
}

/// HTTP front settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Address the HTTP front listens on.
    pub addr: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: u64,
    /// Bearer tokens accepted on `/v1/*`; empty means no authentication. A plain string is a
    /// token with every scope; `{token = "...", scopes = ["publish", "read", "admin"]}` limits
    /// it (see [`Scope`]).
    pub tokens: Vec<TokenSetting>,
    /// Publish requests (`POST /v1/events`, `/v1/jobs`, `/v1/orders`) allowed per second per
    /// token (per client IP address when no tokens are set); 0 turns rate limiting off.
    pub rate_limit_per_sec: u32,
    /// Publish requests a token may send at once above the steady rate (the bucket size);
    /// 0 means the same as `rate_limit_per_sec`.
    pub rate_limit_burst: u32,
    /// Publish requests handled at once by this process; one more is answered 503 with
    /// `Retry-After` at once rather than queued. 0 means no bound.
    pub max_in_flight_publishes: usize,
    /// Seconds announced in `Retry-After` when the broker cannot take a message.
    pub retry_after_secs: u32,
    /// A request slower than this (ms) is counted in `http_slow_requests_total` and
    /// announced as a `system.slow_request` event (at most `slow_request_events_per_sec`).
    pub slow_request_ms: u64,
    /// Most `system.slow_request` events published per second (the counter counts all).
    pub slow_request_events_per_sec: u32,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 256 * 1024,
            tokens: Vec::new(),
            rate_limit_per_sec: 0,
            rate_limit_burst: 0,
            max_in_flight_publishes: 1024,
            retry_after_secs: 5,
            slow_request_ms: 1_000,
            slow_request_events_per_sec: 10,
        }
    }
}

/// What a bearer token may do on `/v1/*`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Publish: `POST /v1/events/{name}`, `/v1/jobs/{name}`, `/v1/orders`.
    Publish,
    /// Read: every `GET` under `/v1` (audit log, notifications, dead letters, failed jobs,
    /// orders, sagas, interventions).
    Read,
    /// Operate: dead-letter replay and purge, failed-job retry, intervention retry and
    /// resolve, `POST /v1/admin/seed`. Includes `read`.
    Admin,
}

impl Scope {
    /// The scope's name as written in settings and error bodies.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// One entry of `http.tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TokenSetting {
    /// A plain token: every scope (what `http.tokens` held before scopes existed).
    Plain(Secret),
    /// A token limited to `scopes`.
    Scoped {
        /// The token.
        token: Secret,
        /// What it may do (at least one).
        scopes: Vec<Scope>,
        /// Who holds it, as the audit log names it (default `token #<index>`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
}

impl From<Secret> for TokenSetting {
    fn from(token: Secret) -> Self {
        TokenSetting::Plain(token)
    }
}

impl TokenSetting {
    /// The token itself.
    pub fn token(&self) -> &Secret {
        match self {
            TokenSetting::Plain(t) | TokenSetting::Scoped { token: t, .. } => t,
        }
    }

    /// The name the audit log gives its holder, when one is set.
    pub fn name(&self) -> Option<&str> {
        match self {
            TokenSetting::Plain(_) => None,
            TokenSetting::Scoped { name, .. } => name.as_deref(),
        }
    }

    /// The scopes it grants (a plain token: all of them; `admin` includes `read`).
    pub fn scopes(&self) -> Vec<Scope> {
        let mut scopes = match self {
            TokenSetting::Plain(_) => vec![Scope::Publish, Scope::Read, Scope::Admin],
            TokenSetting::Scoped { scopes, .. } => scopes.clone(),
        };
        if scopes.contains(&Scope::Admin) {
            scopes.push(Scope::Read);
        }
        scopes.sort();
        scopes.dedup();
        scopes
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

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A layer did not parse or a value has the wrong type.
    #[error("invalid settings: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but makes no sense.
    #[error("invalid setting `{field}`: {reason}")]
    Invalid {
        /// The dotted setting name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl Settings {
    /// Loads defaults, then `file` if given, then `WARREN_*` variables; validates the result.
    pub fn load(file: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        // `WARREN_CONFIG` names the file; `WARREN_TEST_*` belongs to the test harness.
        figment = figment.merge(
            Env::prefixed("WARREN_")
                .filter(|k| k != "config" && !k.as_str().to_ascii_lowercase().starts_with("test_"))
                .split("__"),
        );
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if !self.amqp.url.expose().starts_with("amqp://")
            && !self.amqp.url.expose().starts_with("amqps://")
        {
            return Err(invalid("amqp.url", "must start with amqp:// or amqps://"));
        }
        if self.amqp.pool_size == 0 {
            return Err(invalid("amqp.pool_size", "must be at least 1"));
        }
        if self.amqp.publish_channels == 0 {
            return Err(invalid("amqp.publish_channels", "must be at least 1"));
        }
        if self.amqp.publish_timeout_ms == 0 {
            return Err(invalid("amqp.publish_timeout_ms", "must be at least 1"));
        }
        let db = self.database.url.expose();
        if !(db.starts_with("postgres://")
            || db.starts_with("postgresql://")
            || db.starts_with("sqlite:"))
        {
            return Err(invalid(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if self.jobs.max_attempts == 0 {
            return Err(invalid("jobs.max_attempts", "must be at least 1"));
        }
        if self.jobs.concurrency == 0 || self.jobs.prefetch == 0 {
            return Err(invalid(
                "jobs.concurrency",
                "concurrency and prefetch must be at least 1",
            ));
        }
        if self.saga.deadline_ms == 0 || self.saga.tick_ms == 0 || self.saga.relay_ms == 0 {
            return Err(invalid(
                "saga.deadline_ms",
                "deadline_ms, tick_ms and relay_ms must be at least 1",
            ));
        }
        if self.console.session_hours == 0 || self.console.page_size == 0 {
            return Err(invalid(
                "console.page_size",
                "console.session_hours and console.page_size must be at least 1",
            ));
        }
        if self.outbox.relay_ms == 0 || self.outbox.batch == 0 {
            return Err(invalid(
                "outbox.relay_ms",
                "relay_ms and batch must be at least 1",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for sch in &self.scheduler.schedules {
            if !names.insert(sch.name.as_str()) {
                return Err(invalid(
                    "scheduler.schedules",
                    &format!("schedule name {:?} is used twice", sch.name),
                ));
            }
            if sch.event.is_some() == sch.job.is_some() {
                return Err(invalid(
                    "scheduler.schedules",
                    &format!("schedule {:?} needs exactly one of event or job", sch.name),
                ));
            }
            if !sch.data.is_object() {
                return Err(invalid(
                    "scheduler.schedules",
                    &format!("schedule {:?}: data must be a JSON object", sch.name),
                ));
            }
            if let Err(e) = parse_cron(&sch.cron) {
                return Err(invalid(
                    "scheduler.schedules",
                    &format!("schedule {:?}: {e}", sch.name),
                ));
            }
        }
        if self.http.body_limit_bytes == 0 {
            return Err(invalid("http.body_limit_bytes", "must be at least 1"));
        }
        if self
            .http
            .tokens
            .iter()
            .any(|t| t.token().expose().len() < 16)
        {
            return Err(invalid(
                "http.tokens",
                "each token must be at least 16 characters",
            ));
        }
        if self
            .http
            .tokens
            .iter()
            .any(|t| matches!(t, TokenSetting::Scoped { scopes, .. } if scopes.is_empty()))
        {
            return Err(invalid(
                "http.tokens",
                "a scoped token needs at least one scope (publish, read, admin)",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if !self
            .http
            .tokens
            .iter()
            .all(|t| seen.insert(t.token().expose()))
        {
            return Err(invalid("http.tokens", "a token is listed twice"));
        }
        if self.http.rate_limit_burst > 0 && self.http.rate_limit_per_sec == 0 {
            return Err(invalid(
                "http.rate_limit_burst",
                "set http.rate_limit_per_sec too (0 turns rate limiting off)",
            ));
        }
        let tls_files = [
            &self.amqp.tls_ca_file,
            &self.amqp.tls_client_cert_file,
            &self.amqp.tls_client_key_file,
        ];
        if tls_files.iter().any(|f| f.is_some()) && !self.amqp.url.expose().starts_with("amqps://")
        {
            return Err(invalid(
                "amqp.tls_ca_file",
                "TLS files are set but amqp.url is not amqps:// (they would be ignored)",
            ));
        }
        if self.amqp.tls_client_cert_file.is_some() != self.amqp.tls_client_key_file.is_some() {
            return Err(invalid(
                "amqp.tls_client_cert_file",
                "set both tls_client_cert_file and tls_client_key_file, or neither",
            ));
        }
        Ok(())
    }

    /// The AMQP URI with `heartbeat=10` added when it names no heartbeat.
    pub fn amqp_uri(&self) -> String {
        let url = self.amqp.url.expose();
        if url.contains("heartbeat=") {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&heartbeat=10")
        } else {
            format!("{url}?heartbeat=10")
        }
    }
}

/// Parses a cron expression: 5 fields, or 6 with leading seconds.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Settings {
            http: HttpSettings {
                tokens: vec![
                    TokenSetting::Plain(Secret::new("a-very-secret-token-123")),
                    TokenSetting::Scoped {
                        token: Secret::new("another-secret-token-456"),
                        scopes: vec![Scope::Publish],
                        name: None,
                    },
                ],
                ..HttpSettings::default()
            },
            ..Settings::default()
        };
        let printed = format!("{s:?}");
        assert!(!printed.contains("a-very-secret-token-123"));
        assert!(!printed.contains("another-secret-token-456"));
        assert!(!printed.contains("guest:guest"));
        assert!(printed.contains("[redacted]"));
    }

    #[test]
    fn redacts_url_password() {
        assert_eq!(
            redact_url("amqp://user:pw@host:5672/%2f"),
            "amqp://user:***@host:5672/%2f"
        );
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "warren.toml",
                "[http]\naddr = \"127.0.0.1:9000\"\nbody_limit_bytes = 10\n",
            )?;
            jail.set_env("WARREN_HTTP__BODY_LIMIT_BYTES", "20");
            jail.set_env("WARREN_AMQP__PUBLISH_TIMEOUT_MS", "750");
            jail.set_env("WARREN_TEST_AMQP_URL", "ignored");
            let s = Settings::load(Some(std::path::Path::new("warren.toml")))
                .map_err(|e| e.to_string())?;
            assert_eq!(s.http.addr, SocketAddr::from(([127, 0, 0, 1], 9000)));
            assert_eq!(s.http.body_limit_bytes, 20);
            assert_eq!(s.amqp.publish_timeout(), Duration::from_millis(750));
            Ok(())
        });
    }

    #[test]
    fn unknown_or_bad_values_are_rejected() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARREN_HTTP__NOPE", "1");
            assert!(Settings::load(None).is_err());
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env("WARREN_DATABASE__URL", "mysql://x");
            let err = Settings::load(None).err().map(|e| e.to_string());
            assert!(err.is_some_and(|e| e.contains("database.url")));
            Ok(())
        });
    }

    #[test]
    fn plain_and_scoped_tokens_load_from_toml_and_from_one_variable() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "warren.toml",
                r#"
[[http.tokens]]
token = "publisher-token-0123456789"
scopes = ["publish"]

[[http.tokens]]
token = "operator-token-0123456789"
scopes = ["admin"]
"#,
            )?;
            let s = Settings::load(Some(std::path::Path::new("warren.toml")))
                .map_err(|e| e.to_string())?;
            assert_eq!(s.http.tokens.len(), 2);
            assert_eq!(s.http.tokens[0].scopes(), vec![Scope::Publish]);
            assert_eq!(s.http.tokens[1].scopes(), vec![Scope::Read, Scope::Admin]);
            Ok(())
        });
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "WARREN_HTTP__TOKENS",
                r#"["plain-token-0123456789", {token="reader-token-0123456789", scopes=["read"]}]"#,
            );
            let s = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(
                s.http.tokens[0],
                TokenSetting::Plain(Secret::new("plain-token-0123456789"))
            );
            assert_eq!(
                s.http.tokens[0].scopes(),
                vec![Scope::Publish, Scope::Read, Scope::Admin]
            );
            assert_eq!(s.http.tokens[1].scopes(), vec![Scope::Read]);
            assert_eq!(s.http.tokens[1].token().expose(), "reader-token-0123456789");
            Ok(())
        });
    }

    #[test]
    fn bad_tokens_and_limits_are_refused() {
        let with = |f: &dyn Fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.validate().err().map(|e| e.to_string())
        };
        let scoped = |t: &str, scopes: Vec<Scope>| TokenSetting::Scoped {
            token: Secret::new(t),
            scopes,
            name: None,
        };
        assert!(
            with(&|s| s.http.tokens = vec![scoped("long-enough-token-123", vec![])])
                .is_some_and(|e| e.contains("at least one scope"))
        );
        assert!(
            with(&|s| s.http.tokens = vec![scoped("short", vec![Scope::Read])])
                .is_some_and(|e| e.contains("16 characters"))
        );
        assert!(
            with(&|s| {
                s.http.tokens = vec![
                    scoped("long-enough-token-123", vec![Scope::Read]),
                    TokenSetting::Plain(Secret::new("long-enough-token-123")),
                ]
            })
            .is_some_and(|e| e.contains("twice"))
        );
        assert!(
            with(&|s| s.http.rate_limit_burst = 5)
                .is_some_and(|e| e.contains("rate_limit_per_sec"))
        );
        assert!(
            with(&|s| s.amqp.tls_ca_file = Some("/ca.pem".into()))
                .is_some_and(|e| e.contains("amqps://"))
        );
        assert!(
            with(&|s| {
                s.amqp.url = Secret::new("amqps://u:p@h/%2f");
                s.amqp.tls_client_cert_file = Some("/c.pem".into());
            })
            .is_some_and(|e| e.contains("tls_client_key_file"))
        );
        assert!(
            with(&|s| {
                s.amqp.url = Secret::new("amqps://u:p@h/%2f");
                s.amqp.tls_ca_file = Some("/ca.pem".into());
            })
            .is_none()
        );
    }

    #[test]
    fn heartbeat_is_added_once() {
        let mut s = Settings::default();
        assert!(s.amqp_uri().ends_with("?heartbeat=10"));
        s.amqp.url = Secret::new("amqp://h/%2f?heartbeat=5");
        assert_eq!(s.amqp_uri(), "amqp://h/%2f?heartbeat=5");
    }
}
