//! `email_log`: one row per e-mail attempt's outcome (the article's
//! `email_log(email, subject, status, send_time, job_id)`).

use sea_orm::entity::prelude::*;

/// One attempt to send one e-mail.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "email_log")]
pub struct Model {
    /// Row id (UUID v7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The job's message id (kept across retries).
    pub job_id: Uuid,
    /// Recipient.
    pub email: String,
    /// Subject.
    pub subject: String,
    /// `sent`, `failed` (the server refused), `error` (could not talk to the server).
    pub status: String,
    /// The server's answer or the error, when not sent.
    pub error: Option<String>,
    /// Attempt number, 1-based.
    pub attempt: i32,
    /// When the attempt finished.
    pub send_time: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
