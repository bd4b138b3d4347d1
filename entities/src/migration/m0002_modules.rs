//! Tables of the e-mail and notifications modules: `email_log` and `notifications`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum EmailLog {
    Table,
    Id,
    JobId,
    Email,
    Subject,
    Status,
    Error,
    Attempt,
    SendTime,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    UserId,
    EventId,
    EventName,
    Title,
    Data,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(EmailLog::Table)
                    .if_not_exists()
                    .col(pk_uuid(EmailLog::Id))
                    .col(uuid(EmailLog::JobId))
                    .col(string(EmailLog::Email))
                    .col(string(EmailLog::Subject))
                    .col(string(EmailLog::Status))
                    .col(text_null(EmailLog::Error))
                    .col(integer(EmailLog::Attempt))
                    .col(timestamp_with_time_zone(EmailLog::SendTime))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_email_log_job_id")
                    .table(EmailLog::Table)
                    .col(EmailLog::JobId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Notifications::Table)
                    .if_not_exists()
                    .col(pk_uuid(Notifications::Id))
                    .col(string_null(Notifications::UserId))
                    .col(uuid(Notifications::EventId))
                    .col(string(Notifications::EventName))
                    .col(string(Notifications::Title))
                    .col(json(Notifications::Data))
                    .col(timestamp_with_time_zone(Notifications::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_notifications_user_id")
                    .table(Notifications::Table)
                    .col(Notifications::UserId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Notifications::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(EmailLog::Table).to_owned())
            .await
    }
}
