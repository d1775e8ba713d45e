//! Passwords verified recently, remembered for a short while.
//!
//! Checking a password runs argon2 (tens of milliseconds of a core, on purpose). A gRPC client
//! sends its Basic credentials on every call, and a fleet of devices reconnects in waves; without
//! this each would pay that again. More: under a flood of wrong guesses at a user's password, the
//! throttle delays every check of that user's password, the right one's too, and the guesses
//! queue on the hashing pool. A client whose password was verified less than [`TTL`] ago is let in
//! at once, past the throttle and the pool, so a flood slows the attacker and leaves the clients
//! that know their password alone. Failures are never remembered: they go through the throttle
//! every time. An entry is forgotten sooner when the users file changes, and never holds the file
//! itself: a version replaced is freed, with its password hashes, whatever the cache remembers.
//!
//! Entries are keyed by an HMAC-SHA256 of the user name and password under a random key drawn
//! when the cache is made (per process, held in memory only), not by a plain hash: a plain
//! SHA-256 of `user:password` is the same in every process, so one found in a memory dump or a
//! core file can be looked up in precomputed tables or guessed offline at once. A tag here means
//! nothing without this process's key, and no table can be built for it in advance.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use ring::{hmac, rand::SystemRandom};
use tokio::time::Instant;

use super::{Principal, Users};

/// How long a verified password is trusted without checking it again.
pub(super) const TTL: Duration = Duration::from_secs(30);

/// Most remembered verifications: past it, expired ones are dropped, then the oldest.
pub(super) const CAPACITY: usize = 4096;

/// The HMAC-SHA256 of a users file's identity, a user name and a password under the cache's key.
pub(super) type Key = [u8; 32];

/// Between the name and the password in what is signed: a byte no UTF-8 name holds, so no other
/// split of the same bytes signs alike.
const SEPARATOR: u8 = 0xff;

struct Entry {
    principal: Principal,
    /// The users file as it was when the password was checked: another version voids the entry.
    users: Weak<Users>,
    expires: Instant,
}

/// Remembered verifications, shared by every protocol's authenticator.
pub(super) struct VerifiedPasswords {
    /// The HMAC key of this cache's entries (its `Debug` shows the algorithm only); `None` when
    /// the system could not supply random bytes, and then nothing is remembered.
    secret: Option<hmac::Key>,
    entries: Mutex<HashMap<Key, Entry>>,
}

/// Neither keys nor principals: how many are remembered is all a log may show.
impl std::fmt::Debug for VerifiedPasswords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().map_or(0, |entries| entries.len());
        f.debug_struct("VerifiedPasswords")
            .field("entries", &entries)
            .finish_non_exhaustive()
    }
}

impl Default for VerifiedPasswords {
    fn default() -> Self {
        Self::new()
    }
}

impl VerifiedPasswords {
    /// An empty cache with a fresh random key.
    pub(super) fn new() -> Self {
        let secret = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .inspect_err(|_| {
                tracing::warn!(
                    "no random bytes for the verified passwords' key: \
                     every login checks its password"
                );
            })
            .ok();
        Self {
            secret,
            entries: Mutex::default(),
        }
    }

    /// The key `username` with `password`, checked against the users file `file` (its
    /// [`Reloading::id`](super::reloading::Reloading::id): protocols may name files of their
    /// own), is remembered under, if this cache remembers anything.
    pub(super) fn key_of(&self, file: usize, username: &str, password: &[u8]) -> Option<Key> {
        let mut signing = hmac::Context::with_key(self.secret.as_ref()?);
        signing.update(&file.to_le_bytes());
        signing.update(username.as_bytes());
        signing.update(&[SEPARATOR]);
        signing.update(password);
        let mut key = [0; 32];
        key.copy_from_slice(signing.sign().as_ref());
        Some(key)
    }

