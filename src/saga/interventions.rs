//! Interventions: the operator's list of failed compensations. The engine opens, reopens,
//! marks retried and resolves them in a transition's transaction; an operator retries or
//! resolves one through [`Sagas::retry`] and [`Sagas::resolve`].

use chrono::{DateTime, Utc};
use entities::saga_interventions;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};
use uuid::Uuid;

use super::{
    engine::{Applied, SagaError, SagaView, Sagas, db as err, status_str, step_i32},
    machine::{Input, SagaDef, SagaState, StepStatus},
};

impl Sagas {
    // Long on purpose: one match over the three intervention transitions (open or reopen,
    // retrying, resolved), each a read-modify-write in the saga's transaction.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn track_interventions(
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
                .map_err(err("reading interventions"))?;
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
                            .map_err(err("reopening an intervention"))?;
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
                            .map_err(err("opening an intervention"))?;
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
                            .map_err(err("marking an intervention retried"))?;
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
                            .map_err(err("resolving an intervention"))?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
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
