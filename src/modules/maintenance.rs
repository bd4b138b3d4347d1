//! The `maintenance` module: housekeeping jobs the scheduler enqueues on `warren.maintenance`.
//!
//! - `maintenance.cleanup` `{older_than_days}` (default 30): deletes inbox rows
//!   (`processed_messages`), audit rows (`event_log`) and fired scheduler ticks older than
//!   that, and the remembered idempotent answers (`idempotency_keys`) older than their
//!   retention window (`http.idempotency_retention_secs`). Idempotent by itself: running it
//!   twice deletes nothing more.
//! - `maintenance.report`: counts the last 24 hours (events recorded, jobs parked, sagas
//!   finished by outcome) and open work (sagas needing intervention, parked jobs), and
//!   publishes them as a `report.daily` event (recorded by the audit module).

use chrono::{Duration as ChronoDuration, Utc};
use entities::{event_log, failed_jobs, processed_messages, sagas, schedule_ticks};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::{
    broker::{envelope::Outgoing, names::EVENTS_EXCHANGE, publisher::Publisher},
    jobs::{Consumer, Job, JobError},
};

/// The maintenance module.
#[derive(Debug, Clone)]
pub(crate) struct Maintenance {
    db: DatabaseConnection,
    publisher: Publisher,
    idempotency_retention: std::time::Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cleanup {
    #[serde(default = "thirty")]
    older_than_days: i64,
}

fn thirty() -> i64 {
    30
}

fn fault(doing: &str) -> impl FnOnce(sea_orm::DbErr) -> JobError + '_ {
    move |e| JobError::Error(format!("{doing}: {e}"))
}

impl Maintenance {
    /// The module over `db`, publishing reports through `publisher`; the cleanup deletes
    /// idempotent answers older than `idempotency_retention`.
    pub(crate) fn new(
        db: DatabaseConnection,
        publisher: Publisher,
        idempotency_retention: std::time::Duration,
    ) -> Self {
        Self {
            db,
            publisher,
            idempotency_retention,
        }
    }

    async fn cleanup(&self, job: &Job) -> Result<(), JobError> {
        let c: Cleanup = job.data()?;
        if !(1..=3650).contains(&c.older_than_days) {
            return Err(JobError::Invalid(format!(
                "older_than_days must be 1 to 3650, got {}",
                c.older_than_days
            )));
        }
        let cutoff = Utc::now() - ChronoDuration::days(c.older_than_days);
        let inbox = processed_messages::Entity::delete_many()
            .filter(processed_messages::Column::ProcessedAt.lt(cutoff))
            .exec(&self.db)
            .await
            .map_err(fault("cannot clean processed_messages"))?
            .rows_affected;
        let events = event_log::Entity::delete_many()
            .filter(event_log::Column::RecordedAt.lt(cutoff))
            .exec(&self.db)
            .await
            .map_err(fault("cannot clean event_log"))?
            .rows_affected;
        let ticks = schedule_ticks::Entity::delete_many()
            .filter(schedule_ticks::Column::FiredAt.lt(cutoff))
            .exec(&self.db)
            .await
            .map_err(fault("cannot clean schedule_ticks"))?
            .rows_affected;
        let idempotency = crate::idempotency::purge(&self.db, self.idempotency_retention)
            .await
            .map_err(|e| JobError::Error(e.to_string()))?;
        tracing::info!(
            older_than_days = c.older_than_days,
            inbox,
            events,
            ticks,
            idempotency,
            "Cleanup done."
        );
        Ok(())
    }

    async fn report(&self, job: &Job) -> Result<(), JobError> {
        let since = Utc::now() - ChronoDuration::hours(24);
        let db = &self.db;
        let events = event_log::Entity::find()
            .filter(event_log::Column::RecordedAt.gte(since))
            .count(db)
            .await
            .map_err(fault("cannot count events"))?;
        let parked_24h = failed_jobs::Entity::find()
            .filter(failed_jobs::Column::FailedAt.gte(since))
            .count(db)
            .await
            .map_err(fault("cannot count failed jobs"))?;
        let parked_now = failed_jobs::Entity::find()
            .filter(failed_jobs::Column::Status.eq("parked"))
            .count(db)
            .await
            .map_err(fault("cannot count parked jobs"))?;
        let mut finished = serde_json::Map::new();
        for outcome in ["completed", "compensated", "needs_intervention"] {
            let n = sagas::Entity::find()
                .filter(sagas::Column::Status.eq(outcome))
                .filter(sagas::Column::FinishedAt.gte(since))
                .count(db)
                .await
                .map_err(fault("cannot count sagas"))?;
            finished.insert(outcome.to_owned(), json!(n));
        }
        let needs_intervention = sagas::Entity::find()
            .filter(sagas::Column::Status.eq("needs_intervention"))
            .count(db)
            .await
            .map_err(fault("cannot count sagas"))?;
        let report = Outgoing::event(
            "report.daily",
            None,
            json!({
                "since": since,
                "events_recorded": events,
                "jobs_parked": parked_24h,
                "jobs_parked_now": parked_now,
                "sagas_finished": finished,
                "sagas_needing_intervention": needs_intervention,
            }),
        )
        // One report per job: a redelivered job republishes the same report id.
        .with_id(Uuid::new_v5(&job.message_id, b"report.daily"))
        .caused_by(job);
        self.publisher
            .send(EVENTS_EXCHANGE, None, &report)
            .await
            .map_err(|e| JobError::Error(format!("cannot publish the report: {e}")))
    }
}

#[async_trait::async_trait]
impl Consumer for Maintenance {
    fn name(&self) -> &str {
        "maintenance"
    }

    fn queue(&self) -> &str {
        crate::broker::names::MAINTENANCE_QUEUE
    }

    fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(300)
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        match job.routing_key.as_str() {
            "maintenance.cleanup" => self.cleanup(job).await,
            "maintenance.report" => self.report(job).await,
            other => Err(JobError::Invalid(format!(
                "maintenance has no job {other:?} (cleanup, report)"
            ))),
        }
    }
}
