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
//!   parks it if that ever loops (in a lane, see `lanes`, it is tried again in place).
//!
//! Settling (tiers, dead letters, acks) is in `settle`; per-aggregate lanes in `lanes`.

use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::{FutureExt, StreamExt};
use lapin::{
    message::Delivery,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::FieldTable,
};
use tokio::sync::{MutexGuard, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use super::{
    Consumer, Job, JobError,
    decode::{Delivered, decode},
    inbox::Inbox,
    lanes::{Lanes, own_queue},
    settle::{Parking, pause},
};
use crate::{
    broker::{
        Broker, BrokerError,
        names::{ERROR_TIER, FAILURE_TIER, H_DEFERRALS, H_TRACEPARENT, header_int, header_str},
        publisher::Publisher,
        topology::Topology,
    },
    config::JobsSettings,
    outbox::EventOutbox,
    telemetry::Metrics,
};

/// Errors that stop one consuming session (the runner reconnects after them).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunnerError {
    /// No channel.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// An ordered consumer's queue cannot be declared as its settings ask (it exists with
    /// other arguments, e.g. without its single active consumer).
    #[error("its queue is not as an ordered consumer needs it: {0}")]
    Ordered(BrokerError),
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
pub(super) struct Limits {
    prefetch: u16,
    concurrency: usize,
    timeout: Duration,
    pub(super) max_attempts: u32,
    grace: Duration,
    /// The waits of a retry in place (lanes): the failure and error tiers' delays.
    pub(super) failure_delay: Duration,
    pub(super) error_delay: Duration,
}

/// Runs one [`Consumer`] until shutdown, reconnecting with backoff when the broker goes away.
pub(crate) struct Runner {
    consumer: Arc<dyn Consumer>,
    ctx: RunnerContext,
    limits: Limits,
    parts: Arc<Parts>,
}

/// How many times in a row the message was deferred (`x-warren-deferrals`).
pub(super) fn deferrals(delivery: &Delivery) -> u32 {
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
pub(super) const AMQP_OP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the consume loop checks that its channel and connection are still open: a
/// cleanly closed channel may never end the consumer stream (the same lapin behaviour).
const CHANNEL_CHECK: Duration = Duration::from_secs(1);

/// How long a lane waits before it asks an unreadable inbox again.
const INBOX_RETRY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("module", &self.consumer.name())
            .field("queue", &self.consumer.queue())
            .field("limits", &self.limits)
            .finish()
    }
}

/// How a settle ended.
pub(super) enum Settled {
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
            failure_delay: Duration::from_millis(settings.failure_delay_ms),
            error_delay: Duration::from_millis(settings.error_delay_ms),
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
                Err(e @ RunnerError::Ordered(_)) => tracing::error!(error = %e,
                    "An ordered consumer does not consume from this queue as it is; trying again later."),
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

