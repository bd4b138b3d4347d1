//! The order saga's last step, `notification.send`: stores the "order created" notification
//! for the buyer. It arrives on `warren.notifications` and runs inside the notifications
//! module ([`crate::modules::notifications`]).

use chrono::Utc;
use entities::notifications;
use sea_orm::{DatabaseTransaction, EntityTrait, Set};
use serde_json::json;
use uuid::Uuid;

use crate::{
    jobs::JobError,
    saga::{
        machine::Action,
        participants::{Outcome, Participant, fault, order, unknown},
        protocol::CommandData,
    },
};

/// The notification step: `notification.send` stores the "order created" notification for
/// the buyer. It has no compensation (a sent notification cannot be unsent).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OrderNotification;

#[async_trait::async_trait]
impl Participant for OrderNotification {
    fn name(&self) -> &str {
        "notifications"
    }

    fn queue(&self) -> &str {
        crate::broker::names::NOTIFICATIONS_QUEUE
    }

    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        command: &str,
        cmd: &CommandData,
    ) -> Result<Outcome, JobError> {
        if command != "notification.send" || cmd.action != Action::Execute {
            return Err(unknown(self.name(), command));
        }
        let o = order(cmd)?;
        notifications::Entity::insert(notifications::ActiveModel {
            id: Set(Uuid::now_v7()),
            user_id: Set(Some(o.user_id.clone())),
            event_id: Set(Uuid::new_v5(&cmd.saga_id, b"order-created")),
            event_name: Set("order.created".to_owned()),
            title: Set(format!("Order {} created", o.order_no)),
            data: Set(json!({
                "order_no": o.order_no,
                "total_amount": o.total_amount,
                "saga_id": cmd.saga_id,
            })),
            created_at: Set(Utc::now()),
        })
        .exec_without_returning(txn)
        .await
        .map_err(fault("cannot store the notification"))?;
        Ok(Outcome::Applied)
    }
}
