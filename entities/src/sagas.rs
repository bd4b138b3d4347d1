//! `sagas`: one row per saga the orchestrator runs: its kind, where it is, its input, the
//! state machine's state, a version for optimistic concurrency and the in-flight command's
//! deadline.

use sea_orm::entity::prelude::*;

/// One saga.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "sagas")]
pub struct Model {
    /// Saga id (UUID v7); the `correlation_id` of its commands and replies.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Saga kind (`order`), naming its definition.
    pub kind: String,
    /// A business key unique per kind (the order number), when the starter gave one.
    pub business_key: Option<String>,
    /// `running`, `compensating`, `completed`, `compensated`, `needs_intervention`.
    pub status: String,
    /// The step in flight (or the last one handled).
    pub step: i32,
    /// The saga's input, handed to every command.
    pub payload: Json,
    /// The state machine's state (per-step status and reason).
    pub state: Json,
    /// Bumped on every update; an update names the version it read.
    pub version: i64,
    /// When the in-flight command counts as failed.
    pub deadline_at: Option<DateTimeUtc>,
    /// The step of the in-flight command.
    pub deadline_step: Option<i32>,
    /// `execute` or `compensate`: the action of the in-flight command.
    pub deadline_action: Option<String>,
    /// Why the saga is rolling back, if it is.
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    /// The W3C `traceparent` of the request that started it.
    pub traceparent: Option<String>,
    /// When it started.
    pub created_at: DateTimeUtc,
    /// Last change.
    pub updated_at: DateTimeUtc,
    /// When it reached a terminal state.
    pub finished_at: Option<DateTimeUtc>,
    /// A copy of the definition it started with (it keeps running it when the definitions
    /// file changes); none for sagas stored before warren kept it (they run the loaded one).
    #[serde(skip_serializing)]
    pub definition: Option<Json>,
    /// The SHA-256 of that definition (hex): its version.
    pub definition_hash: Option<String>,
    /// The `Idempotency-Key` of the `POST /v1/sagas/{kind}` that started it (unique per kind).
    pub idempotency_key: Option<String>,
}

/// No relations declared (queries join by `saga_id`).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
