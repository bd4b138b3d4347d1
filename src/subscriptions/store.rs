//! The subscriptions' two tables: `subscription_status` (what each worker reports about each
//! subscription it runs, [`write_status`]) and `subscription_controls` (operators' pauses,
//! [`set_paused`], read by the workers with [`controls`]). The worker's loop and the
//! front's list both go through here.

use chrono::{DateTime, Utc};
use entities::{
    subscription_controls::{self, Entity as Controls},
    subscription_status::{self, Entity as Statuses},
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, Set,
    sea_query::{Expr, OnConflict},
};

/// Upserts this worker's rows (one per subscription), in one statement.
pub(crate) async fn write_status(
    db: &DatabaseConnection,
    rows: Vec<subscription_status::Model>,
) -> Result<(), DbErr> {
    use subscription_status::Column as C;
    if rows.is_empty() {
        return Ok(());
    }
    let rows = rows.into_iter().map(|r| subscription_status::ActiveModel {
        subscription: Set(r.subscription),
        instance: Set(r.instance),
        breaker: Set(r.breaker),
        breaker_until: Set(r.breaker_until),
        retry_after_until: Set(r.retry_after_until),
        paused: Set(r.paused),
        consecutive_failures: Set(r.consecutive_failures),
        delivered: Set(r.delivered),
        failed: Set(r.failed),
        delivery_rate: Set(r.delivery_rate),
        last_error: Set(r.last_error),
        last_error_at: Set(r.last_error_at),
        last_success_at: Set(r.last_success_at),
        started_at: Set(r.started_at),
        updated_at: Set(r.updated_at),
    });
    Statuses::insert_many(rows)
        .on_conflict(
            OnConflict::columns([C::Subscription, C::Instance])
                .update_columns([
                    C::Breaker,
                    C::BreakerUntil,
                    C::RetryAfterUntil,
                    C::Paused,
                    C::ConsecutiveFailures,
                    C::Delivered,
                    C::Failed,
                    C::DeliveryRate,
                    C::LastError,
                    C::LastErrorAt,
                    C::LastSuccessAt,
                    C::StartedAt,
                    C::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map(drop)
}

/// Every worker's rows, by subscription, then instance.
pub(crate) async fn statuses(
    db: &DatabaseConnection,
) -> Result<Vec<subscription_status::Model>, DbErr> {
    Statuses::find()
        .order_by_asc(subscription_status::Column::Subscription)
        .order_by_asc(subscription_status::Column::Instance)
        .all(db)
        .await
}

/// The control rows of `names` (all of them when `names` is `None`): one query.
pub(crate) async fn controls(
    db: &DatabaseConnection,
    names: Option<&[String]>,
) -> Result<Vec<subscription_controls::Model>, DbErr> {
    let mut q = Controls::find();
    if let Some(names) = names {
        q = q.filter(subscription_controls::Column::Subscription.is_in(names.iter().cloned()));
    }
    q.all(db).await
}

/// Pauses (`paused`) or resumes `subscription` as `actor` said, with `reason`. Idempotent:
/// when it already stands so, the row is left as it is (who paused it first, and when).
/// Returns the row and whether it changed. No transaction (a deferred one on SQLite fails
/// at its first write under a concurrent writer): an insert that does nothing on a conflict,
/// then an update that only changes a row standing the other way.
pub(crate) async fn set_paused(
    db: &DatabaseConnection,
    subscription: &str,
    paused: bool,
    actor: &str,
    reason: Option<String>,
    now: DateTime<Utc>,
) -> Result<(subscription_controls::Model, bool), DbErr> {
    use subscription_controls::Column as C;
    let reason = reason.filter(|_| paused);
    let row = subscription_controls::ActiveModel {
        subscription: Set(subscription.to_owned()),
        paused: Set(paused),
        reason: Set(reason.clone()),
        changed_by: Set(actor.to_owned()),
        changed_at: Set(now),
    };
    let inserted = Controls::insert(row)
        .on_conflict_do_nothing_on([C::Subscription])
        .exec_without_returning(db)
        .await?;
    let mut changed = matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0);
    if !changed {
        let updated = Controls::update_many()
            .col_expr(C::Paused, Expr::value(paused))
            .col_expr(C::Reason, Expr::value(reason))
            .col_expr(C::ChangedBy, Expr::value(actor))
            .col_expr(C::ChangedAt, Expr::value(now))
            .filter(C::Subscription.eq(subscription))
            .filter(C::Paused.ne(paused))
            .exec(db)
            .await?;
        changed = updated.rows_affected > 0;
    }
    let row = Controls::find_by_id(subscription.to_owned())
        .one(db)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound(format!("subscription_controls {subscription}")))?;
    Ok((row, changed))
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use sea_orm::{ConnectOptions, Database};
    use sea_orm_migration::MigratorTrait;

    use super::*;

    /// The migrations on SQLite (one connection: an in-memory database lives with it).
    async fn sqlite() -> DatabaseConnection {
        let mut opts = ConnectOptions::new("sqlite::memory:");
        opts.max_connections(1)
            .min_connections(1)
            .sqlx_logging(false);
        let db = Database::connect(opts).await.expect("sqlite");
        entities::migration::Migrator::up(&db, None)
            .await
            .expect("migrations");
        db
    }

    fn row(subscription: &str, instance: &str, at: DateTime<Utc>) -> subscription_status::Model {
        subscription_status::Model {
            subscription: subscription.to_owned(),
            instance: instance.to_owned(),
            breaker: "closed".to_owned(),
            breaker_until: None,
            retry_after_until: None,
            paused: false,
            consecutive_failures: 0,
            delivered: 0,
            failed: 0,
            delivery_rate: 0.0,
            last_error: None,
            last_error_at: None,
            last_success_at: None,
            started_at: at,
            updated_at: at,
        }
    }

    #[tokio::test]
    async fn status_rows_are_upserted_per_subscription_and_worker() {
        let db = sqlite().await;
        let t0 = Utc::now();
        write_status(&db, vec![row("a", "h:1", t0), row("b", "h:1", t0)])
            .await
            .expect("first write");
        let mut again = row("a", "h:1", t0 + TimeDelta::seconds(1));
        again.breaker = "open".to_owned();
        again.consecutive_failures = 3;
        again.last_error = Some("subscriber answered 500".to_owned());
        write_status(&db, vec![again, row("a", "h:2", t0)])
            .await
            .expect("second write");
        let rows = statuses(&db).await.expect("read");
        let keys: Vec<(&str, &str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r.subscription.as_str(),
                    r.instance.as_str(),
                    r.breaker.as_str(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("a", "h:1", "open"),
                ("a", "h:2", "closed"),
                ("b", "h:1", "closed")
            ]
        );
        assert_eq!(rows[0].consecutive_failures, 3);
        assert_eq!(
            rows[0].last_error.as_deref(),
            Some("subscriber answered 500")
        );
    }

    #[tokio::test]
    async fn pausing_twice_keeps_the_first_pause_and_resuming_clears_the_reason() {
        let db = sqlite().await;
        let t0 = Utc::now();
        let (r, changed) = set_paused(&db, "a", true, "ann", Some("deploy".into()), t0)
            .await
            .expect("pause");
        assert!(changed && r.paused);
        let later = t0 + TimeDelta::seconds(5);
        let (r, changed) = set_paused(&db, "a", true, "bob", None, later)
            .await
            .expect("pause again");
        assert!(!changed, "idempotent");
        assert_eq!(
            (r.changed_by.as_str(), r.reason.as_deref()),
            ("ann", Some("deploy"))
        );
        let names = ["a".to_owned(), "b".to_owned()];
        let rows = controls(&db, Some(&names)).await.expect("controls");
        assert_eq!(rows.len(), 1);
        assert!(rows[0].paused);
        let (r, changed) = set_paused(&db, "a", false, "bob", Some("x".into()), later)
            .await
            .expect("resume");
        assert!(changed && !r.paused);
        assert_eq!((r.changed_by.as_str(), r.reason), ("bob", None));
        assert!(!controls(&db, None).await.expect("all")[0].paused);
    }
}
