//! Orchestration sagas (SPEC section 6): generic saga definitions and their pure state
//! machine (`machine`), the adapter that persists sagas and sends their commands through an
//! outbox (`engine`), the orchestrator role's loops (`orchestrator`), the wire contract
//! (`protocol`), the protocol every participant shares ([`participants`]) and the order
//! saga's definition and input ([`order`]). The consumers (the orchestrator's, the order
//! saga's participants) are modules, in `crate::modules`.

pub(crate) mod engine;
mod interventions;
pub(crate) mod machine;
pub(crate) mod orchestrator;
pub mod order;
pub(crate) mod outbox;
pub mod participants;
pub(crate) mod protocol;
mod timeline;
mod views;

use crate::config::Settings;

pub use engine::{Applied, SagaError, SagaView, Sagas};
pub use machine::{Action, Command, Input, SagaDef, SagaState, Status, StepDef};

/// Why the saga definitions could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionsError {
    /// The file could not be read.
    #[error(transparent)]
    Read(#[from] crate::config::ConfigError),
    /// Its content.
    #[error("saga definitions in {path} are not valid: {reason}")]
    Invalid {
        /// The path.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The built-in order saga (from settings) plus those of `saga.definitions_file` (read when
/// the settings loaded, [`crate::config::Files`]).
pub fn definitions(settings: &Settings) -> Result<Vec<SagaDef>, DefinitionsError> {
    let saga = &settings.saga;
    let mut defs = vec![SagaDef::order_with(saga.deadline(), saga.notify_rolls_back)];
    if let Some(file) = settings.files()?.saga_definitions {
        let (path, text) = (file.path, file.text);
        let more: Vec<SagaDef> =
            serde_json::from_str(&text).map_err(|e| DefinitionsError::Invalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        for d in more {
            if d.steps.is_empty() {
                return Err(DefinitionsError::Invalid {
                    path: path.clone(),
                    reason: format!("saga {:?} has no steps", d.kind),
                });
            }
            if defs.iter().any(|e| e.kind == d.kind) {
                return Err(DefinitionsError::Invalid {
                    path: path.clone(),
                    reason: format!("saga kind {:?} is defined twice", d.kind),
                });
            }
            defs.push(d);
        }
    }
    Ok(defs)
}
