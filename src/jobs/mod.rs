//! The consumer runtime: one trait for a job module ([`Consumer`]), one runner that owns
//! everything else (manual ack, prefetch, concurrency, timeouts, panics, retries through the
//! broker's delay tiers, dead-lettering, the `failed_jobs` record, the `job.failed` alert, the
//! inbox, spans and metrics).
//!
//! A handler only says what happened (SPEC section 5):
//!
//! | handler result | runner |
//! |---|---|
//! | `Ok(())` | mark in the inbox, ack |
//! | [`JobError::Failed`] (the article's `return false`) | attempt < max: wait in `warren.retry.60s`, then back |
//! | [`JobError::Error`], a panic, or the timeout | attempt < max: wait in `warren.retry.120s`, then back |
//! | attempt = max, or [`JobError::Invalid`] | park in `Q.dead`, `failed_jobs` row, `job.failed` event |
//! | [`JobError::Deferred`] | back to the queue, same attempt (a `Failed` after `max_attempts` deferrals) |
//! | body that is not a warren message | park in `Q.dead` with the decode error |
//!
//! Every transfer is publish-with-confirm first, then ack: a crash in between duplicates a
//! message (the inbox absorbs it), never loses one.
//!
//! A consumer that asks for order ([`Consumer::ordering`]) gets its deliveries in
//! per-aggregate lanes instead (`lanes`): one message per aggregate id at a time, in delivery
//! order, a failure retried in place after the same delays instead of through the tiers.

pub mod decode;
mod failure;
pub(crate) mod inbox;
mod lanes;
pub(crate) mod runner;
mod settle;

use std::time::Duration;

use uuid::Uuid;

pub use crate::config::Ordering;
use crate::{broker::envelope::Event, config::ModuleSettings};

/// What a handler reports when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The job ran and reported failure (the article's `handle()` returning false): retried
    /// after the failure delay (60 s).
    #[error("job reported failure: {0}")]
    Failed(String),
    /// The job hit an error (the article's exception): retried after the error delay (120 s).
    #[error("job error: {0}")]
    Error(String),
    /// The input can never succeed (missing or malformed fields): parked at once, no retry.
    #[error("invalid job input: {0}")]
    Invalid(String),
    /// Not handled and not an attempt: the receiver asked for a pause (an HTTP 429 or 503
    /// with `Retry-After`). The message goes back to its queue with the same attempt number
    /// while the consumer waits (see [`Consumer::ready`]); after `max_attempts` deferrals in a
    /// row it counts as [`JobError::Failed`], so a receiver that only ever defers still ends
    /// in the dead-letter queue.
    #[error("job deferred: {0}")]
    Deferred(String),
}

/// One message handed to a handler.
#[derive(Debug, Clone)]
pub struct Job {
    /// The decoded warren message (event or command).
    pub event: Event,
    /// `message_id`, kept across retries.
    pub message_id: Uuid,
    /// This attempt, 1-based.
    pub attempt: u32,
    /// Attempts allowed before parking.
    pub max_attempts: u32,
    /// The queue it was consumed from.
    pub queue: String,
    /// The exchange it was first published to (`warren.events`, `warren.commands`; empty for
    /// a message published straight to a queue).
    pub exchange: String,
    /// The routing key it was first published with (the event or command name).
    pub routing_key: String,
    /// `correlation_id` (saga id or request id).
    pub correlation_id: Option<String>,
    /// `traceparent`.
    pub traceparent: Option<String>,
    /// `x-request-id`.
    pub request_id: Option<String>,
}

impl Job {
    /// Decodes the event's `data` into `T`; a mismatch is [`JobError::Invalid`].
    pub fn data<T: serde::de::DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_value(self.event.data.clone()).map_err(|e| {
            JobError::Invalid(format!("data does not fit {}: {e}", self.event.event_name))
        })
    }

    /// Whether this is the last attempt (a failure now parks the job).
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

impl crate::broker::envelope::Cause for Job {
    fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }

    fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }
}

/// A job module: what it consumes and how it handles one message.
///
/// Implement it in your own crate and hand it to [`App::consumer`](crate::App::consumer);
/// warren's own modules (e-mail, notifications, audit) are built the same way.
#[async_trait::async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// Module name (`email`), used in settings, metrics and the alert type (`email_failed`).
    fn name(&self) -> &str;

    /// The durable queue it consumes (`warren.email`).
    fn queue(&self) -> &str;

    /// The handler timeout when settings name none for this module.
    fn timeout(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// Whether the runner skips messages this module already handled (the inbox). True by
    /// default; turn off only for handlers that are idempotent by themselves.
    fn use_inbox(&self) -> bool {
        true
    }

    /// Limits of the consumer's own (concurrency, prefetch, timeout, attempts) over the
    /// `jobs` defaults; settings under `jobs.modules.<name>` still win. None by default.
    fn limits(&self) -> ModuleSettings {
        ModuleSettings::default()
    }

    /// Whether messages with the same aggregate id are handled one at a time in delivery
    /// order ([`Ordering::Aggregate`]): the runner puts them in per-aggregate lanes (up to
    /// `concurrency` lanes at once; a message without an aggregate id has a lane of its own),
    /// retries a failure in place after the tier's delay (`jobs.failure_delay_ms` or
    /// `jobs.error_delay_ms`) instead of through the tier, keeping its lane's later messages
    /// behind it, and parks it after `max_attempts` as usual. This orders the deliveries of
    /// one process; across processes the queue needs a single active consumer (an HTTP
    /// subscription's queue has one when ordered). [`Ordering::None`] by default.
    fn ordering(&self) -> Ordering {
        Ordering::None
    }

    /// Waits until the consumer takes `job`: at once by default. A consumer whose downstream
    /// is down (an open circuit breaker, a pause a receiver asked for) waits here; the runner
    /// calls it before each handler, outside the handler's timeout, so messages wait in the
    /// queue (the prefetched ones unacked) keeping their attempts.
    async fn ready(&self, _job: &Job) {}

    /// Handles one message.
    async fn handle(&self, job: &Job) -> Result<(), JobError>;

    /// Extra headers for a message `handle` just failed, put on it when it goes to a retry
    /// tier or is parked (an HTTP subscription's response status and body). Called once
    /// after each failed `handle`; none by default.
    fn failure_details(&self, _job: &Job) -> Vec<(String, String)> {
        Vec::new()
    }

    /// Called once when a job is parked for good (after its last attempt, or invalid): the
    /// article's `onFailed`. The runner has already written `failed_jobs` and will publish
    /// `job.failed`; use this for module-specific records.
    async fn on_failed(&self, _job: &Job, _error: &str) {}
}
