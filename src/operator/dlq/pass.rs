//! One pass over a parking queue: `basic.get` at most the messages parked when it started,
//! move (replay or purge) the selected ones in batches, put the rest back (see the parent
//! module for the rules).

use chrono::Utc;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions},
    types::FieldTable,
};
use uuid::Uuid;

use super::{
    BATCH, Dlq, DlqError, Filter, IN_FLIGHT, MovedIds, SETTLE_GRACE, dead_queue, message_uuid,
    replay_properties,
};
use crate::{
    broker::{names::REQUEUE_EXCHANGE, publisher::PublishError},
    store,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    Replay,
    Purge,
}

impl Action {
    fn done(self) -> &'static str {
        match self {
            Action::Replay => "replayed",
            Action::Purge => "purged",
        }
    }

    fn status(self) -> &'static str {
        match self {
            Action::Replay => store::FAILED_RETRIED,
            Action::Purge => store::FAILED_PURGED,
        }
    }
}

impl Dlq {
    pub(super) async fn pass(
        &self,
        queue: &str,
        filter: &Filter,
        action: Action,
        moved: &mut MovedIds,
    ) -> Result<usize, DlqError> {
        let queue = self.work_queue(queue)?;
        let dead_queue = dead_queue(&queue);
        let channel = self.channel(&dead_queue).await?;
        let result = self
            .pass_on(&channel, &queue, &dead_queue, filter, action, moved)
            .await;
        // A quorum queue applies acks at a lower priority than a channel's departure: closing
        // the channel right after a burst of acks let the broker hand some acked messages
        // back (85 of 10,000 in a loaded test run, replayed a second time by the next page).
        // A pause before closing lets the acks land; what still comes back is caught by
        // `moved` and by the operation's final sweep (`crate::operator::operations`).
        if matches!(result, Ok(n) if n > 0) || result.is_err() {
            tokio::time::sleep(SETTLE_GRACE).await;
        }
        close(&channel).await;
        result
    }

    async fn pass_on(
        &self,
        channel: &Channel,
        queue: &str,
        dead_queue: &str,
        filter: &Filter,
        action: Action,
        moved: &mut MovedIds,
    ) -> Result<usize, DlqError> {
        let now = Utc::now();
        let mut scan = Scan::new(channel, dead_queue);
        let mut held = Vec::new();
        let mut done = 0usize;
        let scanned = async {
            loop {
                let want = filter
                    .limit
                    .map_or(BATCH, |l| l.saturating_sub(done).min(BATCH));
                if want == 0 {
                    break;
                }
                let mut batch = Vec::new();
                while batch.len() < want {
                    let Some(delivery) = scan.next().await? else {
                        break;
                    };
                    if filter.matches(&delivery.properties, now) {
                        batch.push(delivery);
                    } else {
                        held.push(delivery.delivery_tag);
                    }
                }
                if batch.is_empty() {
                    break;
                }
                let last = batch.len() < want;
                let (n, result) = self
                    .move_batch(queue, dead_queue, batch, action, moved)
                    .await;
                done += n;
                result?;
                if last {
                    break;
                }
            }
            Ok::<(), DlqError>(())
        }
        .await;
        release(channel, dead_queue, &held).await;
        scanned.map(|()| done).map_err(|e| DlqError::Stopped {
            action: action.done(),
            done,
            dead_queue: dead_queue.to_owned(),
            source: Box::new(e),
        })
    }

