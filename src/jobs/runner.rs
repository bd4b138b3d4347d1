//! The one runner behind every [`Consumer`]: consume with manual ack, run the handler under a
//! timeout and a panic guard, and settle each message by publish-with-confirm, then ack.
//!
//! Broker options and why:
//! - `no_ack: false`: a message is removed only after it is settled (handled, or safely moved
//!   to a delay tier or a dead-letter queue), so a crash redelivers instead of losing.
//! - `basic_qos(prefetch)`: bounds the unacked messages one consumer holds; with `concurrency`
//!   handlers running at once, a prefetch a little above concurrency keeps them fed without
//!   starving other consumers of the queue (competing consumers).
//! - `exclusive: false`: any number of worker processes share a queue.
//! - a failed settle (the retry or dead-letter publish was not confirmed) nacks with
//!   `requeue: true`: the message is redelivered, and the quorum queue's `x-delivery-limit`
//!   parks it if that ever loops.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    BasicProperties,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    },
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Consumer, Job, JobError,
    decode::{Delivered, decode},
    failure::{db_text, failure_headers, long, payload_text},
    inbox::Inbox,
};
use crate::{
    broker::{
        Broker, BrokerError,
        envelope::Outgoing,
        names::{
            DEAD_EXCHANGE, ERROR_TIER, EVENTS_EXCHANGE, FAILURE_TIER, H_ATTEMPT, H_DEFERRALS,
            H_QUEUE, H_REASON, H_TRACEPARENT, REQUEUE_EXCHANGE, header_int, header_str,
        },
        publisher::Publisher,
        topology::Topology,
    },
    config::JobsSettings,
    outbox::{EventOutbox, OutboxError},
    store,
    telemetry::Metrics,
};

/// Errors that stop one consuming session (the runner reconnects after them).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunnerError {
    /// No channel.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// A channel operation failed.
    #[error("{doing} failed: {source}")]
    Amqp {
        /// What the runner was doing.
        doing: &'static str,
        /// lapin's error.
        source: lapin::Error,
    },
}

/// What every runner shares.
#[derive(Clone, Debug)]
pub(crate) struct RunnerContext {
    /// The broker.
    pub broker: Broker,
    /// A confirming publisher for retries, dead letters and alerts.
    pub publisher: Publisher,
    /// The database.
    pub db: sea_orm::DatabaseConnection,
    /// Metrics.
    pub metrics: Metrics,
    /// The topology, re-declared on every (re)connect.
    pub topology: Arc<Topology>,
    /// The events service `job.failed` goes through (confirmed, or stored for its relay).
    pub events: EventOutbox,
}

/// Effective limits for one module.
#[derive(Debug, Clone, Copy)]
struct Limits {
    prefetch: u16,
    concurrency: usize,
    timeout: Duration,
    max_attempts: u32,
    grace: Duration,
}

/// Runs one [`Consumer`] until shutdown, reconnecting with backoff when the broker goes away.
pub(crate) struct Runner {
    consumer: Arc<dyn Consumer>,
    ctx: RunnerContext,
    limits: Limits,
    parts: Arc<Parts>,
}

/// How many times in a row the message was deferred (`x-warren-deferrals`).
fn deferrals(delivery: &Delivery) -> u32 {
    header_int(&delivery.properties, H_DEFERRALS)
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

/// Lock stripes that keep two deliveries of one message id from running the inbox check and
/// the handler at the same time in one process (a publisher's retry can put both copies in
/// one prefetch window).
const MESSAGE_STRIPES: usize = 64;

/// Bound on each ack, nack, cancel and close. lapin can wait forever on a channel the server
/// closed cleanly (connection.close on `rabbitmqctl stop_app`; lapin#409): an unbounded ack
/// there held its message's stripe lock and handler permit for good, and the consumer stalled
/// (found by the chaos suite). A bounded one fails, and the broker redelivers.
const AMQP_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the consume loop checks that its channel and connection are still open: a
/// cleanly closed channel may never end the consumer stream (the same lapin behaviour).
const CHANNEL_CHECK: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("module", &self.consumer.name())
            .field("queue", &self.consumer.queue())
            .field("limits", &self.limits)
            .finish()
    }
}

enum Settled {
    Acked,
    Requeued,
}

