//! Per-aggregate lanes, for a consumer that asks for order ([`Consumer::ordering`]).
//!
//! The consume loop hands each delivery to the lane of its aggregate id (a message without
//! one, or one that does not decode, gets a lane of its own: unordered). A lane handles one
//! message at a time, in delivery order; up to `concurrency` lanes run at once (a lane holds
//! a handler permit while it has messages). Acks go out per message, so they are out of order
//! across lanes (individual acks, never `multiple`).
//!
//! A failing message is not sent to a delay tier (its lane's later messages would overtake
//! it): it is retried in place after the tier's delay, up to `max_attempts`, then parked as
//! usual and the lane moves on. A deferral (a `Retry-After`) waits in place too, for the
//! consumer's pause ([`Consumer::ready`]). Nothing in a lane is ever requeued with a nack
//! while its successors are held (they would go first); when the session ends, whatever a
//! lane still holds is left unacked and the channel's close gives it back to the queue.
//!
//! [`Consumer::ordering`]: super::Consumer::ordering
//! [`Consumer::ready`]: super::Consumer::ready

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Instant,
};

use lapin::message::Delivery;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{
    Job, JobError, Ordering,
    decode::{Delivered, decode},
    runner::Parts,
    settle::pause,
};
use crate::broker::topology::Topology;

