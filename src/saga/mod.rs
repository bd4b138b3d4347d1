//! Orchestration sagas (SPEC section 6): generic saga definitions and their pure state
//! machine (`machine`), the adapter that persists sagas and sends their commands through an
//! outbox (`engine`), the orchestrator role's loops (`orchestrator`), the wire contract
//! (`protocol`), the definitions file's checks (`definitions`), the protocol every participant shares ([`participants`]) and the order
//! saga's definition and input ([`order`]). The consumers (the orchestrator's, the order
//! saga's participants) are modules, in `crate::modules`.

mod definitions;
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

pub use definitions::{DefinitionsError, Problem, builtin, check, definitions};
pub use engine::{Applied, SagaError, SagaView, Sagas, Start, Started};
pub use machine::{Action, Command, Input, SagaDef, SagaState, Status, StepDef};
/// The command a participant applies (the `data` of every saga command message).
pub use protocol::CommandData;