    /// An ordered consumer's own queue must be as declared (an HTTP subscription's with a
    /// single active consumer), or several processes would deliver one aggregate at once:
    /// declared alone, it fails when the queue exists with other arguments.
    async fn check_own_queue(&self) -> Result<(), RunnerError> {
        let Some(own) = own_queue(&self.ctx.topology, self.consumer.queue()) else {
            return Ok(());
        };
        self.ctx
            .broker
            .declare(&own)
            .await
            .map_err(RunnerError::Ordered)
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
        let ordered = self.parts.ordered();
        if ordered {
            self.check_own_queue().await?;
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
        tracing::info!(consumer_tag = %tag, prefetch = self.limits.prefetch, concurrency = self.limits.concurrency, ordered, "Consuming.");
        let permits = Arc::new(Semaphore::new(self.limits.concurrency));
        let in_flight = TaskTracker::new();
        // Lanes start no message and end their waits once the session ends.
        let session = shutdown.child_token();
        let lanes = ordered.then(|| Arc::new(Lanes::default()));
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
                    if let Some(lanes) = &lanes {
                        self.parts
                            .dispatch(lanes, delivery, &permits, &in_flight, &session);
                        continue;
                    }
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
        session.cancel();
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

/// What every handler task of a runner shares.
pub(super) struct Parts {
    pub(super) consumer: Arc<dyn Consumer>,
    pub(super) ctx: RunnerContext,
    pub(super) limits: Limits,
    same_message: Vec<tokio::sync::Mutex<()>>,
    /// The batched inbox, when the consumer uses one.
    pub(super) inbox: Option<Inbox>,
}

/// Takes a consuming channel off the `amqp_channels` gauge when the session ends.
struct ChannelGauge(Metrics);

impl Drop for ChannelGauge {
    fn drop(&mut self) {
        self.0.channels(-1);
    }
}

impl Parts {
    pub(super) fn queue(&self) -> &str {
        self.consumer.queue()
    }

    /// The span one delivery is handled in (a child of the message's `traceparent` when
    /// spans are exported).
    pub(super) fn span(&self, delivery: &Delivery) -> tracing::Span {
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
        span
    }

    /// Handles one delivery inside its own span: admitted, one attempt, settled.
    async fn process(&self, delivery: Delivery) {
        let span = self.span(&delivery);
        async {
            let started = Instant::now();
            let _in_flight = self.ctx.metrics.in_flight(self.queue());
            let Some((job, _same)) = self.admit(&delivery, None).await else {
                return;
            };
            let (result, details) = self.attempt(&job, started).await;
            self.settle(&delivery, &job, result, &details, None).await;
        }
        .instrument(span)
        .await;
    }

    /// Decodes the delivery and checks the inbox: the job to run (with the lock of its
    /// message id while the inbox is on), or `None` when nothing more is to be done (parked
    /// undecodable, a duplicate acked, or requeued because the inbox cannot be read). In a
    /// lane (`hold`), an unreadable inbox is asked again until the session ends instead of
    /// requeueing (a requeued message would come back behind its lane's later ones).
    pub(super) async fn admit(
        &self,
        delivery: &Delivery,
        hold: Option<&CancellationToken>,
    ) -> Option<(Job, Option<MutexGuard<'_, ()>>)> {
        self.ctx.metrics.queue_message(self.queue(), "consumed");
        let span = tracing::Span::current();
        let job = match decode(&delivered(delivery), self.queue(), self.limits.max_attempts) {
            Ok(job) => job,
            Err(e) => {
                span.record("attempt", e.attempt);
                self.ctx.metrics.job(self.queue(), "undecodable");
                let parking = Parking {
                    job: None,
                    attempt: e.attempt,
                    reason: "undecodable",
                    error: &e.to_string(),
                    details: &[],
                };
                self.park(delivery, parking, hold).await;
                return None;
            }
        };
        let message_id = job.message_id;
        span.record("attempt", job.attempt);
        span.record("message_id", tracing::field::display(message_id));
        if let Some(tp) = &job.traceparent {
            span.record("trace_id", tp.get(3..35).unwrap_or(""));
        }
        if let Some(rid) = &job.request_id {
            span.record("request_id", rid.as_str());
        }
        let Some(inbox) = self.inbox.as_ref() else {
            return Some((job, None));
        };
        // Check, handle and mark one message id at a time (in this process); across
        // processes, a handler that must not repeat marks the inbox in its own transaction.
        let stripe = usize::try_from(message_id.as_u128() % MESSAGE_STRIPES as u128).unwrap_or(0);
        let same = self.same_message[stripe].lock().await;
        loop {
            match inbox.seen(message_id).await {
                Ok(true) => {
                    tracing::info!("Duplicate message skipped (already in the inbox).");
                    self.ctx.metrics.job(self.queue(), "duplicate");
                    self.ack(delivery).await;
                    return None;
                }
                Ok(false) => return Some((job, Some(same))),
                Err(e) => {
                    let Some(session) = hold else {
                        tracing::warn!(error = %e, "Inbox unavailable; requeueing.");
                        self.requeue(delivery).await;
                        return None;
                    };
                    tracing::warn!(error = %e, "Inbox unavailable; the lane waits and asks again.");
                    if !pause(session, INBOX_RETRY).await {
                        return None;
                    }
                }
            }
        }
    }

    /// One attempt: waits until the consumer is ready (outside the timeout), runs the handler
    /// under the timeout and the panic guard, counts it, and takes the consumer's failure
    /// details when it failed.
    pub(super) async fn attempt(
        &self,
        job: &Job,
        started: Instant,
    ) -> (Result<(), JobError>, Vec<(String, String)>) {
        // A consumer whose downstream is down holds the message here, unacked, with its
        // attempts kept.
        self.consumer.ready(job).await;
        let outcome = tokio::time::timeout(
            self.limits.timeout,
            AssertUnwindSafe(self.consumer.handle(job)).catch_unwind(),
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
            self.consumer.failure_details(job)
        } else {
            Vec::new()
        };
        (result, details)
    }

    /// Settles a message after its handler's last word: ack, back to its queue (deferred),
    /// a delay tier, or parked. A lane (`hold`) hands over only a success, a refusal or a
    /// last attempt (it retries in place), and parks without ever requeueing.
    pub(super) async fn settle(
        &self,
        delivery: &Delivery,
        job: &Job,
        result: Result<(), JobError>,
        details: &[(String, String)],
        hold: Option<&CancellationToken>,
    ) {
        let attempt = job.attempt;
        let parking = |reason, error| Parking {
            job: Some(job),
            attempt,
            reason,
            error,
            details,
        };
        match result {
            Ok(()) => {
                if let Some(inbox) = self.inbox.as_ref()
                    && let Err(e) = inbox.mark(job.message_id).await
                {
                    // The effect happened; without the inbox row a redelivery could repeat it,
                    // so the ack still goes out (the message is done) and the gap is logged.
                    tracing::error!(error = %e, "Could not record the message in the inbox.");
                }
                self.ack(delivery).await;
            }
            Err(JobError::Deferred(reason)) if deferrals(delivery) < self.limits.max_attempts => {
                tracing::info!(error = %reason, "Job deferred; back to its queue, same attempt.");
                self.defer(delivery, attempt, &reason).await;
            }
            Err(JobError::Invalid(reason)) => {
                tracing::warn!(error = %reason, "Invalid job input; parking without retry.");
                self.consumer.on_failed(job, &reason).await;
                self.park(delivery, parking("invalid", &reason), hold).await;
            }
            Err(e) if attempt >= self.limits.max_attempts => {
                let error = e.to_string();
                tracing::warn!(error = %error, "Job failed on its last attempt; parking.");
                self.consumer.on_failed(job, &error).await;
                self.park(delivery, parking("exhausted", &error), hold)
                    .await;
            }
            Err(e) => {
                let tier = match e {
                    JobError::Failed(_) | JobError::Deferred(_) => FAILURE_TIER,
                    _ => ERROR_TIER,
                };
                tracing::info!(error = %e, tier, "Job will be retried.");
                self.retry(delivery, attempt, tier, &e.to_string(), details)
                    .await;
            }
        }
    }
}

/// The parts of a delivery [`decode`] reads.
fn delivered(delivery: &Delivery) -> Delivered<'_> {
    Delivered {
        body: &delivery.data,
        properties: &delivery.properties,
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
    }
}
