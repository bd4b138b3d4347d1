//! [`SubscriptionConsumer`]: the job module that delivers a subscription's messages. One
//! POST per attempt with the process's shared, pooled HTTP client: no redirects followed, the
//! subscription's timeout over the whole exchange (connect to the last byte read), at most
//! `max_response_bytes` of a response read (the rest is dropped with the connection). The
//! runner does the rest (ack, tiers, dead letters, `failed_jobs`, the inbox). A saga command
//! is answered for its saga too ([`super::saga_reply`]), when the consumer has the saga's
//! reply path ([`SubscriptionConsumer::replying_to_sagas`]).

use std::time::{Duration, Instant, SystemTime};

use reqwest::{Client, Url};

use super::{
    breaker::{Breaker, Pass, Report},
    cloudevent::{Binding, Request},
    outcome::{Outcome, Verdict},
    saga_reply::SagaReplies,
    status::{Board, Status},
};
use crate::{
    config::{ModuleSettings, SubscriptionSettings},
    jobs::{Consumer, Job, JobError, Ordering},
    telemetry::Metrics,
};

/// Header on a failed delivery's message: what the answer meant (`failed`, `error`,
/// `invalid`, `timeout`, `connect`, `transport`).
pub(crate) const H_HTTP_OUTCOME: &str = "x-warren-http-outcome";
/// Header on a failed delivery's message: the subscriber's response status.
pub(crate) const H_HTTP_STATUS: &str = "x-warren-http-status";
/// Header on a failed delivery's message: the first `max_response_bytes` of its body.
pub(crate) const H_HTTP_BODY: &str = "x-warren-http-body";

/// How much longer than the delivery timeout the runner waits for the handler, so that the
/// HTTP client's own timeout (an `error` with its reason) always fires first.
pub(crate) const HANDLER_MARGIN: Duration = Duration::from_secs(2);

/// Delivers one subscription's messages over HTTP.
pub(crate) struct SubscriptionConsumer {
    module: String,
    inbox: bool,
    limits: ModuleSettings,
    ordering: Ordering,
    /// Until when the receiver asked to be left alone (a 429 or 503 with `Retry-After`).
    paused_until: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The circuit breaker of this subscription in this process.
    breaker: Breaker,
    /// What this process reports about the subscription, and an operator's pause.
    status: std::sync::Arc<Status>,
    /// The response of each message whose delivery just failed, until the runner takes it
    /// for the message's headers ([`Consumer::failure_details`]).
    failures: std::sync::Mutex<std::collections::HashMap<uuid::Uuid, Vec<(String, String)>>>,
    queue: String,
    url: Url,
    timeout: Duration,
    max_response_bytes: usize,
    max_retry_after: Duration,
    binding: Binding,
    client: Client,
    metrics: Metrics,
    /// The saga reply path, when this consumer answers saga commands for their sagas.
    saga: Option<SagaReplies>,
}

impl std::fmt::Debug for SubscriptionConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the URL's query (it may carry a token) nor the headers' values.
        f.debug_struct("SubscriptionConsumer")
            .field("subscription", &self.binding.subscription)
            .field("queue", &self.queue)
            .field("host", &self.url.host_str())
            .field("path", &self.url.path())
            .field("mode", &self.binding.mode)
            .field("keys", &self.binding.keys)
            .finish_non_exhaustive()
    }
}

