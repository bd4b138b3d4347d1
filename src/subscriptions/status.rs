//! What a worker process tells the others about its subscriptions, and what it learns from
//! the operators.
//!
//! Each [`SubscriptionConsumer`](super::SubscriptionConsumer) keeps a [`Status`]: its
//! breaker, a `Retry-After` pause, failures in a row, the last error and success, counts. The
//! process's [`Board`] runs one loop ([`Board::run`]) that every [`POLL`]:
//!
//! - reads `subscription_controls` for all its subscriptions in one query and opens or
//!   closes each one's gate: a paused subscription takes no deliveries (the runner's
//!   prefetched messages wait unacked in `Consumer::ready`, the rest ready in the queue, all
//!   keeping their attempts);
//! - upserts the `subscription_status` rows that changed since the last write (so at most
//!   one write a second per subscription, all in one statement), and every row at least
//!   every [`HEARTBEAT`], so that a row older than [`STALE_AFTER`] is a worker that stopped.
//!
//! A failed read or write is logged and counted (`subscription_status_write_errors_total`);
//! it never fails a delivery. Until the first read of the controls succeeds a subscription
//! waits (a worker started during a pause must not deliver), at most [`STARTUP_GRACE`]: with
//! the database away that long, it delivers and says so.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use chrono::{DateTime, Utc};
use entities::subscription_status;
use sea_orm::DatabaseConnection;
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::telemetry::Metrics;

/// How often a worker reads the operators' pauses and writes what changed.
pub(crate) const POLL: Duration = Duration::from_secs(1);
/// How often a worker writes every row even when nothing changed.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(10);
/// A row not written for this long belongs to a worker that stopped (or cannot write).
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(30);
/// How long a subscription waits for the first read of the controls before it delivers.
pub(crate) const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// Whether a subscription may take deliveries in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// The controls were not read yet: wait.
    Unknown,
    /// An operator paused it: wait.
    Paused,
    /// Deliveries go.
    Open,
}

/// What a subscription's row says, kept between writes.
#[derive(Debug, Clone)]
struct Snapshot {
    breaker: &'static str,
    breaker_until: Option<DateTime<Utc>>,
    retry_after_until: Option<DateTime<Utc>>,
    consecutive_failures: u32,
    delivered: u64,
    failed: u64,
    last_error: Option<String>,
    last_error_at: Option<DateTime<Utc>>,
    last_success_at: Option<DateTime<Utc>>,
    /// Something worth writing before the next heartbeat.
    changed: bool,
}

/// One subscription's state in this process (see the module docs).
#[derive(Debug)]
pub(crate) struct Status {
    subscription: String,
    started_at: DateTime<Utc>,
    snapshot: Mutex<Snapshot>,
    gate: watch::Sender<Gate>,
}

impl Status {
    /// A status on no board: its gate is open (nothing would ever read the controls).
    pub(crate) fn standalone(subscription: &str) -> Arc<Self> {
        Arc::new(Self::new(subscription, Gate::Open))
    }

    fn new(subscription: &str, gate: Gate) -> Self {
        Self {
            subscription: subscription.to_owned(),
            started_at: Utc::now(),
            snapshot: Mutex::new(Snapshot {
                breaker: "closed",
                breaker_until: None,
                retry_after_until: None,
                consecutive_failures: 0,
                delivered: 0,
                failed: 0,
                last_error: None,
                last_error_at: None,
                last_success_at: None,
                changed: true,
            }),
            gate: watch::channel(gate).0,
        }
    }

