//! The orchestrator role: the consumer of `warren.saga` (participants' replies, and
//! `saga.start` commands from any publisher), the deadline timer and the outbox relay.
//!
//! Each runs against the database, so any number of orchestrator processes can run: the
//! broker shares the replies between them, the version column orders their updates, and the
//! timer and relay tolerate each other (a stale deadline changes nothing; the relay claims
//! rows with `SKIP LOCKED` on PostgreSQL).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{
    engine::{SagaError, Sagas},
    machine::Input,
    protocol::{REPLY_EVENT, Reply, START_COMMAND, StartData},
};
use crate::jobs::{Consumer, Job, JobError};

/// The consumer of `warren.saga`.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    sagas: Sagas,
}

impl Orchestrator {
    /// The orchestrator over `sagas`.
    pub fn new(sagas: Sagas) -> Self {
        Self { sagas }
    }
}

fn job_error(e: SagaError) -> JobError {
    match e {
        SagaError::UnknownKind(_)
        | SagaError::NotFound(_)
        | SagaError::InterventionNotFound(_)
        | SagaError::Duplicate { .. }
        | SagaError::Corrupt(..) => JobError::Invalid(e.to_string()),
        SagaError::Conflict(_)
        | SagaError::Db { .. }
        | SagaError::Contended(_)
        | SagaError::Publish(_) => JobError::Error(e.to_string()),
    }
}

#[async_trait::async_trait]
impl Consumer for Orchestrator {
    fn name(&self) -> &str {
        "saga"
    }

    fn queue(&self) -> &str {
        crate::broker::names::SAGA_QUEUE
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn use_inbox(&self) -> bool {
        // The state machine ignores a repeated reply; a repeated start finds its saga id.
        false
    }

    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        match job.event.event_name.as_str() {
            REPLY_EVENT => {
                let r: Reply = job.data()?;
                let input = Input::Reply {
                    step: r.step,
                    action: r.action,
                    ok: r.ok,
                    reason: r.reason,
                };
                self.sagas
                    .handle(r.saga_id, input, None)
                    .await
                    .map(drop)
                    .map_err(job_error)
            }
            START_COMMAND => {
                let s: StartData = job.data()?;
                match self
                    .sagas
                    .start(
                        &s.kind,
                        s.business_key,
                        s.payload,
                        job.traceparent.clone(),
                        Some(job.event.event_id),
                    )
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) => Err(job_error(e)),
                }
            }
            other => Err(JobError::Invalid(format!(
                "the saga orchestrator takes {REPLY_EVENT} and {START_COMMAND}, not {other:?}"
            ))),
        }
    }
}

/// Applies passed deadlines every `every` until shutdown.
pub async fn run_timer(sagas: Sagas, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sagas.tick_once().await {
            tracing::warn!(error = %e, "Saga deadline pass failed.");
        }
    }
}

/// Refreshes the saga gauges (states, interventions, outbox) every `every` until shutdown.
pub async fn run_gauges(sagas: Sagas, every: Duration, shutdown: CancellationToken) {
    loop {
        if let Err(e) = sagas.refresh_gauges().await {
            tracing::warn!(error = %e, "Cannot refresh the saga gauges.");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Publishes what the outbox still holds every `every` until shutdown.
pub async fn run_relay(
    sagas: Sagas,
    every: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = sagas.relay_once(grace).await {
            tracing::warn!(error = %e, "Outbox relay pass failed.");
        }
    }
}
