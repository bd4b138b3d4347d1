//! The `inventory` participant of the order saga: `inventory.deduct` and `inventory.restore`
//! on the `inventory` table (queue `warren.inventory`), each a single conditional `UPDATE`
//! per SKU (`stock >= qty`), so concurrent orders never drive a stock below zero.

use chrono::Utc;
use entities::inventory;
use sea_orm::{
    ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter,
    sea_query::{Expr, ExprTrait},
};

use crate::{
    jobs::JobError,
    saga::{
        participants::{Outcome, Participant, fault, order, unknown},
        protocol::CommandData,
    },
};

/// The inventory service: `inventory.deduct` takes every item's quantity from its SKU's
/// stock (refused when any SKU is short or unknown), `inventory.restore` puts it back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Inventory;

#[async_trait::async_trait]
impl Participant for Inventory {
    fn name(&self) -> &str {
        "inventory"
    }

    fn queue(&self) -> &str {
        crate::broker::names::INVENTORY_QUEUE
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        command: &str,
        cmd: &CommandData,
    ) -> Result<Outcome, JobError> {
        let o = order(cmd)?;
        let now = Utc::now();
        let deduct = match command {
            "inventory.deduct" => true,
            "inventory.restore" => false,
            other => return Err(unknown(self.name(), other)),
        };
        for item in &o.items {
            let mut q = inventory::Entity::update_many()
                .col_expr(
                    inventory::Column::Stock,
                    if deduct {
                        Expr::col(inventory::Column::Stock).sub(item.qty)
                    } else {
                        Expr::col(inventory::Column::Stock).add(item.qty)
                    },
                )
                .col_expr(inventory::Column::UpdatedAt, Expr::value(now))
                .filter(inventory::Column::Sku.eq(&item.sku));
            if deduct {
                q = q.filter(inventory::Column::Stock.gte(item.qty));
            }
            let res = q
                .exec(txn)
                .await
                .map_err(fault("cannot update the stock"))?;
            if res.rows_affected == 0 {
                let known = inventory::Entity::find_by_id(item.sku.clone())
                    .one(txn)
                    .await
                    .map_err(fault("cannot read the stock"))?;
                return Ok(Outcome::Refused(match known {
                    None => format!("unknown SKU {}", item.sku),
                    Some(row) => format!(
                        "insufficient stock for SKU {}: {} wanted, {} in stock",
                        item.sku, item.qty, row.stock
                    ),
                }));
            }
        }
        Ok(Outcome::Applied)
    }
}
