//! The one relay behind both store-then-publish tables: the events outbox (`event_outbox`,
//! [`super::events`]) and the saga commands (`saga_outbox`, `crate::saga::outbox`).
//!
//! A table says how its rows are read, deleted and marked ([`OutboxTable`]); the relay owns
//! the rest, the same for both:
//! - **a pass** reads up to a batch of due rows, oldest first, publishes them with confirms
//!   and deletes the confirmed ones; a row the broker *returned* (unroutable) stays and is
//!   marked; a broker that cannot take a row ends the pass for every group;
//! - **order per aggregate**: rows of one group (an aggregate, a saga) leave one at a time in
//!   order, and a row that cannot be published holds back the rows after it; different groups
//!   are published concurrently;
//! - **several relays** on PostgreSQL: a pass either holds a transaction-scoped advisory lock
//!   (one relay at a time: the events outbox, whose per-aggregate order spans passes) or
//!   claims its rows `FOR UPDATE SKIP LOCKED` (relays share the work: the saga commands,
//!   whose senders publish them themselves right after the commit). SQLite is one process's
//!   database: a pass holds no transaction there (its one connection would stall every other
//!   query);
//! - **the loop** ([`Relay::run`]): a pass at once when the table says something was stored,
//!   every period otherwise, back to back while full batches come, once a period while the
//!   broker is away.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseExecutor, DbBackend, DbErr, Statement,
    TransactionTrait,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{
    envelope::Meta,
    publisher::{PublishError, Publisher},
};

/// Groups (aggregates) one relay pass publishes concurrently.
const RELAY_CONCURRENCY: usize = 64;

/// A stored row's key: the events outbox numbers its rows (`seq`), the saga outbox keys them
/// by command id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RowId {
    /// `event_outbox.seq`.
    Seq(i64),
    /// `saga_outbox.id`.
    Id(Uuid),
}

/// A stored message as the relay publishes it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Its row.
    pub id: RowId,
    /// The exchange.
    pub exchange: String,
    /// The routing key.
    pub routing_key: String,
    /// Rows of one group leave in order (an aggregate id, a saga id); `None`: its own group.
    pub group: Option<String>,
    /// The body, as stored.
    pub body: Vec<u8>,
    /// The properties and headers, as when it was first sent.
    pub meta: Meta,
}

impl StoredMessage {
    /// Publishes it with a confirm.
    pub async fn publish(&self, publisher: &Publisher) -> Result<(), PublishError> {
        publisher
            .publish(
                &self.exchange,
                &self.routing_key,
                &self.body,
                publisher.stored_properties(&self.exchange, &self.body, &self.meta),
            )
            .await
    }
}

/// How relays in several processes keep apart on PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassLock {
    /// One relay at a time: a pass holds `pg_try_advisory_xact_lock(key)`; the others skip.
    Advisory(i64),
    /// Relays share the rows: each pass claims its own `FOR UPDATE SKIP LOCKED`.
    SkipLocked,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Rows published and deleted.
    pub sent: usize,
    /// Rows read (a full batch means more may wait).
    pub read: usize,
    /// The broker could not take a row (the loop then waits a whole period).
    pub broker_away: bool,
    /// Another relay held the advisory lock.
    pub skipped: bool,
}

/// A store-then-publish table: how the relay reads, deletes and marks its rows.
#[async_trait::async_trait]
pub trait OutboxTable: Send + Sync + 'static {
    /// For logs: `events`, `saga commands`.
    fn name(&self) -> &'static str;

    /// How passes keep apart on PostgreSQL.
    fn pass_lock(&self) -> PassLock;

    /// Up to `limit` due rows, oldest first; `claim` adds `FOR UPDATE SKIP LOCKED`.
    async fn due(
        &self,
        conn: &DatabaseExecutor<'_>,
        limit: u64,
        claim: bool,
    ) -> Result<Vec<StoredMessage>, DbErr>;

    /// Deletes confirmed rows.
    async fn delete(&self, conn: &DatabaseExecutor<'_>, ids: Vec<RowId>) -> Result<(), DbErr>;

    /// Records that the broker returned a row (it stays, and holds back its group).
    async fn refused(
        &self,
        conn: &DatabaseExecutor<'_>,
        id: RowId,
        reason: String,
    ) -> Result<(), DbErr>;

    /// After every pass (gauges, the sender's breaker).
    async fn after_pass(&self, _outcome: &PassOutcome) {}

    /// Resolves when rows were stored and a pass should run before the period ends.
    async fn stored(&self) {
        std::future::pending::<()>().await;
    }
}

