//! The `orders` participant of the order saga: `order.create` and `order.cancel` on the
//! `orders` table (queue `warren.orders`). [`crate::saga::participants::ParticipantConsumer`]
//! runs it, with the saga protocol (idempotency record, reply, give-up reply); this file only
//! says what each command does. A new saga participant starts as a copy of this file.

use chrono::Utc;
use entities::orders;
use sea_orm::{ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, Set, sea_query::Expr};
use uuid::Uuid;

use crate::{
    jobs::JobError,
    saga::{
        participants::{Outcome, Participant, fault, order, unknown},
        protocol::CommandData,
    },
};

/// The orders service: `order.create` inserts an order (`created`), `order.cancel` cancels it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Orders;

#[async_trait::async_trait]
impl Participant for Orders {
    fn name(&self) -> &str {
        "orders"
    }

    fn queue(&self) -> &str {
        crate::broker::names::ORDERS_QUEUE
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        command: &str,
        cmd: &CommandData,
    ) -> Result<Outcome, JobError> {
        let o = order(cmd)?;
        let now = Utc::now();
        match command {
            "order.create" => {
                if let Some(existing) = orders::Entity::find()
                    .filter(orders::Column::OrderNo.eq(&o.order_no))
                    .one(txn)
                    .await
                    .map_err(fault("cannot read orders"))?
                {
                    return Ok(Outcome::Refused(format!(
                        "order {} already exists (saga {})",
                        o.order_no, existing.saga_id
                    )));
                }
                orders::Entity::insert(orders::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    order_no: Set(o.order_no.clone()),
                    saga_id: Set(cmd.saga_id),
                    user_id: Set(o.user_id.clone()),
                    items: Set(serde_json::to_value(&o.items).unwrap_or_default()),
                    total_amount: Set(o.total_amount),
                    status: Set("created".to_owned()),
                    created_at: Set(now),
                    updated_at: Set(now),
                })
                .exec_without_returning(txn)
                .await
                .map_err(fault("cannot insert the order"))?;
                Ok(Outcome::Applied)
            }
            "order.cancel" => {
                let res = orders::Entity::update_many()
                    .col_expr(orders::Column::Status, Expr::value("cancelled"))
                    .col_expr(orders::Column::UpdatedAt, Expr::value(now))
                    .filter(orders::Column::OrderNo.eq(&o.order_no))
                    .filter(orders::Column::SagaId.eq(cmd.saga_id))
                    .exec(txn)
                    .await
                    .map_err(fault("cannot cancel the order"))?;
                if res.rows_affected == 0 {
                    tracing::warn!(order_no = %o.order_no, "No order of this saga to cancel.");
                }
                Ok(Outcome::Applied)
            }
            other => Err(unknown(self.name(), other)),
        }
    }
}
