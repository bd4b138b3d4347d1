//! The operator service: every action an operator takes on warren's failures, in one place,
//! whoever asks (the HTTP routes, the console, the command line):
//!
//! - replay or purge a work queue's parked messages ([`Operator::start`] in the background,
//!   [`Operator::run_now`] to the end, [`Operator::run_watched`] to the end with progress),
//! - retry one failed job by its `failed_jobs` row ([`Operator::retry_failed_job`]),
//! - retry or resolve a saga intervention ([`Operator::retry_intervention`],
//!   [`Operator::resolve_intervention`]),
//! - pause or resume an HTTP subscription (`Operator::pause_subscription`).
//!
//! Every action is one row of `operator_actions` (the audit log): who, what, on what, when,
//! how many messages it moved. The actions that move parked messages take the queue's lock
//! (`lock_key = dlq:<queue>`, unique, see `operations`), so a second operation on the same
//! queue, from any edge, is refused with who holds it ([`OperatorError::Running`]).
//!
//! The broker-side tools the service runs on (count, peek, replay and purge passes) are in
//! [`dlq`].

pub mod dlq;
pub(crate) mod operations;
pub(crate) mod subscriptions;

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use entities::operator_actions::{self, Entity as Actions};
use sea_orm::{
    ActiveModelTrait, DatabaseConnection, DbErr, EntityTrait, QueryOrder, QuerySelect, Set,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    saga::{SagaError, Sagas, engine::SagaView},
    store::StoreError,
};
use dlq::{Dlq, DlqError, Filter};

/// A running operation that has not recorded progress for this long is taken to have died
/// with its process; its lock can be taken over.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// Status of an action that is still running.
pub const RUNNING: &str = "running";
/// Status of an action that finished.
pub const DONE: &str = "done";
/// Status of an action that stopped with an error.
pub const FAILED: &str = "failed";
/// Status of an operation whose process stopped before it finished.
pub const ABANDONED: &str = "abandoned";

/// Errors of the operator service.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// Another operation holds this queue's lock.
    #[error(
        "{actor} is running {action} on {target} (started {started}, {moved} moved so far); \
         wait until it ends"
    )]
    Running {
        /// The holding operation's id.
        id: Uuid,
        /// Who runs it.
        actor: String,
        /// What it is.
        action: String,
        /// What it runs on.
        target: String,
        /// When it started (RFC 3339).
        started: String,
        /// Messages it moved so far.
        moved: i64,
    },
    /// No action has this id.
    #[error("no operator action with id {0}")]
    NotFound(Uuid),
    /// The audit log's database failed.
    #[error("the audit log is unavailable ({doing}): {source}")]
    Db {
        /// What was being done.
        doing: &'static str,
        /// sea-orm's error.
        source: DbErr,
    },
    /// A dead-letter pass failed (unknown queue, broker or database trouble, or a pass that
    /// stopped part-way).
    #[error(transparent)]
    Dlq(#[from] DlqError),
    /// Reading `failed_jobs` failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No `failed_jobs` row has this id.
    #[error("no failed job with id {0}")]
    FailedJobNotFound(Uuid),
    /// The failed job's message is no longer parked (already replayed or purged).
    #[error("the message of failed job {id} is no longer parked in {queue}.dead")]
    NotParked {
        /// The `failed_jobs` row.
        id: Uuid,
        /// Its work queue.
        queue: String,
    },
    /// The saga engine refused or failed the intervention.
    #[error(transparent)]
    Saga(#[from] SagaError),
}

fn db_error(doing: &'static str) -> impl FnOnce(DbErr) -> OperatorError {
    move |source| OperatorError::Db { doing, source }
}

/// A dead-letter operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Move parked messages back to their work queue.
    Replay,
    /// Delete parked messages.
    Purge,
}

impl Operation {
    /// The action's name in the audit log.
    pub fn action(self) -> &'static str {
        match self {
            Operation::Replay => "dlq.replay",
            Operation::Purge => "dlq.purge",
        }
    }

    /// The past tense the answers use: `replayed`, `purged`.
    pub fn done(self) -> &'static str {
        match self {
            Operation::Replay => "replayed",
            Operation::Purge => "purged",
        }
    }
}

/// What [`Operator::retry_failed_job`] did.
#[derive(Debug, Clone, Serialize)]
pub struct FailedJobRetried {
    /// The `failed_jobs` row.
    pub id: Uuid,
    /// Its work queue.
    pub queue: String,
    /// The replayed message.
    pub message_id: Uuid,
    /// How many copies were replayed (1).
    pub replayed: usize,
}

/// The operator service (cheap to clone).
#[derive(Clone)]
pub struct Operator {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    dlq: Dlq,
    sagas: Sagas,
    page_size: usize,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("page_size", &self.inner.page_size)
            .finish_non_exhaustive()
    }
}

/// The audit detail of a replay or purge `filter` (the HTTP API's and the CLI's).
pub fn filter_detail(filter: &Filter) -> Value {
    json!({
        "message_id": filter.message_id,
        "reason": filter.reason,
        "older_than_secs": filter.older_than.map(|d| d.as_secs()),
        "limit": filter.limit,
    })
}

