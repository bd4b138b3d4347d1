//! The saga commands' outbox: the commands a transition sends are stored in `saga_outbox` in
//! the saga's own transaction, published right after the commit ([`Sagas::flush`]) and
//! deleted once confirmed; what a crash or an outage left behind is published by the shared
//! relay ([`crate::outbox::relay`]) once older than a grace period, so it does not race the
//! process that stored it. Relays in several processes share the rows (`FOR UPDATE SKIP
//! LOCKED`); one saga's commands leave in order.
//!
//! When a saga ends (`completed`, `compensated`, `needs_intervention`), the same outbox
//! carries the event `saga.<status>` for `warren.events` ([`finished_event`]), stored in the
//! transaction that ends it: ordinary events any subscription or module can take.
//!
//! A command may therefore be published twice (a crash between confirm and delete), never
//! lost; participants apply each idempotency key at most once.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use entities::{saga_outbox, sagas};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseExecutor, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
    sea_query::{LockBehavior, LockType},
};
use uuid::Uuid;

use super::{
    engine::{SagaError, Sagas, millis, status_str},
    machine::{Command, SagaDef, SagaState},
    protocol::CommandData,
};
use crate::{
    broker::{
        envelope::{Event, Outgoing},
        names::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE},
    },
    outbox::relay::{OutboxTable, PassLock, Relay, RelayError, RowId, StoredMessage},
};

/// Most commands one relay pass publishes.
const RELAY_BATCH: u64 = 200;

/// The outbox rows of the commands a transition sends: each carries the saga's input and
/// the results kept so far (the new state's).
pub(super) fn rows(
    def: &SagaDef,
    saga_id: Uuid,
    (payload, results): (&serde_json::Value, &BTreeMap<String, serde_json::Value>),
    traceparent: Option<&str>,
    cmds: &[Command],
    now: DateTime<Utc>,
) -> Vec<saga_outbox::Model> {
    cmds.iter()
        .map(|c| {
            let data = CommandData {
                saga_id,
                kind: def.kind.clone(),
                step: c.step,
                step_name: def.steps[c.step].name.clone(),
                action: c.action,
                idempotency_key: c.idempotency_key(&saga_id.to_string()),
                payload: payload.clone(),
                results: results.clone(),
            };
            let event = Outgoing::event(
                c.routing_key.clone(),
                Some(saga_id.to_string()),
                serde_json::to_value(&data).unwrap_or_default(),
            )
            .occurred_on(now)
            .event;
            saga_outbox::Model {
                id: event.event_id,
                saga_id,
                routing_key: c.routing_key.clone(),
                body: serde_json::to_value(&event).unwrap_or_default(),
                traceparent: traceparent.map(str::to_owned),
                created_at: now,
            }
        })
        .collect()
}

/// The events a saga publishes when it ends, on `warren.events`.
pub(crate) const FINISHED_EVENTS: [&str; 3] = [
    "saga.completed",
    "saga.compensated",
    "saga.needs_intervention",
];

fn is_finished_event(routing_key: &str) -> bool {
    FINISHED_EVENTS.contains(&routing_key)
}

/// The outbox row of `saga.<status>`, for a transition of saga `row` that ended it in
/// `next`: `{saga_id, kind, business_key, status, reason, definition_hash, links}`, with the
/// saga id as aggregate and `correlation_id`.
pub(super) fn finished_event(
    row: &sagas::Model,
    next: &SagaState,
    now: DateTime<Utc>,
) -> saga_outbox::Model {
    let status = status_str(next.status);
    let name = format!("saga.{status}");
    let data = serde_json::json!({
        "saga_id": row.id,
        "kind": row.kind,
        "business_key": row.business_key,
        "status": status,
        "reason": next.reason,
        "definition_hash": row.definition_hash,
        "started_at": row.created_at,
        "links": {"self": format!("/v1/sagas/{}", row.id)},
    });
    let event = Outgoing::event(name.clone(), Some(row.id.to_string()), data)
        .occurred_on(now)
        .event;
    saga_outbox::Model {
        id: event.event_id,
        saga_id: row.id,
        routing_key: name,
        body: serde_json::to_value(&event).unwrap_or_default(),
        traceparent: row.traceparent.clone(),
        created_at: now,
    }
}

/// Stores `rows` in the saga's transaction.
pub(super) async fn insert(
    txn: &sea_orm::DatabaseTransaction,
    rows: &[saga_outbox::Model],
) -> Result<(), SagaError> {
    if rows.is_empty() {
        return Ok(());
    }
    let am: Vec<saga_outbox::ActiveModel> = rows.iter().cloned().map(Into::into).collect();
    saga_outbox::Entity::insert_many(am)
        .exec_without_returning(txn)
        .await
        .map(drop)
        .map_err(|source| SagaError::Db {
            doing: "storing commands in the outbox",
            source,
        })
}

/// A stored command as the relay publishes it: on `warren.commands`, `correlation_id` = the
/// saga, the saga's `traceparent`, grouped by saga. A saga's end event goes to
/// `warren.events` in a group of its own (one that no binding routes holds back no command).
fn stored(row: &saga_outbox::Model) -> Result<StoredMessage, SagaError> {
    let event: Event = serde_json::from_value(row.body.clone())
        .map_err(|e| SagaError::Corrupt(row.saga_id, format!("outbox body: {e}")))?;
    let message = Outgoing::from_event(event)
        .correlated(row.saga_id.to_string())
        .traceparent(row.traceparent.clone());
    let event = is_finished_event(&row.routing_key);
    Ok(StoredMessage {
        id: RowId::Id(row.id),
        exchange: if event {
            EVENTS_EXCHANGE
        } else {
            COMMANDS_EXCHANGE
        }
        .to_owned(),
        routing_key: row.routing_key.clone(),
        group: (!event).then(|| row.saga_id.to_string()),
        body: message.body(),
        meta: message.meta,
    })
}