    /// Replays (publishes, up to [`IN_FLIGHT`] awaiting their confirms at once, then acks each
    /// confirmed one) or purges (acks) a batch of selected messages, and marks their
    /// `failed_jobs` rows. Returns how many moved, and the first error: a message whose
    /// publish failed goes back to the parking queue; after a failed ack the rest stay held
    /// and the broker requeues them when the channel closes.
    async fn move_batch(
        &self,
        queue: &str,
        dead_queue: &str,
        batch: Vec<Delivery>,
        action: Action,
        already: &mut MovedIds,
    ) -> (usize, Result<(), DlqError>) {
        // Copies of messages this operation moved already, handed back by the broker: removed,
        // not moved again.
        let (repeats, batch): (Vec<Delivery>, Vec<Delivery>) = batch
            .into_iter()
            .partition(|d| message_uuid(&d.properties).is_some_and(|id| already.contains(&id)));
        if let Err(e) = remove_repeats(queue, dead_queue, &repeats).await {
            return (0, Err(e));
        }
        if batch.is_empty() {
            return (0, Ok(()));
        }
        let ids: Vec<Uuid> = batch
            .iter()
            .filter_map(|d| message_uuid(&d.properties))
            .collect();
        // Looked up before the messages move: a replayed message parked again at once gets a
        // new row, which must stay `parked`.
        let rows = match store::parked_failed_jobs_of(&self.db, queue, &ids).await {
            Ok(rows) => rows,
            Err(source) => {
                for d in &batch {
                    requeue(d).await;
                }
                let queue = queue.to_owned();
                return (0, Err(DlqError::Store { queue, source }));
            }
        };
        let published = match action {
            Action::Purge => batch.iter().map(|_| Ok(())).collect(),
            Action::Replay => self.republish(queue, &batch).await,
        };
        let (moved, moved_ids, error) = settle(queue, dead_queue, action, &batch, published).await;
        let row_ids: Vec<Uuid> = rows
            .iter()
            .filter(|(m, _)| moved_ids.contains(m))
            .map(|(_, r)| *r)
            .collect();
        already.extend(moved_ids.iter().copied());
        if let Err(e) = store::set_failed_jobs_status(&self.db, &row_ids, action.status()).await {
            tracing::warn!(error = %e, queue, status = action.status(), "Messages moved but their failed_jobs rows were not updated.");
        }
        (moved, error.map_or(Ok(()), Err))
    }

    /// Publishes each message back to its work queue through `warren.requeue`, up to
    /// [`IN_FLIGHT`] awaiting their confirms at once; the outcomes in the batch's order.
    async fn republish(&self, queue: &str, batch: &[Delivery]) -> Vec<Result<(), PublishError>> {
        use futures_util::StreamExt;
        // Boxed as `Send`: the publish futures borrow the batch, and an unboxed stream of them
        // trips the compiler's higher-ranked `Send` inference.
        type Publish<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<(), PublishError>> + Send + 'a>,
        >;
        let publishes: Vec<Publish<'_>> = batch
            .iter()
            .map(|d| {
                let publisher = self.publisher.clone();
                let body = d.data.clone();
                let props = replay_properties(&d.properties, Utc::now());
                let queue = queue.to_owned();
                Box::pin(async move {
                    publisher
                        .publish(REQUEUE_EXCHANGE, &queue, &body, props)
                        .await
                }) as Publish<'_>
            })
            .collect();
        futures_util::stream::iter(publishes)
            .buffered(IN_FLIGHT)
            .collect()
            .await
    }
}

/// Acks the copies of messages this operation already moved (the broker handed them back).
async fn remove_repeats(
    queue: &str,
    dead_queue: &str,
    repeats: &[Delivery],
) -> Result<(), DlqError> {
    if repeats.is_empty() {
        return Ok(());
    }
    tracing::info!(
        queue,
        n = repeats.len(),
        "Removing copies of messages this operation already moved (handed back by the broker)."
    );
    for d in repeats {
        d.ack(BasicAckOptions::default())
            .await
            .map_err(|source| DlqError::Amqp {
                doing: "basic.ack",
                queue: dead_queue.to_owned(),
                source,
            })?;
    }
    Ok(())
}

