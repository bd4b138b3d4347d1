//! The HTTP front's settings: address, limits, bearer tokens and their scopes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Secret;

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
    /// How long (seconds) the answer under an `Idempotency-Key`, or to a CloudEvent (its
    /// `source` + `id`), is remembered: a repeat within it is answered the same and has no
    /// second effect. The `maintenance.cleanup` job deletes older answers.
    pub idempotency_retention_secs: u64,
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
            idempotency_retention_secs: 24 * 60 * 60,
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
