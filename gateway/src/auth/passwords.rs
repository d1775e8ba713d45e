//! One password check, from the throttle to its recorded outcome.
//!
//! A password verified moments ago ([`VerifiedPasswords`](super::verified)) is let in at once, past
//! the throttle and the hashing pool, from an address that is clean (no recent failure, no attempt
//! in progress): so a flood of guesses at a user leaves that user's clients alone. From any other
//! address the remembered password waits its slot like any attempt and only skips argon2: else a
//! guesser whose wrong guesses are refused at once could tell a right one by its instant answer,
//! guessing faster than the throttle allows.
//!
//! Otherwise the order matters: a user's failures are waited out first, before the address's turn
//! is taken, so guesses at one user's password do not hold up the other users logging in from the
//! same address (a NAT, a sidecar proxy); then the address's turn ([`Turns`](super::turns)), so
//! the address's wait is reckoned with every earlier attempt's outcome; then the address's slot.
//! Until then the attempt is the client's: one that goes away has cost nothing. From there the
//! check runs on a task of its own, holding the turn, so a client that goes away mid-check (a
//! gRPC deadline it chose, a closed connection) cannot skip its failure being counted; the pool's
//! bounded queue bounds those tasks.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    Principal, Source, failure::Failure, reloading::Reloading, shared::Shared, turns::Turn,
    users::Users, verified::Key,
};

/// A password to check, with everything the check needs (owned: it may finish on a task of its
/// own).
pub(super) struct PasswordCheck {
    pub(super) shared: Shared,
    pub(super) file: Reloading<Users>,
    /// The protocol a failure is counted and audited for, if its client is gone.
    pub(super) protocol: &'static str,
    /// Where the attempt comes from: the throttle's and the turns' key, and the audit's peer.
    pub(super) peer: SocketAddr,
    pub(super) username: String,
    pub(super) password: Vec<u8>,
    /// Where a success is remembered; `None` when nothing can be.
    pub(super) remembered: Option<Key>,
}

impl PasswordCheck {
    /// Waits out the throttle, checks the password and records the outcome.
    pub(super) async fn run(self) -> Result<Principal, Failure> {
        let shared = &self.shared;
        let clean = shared.throttle.address_delay(self.address()).is_zero()
            && shared.turns.idle(self.address());
        if clean && let Some(principal) = self.remembered() {
            return Ok(principal);
        }
        let user_wait = shared.throttle.user_wait(&self.username);
        if !user_wait.is_zero() {
            tokio::time::sleep(user_wait).await;
        }
        let each = shared.throttle.address_delay(self.address());
        let turn = shared
            .turns
            .take(self.address(), each)
            .await
            .map_err(|_| Failure::Throttled)?;
        let delay = shared
            .throttle
            .admit(self.address())
            .map_err(|_| Failure::Throttled)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // Proved moments ago, maybe by the attempt just before this one (clients sharing
        // credentials connecting at once from one address): no second check.
        if let Some(principal) = self.remembered() {
            return Ok(principal);
        }
        let (outcome, settled) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let checked = self.check(turn).await;
            if let Err(Err(failure)) = outcome.send(checked) {
                // Its client went away: counted and audited here, as it would have been there.
                failure.count(self.protocol, self.peer, &self.username);
            }
        });
        settled.await.unwrap_or(Err(Failure::Busy))
    }

    /// Where the attempt comes from, as the throttle and the turns key it.
    fn address(&self) -> IpAddr {
        self.peer.ip().to_canonical()
    }

    /// The principal this password proved moments ago against the users file in use, if it did.
    fn remembered(&self) -> Option<Principal> {
        let key = self.remembered.as_ref()?;
        self.shared.verified.get(key, &self.file.current())
    }

    /// Checks the password on the pool and records the outcome; the address's next attempt waits
    /// for `_turn`, given up only then.
    async fn check(&self, _turn: Turn) -> Result<Principal, Failure> {
        let shared = &self.shared;
        let (file, name, password) = (
            self.file.clone(),
            self.username.clone(),
            self.password.clone(),
        );
        let (roles, users) = shared
            .pool
            .run(move || {
                // Read when the check runs, after every wait: a password removed meanwhile does
                // not pass.
                let users = file.current();
                (users.verify(&name, &password), users)
            })
            .await
            .map_err(|_| Failure::Busy)?;
        let Some(roles) = roles else {
            shared.throttle.failed(self.address(), Some(&self.username));
            return Err(Failure::BadCredentials);
        };
        shared
            .throttle
            .succeeded(self.address(), Some(&self.username));
        let principal = Principal::new(self.username.clone(), roles, Source::Password);
        if let Some(key) = self.remembered {
            // Against the version checked: if the file changes, the entry is void at once.
            shared
                .verified
                .insert(key, principal.clone(), Arc::downgrade(&users));
        }
        Ok(principal)
    }
}