impl Operator {
    /// The service over the audit log's database, the dead-letter tools and the saga engine;
    /// a replay or purge moves at most `page_size` messages per page (`console.page_size`).
    pub fn new(db: DatabaseConnection, dlq: Dlq, sagas: Sagas, page_size: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                dlq,
                sagas,
                page_size: page_size.max(1),
            }),
        }
    }

    /// The dead-letter tools, for what only reads (counts, peeks, queue names).
    pub fn dlq(&self) -> &Dlq {
        &self.inner.dlq
    }

    /// One action by id.
    pub async fn get(&self, id: Uuid) -> Result<operator_actions::Model, OperatorError> {
        Actions::find_by_id(id)
            .one(&self.inner.db)
            .await
            .map_err(db_error("reading an action"))?
            .ok_or(OperatorError::NotFound(id))
    }

    /// The newest actions first.
    pub async fn audit(&self, limit: u64) -> Result<Vec<operator_actions::Model>, OperatorError> {
        Actions::find()
            .order_by_desc(operator_actions::Column::Id)
            .limit(limit)
            .all(&self.inner.db)
            .await
            .map_err(db_error("reading the audit log"))
    }

    /// Replays the message of one `failed_jobs` row from its queue's parking queue, by
    /// message id, under the queue's lock, recorded as `failed_job.retry`.
    #[tracing::instrument(skip(self), fields(queue))]
    pub async fn retry_failed_job(
        &self,
        actor: &str,
        id: Uuid,
    ) -> Result<FailedJobRetried, OperatorError> {
        let row = crate::store::failed_job(&self.inner.db, id)
            .await?
            .ok_or(OperatorError::FailedJobNotFound(id))?;
        tracing::Span::current().record("queue", row.queue.as_str());
        let not_parked = || OperatorError::NotParked {
            id,
            queue: row.queue.clone(),
        };
        let message_id = row.message_id.ok_or_else(not_parked)?;
        let filter = Filter {
            message_id: Some(message_id),
            ..Filter::default()
        };
        let detail = json!({"queue": row.queue, "message_id": message_id});
        let held = self
            .begin(
                actor,
                "failed_job.retry",
                &id.to_string(),
                &row.queue,
                detail,
                None,
            )
            .await?;
        let result = self.inner.dlq.replay(&row.queue, &filter).await;
        let moved = result.as_ref().map_or_else(DlqError::done, |n| *n);
        let error = match &result {
            Ok(0) => Some(not_parked().to_string()),
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        self.finish(held.id, moved, error).await?;
        match result? {
            0 => Err(not_parked()),
            n => Ok(FailedJobRetried {
                id,
                queue: row.queue.clone(),
                message_id,
                replayed: n,
            }),
        }
    }

    /// Sends the failed compensation of intervention `id` again; the saga's timeline and the
    /// audit log (`intervention.retry`) name `actor`, with the note if one is given.
    pub async fn retry_intervention(
        &self,
        actor: &str,
        id: Uuid,
        note: Option<String>,
    ) -> Result<SagaView, OperatorError> {
        let note = note.filter(|n| !n.trim().is_empty());
        let said = format!(
            "retry by {actor}{}",
            note.as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
        let result = self.inner.sagas.retry(id, Some(said)).await;
        self.record_intervention(actor, "intervention.retry", id, note, &result)
            .await?;
        Ok(result?)
    }

    /// Records that `actor` undid the failed compensation of intervention `id` by hand, as
    /// `note` says (the saga's timeline and `intervention.resolve` in the audit log).
    pub async fn resolve_intervention(
        &self,
        actor: &str,
        id: Uuid,
        note: String,
    ) -> Result<SagaView, OperatorError> {
        let result = self
            .inner
            .sagas
            .resolve(id, format!("resolved by {actor}: {note}"))
            .await;
        self.record_intervention(actor, "intervention.resolve", id, Some(note), &result)
            .await?;
        Ok(result?)
    }

    async fn record_intervention(
        &self,
        actor: &str,
        action: &str,
        id: Uuid,
        note: Option<String>,
        result: &Result<SagaView, SagaError>,
    ) -> Result<operator_actions::Model, OperatorError> {
        let (detail, error) = match result {
            Ok(view) => (json!({"note": note, "saga_id": view.saga.id}), None),
            Err(e) => (json!({"note": note}), Some(e.to_string())),
        };
        self.record(actor, action, &id.to_string(), detail, 0, error)
            .await
    }

    /// Records an action that is over in the audit log: who, what, on what, the detail given,
    /// how many messages it moved and, if it failed, why.
    async fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: Value,
        moved: u64,
        error: Option<String>,
    ) -> Result<operator_actions::Model, OperatorError> {
        let now = Utc::now();
        operator_actions::ActiveModel {
            id: Set(Uuid::now_v7()),
            actor: Set(actor.to_owned()),
            action: Set(action.to_owned()),
            target: Set(target.to_owned()),
            detail: Set(detail),
            status: Set(if error.is_some() { FAILED } else { DONE }.to_owned()),
            matched: Set(None),
            moved: Set(i64::try_from(moved).unwrap_or(i64::MAX)),
            error: Set(error),
            lock_key: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            finished_at: Set(Some(now)),
        }
        .insert(&self.inner.db)
        .await
        .map_err(db_error("recording an action"))
    }
}
