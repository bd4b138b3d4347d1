//! The orchestrator's adapter around the pure state machine: it loads a saga, applies one
//! input, and stores the new state, its timeline entries ([`super::timeline`]), its
//! interventions ([`super::interventions`]) and the commands it sends ([`super::outbox`]) in
//! one transaction guarded by the saga's version (optimistic concurrency). Only then are the
//! commands published; the shared relay publishes whatever a crash or an outage left behind.
//! Its reads (a saga's view, lists, counts, gauges) are in [`super::views`].
//!
//! One saga's inputs are applied one at a time: inside a process by a lock per saga (striped),
//! across processes by the version check (the loser reloads and applies its input to the
//! winner's state).

use std::{
    borrow::Cow,
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use entities::{saga_interventions, saga_steps, sagas};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
    TransactionTrait,
};
use serde::Serialize;
use uuid::Uuid;

use super::{
    machine::{Action, Command, Input, SagaDef, SagaState, Status, StepStatus, apply},
    timeline::{input_row, insert_timeline, sent_rows, timeline_row},
};
use crate::{broker::publisher::Publisher, telemetry::Metrics};

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

pub(super) fn db(doing: &'static str) -> impl FnOnce(DbErr) -> SagaError {
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
    /// The steps' results, by step name (what later commands carry as `results`).
    pub results: std::collections::BTreeMap<String, serde_json::Value>,
    /// Whether the saga runs the definition loaded now (false: it keeps the older one it
    /// started with, `definition` in the row).
    pub definition_current: bool,
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
    /// What the participant returned with its success, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

const LOCK_STRIPES: usize = 256;
const MAX_CONFLICT_RETRIES: usize = 20;

/// The saga engine: definitions, database and publisher.
#[derive(Clone)]
pub struct Sagas {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) db: DatabaseConnection,
    pub(super) publisher: Publisher,
    pub(super) metrics: Metrics,
    pub(super) defs: HashMap<String, SagaDef>,
    /// Per kind: the loaded definition as stored with each saga it starts, and its hash.
    versions: HashMap<String, (serde_json::Value, String)>,
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Ids of confirmed commands, deleted from the outbox in batches by a background task.
    pub(super) confirmed: tokio::sync::mpsc::UnboundedSender<Uuid>,
}

impl std::fmt::Debug for Sagas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sagas")
            .field("kinds", &self.inner.defs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

pub(super) fn action_str(a: Action) -> &'static str {
    match a {
        Action::Execute => "execute",
        Action::Compensate => "compensate",
    }
}

pub(super) fn parse_action(s: &str) -> Option<Action> {
    match s {
        "execute" => Some(Action::Execute),
        "compensate" => Some(Action::Compensate),
        _ => None,
    }
}

/// The status as stored (`needs_intervention`).
pub(crate) fn status_str(s: Status) -> &'static str {
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
pub(crate) const STATUSES: &[&str] = &[
    "running",
    "compensating",
    "completed",
    "compensated",
    "needs_intervention",
];

