//! Idempotent publish (issue 20): `idempotency_keys`, the answer warren gave under an
//! `Idempotency-Key` (per caller and route) or to a CloudEvent (its `source` + `id`), kept for
//! the retention window (`http.idempotency_retention_secs`) so a retry is answered the same
//! and has no second effect; and `event_log.cloudevent`, the CloudEvents attributes of an
//! event that came from outside (its own `id`, `source`, extensions), shown by the audit log.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum IdempotencyKeys {
    Table,
    Scope,
    Key,
    Fingerprint,
    Status,
    Answer,
    CreatedAt,
}

#[derive(DeriveIden)]
enum EventLog {
    Table,
    Cloudevent,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(IdempotencyKeys::Table)
                    .if_not_exists()
                    .col(string(IdempotencyKeys::Scope))
                    .col(string(IdempotencyKeys::Key))
                    .col(string(IdempotencyKeys::Fingerprint))
                    .col(small_integer(IdempotencyKeys::Status))
                    .col(json(IdempotencyKeys::Answer))
                    .col(timestamp_with_time_zone(IdempotencyKeys::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(IdempotencyKeys::Scope)
                            .col(IdempotencyKeys::Key),
                    )
                    .to_owned(),
            )
            .await?;
        // The maintenance job deletes by age.
        manager
            .create_index(
                Index::create()
                    .name("idx_idempotency_keys_created_at")
                    .table(IdempotencyKeys::Table)
                    .col(IdempotencyKeys::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(EventLog::Table)
                    .add_column_if_not_exists(json_null(EventLog::Cloudevent))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(EventLog::Table)
                    .drop_column(EventLog::Cloudevent)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(IdempotencyKeys::Table).to_owned())
            .await
    }
}