/// `saga_outbox` as the relay sees it: rows older than `grace`.
struct CommandTable {
    grace: Duration,
}

#[async_trait::async_trait]
impl OutboxTable for CommandTable {
    fn name(&self) -> &'static str {
        "saga commands"
    }

    fn pass_lock(&self) -> PassLock {
        PassLock::SkipLocked
    }

    async fn due(
        &self,
        conn: &DatabaseExecutor<'_>,
        limit: u64,
        claim: bool,
    ) -> Result<Vec<StoredMessage>, DbErr> {
        let cutoff = Utc::now() - millis(self.grace);
        let mut q = saga_outbox::Entity::find()
            .filter(saga_outbox::Column::CreatedAt.lte(cutoff))
            .order_by_asc(saga_outbox::Column::Id)
            .limit(limit);
        if claim {
            // Claim the rows, so relays in other processes skip them.
            q = q.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
        }
        let rows = q.all(conn).await?;
        Ok(rows
            .iter()
            .filter_map(|row| match stored(row) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(error = %e, "A stored command cannot be read; it stays.");
                    None
                }
            })
            .collect())
    }

    async fn delete(&self, conn: &DatabaseExecutor<'_>, ids: Vec<RowId>) -> Result<(), DbErr> {
        let ids: Vec<Uuid> = ids
            .into_iter()
            .filter_map(|id| match id {
                RowId::Id(u) => Some(u),
                RowId::Seq(_) => None,
            })
            .collect();
        saga_outbox::Entity::delete_many()
            .filter(saga_outbox::Column::Id.is_in(ids))
            .exec(conn)
            .await
            .map(drop)
    }

    async fn refused(
        &self,
        _conn: &DatabaseExecutor<'_>,
        _id: RowId,
        _reason: String,
    ) -> Result<(), DbErr> {
        // saga_outbox has no attempts column: the relay logged it, and the row stays.
        Ok(())
    }
}

fn relay_error(e: RelayError) -> SagaError {
    SagaError::Db {
        doing: e.doing,
        source: e.source,
    }
}

impl Sagas {
    /// The shared relay over `saga_outbox`: commands older than `grace`, a pass every `every`.
    pub fn command_relay(&self, every: Duration, grace: Duration) -> Relay {
        Relay::new(
            self.inner.db.clone(),
            self.inner.publisher.clone(),
            Arc::new(CommandTable { grace }),
            RELAY_BATCH,
            every,
        )
    }

    /// Publishes stored commands, deleting each once the broker confirmed it. A command that
    /// cannot be published stays for the relay.
    pub(super) async fn flush(&self, rows: Vec<saga_outbox::Model>) {
        for row in rows {
            let sent = match stored(&row) {
                Ok(m) => m
                    .publish(&self.inner.publisher)
                    .await
                    .map_err(SagaError::Publish),
                Err(e) => Err(e),
            };
            if let Err(e) = sent {
                tracing::warn!(saga_id = %row.saga_id, command = %row.routing_key, error = %e,
                    "Command stays in the outbox; the relay will send it.");
                return;
            }
            // Deleted in a batch a few milliseconds later: one statement (and one commit)
            // for many commands. Until then the relay's grace period keeps it from a resend.
            if self.inner.confirmed.send(row.id).is_err()
                && let Err(e) = saga_outbox::Entity::delete_by_id(row.id)
                    .exec(&self.inner.db)
                    .await
            {
                tracing::warn!(error = %e, "Cannot delete a sent command from the outbox; it may be sent again (participants drop repeats).");
            }
        }
    }

    /// One relay pass: publishes commands older than `grace` still in the outbox (a crash or
    /// a broker outage left them there). Safe with several relays on PostgreSQL (rows are
    /// claimed with `FOR UPDATE SKIP LOCKED`). Returns how many were sent.
    pub async fn relay_once(&self, grace: Duration) -> Result<usize, SagaError> {
        let relay = self.command_relay(Duration::from_secs(1), grace);
        relay.pass().await.map(|o| o.sent).map_err(relay_error)
    }

    /// Commands waiting in the outbox, and the age of the oldest.
    pub async fn outbox_depth(&self) -> Result<(u64, Option<Duration>), SagaError> {
        use sea_orm::PaginatorTrait;
        let db = &self.inner.db;
        let doing = |doing| move |source| SagaError::Db { doing, source };
        let n = saga_outbox::Entity::find()
            .count(db)
            .await
            .map_err(doing("counting the outbox"))?;
        let oldest = saga_outbox::Entity::find()
            .order_by_asc(saga_outbox::Column::CreatedAt)
            .one(db)
            .await
            .map_err(doing("reading the outbox"))?
            .and_then(|r| (Utc::now() - r.created_at).to_std().ok());
        Ok((n, oldest))
    }
}

/// Deletes confirmed commands from the outbox in batches (up to 500 ids, or what arrived in
/// 20 ms), until the engine is dropped. A batch that fails to delete is left to the relay,
/// which sends those commands again (participants drop repeats).
pub(super) async fn delete_confirmed(
    db: DatabaseConnection,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Uuid>,
) {
    const BATCH: usize = 500;
    while let Some(first) = rx.recv().await {
        let mut ids = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while ids.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(id)) => ids.push(id),
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = saga_outbox::Entity::delete_many()
            .filter(saga_outbox::Column::Id.is_in(ids.clone()))
            .exec(&db)
            .await
        {
            tracing::warn!(error = %e, n = ids.len(),
                "Cannot delete sent commands from the outbox; the relay will send them again.");
        }
    }
}
