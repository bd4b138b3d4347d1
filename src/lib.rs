//! warren: event-driven, asynchronous work on RabbitMQ.
//!
//! Map of the crate:
//! - [`config`]: typed settings, loaded once (defaults, file, `WARREN_*`).
//! - [`cli`]: the `warren` command line; [`app`]: roles and their lifecycle.
//! - [`broker`]: AMQP pool, topology (`broker-topology.json`), envelope, confirming publisher.
//! - [`http`]: the warp front (publish events, sync dispatch, health, metrics).
//! - [`jobs`]: the consumer trait and the runner (ack, retries, dead letters, inbox).
//! - [`dispatch`]: the in-process listener registry for `?mode=sync`.
//! - [`store`]: the sea-orm database (PostgreSQL or SQLite) and migrations at start.
//! - [`telemetry`]: tracing subscriber, W3C trace context, Prometheus metrics.
//! - [`saga`]: saga definitions and the pure saga state machine (the adapter comes next).
//! - [`retry`]: every in-process retry policy.
//! - [`bench`]: `warren bench jobs`, the job throughput benchmark.

#![forbid(unsafe_code)]

pub mod app;
pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod dispatch;
pub mod http;
pub mod jobs;
pub mod retry;
pub mod saga;
pub mod scheduler;
pub mod store;
pub mod telemetry;

pub use app::{App, Role, Running};
pub use config::Settings;
