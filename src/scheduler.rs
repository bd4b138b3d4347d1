//! The cron scheduler (the article's `schedule:run`): each schedule in settings publishes an
//! event or enqueues a job at every tick of its cron expression (UTC).
//!
//! **Exactly once per tick, with any number of instances.** Every instance wakes at every
//! tick and tries to claim it by inserting `(schedule, tick)` into `schedule_ticks`, whose
//! primary key admits one row. The claim and the publish share one database transaction: the
//! instance whose insert wins publishes (with confirm), then commits; if the publish fails it
//! rolls back, and an instance waiting on the same key (PostgreSQL makes a conflicting insert
//! wait for the first transaction) takes the tick instead. An instance killed mid-claim loses
//! its connection, PostgreSQL rolls its transaction back, and another instance fires the tick.
//! Why a per-tick claim rather than a lease or a single-active-consumer queue: there is no
//! leader to elect, fail over or fence, and a stuck instance cannot hold every schedule
//! hostage for a lease period; the cost is one insert per tick per instance.
//!
//! The message id of a tick's message is derived from the schedule and the tick (UUID v5),
//! so even a publish repeated after a lost commit is dropped by the consumers' inbox.
//!
//! **Missed ticks** (no instance ran): with `scheduler.missed = "latest"` (default) an
//! instance that starts fires the most recent missed tick of each schedule once, if the
//! schedule has fired before; with `"skip"` it waits for the next tick.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::Cron;
use entities::schedule_ticks;
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait, sea_query::OnConflict,
};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    broker::{
        envelope::Outgoing,
        names::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE},
        publisher::Publisher,
    },
    config::{MissedTicks, ScheduleSettings, SchedulerSettings, parse_cron},
};

/// Scheduler failures.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SchedulerError {
    /// The database.
    #[error("database error while {doing}: {source}")]
    Db {
        /// What the scheduler was doing.
        doing: &'static str,
        /// The database's error.
        source: DbErr,
    },
    /// The broker did not confirm the tick's message.
    #[error("cannot publish the tick: {0}")]
    Publish(#[from] crate::broker::publisher::PublishError),
}

fn db(doing: &'static str) -> impl FnOnce(DbErr) -> SchedulerError {
    move |source| SchedulerError::Db { doing, source }
}

/// The scheduler role.
#[derive(Debug, Clone)]
pub(crate) struct Scheduler {
    db: DatabaseConnection,
    publisher: Publisher,
    schedules: Vec<(ScheduleSettings, Cron)>,
    missed: MissedTicks,
    instance: String,
}

/// How a claim attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fired {
    /// This instance fired the tick.
    Fired,
    /// Another instance had fired it.
    Taken,
}

impl Scheduler {
    /// A scheduler for `settings` (validated: every cron parses); `instance` names this
    /// process in its tick claims (`<host>:<pid>`).
    pub(crate) fn new(
        db: DatabaseConnection,
        publisher: Publisher,
        settings: &SchedulerSettings,
        instance: String,
    ) -> Result<Self, String> {
        let schedules = settings
            .schedules
            .iter()
            .map(|s| parse_cron(&s.cron).map(|c| (s.clone(), c)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            db,
            publisher,
            schedules,
            missed: settings.missed,
            instance,
        })
    }

