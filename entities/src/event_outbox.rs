//! `event_outbox`: events and jobs the HTTP front accepted while the broker could not confirm
//! them. The relay publishes them in `seq` order and deletes each once confirmed.

use sea_orm::entity::prelude::*;

/// One accepted message waiting for the broker.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "event_outbox")]
pub struct Model {
    /// Insertion order; the relay publishes one aggregate's rows in this order.
    #[sea_orm(primary_key)]
    pub seq: i64,
    /// The message id (the event or job id), kept when published, so consumers that already
    /// saw it (a confirm that came too late) drop the repeat.
    #[sea_orm(unique)]
    pub id: Uuid,
    /// `warren.events` or `warren.commands`.
    pub exchange: String,
    /// Routing key: the event or job name (also the AMQP `type`).
    pub routing_key: String,
    /// The aggregate whose events must leave in order, when the publisher named one.
    pub aggregate_id: Option<String>,
    /// The JSON body exactly as it is published.
    #[sea_orm(column_type = "Text")]
    pub body: String,
    /// AMQP `correlation_id`.
    pub correlation_id: Option<String>,
    /// `x-request-id` header.
    pub request_id: Option<String>,
    /// W3C `traceparent` header.
    pub traceparent: Option<String>,
    /// When it was accepted (also the AMQP `timestamp`).
    pub created_at: DateTimeUtc,
    /// Relay attempts the broker refused for this row itself (not outages).
    pub attempts: i32,
    /// The broker's reason for the last refusal.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
