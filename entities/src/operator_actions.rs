//! `operator_actions`: what operators did (replay, purge, retry, resolve), by whom and when,
//! and how many messages each action moved; long dead-letter operations also keep their
//! progress and their per-queue lock here.

use sea_orm::entity::prelude::*;

/// One operator action.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize)]
#[sea_orm(table_name = "operator_actions")]
pub struct Model {
    /// Action id (UUIDv7: time-ordered).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Who: the operator's name and token, as authentication knows them.
    pub actor: String,
    /// What: `dlq.replay`, `dlq.purge`, `failed_job.retry`, `intervention.retry`,
    /// `intervention.resolve`.
    pub action: String,
    /// On what: the work queue, failed-job id or intervention id.
    pub target: String,
    /// The filter or note the operator gave.
    pub detail: Json,
    /// `running`, `done`, `failed` or `abandoned` (its process stopped mid-way).
    pub status: String,
    /// Messages the selection matched when the action started (when counted).
    pub matched: Option<i64>,
    /// Messages moved (replayed or purged) so far.
    pub moved: i64,
    /// Why it failed.
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    /// `dlq:<queue>` while it runs, else NULL (unique).
    #[serde(skip)]
    #[sea_orm(unique)]
    pub lock_key: Option<String>,
    /// When it started.
    pub created_at: DateTimeUtc,
    /// Last progress (a heartbeat while it runs).
    pub updated_at: DateTimeUtc,
    /// When it ended.
    pub finished_at: Option<DateTimeUtc>,
}

/// No relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
