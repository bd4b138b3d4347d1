//! The operator console's server side (its pages are in `console/`, served by
//! [`crate::http::console`]): the audit log of operator actions, dead-letter operations that
//! run in pages with their progress and a per-queue lock in the database, and the overview's
//! figures.
//!
//! Every operator action (replay, purge, failed-job retry, intervention retry or resolve) is a
//! row of `operator_actions`: who, what, on what, when, how many messages it moved.
//!
//! A replay or purge from the console is an *operation*:
//! - it takes the queue's lock (`lock_key = dlq:<queue>`, unique), so a second operator's
//!   operation on the same queue is refused with who holds it, and two operators cannot run
//!   the same replay at once. Independently, a parked message is only ever held by one
//!   `basic.get` pass at a time and acked only after its replayed copy is confirmed
//!   ([`crate::jobs::dlq`]), so even replays that bypass the lock (the CLI) move each parked
//!   copy once;
//! - it moves at most `console.page_size` messages per pass and records `moved` after each
//!   page (the progress the console polls, and a heartbeat: a lock whose operation has not
//!   moved for [`STALE_AFTER`] belongs to a process that stopped, and is taken over);
//! - its filter carries the operation's start ([`Filter::parked_before`]): a message it replayed
//!   that fails again and is parked again is not taken by a later page.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use entities::operator_actions::{self, Entity as Actions};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, sea_query::Expr,
};
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    broker::topology::Management,
    jobs::dlq::{Dlq, DlqError, Filter},
};

/// A running operation that has not recorded progress for this long is taken to have died
/// with its process; its lock can be taken over.
pub const STALE_AFTER: Duration = Duration::from_secs(120);

/// Passes that must find nothing before a background operation ends (see `Console::run`).
const CONFIRM_PASSES: usize = 2;
/// Pause before each of those passes: longer than a peek of a page of messages holds them.
const CONFIRM_PAUSE: Duration = Duration::from_millis(500);

/// Pause before an operation's final sweep for copies the broker handed back.
const SWEEP_AFTER: Duration = Duration::from_secs(1);

/// Status of an action that is still running.
pub const RUNNING: &str = "running";
/// Status of an action that finished.
pub const DONE: &str = "done";
/// Status of an action that stopped with an error.
pub const FAILED: &str = "failed";
/// Status of an operation whose process stopped before it finished.
pub const ABANDONED: &str = "abandoned";

/// Errors of the console's operations and audit log.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Another operation runs on this queue.
    #[error(
        "{actor} is running {action} on {target} (started {started}, {moved} moved so far); \
         wait until it ends"
    )]
    Running {
        /// Who runs it.
        actor: String,
        /// What it is.
        action: String,
        /// The queue.
        target: String,
        /// When it started (RFC 3339).
        started: String,
        /// Messages it moved so far.
        moved: i64,
    },
    /// No action has this id.
    #[error("no operator action with id {0}")]
    NotFound(Uuid),
    /// The database failed.
    #[error("the audit log is unavailable ({doing}): {source}")]
    Db {
        /// What was being done.
        doing: &'static str,
        /// sea-orm's error.
        source: DbErr,
    },
}

fn db_error(doing: &'static str) -> impl FnOnce(DbErr) -> ConsoleError {
    move |source| ConsoleError::Db { doing, source }
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
}

/// Where the console links to: Grafana's dashboards and the management UI.
#[derive(Debug, Clone, Serialize)]
pub struct Links {
    /// The management UI's queue list of warren's vhost.
    pub management: String,
    /// Grafana dashboards by name (`queues`, `sagas`, `http`, `process`), when Grafana is set.
    pub grafana: Option<serde_json::Map<String, Value>>,
}

/// One work queue on the overview.
#[derive(Debug, Clone, Serialize)]
pub struct QueueRow {
    /// The work queue.
    pub queue: String,
    /// Its parking queue.
    pub dead_queue: String,
    /// Ready messages (management API).
    pub ready: Option<u64>,
    /// Delivered, not yet acknowledged (management API).
    pub unacked: Option<u64>,
    /// Consumers (management API).
    pub consumers: Option<u64>,
    /// Messages published into it per second (management API).
    pub rate_in: Option<f64>,
    /// Messages acknowledged from it per second (management API).
    pub rate_out: Option<f64>,
    /// Parked messages (exact).
    pub parked: Option<u32>,
    /// Its page in the management UI.
    pub management_url: String,
}

