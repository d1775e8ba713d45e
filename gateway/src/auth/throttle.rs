//! Failed logins slow down: each source address (an IPv6 client by its /64, the block one host
//! is given) and each user name that failed recently has its next attempt checked only after a
//! wait, twice as long per failure up to a cap, so guessing passwords from one address, or one
//! user's password from many, gets slow fast, while a client that mistyped once barely notices.
//!
//! Attempts that arrive during a wait queue behind each other: each reserves the next slot, one
//! wait after the one before, so opening many connections at once buys an attacker nothing. An
//! attempt that would have to queue longer than [`MAX_QUEUE`] is refused at once rather than
//! held. A success clears the user's failures but not the address's: an attacker who knows one
//! account's password must not wash the address clean between guesses at the others.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

/// The first wait after a failure; each further failure doubles it.
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// The longest wait between two checked attempts of one key.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// The longest an attempt is held in the queue before it is refused instead.
const MAX_QUEUE: Duration = Duration::from_secs(10);
/// A key that has not failed for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Keys kept at most; beyond, the oldest are forgotten first (a flood of addresses cannot grow
/// the table without bound).
const MAX_KEYS: usize = 100_000;

/// Users are kept by a hash of the name a client sent, not the name: the table's size must not
/// depend on how long the names are that strangers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Address(IpAddr),
    User(u64),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// When the next attempt of this key may be checked.
    next: Instant,
}

impl Failures {
    fn current(&self, now: Instant) -> bool {
        now.duration_since(self.last) < FORGET_AFTER
    }
}

/// Too many attempts are queued for this address or user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttled;

/// Recent failures per source address and per user.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: Mutex<HashMap<Key, Failures>>,
    /// Keyed per process, so names cannot be chosen to collide.
    names: RandomState,
}

impl Throttle {
    /// How long an attempt from `address` for `user` waits before it is checked; the slot is
    /// reserved, so the next attempt of the same address or user waits longer still.
    pub fn admit(&self, address: IpAddr, user: Option<&str>) -> Result<Duration, Throttled> {
        let Ok(mut failures) = self.failures.lock() else {
            return Ok(Duration::ZERO);
        };
        let now = Instant::now();
        let keys: Vec<Key> = self.keys(address, user).collect();
        let start = keys
            .iter()
            .filter_map(|key| failures.get(key).filter(|entry| entry.current(now)))
            .map(|entry| entry.next)
            .fold(now, Instant::max);
        let wait = start.duration_since(now);
        if wait > MAX_QUEUE {
            return Err(Throttled);
        }
        for key in &keys {
            if let Some(entry) = failures.get_mut(key).filter(|entry| entry.current(now)) {
                entry.next = start + delay_after(entry.count);
            }
        }
        Ok(wait)
    }

    /// Records a failed attempt.
    pub fn failed(&self, address: IpAddr, user: Option<&str>) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        let now = Instant::now();
        if failures.len() >= MAX_KEYS {
            failures.retain(|_, entry| entry.current(now));
            if failures.len() >= MAX_KEYS {
                // Still full of recent failures: forget the oldest half.
                let mut ages: Vec<Instant> = failures.values().map(|entry| entry.last).collect();
                ages.sort_unstable();
                let cutoff = ages[ages.len() / 2];
                failures.retain(|_, entry| entry.last > cutoff);
            }
        }
        for key in self.keys(address, user) {
            let entry = failures.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                next: now,
            });
            if !entry.current(now) {
                entry.count = 0;
                entry.next = now;
            }
            entry.count = entry.count.saturating_add(1);
            entry.last = now;
            entry.next = entry.next.max(now + delay_after(entry.count));
        }
    }

    /// Records a successful attempt: the user starts afresh (the address does not, see above).
    pub fn succeeded(&self, user: Option<&str>) {
        let (Ok(mut failures), Some(user)) = (self.failures.lock(), user) else {
            return;
        };
        if !failures.is_empty() {
            failures.remove(&self.user(user));
        }
    }

    fn keys(&self, address: IpAddr, user: Option<&str>) -> impl Iterator<Item = Key> {
        std::iter::once(Key::Address(host(address))).chain(user.map(|user| self.user(user)))
    }

    fn user(&self, name: &str) -> Key {
        Key::User(self.names.hash_one(name))
    }
}

/// The address a host is known by: an IPv4 address, or an IPv6 address's /64 (one host may use
/// any address in its prefix).
fn host(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

fn delay_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(throttle: &Throttle, address: IpAddr, user: &str) -> Duration {
        throttle.admit(address, Some(user)).expect("admitted")
    }

    #[tokio::test(start_paused = true)]
    async fn failures_double_the_wait_per_address_and_per_user() {
        let throttle = Throttle::default();
        let here: IpAddr = [10, 0, 0, 1].into();
        let there: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(wait(&throttle, here, "alice"), Duration::ZERO);
        throttle.failed(here, Some("alice"));
        assert_eq!(throttle.admit(here, None), Ok(FIRST_DELAY));
        tokio::time::advance(FIRST_DELAY * 2).await;
        throttle.failed(here, Some("alice"));
        throttle.failed(here, Some("alice"));
        assert_eq!(throttle.admit(here, None), Ok(FIRST_DELAY * 4));
        // Another address guessing the same user waits as long.
        assert_eq!(wait(&throttle, there, "alice"), FIRST_DELAY * 4);
        assert_eq!(wait(&throttle, there, "bob"), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_at_once_queue_one_wait_apart_and_a_long_queue_is_refused() {
        let throttle = Throttle::default();
        let here: IpAddr = [10, 0, 0, 1].into();
        for _ in 0..3 {
            throttle.failed(here, Some("alice"));
        }
        // 400 ms after the third failure, then one wait (400 ms) after each other.
        let waits: Vec<Duration> = (0..3).map(|_| wait(&throttle, here, "bob")).collect();
        assert_eq!(waits, [FIRST_DELAY * 4, FIRST_DELAY * 8, FIRST_DELAY * 12]);
        for _ in 0..40 {
            throttle.admit(here, Some("carol")).ok();
        }
        assert_eq!(throttle.admit(here, Some("dave")), Err(Throttled));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_clears_the_user_but_not_the_address() {
        let throttle = Throttle::default();
        let here: IpAddr = [10, 0, 0, 1].into();
        let there: IpAddr = [10, 0, 0, 2].into();
        throttle.failed(here, Some("alice"));
        throttle.failed(here, Some("alice"));
        tokio::time::advance(MAX_DELAY).await;
        throttle.succeeded(Some("alice"));
        assert_eq!(wait(&throttle, there, "alice"), Duration::ZERO);
        assert_eq!(wait(&throttle, here, "bob"), Duration::ZERO);
        // The address's count stayed: its next failure waits twice as long as a first one.
        throttle.failed(here, Some("bob"));
        assert_eq!(throttle.admit(here, None), Ok(FIRST_DELAY * 4));
    }

    #[test]
    fn an_ipv6_host_is_its_64_prefix() {
        let one: IpAddr = "2001:db8:1:2:aaaa::1".parse().expect("address");
        let other: IpAddr = "2001:db8:1:2:bbbb::9".parse().expect("address");
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().expect("address");
        assert_eq!(host(one), host(other));
        assert_ne!(host(one), host(elsewhere));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().expect("address");
        assert_eq!(host(mapped), IpAddr::from([10, 0, 0, 1]));
    }
}
