//! The orchestrator's adapter around the pure state machine: it loads a saga, applies one
//! input, and stores the new state, its timeline entries, its interventions and the commands
//! it sends in one transaction guarded by the saga's version (optimistic concurrency). Only
//! then are the commands published, from the `saga_outbox` table: a command is deleted from
//! the outbox once the broker confirmed it, and a relay publishes whatever a crash or an
//! outage left behind. A command may therefore be published twice (crash between confirm and
//! delete), never lost; participants apply each idempotency key at most once, so a repeat has
//! no second effect.
//!
//! One saga's inputs are applied one at a time: inside a process by a lock per saga (striped),
//! across processes by the version check (the loser reloads and applies its input to the
//! winner's state).

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use entities::{saga_interventions, saga_outbox, saga_steps, sagas};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
    sea_query::{LockBehavior, LockType},
};
use serde::Serialize;
use uuid::Uuid;

use super::{
    machine::{Action, Command, Input, SagaDef, SagaState, Status, StepStatus, apply},
    protocol::CommandData,
};
use crate::{
    broker::{
        envelope::{Event, Meta},
        names::COMMANDS_EXCHANGE,
        publisher::Publisher,
    },
    telemetry::Metrics,
};

/// Saga operations that can fail.
#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    /// No definition of this kind.
    #[error("unknown saga kind {0:?}")]
    UnknownKind(String),
    /// No saga with this id.
    #[error("no saga with id {0}")]
    NotFound(Uuid),
    /// No intervention with this id.
    #[error("no intervention with id {0}")]
    InterventionNotFound(Uuid),
    /// A saga of this kind already has this business key.
    #[error("a {kind} saga with key {key:?} already exists: {saga_id}")]
    Duplicate {
        /// Saga kind.
        kind: String,
        /// The business key.
        key: String,
        /// The saga that has it.
        saga_id: Uuid,
    },
    /// The operation does not fit the saga's state.
    #[error("{0}")]
    Conflict(String),
    /// The stored state cannot be read.
    #[error("the stored state of saga {0} cannot be read: {1}")]
    Corrupt(Uuid, String),
    /// The database failed.
    #[error("database error while {doing}: {source}")]
    Db {
        /// What the engine was doing.
        doing: &'static str,
        /// The database's error.
        #[source]
        source: DbErr,
    },
    /// The broker did not confirm a command (it stays in the outbox for the relay).
    #[error("cannot publish a saga command: {0}")]
    Publish(#[from] crate::broker::publisher::PublishError),
    /// Another process kept winning the version race.
    #[error("saga {0} kept changing under this update; try again")]
    Contended(Uuid),
}

fn db(doing: &'static str) -> impl FnOnce(DbErr) -> SagaError {
    move |source| SagaError::Db { doing, source }
}

/// What applying an input did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The state changed (and commands may have been sent).
    Changed(Status),
    /// A stale or duplicate input: nothing changed.
    Unchanged(Status),
}

/// A saga with its definition's step names, timeline and interventions.
#[derive(Debug, Clone, Serialize)]
pub struct SagaView {
    /// The saga row.
    #[serde(flatten)]
    pub saga: sagas::Model,
    /// Per-step status, with names.
    pub steps: Vec<StepView>,
    /// The timeline, oldest first.
    pub timeline: Vec<saga_steps::Model>,
    /// Failed compensations, open or resolved.
    pub interventions: Vec<saga_interventions::Model>,
}

/// One step's status.
#[derive(Debug, Clone, Serialize)]
pub struct StepView {
    /// Index.
    pub step: usize,
    /// Name.
    pub name: String,
    /// Command.
    pub command: String,
    /// Compensation command.
    pub compensation: Option<String>,
    /// Status.
    pub status: StepStatus,
}

const LOCK_STRIPES: usize = 256;
const MAX_CONFLICT_RETRIES: usize = 20;

/// The saga engine: definitions, database and publisher.
#[derive(Clone)]
pub struct Sagas {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    publisher: Publisher,
    metrics: Metrics,
    defs: HashMap<String, SagaDef>,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Ids of confirmed commands, deleted from the outbox in batches by a background task.
    confirmed: tokio::sync::mpsc::UnboundedSender<Uuid>,
}

impl std::fmt::Debug for Sagas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sagas")
            .field("kinds", &self.inner.defs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn action_str(a: Action) -> &'static str {
    match a {
        Action::Execute => "execute",
        Action::Compensate => "compensate",
    }
}

fn parse_action(s: &str) -> Option<Action> {
    match s {
        "execute" => Some(Action::Execute),
        "compensate" => Some(Action::Compensate),
        _ => None,
    }
}

