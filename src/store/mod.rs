//! The database: a sea-orm connection chosen by URL (PostgreSQL, or SQLite tuned for one
//! writer), migrations at start, and the queries the HTTP front needs.

use std::time::Duration;

use chrono::Utc;
use entities::{event_log, failed_jobs, migration::Migrator, processed_messages};
use sea_orm::{
    ColumnTrait, ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, sea_query::Expr,
};
use sea_orm_migration::MigratorTrait;

use crate::{
    broker::envelope::Event,
    config::{DatabaseSettings, Pool},
};

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

/// Connects by URL with one pool of `database.max_connections` (the command line's and the
/// benchmarks' connection), running the migrations first when `database.migrate` is set.
/// SQLite gets WAL, a busy timeout and a single connection, because SQLite has one writer and
/// a pool of writers answers `database is locked` (STACK.md).
#[tracing::instrument(skip_all, fields(db = %crate::config::redact_url(settings.url.expose())))]
pub async fn connect(settings: &DatabaseSettings) -> Result<DatabaseConnection, StoreError> {
    let db = open(settings, settings.max_connections, false).await?;
    migrate(settings, &db).await?;
    Ok(db)
}

/// A process's database pools, one per role ([`Pool`]), so a burst on one (HTTP orders
/// waiting for connections) cannot starve another (consumers acking, relays emptying the
/// outboxes). Sizes come from `database.pools` ([`DatabaseSettings::pool_size`]).
///
/// On PostgreSQL the HTTP pool connects at once (a database that does not answer fails the
/// start, as before) and the others connect when first used, so a process opens connections
/// only for the roles it runs. On SQLite every role shares the one writer connection.
#[derive(Debug, Clone)]
pub struct Pools {
    http: DatabaseConnection,
    consumers: DatabaseConnection,
    relay: DatabaseConnection,
    scheduler: DatabaseConnection,
}

impl Pools {
    /// Opens the pools and runs the migrations when `database.migrate` is set.
    #[tracing::instrument(skip_all, fields(db = %crate::config::redact_url(settings.url.expose())))]
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, StoreError> {
        let http = open(settings, settings.pool_size(Pool::Http), false).await?;
        migrate(settings, &http).await?;
        if is_sqlite(settings.url.expose()) {
            return Ok(Self {
                consumers: http.clone(),
                relay: http.clone(),
                scheduler: http.clone(),
                http,
            });
        }
        Ok(Self {
            consumers: open(settings, settings.pool_size(Pool::Consumers), true).await?,
            relay: open(settings, settings.pool_size(Pool::Relay), true).await?,
            scheduler: open(settings, settings.pool_size(Pool::Scheduler), true).await?,
            http,
        })
    }

    /// The connection pool of `pool`'s role.
    pub fn get(&self, pool: Pool) -> &DatabaseConnection {
        match pool {
            Pool::Http => &self.http,
            Pool::Consumers => &self.consumers,
            Pool::Relay => &self.relay,
            Pool::Scheduler => &self.scheduler,
        }
    }

    /// Each distinct pool with its name, for metrics: the four roles on PostgreSQL, one
    /// `shared` connection on SQLite.
    pub fn named(&self) -> Vec<(&'static str, DatabaseConnection)> {
        if self.http.get_database_backend() == sea_orm::DbBackend::Sqlite {
            return vec![("shared", self.http.clone())];
        }
        Pool::ALL
            .iter()
            .map(|p| (p.as_str(), self.get(*p).clone()))
            .collect()
    }

    /// Closes every pool.
    pub async fn close(&self) {
        for (_, db) in self.named() {
            let _ = db.close_by_ref().await;
        }
    }
}

/// One pool of `size` connections (SQLite: always one); `lazy` connects on first use.
async fn open(
    settings: &DatabaseSettings,
    size: u32,
    lazy: bool,
) -> Result<DatabaseConnection, StoreError> {
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
        opts.max_connections(size.max(1)).connect_lazy(lazy);
        // Plan every statement with its values. By default PostgreSQL switches a prepared
        // statement to a generic plan after five runs and keeps it for the connection's life;
        // a plan made while a table was nearly empty (every fresh deployment: the inbox, the
        // saga tables) stays a sequential scan as the table grows. Measured: draining 60k
        // jobs with the inbox into a fresh database went from 1,045 to 4,309 jobs/s
        // (BENCHMARKS.md). Planning these short statements costs little.
        opts.map_sqlx_postgres_opts(|o| o.options([("plan_cache_mode", "force_custom_plan")]));
    }
    Database::connect(opts).await.map_err(StoreError::Connect)
}

/// Runs pending migrations when `database.migrate` is set.
async fn migrate(settings: &DatabaseSettings, db: &DatabaseConnection) -> Result<(), StoreError> {
    if !settings.migrate {
        return Ok(());
    }
    let url = settings.url.expose();
    if is_sqlite(url) {
        Migrator::up(db, None).await.map_err(StoreError::Migrate)
    } else {
        migrate_locked(url).await
    }
}

