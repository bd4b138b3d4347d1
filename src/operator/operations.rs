//! Replay and purge as *operations*: locked per queue, run in pages, their progress recorded.
//!
//! - An operation takes the queue's lock (`lock_key = dlq:<queue>`, unique), so a second
//!   operation on the same queue (from the console, the HTTP API or the command line) is
//!   refused with who holds it, and two operators cannot run the same replay at once.
//!   Independently, a parked message is only ever held by one `basic.get` pass at a time and
//!   acked only after its replayed copy is confirmed ([`super::dlq`]), so even a pass that
//!   bypasses the lock moves each parked copy once;
//! - it moves at most `console.page_size` messages per pass and records `moved` after each
//!   page (the progress the console polls and the command line prints, and a heartbeat: a lock
//!   whose operation has not moved for [`STALE_AFTER`] belongs to a process that stopped, and
//!   is taken over);
//! - its filter carries the operation's start ([`Filter::parked_before`]): a message it
//!   replayed that fails again and is parked again is not taken by a later page.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entities::operator_actions::{self, Entity as Actions};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, QueryFilter, Set, sea_query::Expr,
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    ABANDONED, DONE, FAILED, Operation, Operator, OperatorError, RUNNING, STALE_AFTER, db_error,
    dlq::{DlqError, Filter, MovedIds},
};

/// Passes that must find nothing before a waited-for operation ends (see [`Pacing`]).
const CONFIRM_PASSES: usize = 2;
/// Pause before each of those passes: longer than a peek of a page of messages holds them.
const CONFIRM_PAUSE: Duration = Duration::from_millis(500);
/// Pause before an operation's final sweep for copies the broker handed back.
const SWEEP_AFTER: Duration = Duration::from_secs(1);

/// A progress report: called with the messages moved so far after each page.
pub(crate) type Progress<'a> = &'a (dyn Fn(usize) + Send + Sync);

/// How an operation ends: after how many empty second looks, and whether its final sweep
/// runs in the background or is awaited (a command line exits when the call returns).
#[derive(Debug, Clone, Copy)]
struct Pacing {
    second_looks: usize,
    await_sweep: bool,
}

impl Operator {
    /// Starts a replay or purge of `queue`'s parked messages that `filter` selects, in the
    /// background: takes the queue's lock (or fails with [`OperatorError::Running`]), records
    /// the operation and returns it; its progress is read with [`Operator::get`].
    pub async fn start(
        &self,
        actor: &str,
        op: Operation,
        queue: &str,
        filter: Filter,
        detail: Value,
        matched: u32,
    ) -> Result<operator_actions::Model, OperatorError> {
        let row = self
            .begin(
                actor,
                op.action(),
                queue,
                queue,
                detail,
                Some(i64::from(matched)),
            )
            .await?;
        let this = self.clone();
        let (id, queue, started) = (row.id, queue.to_owned(), row.created_at);
        let pacing = Pacing {
            second_looks: CONFIRM_PASSES,
            await_sweep: false,
        };
        tokio::spawn(async move {
            this.run(id, op, &queue, filter, started, pacing, &|_| {})
                .await;
        });
        Ok(row)
    }

    /// Runs a replay or purge to its end and returns the finished record and the error that
    /// stopped it, if any (the synchronous form of [`Operator::start`], for
    /// `POST /v1/dlq/{queue}/replay|purge`). It ends at the first pass that finds the queue
    /// exhausted (no second looks: the caller is waiting, and can call again).
    pub async fn run_now(
        &self,
        actor: &str,
        op: Operation,
        queue: &str,
        filter: Filter,
        detail: Value,
    ) -> Result<(operator_actions::Model, Option<DlqError>), OperatorError> {
        let row = self
            .begin(actor, op.action(), queue, queue, detail, None)
            .await?;
        let pacing = Pacing {
            second_looks: 0,
            await_sweep: false,
        };
        let error = self
            .run(row.id, op, queue, filter, row.created_at, pacing, &|_| {})
            .await;
        Ok((self.get(row.id).await?, error))
    }

