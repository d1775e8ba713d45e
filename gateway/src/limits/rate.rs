//! Token buckets (governor's GCRA) on tokio's clock, so a wait is a tokio sleep and tests on paused
//! time see buckets refill as the clock is advanced.

use std::{num::NonZeroU32, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::Clock,
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed, keyed::DefaultKeyedStateStore},
};

/// governor's clock reading tokio's: paused in tests, the wall clock otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> Self::Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// Why units could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TooMuch {
    /// Not now: the bucket holds them after this wait.
    Now(Duration),
    /// Never at once: more than the bucket holds.
    Never,
}

/// A rate with a burst of one second's worth: `per_second` units a second, on average and at most
/// `per_second` at once.
#[derive(Debug)]
pub(crate) struct Rate {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<std::time::Instant>>,
    burst: NonZeroU32,
}

impl Rate {
    /// `None` for 0, which is no limit.
    pub(crate) fn per_second(per_second: u64) -> Option<Self> {
        let burst = NonZeroU32::new(u32::try_from(per_second).unwrap_or(u32::MAX))?;
        Some(Self {
            limiter: RateLimiter::direct_with_clock(Quota::per_second(burst), TokioClock),
            burst,
        })
    }

    /// Takes `units` if the bucket holds them; else how long until it would, or
    /// [`TooMuch::Never`] for more than the bucket ever holds (one second's worth).
    pub(crate) fn try_take(&self, units: u64) -> Result<(), TooMuch> {
        if units > u64::from(self.burst.get()) {
            return Err(TooMuch::Never);
        }
        let Some(units) = self.clamp(units) else {
            return Ok(());
        };
        match self.limiter.check_n(units) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(TooMuch::Now(not_until.wait_time_from(TokioClock.now()))),
            Err(_) => Err(TooMuch::Never),
        }
    }

    /// Takes `units`, waiting as long as the rate needs (a request larger than the burst takes a
    /// burst at a time, so it waits its full share).
    pub(crate) async fn take(&self, mut units: u64) {
        while units > 0 {
            let chunk = units.min(u64::from(self.burst.get()));
            loop {
                match self.try_take(chunk) {
                    Ok(()) | Err(TooMuch::Never) => break,
                    Err(TooMuch::Now(wait)) => tokio::time::sleep(wait).await,
                }
            }
            units -= chunk;
        }
    }

    fn clamp(&self, units: u64) -> Option<NonZeroU32> {
        let units = units.min(u64::from(self.burst.get()));
        NonZeroU32::new(u32::try_from(units).unwrap_or(u32::MAX))
    }
}

/// A rate per key (a client address): `per_second` a second, a burst of as many, each key's
/// bucket forgotten once full again ([`KeyedRate::forget_idle`]).
#[derive(Debug)]
pub(crate) struct KeyedRate<K: std::hash::Hash + Eq + Clone> {
    limiter:
        RateLimiter<K, DefaultKeyedStateStore<K>, TokioClock, NoOpMiddleware<std::time::Instant>>,
}

impl<K: std::hash::Hash + Eq + Clone> KeyedRate<K> {
    /// `None` for 0, which is no limit.
    pub(crate) fn per_second(per_second: u32) -> Option<Self> {
        let rate = NonZeroU32::new(per_second)?;
        Some(Self {
            limiter: RateLimiter::dashmap_with_clock(Quota::per_second(rate), TokioClock),
        })
    }

    /// Whether `key` may go now (and takes its token).
    pub(crate) fn check(&self, key: &K) -> bool {
        self.limiter.check_key(key).is_ok()
    }

    /// Drops the buckets that are full again, which remember nothing a fresh one would not: the
    /// table holds only keys seen within the last second or so, however many addresses come.
    pub(crate) fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.limiter.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_refills_as_time_passes() {
        let rate = Rate::per_second(10).unwrap();
        assert!(rate.try_take(10).is_ok());
        let Err(TooMuch::Now(wait)) = rate.try_take(1) else {
            panic!("an empty bucket took more");
        };
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        assert_eq!(rate.try_take(11), Err(TooMuch::Never));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(rate.try_take(1).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_over_the_burst_waits_its_share() {
        let rate = Rate::per_second(100).unwrap();
        let start = tokio::time::Instant::now();
        rate.take(350).await;
        // 100 at once, then 250 more at 100 a second.
        assert!(
            start.elapsed() >= Duration::from_millis(2400),
            "{:?}",
            start.elapsed()
        );
        assert!(Rate::per_second(0).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn keyed_buckets_are_forgotten_once_full() {
        let rate = KeyedRate::per_second(2).unwrap();
        assert!(rate.check(&1));
        assert!(rate.check(&1));
        assert!(!rate.check(&1));
        assert!(rate.check(&2));
        tokio::time::advance(Duration::from_secs(2)).await;
        rate.forget_idle();
        assert_eq!(rate.len(), 0);
        assert!(rate.check(&1));
    }
}