    fn snapshot(&self) -> std::sync::MutexGuard<'_, Snapshot> {
        self.snapshot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The breaker as [`super::breaker::Breaker::view`] says it.
    pub(crate) fn breaker(&self, (state, remaining): (&'static str, Option<Duration>)) {
        let until = remaining.and_then(|d| chrono::TimeDelta::from_std(d).ok());
        let mut s = self.snapshot();
        s.changed |= s.breaker != state;
        s.breaker = state;
        s.breaker_until = until.map(|d| Utc::now() + d);
    }

    /// A delivery answered 2xx.
    pub(crate) fn delivered(&self) {
        let mut s = self.snapshot();
        s.delivered = s.delivered.saturating_add(1);
        s.last_success_at = Some(Utc::now());
        // The first success after failures is news; the others ride with the heartbeat.
        s.changed |= s.consecutive_failures > 0;
        s.consecutive_failures = 0;
    }

    /// A delivery that did not succeed, for `error`; `down` when the breaker counts it as a
    /// failure (not a refusal, nor a pause asked for).
    pub(crate) fn failed(&self, error: String, down: bool) {
        let mut s = self.snapshot();
        s.failed = s.failed.saturating_add(1);
        s.consecutive_failures = if down {
            s.consecutive_failures.saturating_add(1)
        } else {
            0
        };
        s.last_error = Some(error);
        s.last_error_at = Some(Utc::now());
        s.changed = true;
    }

    /// The receiver asked to be left alone for `after` (`Retry-After`).
    pub(crate) fn retry_after(&self, after: Duration) {
        let until = chrono::TimeDelta::from_std(after)
            .ok()
            .map(|d| Utc::now() + d);
        let mut s = self.snapshot();
        s.retry_after_until = until;
        s.changed = true;
    }

    /// Whether an operator's pause (or the first read of the controls) holds deliveries now.
    pub(crate) fn held(&self) -> bool {
        *self.gate.borrow() != Gate::Open
    }

    /// Waits until the subscription is not paused.
    pub(crate) async fn unpaused(&self) {
        let mut rx = self.gate.subscribe();
        // The sender lives in `self`: the wait ends only when the gate opens.
        let _ = rx.wait_for(|g| *g == Gate::Open).await;
    }

    fn set_gate(&self, gate: Gate) {
        let was = self.gate.send_replace(gate);
        if was != gate {
            self.snapshot().changed = true;
            match gate {
                Gate::Paused => tracing::info!(subscription = %self.subscription,
                    "Paused by an operator: taking no deliveries."),
                Gate::Open if was == Gate::Paused => tracing::info!(
                    subscription = %self.subscription, "Resumed by an operator."),
                _ => {}
            }
        }
    }

    /// The row to write now, if it changed or `beat` asks for it; clears the change.
    fn take_row(
        &self,
        instance: &str,
        beat: bool,
        rate: f64,
        now: DateTime<Utc>,
    ) -> Option<subscription_status::Model> {
        let mut s = self.snapshot();
        if !s.changed && !beat {
            return None;
        }
        s.changed = false;
        let paused = *self.gate.borrow() == Gate::Paused;
        // A pause that is over is not shown.
        let retry_after_until = s.retry_after_until.filter(|t| *t > now);
        Some(subscription_status::Model {
            subscription: self.subscription.clone(),
            instance: instance.to_owned(),
            breaker: s.breaker.to_owned(),
            breaker_until: s.breaker_until.filter(|_| s.breaker == "open"),
            retry_after_until,
            paused,
            consecutive_failures: i32::try_from(s.consecutive_failures).unwrap_or(i32::MAX),
            delivered: i64::try_from(s.delivered).unwrap_or(i64::MAX),
            failed: i64::try_from(s.failed).unwrap_or(i64::MAX),
            delivery_rate: rate,
            last_error: s.last_error.clone(),
            last_error_at: s.last_error_at,
            last_success_at: s.last_success_at,
            started_at: self.started_at,
            updated_at: now,
        })
    }

    fn delivered_count(&self) -> u64 {
        self.snapshot().delivered
    }

    /// After a failed write: write it again on the next round.
    fn unwritten(&self) {
        self.snapshot().changed = true;
    }
}

/// The subscriptions of one process and the loop that reports them (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Board {
    statuses: Mutex<Vec<Weak<Status>>>,
}

/// Per subscription, between heartbeats: when the last one was, the count then, the rate.
#[derive(Debug, Clone, Copy)]
struct Beat {
    at: Instant,
    delivered: u64,
    rate: f64,
}

impl Board {
    /// A new, empty board.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The status of `subscription`, reported by this board's loop while it lives. Its gate
    /// is shut until the loop has read the controls.
    pub(crate) fn status(&self, subscription: &str) -> Arc<Status> {
        let status = Arc::new(Status::new(subscription, Gate::Unknown));
        self.list().push(Arc::downgrade(&status));
        status
    }

    fn list(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Status>>> {
        self.statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The statuses still alive (a consumer the process does not run is dropped).
    fn live(&self) -> Vec<Arc<Status>> {
        let mut list = self.list();
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    }

    /// Whether any subscription of this board still runs.
    pub(crate) fn is_empty(&self) -> bool {
        self.live().is_empty()
    }

    /// Reads the controls and writes the rows every [`POLL`] until `shutdown` (see the module
    /// docs), as worker `instance`, on `db`.
    pub(crate) async fn run(
        self: Arc<Self>,
        db: DatabaseConnection,
        instance: String,
        metrics: Metrics,
        shutdown: CancellationToken,
    ) {
        let started = Instant::now();
        let mut beats: HashMap<String, Beat> = HashMap::new();
        let mut errors = 0u64;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let live = self.live();
            if live.is_empty() {
                continue;
            }
            let read = self.read_controls(&db, &live, started).await;
            let wrote = self.write_rows(&db, &instance, &live, &mut beats).await;
            if read && wrote {
                errors = 0;
                continue;
            }
            errors += 1;
            metrics.subscription_status_error();
            if errors == 1 || errors.is_multiple_of(60) {
                tracing::warn!(
                    failures_in_a_row = errors,
                    "Cannot read the subscriptions' pauses or write their state; deliveries go on."
                );
            }
        }
    }

    /// Opens or shuts each gate as `subscription_controls` says. False when it could not be
    /// read (a gate never read opens after [`STARTUP_GRACE`]).
    async fn read_controls(
        &self,
        db: &DatabaseConnection,
        live: &[Arc<Status>],
        started: Instant,
    ) -> bool {
        let names: Vec<String> = live.iter().map(|s| s.subscription.clone()).collect();
        match super::store::controls(db, Some(&names)).await {
            Ok(rows) => {
                for s in live {
                    let paused = rows
                        .iter()
                        .any(|r| r.subscription == s.subscription && r.paused);
                    s.set_gate(if paused { Gate::Paused } else { Gate::Open });
                }
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "Cannot read subscription_controls.");
                if started.elapsed() >= STARTUP_GRACE {
                    for s in live.iter().filter(|s| *s.gate.borrow() == Gate::Unknown) {
                        tracing::warn!(subscription = %s.subscription, error = %e,
                            "The operators' pauses could not be read since the start; delivering.");
                        s.set_gate(Gate::Open);
                    }
                }
                false
            }
        }
    }

