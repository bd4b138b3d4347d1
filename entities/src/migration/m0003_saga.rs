//! Tables of the order saga: the orchestrator's `sagas`, `saga_steps`, `saga_outbox` and
//! `saga_interventions`; the participants' `saga_commands`, `orders`, `inventory` and
//! `accounts`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum Sagas {
    Table,
    Id,
    Kind,
    BusinessKey,
    Status,
    Step,
    Payload,
    State,
    Version,
    DeadlineAt,
    DeadlineStep,
    DeadlineAction,
    Reason,
    Traceparent,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum SagaSteps {
    Table,
    Id,
    SagaId,
    Step,
    StepName,
    Action,
    Event,
    Command,
    Reason,
    At,
}

#[derive(DeriveIden)]
enum SagaOutbox {
    Table,
    Id,
    SagaId,
    RoutingKey,
    Body,
    Traceparent,
    CreatedAt,
}

#[derive(DeriveIden)]
enum SagaInterventions {
    Table,
    Id,
    SagaId,
    Step,
    StepName,
    Compensation,
    Reason,
    Status,
    Note,
    CreatedAt,
    UpdatedAt,
    ResolvedAt,
}

#[derive(DeriveIden)]
enum SagaCommands {
    Table,
    IdempotencyKey,
    Participant,
    SagaId,
    Ok,
    Reason,
    AppliedAt,
}

#[derive(DeriveIden)]
enum Orders {
    Table,
    Id,
    OrderNo,
    SagaId,
    UserId,
    Items,
    TotalAmount,
    Status,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Inventory {
    Table,
    Sku,
    Stock,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    UserId,
    Balance,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Sagas::Table)
                    .if_not_exists()
                    .col(pk_uuid(Sagas::Id))
                    .col(string(Sagas::Kind))
                    .col(string_null(Sagas::BusinessKey))
                    .col(string(Sagas::Status))
                    .col(integer(Sagas::Step))
                    .col(json(Sagas::Payload))
                    .col(json(Sagas::State))
                    .col(big_integer(Sagas::Version))
                    .col(timestamp_with_time_zone_null(Sagas::DeadlineAt))
                    .col(integer_null(Sagas::DeadlineStep))
                    .col(string_null(Sagas::DeadlineAction))
                    .col(text_null(Sagas::Reason))
                    .col(string_null(Sagas::Traceparent))
                    .col(timestamp_with_time_zone(Sagas::CreatedAt))
                    .col(timestamp_with_time_zone(Sagas::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Sagas::FinishedAt))
                    .to_owned(),
            )
            .await?;
        for (name, cols) in [(
            "idx_sagas_kind_business_key",
            vec![Sagas::Kind, Sagas::BusinessKey],
        )] {
            let mut idx = Index::create();
            idx.name(name).table(Sagas::Table).unique().if_not_exists();
            for c in cols {
                idx.col(c);
            }
            manager.create_index(idx.to_owned()).await?;
        }
        for (name, col) in [
            ("idx_sagas_deadline_at", Sagas::DeadlineAt),
            ("idx_sagas_status", Sagas::Status),
            ("idx_sagas_created_at", Sagas::CreatedAt),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(Sagas::Table)
                        .col(col)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(SagaSteps::Table)
                    .if_not_exists()
                    .col(pk_uuid(SagaSteps::Id))
                    .col(uuid(SagaSteps::SagaId))
                    .col(integer(SagaSteps::Step))
                    .col(string(SagaSteps::StepName))
                    .col(string(SagaSteps::Action))
                    .col(string(SagaSteps::Event))
                    .col(string_null(SagaSteps::Command))
                    .col(text_null(SagaSteps::Reason))
                    .col(timestamp_with_time_zone(SagaSteps::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_saga_steps_saga_id")
                    .table(SagaSteps::Table)
                    .col(SagaSteps::SagaId)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SagaOutbox::Table)
                    .if_not_exists()
                    .col(pk_uuid(SagaOutbox::Id))
                    .col(uuid(SagaOutbox::SagaId))
                    .col(string(SagaOutbox::RoutingKey))
                    .col(json(SagaOutbox::Body))
                    .col(string_null(SagaOutbox::Traceparent))
                    .col(timestamp_with_time_zone(SagaOutbox::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_saga_outbox_created_at")
                    .table(SagaOutbox::Table)
                    .col(SagaOutbox::CreatedAt)
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SagaInterventions::Table)
                    .if_not_exists()
                    .col(pk_uuid(SagaInterventions::Id))
                    .col(uuid(SagaInterventions::SagaId))
                    .col(integer(SagaInterventions::Step))
                    .col(string(SagaInterventions::StepName))
                    .col(string(SagaInterventions::Compensation))
                    .col(text(SagaInterventions::Reason))
                    .col(string(SagaInterventions::Status))
                    .col(text_null(SagaInterventions::Note))
                    .col(timestamp_with_time_zone(SagaInterventions::CreatedAt))
                    .col(timestamp_with_time_zone(SagaInterventions::UpdatedAt))
                    .col(timestamp_with_time_zone_null(SagaInterventions::ResolvedAt))
                    .to_owned(),
            )
            .await?;
        for (name, col) in [
            ("idx_saga_interventions_saga_id", SagaInterventions::SagaId),
            ("idx_saga_interventions_status", SagaInterventions::Status),
        ] {
            manager
                .create_index(
                    Index::create()
                        .name(name)
                        .table(SagaInterventions::Table)
                        .col(col)
                        .if_not_exists()
                        .to_owned(),
                )
                .await?;
        }

        manager
            .create_table(
                Table::create()
                    .table(SagaCommands::Table)
                    .if_not_exists()
                    .col(string(SagaCommands::IdempotencyKey).primary_key())
                    .col(string(SagaCommands::Participant))
                    .col(uuid(SagaCommands::SagaId))
                    .col(boolean(SagaCommands::Ok))
                    .col(text_null(SagaCommands::Reason))
                    .col(timestamp_with_time_zone(SagaCommands::AppliedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Orders::Table)
                    .if_not_exists()
                    .col(pk_uuid(Orders::Id))
                    .col(string_uniq(Orders::OrderNo))
                    .col(uuid(Orders::SagaId))
                    .col(string(Orders::UserId))
                    .col(json(Orders::Items))
                    .col(big_integer(Orders::TotalAmount))
                    .col(string(Orders::Status))
                    .col(timestamp_with_time_zone(Orders::CreatedAt))
                    .col(timestamp_with_time_zone(Orders::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Inventory::Table)
                    .if_not_exists()
                    .col(string(Inventory::Sku).primary_key())
                    .col(big_integer(Inventory::Stock))
                    .col(timestamp_with_time_zone(Inventory::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .if_not_exists()
                    .col(string(Accounts::UserId).primary_key())
                    .col(big_integer(Accounts::Balance))
                    .col(timestamp_with_time_zone(Accounts::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Accounts::Table.into_iden(),
            Inventory::Table.into_iden(),
            Orders::Table.into_iden(),
            SagaCommands::Table.into_iden(),
            SagaInterventions::Table.into_iden(),
            SagaOutbox::Table.into_iden(),
            SagaSteps::Table.into_iden(),
            Sagas::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
