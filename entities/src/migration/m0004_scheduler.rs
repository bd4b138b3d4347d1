//! The scheduler's `schedule_ticks` table.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum ScheduleTicks {
    Table,
    Schedule,
    TickAt,
    FiredBy,
    FiredAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ScheduleTicks::Table)
                    .if_not_exists()
                    .col(string(ScheduleTicks::Schedule))
                    .col(timestamp_with_time_zone(ScheduleTicks::TickAt))
                    .col(string(ScheduleTicks::FiredBy))
                    .col(timestamp_with_time_zone(ScheduleTicks::FiredAt))
                    .primary_key(
                        Index::create()
                            .col(ScheduleTicks::Schedule)
                            .col(ScheduleTicks::TickAt),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ScheduleTicks::Table).to_owned())
            .await
    }
}
