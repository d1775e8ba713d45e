//! Successful Basic verifications, remembered for a short while.
//!
//! A Basic `authorization` header carries a password, and checking one runs argon2 (tens of
//! milliseconds of CPU, on purpose). gRPC sends the header on every call, so a client making many
//! unary calls would pay that every time. A success is remembered here for [`TTL`]; it is forgotten
//! sooner when the users file changes. Failures are never remembered: they go through the throttle
//! every time.
//!
//! Entries are keyed by an HMAC-SHA256 of the header under a random key drawn when the cache is
//! made (per process, held in memory only), not by the header or a plain hash of it: a plain
//! SHA-256 of `user:password` is the same in every process, so one found in a memory dump or a
//! core file can be looked up in precomputed tables or guessed offline at once. A tag here means
//! nothing without this process's key, and no table can be built for it in advance.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use courier_gateway::auth::{Principal, Users};
use ring::{hmac, rand::SystemRandom};
use tokio::time::Instant;

/// How long a verified password is trusted without checking it again.
pub(crate) const TTL: Duration = Duration::from_secs(30);

/// Most remembered verifications: past it, expired ones are dropped, then the oldest.
pub(crate) const CAPACITY: usize = 4096;

/// The HMAC-SHA256 of an `authorization` header's value under the cache's key.
pub(crate) type Key = [u8; 32];

struct Entry {
    principal: Principal,
    /// The users file as it was when the password was checked: another version voids the entry.
    users: Option<Arc<Users>>,
    expires: Instant,
}

/// Without the users file, whose `Debug` would print every user's password hash.
impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("principal", &self.principal)
            .field("users", &self.users.as_ref().map(|_| ".."))
            .field("expires", &self.expires)
            .finish()
    }
}

/// Remembered verifications.
#[derive(Debug)]
pub(crate) struct BasicCache {
    /// The HMAC key of this cache's entries (its `Debug` shows the algorithm only); `None` when
    /// the system could not supply random bytes, and then nothing is remembered.
    secret: Option<hmac::Key>,
    entries: Mutex<HashMap<Key, Entry>>,
}

impl BasicCache {
    /// An empty cache with a fresh random key.
    pub(crate) fn new() -> Self {
        let secret = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .inspect_err(|_| {
                tracing::warn!(
                    "no random bytes for the Basic credentials cache's key: every Basic call checks its password"
                );
            })
            .ok();
        Self {
            secret,
            entries: Mutex::default(),
        }
    }

    /// The key `header` is remembered under, if this cache remembers anything.
    pub(crate) fn key_of(&self, header: &[u8]) -> Option<Key> {
        let tag = hmac::sign(self.secret.as_ref()?, header);
        let mut key = [0; 32];
        key.copy_from_slice(tag.as_ref());
        Some(key)
    }

    /// The principal `key` proved less than [`TTL`] ago against the users file `users`, if it did.
    pub(crate) fn get(&self, key: &Key, users: Option<&Arc<Users>>) -> Option<Principal> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(key)?;
        if entry.expires > Instant::now() && same_users(entry.users.as_ref(), users) {
            return Some(entry.principal.clone());
        }
        entries.remove(key);
        None
    }

    /// Remembers that `key` proved `principal` against `users` (the version read before checking).
    pub(crate) fn insert(&self, key: Key, principal: Principal, users: Option<Arc<Users>>) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY && !entries.contains_key(&key) {
            entries.retain(|_, entry| entry.expires > now);
            if entries.len() >= CAPACITY
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, entry)| entry.expires)
                    .map(|(key, _)| *key)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(
            key,
            Entry {
                principal,
                users,
                expires: now + TTL,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn same_users(then: Option<&Arc<Users>>, now: Option<&Arc<Users>>) -> bool {
    match (then, now) {
        (Some(then), Some(now)) => Arc::ptr_eq(then, now),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use courier_gateway::auth::Source;

    use super::*;

    fn key_for(cache: &BasicCache, header: &[u8]) -> Key {
        cache.key_of(header).unwrap()
    }

    fn alice() -> Principal {
        Principal::new("alice", vec!["ops".into()], Source::Password)
    }

    #[test]
    fn keys_are_keyed_hashes_not_plain_ones() {
        let header = b"Basic YWxpY2U6cw==";
        let (one, other) = (BasicCache::new(), BasicCache::new());
        assert_eq!(key_for(&one, header), key_for(&one, header));
        assert_ne!(
            key_for(&one, header),
            key_for(&other, header),
            "each cache has its own key"
        );
        let sha256 = ring::digest::digest(&ring::digest::SHA256, header);
        assert_ne!(&key_for(&one, header)[..], sha256.as_ref());
        assert!(!format!("{one:?}").contains("YWxpY2U6cw"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_verification_is_trusted_for_the_ttl_only() {
        let cache = BasicCache::new();
        let key = key_for(&cache, b"Basic YWxpY2U6cw==");
        assert_eq!(cache.get(&key, None), None);
        cache.insert(key, alice(), None);
        assert_eq!(cache.get(&key, None), Some(alice()));
        assert_eq!(cache.get(&key_for(&cache, b"Basic other"), None), None);
        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        assert_eq!(cache.get(&key, None), Some(alice()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.get(&key, None), None, "expired");
        assert_eq!(cache.len(), 0, "an expired entry is dropped when met");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_users_file_voids_what_was_verified_against_the_old() {
        let cache = BasicCache::new();
        let key = key_for(&cache, b"Basic YWxpY2U6cw==");
        let old = Arc::new(Users::parse("users", "").unwrap());
        let new = Arc::new(Users::parse("users", "").unwrap());
        cache.insert(key, alice(), Some(old.clone()));
        assert_eq!(cache.get(&key, Some(&old)), Some(alice()));
        assert_eq!(cache.get(&key, Some(&new)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_stays_bounded() {
        let cache = BasicCache::new();
        for n in 0..CAPACITY + 10 {
            cache.insert(key_for(&cache, n.to_string().as_bytes()), alice(), None);
            tokio::time::advance(Duration::from_micros(1)).await;
        }
        assert_eq!(cache.len(), CAPACITY);
        // The oldest went first; the newest stays.
        assert_eq!(cache.get(&key_for(&cache, b"0"), None), None);
        let newest = (CAPACITY + 9).to_string();
        assert_eq!(
            cache.get(&key_for(&cache, newest.as_bytes()), None),
            Some(alice())
        );
    }
}
