//! The HTTP subscriptions' state: `subscription_status` (each worker's breaker, pause and
//! last error per subscription) and `subscription_controls` (operators' pauses).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum SubscriptionStatus {
    Table,
    Subscription,
    Instance,
    Breaker,
    BreakerUntil,
    RetryAfterUntil,
    Paused,
    ConsecutiveFailures,
    Delivered,
    Failed,
    DeliveryRate,
    LastError,
    LastErrorAt,
    LastSuccessAt,
    StartedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SubscriptionControls {
    Table,
    Subscription,
    Paused,
    Reason,
    ChangedBy,
    ChangedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        use SubscriptionStatus as S;
        manager
            .create_table(
                Table::create()
                    .table(S::Table)
                    .if_not_exists()
                    .col(string(S::Subscription))
                    .col(string(S::Instance))
                    .col(string(S::Breaker))
                    .col(timestamp_with_time_zone_null(S::BreakerUntil))
                    .col(timestamp_with_time_zone_null(S::RetryAfterUntil))
                    .col(boolean(S::Paused).default(false))
                    .col(integer(S::ConsecutiveFailures).default(0))
                    .col(big_integer(S::Delivered).default(0))
                    .col(big_integer(S::Failed).default(0))
                    .col(double(S::DeliveryRate).default(0.0))
                    .col(text_null(S::LastError))
                    .col(timestamp_with_time_zone_null(S::LastErrorAt))
                    .col(timestamp_with_time_zone_null(S::LastSuccessAt))
                    .col(timestamp_with_time_zone(S::StartedAt))
                    .col(timestamp_with_time_zone(S::UpdatedAt))
                    // One row per subscription and worker process: the worker upserts it.
                    .primary_key(Index::create().col(S::Subscription).col(S::Instance))
                    .to_owned(),
            )
            .await?;
        use SubscriptionControls as C;
        manager
            .create_table(
                Table::create()
                    .table(C::Table)
                    .if_not_exists()
                    .col(string(C::Subscription).primary_key())
                    .col(boolean(C::Paused))
                    .col(text_null(C::Reason))
                    .col(string(C::ChangedBy))
                    .col(timestamp_with_time_zone(C::ChangedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SubscriptionControls::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(SubscriptionStatus::Table).to_owned())
            .await
    }
}
