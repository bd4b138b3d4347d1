//! A saga's timeline (`saga_steps`): one row per input (started, succeeded, failed,
//! deadline passed, retried, resolved) and per command sent. A reply's row carries the result
//! the participant returned with it (`result`), for a compensation too.

use chrono::{DateTime, Utc};
use entities::saga_steps;
use sea_orm::{EntityTrait, Set};
use uuid::Uuid;

use super::{
    engine::{SagaError, action_str, db, step_i32},
    machine::{Action, Command, Input, SagaDef},
};

#[allow(clippy::too_many_arguments)]
pub(super) fn timeline_row(
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
        result: Set(None),
    }
}

pub(super) fn sent_rows(
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

pub(super) fn input_row(
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
            result,
        } => {
            let mut row = timeline_row(
                saga_id,
                def,
                *step,
                *action,
                if *ok { "succeeded" } else { "failed" },
                None,
                reason.clone(),
                at,
            );
            row.result = Set(result.clone());
            row
        }
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

pub(super) async fn insert_timeline(
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