pub(super) fn millis(d: Duration) -> chrono::Duration {
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
        tokio::spawn(super::outbox::delete_confirmed(db.clone(), rx));
        let defs: HashMap<String, SagaDef> =
            defs.into_iter().map(|d| (d.kind.clone(), d)).collect();
        let versions = defs
            .iter()
            .map(|(kind, d)| (kind.clone(), definition_version(d)))
            .collect();
        Self {
            inner: Arc::new(Inner {
                db,
                publisher,
                metrics,
                defs,
                versions,
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

    /// The definition saga `row` runs: the copy stored when it started (the loaded one when
    /// it is the same version, without parsing the copy), or, for a saga stored before
    /// definitions were kept with it, the loaded definition of its kind.
    pub(super) fn definition_of<'a>(
        &'a self,
        row: &sagas::Model,
    ) -> Result<Cow<'a, SagaDef>, SagaError> {
        let loaded = self.inner.defs.get(&row.kind);
        let same = |hash: &String| {
            self.inner
                .versions
                .get(&row.kind)
                .is_some_and(|(_, h)| h == hash)
        };
        match (&row.definition, &row.definition_hash, loaded) {
            (Some(_), Some(hash), Some(def)) if same(hash) => Ok(Cow::Borrowed(def)),
            (Some(copy), _, _) => serde_json::from_value(copy.clone())
                .map(Cow::Owned)
                .map_err(|e| SagaError::Corrupt(row.id, format!("stored definition: {e}"))),
            (None, _, Some(def)) => Ok(Cow::Borrowed(def)),
            (None, _, None) => Err(SagaError::UnknownKind(row.kind.clone())),
        }
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
    /// redelivered `saga.start`) a no-op; `business_key` is unique per kind. The saga keeps
    /// a copy of its definition.
    pub async fn start(
        &self,
        kind: &str,
        business_key: Option<String>,
        payload: serde_json::Value,
        traceparent: Option<String>,
        saga_id: Option<Uuid>,
    ) -> Result<Uuid, SagaError> {
        let start = Start {
            business_key,
            payload,
            traceparent,
            idempotency_key: None,
        };
        self.start_with(kind, start, saga_id).await
    }

    /// Starts a saga of `kind` for an `Idempotency-Key`: the saga that key already started
    /// (whatever its body: the caller compares) or a new one storing the key. Two starts racing
    /// with one key start one saga (the key is unique per kind).
    pub async fn start_idempotent(&self, kind: &str, start: Start) -> Result<Started, SagaError> {
        let key = start.idempotency_key.clone().unwrap_or_default();
        if let Some(row) = self.find_by_idempotency_key(kind, &key).await? {
            return Ok(Started::Existing(Box::new(row)));
        }
        match self.start_with(kind, start, None).await {
            Ok(id) => Ok(Started::New(id)),
            Err(e) => match self.find_by_idempotency_key(kind, &key).await? {
                Some(row) => Ok(Started::Existing(Box::new(row))),
                None => Err(e),
            },
        }
    }

    async fn find_by_idempotency_key(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<sagas::Model>, SagaError> {
        sagas::Entity::find()
            .filter(sagas::Column::Kind.eq(kind))
            .filter(sagas::Column::IdempotencyKey.eq(key))
            .one(&self.inner.db)
            .await
            .map_err(db("looking up an idempotency key"))
    }

    // Long on purpose: one transaction's steps in order (rows, insert, the duplicate and
    // repeat checks, timeline, outbox, commit, flush).
    #[tracing::instrument(skip(self, start), fields(saga_id))]
    async fn start_with(
        &self,
        kind: &str,
        start: Start,
        saga_id: Option<Uuid>,
    ) -> Result<Uuid, SagaError> {
        let Start {
            business_key,
            payload,
            traceparent,
            idempotency_key,
        } = start;
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
            definition: Set(self.inner.versions.get(kind).map(|v| v.0.clone())),
            definition_hash: Set(self.inner.versions.get(kind).map(|v| v.1.clone())),
            idempotency_key: Set(idempotency_key),
        };
        let outbox = super::outbox::rows(
            def,
            id,
            (&payload, &next.results),
            traceparent.as_deref(),
            &cmds,
            now,
        );
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
        super::outbox::insert(&txn, &outbox).await?;
        txn.commit()
            .await
            .map_err(self::db("committing a new saga"))?;
        self.inner.metrics.saga_started(kind);
        tracing::info!(%id, kind, "Saga started.");
        self.flush(outbox).await;
        Ok(id)
    }

    pub(super) async fn find_by_key(
        &self,
        kind: &str,
        key: &str,
    ) -> Result<Option<Uuid>, SagaError> {
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
    // Long on purpose: the optimistic-concurrency loop (read, apply, conditional update,
    // timeline, interventions, outbox, commit) reads as one transaction.
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
            let def = self.definition_of(&row)?;
            let def = def.as_ref();
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
            let mut outbox = super::outbox::rows(
                def,
                id,
                (&row.payload, &next.results),
                row.traceparent.as_deref(),
                &cmds,
                now,
            );
            // Ended (again, after an operator's retry): `saga.<status>` on `warren.events`.
            if next.is_finished() && next.status != state.status {
                outbox.push(super::outbox::finished_event(&row, &next, now));
            }
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
            super::outbox::insert(&txn, &outbox).await?;
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
}

/// What starts a saga besides its kind.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// A business key unique per kind (an order number).
    pub business_key: Option<String>,
    /// The saga's input, handed to every command.
    pub payload: serde_json::Value,
    /// The W3C `traceparent` of the request that starts it.
    pub traceparent: Option<String>,
    /// The `Idempotency-Key` it is started with (unique per kind).
    pub idempotency_key: Option<String>,
}

/// What [`Sagas::start_idempotent`] did.
#[derive(Debug, Clone)]
pub enum Started {
    /// Started a new saga.
    New(Uuid),
    /// The key had already started this saga; nothing was started.
    Existing(Box<sagas::Model>),
}

/// A definition as stored with each saga it starts (JSON), and its version: the SHA-256 of
/// that JSON, hex.
fn definition_version(def: &SagaDef) -> (serde_json::Value, String) {
    use sha2::{Digest, Sha256};
    let value = serde_json::to_value(def).unwrap_or(serde_json::Value::Null);
    let hash = hex::encode(Sha256::digest(value.to_string().as_bytes()));
    (value, hash)
}

pub(super) fn step_i32(step: usize) -> i32 {
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
