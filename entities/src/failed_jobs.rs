//! `failed_jobs`: one row per message the consumer runtime parked in a dead-letter queue (the
//! article's `onFailed` record for manual action), with the reason and attempt count.

use sea_orm::entity::prelude::*;

/// One parked job.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "failed_jobs")]
pub struct Model {
    /// Row id (UUID v7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The work queue the job came from (`warren.email`).
    pub queue: String,
    /// The message id (kept across retries); `None` when the message had none or an
    /// unparseable one.
    pub message_id: Option<Uuid>,
    /// The message type (event or command name), when known.
    pub job_name: Option<String>,
    /// Attempts made.
    pub attempts: i32,
    /// Why it was parked.
    pub error: String,
    /// `exhausted`, `invalid`, `undecodable`.
    pub reason: String,
    /// The raw body, lossily as UTF-8.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// `parked`, then `retried` once an operator replays it.
    pub status: String,
    /// When it was parked.
    pub failed_at: DateTimeUtc,
    /// When it was last changed by an operator.
    pub updated_at: Option<DateTimeUtc>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
