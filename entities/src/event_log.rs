//! `event_log`: every event warren saw, written by the audit listener (and, with the consumer
//! runtime, by the audit module). Keyed by event id, so recording an event twice is a no-op.

use sea_orm::entity::prelude::*;

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "event_log")]
pub struct Model {
    /// The event's id (UUID v7).
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: Uuid,
    /// `segment.segment`.
    pub event_name: String,
    /// The entity the event is about.
    pub aggregate_id: Option<String>,
    /// When the event happened.
    pub occurred_on: DateTimeUtc,
    /// The event's payload.
    pub data: Json,
    /// When warren recorded it.
    pub recorded_at: DateTimeUtc,
    /// The CloudEvents attributes of an event that came from outside as a CloudEvent (its own
    /// `id`, `source`, `datacontenttype`, `dataschema`, extensions); absent for warren's own.
    #[sea_orm(nullable)]
    pub cloudevent: Option<Json>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
