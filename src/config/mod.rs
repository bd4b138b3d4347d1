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

mod files;
mod http;
mod identity;
mod secret;
mod sections;
#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests;
mod validate;

use croner::{
    Cron,
    parser::{CronParser, Seconds},
};
use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

pub use files::{Files, NamedFile};
pub use http::{HttpSettings, Scope, TokenSetting};
pub use identity::Identity;
pub use secret::{Secret, redact_url};
pub use sections::*;

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
    /// HTTP subscriptions (`[[subscriptions]]`): events and commands delivered to URLs.
    pub subscriptions: Vec<SubscriptionSettings>,
    /// This process's user and host, read when settings load (not a setting: never in a file).
    #[serde(skip)]
    pub identity: Identity,
    /// The files these settings name, read when they load (see [`Settings::files`]).
    #[serde(skip)]
    pub files: Files,
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
        let mut settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        settings.identity = Identity::detect();
        settings.files = Files::read(&settings)?;
        Ok(settings)
    }

    /// The first node's AMQP URI with `heartbeat=10` added when it names no heartbeat.
    pub fn amqp_uri(&self) -> String {
        with_heartbeat(self.amqp.primary_url())
    }

    /// Every node's AMQP URI (`amqp.urls`, or `amqp.url`), each with `heartbeat=10` added
    /// when it names no heartbeat.
    pub fn amqp_uris(&self) -> Vec<String> {
        self.amqp
            .node_urls()
            .into_iter()
            .map(with_heartbeat)
            .collect()
    }
}

fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&heartbeat=10")
    } else {
        format!("{url}?heartbeat=10")
    }
}

/// The vhost named by an AMQP URL (`/` when the URL has no path): its path, percent-decoded
/// (`amqp://h/%2f` is `/`; a `+` stays a `+`, as the AMQP URI spec has it).
pub fn vhost_of(amqp_url: &str) -> String {
    let path = url::Url::parse(amqp_url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_owned())
        .unwrap_or_default();
    if path.is_empty() {
        return "/".to_owned();
    }
    percent_encoding::percent_decode_str(&path)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses a cron expression: 5 fields, or 6 with leading seconds.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}
