//! `operator_actions`: the console's audit log of operator actions (who, what, when, how many
//! messages moved), and the progress and lock of long dead-letter operations.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum OperatorActions {
    Table,
    Id,
    Actor,
    Action,
    Target,
    Detail,
    Status,
    Matched,
    Moved,
    Error,
    LockKey,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OperatorActions::Table)
                    .if_not_exists()
                    .col(uuid(OperatorActions::Id).primary_key())
                    .col(string(OperatorActions::Actor))
                    .col(string(OperatorActions::Action))
                    .col(string(OperatorActions::Target))
                    .col(json(OperatorActions::Detail))
                    .col(string(OperatorActions::Status))
                    .col(big_integer_null(OperatorActions::Matched))
                    .col(big_integer(OperatorActions::Moved).default(0))
                    .col(text_null(OperatorActions::Error))
                    // Set while an operation runs on its target; unique, so a second operation
                    // on the same queue is refused. NULLs do not collide (PostgreSQL, SQLite).
                    .col(string_null(OperatorActions::LockKey).unique_key())
                    .col(timestamp_with_time_zone(OperatorActions::CreatedAt))
                    .col(timestamp_with_time_zone(OperatorActions::UpdatedAt))
                    .col(timestamp_with_time_zone_null(OperatorActions::FinishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_operator_actions_created_at")
                    .table(OperatorActions::Table)
                    .col(OperatorActions::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OperatorActions::Table).to_owned())
            .await
    }
}
