//! Orchestration sagas (issue 4, in progress): a generic saga definition and its pure state
//! machine. The adapter that persists `sagas`/`saga_steps` and publishes commands, the
//! participants and the HTTP/CLI surface come next; see `docs/architecture.md`.

pub mod machine;

pub use machine::{Action, Command, Input, SagaDef, SagaState, Status, StepDef};
