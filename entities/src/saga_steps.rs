//! `saga_steps`: a saga's timeline: every command sent, reply received, deadline passed and
//! operator action, with its time and reason.

use sea_orm::entity::prelude::*;

/// One entry of a saga's timeline.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "saga_steps")]
pub struct Model {
    /// Entry id (UUID v7, so ids sort in time order).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The saga.
    pub saga_id: Uuid,
    /// Step index.
    pub step: i32,
    /// Step name (`deduct_inventory`).
    pub step_name: String,
    /// `execute` or `compensate`.
    pub action: String,
    /// `sent`, `succeeded`, `failed`, `deadline_passed`, `retried`, `resolved`.
    pub event: String,
    /// The command's routing key, for `sent`.
    pub command: Option<String>,
    /// Why, for failures, deadlines and operator notes.
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    /// When.
    pub at: DateTimeUtc,
    /// What the participant returned with the reply (a success's JSON result), if anything.
    pub result: Option<Json>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