/// A relay pass's database error.
#[derive(Debug, thiserror::Error)]
#[error("{table} relay: {doing}: {source}")]
pub struct RelayError {
    /// The table.
    pub table: &'static str,
    /// What the relay was doing.
    pub doing: &'static str,
    /// The database error.
    #[source]
    pub source: DbErr,
}

/// The relay of one table.
#[derive(Clone)]
pub struct Relay {
    db: DatabaseConnection,
    publisher: Publisher,
    table: Arc<dyn OutboxTable>,
    batch: u64,
    period: Duration,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("table", &self.table.name())
            .field("batch", &self.batch)
            .field("period", &self.period)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct GroupOutcome {
    sent: Vec<RowId>,
    refused: Option<(RowId, String)>,
}

impl Relay {
    /// A relay of `table` over `db`: up to `batch` rows a pass, a pass every `period`.
    pub fn new(
        db: DatabaseConnection,
        publisher: Publisher,
        table: Arc<dyn OutboxTable>,
        batch: u64,
        period: Duration,
    ) -> Self {
        Self {
            db,
            publisher,
            table,
            batch,
            period,
        }
    }

    fn err(&self, doing: &'static str) -> impl FnOnce(DbErr) -> RelayError + use<> {
        let table = self.table.name();
        move |source| RelayError {
            table,
            doing,
            source,
        }
    }

