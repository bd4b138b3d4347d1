//! The read service: what the edges (HTTP, the console) show that no other service owns, read
//! from the database and the topology: the audit log of events, notifications, failed jobs,
//! orders, the counts on the console's overview, and whether a queue takes a job. The edges
//! hold this service, never the database connection or the topology.

use std::sync::Arc;

use entities::{event_log, failed_jobs, notifications, orders, saga_interventions};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter};

use crate::{
    broker::{names::COMMANDS_EXCHANGE, topology::Topology},
    store::{self, ListQuery, StoreError},
};

/// Reads over the database and the topology (cheap to clone).
#[derive(Debug, Clone)]
pub(crate) struct Reads {
    db: DatabaseConnection,
    topology: Arc<Topology>,
}

impl Reads {
    /// The service over `db` and `topology`.
    pub(crate) fn new(db: DatabaseConnection, topology: Arc<Topology>) -> Self {
        Self { db, topology }
    }

    /// Whether a queue of the topology takes job (command) `name`.
    pub(crate) fn takes_job(&self, name: &str) -> bool {
        self.topology.routes(COMMANDS_EXCHANGE, name)
    }

    /// The audit log of events, filtered.
    pub(crate) async fn events(
        &self,
        query: &ListQuery,
    ) -> Result<Vec<event_log::Model>, StoreError> {
        store::list_events(&self.db, query).await
    }

    /// The notifications, filtered.
    pub(crate) async fn notifications(
        &self,
        query: &ListQuery,
    ) -> Result<Vec<notifications::Model>, StoreError> {
        store::list_notifications(&self.db, query).await
    }

    /// `failed_jobs` rows, newest first, of one queue and status when given.
    pub(crate) async fn failed_jobs(
        &self,
        queue: Option<&str>,
        status: Option<&str>,
        limit: u64,
    ) -> Result<Vec<failed_jobs::Model>, StoreError> {
        store::list_failed_jobs(&self.db, queue, status, limit).await
    }

    /// The order with this number, if any.
    pub(crate) async fn order(
        &self,
        order_no: &str,
    ) -> Result<Option<orders::Model>, sea_orm::DbErr> {
        orders::Entity::find()
            .filter(orders::Column::OrderNo.eq(order_no))
            .one(&self.db)
            .await
    }

    /// How many `failed_jobs` rows are still parked (`None` when the database fails).
    pub(crate) async fn failed_jobs_parked(&self) -> Option<u64> {
        failed_jobs::Entity::find()
            .filter(failed_jobs::Column::Status.eq(store::FAILED_PARKED))
            .count(&self.db)
            .await
            .ok()
    }

    /// How many saga interventions are open (`None` when the database fails).
    pub(crate) async fn interventions_open(&self) -> Option<u64> {
        saga_interventions::Entity::find()
            .filter(saga_interventions::Column::Status.ne("resolved"))
            .count(&self.db)
            .await
            .ok()
    }

    /// Applies a demo or load-test seed (stock per SKU, balances per user).
    pub(crate) async fn seed(&self, seed: &crate::saga::order::Seed) -> Result<(), sea_orm::DbErr> {
        seed.apply(&self.db).await
    }

    /// Whether the database answers.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        store::ping(&self.db).await
    }
}
