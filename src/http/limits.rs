//! Limits on the publish endpoints (`POST /v1/events/{name}`, `/v1/jobs/{name}`,
//! `/v1/orders`): a rate per caller, and a bound on the publishes handled at once.
//!
//! - **Rate**: a GCRA bucket (the `governor` crate) per token, or per client IP address when
//!   authentication is off: `http.rate_limit_per_sec` steady, `http.rate_limit_burst` at once.
//!   Over it: 429 with `Retry-After` (whole seconds, rounded up). Buckets of callers silent for
//!   a while are dropped now and then, so many client addresses do not grow memory for good.
//! - **In flight**: a semaphore of `http.max_in_flight_publishes` permits, taken without
//!   waiting. When none is left the request is answered 503 with `Retry-After` at once, so an
//!   overload (a slow or blocked broker, a flood of clients) costs a short answer per request
//!   instead of a growing pile of waiting requests.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, auth::Caller};
use crate::config::HttpSettings;

/// Whom a rate applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum RateKey {
    /// A configured token (its index in `http.tokens`).
    Token(usize),
    /// A client address, when authentication is off.
    Client(IpAddr),
    /// Authentication is off and the client's address is unknown.
    Unknown,
}

impl RateKey {
    /// The key for a caller from `remote`.
    pub(crate) fn new(caller: Caller, remote: Option<IpAddr>) -> Self {
        match (caller, remote) {
            (Caller::Token(i), _) => RateKey::Token(i),
            (Caller::Anonymous, Some(ip)) => RateKey::Client(ip),
            (Caller::Anonymous, None) => RateKey::Unknown,
        }
    }
}

/// How often (in checks) buckets of quiet callers are dropped.
const RETAIN_EVERY: u64 = 4096;

/// The publish limits of one process.
pub(crate) struct Limits {
    rate: Option<DefaultKeyedRateLimiter<RateKey>>,
    in_flight: Option<Arc<Semaphore>>,
    max_in_flight: usize,
    checks: AtomicU64,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("rate", &self.rate.is_some())
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl Limits {
    /// The limits `settings` ask for (0 turns either off).
    pub(crate) fn new(settings: &HttpSettings) -> Self {
        let rate = NonZeroU32::new(settings.rate_limit_per_sec).map(|per_sec| {
            let burst = NonZeroU32::new(settings.rate_limit_burst).unwrap_or(per_sec);
            RateLimiter::keyed(Quota::per_second(per_sec).allow_burst(burst))
        });
        let max_in_flight = settings.max_in_flight_publishes;
        let in_flight = (max_in_flight > 0).then(|| Arc::new(Semaphore::new(max_in_flight)));
        Self {
            rate,
            in_flight,
            max_in_flight,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one request from `key`'s bucket, or says how long to wait (429).
    pub(crate) fn check_rate(&self, key: RateKey) -> Result<(), ApiError> {
        let Some(limiter) = &self.rate else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % RETAIN_EVERY == RETAIN_EVERY - 1 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            ApiError::RateLimited {
                retry_after_secs: retry_after_secs(wait),
            }
        })
    }

    /// A permit to handle one publish, held until the answer; none left is 503 at once.
    pub(crate) fn admit(&self) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        let Some(sem) = &self.in_flight else {
            return Ok(None);
        };
        sem.clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| ApiError::Overloaded(self.max_in_flight))
    }

    /// Publishes being handled now (0 when unbounded).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
            .as_ref()
            .map_or(0, |s| self.max_in_flight - s.available_permits())
    }
}

/// Whole seconds to announce in `Retry-After`: rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_sec: u32, burst: u32, in_flight: usize) -> HttpSettings {
        HttpSettings {
            rate_limit_per_sec: per_sec,
            rate_limit_burst: burst,
            max_in_flight_publishes: in_flight,
            ..HttpSettings::default()
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }

    #[test]
    fn the_burst_passes_then_each_key_is_limited_on_its_own() {
        // One per minute: nothing refills during the test.
        let limits = Limits {
            rate: Some(RateLimiter::keyed(
                Quota::per_minute(NonZeroU32::MIN)
                    .allow_burst(NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN)),
            )),
            ..Limits::new(&settings(0, 0, 0))
        };
        let a = RateKey::Token(0);
        for _ in 0..3 {
            assert!(limits.check_rate(a).is_ok());
        }
        match limits.check_rate(a) {
            Err(ApiError::RateLimited { retry_after_secs }) => {
                assert!((1..=60).contains(&retry_after_secs), "{retry_after_secs}")
            }
            other => panic!("expected 429, got {other:?}"),
        }
        assert!(limits.check_rate(RateKey::Token(1)).is_ok());
        assert!(
            limits
                .check_rate(RateKey::Client(IpAddr::from([127, 0, 0, 1])))
                .is_ok()
        );
    }

    #[test]
    fn zero_turns_the_limits_off() {
        let limits = Limits::new(&settings(0, 0, 0));
        for _ in 0..10_000 {
            assert!(limits.check_rate(RateKey::Unknown).is_ok());
        }
        let permits: Vec<_> = (0..10_000).map(|_| limits.admit()).collect();
        assert!(permits.iter().all(|p| matches!(p, Ok(None))));
    }

    #[test]
    fn in_flight_permits_are_bounded_and_come_back() {
        let limits = Limits::new(&settings(0, 0, 2));
        let first = limits.admit();
        let second = limits.admit();
        assert!(matches!(first, Ok(Some(_))) && matches!(second, Ok(Some(_))));
        assert_eq!(limits.in_flight(), 2);
        assert!(matches!(limits.admit(), Err(ApiError::Overloaded(2))));
        drop(first);
        assert_eq!(limits.in_flight(), 1);
        assert!(matches!(limits.admit(), Ok(Some(_))));
    }

    #[test]
    fn callers_map_to_keys() {
        let ip = IpAddr::from([10, 0, 0, 1]);
        assert_eq!(RateKey::new(Caller::Token(3), Some(ip)), RateKey::Token(3));
        assert_eq!(
            RateKey::new(Caller::Anonymous, Some(ip)),
            RateKey::Client(ip)
        );
        assert_eq!(RateKey::new(Caller::Anonymous, None), RateKey::Unknown);
    }
}