    /// One pass (see the module's doc).
    pub async fn pass(&self) -> Result<PassOutcome, RelayError> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return self
                .rows(&DatabaseExecutor::Connection(&self.db), false)
                .await;
        }
        let txn = self
            .db
            .begin()
            .await
            .map_err(self.err("beginning a pass"))?;
        let outcome = match self.table.pass_lock() {
            PassLock::Advisory(key) => {
                let locked = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "SELECT pg_try_advisory_xact_lock($1) AS locked",
                        [key.into()],
                    ))
                    .await
                    .and_then(|r| r.map(|r| r.try_get::<bool>("", "locked")).transpose())
                    .map_err(self.err("taking the relay lock"))?
                    .unwrap_or(false);
                if locked {
                    self.rows(&DatabaseExecutor::Transaction(&txn), false)
                        .await?
                } else {
                    PassOutcome {
                        skipped: true,
                        ..PassOutcome::default()
                    }
                }
            }
            PassLock::SkipLocked => {
                self.rows(&DatabaseExecutor::Transaction(&txn), true)
                    .await?
            }
        };
        txn.commit().await.map_err(self.err("committing a pass"))?;
        if outcome.sent > 0 {
            tracing::info!(
                table = self.table.name(),
                sent = outcome.sent,
                "Relayed stored messages."
            );
        }
        Ok(outcome)
    }

    async fn rows(
        &self,
        conn: &DatabaseExecutor<'_>,
        claim: bool,
    ) -> Result<PassOutcome, RelayError> {
        let rows = self
            .table
            .due(conn, self.batch, claim)
            .await
            .map_err(self.err("reading due rows"))?;
        let read = rows.len();
        if rows.is_empty() {
            return Ok(PassOutcome::default());
        }
        let broker_down = AtomicBool::new(false);
        let outcomes: Vec<GroupOutcome> = futures_util::stream::iter(groups(rows))
            .map(|group| self.publish_group(group, &broker_down))
            .buffer_unordered(RELAY_CONCURRENCY)
            .collect()
            .await;
        let sent: Vec<RowId> = outcomes.iter().flat_map(|o| o.sent.clone()).collect();
        let n = sent.len();
        if !sent.is_empty() {
            self.table
                .delete(conn, sent)
                .await
                .map_err(self.err("deleting relayed rows"))?;
        }
        for (id, reason) in outcomes.into_iter().filter_map(|o| o.refused) {
            tracing::error!(table = self.table.name(), ?id, reason = %reason,
                "The broker refuses a stored message; it stays (and holds back its group).");
            self.table
                .refused(conn, id, reason)
                .await
                .map_err(self.err("recording a refused row"))?;
        }
        Ok(PassOutcome {
            sent: n,
            read,
            broker_away: broker_down.load(Ordering::Relaxed),
            skipped: false,
        })
    }

    /// Publishes one group's rows in order, stopping at the first that fails.
    async fn publish_group(
        &self,
        group: Vec<StoredMessage>,
        broker_down: &AtomicBool,
    ) -> GroupOutcome {
        let mut outcome = GroupOutcome::default();
        for row in group {
            if broker_down.load(Ordering::Relaxed) {
                break;
            }
            match row.publish(&self.publisher).await {
                Ok(()) => outcome.sent.push(row.id),
                Err(e @ PublishError::Returned { .. }) => {
                    outcome.refused = Some((row.id, e.to_string()));
                    break;
                }
                Err(e) => {
                    tracing::debug!(table = self.table.name(), error = %e, "Relay cannot publish yet.");
                    broker_down.store(true, Ordering::Relaxed);
                    break;
                }
            }
        }
        outcome
    }

    /// The relay loop, until shutdown (see the module's doc).
    pub async fn run(self, shutdown: CancellationToken) {
        let batch = usize::try_from(self.batch).unwrap_or(usize::MAX);
        loop {
            let outcome = match self.pass().await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, "Relay pass failed; retrying.");
                    PassOutcome::default()
                }
            };
            self.table.after_pass(&outcome).await;
            if outcome.read >= batch && outcome.sent > 0 && !outcome.broker_away {
                if shutdown.is_cancelled() {
                    return;
                }
                continue;
            }
            if outcome.broker_away {
                // Probe the broker once a period, not at every store.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(self.period) => {}
                }
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.period) => {}
                () = self.table.stored() => {
                    // Let a burst of stores land before the pass (they come while the broker
                    // is away, when there is no hurry).
                    tokio::time::sleep(self.period.min(Duration::from_millis(50))).await;
                }
            }
        }
    }
}

/// One group per `group` key (in order inside it), a row without one its own group.
fn groups(rows: Vec<StoredMessage>) -> Vec<Vec<StoredMessage>> {
    let mut groups: Vec<Vec<StoredMessage>> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for row in rows {
        match row.group.clone() {
            Some(g) => match index.get(&g) {
                Some(&i) => groups[i].push(row),
                None => {
                    index.insert(g, groups.len());
                    groups.push(vec![row]);
                }
            },
            None => groups.push(vec![row]),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(seq: i64, group: Option<&str>) -> StoredMessage {
        let event = crate::broker::envelope::Event::new("a.b", None, serde_json::json!({}));
        StoredMessage {
            id: RowId::Seq(seq),
            exchange: "x".into(),
            routing_key: "a.b".into(),
            group: group.map(str::to_owned),
            body: Vec::new(),
            meta: Meta::for_event(&event),
        }
    }

    #[test]
    fn rows_group_by_aggregate_in_order_and_loose_rows_stand_alone() {
        let rows = vec![
            row(1, Some("a")),
            row(2, None),
            row(3, Some("b")),
            row(4, Some("a")),
            row(5, None),
        ];
        let ids: Vec<Vec<RowId>> = groups(rows)
            .into_iter()
            .map(|g| g.into_iter().map(|r| r.id).collect())
            .collect();
        assert_eq!(
            ids,
            vec![
                vec![RowId::Seq(1), RowId::Seq(4)],
                vec![RowId::Seq(2)],
                vec![RowId::Seq(3)],
                vec![RowId::Seq(5)],
            ]
        );
    }
}
