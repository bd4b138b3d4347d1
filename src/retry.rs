//! Every in-process retry policy in one place (backon). Message retries are not here: they
//! wait in the broker's delay tiers, not in a process's memory.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Backoff for re-trying to reach the broker or database at start and after losing it:
/// 200 ms doubling up to 10 s, with jitter, forever (the caller stops on shutdown). backon adds
/// its jitter (up to as much again) after the cap, so the doubled base stops at 5 s: the waits
/// go from 200-400 ms to 5-10 s, never more than 10 s.
pub(crate) fn reconnect() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Backoff for a dead-letter operation's page that stopped on a transient broker error (a
/// publish not confirmed in time, a lost channel): 1 s doubling, at most 4 tries, then the
/// operation fails with the error.
pub(crate) fn operation_page() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(8))
        .with_jitter()
        .with_max_times(4)
        .build()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// backon's jitter: `base + base * r` with `r` in [0, 1); it doubles and multiplies in
    /// f32, so allow a microsecond either way.
    fn assert_jittered(what: &str, i: usize, d: Duration, base: Duration) {
        let slack = Duration::from_micros(1);
        assert!(
            d + slack >= base && d < base * 2 + slack,
            "{what} wait {i}: {d:?}, want {base:?} to {:?}",
            base * 2
        );
    }

    #[test]
    fn reconnect_backoff_doubles_from_200_ms_and_never_waits_more_than_10_s() {
        let delays: Vec<_> = super::reconnect().take(1_000).collect();
        assert_eq!(delays.len(), 1_000, "forever: the caller stops on shutdown");
        for (i, d) in delays.iter().enumerate() {
            // 200 ms, 400 ms, ... 3.2 s, then 5 s: plus up to as much again of jitter.
            let base = Duration::from_millis(200)
                .saturating_mul(1 << i.min(10))
                .min(Duration::from_secs(5));
            assert_jittered("reconnect", i, *d, base);
            assert!(*d < Duration::from_secs(10), "wait {i}: {d:?}");
        }
        // The jitter spreads the waits at the cap (instances that lost the broker together do
        // not come back in step).
        let capped: std::collections::BTreeSet<_> = delays[10..].iter().collect();
        assert!(
            capped.len() > 100,
            "{} distinct waits at the cap",
            capped.len()
        );
    }

    #[test]
    fn a_dlq_page_is_tried_4_more_times_after_1_2_4_and_8_s_with_jitter() {
        let delays: Vec<_> = super::operation_page().collect();
        assert_eq!(delays.len(), 4, "{delays:?}");
        for (i, d) in delays.iter().enumerate() {
            assert_jittered("operation page", i, *d, Duration::from_secs(1 << i));
        }
    }
}