impl Runner {
    /// A runner for `consumer`, with limits from `settings` (module overrides first).
    pub(crate) fn new(
        consumer: Arc<dyn Consumer>,
        ctx: RunnerContext,
        settings: &JobsSettings,
    ) -> Self {
        let own = consumer.limits();
        let set = settings
            .modules
            .get(consumer.name())
            .cloned()
            .unwrap_or_default();
        let m = crate::config::ModuleSettings {
            timeout_ms: set.timeout_ms.or(own.timeout_ms),
            prefetch: set.prefetch.or(own.prefetch),
            concurrency: set.concurrency.or(own.concurrency),
            max_attempts: set.max_attempts.or(own.max_attempts),
        };
        let timeout = m
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| consumer.timeout());
        let limits = Limits {
            prefetch: m.prefetch.unwrap_or(settings.prefetch),
            concurrency: m.concurrency.unwrap_or(settings.concurrency),
            timeout,
            max_attempts: m.max_attempts.unwrap_or(settings.max_attempts),
            grace: Duration::from_millis(settings.shutdown_grace_ms),
        };
        let inbox = consumer
            .use_inbox()
            .then(|| Inbox::spawn(ctx.db.clone(), consumer.name().to_owned()));
        let parts = Arc::new(Parts {
            consumer: consumer.clone(),
            ctx: ctx.clone(),
            limits,
            same_message: (0..MESSAGE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            inbox,
        });
        Self {
            consumer,
            ctx,
            limits,
            parts,
        }
    }

    /// Consumes until `shutdown`; never returns early on broker trouble (it reconnects).
    #[tracing::instrument(skip_all, fields(module = self.consumer.name(), queue = self.consumer.queue()))]
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        // Every queue's series exist from the start, at zero, so dashboards and alerts see
        // an idle queue as 0 rather than as no data.
        let queue = self.consumer.queue().to_owned();
        self.ctx.metrics.touch_queue(&queue);
        for action in [
            "consumed",
            "acked",
            "dead_lettered",
            "retried_60s",
            "retried_120s",
        ] {
            self.ctx.metrics.queue_message_touch(&queue, action);
        }
        let mut delays = crate::retry::reconnect();
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            match self.consume(&shutdown).await {
                Ok(true) => delays = crate::retry::reconnect(),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "Consumer lost its channel; reconnecting."),
            }
            if shutdown.is_cancelled() {
                break;
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(10));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!("Consumer stopped.");
    }

    /// One consuming session. Returns whether it got as far as consuming.
    // Long on purpose: one consuming session read top-down (channel, qos, consume, the
    // loop with its channel check and shutdown, the drain); split, its state would be passed around.
    async fn consume(&self, shutdown: &CancellationToken) -> Result<bool, RunnerError> {
        // Re-declare after a reconnect (a broker restart may have lost non-durable state, an
        // operator may have deleted a queue). Drift elsewhere in the topology (a 406 on some
        // other queue) must not stop this consumer: it is logged, and consuming goes on; a
        // missing queue then fails basic.consume and is retried.
        if let Err(e) = self.ctx.broker.declare(&self.ctx.topology).await {
            tracing::error!(error = %e, "Topology declaration failed; consuming anyway (run `warren topology verify`).");
        }
        let channel = self.ctx.broker.channel().await?;
        self.ctx.metrics.channels(1);
        let _open = ChannelGauge(self.ctx.metrics.clone());
        channel
            .basic_qos(self.limits.prefetch, BasicQosOptions::default())
            .await
            .map_err(|source| RunnerError::Amqp {
                doing: "basic.qos",
                source,
            })?;
        let tag = format!(
            "warren-{}-{}-{}",
            self.consumer.name(),
            std::process::id(),
            &Uuid::now_v7().simple().to_string()[24..]
        );
        let mut stream = channel
            .basic_consume(
                self.consumer.queue().into(),
                tag.as_str().into(),
                BasicConsumeOptions {
                    no_ack: false,
                    exclusive: false,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| RunnerError::Amqp {
                doing: "basic.consume",
                source,
            })?;
        tracing::info!(consumer_tag = %tag, prefetch = self.limits.prefetch, concurrency = self.limits.concurrency, "Consuming.");
        let permits = Arc::new(Semaphore::new(self.limits.concurrency));
        let in_flight = TaskTracker::new();
        let mut result = Ok(true);
        let mut check = tokio::time::interval(CHANNEL_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                next = stream.next() => next,
                _ = check.tick() => {
                    if channel.status().connected() {
                        continue;
                    }
                    tracing::warn!("Consumer channel closed without ending its stream; reconnecting.");
                    result = Ok(true);
                    break;
                }
            };
            match next {
                None => {
                    tracing::warn!("Consumer stream ended (queue deleted or channel closed).");
                    break;
                }
                Some(Err(source)) => {
                    result = Err(RunnerError::Amqp {
                        doing: "consuming",
                        source,
                    });
                    break;
                }
                Some(Ok(delivery)) => {
                    let permit = tokio::select! {
                        () = shutdown.cancelled() => break,
                        p = permits.clone().acquire_owned() => p,
                    };
                    let Ok(permit) = permit else {
                        break;
                    };
                    let this = self.parts.clone();
                    in_flight.spawn(async move {
                        this.process(delivery).await;
                        drop(permit);
                    });
                }
            }
        }
        // Stop taking new messages, let the in-flight ones finish (bounded), then close.
        let _ = tokio::time::timeout(
            AMQP_OP_TIMEOUT,
            channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()),
        )
        .await;
        in_flight.close();
        if tokio::time::timeout(self.limits.grace, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?self.limits.grace, "In-flight handlers did not finish in time; their messages will be redelivered.");
        }
        let _ = tokio::time::timeout(
            AMQP_OP_TIMEOUT,
            channel.close(200, "consumer stopping".into()),
        )
        .await;
        result
    }
}

