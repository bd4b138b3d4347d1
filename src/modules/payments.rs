//! The `payments` participant of the order saga: `balance.deduct` and `balance.refund` on the
//! `accounts` table (queue `warren.payments`), a single conditional `UPDATE` each
//! (`balance >= total`), so concurrent orders never overdraw an account. A deduction returns
//! `{"user_id", "amount"}` as its step's result.

use chrono::Utc;
use entities::accounts;
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

/// The payments service: `balance.deduct` takes the order's total from the user's balance
/// (refused when short or when the user has no account), `balance.refund` gives it back.
#[derive(Debug, Clone, Copy, Default)]
pub struct Payments;

#[async_trait::async_trait]
impl Participant for Payments {
    fn name(&self) -> &str {
        "payments"
    }

    fn queue(&self) -> &str {
        crate::broker::names::PAYMENTS_QUEUE
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        command: &str,
        cmd: &CommandData,
    ) -> Result<Outcome, JobError> {
        let o = order(cmd)?;
        let deduct = match command {
            "balance.deduct" => true,
            "balance.refund" => false,
            other => return Err(unknown(self.name(), other)),
        };
        let mut q = accounts::Entity::update_many()
            .col_expr(
                accounts::Column::Balance,
                if deduct {
                    Expr::col(accounts::Column::Balance).sub(o.total_amount)
                } else {
                    Expr::col(accounts::Column::Balance).add(o.total_amount)
                },
            )
            .col_expr(accounts::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(accounts::Column::UserId.eq(&o.user_id));
        if deduct {
            q = q.filter(accounts::Column::Balance.gte(o.total_amount));
        }
        let res = q
            .exec(txn)
            .await
            .map_err(fault("cannot update the balance"))?;
        if res.rows_affected > 0 {
            // The charge's result reaches the refund (and any later step) as
            // `results.deduct_balance`.
            return Ok(if deduct {
                Outcome::AppliedWith(serde_json::json!({
                    "user_id": o.user_id,
                    "amount": o.total_amount,
                }))
            } else {
                Outcome::Applied
            });
        }
        let known = accounts::Entity::find_by_id(o.user_id.clone())
            .one(txn)
            .await
            .map_err(fault("cannot read the balance"))?;
        Ok(Outcome::Refused(match known {
            None => format!("user {} has no account", o.user_id),
            Some(a) => format!(
                "insufficient balance for user {}: {} wanted, {} available",
                o.user_id, o.total_amount, a.balance
            ),
        }))
    }
}
