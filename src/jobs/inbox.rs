//! The runner's inbox with group commit: the "already handled?" reads and the "handled"
//! writes of all the deliveries one runner has in flight go to the database in batches.
//!
//! Semantics are those of one read before the handler and one write after it (a message id
//! is looked up before its handler runs, and recorded before its ack), but under load one
//! `SELECT ... WHERE message_id IN (...)` and one multi-row `INSERT ... ON CONFLICT DO
//! NOTHING` serve every delivery that arrived while the previous batch was in the database.
//! Idle, a batch is one message: no timer, no added latency. A no-op drain with the inbox
//! on PostgreSQL measured about 4,000 jobs/s (BENCHMARKS.md); the database is still the limit.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use entities::processed_messages;

/// Why an inbox read or write failed.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum InboxError {
    /// The database refused the batch.
    #[error("database query failed while {doing}: {reason}")]
    Query {
        /// What the inbox was doing.
        doing: &'static str,
        /// The database's error.
        reason: String,
    },
    /// The batching task is gone (the runner is stopping).
    #[error("the inbox task stopped")]
    Closed,
}

/// Batches in the database at once, per consumer. Each batch holds up to two pooled
/// connections (its read and its write run together), and every consumer of a process shares
/// one pool: four in flight starved the pool under the saga load test, and measured no faster
/// than one.
const IN_FLIGHT: usize = 1;

/// Most message ids in one statement (well under SQLite's and PostgreSQL's bind limits).
const MAX_BATCH: usize = 512;

enum Op {
    Seen(Uuid, oneshot::Sender<Result<bool, InboxError>>),
    Mark(Uuid, oneshot::Sender<Result<(), InboxError>>),
}

/// A handle on one consumer's batched inbox. Cheap to clone; the batching task ends when the
/// last handle is dropped.
#[derive(Clone, Debug)]
pub(crate) struct Inbox {
    tx: mpsc::Sender<Op>,
}

impl Inbox {
    /// Starts the batching task for `consumer` on `db`.
    pub(crate) fn spawn(db: sea_orm::DatabaseConnection, consumer: String) -> Self {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run(db, consumer, rx));
        Self { tx }
    }

    /// Whether `message_id` was already handled by this consumer.
    pub(crate) async fn seen(&self, message_id: Uuid) -> Result<bool, InboxError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Seen(message_id, tx))
            .await
            .map_err(|_| InboxError::Closed)?;
        rx.await.map_err(|_| InboxError::Closed)?
    }

    /// Records that this consumer handled `message_id` (recording twice is a no-op).
    pub(crate) async fn mark(&self, message_id: Uuid) -> Result<(), InboxError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Op::Mark(message_id, tx))
            .await
            .map_err(|_| InboxError::Closed)?;
        rx.await.map_err(|_| InboxError::Closed)?
    }
}

async fn run(db: sea_orm::DatabaseConnection, consumer: String, mut rx: mpsc::Receiver<Op>) {
    // Up to IN_FLIGHT batches in the database at once; while one is there, the next collects.
    // Two batches never hold the same message id's read and write at once: the runner holds
    // a message id's lock from its read until after its write.
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let consumer: std::sync::Arc<str> = consumer.into();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let (db, consumer) = (db.clone(), consumer.clone());
        tokio::spawn(async move {
            apply(&db, &consumer, batch).await;
            drop(permit);
        });
    }
}

async fn apply(db: &sea_orm::DatabaseConnection, consumer: &str, batch: Vec<Op>) {
    let mut seen = Vec::new();
    let mut marks = Vec::new();
    for op in batch {
        match op {
            Op::Seen(id, reply) => seen.push((id, reply)),
            Op::Mark(id, reply) => marks.push((id, reply)),
        }
    }
    let started = std::time::Instant::now();
    let (found, marked) = tokio::join!(lookup(db, consumer, &seen), record(db, consumer, &marks));
    tracing::trace!(
        reads = seen.len(),
        writes = marks.len(),
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "Inbox batch."
    );
    match found {
        Ok(found) => {
            for (id, reply) in seen {
                let _ = reply.send(Ok(found.contains(&id)));
            }
        }
        Err(e) => {
            for (_, reply) in seen {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
    for (_, reply) in marks {
        let _ = reply.send(marked.clone());
    }
}

/// The ids, the last one repeated up to the next power of two. The database driver prepares
/// each distinct statement text once per connection and keeps a bounded cache; batches of
/// every size would be up to 512 statement shapes to prepare, padded ones come in ten (for
/// the lookup; a repeated id changes nothing in an `IN` list).
fn padded(ids: impl Iterator<Item = Uuid>) -> impl Iterator<Item = Uuid> {
    let ids: Vec<Uuid> = ids.collect();
    let want = ids.len().next_power_of_two();
    let last = ids.last().copied();
    ids.into_iter()
        .chain(std::iter::repeat_n(last, want).flatten())
        .take(want)
}

async fn lookup<T>(
    db: &sea_orm::DatabaseConnection,
    consumer: &str,
    ids: &[(Uuid, T)],
) -> Result<std::collections::HashSet<Uuid>, InboxError> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    processed_messages::Entity::find()
        .select_only()
        .column(processed_messages::Column::MessageId)
        .filter(processed_messages::Column::Consumer.eq(consumer))
        .filter(processed_messages::Column::MessageId.is_in(padded(ids.iter().map(|(id, _)| *id))))
        .into_tuple::<Uuid>()
        .all(db)
        .await
        .map(|rows| rows.into_iter().collect())
        .map_err(|e| InboxError::Query {
            doing: "reading the inbox",
            reason: e.to_string(),
        })
}

async fn record<T>(
    db: &sea_orm::DatabaseConnection,
    consumer: &str,
    ids: &[(Uuid, T)],
) -> Result<(), InboxError> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut unique: Vec<Uuid> = ids.iter().map(|(id, _)| *id).collect();
    unique.sort_unstable();
    unique.dedup();
    crate::store::inbox_mark_many(db, consumer, unique)
        .await
        .map_err(|e| InboxError::Query {
            doing: "writing the inbox",
            reason: e.to_string(),
        })
}
