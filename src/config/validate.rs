//! Checks of values that parse but cannot work, one function per concern; the first
//! problem found is the error.

use super::{ConfigError, Settings, TokenSetting, parse_cron};

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
        self.check_tls()
    }

    fn check_broker(&self) -> Result<(), ConfigError> {
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
}
