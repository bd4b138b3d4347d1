//! `processed_messages`: the consumer inbox. A row (consumer, message id) means that consumer
//! already applied the message, so a redelivery or duplicate has its effect once.

use sea_orm::entity::prelude::*;

/// One message applied by one consumer.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "processed_messages")]
pub struct Model {
    /// The consumer (queue or module name).
    #[sea_orm(primary_key, auto_increment = false)]
    pub consumer: String,
    /// The message id (UUID v7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: Uuid,
    /// When it was applied.
    pub processed_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