    /// Upserts the rows that changed, and all of them on a heartbeat. False when the write
    /// failed (the rows are written again on the next round).
    async fn write_rows(
        &self,
        db: &DatabaseConnection,
        instance: &str,
        live: &[Arc<Status>],
        beats: &mut HashMap<String, Beat>,
    ) -> bool {
        let (now, wall) = (Instant::now(), Utc::now());
        let mut rows = Vec::new();
        for s in live {
            let delivered = s.delivered_count();
            let beat = beats.entry(s.subscription.clone()).or_insert(Beat {
                at: now,
                delivered,
                rate: 0.0,
            });
            let due = now.duration_since(beat.at) >= HEARTBEAT;
            if due {
                let secs = now.duration_since(beat.at).as_secs_f64();
                *beat = Beat {
                    at: now,
                    delivered,
                    rate: delivered.saturating_sub(beat.delivered) as f64 / secs,
                };
            }
            rows.extend(s.take_row(instance, due, beat.rate, wall));
        }
        if rows.is_empty() {
            return true;
        }
        match super::store::write_status(db, rows).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot write subscription_status.");
                for s in live {
                    s.unwritten();
                }
                false
            }
        }
    }
}

/// Whether a row written at `updated_at` is stale at `now`.
pub(crate) fn stale(updated_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    chrono::TimeDelta::from_std(STALE_AFTER).is_ok_and(|bound| now - updated_at > bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_status_on_a_board_waits_for_the_controls_and_a_pause_holds_it() {
        let board = Board::new();
        let status = board.status("a");
        assert!(status.held(), "shut until the controls are read");
        status.set_gate(Gate::Paused);
        let waiting = tokio::time::timeout(Duration::from_millis(50), status.unpaused()).await;
        assert!(waiting.is_err(), "a paused subscription waits");
        let s = status.clone();
        let resumed = tokio::spawn(async move { s.unpaused().await });
        status.set_gate(Gate::Open);
        tokio::time::timeout(Duration::from_secs(1), resumed)
            .await
            .expect("resumed at once")
            .expect("task");
        assert!(!status.held());
        assert!(!Status::standalone("b").held(), "no board: never held");
    }

    #[test]
    fn a_row_is_written_when_something_changed_or_on_a_heartbeat() {
        let board = Board::new();
        let status = board.status("a");
        let now = Utc::now();
        assert!(
            status.take_row("h:1", false, 0.0, now).is_some(),
            "the first"
        );
        assert!(
            status.take_row("h:1", false, 0.0, now).is_none(),
            "nothing new"
        );
        status.delivered();
        assert!(
            status.take_row("h:1", false, 0.0, now).is_none(),
            "a success after a success rides with the heartbeat"
        );
        status.failed("subscriber answered 500".into(), true);
        status.breaker(("open", Some(Duration::from_secs(5))));
        let row = status.take_row("h:1", false, 0.0, now).expect("changed");
        assert_eq!(row.breaker, "open");
        assert!(row.breaker_until.is_some_and(|t| t > now));
        assert_eq!(row.consecutive_failures, 1);
        assert_eq!((row.delivered, row.failed), (1, 1));
        assert_eq!(row.last_error.as_deref(), Some("subscriber answered 500"));
        status.delivered();
        let row = status.take_row("h:1", false, 0.0, now).expect("recovered");
        assert_eq!(row.consecutive_failures, 0);
        assert!(
            status.take_row("h:1", true, 2.5, now).is_some(),
            "heartbeat"
        );
        drop(status);
        assert!(board.is_empty(), "a dropped consumer leaves the board");
    }

    #[test]
    fn a_row_is_stale_after_the_bound() {
        let now = Utc::now();
        assert!(!stale(now - chrono::TimeDelta::seconds(5), now));
        assert!(stale(now - chrono::TimeDelta::seconds(31), now));
    }
}