struct Parts {
    consumer: Arc<dyn Consumer>,
    ctx: RunnerContext,
    limits: Limits,
    same_message: Vec<tokio::sync::Mutex<()>>,
    /// The batched inbox, when the consumer uses one.
    inbox: Option<Inbox>,
}

/// Takes a consuming channel off the `amqp_channels` gauge when the session ends.
struct ChannelGauge(Metrics);

impl Drop for ChannelGauge {
    fn drop(&mut self) {
        self.0.channels(-1);
    }
}

impl Parts {
    fn queue(&self) -> &str {
        self.consumer.queue()
    }

    /// Handles one delivery inside its own span (a child of the message's `traceparent` when
    /// spans are exported).
    async fn process(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "job",
            queue = self.consumer.queue(),
            message_id = tracing::field::Empty,
            attempt = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            request_id = tracing::field::Empty,
        );
        crate::telemetry::set_remote_parent(
            &span,
            header_str(&delivery.properties, H_TRACEPARENT).as_deref(),
        );
        self.process_in_span(delivery).instrument(span).await;
    }

    // Long on purpose: one match over every handler outcome, each arm a settle (ack, retry
    // tier, park); reading them side by side is the point.
    async fn process_in_span(&self, delivery: Delivery) {
        let started = Instant::now();
        self.ctx.metrics.queue_message(self.queue(), "consumed");
        let _in_flight = self.ctx.metrics.in_flight(self.queue());
        let delivered = Delivered {
            body: &delivery.data,
            properties: &delivery.properties,
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
        };
        let span = tracing::Span::current();
        let job = match decode(&delivered, self.queue(), self.limits.max_attempts) {
            Ok(job) => job,
            Err(e) => {
                span.record("attempt", e.attempt);
                self.ctx.metrics.job(self.queue(), "undecodable");
                self.park(
                    &delivery,
                    None,
                    e.attempt,
                    "undecodable",
                    &e.to_string(),
                    &[],
                )
                .await;
                return;
            }
        };
        let (attempt, message_id) = (job.attempt, job.message_id);
        span.record("attempt", attempt);
        span.record("message_id", tracing::field::display(message_id));
        if let Some(tp) = &job.traceparent {
            span.record("trace_id", tp.get(3..35).unwrap_or(""));
        }
        if let Some(rid) = &job.request_id {
            span.record("request_id", rid.as_str());
        }

        let inbox = self.inbox.as_ref();
        // Check, handle and mark one message id at a time (in this process); across
        // processes, a handler that must not repeat marks the inbox in its own transaction.
        let _same = if inbox.is_some() {
            let stripe =
                usize::try_from(message_id.as_u128() % MESSAGE_STRIPES as u128).unwrap_or(0);
            Some(self.same_message[stripe].lock().await)
        } else {
            None
        };
        if let Some(inbox) = inbox {
            match inbox.seen(message_id).await {
                Ok(true) => {
                    tracing::info!("Duplicate message skipped (already in the inbox).");
                    self.ctx.metrics.job(self.queue(), "duplicate");
                    self.ack(&delivery).await;
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Inbox unavailable; requeueing.");
                    self.requeue(&delivery).await;
                    return;
                }
            }
        }

        // A consumer whose downstream is down holds the message here, unacked, with its
        // attempts kept.
        self.consumer.ready(&job).await;
        let outcome = tokio::time::timeout(
            self.limits.timeout,
            AssertUnwindSafe(self.consumer.handle(&job)).catch_unwind(),
        )
        .await;
        let (result, status) = match outcome {
            Err(_) => (
                Err(JobError::Error(format!(
                    "handler timed out after {:?}",
                    self.limits.timeout
                ))),
                "timeout",
            ),
            Ok(Err(panic)) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_owned());
                (
                    Err(JobError::Error(format!("handler panicked: {msg}"))),
                    "panic",
                )
            }
            Ok(Ok(Ok(()))) => (Ok(()), "success"),
            Ok(Ok(Err(e))) => {
                let s = match e {
                    JobError::Failed(_) => "failed",
                    JobError::Error(_) => "error",
                    JobError::Invalid(_) => "invalid",
                    JobError::Deferred(_) => "deferred",
                };
                (Err(e), s)
            }
        };
        self.ctx
            .metrics
            .job_duration(self.queue(), started.elapsed().as_secs_f64());
        self.ctx.metrics.job(self.queue(), status);

        let details = if result.is_err() {
            self.consumer.failure_details(&job)
        } else {
            Vec::new()
        };
        match result {
            Ok(()) => {
                if let Some(inbox) = inbox
                    && let Err(e) = inbox.mark(message_id).await
                {
                    // The effect happened; without the inbox row a redelivery could repeat it,
                    // so the ack still goes out (the message is done) and the gap is logged.
                    tracing::error!(error = %e, "Could not record the message in the inbox.");
                }
                self.ack(&delivery).await;
            }
            Err(JobError::Deferred(reason)) if deferrals(&delivery) < self.limits.max_attempts => {
                tracing::info!(error = %reason, "Job deferred; back to its queue, same attempt.");
                self.defer(&delivery, attempt, &reason).await;
            }
            Err(JobError::Invalid(reason)) => {
                tracing::warn!(error = %reason, "Invalid job input; parking without retry.");
                self.consumer.on_failed(&job, &reason).await;
                self.park(&delivery, Some(&job), attempt, "invalid", &reason, &details)
                    .await;
            }
            Err(e) if attempt >= self.limits.max_attempts => {
                let error = e.to_string();
                tracing::warn!(error = %error, "Job failed on its last attempt; parking.");
                self.consumer.on_failed(&job, &error).await;
                self.park(
                    &delivery,
                    Some(&job),
                    attempt,
                    "exhausted",
                    &error,
                    &details,
                )
                .await;
            }
            Err(e) => {
                let tier = match e {
                    JobError::Failed(_) | JobError::Deferred(_) => FAILURE_TIER,
                    _ => ERROR_TIER,
                };
                tracing::info!(error = %e, tier, "Job will be retried.");
                self.retry(&delivery, attempt, tier, &e.to_string(), &details)
                    .await;
            }
        }
    }

    /// Puts the message back at the end of its queue (through `warren.requeue`, confirmed,
    /// then acked) with the same attempt and one more deferral.
    async fn defer(&self, delivery: &Delivery, attempt: u32, reason: &str) -> Settled {
        let mut headers = failure_headers(delivery, reason);
        headers.insert(
            H_DEFERRALS.into(),
            AMQPValue::LongLongInt(i64::from(deferrals(delivery)) + 1),
        );
        // decode() reads the attempt back from a delivery that came through warren.requeue.
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt)));
        let props = delivery.properties.clone().with_headers(headers);
        match self
            .ctx
            .publisher
            .publish(REQUEUE_EXCHANGE, self.queue(), &delivery.data, props)
            .await
        {
            Ok(()) => {
                self.ctx.metrics.queue_message(self.queue(), "deferred");
                self.ack(delivery).await
            }
            Err(e) => {
                tracing::error!(error = %e, "Could not put the deferred message back; requeueing.");
                self.requeue(delivery).await
            }
        }
    }

    /// Moves the message to a delay tier with attempt+1, confirmed, then acks.
    async fn retry(
        &self,
        delivery: &Delivery,
        attempt: u32,
        tier: &str,
        error: &str,
        details: &[(String, String)],
    ) -> Settled {
        let mut headers = failure_headers(delivery, error);
        for (key, value) in details {
            headers.insert(key.as_str().into(), long(value));
        }
        // Deferrals count in a row: an attempt spent starts them again.
        if headers.inner().contains_key(H_DEFERRALS) {
            let mut inner = headers.inner().clone();
            inner.remove(H_DEFERRALS);
            headers = FieldTable::from(inner);
        }
        headers.insert(
            H_ATTEMPT.into(),
            AMQPValue::LongLongInt(i64::from(attempt) + 1),
        );
        let props = delivery.properties.clone().with_headers(headers);
        // Routing key = the queue: when the tier's TTL expires, warren.requeue routes it back
        // to exactly this queue (not to every queue bound to the original key).
        match self
            .ctx
            .publisher
            .publish(tier, self.queue(), &delivery.data, props)
            .await
        {
            Ok(()) => {
                let action = if tier == FAILURE_TIER {
                    "retried_60s"
                } else {
                    "retried_120s"
                };
                self.ctx.metrics.job(self.queue(), action);
                self.ctx.metrics.queue_message(self.queue(), action);
                self.ack(delivery).await
            }
            Err(e) => {
                tracing::error!(error = %e, tier, "Could not move the message to its delay tier; requeueing.");
                self.requeue(delivery).await
            }
        }
    }

    /// Parks the message in `Q.dead` (confirmed), records `failed_jobs`, publishes
    /// `job.failed`, then acks.
    async fn park(
        &self,
        delivery: &Delivery,
        job: Option<&Job>,
        attempt: u32,
        reason: &str,
        error: &str,
        details: &[(String, String)],
    ) -> Settled {
        let mut headers = failure_headers(delivery, error);
        for (key, value) in details {
            headers.insert(key.as_str().into(), long(value));
        }
        headers.insert(H_REASON.into(), long(reason));
        headers.insert(H_QUEUE.into(), long(self.queue()));
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt)));
        let props: BasicProperties = delivery.properties.clone().with_headers(headers);
        if let Err(e) = self
            .ctx
            .publisher
            .publish(DEAD_EXCHANGE, self.queue(), &delivery.data, props)
            .await
        {
            tracing::error!(error = %e, "Could not park the message; requeueing.");
            return self.requeue(delivery).await;
        }
        self.ctx.metrics.job(self.queue(), "dead_lettered");
        self.ctx
            .metrics
            .queue_message(self.queue(), "dead_lettered");
        let message_id = job.map(|j| j.message_id).or_else(|| {
            delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|m| m.as_str().parse().ok())
        });
        let job_name = job
            .map(|j| j.event.event_name.as_str())
            .or_else(|| delivery.properties.kind().as_ref().map(|k| k.as_str()))
            .map(db_text);
        let row = store::NewFailedJob {
            queue: self.queue().to_owned(),
            message_id,
            job_name,
            attempts: attempt,
            error: db_text(error),
            reason: reason.to_owned(),
            payload: payload_text(&delivery.data),
        };
        if let Err(e) = store::insert_failed_job(&self.ctx.db, row).await {
            tracing::error!(error = %e, "Parked the message but could not write its failed_jobs row.");
        }
        if let Err(e) = self.alert(job, message_id, attempt, reason, error).await {
            tracing::error!(error = %e, "Parked the message but could not publish job.failed.");
        }
        self.ack(delivery).await
    }

    /// The article's `sendAlert`: a `job.failed` event on `warren.events`, through the events
    /// service like any published event: confirmed, or stored in the events outbox for its
    /// relay when the broker cannot take it.
    async fn alert(
        &self,
        job: Option<&Job>,
        message_id: Option<Uuid>,
        attempts: u32,
        reason: &str,
        error: &str,
    ) -> Result<(), OutboxError> {
        let data = json!({
            "type": format!("{}_failed", self.consumer.name()),
            "queue": self.queue(),
            "job_id": message_id,
            "job_name": job.map(|j| j.event.event_name.clone()),
            "attempts": attempts,
            "reason": reason,
            "error": error,
            "data": job.map(|j| j.event.data.clone()),
        });
        let mut event = Outgoing::event("job.failed", message_id.map(|m| m.to_string()), data);
        if let Some(j) = job {
            event = event.caused_by(j);
        }
        self.ctx
            .events
            .send_outgoing(EVENTS_EXCHANGE, &event)
            .await
            .map(drop)
    }

    async fn ack(&self, delivery: &Delivery) -> Settled {
        match tokio::time::timeout(AMQP_OP_TIMEOUT, delivery.ack(BasicAckOptions::default())).await
        {
            Ok(Ok(_)) => self.ctx.metrics.queue_message(self.queue(), "acked"),
            // The channel is gone: the broker will redeliver; the inbox absorbs the repeat.
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Ack failed; the message will be redelivered.")
            }
            Err(_) => tracing::warn!(timeout = ?AMQP_OP_TIMEOUT,
                "Ack got no answer; the message will be redelivered."),
        }
        Settled::Acked
    }

    async fn requeue(&self, delivery: &Delivery) -> Settled {
        let nack = delivery.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        });
        match tokio::time::timeout(AMQP_OP_TIMEOUT, nack).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Nack failed; the message will be redelivered.")
            }
            Err(_) => tracing::warn!(timeout = ?AMQP_OP_TIMEOUT,
                "Nack got no answer; the message will be redelivered."),
        }
        self.ctx.metrics.queue_message(self.queue(), "requeued");
        Settled::Requeued
    }
}