impl SubscriptionConsumer {
    /// The consumer of `sub` (validated settings), sending with `client` (share one per
    /// process: [`super::http_client`]) from the broker vhost `vhost` (for `ce-source`).
    pub(crate) fn new(
        sub: &SubscriptionSettings,
        vhost: &str,
        client: Client,
        metrics: Metrics,
    ) -> Result<Self, super::SubscriptionError> {
        let invalid = |reason: String| super::SubscriptionError::Invalid {
            subscription: sub.name.clone(),
            reason,
        };
        let url = Url::parse(&sub.url).map_err(|e| invalid(format!("url: {e}")))?;
        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &sub.headers {
            let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(format!("header {name:?}: {e}")))?;
            let mut value = reqwest::header::HeaderValue::from_str(value.expose())
                .map_err(|_| invalid(format!("the value of header {name:?} is not valid")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let keys = sub
            .signing_keys()
            .map_err(|e| invalid(format!("secret {e}")))?;
        // Closed from the start: the series exists before any state change.
        metrics.subscription_breaker(&sub.name, 0);
        let handler_ms = sub
            .timeout_ms
            .saturating_add(u64::try_from(HANDLER_MARGIN.as_millis()).unwrap_or(u64::MAX));
        // Twice the deliveries in flight: the next ones are at hand when one ends. Ordered,
        // eight times: a held lane pins its aggregate's waiting messages in the window, and
        // the other aggregates need room to flow around it (the queue's standbys take
        // nothing, so a big window starves no one).
        let window = match sub.ordering {
            Ordering::Aggregate => 8,
            Ordering::None => 2,
        };
        Ok(Self {
            module: super::module_name(sub),
            inbox: sub.inbox,
            limits: ModuleSettings {
                timeout_ms: Some(handler_ms),
                prefetch: Some(
                    u16::try_from(sub.concurrency.saturating_mul(window)).unwrap_or(u16::MAX),
                ),
                concurrency: Some(sub.concurrency),
                max_attempts: sub.max_attempts,
            },
            ordering: sub.ordering,
            paused_until: std::sync::Mutex::new(None),
            // A trial the runner cut off (its handler timeout) counts as failed after it.
            breaker: Breaker::new(sub.breaker.clone(), sub.timeout() + HANDLER_MARGIN * 2),
            status: Status::standalone(&sub.name),
            failures: std::sync::Mutex::default(),
            queue: sub.queue(),
            url,
            timeout: sub.timeout(),
            max_response_bytes: sub.max_response_bytes,
            max_retry_after: Duration::from_secs(sub.max_retry_after_secs),
            binding: Binding {
                subscription: sub.name.clone(),
                mode: sub.content_mode,
                vhost: vhost.to_owned(),
                events: sub.events.clone(),
                commands: sub.commands.clone(),
                headers,
                keys: super::signature::SigningKeys::new(keys),
            },
            client,
            metrics,
            saga: None,
        })
    }

    /// Answers the saga commands this subscription receives for their sagas: recorded in
    /// `db` (`saga_commands`), replied through `publisher` ([`super::saga_reply`]).
    pub(crate) fn replying_to_sagas(
        mut self,
        db: sea_orm::DatabaseConnection,
        publisher: crate::broker::publisher::Publisher,
    ) -> Self {
        self.saga = Some(SagaReplies::new(db, publisher, self.module.clone()));
        self
    }

    /// Reports this subscription's state through `board` and obeys the operators' pauses it
    /// reads (without a board, it reports nothing and is never paused).
    pub(crate) fn reporting_to(mut self, board: &Board) -> Self {
        self.status = board.status(self.subscription());
        self
    }

    /// The subscription's name (settings), as metrics and `warren-subscription` say it.
    pub(crate) fn subscription(&self) -> &str {
        &self.binding.subscription
    }

    /// The request this consumer sends for `job` now (what [`Self::deliver`] POSTs).
    pub(crate) fn request(&self, job: &Job) -> Request {
        let now = chrono::Utc::now().timestamp();
        let traceparent = crate::telemetry::outgoing(job.traceparent.as_deref()).header();
        self.binding.request(job, now, Some(traceparent))
    }

    /// POSTs `job` once and classifies the answer; counts it in
    /// `subscription_deliveries_total` and the duration histogram. The outcome carries the
    /// response's status, its first bytes and a bounded `Retry-After`.
    #[cfg(test)]
    pub(crate) async fn deliver(&self, job: &Job) -> Outcome {
        self.exchange(job, Vec::new()).await.0
    }

    /// [`Self::deliver`] with `extra` headers; also returns the body's first bytes as read.
    async fn exchange(&self, job: &Job, extra: Vec<(&'static str, String)>) -> (Outcome, Vec<u8>) {
        let Request { mut headers, body } = self.request(job);
        for (name, value) in extra {
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&value) {
                headers.insert(reqwest::header::HeaderName::from_static(name), v);
            }
        }
        let started = Instant::now();
        let sent = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(body)
            .timeout(self.timeout)
            .send()
            .await;
        let mut kept = Vec::new();
        let outcome = match sent {
            Ok(mut response) => {
                let status = response.status();
                let head = response.headers().clone();
                // Read up to the bound, never more: a huge or endless body costs nothing
                // beyond it. A body that breaks off after the status does not change what
                // the status said.
                while kept.len() < self.max_response_bytes {
                    match response.chunk().await {
                        Ok(Some(chunk)) => {
                            let room = self.max_response_bytes - kept.len();
                            kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
                Outcome::from_response(
                    status,
                    &head,
                    &kept,
                    self.max_retry_after,
                    SystemTime::now(),
                )
            }
            Err(e) => Outcome::from_transport(&e, self.timeout),
        };
        let seconds = started.elapsed().as_secs_f64();
        self.metrics
            .subscription_delivery(self.subscription(), outcome.kind, seconds);
        match outcome.kind {
            "delivered" => tracing::debug!(status = ?outcome.status, seconds, "Delivered."),
            _ => tracing::warn!(
                status = ?outcome.status,
                outcome = outcome.kind,
                reason = %outcome.reason,
                seconds,
                "Delivery did not succeed."
            ),
        }
        (outcome, kept)
    }

    /// Reports a delivery's outcome to the breaker and the status board, and keeps a failed
    /// one's response for the message's headers. `answered`: a saga step's refusal (409 or
    /// 422), which is the participant's answer, not a failure.
    fn observe(&self, job: &Job, outcome: &Outcome, answered: bool) {
        // A refusal, or a pause asked for, is an answer: the subscriber is up.
        let report = match (outcome.verdict, outcome.retry_after) {
            _ if answered => Report::Up,
            (Verdict::Delivered | Verdict::Invalid, _) | (_, Some(_)) => Report::Up,
            (Verdict::Failed | Verdict::Error, None) => Report::Down,
        };
        if let Some(change) = self.breaker.report(job.message_id, report) {
            tracing::warn!(breaker = change, "Circuit breaker {change}.");
            self.metrics
                .subscription_breaker(self.subscription(), self.breaker.gauge());
            self.status.breaker(self.breaker.view());
        }
        if answered || outcome.verdict == Verdict::Delivered {
            self.status.delivered();
            return;
        }
        self.status
            .failed(outcome.clone().into_text(), report == Report::Down);
        let mut details = vec![(H_HTTP_OUTCOME.to_owned(), outcome.kind.to_owned())];
        if let Some(status) = outcome.status {
            details.push((H_HTTP_STATUS.to_owned(), status.to_string()));
        }
        if !outcome.body.is_empty() {
            details.push((H_HTTP_BODY.to_owned(), outcome.body.clone()));
        }
        let mut failures = self
            .failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Bounded: an entry the runner never took (its handler cut off) goes with the rest.
        if failures.len() >= 10_000 {
            failures.clear();
        }
        failures.insert(job.message_id, details);
    }
}

#[async_trait::async_trait]
impl Consumer for SubscriptionConsumer {
    fn name(&self) -> &str {
        &self.module
    }

    fn queue(&self) -> &str {
        &self.queue
    }

    fn timeout(&self) -> Duration {
        self.timeout + HANDLER_MARGIN
    }

    fn use_inbox(&self) -> bool {
        self.inbox
    }

    fn limits(&self) -> ModuleSettings {
        self.limits.clone()
    }

    fn ordering(&self) -> Ordering {
        self.ordering
    }

    /// A saga command parked for good: its saga gets the give-up reply (the step fails).
    async fn on_failed(&self, job: &Job, error: &str) {
        if let Some(replies) = &self.saga
            && let Some(cmd) = replies.command(job)
        {
            replies.give_up(job, &cmd, error).await;
        }
    }

    fn failure_details(&self, job: &Job) -> Vec<(String, String)> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&job.message_id)
            .unwrap_or_default()
    }

    /// Waits while an operator's pause holds the subscription, then out a pause the receiver
    /// asked for, then for the breaker: at once while it is closed; when open, until its
    /// cooldown ends and this delivery is the one trial.
    async fn ready(&self, job: &Job) {
        loop {
            self.status.unpaused().await;
            let until = *self
                .paused_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            match until {
                Some(t) if t > tokio::time::Instant::now() => tokio::time::sleep_until(t).await,
                // Paused again while it waited out the receiver's pause: wait again.
                _ if self.status.held() => {}
                _ => break,
            }
        }
        // The gauge moves only when the state does, not on every delivery.
        if self.breaker.ready(job.message_id).await == Pass::Trial {
            self.metrics
                .subscription_breaker(self.subscription(), self.breaker.gauge());
            self.status.breaker(self.breaker.view());
        }
    }

    /// One delivery. A 429 or 503 with `Retry-After` pauses the subscription for that long
    /// (bounded by `max_retry_after_secs`) and defers the message: it waits in the queue
    /// without spending an attempt. A saga command's final answer (2xx, 409, 422) is recorded
    /// and replied to its saga first; one already recorded is replied without a delivery.
    #[tracing::instrument(skip_all, fields(subscription = %self.binding.subscription, job_id = %job.message_id, attempt = job.attempt))]
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        let saga = self
            .saga
            .as_ref()
            .and_then(|r| r.command(job).map(|c| (r, c)));
        if let Some((replies, cmd)) = &saga
            && let Some(done) = replies.recorded(cmd).await?
        {
            tracing::info!(key = %cmd.idempotency_key, "Saga step already answered: replying again.");
            return replies.reply(job, cmd, done).await;
        }
        let extra = saga
            .as_ref()
            .map(|(_, c)| super::saga_reply::headers(c))
            .unwrap_or_default();
        let (outcome, body) = self.exchange(job, extra).await;
        let answer = saga.as_ref().and_then(|_| {
            super::saga_reply::answer(outcome.status, &body, &outcome.clone().into_text())
        });
        self.observe(job, &outcome, answer.as_ref().is_some_and(|a| !a.ok));
        if let (Some((replies, cmd)), Some(answer)) = (&saga, answer) {
            return replies.settle(job, cmd, answer).await;
        }
        if let Some(after) = outcome.retry_after {
            let until = tokio::time::Instant::now() + after;
            let mut paused = self
                .paused_until
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if paused.is_none_or(|t| t < until) {
                *paused = Some(until);
            }
            drop(paused);
            self.status.retry_after(after);
            tracing::info!(
                pause_ms = after.as_millis(),
                "The receiver asked for a pause."
            );
            return Err(JobError::Deferred(outcome.into_text()));
        }
        outcome.into_result()
    }
}
