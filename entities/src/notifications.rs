//! `notifications`: in-app notifications stored by the notifications module from `order.*`
//! and `user.*` events.

use sea_orm::entity::prelude::*;

/// One in-app notification.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "notifications")]
pub struct Model {
    /// Row id (UUID v7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The user it is for (`data.user_id`, else the event's aggregate id), when known.
    pub user_id: Option<String>,
    /// The event that caused it.
    pub event_id: Uuid,
    /// That event's name.
    pub event_name: String,
    /// A one-line title.
    pub title: String,
    /// The event's data.
    pub data: Json,
    /// When it was stored.
    pub created_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
