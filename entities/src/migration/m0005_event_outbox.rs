//! The HTTP front's `event_outbox`: events and jobs accepted while the broker could not
//! confirm them, published later, in order, by the relay.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum EventOutbox {
    Table,
    Seq,
    Id,
    Exchange,
    RoutingKey,
    AggregateId,
    Body,
    CorrelationId,
    RequestId,
    Traceparent,
    CreatedAt,
    Attempts,
    LastError,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EventOutbox::Table)
                    .if_not_exists()
                    // Insertion order: the relay publishes by it, so one aggregate's events
                    // leave in the order they were accepted.
                    .col(big_pk_auto(EventOutbox::Seq))
                    .col(uuid_uniq(EventOutbox::Id))
                    .col(string(EventOutbox::Exchange))
                    .col(string(EventOutbox::RoutingKey))
                    .col(string_null(EventOutbox::AggregateId))
                    .col(text(EventOutbox::Body))
                    .col(string_null(EventOutbox::CorrelationId))
                    .col(string_null(EventOutbox::RequestId))
                    .col(string_null(EventOutbox::Traceparent))
                    .col(timestamp_with_time_zone(EventOutbox::CreatedAt))
                    .col(integer(EventOutbox::Attempts).default(0))
                    .col(text_null(EventOutbox::LastError))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_event_outbox_aggregate_id")
                    .table(EventOutbox::Table)
                    .col(EventOutbox::AggregateId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(EventOutbox::Table).to_owned())
            .await
    }
}
