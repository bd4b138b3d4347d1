//! The first tables: `audit_log` and the `processed_messages` inbox.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum AuditLog {
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

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AuditLog::Table)
                    .if_not_exists()
                    .col(pk_uuid(AuditLog::EventId))
                    .col(string(AuditLog::EventName))
                    .col(string_null(AuditLog::AggregateId))
                    .col(timestamp_with_time_zone(AuditLog::OccurredOn))
                    .col(json(AuditLog::Data))
                    .col(timestamp_with_time_zone(AuditLog::RecordedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_audit_log_event_name")
                    .table(AuditLog::Table)
                    .col(AuditLog::EventName)
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
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ProcessedMessages::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(AuditLog::Table).to_owned())
            .await
    }
}
