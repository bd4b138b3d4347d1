//! How the runner settles a message: the publish-with-confirm to a delay tier, back to its
//! queue or to its dead-letter queue, then the ack; or a nack that gives it back to the broker.
//! Every transfer is confirmed before the ack: a crash in between duplicates, never loses.

use lapin::{
    BasicProperties,
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Job,
    failure::{db_text, failure_headers, long, payload_text},
    runner::{AMQP_OP_TIMEOUT, Parts, Settled, deferrals},
};
use crate::{
    broker::{
        envelope::Outgoing,
        names::{
            DEAD_EXCHANGE, EVENTS_EXCHANGE, FAILURE_TIER, H_ATTEMPT, H_DEFERRALS, H_QUEUE,
            H_REASON, REQUEUE_EXCHANGE,
        },
    },
    outbox::OutboxError,
    store,
};

/// How long a lane waits before it tries to park its message again when the dead-letter
/// publish was not confirmed (ordered consumers only: a nack would let the lane's later
/// messages overtake it).
const PARK_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// What a parked message carries and its `failed_jobs` row says.
pub(super) struct Parking<'a> {
    /// The decoded job (none for a body that is not a warren message).
    pub job: Option<&'a Job>,
    /// The attempt it was parked on.
    pub attempt: u32,
    /// `undecodable`, `invalid`, `exhausted`.
    pub reason: &'a str,
    /// The last error.
    pub error: &'a str,
    /// The consumer's failure details (headers of their own).
    pub details: &'a [(String, String)],
}

impl Parts {
    /// Puts the message back at the end of its queue (through `warren.requeue`, confirmed,
    /// then acked) with the same attempt and one more deferral.
    pub(super) async fn defer(&self, delivery: &Delivery, attempt: u32, reason: &str) -> Settled {
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
    pub(super) async fn retry(
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
    /// `job.failed`, then acks. When the dead-letter publish is not confirmed the message is
    /// requeued; in a lane (`hold`: the session's token) it is tried again until the session
    /// ends instead, so that the lane's later messages stay behind it.
    pub(super) async fn park(
        &self,
        delivery: &Delivery,
        p: Parking<'_>,
        hold: Option<&CancellationToken>,
    ) -> Settled {
        let Parking {
            job,
            attempt,
            reason,
            error,
            details,
        } = p;
        let mut headers = failure_headers(delivery, error);
        for (key, value) in details {
            headers.insert(key.as_str().into(), long(value));
        }
        headers.insert(H_REASON.into(), long(reason));
        headers.insert(H_QUEUE.into(), long(self.queue()));
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(i64::from(attempt)));
        let props: BasicProperties = delivery.properties.clone().with_headers(headers);
        while let Err(e) = self
            .ctx
            .publisher
            .publish(DEAD_EXCHANGE, self.queue(), &delivery.data, props.clone())
            .await
        {
            let Some(session) = hold else {
                tracing::error!(error = %e, "Could not park the message; requeueing.");
                return self.requeue(delivery).await;
            };
            tracing::error!(error = %e, "Could not park the message; its lane waits and tries again.");
            if !pause(session, PARK_RETRY).await {
                // Left unacked: the channel's close gives it back, ahead of its lane's rest.
                return Settled::Requeued;
            }
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

    pub(super) async fn ack(&self, delivery: &Delivery) -> Settled {
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

    pub(super) async fn requeue(&self, delivery: &Delivery) -> Settled {
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

/// Waits `delay` unless `session` ends first; whether the wait was whole.
pub(super) async fn pause(session: &CancellationToken, delay: std::time::Duration) -> bool {
    tokio::select! {
        () = session.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}
