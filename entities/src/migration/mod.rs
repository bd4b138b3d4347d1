//! Migrations, applied in order at start (`database.migrate`), on PostgreSQL and SQLite.

use sea_orm_migration::prelude::*;

mod m0001_foundation;
mod m0002_modules;
mod m0003_saga;
mod m0004_scheduler;
mod m0005_event_outbox;
mod m0006_operator_actions;
mod m0007_subscription_status;
mod m0008_saga_definitions;
mod m0009_saga_results;
mod m0010_idempotency;

/// Runs warren's migrations.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_foundation::Migration),
            Box::new(m0002_modules::Migration),
            Box::new(m0003_saga::Migration),
            Box::new(m0004_scheduler::Migration),
            Box::new(m0005_event_outbox::Migration),
            Box::new(m0006_operator_actions::Migration),
            Box::new(m0007_subscription_status::Migration),
            Box::new(m0008_saga_definitions::Migration),
            Box::new(m0009_saga_results::Migration),
            Box::new(m0010_idempotency::Migration),
        ]
    }
}
