//! Sagas keep the definition they started with, and the `Idempotency-Key` they were started
//! with over HTTP: `sagas.definition` (a copy of the definition, JSON), `sagas.definition_hash`
//! (its SHA-256, the version shown in views) and `sagas.idempotency_key` (unique per kind).
//! Sagas stored before this migration have none and run the definition loaded now.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum Sagas {
    Table,
    Kind,
    Definition,
    DefinitionHash,
    IdempotencyKey,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one column per ALTER TABLE.
        for col in [
            json_null(Sagas::Definition),
            string_null(Sagas::DefinitionHash),
            string_null(Sagas::IdempotencyKey),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Sagas::Table)
                        .add_column(col)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_sagas_kind_idempotency_key")
                    .table(Sagas::Table)
                    .col(Sagas::Kind)
                    .col(Sagas::IdempotencyKey)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_sagas_kind_idempotency_key")
                    .table(Sagas::Table)
                    .to_owned(),
            )
            .await?;
        for col in [
            Sagas::IdempotencyKey,
            Sagas::DefinitionHash,
            Sagas::Definition,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Sagas::Table)
                        .drop_column(col)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
