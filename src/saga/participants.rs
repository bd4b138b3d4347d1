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
//! The participants themselves are modules (`crate::modules::orders`, `inventory`,
//! `payments`, `order_notification`): a new participant is a copy of one of them.

use chrono::Utc;
use entities::saga_commands;
use sea_orm::{DatabaseConnection, DatabaseTransaction, EntityTrait, Set, TransactionTrait};

use super::{
    machine::Action,
    order::OrderRequest,
    protocol::{CommandData, REPLY_EVENT, REPLY_KEY, Reply},
};
use crate::{
    broker::{envelope::Outgoing, names::REPLIES_EXCHANGE, publisher::Publisher},
    jobs::{Consumer, Job, JobError},
};

/// What a participant did with a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied.
    Applied,
    /// Applied, with a result the saga keeps for its later commands (`results`).
    AppliedWith(serde_json::Value),
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

/// A database error while `doing` something, as a fault the runner retries.
pub fn fault(doing: &str) -> impl FnOnce(sea_orm::DbErr) -> JobError + '_ {
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
        check_key(&cmd)?;
        // `saga_commands` is this consumer's inbox: when it cannot be read (the database
        // away or its pool exhausted), the command goes back to its queue with its attempt
        // kept, as the runner does when its inbox is unavailable, instead of spending an
        // attempt on a command that never ran.
        let done = recorded(&self.db, &cmd).await.map_err(|e| {
            JobError::Deferred(format!("the participant's inbox is unavailable: {e}"))
        })?;
        if let Some(done) = done {
            tracing::info!(key = %cmd.idempotency_key, "Command already applied: replying again.");
            return self.reply(job, &cmd, done).await;
        }
        let txn = self
            .db
            .begin()
            .await
            .map_err(fault("cannot begin a transaction"))?;
        let outcome = self.participant.apply(&txn, &job.routing_key, &cmd).await?;
        match outcome {
            Outcome::Applied | Outcome::AppliedWith(_) => {
                let result = match outcome {
                    Outcome::AppliedWith(r) => Some(r),
                    _ => None,
                };
                let done = Answer::done(result);
                if let Err(e) = record(&txn, self.participant.name(), &cmd, &done).await {
                    // A concurrent delivery of the same command (a redelivery after a lost
                    // connection, while this one ran) recorded first: this effect rolls back
                    // and the first one's answer is replied.
                    drop(txn);
                    return self.reply_recorded(job, &cmd, e).await;
                }
                txn.commit()
                    .await
                    .map_err(fault("cannot commit the command"))?;
                self.reply(job, &cmd, done).await
            }
            Outcome::Refused(reason) => {
                txn.rollback()
                    .await
                    .map_err(fault("cannot roll the command back"))?;
                tracing::info!(key = %cmd.idempotency_key, %reason, "Command refused.");
                let refused = Answer::refused(reason);
                if cmd.action == Action::Execute
                    && let Err(e) = record(&self.db, self.participant.name(), &cmd, &refused).await
                {
                    return self.reply_recorded(job, &cmd, e).await;
                }
                self.reply(job, &cmd, refused).await
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
        give_up(
            &self.db,
            &self.publisher,
            self.participant.name(),
            job,
            &cmd,
            reason,
        )
        .await;
    }

    async fn reply(&self, job: &Job, cmd: &CommandData, answer: Answer) -> Result<(), JobError> {
        send_reply(&self.publisher, job, cmd, answer).await
    }

    /// Recording `cmd`'s answer failed with `error`: when a concurrent delivery recorded one
    /// first, that answer is replied (and this delivery is done); otherwise `error` stands.
    async fn reply_recorded(
        &self,
        job: &Job,
        cmd: &CommandData,
        error: JobError,
    ) -> Result<(), JobError> {
        match recorded(&self.db, cmd).await? {
            Some(first) => {
                tracing::info!(key = %cmd.idempotency_key,
                    "A concurrent delivery of the command recorded first: replying its answer.");
                self.reply(job, cmd, first).await
            }
            None => Err(error),
        }
    }
}

/// A participant's answer to one command, as recorded and replied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Applied (true) or refused.
    pub ok: bool,
    /// Why not.
    pub reason: Option<String>,
    /// What a success returned.
    pub result: Option<serde_json::Value>,
}

impl Answer {
    /// Applied, with `result`.
    pub(crate) fn done(result: Option<serde_json::Value>) -> Self {
        Self {
            ok: true,
            reason: None,
            result,
        }
    }

    /// Refused for `reason`.
    pub(crate) fn refused(reason: String) -> Self {
        Self {
            ok: false,
            reason: Some(reason),
            result: None,
        }
    }
}

