//! The events outbox's table for the shared relay ([`super::relay`]): `event_outbox` rows in
//! `seq` order, grouped by aggregate, one relay at a time on PostgreSQL (an advisory lock), a
//! returned row counted in `attempts` with its `last_error`.

use std::{sync::Arc, time::Duration};

use entities::event_outbox;
use sea_orm::{
    ColumnTrait, DatabaseExecutor, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};
use tokio_util::sync::CancellationToken;

use super::{
    EventOutbox,
    relay::{OutboxTable, PassLock, PassOutcome, Relay, RowId, StoredMessage},
};
use crate::broker::envelope::Meta;

/// The advisory lock key of the relay on PostgreSQL (`warren` + 1, as bytes).
const RELAY_LOCK_KEY: i64 = 0x7761_7272_656e_0001;

/// `event_outbox` as the relay sees it.
struct EventTable(EventOutbox);

fn seqs(ids: Vec<RowId>) -> Vec<i64> {
    ids.into_iter()
        .filter_map(|id| match id {
            RowId::Seq(s) => Some(s),
            RowId::Id(_) => None,
        })
        .collect()
}

fn stored(row: event_outbox::Model) -> StoredMessage {
    StoredMessage {
        id: RowId::Seq(row.seq),
        meta: Meta {
            message_id: row.id,
            kind: row.routing_key.clone(),
            correlation_id: row.correlation_id,
            traceparent: row.traceparent,
            request_id: row.request_id,
            attempt: 1,
            timestamp: row.created_at,
        },
        exchange: row.exchange,
        routing_key: row.routing_key,
        group: row.aggregate_id,
        body: row.body.into_bytes(),
    }
}

#[async_trait::async_trait]
impl OutboxTable for EventTable {
    fn name(&self) -> &'static str {
        "events"
    }

    fn pass_lock(&self) -> PassLock {
        PassLock::Advisory(RELAY_LOCK_KEY)
    }

    async fn due(
        &self,
        conn: &DatabaseExecutor<'_>,
        limit: u64,
        _claim: bool,
    ) -> Result<Vec<StoredMessage>, DbErr> {
        let rows = event_outbox::Entity::find()
            .order_by_asc(event_outbox::Column::Seq)
            .limit(limit)
            .all(conn)
            .await?;
        Ok(rows.into_iter().map(stored).collect())
    }

    async fn delete(&self, conn: &DatabaseExecutor<'_>, ids: Vec<RowId>) -> Result<(), DbErr> {
        event_outbox::Entity::delete_many()
            .filter(event_outbox::Column::Seq.is_in(seqs(ids)))
            .exec(conn)
            .await
            .map(drop)
    }

    async fn refused(
        &self,
        conn: &DatabaseExecutor<'_>,
        id: RowId,
        reason: String,
    ) -> Result<(), DbErr> {
        event_outbox::Entity::update_many()
            .col_expr(
                event_outbox::Column::Attempts,
                Expr::col(event_outbox::Column::Attempts).add(1),
            )
            .col_expr(event_outbox::Column::LastError, Expr::value(reason))
            .filter(event_outbox::Column::Seq.is_in(seqs(vec![id])))
            .exec(conn)
            .await
            .map(drop)
    }

    async fn after_pass(&self, outcome: &PassOutcome) {
        let outbox = &self.0;
        if outcome.sent > 0 {
            outbox
                .inner
                .metrics
                .event_outbox_relayed(outcome.sent as u64);
            if !outcome.broker_away {
                // The broker takes messages again: requests may publish directly.
                outbox.close_breaker();
            }
        }
        if let Err(e) = outbox.refresh().await {
            tracing::debug!(error = %e, "Cannot refresh the outbox state.");
        }
    }

    async fn stored(&self) {
        self.0.inner.wake.notified().await;
    }
}

fn relay(outbox: &EventOutbox) -> Relay {
    let settings = &outbox.inner.settings;
    Relay::new(
        outbox.inner.relay_db.clone(),
        outbox.inner.publisher.clone(),
        Arc::new(EventTable(outbox.clone())),
        settings.batch,
        Duration::from_millis(settings.relay_ms),
    )
}

/// The events outbox's relay loop ([`Relay::run`]): until shutdown.
pub(crate) async fn run_relay(outbox: EventOutbox, shutdown: CancellationToken) {
    relay(&outbox).run(shutdown).await;
}
