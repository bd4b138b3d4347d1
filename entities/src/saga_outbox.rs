//! `saga_outbox`: commands the orchestrator decided to send, stored in the same transaction as
//! the saga state that sent them and deleted once the broker confirmed them.

use sea_orm::entity::prelude::*;

/// One command waiting for the broker's confirm.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "saga_outbox")]
pub struct Model {
    /// Also the message id of the published command (UUID v7, so ids sort in time order).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The saga.
    pub saga_id: Uuid,
    /// Routing key on `warren.commands`.
    pub routing_key: String,
    /// The full warren envelope to publish.
    pub body: Json,
    /// The W3C `traceparent` to carry.
    pub traceparent: Option<String>,
    /// When it was stored.
    pub created_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
