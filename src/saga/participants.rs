//! Saga participants: services that apply saga commands to their own tables and reply.
//!
//! [`ParticipantConsumer`] owns the protocol every participant shares, so a participant only
//! says what a command does to its tables ([`Participant::apply`]):
//! - at most once per idempotency key: the key is stored in `saga_commands` in the same
//!   transaction as the effect; a redelivered command finds it and gets the same reply again;
//! - a refusal (short stock) rolls the transaction back; an execute refusal is recorded too,
//!   so a late duplicate of a refused command cannot apply it after the saga moved on;
//!   a compensation refusal is not recorded, so an operator's retry can apply it later;
//! - a fault (`JobError`) rolls back and goes to the runner's retries; when the runner gives
//!   up, the participant replies `ok: false` with the reason, so the orchestrator moves on
//!   without waiting for the deadline;
//! - the reply `{saga_id, step, action, ok, reason}` goes to `warren.replies` (key `saga`)
//!   with `correlation_id` = saga id, confirmed before the command is acked.
//!
//! The order saga's participants: [`Orders`] (`orders` table), [`Inventory`] (`inventory`),
//! [`Payments`] (`accounts`), and [`OrderNotification`] (run inside the notifications module).

use chrono::Utc;
use entities::{accounts, inventory, notifications, orders, saga_commands};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, Set,
    TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde_json::json;
use uuid::Uuid;

use super::{
    machine::Action,
    order::OrderRequest,
    protocol::{CommandData, REPLY_EVENT, REPLY_KEY, Reply},
};
use crate::{
    broker::{
        envelope::{Event, Meta},
        names::REPLIES_EXCHANGE,
        publisher::Publisher,
    },
    jobs::{Consumer, Job, JobError},
};

/// What a participant did with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// Refused for a business reason (short stock, short balance): the saga rolls back.
    Refused(String),
}

/// A saga participant: what a command does to its tables.
#[async_trait::async_trait]
pub trait Participant: Send + Sync + 'static {
    /// Module name (`inventory`).
    fn name(&self) -> &str;

    /// The queue its commands arrive on (`warren.inventory`).
    fn queue(&self) -> &str;

    /// Applies `cmd` (routing key `command`) inside `txn`. The caller commits on
    /// [`Outcome::Applied`] and rolls back otherwise.
    async fn apply(
        &self,
        txn: &DatabaseTransaction,
        command: &str,
        cmd: &CommandData,
    ) -> Result<Outcome, JobError>;
}

/// Runs a [`Participant`] as a consumer module.
#[derive(Debug, Clone)]
pub struct ParticipantConsumer<P> {
    participant: P,
    db: DatabaseConnection,
    publisher: Publisher,
}

fn fault(doing: &str) -> impl FnOnce(sea_orm::DbErr) -> JobError + '_ {
    move |e| JobError::Error(format!("{doing}: {e}"))
}

impl<P: Participant> ParticipantConsumer<P> {
    /// `participant`, storing in `db` and replying through `publisher`.
    pub fn new(participant: P, db: DatabaseConnection, publisher: Publisher) -> Self {
        Self {
            participant,
            db,
            publisher,
        }
    }

    /// Applies one command (at most once per idempotency key) and replies.
    pub async fn handle_command(&self, job: &Job) -> Result<(), JobError> {
        let cmd: CommandData = job.data()?;
        let expected = format!(
            "{}:{}:{}",
            cmd.saga_id,
            cmd.step,
            match cmd.action {
                Action::Execute => "execute",
                Action::Compensate => "compensate",
            }
        );
        if cmd.idempotency_key != expected {
            return Err(JobError::Invalid(format!(
                "idempotency key {:?} does not match the command (expected {expected:?})",
                cmd.idempotency_key
            )));
        }
        if let Some(done) = saga_commands::Entity::find_by_id(cmd.idempotency_key.clone())
            .one(&self.db)
            .await
            .map_err(fault("cannot read saga_commands"))?
        {
            tracing::info!(key = %cmd.idempotency_key, "Command already applied: replying again.");
            return self.reply(job, &cmd, done.ok, done.reason).await;
        }
        let txn = self
            .db
            .begin()
            .await
            .map_err(fault("cannot begin a transaction"))?;
        let outcome = self.participant.apply(&txn, &job.routing_key, &cmd).await?;
        match outcome {
            Outcome::Applied => {
                record(&txn, self.participant.name(), &cmd, true, None).await?;
                txn.commit()
                    .await
                    .map_err(fault("cannot commit the command"))?;
                self.reply(job, &cmd, true, None).await
            }
            Outcome::Refused(reason) => {
                txn.rollback()
                    .await
                    .map_err(fault("cannot roll the command back"))?;
                tracing::info!(key = %cmd.idempotency_key, %reason, "Command refused.");
                if cmd.action == Action::Execute {
                    record(
                        &self.db,
                        self.participant.name(),
                        &cmd,
                        false,
                        Some(reason.clone()),
                    )
                    .await?;
                }
                self.reply(job, &cmd, false, Some(reason)).await
            }
        }
    }

