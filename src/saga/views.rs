//! The saga engine's reads: one saga with its steps (and their results), timeline and
//! interventions; lists,
//! counts and the gauges (sagas per state, open interventions, the outbox).

use entities::{saga_interventions, saga_steps, sagas};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;

use super::{
    engine::{STATUSES, SagaError, SagaView, Sagas, StepView, db as err},
    machine::SagaState,
};

impl Sagas {
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
            .map_err(err("counting sagas by state"))?;
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
            .map_err(err("counting interventions"))?;
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
            .map_err(err("reading a saga"))?
            .ok_or(SagaError::NotFound(id))?;
        let state: Option<SagaState> = serde_json::from_value(saga.state.clone()).ok();
        let results = state
            .as_ref()
            .map(|s| s.results.clone())
            .unwrap_or_default();
        let def = self.definition_of(&saga).ok();
        let definition_current = matches!(def, Some(std::borrow::Cow::Borrowed(_)));
        let steps = match (def, state) {
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
                    result: results.get(&d.name).cloned(),
                })
                .collect(),
            _ => Vec::new(),
        };
        let timeline = saga_steps::Entity::find()
            .filter(saga_steps::Column::SagaId.eq(id))
            .order_by_asc(saga_steps::Column::Id)
            .all(db)
            .await
            .map_err(err("reading a saga's timeline"))?;
        let interventions = saga_interventions::Entity::find()
            .filter(saga_interventions::Column::SagaId.eq(id))
            .order_by_asc(saga_interventions::Column::Id)
            .all(db)
            .await
            .map_err(err("reading a saga's interventions"))?;
        Ok(SagaView {
            saga,
            steps,
            results,
            definition_current,
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
            .map_err(err("listing sagas"))
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
            .map_err(err("counting sagas"))?;
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
            .map_err(err("listing interventions"))
    }

    pub(super) async fn intervention(
        &self,
        id: Uuid,
    ) -> Result<saga_interventions::Model, SagaError> {
        saga_interventions::Entity::find_by_id(id)
            .one(&self.inner.db)
            .await
            .map_err(err("reading an intervention"))?
            .ok_or(SagaError::InterventionNotFound(id))
    }
}
