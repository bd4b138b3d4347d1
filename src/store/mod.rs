//! The database: a sea-orm connection chosen by URL (PostgreSQL, or SQLite tuned for one
//! writer), migrations at start, and the queries the HTTP front needs.

use std::time::Duration;

use chrono::Utc;
use entities::{audit_log, migration::Migrator};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait, Set,
};
use sea_orm_migration::MigratorTrait;

use crate::{broker::envelope::Event, config::DatabaseSettings};

/// Database errors, with what warren was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connecting failed.
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] DbErr),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[source] DbErr),
    /// A query failed.
    #[error("database query failed while {doing}: {source}")]
    Query {
        /// What warren was doing.
        doing: &'static str,
        /// The database's error.
        source: DbErr,
    },
}

/// Whether the URL names SQLite.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Connects by URL. SQLite gets WAL, a busy timeout and a single connection, because SQLite
/// has one writer and a pool of writers answers `database is locked` (STACK.md).
#[tracing::instrument(skip_all, fields(db = %crate::config::redact_url(settings.url.expose())))]
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, StoreError> {
    let url = settings.url.expose();
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5));
    if is_sqlite(url) {
        opts.max_connections(1).min_connections(1);
        opts.map_sqlx_sqlite_opts(|o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .create_if_missing(true)
        });
    } else {
        opts.max_connections(settings.max_connections);
    }
    let db = Database::connect(opts).await.map_err(StoreError::Connect)?;
    if settings.migrate {
        Migrator::up(&db, None).await.map_err(StoreError::Migrate)?;
    }
    Ok(db)
}

/// Checks that the database answers.
pub async fn ping(db: &DatabaseConnection) -> Result<(), StoreError> {
    db.execute_unprepared("SELECT 1")
        .await
        .map(drop)
        .map_err(|source| StoreError::Query {
            doing: "checking readiness",
            source,
        })
}

/// Records an event in `audit_log`; recording the same event twice is a no-op.
pub async fn record_event(db: &DatabaseConnection, event: &Event) -> Result<(), StoreError> {
    let row = audit_log::ActiveModel {
        event_id: Set(event.event_id),
        event_name: Set(event.event_name.clone()),
        aggregate_id: Set(event.aggregate_id.clone()),
        occurred_on: Set(event.occurred_on),
        data: Set(event.data.clone()),
        recorded_at: Set(Utc::now()),
    };
    audit_log::Entity::insert(row)
        .on_conflict_do_nothing_on([audit_log::Column::EventId])
        .exec_without_returning(db)
        .await
        .map(drop)
        .map_err(|source| StoreError::Query {
            doing: "recording an event",
            source,
        })
}
