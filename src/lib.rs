//! warren: event-driven, asynchronous work on RabbitMQ.
//!
//! Map of the crate:
//! - [`config`]: typed settings, loaded once (defaults, file, `WARREN_*`).
//! - [`cli`]: the `warren` command line; [`app`]: roles and their lifecycle.
//! - [`broker`]: AMQP pool, topology (`broker-topology.json`), envelope, confirming publisher.
//! - [`http`]: the warp front (publish events, sync dispatch, orders and sagas, dead letters,
//!   health, metrics).
//! - [`jobs`]: the consumer trait, the runner (ack, retries, dead letters, inbox) and the
//!   built-in modules (e-mail, notifications, audit, maintenance).
//! - [`dispatch`]: the in-process listener registry for `?mode=sync`.
//! - [`store`]: the sea-orm database (PostgreSQL or SQLite) and migrations at start.
//! - [`telemetry`]: tracing subscriber (optional OTLP export), W3C trace context, Prometheus
//!   metrics.
//! - [`saga`]: saga definitions, the pure state machine, the persisting engine with its
//!   outbox, the orchestrator role and the order saga's participants.
//! - [`console`]: the operator console's audit log, paged dead-letter operations and overview
//!   (its pages: [`http::console`]).
//! - [`scheduler`]: cron schedules fired once per tick across instances.
//! - [`retry`]: every in-process retry policy.
//! - [`bench`]: `warren bench ...`: warren's throughput (jobs, sagas, scale), the ceilings it is
//!   measured against (a bare warp+lapin server, a raw lapin publisher and consumer), retry
//!   delay accuracy, and the SMTP receiver of the sync-mode benchmark (`scripts/bench-suite.sh`).

#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod console;
pub mod dispatch;
pub mod http;
pub mod jobs;
pub mod outbox;
pub mod retry;
pub mod saga;
pub mod scheduler;
pub mod store;
pub mod telemetry;

pub use app::{App, Role, Running};
pub use config::Settings;