    /// The principal `key` proved less than [`TTL`] ago against the users file `users`, if it did.
    pub(super) fn get(&self, key: &Key, users: &Arc<Users>) -> Option<Principal> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(key)?;
        if entry.expires > Instant::now() && std::ptr::eq(entry.users.as_ptr(), Arc::as_ptr(users))
        {
            return Some(entry.principal.clone());
        }
        entries.remove(key);
        None
    }

    /// Remembers that `key` proved `principal` against `users` (the version read before checking).
    pub(super) fn insert(&self, key: Key, principal: Principal, users: Weak<Users>) {
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
    pub(super) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Source;

    fn key_for(cache: &VerifiedPasswords, user: &str, password: &str) -> Key {
        cache.key_of(1, user, password.as_bytes()).unwrap()
    }

    fn alice() -> Principal {
        Principal::new("alice", vec!["ops".into()], Source::Password)
    }

    fn users() -> Arc<Users> {
        Arc::new(Users::parse("users", "").unwrap())
    }

    #[test]
    fn keys_are_keyed_hashes_not_plain_ones() {
        let (one, other) = (VerifiedPasswords::new(), VerifiedPasswords::new());
        assert_eq!(key_for(&one, "alice", "s"), key_for(&one, "alice", "s"));
        assert_ne!(
            key_for(&one, "alice", "s"),
            key_for(&other, "alice", "s"),
            "each cache has its own key"
        );
        let sha256 = ring::digest::digest(&ring::digest::SHA256, b"alice:s");
        assert_ne!(&key_for(&one, "alice", "s")[..], sha256.as_ref());
        // The name and the password are not run together: no other split signs alike.
        assert_ne!(key_for(&one, "alice", "s"), key_for(&one, "alic", "es"));
        // Each users file its own.
        assert_ne!(one.key_of(1, "alice", b"s"), one.key_of(2, "alice", b"s"));
        assert!(!format!("{one:?}").contains("alice"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_verification_is_trusted_for_the_ttl_only() {
        let (cache, users) = (VerifiedPasswords::new(), users());
        let key = key_for(&cache, "alice", "s");
        assert_eq!(cache.get(&key, &users), None);
        cache.insert(key, alice(), Arc::downgrade(&users));
        assert_eq!(cache.get(&key, &users), Some(alice()));
        assert_eq!(cache.get(&key_for(&cache, "alice", "other"), &users), None);
        tokio::time::advance(TTL - Duration::from_millis(1)).await;
        assert_eq!(cache.get(&key, &users), Some(alice()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(cache.get(&key, &users), None, "expired");
        assert_eq!(cache.len(), 0, "an expired entry is dropped when met");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_users_file_voids_what_was_verified_against_the_old() {
        let cache = VerifiedPasswords::new();
        let key = key_for(&cache, "alice", "s");
        let (old, new) = (users(), users());
        cache.insert(key, alice(), Arc::downgrade(&old));
        assert_eq!(cache.get(&key, &old), Some(alice()));
        assert_eq!(cache.get(&key, &new), None);
        // Nothing remembered keeps a version alive.
        cache.insert(key, alice(), Arc::downgrade(&old));
        let weak = Arc::downgrade(&old);
        drop(old);
        assert!(weak.upgrade().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_stays_bounded() {
        let (cache, users) = (VerifiedPasswords::new(), users());
        for n in 0..CAPACITY + 10 {
            let key = key_for(&cache, "alice", &n.to_string());
            cache.insert(key, alice(), Arc::downgrade(&users));
            tokio::time::advance(Duration::from_micros(1)).await;
        }
        assert_eq!(cache.len(), CAPACITY);
        // The oldest went first; the newest stays.
        assert_eq!(cache.get(&key_for(&cache, "alice", "0"), &users), None);
        let newest = (CAPACITY + 9).to_string();
        assert_eq!(
            cache.get(&key_for(&cache, "alice", &newest), &users),
            Some(alice())
        );
    }
}