    /// Runs every schedule until shutdown.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        if self.schedules.is_empty() {
            tracing::info!("No schedules configured; the scheduler idles.");
        }
        let tasks = tokio_util::task::TaskTracker::new();
        for (schedule, cron) in self.schedules.clone() {
            let this = self.clone();
            let stop = shutdown.clone();
            tasks.spawn(async move { this.run_one(schedule, cron, stop).await });
        }
        tasks.close();
        tasks.wait().await;
    }

    #[tracing::instrument(skip_all, fields(schedule = %schedule.name))]
    async fn run_one(&self, schedule: ScheduleSettings, cron: Cron, shutdown: CancellationToken) {
        if self.missed == MissedTicks::Latest {
            self.catch_up(&schedule, &cron).await;
        }
        let mut after = Utc::now();
        loop {
            let next = match cron.find_next_occurrence(&whole_seconds(after), false) {
                Ok(n) => n,
                Err(e) => {
                    tracing::error!(error = %e, "No next occurrence; this schedule stops.");
                    return;
                }
            };
            let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            self.fire_with_retries(&schedule, next, &shutdown).await;
            after = next;
        }
    }

    /// Fires the latest tick before now if the schedule fired before and missed it.
    async fn catch_up(&self, schedule: &ScheduleSettings, cron: &Cron) {
        let last = schedule_ticks::Entity::find()
            .filter(schedule_ticks::Column::Schedule.eq(&schedule.name))
            .order_by_desc(schedule_ticks::Column::TickAt)
            .one(&self.db)
            .await;
        let Ok(Some(last)) = last else {
            return;
        };
        let Ok(previous) = cron.find_previous_occurrence(&whole_seconds(Utc::now()), false) else {
            return;
        };
        if previous > last.tick_at {
            tracing::info!(tick = %previous, last = %last.tick_at, "Firing the latest missed tick.");
            match self.fire(schedule, previous).await {
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "Cannot fire the missed tick."),
            }
        }
    }

    /// Fires a tick, retrying a failed publish for a bounded time (the broker may be away).
    async fn fire_with_retries(
        &self,
        schedule: &ScheduleSettings,
        tick: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) {
        let mut delays = crate::retry::reconnect();
        let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.fire(schedule, tick).await {
                Ok(Fired::Fired) => {
                    tracing::info!(tick = %tick, "Tick fired.");
                    return;
                }
                Ok(Fired::Taken) => {
                    tracing::debug!(tick = %tick, "Tick fired by another instance.");
                    return;
                }
                Err(e) => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(5));
                    if tokio::time::Instant::now() + delay > give_up {
                        tracing::error!(tick = %tick, error = %e, "Tick not fired; giving up on it.");
                        return;
                    }
                    tracing::warn!(tick = %tick, error = %e, retry_in = ?delay, "Tick not fired yet.");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Claims `tick` and publishes its message, in one transaction.
    pub(crate) async fn fire(
        &self,
        schedule: &ScheduleSettings,
        tick: DateTime<Utc>,
    ) -> Result<Fired, SchedulerError> {
        let txn = self.db.begin().await.map_err(db("starting a tick claim"))?;
        let claimed = schedule_ticks::Entity::insert(schedule_ticks::ActiveModel {
            schedule: Set(schedule.name.clone()),
            tick_at: Set(tick),
            fired_by: Set(self.instance.clone()),
            fired_at: Set(Utc::now()),
        })
        .on_conflict(
            OnConflict::columns([
                schedule_ticks::Column::Schedule,
                schedule_ticks::Column::TickAt,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await;
        let rows = match claimed {
            Ok(n) => n,
            Err(DbErr::RecordNotInserted) => 0,
            Err(e) => {
                return Err(SchedulerError::Db {
                    doing: "claiming a tick",
                    source: e,
                });
            }
        };
        if rows == 0 {
            let _ = txn.rollback().await;
            return Ok(Fired::Taken);
        }
        let (exchange, name) = match (&schedule.event, &schedule.job) {
            (Some(event), _) => (EVENTS_EXCHANGE, event.as_str()),
            (None, Some(job)) => (COMMANDS_EXCHANGE, job.as_str()),
            (None, None) => return Ok(Fired::Taken),
        };
        let message = Outgoing::event(name, Some(schedule.name.clone()), schedule.data.clone())
            .with_id(tick_id(&schedule.name, tick))
            .occurred_on(tick)
            .correlated(format!("schedule:{}", schedule.name))
            .traceparent(Some(crate::telemetry::trace::TraceParent::start().header()));
        if let Err(e) = self.publisher.send(exchange, None, &message).await {
            let _ = txn.rollback().await;
            return Err(e.into());
        }
        txn.commit().await.map_err(db("committing a tick"))?;
        Ok(Fired::Fired)
    }
}

/// `t` without its fraction of a second: cron ticks fall on whole seconds (croner keeps the
/// start time's fraction otherwise).
fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    use chrono::Timelike;
    t.with_nanosecond(0).unwrap_or(t)
}

/// The message id of a schedule's tick: the same for every instance and every retry.
pub(crate) fn tick_id(schedule: &str, tick: DateTime<Utc>) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("warren:schedule:{schedule}:{}", tick.timestamp_millis()).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions_parse_and_nonsense_does_not() {
        assert!(parse_cron("*/5 * * * *").is_ok());
        assert!(parse_cron("0 30 3 * * *").is_ok());
        assert!(parse_cron("* * * * * *").is_ok());
        let e = parse_cron("every day").expect_err("refused");
        assert!(e.contains("invalid cron expression"), "{e}");
    }

    #[test]
    fn every_second_ticks_once_a_second_on_whole_seconds() {
        let cron = parse_cron("* * * * * *").expect("parses");
        let start: DateTime<Utc> = "2026-11-27T10:00:00.500Z".parse().expect("time");
        let a = cron
            .find_next_occurrence(&whole_seconds(start), false)
            .expect("next");
        assert_eq!(
            a,
            "2026-11-27T10:00:01Z"
                .parse::<DateTime<Utc>>()
                .expect("time")
        );
        let b = cron.find_next_occurrence(&a, false).expect("next");
        assert_eq!((b - a).num_milliseconds(), 1000);
    }

    #[test]
    fn tick_ids_are_fixed_per_schedule_and_tick_and_distinct_otherwise() {
        let a: DateTime<Utc> = "2026-11-27T10:00:01Z".parse().expect("time");
        // The id every instance and every version computes for this tick (UUIDv5 of
        // `warren:schedule:x:1795773601000` in the URL namespace, computed outside warren): a
        // change of the derivation would make instances of different versions fire twice.
        assert_eq!(
            tick_id("x", a).to_string(),
            "099e5d6c-4404-5257-a076-c0a046452348"
        );
        assert_eq!(
            tick_id("nightly-report", a).to_string(),
            "ce7ad723-f99c-5559-9b40-15a10561512e"
        );
        assert_eq!(tick_id("x", a).get_version_num(), 5);
        // The same instant written with another offset is the same tick.
        let same: DateTime<Utc> = "2026-11-27T12:00:01+02:00".parse().expect("time");
        assert_eq!(tick_id("x", same), tick_id("x", a));
        // A day of one-second ticks: every id its own, and not another schedule's.
        let day: std::collections::HashSet<Uuid> = (0..86_400)
            .map(|s| tick_id("x", a + chrono::Duration::seconds(s)))
            .collect();
        assert_eq!(day.len(), 86_400);
        assert_eq!(
            tick_id("x", a + chrono::Duration::seconds(1)).to_string(),
            "dab6cf22-a580-5a32-88a1-006194a7cf23"
        );
        assert!(!day.contains(&tick_id("y", a)));
        assert!(!day.contains(&tick_id("nightly-report", a)));
    }
}
