//! The `audit` module: consumes every event (`#`) from `warren.audit` and records it in
//! `event_log`. Idempotent by itself (keyed by event id), so it needs no inbox row. Its
//! sync-mode twin, [`AuditListener`], records the event inside the request.

use crate::{
    broker::envelope::Event,
    dispatch::{Listener, ListenerError},
    jobs::{Consumer, Job, JobError},
};

/// Records every event in `event_log`.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    db: sea_orm::DatabaseConnection,
}

impl Audit {
    /// The audit module writing to `db`.
    pub(crate) fn new(db: sea_orm::DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl Consumer for Audit {
    fn name(&self) -> &str {
        "audit"
    }

    fn queue(&self) -> &str {
        crate::broker::names::AUDIT_QUEUE
    }

    fn use_inbox(&self) -> bool {
        // event_log is keyed by event id: recording twice is a no-op.
        false
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        let event: &Event = &job.event;
        crate::store::record_event(&self.db, event)
            .await
            .map_err(|e| JobError::Error(e.to_string()))
    }
}

/// The built-in audit listener: records each event in `event_log`.
#[derive(Debug, Clone)]
pub(crate) struct AuditListener {
    db: sea_orm::DatabaseConnection,
}

impl AuditListener {
    /// An audit listener writing to `db`.
    pub(crate) fn new(db: sea_orm::DatabaseConnection) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl Listener for AuditListener {
    async fn handle(&self, event: &Event) -> Result<serde_json::Value, ListenerError> {
        crate::store::record_event(&self.db, event)
            .await
            .map_err(|e| ListenerError::new(e.to_string()))?;
        Ok(serde_json::json!({"recorded": event.event_id}))
    }
}
