//! Failed logins slow down: each source address (an IPv6 client by its /64, the block one host
//! is given) and each user name that failed recently has its next attempt checked only after a
//! wait, twice as long per failure up to a cap, so guessing passwords from one address, or one
//! user's password from many, gets slow fast, while a client that mistyped once barely notices.
//!
//! An address's attempts are checked one at a time ([`Turns`](super::turns)), and each reserves
//! the next slot, one wait after the one before, so opening many connections at once buys an
//! attacker nothing; one whose slot is further than [`MAX_QUEUE`] away is refused rather than
//! held. A user's failures only delay its next attempt (by at most [`MAX_DELAY`]) and never
//! refuse it: else anyone who knows a user's name could lock it out from anywhere. A success
//! clears the user's failures and takes one off the address's: a host behind which most logins
//! succeed recovers, while an attacker must spend a good login (itself queued) per guess.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

use crate::limits::host;

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
    /// When the next attempt of this key may be checked (for an address, the next free slot).
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
    /// How long an attempt for `user` waits, after its user's recent failures.
    pub fn user_wait(&self, user: &str) -> Duration {
        let Ok(failures) = self.failures.lock() else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        failures
            .get(&self.user(user))
            .filter(|entry| entry.current(now))
            .map_or(Duration::ZERO, |entry| {
                entry.next.saturating_duration_since(now)
            })
    }

    /// The wait between two checked attempts of `address` now, after its recent failures.
    pub fn address_delay(&self, address: IpAddr) -> Duration {
        let Ok(failures) = self.failures.lock() else {
            return Duration::ZERO;
        };
        failures
            .get(&Key::Address(host(address)))
            .filter(|entry| entry.current(Instant::now()))
            .map_or(Duration::ZERO, |entry| delay_after(entry.count))
    }

    /// How long an attempt from `address` waits before it is checked, after the address's recent
    /// failures; the slot is reserved, so the address's next attempt waits longer still.
    pub fn admit(&self, address: IpAddr) -> Result<Duration, Throttled> {
        let Ok(mut failures) = self.failures.lock() else {
            return Ok(Duration::ZERO);
        };
        let now = Instant::now();
        let address = Key::Address(host(address));
        let slot = failures
            .get(&address)
            .filter(|entry| entry.current(now))
            .map_or(now, |entry| entry.next.max(now));
        if slot.duration_since(now) > MAX_QUEUE {
            return Err(Throttled);
        }
        if let Some(entry) = failures
            .get_mut(&address)
            .filter(|entry| entry.current(now))
        {
            entry.next = slot + delay_after(entry.count);
        }
        Ok(slot.duration_since(now))
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
            entry.next = match key {
                // Slots already reserved stay reserved.
                Key::Address(_) => entry.next.max(now + delay_after(entry.count)),
                Key::User(_) => now + delay_after(entry.count),
            };
        }
    }

    /// Records a successful attempt: the user starts afresh, the address has one failure fewer.
    pub fn succeeded(&self, address: IpAddr, user: Option<&str>) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.is_empty() {
            return;
        }
        if let Some(user) = user {
            failures.remove(&self.user(user));
        }
        let address = Key::Address(host(address));
        if let Some(entry) = failures.get_mut(&address) {
            entry.count = entry.count.saturating_sub(1);
            if entry.count == 0 {
                failures.remove(&address);
            }
        }
    }

    fn keys(&self, address: IpAddr, user: Option<&str>) -> impl Iterator<Item = Key> {
        std::iter::once(Key::Address(host(address))).chain(user.map(|user| self.user(user)))
    }

    fn user(&self, name: &str) -> Key {
        Key::User(self.names.hash_one(name))
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
        let address_wait = throttle.admit(address).expect("admitted");
        address_wait.max(throttle.user_wait(user))
    }

    #[tokio::test(start_paused = true)]
    async fn failures_double_the_wait_per_address_and_per_user() {
        let throttle = Throttle::default();
        let here: IpAddr = [10, 0, 0, 1].into();
        let there: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(wait(&throttle, here, "alice"), Duration::ZERO);
        throttle.failed(here, Some("alice"));
        assert_eq!(throttle.admit(here), Ok(FIRST_DELAY));
        tokio::time::advance(FIRST_DELAY * 2).await;
        throttle.failed(here, Some("alice"));
        throttle.failed(here, Some("alice"));
        assert_eq!(throttle.admit(here), Ok(FIRST_DELAY * 4));
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
            throttle.admit(here).ok();
        }
        assert_eq!(throttle.admit(here), Err(Throttled));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_clears_the_user_and_one_failure_of_the_address() {
        let throttle = Throttle::default();
        let here: IpAddr = [10, 0, 0, 1].into();
        let there: IpAddr = [10, 0, 0, 2].into();
        throttle.failed(here, Some("alice"));
        throttle.failed(here, Some("alice"));
        tokio::time::advance(MAX_DELAY).await;
        throttle.succeeded(here, Some("alice"));
        assert_eq!(wait(&throttle, there, "alice"), Duration::ZERO);
        assert_eq!(wait(&throttle, here, "bob"), Duration::ZERO);
        // One of the address's two failures stayed: its next failure counts as the second.
        throttle.failed(here, Some("bob"));
        assert_eq!(throttle.admit(here), Ok(FIRST_DELAY * 2));
        // A success for each failure and the address is clean.
        throttle.succeeded(here, None);
        throttle.succeeded(here, None);
        tokio::time::advance(MAX_DELAY).await;
        assert_eq!(throttle.admit(here), Ok(Duration::ZERO));
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_locks_a_user_out_by_guessing_its_password() {
        let throttle = Throttle::default();
        let attacker: IpAddr = [192, 0, 2, 66].into();
        let alice_at_home: IpAddr = [10, 0, 0, 1].into();
        // A guess every few seconds, for long enough to reach the longest wait.
        for _ in 0..30 {
            if let Ok(address_wait) = throttle.admit(attacker) {
                let wait = address_wait.max(throttle.user_wait("alice"));
                tokio::time::advance(wait).await;
                throttle.failed(attacker, Some("alice"));
            }
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // Alice, elsewhere, waits at most the longest delay, and is never refused.
        let waited = throttle.admit(alice_at_home);
        assert_eq!(waited, Ok(Duration::ZERO));
        assert!(throttle.user_wait("alice") <= MAX_DELAY);
        // The attacker's own address is refused once its queue is long.
        let refused = (0..10).any(|_| throttle.admit(attacker).is_err());
        assert!(refused);
    }
}
