//! Checks of values that parse but cannot work, one function per concern; the first
//! problem found is the error.

use super::{ConfigError, Settings, SubscriptionSettings, TokenSetting, parse_cron};

fn invalid(field: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.to_owned(),
    }
}

impl Settings {
    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_broker()?;
        self.check_database()?;
        self.check_runtime()?;
        self.check_schedules()?;
        self.check_http()?;
        self.check_tls()?;
        self.check_subscriptions()
    }

    fn check_broker(&self) -> Result<(), ConfigError> {
        let field = if self.amqp.urls.is_empty() {
            "amqp.url"
        } else {
            "amqp.urls"
        };
        let nodes = self.amqp.node_urls();
        if nodes
            .iter()
            .any(|u| !u.starts_with("amqp://") && !u.starts_with("amqps://"))
        {
            return Err(invalid(field, "must start with amqp:// or amqps://"));
        }
        if nodes.iter().any(|u| url::Url::parse(u).is_err()) {
            return Err(invalid(field, "is not a URL"));
        }
        let vhost = self.amqp.vhost();
        if nodes.iter().any(|u| crate::config::vhost_of(u) != vhost) {
            return Err(invalid(
                field,
                "every node's URI must name the same vhost (one cluster, one vhost)",
            ));
        }
        let mgmt_field = if self.amqp.management_urls.is_empty() {
            "amqp.management_url"
        } else {
            "amqp.management_urls"
        };
        if self
            .amqp
            .management_node_urls()
            .iter()
            .any(|u| !u.starts_with("http://") && !u.starts_with("https://"))
        {
            return Err(invalid(mgmt_field, "must start with http:// or https://"));
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
        Ok(())
    }

    fn check_database(&self) -> Result<(), ConfigError> {
        if crate::config::Pool::ALL
            .iter()
            .any(|p| self.database.pool_size(*p) == 0)
        {
            return Err(invalid(
                "database.pools",
                "every pool (database.max_connections, database.pools.*) needs at least 1 connection",
            ));
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
        Ok(())
    }

    fn check_runtime(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    fn check_schedules(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    fn check_http(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    fn check_tls(&self) -> Result<(), ConfigError> {
        let tls_files = [
            &self.amqp.tls_ca_file,
            &self.amqp.tls_client_cert_file,
            &self.amqp.tls_client_key_file,
        ];
        if tls_files.iter().any(|f| f.is_some())
            && !self
                .amqp
                .node_urls()
                .iter()
                .any(|u| u.starts_with("amqps://"))
        {
            return Err(invalid(
                "amqp.tls_ca_file",
                "TLS files are set but no AMQP URI is amqps:// (they would be ignored)",
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
}

/// Headers a subscription may not set: hop-by-hop ones (RFC 9110 section 7.6.1) and the
/// framing ones the HTTP client owns.
const FORBIDDEN_HEADERS: [&str; 12] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "content-type",
];

/// Headers warren sets on every delivery (see `docs/subscriptions.md`), and their prefixes.
const WARREN_HEADERS: [&str; 3] = ["traceparent", "x-request-id", "idempotency-key"];
/// `warren-` covers the attempt, the subscription and the saga headers (`warren-saga-*`).
const WARREN_PREFIXES: [&str; 3] = ["ce-", "webhook-", "warren-"];

/// A binding pattern: dot-separated words, each `*`, `#` or `[a-z0-9_]+`.
fn valid_pattern(p: &str) -> bool {
    p.len() <= 255
        && p.split('.').all(|w| {
            w == "*"
                || w == "#"
                || (!w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        })
}

fn sub_invalid(field: &'static str, sub: &SubscriptionSettings, reason: &str) -> ConfigError {
    invalid(field, &format!("subscription {:?}: {reason}", sub.name))
}

impl Settings {
    fn check_subscriptions(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for sub in &self.subscriptions {
            if !names.insert(sub.name.as_str()) {
                return Err(sub_invalid(
                    "subscriptions.name",
                    sub,
                    "the name is used twice",
                ));
            }
            check_subscription(sub)?;
        }
        Ok(())
    }
}

fn check_subscription(sub: &SubscriptionSettings) -> Result<(), ConfigError> {
    let name_ok = !sub.name.is_empty()
        && sub.name.len() <= 64
        && sub
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(sub_invalid(
            "subscriptions.name",
            sub,
            "a name is 1 to 64 characters of a-z, 0-9, _ and -",
        ));
    }
    if sub.events.is_empty() && sub.commands.is_empty() {
        return Err(sub_invalid(
            "subscriptions.events",
            sub,
            "needs at least one pattern in events or commands",
        ));
    }
    for (field, patterns) in [
        ("subscriptions.events", &sub.events),
        ("subscriptions.commands", &sub.commands),
    ] {
        if let Some(p) = patterns.iter().find(|p| !valid_pattern(p)) {
            return Err(sub_invalid(
                field,
                sub,
                &format!(
                    "{p:?} is not a binding pattern (dot-separated words of a-z, 0-9 and _, or * and #)"
                ),
            ));
        }
    }
    check_url(sub)?;
    check_sub_tls(sub)?;
    if sub.timeout_ms == 0 {
        return Err(sub_invalid(
            "subscriptions.timeout_ms",
            sub,
            "must be at least 1",
        ));
    }
    if sub.concurrency == 0 {
        return Err(sub_invalid(
            "subscriptions.concurrency",
            sub,
            "must be at least 1",
        ));
    }
    if sub.max_attempts == Some(0) {
        return Err(sub_invalid(
            "subscriptions.max_attempts",
            sub,
            "must be at least 1",
        ));
    }
    check_headers(sub)?;
    check_secrets(sub)?;
    check_delivery_rules(sub)
}

fn check_sub_tls(sub: &SubscriptionSettings) -> Result<(), ConfigError> {
    let files = [
        &sub.tls_ca_file,
        &sub.tls_client_cert_file,
        &sub.tls_client_key_file,
    ];
    if files.iter().any(|f| f.is_some()) && !sub.url.starts_with("https://") {
        return Err(sub_invalid(
            "subscriptions.tls_ca_file",
            sub,
            "TLS files are set but the url is not https:// (they would be ignored)",
        ));
    }
    if sub.tls_client_cert_file.is_some() != sub.tls_client_key_file.is_some() {
        return Err(sub_invalid(
            "subscriptions.tls_client_cert_file",
            sub,
            "set both tls_client_cert_file and tls_client_key_file, or neither",
        ));
    }
    Ok(())
}

fn check_delivery_rules(sub: &SubscriptionSettings) -> Result<(), ConfigError> {
    let b = &sub.breaker;
    if b.failures == 0 || b.cooldown_ms == 0 {
        return Err(sub_invalid(
            "subscriptions.breaker",
            sub,
            "breaker.failures and breaker.cooldown_ms must be at least 1",
        ));
    }
    if b.max_cooldown_ms < b.cooldown_ms {
        return Err(sub_invalid(
            "subscriptions.breaker",
            sub,
            "breaker.max_cooldown_ms must be at least breaker.cooldown_ms",
        ));
    }
    if sub.max_response_bytes > 1 << 20 {
        return Err(sub_invalid(
            "subscriptions.max_response_bytes",
            sub,
            "at most 1048576 (1 MiB) of a response is kept",
        ));
    }
    Ok(())
}

fn check_secrets(sub: &SubscriptionSettings) -> Result<(), ConfigError> {
    let mut keys = std::collections::HashSet::new();
    for (i, secret) in sub.signing_secrets().enumerate() {
        let field = if i == 0 && sub.secret.is_some() {
            "subscriptions.secret"
        } else {
            "subscriptions.secrets"
        };
        let key = super::decode_whsec(secret.expose())
            .map_err(|e| sub_invalid(field, sub, &format!("the secret {e}")))?;
        if !keys.insert(key) {
            return Err(sub_invalid(field, sub, "a secret is listed twice"));
        }
    }
    Ok(())
}

fn check_url(sub: &SubscriptionSettings) -> Result<(), ConfigError> {
    let url = url::Url::parse(&sub.url)
        .map_err(|e| sub_invalid("subscriptions.url", sub, &format!("not a URL: {e}")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(sub_invalid(
            "subscriptions.url",
            sub,
            "must start with http:// or https://",
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(sub_invalid("subscriptions.url", sub, "names no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(sub_invalid(
            "subscriptions.url",
            sub,
            "must not carry credentials (user:password@); send them in headers",
        ));
    }
    if url.fragment().is_some() {
        return Err(sub_invalid(
            "subscriptions.url",
            sub,
            "must not have a #fragment (it is never sent)",
        ));
    }
    Ok(())
}

fn check_headers(sub: &SubscriptionSettings) -> Result<(), ConfigError> {
    for (name, value) in &sub.headers {
        let lower = name.to_ascii_lowercase();
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(sub_invalid(
                "subscriptions.headers",
                sub,
                &format!("{name:?} is not a header name"),
            ));
        }
        if FORBIDDEN_HEADERS.contains(&lower.as_str()) {
            return Err(sub_invalid(
                "subscriptions.headers",
                sub,
                &format!("{name:?} is a hop-by-hop or framing header, set by the HTTP client"),
            ));
        }
        if WARREN_HEADERS.contains(&lower.as_str())
            || WARREN_PREFIXES.iter().any(|p| lower.starts_with(p))
        {
            return Err(sub_invalid(
                "subscriptions.headers",
                sub,
                &format!(
                    "{name:?} is set by warren on deliveries (saga commands carry idempotency-key and warren-saga-*)"
                ),
            ));
        }
        if reqwest::header::HeaderValue::from_str(value.expose()).is_err() {
            return Err(sub_invalid(
                "subscriptions.headers",
                sub,
                &format!("the value of {name:?} is not a valid header value"),
            ));
        }
    }
    Ok(())
}