/// `Invalid` unless the command's idempotency key is `saga_id:step:action`.
pub(crate) fn check_key(cmd: &CommandData) -> Result<(), JobError> {
    let expected = format!(
        "{}:{}:{}",
        cmd.saga_id,
        cmd.step,
        match cmd.action {
            Action::Execute => "execute",
            Action::Compensate => "compensate",
        }
    );
    if cmd.idempotency_key == expected {
        Ok(())
    } else {
        Err(JobError::Invalid(format!(
            "idempotency key {:?} does not match the command (expected {expected:?})",
            cmd.idempotency_key
        )))
    }
}

/// The answer recorded for `cmd`'s idempotency key, if a participant recorded one.
pub(crate) async fn recorded(
    db: &DatabaseConnection,
    cmd: &CommandData,
) -> Result<Option<Answer>, JobError> {
    Ok(
        saga_commands::Entity::find_by_id(cmd.idempotency_key.clone())
            .one(db)
            .await
            .map_err(fault("cannot read saga_commands"))?
            .map(|done| Answer {
                ok: done.ok,
                reason: done.reason,
                result: done.result,
            }),
    )
}

/// Sends `answer` to `cmd` to the orchestrator (`warren.replies`, key `saga`, correlated by
/// the saga id), confirmed.
pub(crate) async fn send_reply(
    publisher: &Publisher,
    job: &Job,
    cmd: &CommandData,
    answer: Answer,
) -> Result<(), JobError> {
    let reply = Reply {
        saga_id: cmd.saga_id,
        step: cmd.step,
        action: cmd.action,
        ok: answer.ok,
        reason: answer.reason,
        result: answer.result,
    };
    let message = Outgoing::event(
        REPLY_EVENT,
        Some(cmd.saga_id.to_string()),
        serde_json::to_value(&reply).unwrap_or_default(),
    )
    .caused_by(job)
    .correlated(cmd.saga_id.to_string());
    publisher
        .send(REPLIES_EXCHANGE, Some(REPLY_KEY), &message)
        .await
        .map_err(|e| JobError::Error(format!("cannot reply to the orchestrator: {e}")))
}

/// The give-up reply: the runner parked `cmd` after its retries (`reason` says why). An
/// execute that was applied after all (only its reply failed) replies what was recorded; one
/// that was not is recorded as refused, so a replay from the dead-letter queue cannot apply
/// it after the saga rolled back. A compensation is never recorded refused: an operator's
/// retry sends it again.
pub(crate) async fn give_up(
    db: &DatabaseConnection,
    publisher: &Publisher,
    participant: &str,
    job: &Job,
    cmd: &CommandData,
    reason: String,
) {
    let mut answer = Answer::refused(reason);
    match recorded(db, cmd).await {
        Ok(Some(done)) => answer = done,
        Ok(None) if cmd.action == Action::Execute => {
            if let Err(e) = record(db, participant, cmd, &answer).await {
                tracing::warn!(error = %e, "Cannot record the refusal of a command given up on.");
            }
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "Cannot read saga_commands."),
    }
    if let Err(e) = send_reply(publisher, job, cmd, answer).await {
        tracing::error!(error = %e, saga_id = %cmd.saga_id,
            "Cannot reply a failure to the orchestrator; the step's deadline will end it.");
    }
}

/// Records `answer` under `cmd`'s idempotency key. A concurrent duplicate that got there
/// first makes this fail: the retry finds its record and replies it.
pub(crate) async fn record<C: sea_orm::ConnectionTrait>(
    db: &C,
    participant: &str,
    cmd: &CommandData,
    answer: &Answer,
) -> Result<(), JobError> {
    saga_commands::Entity::insert(saga_commands::ActiveModel {
        idempotency_key: Set(cmd.idempotency_key.clone()),
        participant: Set(participant.to_owned()),
        saga_id: Set(cmd.saga_id),
        ok: Set(answer.ok),
        reason: Set(answer.reason.clone()),
        applied_at: Set(Utc::now()),
        result: Set(answer.result.clone()),
    })
    .exec_without_returning(db)
    .await
    .map(drop)
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

/// The saga's payload as an order (the order saga's participants all read it).
pub fn order(cmd: &CommandData) -> Result<OrderRequest, JobError> {
    serde_json::from_value(cmd.payload.clone())
        .map_err(|e| JobError::Invalid(format!("the saga payload is not an order: {e}")))
}

/// The error for a command `participant` does not take (the message is parked at once).
pub fn unknown(participant: &str, command: &str) -> JobError {
    JobError::Invalid(format!("{participant} has no command {command:?}"))
}
