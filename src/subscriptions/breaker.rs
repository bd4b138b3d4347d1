//! The circuit breaker of one subscription in one worker process.
//!
//! Closed, it counts failed deliveries in a row (a refusal, any 4xx the subscriber chose to
//! answer, is not a failure: the subscriber is up). At `failures` it opens: the subscription
//! takes no message for a cooldown, and the messages wait in its queue (the prefetched ones
//! unacked), keeping their attempts. When the cooldown ends one delivery goes as a trial
//! (half-open) while the others keep waiting: delivered, the breaker closes; failed, it opens
//! again for twice the cooldown, up to `max_cooldown_ms`. A trial that never reports (its
//! handler was cut off) counts as failed once `trial_bound` has passed.

use std::{sync::Mutex, time::Duration};

use tokio::{sync::Notify, time::Instant};
use uuid::Uuid;

use crate::config::BreakerSettings;

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Deliveries flow; `failures` in a row so far.
    Closed { failures: u32 },
    /// No delivery until `until`; the next cooldown doubles from `cooldown`.
    Open { until: Instant, cooldown: Duration },
    /// One trial delivery (message `trial`) is out since `since`.
    HalfOpen {
        since: Instant,
        cooldown: Duration,
        trial: Uuid,
    },
}

/// What a delivery's outcome means to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    /// The subscriber answered (2xx, or a refusal it chose to give).
    Up,
    /// The delivery failed (a 5xx, a reported failure, a timeout, no connection).
    Down,
}

/// What [`Breaker::ready`] let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The breaker is closed.
    Flowing,
    /// This delivery is the half-open trial.
    Trial,
}

/// One subscription's breaker (see the module docs).
#[derive(Debug)]
pub(crate) struct Breaker {
    settings: BreakerSettings,
    /// How long a trial may stay out before it counts as failed.
    trial_bound: Duration,
    state: Mutex<State>,
    changed: Notify,
}

