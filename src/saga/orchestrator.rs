//! The orchestrator role's loops: the deadline timer, the gauges and the outbox relay. Its
//! consumer of `warren.saga` (participants' replies, `saga.start` commands) is a module:
//! `crate::modules::saga_orchestrator`.
//!
//! Each runs against the database, so any number of orchestrator processes can run: the
//! broker shares the replies between them, the version column orders their updates, and the
//! timer and relay tolerate each other (a stale deadline changes nothing; the relay claims
//! rows with `SKIP LOCKED` on PostgreSQL).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::engine::Sagas;

/// Applies passed deadlines every `every` until shutdown.
pub(crate) async fn run_timer(sagas: Sagas, every: Duration, shutdown: CancellationToken) {
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
pub(crate) async fn run_gauges(sagas: Sagas, every: Duration, shutdown: CancellationToken) {
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

/// Publishes what the outbox still holds (commands older than `grace`) through the shared
/// relay, a pass every `every`, until shutdown.
pub(crate) async fn run_relay(
    sagas: Sagas,
    every: Duration,
    grace: Duration,
    shutdown: CancellationToken,
) {
    sagas.command_relay(every, grace).run(shutdown).await;
}