/// The busy lanes of one consuming session: for each key, the deliveries waiting behind the
/// one its task is handling. A key is present exactly while its lane's task runs.
#[derive(Debug)]
pub(super) struct Lanes<T = Delivery> {
    waiting: Mutex<HashMap<String, VecDeque<T>>>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Lanes<T> {
    /// Puts `item` at the end of lane `key`. Returns it when the lane was idle: the caller
    /// then starts the lane's task with it; `None` when it waits behind the lane's others.
    pub(super) fn push(&self, key: &str, item: T) -> Option<T> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        match waiting.get_mut(key) {
            Some(lane) => {
                lane.push_back(item);
                None
            }
            None => {
                waiting.insert(key.to_owned(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The next item of lane `key`; `None` ends the lane (it is idle again, and the next
    /// [`Self::push`] to it starts a new task).
    pub(super) fn next(&self, key: &str) -> Option<T> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let next = waiting.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            waiting.remove(key);
        }
        next
    }
}

/// The topology with only `queue` in it, as declared: what an ordered consumer declares
/// before it consumes, so that a queue lacking its single active consumer (declared before
/// the consumer's `ordering` changed) stops it instead of letting several processes deliver
/// one aggregate at once. `None` when the topology does not name the queue.
pub(super) fn own_queue(topology: &Topology, queue: &str) -> Option<Topology> {
    let def = topology.queues.iter().find(|q| q.name == queue)?;
    Some(Topology {
        rabbit_version: None,
        exchanges: Vec::new(),
        queues: vec![def.clone()],
        bindings: Vec::new(),
    })
}

impl Parts {
    /// Whether this consumer's deliveries go through lanes.
    pub(super) fn ordered(&self) -> bool {
        self.consumer.ordering() == Ordering::Aggregate
    }

    /// The lane of a delivery: its aggregate id, or a lane of its own.
    fn lane_key(&self, delivery: &Delivery) -> String {
        let delivered = Delivered {
            body: &delivery.data,
            properties: &delivery.properties,
            exchange: delivery.exchange.as_str(),
            routing_key: delivery.routing_key.as_str(),
        };
        match decode(&delivered, self.queue(), self.limits.max_attempts) {
            Ok(Job {
                event:
                    crate::broker::envelope::Event {
                        aggregate_id: Some(id),
                        ..
                    },
                ..
            }) => format!("a:{id}"),
            _ => format!("d:{}", delivery.delivery_tag),
        }
    }

    /// Hands `delivery` to its lane, starting the lane's task when the lane was idle. Never
    /// waits: a new lane's task waits for a handler permit itself, so a delivery for a busy
    /// lane is queued behind it at once.
    pub(super) fn dispatch(
        self: &Arc<Self>,
        lanes: &Arc<Lanes>,
        delivery: Delivery,
        permits: &Arc<Semaphore>,
        tracker: &TaskTracker,
        session: &CancellationToken,
    ) {
        let key = self.lane_key(&delivery);
        let Some(first) = lanes.push(&key, delivery) else {
            return;
        };
        let (this, lanes, permits, session) = (
            self.clone(),
            lanes.clone(),
            permits.clone(),
            session.clone(),
        );
        tracker.spawn(async move {
            let permit = tokio::select! {
                () = session.cancelled() => return,
                p = permits.acquire_owned() => p,
            };
            let Ok(_permit) = permit else {
                return;
            };
            let mut next = Some(first);
            while let Some(delivery) = next {
                this.process_in_lane(delivery, &session).await;
                if session.is_cancelled() {
                    // The rest stays unacked; the channel's close gives it back in order.
                    return;
                }
                next = lanes.next(&key);
            }
        });
    }

    /// Handles one delivery of a lane: admitted, attempted in place until final, settled.
    async fn process_in_lane(&self, delivery: Delivery, session: &CancellationToken) {
        let span = self.span(&delivery);
        async {
            let _in_flight = self.ctx.metrics.in_flight(self.queue());
            let Some((mut job, _same)) = self.admit(&delivery, Some(session)).await else {
                return;
            };
            // None: the session ended while it waited; left unacked for the redelivery.
            let Some((result, details)) = self.in_place(&mut job, session).await else {
                return;
            };
            self.settle(&delivery, &job, result, &details, Some(session))
                .await;
        }
        .instrument(span)
        .await;
    }

    /// Attempts `job` until the result is final: a success, a refusal, or a failure on the
    /// last attempt. A failure before that waits the tier's delay here, in its lane, and
    /// goes again with the next attempt number; a deferral goes again with the same one once
    /// the consumer is ready (`max_attempts` deferrals in a row count as a failure). `None`
    /// when the session ended during a wait.
    async fn in_place(
        &self,
        job: &mut Job,
        session: &CancellationToken,
    ) -> Option<(Result<(), JobError>, Vec<(String, String)>)> {
        let mut deferred = 0;
        loop {
            let (result, details) = self.attempt(job, Instant::now()).await;
            let error = match result {
                Ok(()) | Err(JobError::Invalid(_)) => return Some((result, details)),
                Err(JobError::Deferred(reason)) if deferred < self.limits.max_attempts => {
                    deferred += 1;
                    tracing::info!(error = %reason, "Job deferred; it waits in its lane, same attempt.");
                    self.ctx.metrics.queue_message(self.queue(), "deferred");
                    if session.is_cancelled() {
                        return None;
                    }
                    continue;
                }
                Err(JobError::Deferred(reason)) => JobError::Failed(reason),
                Err(e) => e,
            };
            if job.attempt >= self.limits.max_attempts {
                return Some((Err(error), details));
            }
            let delay = match error {
                JobError::Failed(_) => self.limits.failure_delay,
                _ => self.limits.error_delay,
            };
            tracing::info!(error = %error, ?delay, "Job will be retried in its lane.");
            self.ctx.metrics.job(self.queue(), "retried_in_place");
            self.ctx
                .metrics
                .queue_message(self.queue(), "retried_in_place");
            if !pause(session, delay).await {
                return None;
            }
            job.attempt += 1;
            deferred = 0;
            tracing::Span::current().record("attempt", job.attempt);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_hands_out_its_items_in_order_and_is_idle_when_empty() {
        let lanes = Lanes::<u32>::default();
        assert_eq!(lanes.push("a", 1), Some(1), "an idle lane starts with it");
        assert_eq!(lanes.push("a", 2), None, "behind the first");
        assert_eq!(lanes.push("b", 10), Some(10), "another lane is independent");
        assert_eq!(lanes.push("a", 3), None);
        assert_eq!(lanes.next("a"), Some(2));
        assert_eq!(lanes.next("a"), Some(3));
        assert_eq!(lanes.next("a"), None, "empty: the lane ends");
        assert_eq!(
            lanes.push("a", 4),
            Some(4),
            "and starts again with the next"
        );
        assert_eq!(lanes.next("b"), None);
        assert_eq!(lanes.next("a"), None);
        assert!(lanes.waiting.lock().expect("lock").is_empty());
    }

    #[test]
    fn an_ordered_consumers_own_queue_is_declared_alone() {
        let mut t = Topology::builtin().expect("builtin");
        let mut sub = crate::config::SubscriptionSettings::new("o", "http://127.0.0.1:9/");
        sub.events = vec!["order.*".into()];
        sub.ordering = Ordering::Aggregate;
        crate::broker::subscriptions::add_to(&mut t, &[sub]);
        let own = own_queue(&t, "warren.sub.o").expect("named");
        assert_eq!(own.queues.len(), 1);
        assert!(own.exchanges.is_empty() && own.bindings.is_empty());
        assert_eq!(
            own.queues[0].arguments.get("x-single-active-consumer"),
            Some(&serde_json::json!(true))
        );
        assert!(own_queue(&t, "warren.nope").is_none());
    }
}
