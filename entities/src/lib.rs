//! warren's database tables as sea-orm entities, and the migrations that create them.
//!
//! One module per table; [`migration::Migrator`] creates them on PostgreSQL and SQLite alike.
//! Later capabilities add their tables here with a new migration each, never by editing an
//! applied one.

pub mod accounts;
pub mod email_log;
pub mod event_log;
pub mod event_outbox;
pub mod failed_jobs;
pub mod idempotency_keys;
pub mod inventory;
pub mod migration;
pub mod notifications;
pub mod operator_actions;
pub mod orders;
pub mod processed_messages;
pub mod saga_commands;
pub mod saga_interventions;
pub mod saga_outbox;
pub mod saga_steps;
pub mod sagas;
pub mod schedule_ticks;
pub mod subscription_controls;
pub mod subscription_status;
