//! The first tables: `event_log`, the `processed_messages` inbox and `failed_jobs`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum EventLog {
    Table,
    EventId,
    EventName,
    AggregateId,
    OccurredOn,
    Data,
    RecordedAt,
}

#[derive(DeriveIden)]
enum ProcessedMessages {
    Table,
    Consumer,
    MessageId,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum FailedJobs {
    Table,
    Id,
    Queue,
    MessageId,
    JobName,
    Attempts,
    Error,
    Reason,
    Payload,
    Status,
    FailedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EventLog::Table)
                    .if_not_exists()
                    .col(pk_uuid(EventLog::EventId))
                    .col(string(EventLog::EventName))
                    .col(string_null(EventLog::AggregateId))
                    .col(timestamp_with_time_zone(EventLog::OccurredOn))
                    .col(json(EventLog::Data))
                    .col(timestamp_with_time_zone(EventLog::RecordedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_event_log_event_name")
                    .table(EventLog::Table)
                    .col(EventLog::EventName)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ProcessedMessages::Table)
                    .if_not_exists()
                    .col(string(ProcessedMessages::Consumer))
                    .col(uuid(ProcessedMessages::MessageId))
                    .col(timestamp_with_time_zone(ProcessedMessages::ProcessedAt))
                    .primary_key(
                        Index::create()
                            .col(ProcessedMessages::Consumer)
                            .col(ProcessedMessages::MessageId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(FailedJobs::Table)
                    .if_not_exists()
                    .col(pk_uuid(FailedJobs::Id))
                    .col(string(FailedJobs::Queue))
                    .col(uuid_null(FailedJobs::MessageId))
                    .col(string_null(FailedJobs::JobName))
                    .col(integer(FailedJobs::Attempts))
                    .col(text(FailedJobs::Error))
                    .col(string(FailedJobs::Reason))
                    .col(text(FailedJobs::Payload))
                    .col(string(FailedJobs::Status))
                    .col(timestamp_with_time_zone(FailedJobs::FailedAt))
                    .col(timestamp_with_time_zone_null(FailedJobs::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_failed_jobs_queue_status")
                    .table(FailedJobs::Table)
                    .col(FailedJobs::Queue)
                    .col(FailedJobs::Status)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(FailedJobs::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ProcessedMessages::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(EventLog::Table).to_owned())
            .await
    }
}
