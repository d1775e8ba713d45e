//! One password check, from the throttle to its recorded outcome.
//!
//! The order matters: a user's failures are waited out first, before the address's turn is
//! taken, so guesses at one user's password do not hold up the other users logging in from the
//! same address (a NAT, a sidecar proxy); then the address's turn ([`Turns`](super::turns)), so
//! the address's wait is reckoned with every earlier attempt's outcome; then the address's wait,
//! the check on the hashing pool, and the outcome recorded before the turn passes on.

use std::{net::IpAddr, sync::Arc};

use super::{
    Principal, Source, failure::Failure, reloading::Reloading, shared::Shared, users::Users,
    verified::Key,
};

/// A password to check, with everything the check needs (owned: it runs on a task of its own).
pub(super) struct PasswordCheck {
    pub(super) shared: Shared,
    pub(super) file: Reloading<Users>,
    pub(super) address: IpAddr,
    pub(super) username: String,
    pub(super) password: Vec<u8>,
    /// Where a success is remembered; `None` when nothing can be.
    pub(super) remembered: Option<Key>,
}

impl PasswordCheck {
    /// The principal this password proved moments ago against the users file in use, if it did.
    pub(super) fn remembered(&self) -> Option<Principal> {
        let key = self.remembered.as_ref()?;
        self.shared.verified.get(key, &self.file.current())
    }

    /// Waits out the throttle, checks the password and records the outcome.
    pub(super) async fn run(self) -> Result<Principal, Failure> {
        let shared = &self.shared;
        let user_wait = shared.throttle.user_wait(&self.username);
        if !user_wait.is_zero() {
            tokio::time::sleep(user_wait).await;
        }
        let each = shared.throttle.address_delay(self.address);
        let _turn = shared
            .turns
            .take(self.address, each)
            .await
            .map_err(|_| Failure::Throttled)?;
        // The attempt before this one may have proved the same password (clients sharing
        // credentials connecting at once): no second check.
        if let Some(principal) = self.remembered() {
            return Ok(principal);
        }
        let delay = shared
            .throttle
            .admit(self.address)
            .map_err(|_| Failure::Throttled)?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
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
            shared.throttle.failed(self.address, Some(&self.username));
            return Err(Failure::BadCredentials);
        };
        shared
            .throttle
            .succeeded(self.address, Some(&self.username));
        let principal = Principal::new(self.username, roles, Source::Password);
        if let Some(key) = self.remembered {
            // Against the version checked: if the file changes, the entry is void at once.
            shared
                .verified
                .insert(key, principal.clone(), Arc::downgrade(&users));
        }
        Ok(principal)
    }
}