/// Key of the advisory lock that serializes migrations (any constant shared by every warren).
const MIGRATION_LOCK: i64 = 0x7761_7272_656e; // "warren"

/// Runs the migrations on PostgreSQL under a session advisory lock, on a connection of its
/// own: when many processes start at once on an empty database (a compose stack), one
/// migrates and the others wait, then find nothing to do, instead of colliding.
async fn migrate_locked(url: &str) -> Result<(), StoreError> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .max_connections(1)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5));
    let conn = Database::connect(opts).await.map_err(StoreError::Connect)?;
    let lock = |sql: String| {
        let conn = conn.clone();
        async move {
            conn.execute_unprepared(&sql)
                .await
                .map(drop)
                .map_err(|source| StoreError::Query {
                    doing: "taking the migration lock",
                    source,
                })
        }
    };
    lock(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})")).await?;
    let result = Migrator::up(&conn, None).await.map_err(StoreError::Migrate);
    let _ = lock(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})")).await;
    let _ = conn.close().await;
    result
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

/// Records an event in `event_log`; recording the same event twice is a no-op.
pub async fn record_event(db: &DatabaseConnection, event: &Event) -> Result<(), StoreError> {
    let row = event_log::ActiveModel {
        event_id: Set(event.event_id),
        event_name: Set(event.event_name.clone()),
        aggregate_id: Set(event.aggregate_id.clone()),
        occurred_on: Set(event.occurred_on),
        data: Set(event.data.clone()),
        recorded_at: Set(Utc::now()),
        cloudevent: Set(event
            .cloudevent
            .as_ref()
            .and_then(|c| serde_json::to_value(c).ok())),
    };
    event_log::Entity::insert(row)
        .on_conflict_do_nothing_on([event_log::Column::EventId])
        .exec_without_returning(db)
        .await
        .map(drop)
        .map_err(|source| StoreError::Query {
            doing: "recording an event",
            source,
        })
}

/// Records that `consumer` applied `message_id`; recording twice is a no-op.
pub async fn inbox_mark<C: ConnectionTrait>(
    db: &C,
    consumer: &str,
    message_id: uuid::Uuid,
) -> Result<(), StoreError> {
    inbox_mark_many(db, consumer, std::iter::once(message_id)).await
}

/// Records that `consumer` applied each of `message_ids` in one statement; ids already
/// recorded (or repeated in the list) are skipped.
pub async fn inbox_mark_many<C: ConnectionTrait>(
    db: &C,
    consumer: &str,
    message_ids: impl IntoIterator<Item = uuid::Uuid>,
) -> Result<(), StoreError> {
    let now = Utc::now();
    let rows = message_ids
        .into_iter()
        .map(|id| processed_messages::ActiveModel {
            consumer: Set(consumer.to_owned()),
            message_id: Set(id),
            processed_at: Set(now),
        });
    processed_messages::Entity::insert_many(rows)
        .on_conflict_do_nothing_on([
            processed_messages::Column::Consumer,
            processed_messages::Column::MessageId,
        ])
        .exec_without_returning(db)
        .await
        .map(drop)
        .map_err(|source| StoreError::Query {
            doing: "writing the inbox",
            source,
        })
}

/// A `failed_jobs` row to insert.
#[derive(Debug, Clone)]
pub struct NewFailedJob {
    /// Work queue.
    pub queue: String,
    /// Message id, when known.
    pub message_id: Option<uuid::Uuid>,
    /// Event or command name, when known.
    pub job_name: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// Last error.
    pub error: String,
    /// `exhausted`, `invalid`, `undecodable`.
    pub reason: String,
    /// Raw body.
    pub payload: String,
}

/// Inserts a `failed_jobs` row and returns its id.
pub async fn insert_failed_job(
    db: &DatabaseConnection,
    job: NewFailedJob,
) -> Result<uuid::Uuid, StoreError> {
    let id = uuid::Uuid::now_v7();
    let row = failed_jobs::ActiveModel {
        id: Set(id),
        queue: Set(job.queue),
        message_id: Set(job.message_id),
        job_name: Set(job.job_name),
        attempts: Set(i32::try_from(job.attempts).unwrap_or(i32::MAX)),
        error: Set(job.error),
        reason: Set(job.reason),
        payload: Set(job.payload),
        status: Set("parked".to_owned()),
        failed_at: Set(Utc::now()),
        updated_at: Set(None),
    };
    failed_jobs::Entity::insert(row)
        .exec_without_returning(db)
        .await
        .map(|_| id)
        .map_err(|source| StoreError::Query {
            doing: "recording a failed job",
            source,
        })
}

/// Query of the list endpoints.
#[derive(Debug, serde::Deserialize, Default, utoipa::IntoParams)]
pub struct ListQuery {
    /// `GET /v1/events`: only events about this entity.
    pub aggregate_id: Option<String>,
    /// `GET /v1/events`: only events with this name.
    pub name: Option<String>,
    /// `GET /v1/notifications`: only this user's.
    pub user_id: Option<String>,
    /// At most this many rows (default 50, at most 500), newest first.
    pub limit: Option<u64>,
}

