//! warren: event-driven, asynchronous work on RabbitMQ.
//!
//! Map of the crate, in layers from the bottom up. A module uses only modules on its own
//! layer or below, never one above (`python3 ../shared/tools/modgraph.py src` finds no
//! circle):
//!
//! 1. Foundations: [`config`]: typed settings, loaded once (defaults, file, `WARREN_*`),
//!    with the files they name and the process's user and host;
//!    `retry`: every in-process retry policy; [`telemetry`]: tracing subscriber (optional
//!    OTLP export), W3C trace context, Prometheus metrics; [`tls`]: the process's TLS crypto
//!    provider.
//! 2. Broker and store: [`broker`]: the wire names and header helpers
//!    ([`broker::names`]), the envelope, the AMQP pool, topology (`broker-topology.json`) and
//!    the confirming publisher; [`store`]: the sea-orm database (PostgreSQL or SQLite), one
//!    pool per role, migrations at start; above them `outbox`: the events service and the
//!    one relay of both outboxes.
//! 3. Runtime and saga engine: [`jobs`]: the consumer trait, the runner (ack, retries, dead
//!    letters, inbox); [`saga`]: saga definitions, the pure state machine, the persisting
//!    engine with its command outbox, interventions, the participant protocol, the
//!    orchestrator's timer and relay.
//! 4. Modules and operator services: [`modules`]: the built-in consumers (e-mail,
//!    notifications, audit, maintenance, the order saga's participants, the orchestrator's
//!    replies), one file each; [`dispatch`]: the in-process listener registry for
//!    `?mode=sync`; `scheduler`: cron schedules fired once per tick across instances;
//!    [`operator`]: the operator service (dead-letter replay and purge under a per-queue lock,
//!    failed-job retry, saga interventions, the audit log) and its broker-side dead-letter
//!    tools; `reads`: what the edges show from the database and the topology; `health`:
//!    the readiness checks; `console`: the operator console's overview (its pages:
//!    `http::console`); `subscriptions`: HTTP subscriptions (CloudEvents deliveries signed
//!    per Standard Webhooks, one job module each); [`asyncapi`]: the AsyncAPI document of the
//!    broker side, generated from the topology and the saga definitions.
//! 5. Edges: [`http`]: the warp front (publish events, sync dispatch, orders and sagas, dead
//!    letters, health, metrics).
//! 6. [`app`]: roles and their lifecycle; above it [`cli`]: the `warren` command line.
//!
//! The benchmarks are not part of this library: they live in the workspace member `bench/`
//! (package and binary `warren-bench`), which uses this crate through its public API only
//! (`scripts/bench-suite.sh` runs them; its `smtp-sink` is also the local run's mail server).

#![forbid(unsafe_code)]
// What no other crate needs is `pub(crate)`; this lint finds a `pub` that says otherwise.
#![warn(unreachable_pub)]

pub mod app;
pub mod asyncapi;
pub mod broker;
pub mod cli;
pub mod config;
pub(crate) mod console;
pub mod dispatch;
pub(crate) mod health;
pub mod http;
pub(crate) mod idempotency;
pub mod jobs;
pub mod modules;
pub mod operator;
pub(crate) mod outbox;
pub(crate) mod reads;
pub(crate) mod retry;
pub mod saga;
pub(crate) mod scheduler;
pub mod store;
pub(crate) mod subscriptions;
pub mod telemetry;
pub mod tls;

pub use app::{App, Role, Running};
pub use config::Settings;