impl Breaker {
    /// A closed breaker.
    pub(crate) fn new(settings: BreakerSettings, trial_bound: Duration) -> Self {
        Self {
            settings,
            trial_bound,
            state: Mutex::new(State::Closed { failures: 0 }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The state as the metric has it: 0 closed, 1 half-open, 2 open.
    pub(crate) fn gauge(&self) -> i64 {
        match *self.state() {
            State::Closed { .. } => 0,
            State::HalfOpen { .. } => 1,
            State::Open { .. } => 2,
        }
    }

    /// The state's name (`closed`, `half_open`, `open`) and, when open, how long its
    /// cooldown has still to run (for the subscription's reported status).
    pub(crate) fn view(&self) -> (&'static str, Option<Duration>) {
        match *self.state() {
            State::Closed { .. } => ("closed", None),
            State::HalfOpen { .. } => ("half_open", None),
            State::Open { until, .. } => (
                "open",
                Some(until.saturating_duration_since(Instant::now())),
            ),
        }
    }

    /// Waits until a delivery may go: at once while closed; after the cooldown as the one
    /// trial when open; while a trial is out, until it reports.
    pub(crate) async fn ready(&self, message: Uuid) -> Pass {
        loop {
            let notified = self.changed.notified();
            let wait_until = {
                let mut state = self.state();
                let now = Instant::now();
                match *state {
                    State::Closed { .. } => return Pass::Flowing,
                    State::Open { until, cooldown } if until <= now => {
                        *state = State::HalfOpen {
                            since: now,
                            cooldown,
                            trial: message,
                        };
                        return Pass::Trial;
                    }
                    State::Open { until, .. } => until,
                    State::HalfOpen { trial, .. } if trial == message => return Pass::Trial,
                    State::HalfOpen {
                        since, cooldown, ..
                    } if since + self.trial_bound <= now => {
                        // The trial never reported: it failed.
                        *state = self.reopen(cooldown, now);
                        continue;
                    }
                    State::HalfOpen { since, .. } => since + self.trial_bound,
                }
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }

    /// Records the outcome of message `message`'s delivery; says when the breaker opened or
    /// closed (for the log).
    pub(crate) fn report(&self, message: Uuid, report: Report) -> Option<&'static str> {
        let mut state = self.state();
        let now = Instant::now();
        let (next, said) = match (*state, report) {
            (State::HalfOpen { trial, .. }, Report::Up) if trial == message => {
                (State::Closed { failures: 0 }, Some("closed"))
            }
            (
                State::HalfOpen {
                    trial, cooldown, ..
                },
                Report::Down,
            ) if trial == message => (self.reopen(cooldown, now), Some("opened again")),
            (State::Closed { .. }, Report::Up) => (State::Closed { failures: 0 }, None),
            (State::Closed { failures }, Report::Down) => {
                let failures = failures.saturating_add(1);
                if failures >= self.settings.failures.max(1) {
                    let cooldown = Duration::from_millis(self.settings.cooldown_ms);
                    (
                        State::Open {
                            until: now + cooldown,
                            cooldown,
                        },
                        Some("opened"),
                    )
                } else {
                    (State::Closed { failures }, None)
                }
            }
            // A delivery that went before the breaker opened: it changes nothing now.
            (other, _) => (other, None),
        };
        *state = next;
        drop(state);
        if said.is_some() {
            self.changed.notify_waiters();
        }
        said
    }

    /// Open again, for twice the last cooldown (bounded).
    fn reopen(&self, cooldown: Duration, now: Instant) -> State {
        let cooldown = (cooldown * 2).min(Duration::from_millis(
            self.settings.max_cooldown_ms.max(self.settings.cooldown_ms),
        ));
        State::Open {
            until: now + cooldown,
            cooldown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Uuid {
        Uuid::now_v7()
    }

    fn breaker(failures: u32) -> Breaker {
        Breaker::new(
            BreakerSettings {
                failures,
                cooldown_ms: 100,
                max_cooldown_ms: 300,
            },
            Duration::from_secs(1),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_then_one_trial_closes_it() {
        let b = breaker(3);
        for _ in 0..2 {
            assert_eq!(b.ready(id()).await, Pass::Flowing);
            assert_eq!(b.report(id(), Report::Down), None);
        }
        // An answer in between starts the count again.
        assert_eq!(b.report(id(), Report::Up), None);
        for _ in 0..2 {
            b.report(id(), Report::Down);
        }
        assert_eq!(b.report(id(), Report::Down), Some("opened"));
        assert_eq!(b.gauge(), 2);
        let start = Instant::now();
        let trial = id();
        assert_eq!(b.ready(trial).await, Pass::Trial);
        assert_eq!(start.elapsed(), Duration::from_millis(100), "the cooldown");
        assert_eq!(b.gauge(), 1);
        // A second caller waits for the trial; a delivery from before the opening changes
        // nothing.
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.ready(id())).await;
        assert!(waiting.is_err(), "only one trial at a time");
        assert_eq!(b.report(id(), Report::Up), None);
        assert_eq!(b.gauge(), 1);
        assert_eq!(b.report(trial, Report::Up), Some("closed"));
        assert_eq!(b.ready(id()).await, Pass::Flowing);
        assert_eq!(b.gauge(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_doubles_the_cooldown_up_to_the_bound() {
        let b = breaker(1);
        b.report(id(), Report::Down);
        let mut waits = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            let trial = id();
            assert_eq!(b.ready(trial).await, Pass::Trial);
            waits.push(start.elapsed().as_millis());
            assert_eq!(b.report(trial, Report::Down), Some("opened again"));
        }
        assert_eq!(waits, [100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trial_that_never_reports_counts_as_failed() {
        let b = breaker(1);
        b.report(id(), Report::Down);
        assert_eq!(b.ready(id()).await, Pass::Trial);
        // Dropped without a report: after the bound, the next caller finds it open again
        // (cooldown doubled) and becomes the next trial after it.
        let start = Instant::now();
        assert_eq!(b.ready(id()).await, Pass::Trial);
        assert_eq!(start.elapsed(), Duration::from_millis(1_000 + 200));
    }
}