/// Settles each message after its publish (or, purging, at once): a failed publish goes back
/// to the parking queue, a moved one is acked. Returns how many moved, their ids, and the
/// first error; after a failed ack the rest stay held.
async fn settle(
    queue: &str,
    dead_queue: &str,
    action: Action,
    batch: &[Delivery],
    published: Vec<Result<(), PublishError>>,
) -> (usize, std::collections::HashSet<Uuid>, Option<DlqError>) {
    let mut moved = 0usize;
    let mut moved_ids = std::collections::HashSet::new();
    let mut error = None;
    for (delivery, outcome) in batch.iter().zip(published) {
        if let Err(source) = outcome {
            requeue(delivery).await;
            error.get_or_insert(DlqError::Publish {
                message_id: delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |m| m.as_str().to_owned()),
                exchange: REQUEUE_EXCHANGE,
                queue: queue.to_owned(),
                source: Box::new(source),
            });
            continue;
        }
        let acked = delivery.ack(BasicAckOptions::default()).await;
        if action == Action::Replay || acked.is_ok() {
            // A confirmed replay counts whether or not the ack arrives (if not, the parked
            // copy stays and a later replay duplicates it, which the inbox absorbs).
            moved += 1;
            if let Some(id) = message_uuid(&delivery.properties) {
                moved_ids.insert(id);
            }
        }
        if let Err(source) = acked {
            error = Some(DlqError::Amqp {
                doing: "basic.ack",
                queue: dead_queue.to_owned(),
                source,
            });
            break;
        }
    }
    (moved, moved_ids, error)
}

/// Messages ready in `queue`, exactly (a passive declare; a missing queue is an error and
/// closes the channel).
pub(super) async fn depth(channel: &Channel, queue: &str) -> Result<u32, DlqError> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|q| q.message_count())
        .map_err(|source| DlqError::Amqp {
            doing: "queue.declare (passive)",
            queue: queue.to_owned(),
            source,
        })
}

/// Takes, one `basic.get` (`no_ack: false`) at a time, at most the messages that were parked
/// when it started.
///
/// The count comes from the first `basic.get-ok` (messages left after it, plus itself), not
/// from a passive declare: on a quorum queue the declare's count is read from the applied
/// state and can miss messages whose `basic.nack(requeue)` (from a pass that just ended) is
/// still in flight, while `basic.get` goes through the queue's log after them.
pub(super) struct Scan<'a> {
    channel: &'a Channel,
    queue: &'a str,
    /// Messages parked when the scan started (known after the first get).
    pub(super) parked: u32,
    /// Gets left; `None` before the first.
    left: Option<u32>,
}

impl<'a> Scan<'a> {
    pub(super) fn new(channel: &'a Channel, queue: &'a str) -> Self {
        Self {
            channel,
            queue,
            parked: 0,
            left: None,
        }
    }

    pub(super) fn started(&self) -> bool {
        self.left.is_some()
    }

    pub(super) async fn next(&mut self) -> Result<Option<Delivery>, DlqError> {
        if self.left == Some(0) {
            return Ok(None);
        }
        let got = self
            .channel
            .basic_get(self.queue.into(), BasicGetOptions { no_ack: false })
            .await
            .map_err(|source| DlqError::Amqp {
                doing: "basic.get",
                queue: self.queue.to_owned(),
                source,
            })?;
        let Some(message) = got else {
            self.left = Some(0);
            return Ok(None);
        };
        match self.left {
            None => {
                self.parked = message.message_count.saturating_add(1);
                self.left = Some(message.message_count);
            }
            Some(n) => self.left = Some(n.saturating_sub(1)),
        }
        Ok(Some(message.delivery))
    }
}

async fn requeue(delivery: &Delivery) {
    if let Err(e) = delivery
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
    {
        // The channel is gone: the broker requeues what it held.
        tracing::warn!(error = %e, "Nack failed; the broker requeues the message when the channel closes.");
    }
}

/// Puts the held (unselected) messages back.
pub(super) async fn release(channel: &Channel, queue: &str, tags: &[u64]) {
    for tag in tags {
        if let Err(e) = channel
            .basic_nack(
                *tag,
                BasicNackOptions {
                    multiple: false,
                    requeue: true,
                },
            )
            .await
        {
            tracing::warn!(error = %e, queue, "Nack failed; the broker requeues the held messages when the channel closes.");
            return;
        }
    }
}

pub(super) async fn close(channel: &Channel) {
    let _ = channel.close(200, "dlq pass done".into()).await;
}