    /// Runs a replay or purge to its end like the console's, calling `on_start` with the
    /// recorded operation and `progress` after each page, and waits for its final sweep (for
    /// the command line, whose process ends with the call). Returns the finished record and
    /// the error that stopped it, if any.
    #[allow(clippy::too_many_arguments)] // The operation's parts and its two observers.
    pub async fn run_watched(
        &self,
        actor: &str,
        op: Operation,
        queue: &str,
        filter: Filter,
        detail: Value,
        on_start: &(dyn Fn(&operator_actions::Model) + Send + Sync),
        progress: Progress<'_>,
    ) -> Result<(operator_actions::Model, Option<DlqError>), OperatorError> {
        let row = self
            .begin(actor, op.action(), queue, queue, detail, None)
            .await?;
        on_start(&row);
        let pacing = Pacing {
            second_looks: CONFIRM_PASSES,
            await_sweep: true,
        };
        let error = self
            .run(row.id, op, queue, filter, row.created_at, pacing, progress)
            .await;
        Ok((self.get(row.id).await?, error))
    }

    /// Inserts the running action `action` on `target` holding `queue`'s lock, taking over a
    /// stale lock once.
    pub(super) async fn begin(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        queue: &str,
        detail: Value,
        matched: Option<i64>,
    ) -> Result<operator_actions::Model, OperatorError> {
        let lock = format!("dlq:{queue}");
        for _ in 0..3 {
            let now = Utc::now();
            let inserted = operator_actions::ActiveModel {
                id: Set(Uuid::now_v7()),
                actor: Set(actor.to_owned()),
                action: Set(action.to_owned()),
                target: Set(target.to_owned()),
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
            let e = match inserted {
                Ok(row) => return Ok(row),
                Err(e) => e,
            };
            let holder = Actions::find()
                .filter(operator_actions::Column::LockKey.eq(&lock))
                .one(&self.inner.db)
                .await
                .map_err(db_error("reading the queue's lock"))?;
            let Some(holder) = holder else {
                // Not a lock conflict (or the holder just finished): a real error, or a free
                // lock to try again.
                if is_unique_violation(&e) {
                    continue;
                }
                return Err(OperatorError::Db {
                    doing: "recording an operation",
                    source: e,
                });
            };
            let stale = chrono::TimeDelta::from_std(STALE_AFTER).unwrap_or_default();
            if Utc::now() - holder.updated_at < stale {
                return Err(OperatorError::Running {
                    id: holder.id,
                    actor: holder.actor,
                    action: holder.action,
                    target: holder.target,
                    started: holder.created_at.to_rfc3339(),
                    moved: holder.moved,
                });
            }
            self.take_over(&holder, queue).await?;
        }
        Err(OperatorError::Db {
            doing: "taking the queue's lock",
            source: DbErr::Custom("the lock changed hands twice; try again".into()),
        })
    }

    /// Marks a stale lock holder abandoned and frees its lock (unless it moved meanwhile).
    async fn take_over(
        &self,
        holder: &operator_actions::Model,
        queue: &str,
    ) -> Result<(), OperatorError> {
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
        Ok(())
    }

    /// Records the end of action `id`: done (or failed with `error`), `moved` messages, its
    /// lock freed.
    pub(super) async fn finish(
        &self,
        id: Uuid,
        moved: usize,
        error: Option<String>,
    ) -> Result<(), OperatorError> {
        let now = Utc::now();
        Actions::update_many()
            .col_expr(
                operator_actions::Column::Status,
                Expr::value(if error.is_some() { FAILED } else { DONE }),
            )
            .col_expr(operator_actions::Column::Moved, Expr::value(moved as i64))
            .col_expr(operator_actions::Column::Error, Expr::value(error))
            .col_expr(
                operator_actions::Column::LockKey,
                Expr::value(Option::<String>::None),
            )
            .col_expr(operator_actions::Column::UpdatedAt, Expr::value(now))
            .col_expr(operator_actions::Column::FinishedAt, Expr::value(Some(now)))
            .filter(operator_actions::Column::Id.eq(id))
            .exec(&self.inner.db)
            .await
            .map_err(db_error("recording the end of an action"))?;
        Ok(())
    }

    /// Moves pages until a page moves fewer than a page (the selection is exhausted) or a
    /// pass fails; records progress after each page and the end. Returns the error, if any.
    #[allow(clippy::too_many_arguments)] // One operation's parts; private.
    #[tracing::instrument(skip(self, filter, pacing, progress), fields(operation = %id, queue, action = op.action(), moved))]
    async fn run(
        &self,
        id: Uuid,
        op: Operation,
        queue: &str,
        filter: Filter,
        started: DateTime<Utc>,
        pacing: Pacing,
        progress: Progress<'_>,
    ) -> Option<DlqError> {
        let mut seen = MovedIds::new();
        let (moved, error) = self
            .pages(id, op, queue, &filter, started, pacing, progress, &mut seen)
            .await;
        tracing::Span::current().record("moved", moved);
        if let Err(e) = self
            .finish(id, moved, error.as_ref().map(ToString::to_string))
            .await
        {
            tracing::error!(error = %e, moved,
                "The operation ended but its record was not updated; its lock frees itself once stale.");
        }
        match &error {
            Some(e) => tracing::warn!(error = %e, moved, "Dead-letter operation stopped."),
            None => tracing::info!(moved, "Dead-letter operation done."),
        }
        if error.is_none() && !seen.is_empty() {
            let this = self.clone();
            let queue = queue.to_owned();
            let sweep = async move { this.sweep(&queue, &mut seen).await };
            if pacing.await_sweep {
                sweep.await;
            } else {
                // In the background: the caller (a synchronous replay) need not wait for it.
                tokio::spawn(sweep);
            }
        }
        error
    }

    /// The page loop of [`Operator::run`]: how many moved, and the error that stopped it.
    #[allow(clippy::too_many_arguments)] // One operation's parts; private.
    async fn pages(
        &self,
        id: Uuid,
        op: Operation,
        queue: &str,
        filter: &Filter,
        started: DateTime<Utc>,
        pacing: Pacing,
        progress: Progress<'_>,
        seen: &mut MovedIds,
    ) -> (usize, Option<DlqError>) {
        let page = self.inner.page_size;
        let mut moved = 0usize;
        let mut backoff = crate::retry::operation_page();
        let mut confirmations = 0usize;
        let second_looks = pacing.second_looks;
        loop {
            let want = filter
                .limit
                .map_or(page, |l| l.saturating_sub(moved).min(page));
            if want == 0 {
                return (moved, None);
            }
            let f = Filter {
                limit: Some(want),
                parked_before: Some(filter.parked_before.unwrap_or(started)),
                ..filter.clone()
            };
            let result = match op {
                Operation::Replay => self.inner.dlq.replay_tracked(queue, &f, seen).await,
                Operation::Purge => self.inner.dlq.purge_tracked(queue, &f, seen).await,
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
                        self.progress(id, moved, progress).await;
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                    return (moved, Some(e));
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
                        self.progress(id, moved, progress).await;
                        tokio::time::sleep(CONFIRM_PAUSE).await;
                        continue;
                    }
                }
                return (moved, None);
            }
            confirmations = 0;
            self.progress(id, moved, progress).await;
        }
    }

    /// Removes copies of moved messages that the broker handed back to the parking queue
    /// after the last page (acks it had not applied when that page's channel closed). Runs
    /// after the operation is recorded as done.
    async fn sweep(&self, queue: &str, seen: &mut MovedIds) {
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

    async fn progress(&self, id: Uuid, moved: usize, report: Progress<'_>) {
        if let Err(e) = Actions::update_many()
            .col_expr(operator_actions::Column::Moved, Expr::value(moved as i64))
            .col_expr(operator_actions::Column::UpdatedAt, Expr::value(Utc::now()))
            .filter(operator_actions::Column::Id.eq(id))
            .exec(&self.inner.db)
            .await
        {
            tracing::warn!(error = %e, "Cannot record an operation's progress.");
        }
        report(moved);
    }
}

fn is_unique_violation(e: &DbErr) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("unique") || text.contains("duplicate key")
}
