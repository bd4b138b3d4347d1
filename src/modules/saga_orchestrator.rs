//! The saga orchestrator's consumer of `warren.saga`: participants' replies (`saga.reply`)
//! and `saga.start` commands from any publisher, each applied through the saga engine
//! ([`crate::saga::Sagas`]). The engine's timer and relay loops are in
//! [`crate::saga::orchestrator`].

use std::time::Duration;

use crate::{
    jobs::{Consumer, Job, JobError},
    saga::{
        SagaError, Sagas,
        machine::Input,
        protocol::{REPLY_EVENT, Reply, START_COMMAND, StartData},
    },
};

/// The consumer of `warren.saga`.
#[derive(Debug, Clone)]
pub(crate) struct Orchestrator {
    sagas: Sagas,
}

impl Orchestrator {
    /// The orchestrator over `sagas`.
    pub(crate) fn new(sagas: Sagas) -> Self {
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
                    result: r.result,
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
