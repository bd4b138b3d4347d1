//! `subscription_status`: how each HTTP subscription stands in each worker process that runs
//! it (its circuit breaker, a `Retry-After` pause, whether it holds an operator's pause, the
//! last error and success), written by the worker when that changes (at most once a second)
//! and as a heartbeat; a row whose `updated_at` is old belongs to a worker that stopped.

use sea_orm::entity::prelude::*;

/// One subscription in one worker process.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "subscription_status")]
pub struct Model {
    /// The subscription's name (settings).
    #[sea_orm(primary_key, auto_increment = false)]
    pub subscription: String,
    /// The worker process (`<host>:<pid>`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub instance: String,
    /// The breaker: `closed`, `half_open` or `open`.
    pub breaker: String,
    /// When an open breaker's cooldown ends.
    pub breaker_until: Option<DateTimeUtc>,
    /// Until when the receiver asked to be left alone (`Retry-After`).
    pub retry_after_until: Option<DateTimeUtc>,
    /// Whether this worker holds the subscription's messages for an operator's pause.
    pub paused: bool,
    /// Failed deliveries in a row.
    pub consecutive_failures: i32,
    /// Deliveries answered 2xx since the process started.
    pub delivered: i64,
    /// Deliveries that did not succeed since the process started.
    pub failed: i64,
    /// Deliveries answered 2xx per second over the last heartbeat interval.
    pub delivery_rate: f64,
    /// The last failed delivery's reason (status and first bytes, or the transport error).
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    /// When it failed.
    pub last_error_at: Option<DateTimeUtc>,
    /// The last delivery answered 2xx.
    pub last_success_at: Option<DateTimeUtc>,
    /// When the worker process started this subscription.
    pub started_at: DateTimeUtc,
    /// The last write (a heartbeat at least every few seconds while the worker runs).
    pub updated_at: DateTimeUtc,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
