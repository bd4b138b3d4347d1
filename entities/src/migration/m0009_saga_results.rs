//! Saga step results (issue 19): the result a participant returned with each reply, in the
//! timeline (`saga_steps.result`), and the result a participant recorded with an applied
//! command (`saga_commands.result`), so a redelivered command is answered with the same
//! result again. The results a saga keeps for its later commands live in its state
//! (`sagas.state`, `results` by step name).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum SagaSteps {
    Table,
    Result,
}

#[derive(DeriveIden)]
enum SagaCommands {
    Table,
    Result,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(SagaSteps::Table)
                    .add_column_if_not_exists(json_null(SagaSteps::Result))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SagaCommands::Table)
                    .add_column_if_not_exists(json_null(SagaCommands::Result))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(SagaCommands::Table)
                    .drop_column(SagaCommands::Result)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(SagaSteps::Table)
                    .drop_column(SagaSteps::Result)
                    .to_owned(),
            )
            .await
    }
}