    /// The runner gave up on a command: tell the orchestrator, so the saga moves on.
    pub async fn give_up(&self, job: &Job, error: &str) {
        let Ok(cmd) = job.data::<CommandData>() else {
            return;
        };
        let reason = format!(
            "{} gave up on {} after {} attempt(s): {error}",
            self.participant.name(),
            job.routing_key,
            job.attempt
        );
        // An execute that was applied after all (only its reply failed) says so; one that was
        // not is recorded as refused, so a replay from the dead-letter queue cannot apply it
        // after the saga rolled back.
        if cmd.action == Action::Execute {
            match saga_commands::Entity::find_by_id(cmd.idempotency_key.clone())
                .one(&self.db)
                .await
            {
                Ok(Some(done)) => {
                    let _ = self.reply(job, &cmd, done.ok, done.reason).await;
                    return;
                }
                Ok(None) => {
                    if let Err(e) = record(
                        &self.db,
                        self.participant.name(),
                        &cmd,
                        false,
                        Some(reason.clone()),
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "Cannot record the refusal of a command given up on.");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "Cannot read saga_commands."),
            }
        }
        if let Err(e) = self.reply(job, &cmd, false, Some(reason)).await {
            tracing::error!(error = %e, saga_id = %cmd.saga_id,
                "Cannot reply a failure to the orchestrator; the step's deadline will end it.");
        }
    }

    async fn reply(
        &self,
        job: &Job,
        cmd: &CommandData,
        ok: bool,
        reason: Option<String>,
    ) -> Result<(), JobError> {
        let reply = Reply {
            saga_id: cmd.saga_id,
            step: cmd.step,
            action: cmd.action,
            ok,
            reason,
        };
        let event = Event::new(
            REPLY_EVENT,
            Some(cmd.saga_id.to_string()),
            serde_json::to_value(&reply).unwrap_or_default(),
        );
        let mut meta = Meta::for_event(&event);
        meta.correlation_id = Some(cmd.saga_id.to_string());
        meta.traceparent.clone_from(&job.traceparent);
        meta.request_id.clone_from(&job.request_id);
        self.publisher
            .publish(
                REPLIES_EXCHANGE,
                REPLY_KEY,
                &event.to_json(),
                meta.properties(),
            )
            .await
            .map_err(|e| JobError::Error(format!("cannot reply to the orchestrator: {e}")))
    }
}

async fn record<C: sea_orm::ConnectionTrait>(
    db: &C,
    participant: &str,
    cmd: &CommandData,
    ok: bool,
    reason: Option<String>,
) -> Result<(), JobError> {
    saga_commands::Entity::insert(saga_commands::ActiveModel {
        idempotency_key: Set(cmd.idempotency_key.clone()),
        participant: Set(participant.to_owned()),
        saga_id: Set(cmd.saga_id),
        ok: Set(ok),
        reason: Set(reason),
        applied_at: Set(Utc::now()),
    })
    .exec_without_returning(db)
    .await
    .map(drop)
    // A concurrent duplicate got there first: the retry will find its record and reply.
    .map_err(fault("cannot record the idempotency key"))
}

#[async_trait::async_trait]
impl<P: Participant> Consumer for ParticipantConsumer<P> {
    fn name(&self) -> &str {
        self.participant.name()
    }

    fn queue(&self) -> &str {
        self.participant.queue()
    }

    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(30)
    }

    fn use_inbox(&self) -> bool {
        // `saga_commands` is this consumer's inbox, written in the effect's transaction.
        false
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.handle_command(job).await
    }

    async fn on_failed(&self, job: &Job, error: &str) {
        self.give_up(job, error).await;
    }
}

fn order(cmd: &CommandData) -> Result<OrderRequest, JobError> {
    serde_json::from_value(cmd.payload.clone())
        .map_err(|e| JobError::Invalid(format!("the saga payload is not an order: {e}")))
}

fn unknown(participant: &str, command: &str) -> JobError {
    JobError::Invalid(format!("{participant} has no command {command:?}"))
}

/// The orders service: `order.create` inserts an order (`created`), `order.cancel` cancels it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Orders;

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
            return Ok(Outcome::Applied);
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

/// The notification step: `notification.send` stores the "order created" notification for
/// the buyer. It has no compensation (a sent notification cannot be unsent).
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderNotification;

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
