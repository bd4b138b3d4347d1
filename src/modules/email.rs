//! The `email` module: the article's `SendEmailJob`. Consumes `email.*` commands from
//! `warren.email`, sends HTML mail over SMTP with lettre, and writes one `email_log` row per
//! attempt's outcome.
//!
//! Outcomes: missing or malformed `email`/`subject` is invalid input (parked at once, no
//! retry); the server refusing for now (4xx) is a reported failure (retried after 60 s); the
//! server refusing for good (5xx, e.g. no such mailbox) is permanent (parked at once); not
//! reaching the server is an error (retried after 120 s). On the last failure the runner's
//! `job.failed` alert carries `{type: email_failed, data, job_id, attempts}`.
//!
//! Relies on the inbox: a redelivered job whose mail was sent and recorded is not sent again.
//! A crash between the SMTP server's 250 and the inbox row can still send twice (SMTP has no
//! idempotency key); `email_log` shows it.

use std::time::Duration;

use chrono::Utc;
use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{Mailbox, header::ContentType},
};
use sea_orm::{EntityTrait, Set};
use serde::Deserialize;

use crate::{
    config::EmailSettings,
    jobs::{Consumer, Job, JobError},
};

/// `email.send` data.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SendEmail {
    /// Recipient address.
    pub email: Option<String>,
    /// Subject line.
    pub subject: Option<String>,
    /// HTML body.
    #[serde(default)]
    pub content: String,
}

/// Why the e-mail module could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EmailError {
    /// The SMTP URL is not usable.
    #[error("invalid email.smtp_url: {0}")]
    SmtpUrl(String),
    /// The From address does not parse.
    #[error("invalid email.from {from:?}: {reason}")]
    From {
        /// The value.
        from: String,
        /// Why.
        reason: String,
    },
}

/// The e-mail module.
#[derive(Clone)]
pub(crate) struct Email {
    db: sea_orm::DatabaseConnection,
    mailer: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email").field("from", &self.from).finish()
    }
}

impl Email {
    /// The e-mail module with the SMTP server from `settings`.
    pub(crate) fn new(
        db: sea_orm::DatabaseConnection,
        settings: &EmailSettings,
    ) -> Result<Self, EmailError> {
        let mailer = AsyncSmtpTransport::<Tokio1Executor>::from_url(settings.smtp_url.expose())
            .map_err(|e| EmailError::SmtpUrl(e.to_string()))?
            .timeout(Some(Duration::from_millis(settings.smtp_timeout_ms)))
            .build();
        let from = settings
            .from
            .parse::<Mailbox>()
            .map_err(|e| EmailError::From {
                from: settings.from.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self { db, mailer, from })
    }

    async fn log(
        &self,
        job_id: uuid::Uuid,
        attempt: u32,
        email: &str,
        subject: &str,
        status: &str,
        error: Option<String>,
    ) {
        let row = entities::email_log::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            job_id: Set(job_id),
            email: Set(email.to_owned()),
            subject: Set(subject.to_owned()),
            status: Set(status.to_owned()),
            error: Set(error),
            attempt: Set(i32::try_from(attempt).unwrap_or(i32::MAX)),
            send_time: Set(Utc::now()),
        };
        if let Err(e) = entities::email_log::Entity::insert(row)
            .exec_without_returning(&self.db)
            .await
        {
            tracing::error!(error = %e, "Could not write email_log.");
        }
    }
}

fn required(v: Option<String>, field: &str) -> Result<String, JobError> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(JobError::Invalid(format!("{field} is required"))),
    }
}

#[async_trait::async_trait]
impl Consumer for Email {
    fn name(&self) -> &str {
        "email"
    }

    fn queue(&self) -> &str {
        crate::broker::names::EMAIL_QUEUE
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    #[tracing::instrument(skip_all, fields(job_id = %job.message_id, attempt = job.attempt))]
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        let data: SendEmail = job.data()?;
        self.send(job.message_id, job.attempt, data).await
    }
}

impl Email {
    /// Sends one e-mail and writes its `email_log` row (`job_id` names the job or event it
    /// belongs to). The error says whether a retry can help (see the module docs).
    pub(crate) async fn send(
        &self,
        job_id: uuid::Uuid,
        attempt: u32,
        data: SendEmail,
    ) -> Result<(), JobError> {
        let email = required(data.email, "email")?;
        let subject = required(data.subject, "subject")?;
        let to: Mailbox = match email.parse() {
            Ok(m) => m,
            Err(e) => {
                let reason = format!("invalid email address {email:?}: {e}");
                self.log(
                    job_id,
                    attempt,
                    &email,
                    &subject,
                    "failed",
                    Some(reason.clone()),
                )
                .await;
                return Err(JobError::Invalid(reason));
            }
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject.clone())
            .header(ContentType::TEXT_HTML)
            .body(data.content)
            .map_err(|e| JobError::Invalid(format!("cannot build the message: {e}")))?;
        let (status, error, result) = match self.mailer.send(message).await {
            Ok(_) => {
                tracing::info!("E-mail sent.");
                ("sent", None, Ok(()))
            }
            Err(e) if e.is_permanent() => {
                let reason = format!("SMTP server refused for good: {e}");
                (
                    "failed",
                    Some(reason.clone()),
                    Err(JobError::Invalid(reason)),
                )
            }
            Err(e) if e.is_transient() => {
                let reason = format!("SMTP server refused for now: {e}");
                (
                    "failed",
                    Some(reason.clone()),
                    Err(JobError::Failed(reason)),
                )
            }
            Err(e) => {
                let reason = format!("cannot send through SMTP: {e}");
                ("error", Some(reason.clone()), Err(JobError::Error(reason)))
            }
        };
        self.log(job_id, attempt, &email, &subject, status, error)
            .await;
        result
    }
}