fn limit_of(q: &ListQuery) -> u64 {
    q.limit.unwrap_or(50).clamp(1, 500)
}

/// Recorded events, newest first, filtered by aggregate id and name.
pub async fn list_events(
    db: &DatabaseConnection,
    q: &ListQuery,
) -> Result<Vec<event_log::Model>, StoreError> {
    use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect};
    let mut select = event_log::Entity::find();
    if let Some(a) = &q.aggregate_id {
        select = select.filter(event_log::Column::AggregateId.eq(a.as_str()));
    }
    if let Some(n) = &q.name {
        select = select.filter(event_log::Column::EventName.eq(n.as_str()));
    }
    select
        .order_by_desc(event_log::Column::EventId)
        .limit(limit_of(q))
        .all(db)
        .await
        .map_err(|source| StoreError::Query {
            doing: "listing events",
            source,
        })
}

/// `failed_jobs` status of a parked job.
pub const FAILED_PARKED: &str = "parked";
/// `failed_jobs` status once an operator replayed the message.
pub const FAILED_RETRIED: &str = "retried";
/// `failed_jobs` status once an operator purged the message.
pub const FAILED_PURGED: &str = "purged";

/// The `parked` rows of these parked messages of `queue`, as `(message_id, row id)`.
pub async fn parked_failed_jobs_of(
    db: &DatabaseConnection,
    queue: &str,
    message_ids: &[uuid::Uuid],
) -> Result<Vec<(uuid::Uuid, uuid::Uuid)>, StoreError> {
    if message_ids.is_empty() {
        return Ok(Vec::new());
    }
    failed_jobs::Entity::find()
        .select_only()
        .column(failed_jobs::Column::MessageId)
        .column(failed_jobs::Column::Id)
        .filter(failed_jobs::Column::Queue.eq(queue))
        .filter(failed_jobs::Column::MessageId.is_in(message_ids.iter().copied()))
        .filter(failed_jobs::Column::Status.eq(FAILED_PARKED))
        .into_tuple::<(uuid::Uuid, uuid::Uuid)>()
        .all(db)
        .await
        .map_err(|source| StoreError::Query {
            doing: "finding the failed_jobs rows of parked messages",
            source,
        })
}

/// Notifications, newest first, optionally one user's.
pub async fn list_notifications(
    db: &DatabaseConnection,
    q: &ListQuery,
) -> Result<Vec<entities::notifications::Model>, StoreError> {
    use entities::notifications;
    use sea_orm::{ColumnTrait, QueryFilter, QueryOrder, QuerySelect};
    let mut select = notifications::Entity::find();
    if let Some(u) = &q.user_id {
        select = select.filter(notifications::Column::UserId.eq(u.as_str()));
    }
    select
        .order_by_desc(notifications::Column::Id)
        .limit(limit_of(q))
        .all(db)
        .await
        .map_err(|source| StoreError::Query {
            doing: "listing notifications",
            source,
        })
}

/// Sets `status` (and `updated_at` = now) on the `failed_jobs` rows `ids`; returns how many
/// rows changed.
pub async fn set_failed_jobs_status(
    db: &DatabaseConnection,
    ids: &[uuid::Uuid],
    status: &str,
) -> Result<u64, StoreError> {
    if ids.is_empty() {
        return Ok(0);
    }
    failed_jobs::Entity::update_many()
        .col_expr(failed_jobs::Column::Status, Expr::value(status))
        .col_expr(failed_jobs::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(failed_jobs::Column::Id.is_in(ids.iter().copied()))
        .exec(db)
        .await
        .map(|r| r.rows_affected)
        .map_err(|source| StoreError::Query {
            doing: "updating the status of failed_jobs rows",
            source,
        })
}

/// `failed_jobs` rows, newest first, optionally of one queue and one status.
pub async fn list_failed_jobs(
    db: &DatabaseConnection,
    queue: Option<&str>,
    status: Option<&str>,
    limit: u64,
) -> Result<Vec<failed_jobs::Model>, StoreError> {
    let mut select = failed_jobs::Entity::find();
    if let Some(q) = queue {
        select = select.filter(failed_jobs::Column::Queue.eq(q));
    }
    if let Some(s) = status {
        select = select.filter(failed_jobs::Column::Status.eq(s));
    }
    select
        .order_by_desc(failed_jobs::Column::FailedAt)
        .order_by_desc(failed_jobs::Column::Id)
        .limit(limit)
        .all(db)
        .await
        .map_err(|source| StoreError::Query {
            doing: "listing failed jobs",
            source,
        })
}

/// One `failed_jobs` row by id.
pub async fn failed_job(
    db: &DatabaseConnection,
    id: uuid::Uuid,
) -> Result<Option<failed_jobs::Model>, StoreError> {
    failed_jobs::Entity::find_by_id(id)
        .one(db)
        .await
        .map_err(|source| StoreError::Query {
            doing: "reading a failed job",
            source,
        })
}
