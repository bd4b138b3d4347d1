//! The built-in consumers, each a [`Consumer`](crate::jobs::Consumer) the runtime in
//! [`jobs`](crate::jobs) runs on its own queue, one file each; a new job type starts as a copy
//! of one of them:
//! - jobs: `email`, `notifications`, `audit`, `maintenance` (with the sync-mode
//!   listeners that do the same work inside a request: `audit::AuditListener`,
//!   `notifications::NotificationListener`, `notifications::WelcomeEmailListener`);
//! - the order saga's participants, run by
//!   [`ParticipantConsumer`](crate::saga::participants::ParticipantConsumer): `orders`,
//!   [`inventory`], [`payments`], `order_notification`;
//! - the saga orchestrator's consumer of `warren.saga`: `saga_orchestrator`.

pub(crate) mod audit;
pub(crate) mod email;
pub mod inventory;
pub(crate) mod maintenance;
pub(crate) mod notifications;
pub(crate) mod order_notification;
pub(crate) mod orders;
pub mod payments;
pub(crate) mod saga_orchestrator;