/// The status as stored (`needs_intervention`).
pub fn status_str(s: Status) -> &'static str {
    match s {
        Status::Pending => "pending",
        Status::Running => "running",
        Status::Compensating => "compensating",
        Status::Completed => "completed",
        Status::Compensated => "compensated",
        Status::NeedsIntervention => "needs_intervention",
    }
}

/// Every stored status, for validating a filter.
pub const STATUSES: &[&str] = &[
    "running",
    "compensating",
    "completed",
    "compensated",
    "needs_intervention",
];

fn millis(d: Duration) -> chrono::Duration {
    chrono::Duration::milliseconds(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Sagas {
    /// An engine running `defs`.
    pub fn new(
        db: DatabaseConnection,
        publisher: Publisher,
        metrics: Metrics,
        defs: impl IntoIterator<Item = SagaDef>,
    ) -> Self {
        let (confirmed, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(delete_confirmed(db.clone(), rx));
        Self {
            inner: Arc::new(Inner {
                db,
                publisher,
                metrics,
                defs: defs.into_iter().map(|d| (d.kind.clone(), d)).collect(),
                locks: (0..LOCK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
                confirmed,
            }),
        }
    }

    /// The definition of `kind`.
    pub fn definition(&self, kind: &str) -> Option<&SagaDef> {
        self.inner.defs.get(kind)
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    fn lock_for(&self, id: Uuid) -> &tokio::sync::Mutex<()> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let i = usize::try_from(h.finish() % LOCK_STRIPES as u64).unwrap_or(0);
        &self.inner.locks[i]
    }

    /// Starts a saga of `kind`: stores it, with its first command in the outbox, in one
    /// transaction, then publishes the command. `saga_id` makes a repeated start (a
    /// redelivered `saga.start`) a no-op; `business_key` is unique per kind.
    #[tracing::instrument(skip(self, payload, traceparent), fields(saga_id))]
    pub async fn start(
        &self,
        kind: &str,
        business_key: Option<String>,
        payload: serde_json::Value,
        traceparent: Option<String>,
        saga_id: Option<Uuid>,
    ) -> Result<Uuid, SagaError> {
        let def = self
            .inner
            .defs
            .get(kind)
            .ok_or_else(|| SagaError::UnknownKind(kind.to_owned()))?;
        let id = saga_id.unwrap_or_else(Uuid::now_v7);
        tracing::Span::current().record("saga_id", tracing::field::display(id));
        let db = &self.inner.db;
        // A repeated start with the same id, or a taken business key, is found when the
        // insert below conflicts: the common path reads nothing first.
        let state = SagaState::new(def);
        let (next, cmds) = apply(def, &state, &Input::Start);
        let now = Utc::now();
        let (deadline_at, deadline_step, deadline_action) = in_flight_deadline(&next, &cmds, now);
        let row = sagas::ActiveModel {
            id: Set(id),
            kind: Set(kind.to_owned()),
            business_key: Set(business_key.clone()),
            status: Set(status_str(next.status).to_owned()),
            step: Set(cmds.first().map_or(0, |c| step_i32(c.step))),
            payload: Set(payload.clone()),
            state: Set(state_json(&next)),
            version: Set(1),
            deadline_at: Set(deadline_at),
            deadline_step: Set(deadline_step),
            deadline_action: Set(deadline_action),
            reason: Set(None),
            traceparent: Set(traceparent.clone()),
            created_at: Set(now),
            updated_at: Set(now),
            finished_at: Set(next.is_finished().then_some(now)),
        };
        let outbox = outbox_rows(def, id, &payload, traceparent.as_deref(), &cmds, now);
        let mut timeline = vec![timeline_row(
            id,
            def,
            0,
            Action::Execute,
            "started",
            None,
            None,
            now,
        )];
        timeline.extend(sent_rows(def, id, &cmds, now));

        let txn = db.begin().await.map_err(self::db("starting a saga"))?;
        let inserted = sagas::Entity::insert(row)
            .exec_without_returning(&txn)
            .await;
        if let Err(e) = inserted {
            drop(txn);
            if let Some(key) = business_key
                && let Some(existing) = self.find_by_key(kind, &key).await?
            {
                return Err(SagaError::Duplicate {
                    kind: kind.to_owned(),
                    key,
                    saga_id: existing,
                });
            }
            if sagas::Entity::find_by_id(id)
                .one(db)
                .await
                .map_err(self::db("reading a saga"))?
                .is_some()
            {
                return Ok(id);
            }
            return Err(SagaError::Db {
                doing: "storing a new saga",
                source: e,
            });
        }
        insert_timeline(&txn, timeline).await?;
        insert_outbox(&txn, &outbox).await?;
        txn.commit()
            .await
            .map_err(self::db("committing a new saga"))?;
        self.inner.metrics.saga_started(kind);
        tracing::info!(%id, kind, "Saga started.");
        self.flush(outbox).await;
        Ok(id)
    }

    async fn find_by_key(&self, kind: &str, key: &str) -> Result<Option<Uuid>, SagaError> {
        Ok(sagas::Entity::find()
            .filter(sagas::Column::Kind.eq(kind))
            .filter(sagas::Column::BusinessKey.eq(key))
            .one(&self.inner.db)
            .await
            .map_err(db("looking up a business key"))?
            .map(|s| s.id))
    }

    /// Applies `input` to saga `id`, stores the result and sends its commands. `note` is
    /// recorded in the timeline (an operator's words, or why a deadline passed).
    #[tracing::instrument(skip(self, note), fields(saga_id = %id))]
    pub async fn handle(
        &self,
        id: Uuid,
        input: Input,
        note: Option<String>,
    ) -> Result<Applied, SagaError> {
        let _serial = self.lock_for(id).lock().await;
        let db = &self.inner.db;
        for _ in 0..MAX_CONFLICT_RETRIES {
            let row = sagas::Entity::find_by_id(id)
                .one(db)
                .await
                .map_err(self::db("reading a saga"))?
                .ok_or(SagaError::NotFound(id))?;
            let def = self
                .inner
                .defs
                .get(&row.kind)
                .ok_or_else(|| SagaError::UnknownKind(row.kind.clone()))?;
            let state: SagaState = serde_json::from_value(row.state.clone())
                .map_err(|e| SagaError::Corrupt(id, e.to_string()))?;
            if state.steps.len() != def.steps.len() {
                return Err(SagaError::Corrupt(
                    id,
                    format!(
                        "{} step states for a definition of {} steps",
                        state.steps.len(),
                        def.steps.len()
                    ),
                ));
            }
            let (next, cmds) = apply(def, &state, &input);
            if next == state && cmds.is_empty() {
                tracing::debug!(?input, "Stale or duplicate saga input: nothing to do.");
                return Ok(Applied::Unchanged(state.status));
            }
            let now = Utc::now();
            let (mut deadline_at, deadline_step, deadline_action) =
                in_flight_deadline(&next, &cmds, now);
            // The same command still in flight keeps its deadline.
            if cmds.is_empty()
                && deadline_step == row.deadline_step
                && deadline_action == row.deadline_action
            {
                deadline_at = row.deadline_at;
            }
            let outbox = outbox_rows(
                def,
                id,
                &row.payload,
                row.traceparent.as_deref(),
                &cmds,
                now,
            );
            let mut timeline = vec![input_row(def, id, &input, note.clone(), now)];
            timeline.extend(sent_rows(def, id, &cmds, now));
            let finished = next.is_finished() && !state.is_finished();
            let update = sagas::ActiveModel {
                status: Set(status_str(next.status).to_owned()),
                step: Set(cmds.first().map_or(row.step, |c| step_i32(c.step))),
                state: Set(state_json(&next)),
                version: Set(row.version + 1),
                deadline_at: Set(deadline_at),
                deadline_step: Set(deadline_step),
                deadline_action: Set(deadline_action),
                reason: Set(next.reason.clone()),
                updated_at: Set(now),
                finished_at: Set(if next.is_finished() {
                    row.finished_at.or(Some(now))
                } else {
                    None
                }),
                ..Default::default()
            };
            let txn = db.begin().await.map_err(self::db("updating a saga"))?;
            let res = sagas::Entity::update_many()
                .set(update)
                .filter(sagas::Column::Id.eq(id))
                .filter(sagas::Column::Version.eq(row.version))
                .exec(&txn)
                .await
                .map_err(self::db("updating a saga"))?;
            if res.rows_affected == 0 {
                drop(txn);
                tracing::debug!("Saga changed under this update; reloading.");
                continue;
            }
            insert_timeline(&txn, timeline).await?;
            self.track_interventions(&txn, def, id, &state, &next, &input, note.as_deref(), now)
                .await?;
            insert_outbox(&txn, &outbox).await?;
            txn.commit()
                .await
                .map_err(self::db("committing a saga update"))?;
            if finished {
                let secs = (now - row.created_at).num_milliseconds() as f64 / 1000.0;
                self.inner
                    .metrics
                    .saga_finished(&row.kind, status_str(next.status), secs);
                tracing::info!(status = status_str(next.status), "Saga finished.");
            }
            self.flush(outbox).await;
            return Ok(Applied::Changed(next.status));
        }
        Err(SagaError::Contended(id))
    }

    #[allow(clippy::too_many_arguments)]
    async fn track_interventions(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        def: &SagaDef,
        id: Uuid,
        before: &SagaState,
        after: &SagaState,
        input: &Input,
        note: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), SagaError> {
        for (i, (old, new)) in before.steps.iter().zip(&after.steps).enumerate() {
            // Only failed compensations, and what follows them, touch interventions: the
            // common path (execute, done, compensated without failure) reads nothing here.
            let relevant = matches!(new, StepStatus::CompensationFailed)
                || *old == StepStatus::CompensationFailed
                || *new == StepStatus::Compensated;
            if old == new || !relevant {
                continue;
            }
            let open = saga_interventions::Entity::find()
                .filter(saga_interventions::Column::SagaId.eq(id))
                .filter(saga_interventions::Column::Step.eq(step_i32(i)))
                .filter(saga_interventions::Column::Status.ne("resolved"))
                .one(txn)
                .await
                .map_err(db("reading interventions"))?;
            match new {
                StepStatus::CompensationFailed => {
                    let reason = match input {
                        Input::Reply { reason, .. } => reason
                            .clone()
                            .unwrap_or_else(|| "the compensation failed".to_owned()),
                        Input::DeadlinePassed { .. } => format!(
                            "no reply to {} within {} ms",
                            def.steps[i].compensation.clone().unwrap_or_default(),
                            def.steps[i].deadline.as_millis()
                        ),
                        _ => "the compensation failed".to_owned(),
                    };
                    if let Some(row) = open {
                        let mut am: saga_interventions::ActiveModel = row.into();
                        am.status = Set("open".to_owned());
                        am.reason = Set(reason);
                        am.updated_at = Set(now);
                        saga_interventions::Entity::update(am)
                            .exec(txn)
                            .await
                            .map_err(db("reopening an intervention"))?;
                    } else {
                        let am = saga_interventions::ActiveModel {
                            id: Set(Uuid::now_v7()),
                            saga_id: Set(id),
                            step: Set(step_i32(i)),
                            step_name: Set(def.steps[i].name.clone()),
                            compensation: Set(def.steps[i]
                                .compensation
                                .clone()
                                .unwrap_or_default()),
                            reason: Set(reason),
                            status: Set("open".to_owned()),
                            note: Set(None),
                            created_at: Set(now),
                            updated_at: Set(now),
                            resolved_at: Set(None),
                        };
                        saga_interventions::Entity::insert(am)
                            .exec_without_returning(txn)
                            .await
                            .map_err(db("opening an intervention"))?;
                    }
                }
                StepStatus::Compensating if *old == StepStatus::CompensationFailed => {
                    if let Some(row) = open {
                        let mut am: saga_interventions::ActiveModel = row.into();
                        am.status = Set("retrying".to_owned());
                        am.note = Set(note.map(str::to_owned));
                        am.updated_at = Set(now);
                        saga_interventions::Entity::update(am)
                            .exec(txn)
                            .await
                            .map_err(db("marking an intervention retried"))?;
                    }
                }
                StepStatus::Compensated => {
                    if let Some(row) = open {
                        let how = match input {
                            Input::Resolve { .. } => format!(
                                "resolved by an operator{}",
                                note.map(|n| format!(": {n}")).unwrap_or_default()
                            ),
                            _ => "the compensation succeeded".to_owned(),
                        };
                        let mut am: saga_interventions::ActiveModel = row.into();
                        am.status = Set("resolved".to_owned());
                        am.note = Set(Some(how));
                        am.updated_at = Set(now);
                        am.resolved_at = Set(Some(now));
                        saga_interventions::Entity::update(am)
                            .exec(txn)
                            .await
                            .map_err(db("resolving an intervention"))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Publishes stored commands, deleting each once the broker confirmed it. A command that
    /// cannot be published stays for the relay.
    async fn flush(&self, rows: Vec<saga_outbox::Model>) {
        for row in rows {
            if let Err(e) = self.publish_command(&row).await {
                tracing::warn!(saga_id = %row.saga_id, command = %row.routing_key, error = %e,
                    "Command stays in the outbox; the relay will send it.");
                return;
            }
            // Deleted in a batch a few milliseconds later: one statement (and one commit)
            // for many commands. Until then the relay's grace period keeps it from a resend.
            if self.inner.confirmed.send(row.id).is_err()
                && let Err(e) = saga_outbox::Entity::delete_by_id(row.id)
                    .exec(&self.inner.db)
                    .await
            {
                tracing::warn!(error = %e, "Cannot delete a sent command from the outbox; it may be sent again (participants drop repeats).");
            }
        }
    }

    async fn publish_command(&self, row: &saga_outbox::Model) -> Result<(), SagaError> {
        let event: Event = serde_json::from_value(row.body.clone())
            .map_err(|e| SagaError::Corrupt(row.saga_id, format!("outbox body: {e}")))?;
        let mut meta = Meta::for_event(&event);
        meta.correlation_id = Some(row.saga_id.to_string());
        meta.traceparent.clone_from(&row.traceparent);
        self.inner
            .publisher
            .publish(
                COMMANDS_EXCHANGE,
                &row.routing_key,
                &event.to_json(),
                meta.properties(),
            )
            .await
            .map_err(SagaError::Publish)
    }

    /// One relay pass: publishes commands older than `grace` still in the outbox (a crash or
    /// a broker outage left them there). Safe with several relays on PostgreSQL (rows are
    /// claimed with `FOR UPDATE SKIP LOCKED`). Returns how many were sent.
    pub async fn relay_once(&self, grace: Duration) -> Result<usize, SagaError> {
        let db = &self.inner.db;
        let cutoff = Utc::now() - millis(grace);
        let q = saga_outbox::Entity::find()
            .filter(saga_outbox::Column::CreatedAt.lte(cutoff))
            .order_by_asc(saga_outbox::Column::Id)
            .limit(200);
        let sent = if db.get_database_backend() == DbBackend::Postgres {
            // Claim the rows, so relays in other processes skip them.
            let txn = db.begin().await.map_err(self::db("relaying the outbox"))?;
            let rows = q
                .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
                .all(&txn)
                .await
                .map_err(self::db("reading the outbox"))?;
            let sent = self.relay_rows(&txn, rows).await?;
            txn.commit()
                .await
                .map_err(self::db("committing the relay"))?;
            sent
        } else {
            // SQLite has one connection: holding a transaction across publishes would stall
            // every other query. One process relays; a repeat is harmless anyway.
            let rows = q.all(db).await.map_err(self::db("reading the outbox"))?;
            self.relay_rows(db, rows).await?
        };
        if sent > 0 {
            tracing::info!(sent, "Relayed commands from the outbox.");
        }
        Ok(sent)
    }

    async fn relay_rows<C: sea_orm::ConnectionTrait>(
        &self,
        conn: &C,
        rows: Vec<saga_outbox::Model>,
    ) -> Result<usize, SagaError> {
        let mut sent = 0;
        for row in rows {
            if let Err(e) = self.publish_command(&row).await {
                tracing::warn!(error = %e, "Relay cannot publish yet.");
                break;
            }
            saga_outbox::Entity::delete_by_id(row.id)
                .exec(conn)
                .await
                .map_err(db("deleting a relayed command"))?;
            sent += 1;
        }
        Ok(sent)
    }

    /// Commands waiting in the outbox, and the age of the oldest.
    pub async fn outbox_depth(&self) -> Result<(u64, Option<Duration>), SagaError> {
        use sea_orm::PaginatorTrait;
        let db = &self.inner.db;
        let n = saga_outbox::Entity::find()
            .count(db)
            .await
            .map_err(self::db("counting the outbox"))?;
        let oldest = saga_outbox::Entity::find()
            .order_by_asc(saga_outbox::Column::CreatedAt)
            .one(db)
            .await
            .map_err(self::db("reading the outbox"))?
            .and_then(|r| (Utc::now() - r.created_at).to_std().ok());
        Ok((n, oldest))
    }

    /// One timer pass: applies `DeadlinePassed` to every saga whose in-flight command is past
    /// its deadline. Returns how many sagas it changed.
    pub async fn tick_once(&self) -> Result<usize, SagaError> {
        let due = sagas::Entity::find()
            .filter(sagas::Column::DeadlineAt.lte(Utc::now()))
            .order_by_asc(sagas::Column::DeadlineAt)
            .limit(200)
            .all(&self.inner.db)
            .await
            .map_err(db("reading due deadlines"))?;
        let mut changed = 0;
        for row in due {
            let (Some(step), Some(action)) = (
                row.deadline_step,
                row.deadline_action.as_deref().and_then(parse_action),
            ) else {
                continue;
            };
            let step = usize::try_from(step).unwrap_or(usize::MAX);
            let note = Some("no reply within the step's deadline".to_owned());
            match self
                .handle(row.id, Input::DeadlinePassed { step, action }, note)
                .await
            {
                Ok(Applied::Changed(_)) => changed += 1,
                Ok(Applied::Unchanged(_)) => {
                    // A stale deadline (the reply won the race): clear it so it is not read
                    // again.
                    let _ = sagas::Entity::update_many()
                        .col_expr(
                            sagas::Column::DeadlineAt,
                            sea_orm::sea_query::Expr::value(Option::<DateTime<Utc>>::None),
                        )
                        .filter(sagas::Column::Id.eq(row.id))
                        .filter(sagas::Column::Version.eq(row.version))
                        .exec(&self.inner.db)
                        .await;
                }
                Err(e) => tracing::warn!(saga_id = %row.id, error = %e, "Cannot apply a deadline."),
            }
        }
        Ok(changed)
    }

    /// Refreshes the saga gauges: sagas per kind in each non-terminal state (running,
    /// compensating, needs_intervention; terminal states grow without bound and are counted
    /// by `sagas_finished_total` instead), open interventions, and the outbox.
    pub async fn refresh_gauges(&self) -> Result<(), SagaError> {
        use sea_orm::{
            PaginatorTrait,
            sea_query::{Expr, ExprTrait},
        };
        const LIVE: [&str; 3] = ["running", "compensating", "needs_intervention"];
        let db = &self.inner.db;
        let rows: Vec<(String, String, i64)> = sagas::Entity::find()
            .select_only()
            .column(sagas::Column::Kind)
            .column(sagas::Column::Status)
            .column_as(Expr::col(sagas::Column::Id).count(), "n")
            .filter(sagas::Column::Status.is_in(LIVE))
            .group_by(sagas::Column::Kind)
            .group_by(sagas::Column::Status)
            .into_tuple()
            .all(db)
            .await
            .map_err(self::db("counting sagas by state"))?;
        let mut counts: Vec<(String, String, i64)> = Vec::new();
        for kind in self.inner.defs.keys() {
            for state in LIVE {
                let n = rows
                    .iter()
                    .find(|(k, s, _)| k == kind && s == state)
                    .map_or(0, |r| r.2);
                counts.push((kind.clone(), state.to_owned(), n));
            }
        }
        self.inner.metrics.set_sagas(&counts);
        let open = saga_interventions::Entity::find()
            .filter(saga_interventions::Column::Status.ne("resolved"))
            .count(db)
            .await
            .map_err(self::db("counting interventions"))?;
        self.inner
            .metrics
            .set_interventions_open(i64::try_from(open).unwrap_or(i64::MAX));
        let (depth, oldest) = self.outbox_depth().await?;
        self.inner.metrics.set_outbox(
            i64::try_from(depth).unwrap_or(i64::MAX),
            oldest.map_or(0.0, |d| d.as_secs_f64()),
        );
        Ok(())
    }

    /// A saga with its steps, timeline and interventions.
    pub async fn get(&self, id: Uuid) -> Result<SagaView, SagaError> {
        let db = &self.inner.db;
        let saga = sagas::Entity::find_by_id(id)
            .one(db)
            .await
            .map_err(self::db("reading a saga"))?
            .ok_or(SagaError::NotFound(id))?;
        let state: Option<SagaState> = serde_json::from_value(saga.state.clone()).ok();
        let steps = match (self.inner.defs.get(&saga.kind), state) {
            (Some(def), Some(state)) => def
                .steps
                .iter()
                .zip(state.steps)
                .enumerate()
                .map(|(i, (d, status))| StepView {
                    step: i,
                    name: d.name.clone(),
                    command: d.command.clone(),
                    compensation: d.compensation.clone(),
                    status,
                })
                .collect(),
            _ => Vec::new(),
        };
        let timeline = saga_steps::Entity::find()
            .filter(saga_steps::Column::SagaId.eq(id))
            .order_by_asc(saga_steps::Column::Id)
            .all(db)
            .await
            .map_err(self::db("reading a saga's timeline"))?;
        let interventions = saga_interventions::Entity::find()
            .filter(saga_interventions::Column::SagaId.eq(id))
            .order_by_asc(saga_interventions::Column::Id)
            .all(db)
            .await
            .map_err(self::db("reading a saga's interventions"))?;
        Ok(SagaView {
            saga,
            steps,
            timeline,
            interventions,
        })
    }

    /// Sagas, newest first, optionally of one status and kind.
    pub async fn list(
        &self,
        status: Option<&str>,
        kind: Option<&str>,
        limit: u64,
    ) -> Result<Vec<sagas::Model>, SagaError> {
        let mut q = sagas::Entity::find().order_by_desc(sagas::Column::Id);
        if let Some(s) = status {
            q = q.filter(sagas::Column::Status.eq(s));
        }
        if let Some(k) = kind {
            q = q.filter(sagas::Column::Kind.eq(k));
        }
        q.limit(limit)
            .all(&self.inner.db)
            .await
            .map_err(db("listing sagas"))
    }

    /// How many sagas are in each state (every state present, zero when none).
    pub async fn counts(&self) -> Result<std::collections::BTreeMap<String, u64>, SagaError> {
        let rows: Vec<(String, i64)> = sagas::Entity::find()
            .select_only()
            .column(sagas::Column::Status)
            .column_as(sagas::Column::Id.count(), "n")
            .group_by(sagas::Column::Status)
            .into_tuple()
            .all(&self.inner.db)
            .await
            .map_err(db("counting sagas"))?;
        let mut out: std::collections::BTreeMap<String, u64> =
            STATUSES.iter().map(|s| ((*s).to_owned(), 0)).collect();
        for (status, n) in rows {
            out.insert(status, u64::try_from(n).unwrap_or_default());
        }
        Ok(out)
    }

    /// A saga by its business key.
    pub async fn by_key(&self, kind: &str, key: &str) -> Result<Option<Uuid>, SagaError> {
        self.find_by_key(kind, key).await
    }

    /// Interventions, newest first; only open ones (`open`, `retrying`) unless `all`.
    pub async fn interventions(
        &self,
        all: bool,
        limit: u64,
    ) -> Result<Vec<saga_interventions::Model>, SagaError> {
        let mut q =
            saga_interventions::Entity::find().order_by_desc(saga_interventions::Column::Id);
        if !all {
            q = q.filter(saga_interventions::Column::Status.ne("resolved"));
        }
        q.limit(limit)
            .all(&self.inner.db)
            .await
            .map_err(db("listing interventions"))
    }

    async fn intervention(&self, id: Uuid) -> Result<saga_interventions::Model, SagaError> {
        saga_interventions::Entity::find_by_id(id)
            .one(&self.inner.db)
            .await
            .map_err(db("reading an intervention"))?
            .ok_or(SagaError::InterventionNotFound(id))
    }

    /// Sends the failed compensation of intervention `id` again.
    pub async fn retry(&self, id: Uuid, note: Option<String>) -> Result<SagaView, SagaError> {
        let iv = self.intervention(id).await?;
        let step = usize::try_from(iv.step).unwrap_or(usize::MAX);
        match self
            .handle(
                iv.saga_id,
                Input::Retry { step },
                note.or(Some("retry requested".into())),
            )
            .await?
        {
            Applied::Changed(_) => self.get(iv.saga_id).await,
            Applied::Unchanged(status) => Err(SagaError::Conflict(format!(
                "intervention {id} cannot be retried now: it is {}, and saga {} is {} \
                 (a retry waits until every other compensation has settled)",
                iv.status,
                iv.saga_id,
                status_str(status)
            ))),
        }
    }

    /// Records that an operator undid the failed compensation of intervention `id` by hand.
    pub async fn resolve(&self, id: Uuid, note: String) -> Result<SagaView, SagaError> {
        let iv = self.intervention(id).await?;
        let step = usize::try_from(iv.step).unwrap_or(usize::MAX);
        match self
            .handle(iv.saga_id, Input::Resolve { step }, Some(note))
            .await?
        {
            Applied::Changed(_) => self.get(iv.saga_id).await,
            Applied::Unchanged(status) => Err(SagaError::Conflict(format!(
                "intervention {id} is {} and saga {} is {}: nothing to resolve",
                iv.status,
                iv.saga_id,
                status_str(status)
            ))),
        }
    }
}

/// Deletes confirmed commands from the outbox in batches (up to 500 ids, or what arrived in
/// 20 ms), until the engine is dropped. A batch that fails to delete is left to the relay,
/// which sends those commands again (participants drop repeats).
async fn delete_confirmed(
    db: DatabaseConnection,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Uuid>,
) {
    const BATCH: usize = 500;
    while let Some(first) = rx.recv().await {
        let mut ids = vec![first];
        let deadline = tokio::time::Instant::now() + Duration::from_millis(20);
        while ids.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(id)) => ids.push(id),
                Ok(None) | Err(_) => break,
            }
        }
        if let Err(e) = saga_outbox::Entity::delete_many()
            .filter(saga_outbox::Column::Id.is_in(ids.clone()))
            .exec(&db)
            .await
        {
            tracing::warn!(error = %e, n = ids.len(),
                "Cannot delete sent commands from the outbox; the relay will send them again.");
        }
    }
}

fn step_i32(step: usize) -> i32 {
    i32::try_from(step).unwrap_or(i32::MAX)
}

fn state_json(s: &SagaState) -> serde_json::Value {
    serde_json::to_value(s).unwrap_or(serde_json::Value::Null)
}

/// The deadline of the command in flight after a transition: (when, step, action).
fn in_flight_deadline(
    next: &SagaState,
    cmds: &[Command],
    now: DateTime<Utc>,
) -> (Option<DateTime<Utc>>, Option<i32>, Option<String>) {
    let flying = next.steps.iter().enumerate().find_map(|(i, s)| match s {
        StepStatus::Executing => Some((i, Action::Execute)),
        StepStatus::Compensating => Some((i, Action::Compensate)),
        _ => None,
    });
    match flying {
        Some((step, action)) => {
            let at = cmds
                .iter()
                .find(|c| c.step == step && c.action == action)
                .map(|c| now + millis(c.deadline));
            (
                at,
                Some(step_i32(step)),
                Some(action_str(action).to_owned()),
            )
        }
        None => (None, None, None),
    }
}

fn outbox_rows(
    def: &SagaDef,
    saga_id: Uuid,
    payload: &serde_json::Value,
    traceparent: Option<&str>,
    cmds: &[Command],
    now: DateTime<Utc>,
) -> Vec<saga_outbox::Model> {
    cmds.iter()
        .map(|c| {
            let data = CommandData {
                saga_id,
                kind: def.kind.clone(),
                step: c.step,
                step_name: def.steps[c.step].name.clone(),
                action: c.action,
                idempotency_key: c.idempotency_key(&saga_id.to_string()),
                payload: payload.clone(),
            };
            let mut event = Event::new(
                c.routing_key.clone(),
                Some(saga_id.to_string()),
                serde_json::to_value(&data).unwrap_or_default(),
            );
            event.occurred_on = now;
            saga_outbox::Model {
                id: event.event_id,
                saga_id,
                routing_key: c.routing_key.clone(),
                body: serde_json::to_value(&event).unwrap_or_default(),
                traceparent: traceparent.map(str::to_owned),
                created_at: now,
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn timeline_row(
    saga_id: Uuid,
    def: &SagaDef,
    step: usize,
    action: Action,
    event: &str,
    command: Option<String>,
    reason: Option<String>,
    at: DateTime<Utc>,
) -> saga_steps::ActiveModel {
    saga_steps::ActiveModel {
        id: Set(Uuid::now_v7()),
        saga_id: Set(saga_id),
        step: Set(step_i32(step)),
        step_name: Set(def
            .steps
            .get(step)
            .map(|s| s.name.clone())
            .unwrap_or_default()),
        action: Set(action_str(action).to_owned()),
        event: Set(event.to_owned()),
        command: Set(command),
        reason: Set(reason),
        at: Set(at),
    }
}

fn sent_rows(
    def: &SagaDef,
    saga_id: Uuid,
    cmds: &[Command],
    at: DateTime<Utc>,
) -> Vec<saga_steps::ActiveModel> {
    cmds.iter()
        .map(|c| {
            timeline_row(
                saga_id,
                def,
                c.step,
                c.action,
                "sent",
                Some(c.routing_key.clone()),
                None,
                at,
            )
        })
        .collect()
}

fn input_row(
    def: &SagaDef,
    saga_id: Uuid,
    input: &Input,
    note: Option<String>,
    at: DateTime<Utc>,
) -> saga_steps::ActiveModel {
    match input {
        Input::Start => timeline_row(saga_id, def, 0, Action::Execute, "started", None, note, at),
        Input::Reply {
            step,
            action,
            ok,
            reason,
        } => timeline_row(
            saga_id,
            def,
            *step,
            *action,
            if *ok { "succeeded" } else { "failed" },
            None,
            reason.clone(),
            at,
        ),
        Input::DeadlinePassed { step, action } => timeline_row(
            saga_id,
            def,
            *step,
            *action,
            "deadline_passed",
            None,
            note,
            at,
        ),
        Input::Retry { step } => timeline_row(
            saga_id,
            def,
            *step,
            Action::Compensate,
            "retried",
            None,
            note,
            at,
        ),
        Input::Resolve { step } => timeline_row(
            saga_id,
            def,
            *step,
            Action::Compensate,
            "resolved",
            None,
            note,
            at,
        ),
    }
}

async fn insert_timeline(
    txn: &sea_orm::DatabaseTransaction,
    rows: Vec<saga_steps::ActiveModel>,
) -> Result<(), SagaError> {
    if rows.is_empty() {
        return Ok(());
    }
    saga_steps::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await
        .map(drop)
        .map_err(db("writing a saga's timeline"))
}

async fn insert_outbox(
    txn: &sea_orm::DatabaseTransaction,
    rows: &[saga_outbox::Model],
) -> Result<(), SagaError> {
    if rows.is_empty() {
        return Ok(());
    }
    let am: Vec<saga_outbox::ActiveModel> = rows.iter().cloned().map(Into::into).collect();
    saga_outbox::Entity::insert_many(am)
        .exec_without_returning(txn)
        .await
        .map(drop)
        .map_err(db("storing commands in the outbox"))
}
