//! Every in-process retry policy in one place (backon). Message retries are not here: they
//! wait in the broker's delay tiers, not in a process's memory.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Backoff for re-trying to reach the broker or database at start and after losing it:
/// 200 ms doubling up to 10 s, with jitter, forever (the caller stops on shutdown).
pub fn reconnect() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Backoff for a dead-letter operation's page that stopped on a transient broker error (a
/// publish not confirmed in time, a lost channel): 1 s doubling, at most 4 tries, then the
/// operation fails with the error.
pub fn operation_page() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(8))
        .with_jitter()
        .with_max_times(4)
        .build()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reconnect_backoff_grows_and_is_capped() {
        let delays: Vec<_> = super::reconnect().take(20).collect();
        assert_eq!(delays.len(), 20);
        assert!(
            delays
                .iter()
                .all(|d| *d <= std::time::Duration::from_secs(20))
        );
        assert!(delays[19] > delays[0]);
    }
}
