//! Pausing and resuming HTTP subscriptions ([`Operator::pause_subscription`]), each recorded
//! in the audit log (`subscription.pause`, `subscription.resume`), and the reads the
//! subscriptions' list needs: every worker's reported state and the pauses.

use chrono::Utc;
use entities::{subscription_controls, subscription_status};
use serde_json::json;

use super::{Operator, OperatorError, db_error};
use crate::subscriptions::store;

/// What a pause or resume did.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct PauseChanged {
    /// The subscription's control row as it stands now.
    pub(crate) control: subscription_controls::Model,
    /// Whether this request changed it (false: it stood so already).
    pub(crate) changed: bool,
    /// The audit log's row of this request.
    pub(crate) action_id: uuid::Uuid,
}

impl Operator {
    /// Pauses (`paused`) or resumes subscription `name` (the caller has checked that the
    /// settings have it), with `reason`; idempotent, recorded in the audit log either way.
    /// Workers apply it within about a second (`subscriptions::status`).
    pub(crate) async fn pause_subscription(
        &self,
        actor: &str,
        name: &str,
        paused: bool,
        reason: Option<String>,
    ) -> Result<PauseChanged, OperatorError> {
        let reason = reason
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty());
        let (control, changed) = store::set_paused(
            &self.inner.db,
            name,
            paused,
            actor,
            reason.clone(),
            Utc::now(),
        )
        .await
        .map_err(db_error("storing a subscription's pause"))?;
        let action = if paused {
            "subscription.pause"
        } else {
            "subscription.resume"
        };
        let detail = json!({"reason": reason, "changed": changed});
        let row = self.record(actor, action, name, detail, 0, None).await?;
        tracing::info!(subscription = name, actor, changed, "{action}");
        Ok(PauseChanged {
            control,
            changed,
            action_id: row.id,
        })
    }

    /// Every worker's reported state of every subscription, and every pause.
    pub(crate) async fn subscription_states(
        &self,
    ) -> Result<
        (
            Vec<subscription_status::Model>,
            Vec<subscription_controls::Model>,
        ),
        OperatorError,
    > {
        let db = &self.inner.db;
        let (statuses, controls) = tokio::join!(store::statuses(db), store::controls(db, None));
        Ok((
            statuses.map_err(db_error("reading the subscriptions' state"))?,
            controls.map_err(db_error("reading the subscriptions' pauses"))?,
        ))
    }
}
