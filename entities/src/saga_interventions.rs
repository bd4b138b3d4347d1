//! `saga_interventions`: compensations that failed for good, for an operator to retry or
//! resolve by hand.

use sea_orm::entity::prelude::*;

/// One failed compensation.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "saga_interventions")]
pub struct Model {
    /// Row id (UUID v7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The saga.
    pub saga_id: Uuid,
    /// Step index.
    pub step: i32,
    /// Step name.
    pub step_name: String,
    /// The compensation command that failed (`inventory.restore`).
    pub compensation: String,
    /// Why it failed.
    #[sea_orm(column_type = "Text")]
    pub reason: String,
    /// `open`, `retrying`, `resolved`.
    pub status: String,
    /// How it was closed: the operator's note, or that a retry succeeded.
    #[sea_orm(column_type = "Text", nullable)]
    pub note: Option<String>,
    /// When it was opened.
    pub created_at: DateTimeUtc,
    /// Last change.
    pub updated_at: DateTimeUtc,
    /// When it was resolved.
    pub resolved_at: Option<DateTimeUtc>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