/// The console: audit log, operations, overview.
#[derive(Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    dlq: Dlq,
    sagas: crate::saga::Sagas,
    management: Option<Management>,
    vhost: String,
    links: Links,
    page_size: usize,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("vhost", &self.inner.vhost)
            .field("page_size", &self.inner.page_size)
            .finish_non_exhaustive()
    }
}

/// The management UI's address from settings: `console.management_ui_url`, else
/// `amqp.management_url` without credentials.
fn management_ui(settings: &crate::config::Settings) -> String {
    let configured = settings.console.management_ui_url.trim();
    if !configured.is_empty() {
        return configured.trim_end_matches('/').to_owned();
    }
    match url::Url::parse(settings.amqp.management_url.expose()) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => String::new(),
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

impl Console {
    /// The console over these parts, with links and page size from `settings`.
    pub fn new(
        settings: &crate::config::Settings,
        db: DatabaseConnection,
        dlq: Dlq,
        sagas: crate::saga::Sagas,
    ) -> Self {
        let vhost = crate::broker::vhost_of(settings.amqp.url.expose());
        let management = match Management::with_timeout(
            settings.amqp.management_url.expose(),
            Duration::from_secs(3),
        ) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(error = %e, "The console cannot use the management API.");
                None
            }
        };
        let ui = management_ui(settings);
        let grafana = settings.console.grafana_url.trim().trim_end_matches('/');
        let links = Links {
            management: format!("{ui}/#/queues/{}", encode(&vhost)),
            grafana: (!grafana.is_empty()).then(|| {
                ["queues", "sagas", "http", "process"]
                    .into_iter()
                    .map(|d| (d.to_owned(), json!(format!("{grafana}/d/warren-{d}"))))
                    .collect()
            }),
        };
        Self {
            inner: Arc::new(Inner {
                db,
                dlq,
                sagas,
                management,
                vhost,
                links,
                page_size: settings.console.page_size.max(1),
            }),
        }
    }

    /// Records an action that is over (see [`record`]).
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: Value,
        moved: u64,
        error: Option<String>,
    ) -> Result<operator_actions::Model, ConsoleError> {
        record(&self.inner.db, actor, action, target, detail, moved, error).await
    }

    /// Starts a replay or purge of `queue`'s parked messages that `filter` selects, in the
    /// background: takes the queue's lock (or fails with [`ConsoleError::Running`]), records
    /// the operation and returns it; its progress is read with [`Console::get`].
    pub async fn start(
        &self,
        actor: &str,
        op: Operation,
        queue: &str,
        filter: Filter,
        detail: Value,
        matched: u32,
    ) -> Result<operator_actions::Model, ConsoleError> {
        let row = self
            .begin(actor, op, queue, detail, Some(i64::from(matched)))
            .await?;
        let this = self.clone();
        let (id, queue, started) = (row.id, queue.to_owned(), row.created_at);
        tokio::spawn(async move {
            this.run(id, op, &queue, filter, started, CONFIRM_PASSES)
                .await;
        });
        Ok(row)
    }

    /// Runs a replay or purge to its end and returns the finished record (the synchronous
    /// form of [`Console::start`], for `POST /v1/dlq/{queue}/replay|purge`). It ends at the
    /// first pass that finds the queue exhausted (no second looks: the caller is waiting, and
    /// can call again).
    pub async fn run_now(
        &self,
        actor: &str,
        op: Operation,
        queue: &str,
        filter: Filter,
        detail: Value,
    ) -> Result<(operator_actions::Model, Option<DlqError>), ConsoleError> {
        let row = self.begin(actor, op, queue, detail, None).await?;
        let error = self.run(row.id, op, queue, filter, row.created_at, 0).await;
        Ok((self.get(row.id).await?, error))
    }

    /// Inserts the running operation with its lock, taking over a stale lock once.
    async fn begin(
        &self,
        actor: &str,
        op: Operation,
        queue: &str,
        detail: Value,
        matched: Option<i64>,
    ) -> Result<operator_actions::Model, ConsoleError> {
        let lock = format!("dlq:{queue}");
        for _ in 0..3 {
            let now = Utc::now();
            let inserted = operator_actions::ActiveModel {
                id: Set(Uuid::now_v7()),
                actor: Set(actor.to_owned()),
                action: Set(op.action().to_owned()),
                target: Set(queue.to_owned()),
                detail: Set(detail.clone()),
                status: Set(RUNNING.to_owned()),
                matched: Set(matched),
                moved: Set(0),
                error: Set(None),
                lock_key: Set(Some(lock.clone())),
                created_at: Set(now),
                updated_at: Set(now),
                finished_at: Set(None),
            }
            .insert(&self.inner.db)
            .await;
            match inserted {
                Ok(row) => return Ok(row),
                Err(e) => {
                    let holder = Actions::find()
                        .filter(operator_actions::Column::LockKey.eq(&lock))
                        .one(&self.inner.db)
                        .await
                        .map_err(db_error("reading the queue's lock"))?;
                    let Some(holder) = holder else {
                        // Not a lock conflict (or the holder just finished): a real error, or
                        // a free lock to try again.
                        if is_unique_violation(&e) {
                            continue;
                        }
                        return Err(ConsoleError::Db {
                            doing: "recording an operation",
                            source: e,
                        });
                    };
                    let stale = chrono::TimeDelta::from_std(STALE_AFTER).unwrap_or_default();
                    if Utc::now() - holder.updated_at < stale {
                        return Err(ConsoleError::Running {
                            actor: holder.actor,
                            action: holder.action,
                            target: holder.target,
                            started: holder.created_at.to_rfc3339(),
                            moved: holder.moved,
                        });
                    }
                    tracing::warn!(operation = %holder.id, queue,
                        "Taking over the lock of an operation that stopped making progress.");
                    Actions::update_many()
                        .col_expr(operator_actions::Column::Status, Expr::value(ABANDONED))
                        .col_expr(
                            operator_actions::Column::LockKey,
                            Expr::value(Option::<String>::None),
                        )
                        .col_expr(
                            operator_actions::Column::FinishedAt,
                            Expr::value(Some(Utc::now())),
                        )
                        .filter(operator_actions::Column::Id.eq(holder.id))
                        .filter(operator_actions::Column::UpdatedAt.eq(holder.updated_at))
                        .exec(&self.inner.db)
                        .await
                        .map_err(db_error("taking over a stale lock"))?;
                }
            }
        }
        Err(ConsoleError::Db {
            doing: "taking the queue's lock",
            source: DbErr::Custom("the lock changed hands twice; try again".into()),
        })
    }

    /// Moves pages until a page moves fewer than a page (the selection is exhausted) or a
    /// pass fails; records progress after each page and the end. Returns the error, if any.
    #[tracing::instrument(skip(self, filter), fields(operation = %id, queue, action = op.action(), moved))]
    async fn run(
        &self,
        id: Uuid,
        op: Operation,
        queue: &str,
        filter: Filter,
        started: DateTime<Utc>,
        second_looks: usize,
    ) -> Option<DlqError> {
        let page = self.inner.page_size;
        let mut moved = 0usize;
        let overall = filter.limit;
        let mut error = None;
        let mut backoff = crate::retry::operation_page();
        let mut seen = crate::jobs::dlq::MovedIds::new();
        let mut confirmations = 0usize;
        loop {
            let want = overall.map_or(page, |l| l.saturating_sub(moved).min(page));
            if want == 0 {
                break;
            }
            let f = Filter {
                limit: Some(want),
                parked_before: Some(filter.parked_before.unwrap_or(started)),
                ..filter.clone()
            };
            let result = match op {
                Operation::Replay => self.inner.dlq.replay_tracked(queue, &f, &mut seen).await,
                Operation::Purge => self.inner.dlq.purge_tracked(queue, &f, &mut seen).await,
            };
            let n = match result {
                Ok(n) => n,
                Err(e) => {
                    moved += e.done();
                    // A transient broker error (a confirm that came too late, a lost
                    // channel): what was not moved is still parked, so the page is tried
                    // again after a pause, a few times.
                    if e.transient()
                        && let Some(pause) = backoff.next()
                    {
                        tracing::warn!(error = %e, moved, retry_in = ?pause,
                            "Dead-letter page stopped; trying again.");
                        self.progress(id, moved).await;
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    error = Some(e);
                    break;
                }
            };
            moved += n;
            if n < want {
                // The queue looked exhausted. A peek (a console page polls one every few
                // seconds, `warren dlq show`) holds the messages it reads until it has read
                // them, and a pass cannot see held messages: seen in a browser test, a replay
                // of 3 moved 2. Look again after a pause, until a look finds nothing.
                if second_looks > 0 && (n > 0 || confirmations < second_looks) {
                    confirmations = if n > 0 { 0 } else { confirmations + 1 };
                    if confirmations <= second_looks {
                        self.progress(id, moved).await;
                        tokio::time::sleep(CONFIRM_PAUSE).await;
                        continue;
                    }
                }
                break;
            }
            confirmations = 0;
            self.progress(id, moved).await;
        }
        tracing::Span::current().record("moved", moved);
        let now = Utc::now();
        let finished = Actions::update_many()
            .col_expr(
                operator_actions::Column::Status,
                Expr::value(if error.is_some() { FAILED } else { DONE }),
            )
            .col_expr(operator_actions::Column::Moved, Expr::value(moved as i64))
            .col_expr(
                operator_actions::Column::Error,
                Expr::value(error.as_ref().map(ToString::to_string)),
            )
            .col_expr(
                operator_actions::Column::LockKey,
                Expr::value(Option::<String>::None),
            )
            .col_expr(operator_actions::Column::UpdatedAt, Expr::value(now))
            .col_expr(operator_actions::Column::FinishedAt, Expr::value(Some(now)))
            .filter(operator_actions::Column::Id.eq(id))
            .exec(&self.inner.db)
            .await;
        if let Err(e) = finished {
            tracing::error!(error = %e, moved,
                "The operation ended but its record was not updated; its lock frees itself once stale.");
        }
        match &error {
            Some(e) => tracing::warn!(error = %e, moved, "Dead-letter operation stopped."),
            None => tracing::info!(moved, "Dead-letter operation done."),
        }
        if error.is_none() && !seen.is_empty() {
            // In the background: the caller (a synchronous replay) need not wait for it.
            let this = self.clone();
            let queue = queue.to_owned();
            tokio::spawn(async move { this.sweep(&queue, &mut seen).await });
        }
        error
    }

    /// Removes copies of moved messages that the broker handed back to the parking queue
    /// after the last page (acks it had not applied when that page's channel closed). Runs
    /// after the operation is recorded as done.
    async fn sweep(&self, queue: &str, seen: &mut crate::jobs::dlq::MovedIds) {
        tokio::time::sleep(SWEEP_AFTER).await;
        let f = Filter {
            message_ids: Some(seen.clone()),
            ..Filter::default()
        };
        if let Err(e) = self.inner.dlq.purge_tracked(queue, &f, seen).await {
            tracing::warn!(error = %e, queue,
                "The final sweep for handed-back copies failed; a later replay would move them again.");
        }
    }

    async fn progress(&self, id: Uuid, moved: usize) {
        if let Err(e) = Actions::update_many()
            .col_expr(operator_actions::Column::Moved, Expr::value(moved as i64))
            .col_expr(operator_actions::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(operator_actions::Column::Id.eq(id))
            .exec(&self.inner.db)
            .await
        {
            tracing::warn!(error = %e, "Cannot record an operation's progress.");
        }
    }

    /// One action by id.
    pub async fn get(&self, id: Uuid) -> Result<operator_actions::Model, ConsoleError> {
        Actions::find_by_id(id)
            .one(&self.inner.db)
            .await
            .map_err(db_error("reading an action"))?
            .ok_or(ConsoleError::NotFound(id))
    }

    /// The newest actions first.
    pub async fn audit(&self, limit: u64) -> Result<Vec<operator_actions::Model>, ConsoleError> {
        Actions::find()
            .order_by_desc(operator_actions::Column::Id)
            .limit(limit)
            .all(&self.inner.db)
            .await
            .map_err(db_error("reading the audit log"))
    }

    /// The overview: queues (management API and exact parked counts), failed jobs, sagas by
    /// state, open interventions, links. Parts that fail are reported, not fatal.
    pub async fn overview(&self) -> Value {
        let (mgmt, parked) = tokio::join!(self.management_queues(), self.inner.dlq.list());
        let (mgmt, management_error) = match mgmt {
            Ok(m) => (m, None),
            Err(e) => (Default::default(), Some(e)),
        };
        let (parked, dlq_error) = match parked {
            Ok(p) => (p, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        let queues: Vec<QueueRow> = self
            .inner
            .dlq
            .work_queues()
            .into_iter()
            .map(|queue| {
                let m: Option<&Value> = mgmt.get(&queue);
                let num = |ptr: &str| m.and_then(|v| v.pointer(ptr)).and_then(Value::as_u64);
                let rate =
                    |ptr: &str| m.map(|v| v.pointer(ptr).and_then(Value::as_f64).unwrap_or(0.0));
                QueueRow {
                    dead_queue: crate::jobs::dlq::dead_queue(&queue),
                    ready: num("/messages_ready"),
                    unacked: num("/messages_unacknowledged"),
                    consumers: num("/consumers"),
                    rate_in: rate("/message_stats/publish_details/rate"),
                    rate_out: rate("/message_stats/ack_details/rate"),
                    parked: parked.iter().find(|p| p.queue == queue).map(|p| p.parked),
                    management_url: format!("{}/{}", self.inner.links.management, encode(&queue)),
                    queue,
                }
            })
            .collect();
        let dead_letters: u64 = queues.iter().filter_map(|q| q.parked).map(u64::from).sum();
        let db = &self.inner.db;
        let failed_jobs_parked = entities::failed_jobs::Entity::find()
            .filter(entities::failed_jobs::Column::Status.eq(crate::store::FAILED_PARKED))
            .count(db)
            .await
            .ok();
        let sagas = self.inner.sagas.counts().await.ok();
        let interventions_open = entities::saga_interventions::Entity::find()
            .filter(entities::saga_interventions::Column::Status.ne("resolved"))
            .count(db)
            .await
            .ok();
        json!({
            "generated_at": Utc::now(),
            "vhost": self.inner.vhost,
            "queues": queues,
            "management_error": management_error,
            "dlq_error": dlq_error,
            "dead_letters": dead_letters,
            "failed_jobs_parked": failed_jobs_parked,
            "sagas": sagas,
            "interventions_open": interventions_open,
            "links": self.inner.links,
        })
    }

    async fn management_queues(&self) -> Result<std::collections::HashMap<String, Value>, String> {
        let Some(api) = &self.inner.management else {
            return Err("the management API address is not usable".to_owned());
        };
        let rows = api
            .get(&format!(
                "queues/{}?columns=name,messages_ready,messages_unacknowledged,consumers,message_stats",
                encode(&self.inner.vhost)
            ))
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r.get("name")?.as_str()?.to_owned(), r)))
            .collect())
    }
}

/// Records an action that is over in the audit log: who, what, on what, the detail given,
/// how many messages it moved and, if it failed, why.
pub async fn record(
    db: &DatabaseConnection,
    actor: &str,
    action: &str,
    target: &str,
    detail: Value,
    moved: u64,
    error: Option<String>,
) -> Result<operator_actions::Model, ConsoleError> {
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
    .insert(db)
    .await
    .map_err(db_error("recording an action"))
}

/// The audit log's name for whoever runs the command line: `cli:<user>@<host>`.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".to_owned());
    format!("cli:{user}@{host}")
}

fn is_unique_violation(e: &DbErr) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("unique") || text.contains("duplicate key")
}
