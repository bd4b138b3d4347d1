//! `saga_commands`: the idempotency keys (`saga_id:step:action`) saga participants applied
//! (or refused), with the reply they sent, so a redelivered command is answered again but
//! never applied twice.

use sea_orm::entity::prelude::*;

/// One applied (or refused) command.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "saga_commands")]
pub struct Model {
    /// `saga_id:step:action`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub idempotency_key: String,
    /// The participant module (`inventory`).
    pub participant: String,
    /// The saga.
    pub saga_id: Uuid,
    /// Whether it was applied (false: refused, e.g. short stock).
    pub ok: bool,
    /// Why it was refused.
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    /// When.
    pub applied_at: DateTimeUtc,
    /// The result the participant answered with (replied again on a redelivery).
    pub result: Option<Json>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
