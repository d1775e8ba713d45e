//! Who may connect and what they may do, the same for every protocol.
//!
//! - Authentication turns what a client presented (a password, a bearer token or a JWT as
//!   password, a verified client certificate, or nothing) into one [`Principal`]:
//!   [`Authenticator`], one per protocol over the shared parts (`users` file, `jwt` verifier,
//!   `throttle` of failed logins and the address's `turns`, `hashing` pool, the `verified`
//!   passwords of the last moments).
//! - Authorization decides each request of that principal: [`Authorizer`], over the `policy` file
//!   and the `protected` state of the gateway. The log layer
//!   ([`Authorized`](crate::log::layers::Authorized)) applies it to every request in Kafka's terms;
//!   MQTT asks it in MQTT's.
//! - The users and policy files are re-read when they change (`reloading`).
//!
//! [`Auth`] is built once at start from `[auth]` and hands each front end its parts.

mod authenticator;
mod authorizer;
pub mod config;
mod failure;
mod hashing;
pub mod jwt;
mod passwords;
pub mod policy;
mod principal;
mod protected;
mod reloading;
mod shared;
mod throttle;
mod turns;
mod users;
mod verified;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio_util::sync::CancellationToken;

use crate::{
    limits::{ClientLimits, Usage},
    log::{Log, layers::Traced},
    metrics::Protocol,
    telemetry::{Tracing, Who},
};

use self::{
    jwt::{JwtError, JwtVerifier},
    policy::{Policy, PolicyError},
    reloading::Reloading,
    shared::Shared,
};
// One `pub use` a module: what each name is re-exported from stays plain to readers and tools.
pub use self::authenticator::{
    Anonymous, Attempt, Authenticator, Credentials, MalformedAuthorization,
};
pub use self::authorizer::Authorizer;
pub use self::config::{AuthConfig, ProtocolAuth};
pub use self::failure::Failure;
pub use self::hashing::{Busy, HashingPool};
pub use self::principal::{ANONYMOUS, Principal, Source};
pub use self::protected::Protected;
pub use self::throttle::Throttle;
pub use self::users::{Users, UsersFileError, users_file_line};

/// `[auth]` could not be put to use.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file.
    #[error(transparent)]
    Users(#[from] UsersFileError),
    /// The policy file.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The JWKS.
    #[error(transparent)]
    Jwt(#[from] JwtError),
}

impl reloading::FileError for UsersFileError {
    fn unreadable(path: &Path, error: std::io::Error) -> Self {
        Self {
            path: path.display().to_string(),
            detail: error.to_string(),
        }
    }
}

impl reloading::FileError for PolicyError {
    fn unreadable(path: &Path, source: std::io::Error) -> Self {
        Self::Read {
            path: path.to_owned(),
            source,
        }
    }
}

/// A front end's part of [`Auth`]: who may connect, what they may do, and how much they may take.
#[derive(Debug, Clone)]
pub struct Access {
    /// This protocol's authentication.
    pub authenticator: Authenticator,
    /// The gateway's authorization.
    pub authorizer: Authorizer,
    /// Connection limits and quotas (`[limits]`).
    pub limits: ClientLimits,
    /// Message tracing, while `[telemetry.tracing]` is on.
    pub tracing: Option<Tracing>,
}

impl Access {
    /// Loopback clients only, anonymous, no policy, only the given protected topics (tests, and
    /// tools that serve one process's own clients).
    pub fn loopback(protocol: &'static str, protected: Protected) -> Self {
        let shared = Shared {
            jwt: None,
            throttle: Default::default(),
            turns: Default::default(),
            pool: HashingPool::new(1),
            verified: Default::default(),
            certificates: true,
        };
        Self {
            authenticator: Authenticator::new(protocol, Anonymous::LoopbackOnly, None, shared),
            authorizer: Authorizer::open(protected),
            limits: ClientLimits::unlimited(),
            tracing: None,
        }
    }

    /// This access with `limits` (`[limits]`) in place of none.
    pub fn with_limits(self, limits: ClientLimits) -> Self {
        Self { limits, ..self }
    }

    /// This access with messages traced by `tracing` (`None`: not traced).
    pub fn with_tracing(self, tracing: Option<Tracing>) -> Self {
        Self { tracing, ..self }
    }

    /// `log` as `who` uses it: traced while tracing is on, else `log` itself.
    pub fn traced(&self, log: Arc<dyn Log>, who: impl FnOnce() -> Who) -> Arc<dyn Log> {
        match &self.tracing {
            Some(tracing) => Arc::new(Traced::new(log, tracing.clone(), who())),
            None => log,
        }
    }

    /// The quotas a connection (or call) of `principal` through `protocol` is held to: the
    /// policy's `[[quotas]]` for it over `[limits.quotas]`, drawn from the account of the principal
    /// (an anonymous one's by `client_id`, else its address); `None` when none applies.
    pub fn quota(
        &self,
        principal: &Principal,
        client_id: Option<&str>,
        peer: Option<SocketAddr>,
        protocol: Protocol,
    ) -> Option<Usage> {
        let key = principal.account_key(client_id, peer);
        let rules = self.authorizer.quota_rules(principal, protocol.name());
        self.limits.quotas.usage(key, protocol, &rules)
    }
}

/// Authentication and authorization as configured, shared by every front end.
#[derive(Debug, Clone)]
pub struct Auth {
    config: AuthConfig,
    shared: Shared,
    /// Users files by path, each read (and watched) once however many protocols name it.
    users: HashMap<PathBuf, Reloading<Users>>,
    authorizer: Authorizer,
    stop: CancellationToken,
}

impl Auth {
    /// Reads what `config` names (users, policy, JWKS) and starts watching it until `stop`.
    /// `protected` is the gateway's own state ([`Protected`]); `overrides` are the protocols'
    /// older `[<protocol>.auth]` tables, whose users files are read here too.
    pub async fn start(
        config: &AuthConfig,
        protected: Protected,
        overrides: &[Option<&ProtocolAuth>],
        stop: CancellationToken,
    ) -> Result<Self, AuthError> {
        let jwt = match &config.jwt {
            Some(jwt) => Some(JwtVerifier::start(jwt, stop.child_token()).await?),
            None => None,
        };
        let policy = match &config.policy_file {
            Some(path) => Some(Reloading::start(
                "policy",
                path.clone(),
                Policy::parse_file,
                config.reload_interval,
                stop.child_token(),
            )?),
            None => None,
        };
        let mut users = HashMap::new();
        let files = std::iter::once(config.users_file.as_ref()).chain(
            overrides
                .iter()
                .map(|o| o.and_then(|o| o.users_file.as_ref())),
        );
        for path in files.flatten() {
            if users.contains_key(path) {
                continue;
            }
            let file = Reloading::start(
                "users",
                path.clone(),
                Users::parse,
                config.reload_interval,
                stop.child_token(),
            )?;
            users.insert(path.clone(), file);
        }
        // Nothing configured: clients without credentials are loopback clients, and may
        // administer (the Admin service and the status page need someone).
        let anonymous_admin = !config.has_authenticator()
            && config.allow_anonymous.is_none()
            && !overrides
                .iter()
                .any(|o| o.is_some_and(|o| o.users_file.is_some()));
        Ok(Self {
            config: config.clone(),
            shared: Shared {
                jwt,
                throttle: Default::default(),
                turns: Default::default(),
                pool: HashingPool::new(config.hashing_threads),
                verified: Default::default(),
                certificates: config.certificates,
            },
            users,
            authorizer: Authorizer::new(policy, protected, &config.admin_role, anonymous_admin),
            stop,
        })
    }

    /// What `protocol`'s front end needs: its authenticator and the one authorizer.
    pub fn access(&self, protocol: &'static str, override_: Option<&ProtocolAuth>) -> Access {
        Access {
            authenticator: self.authenticator(protocol, override_),
            authorizer: self.authorizer.clone(),
            limits: ClientLimits::unlimited(),
            tracing: None,
        }
    }

    /// `protocol`'s authenticator: `[auth]` with the protocol's older `[<protocol>.auth]` keys
    /// over it.
    pub fn authenticator(
        &self,
        protocol: &'static str,
        override_: Option<&ProtocolAuth>,
    ) -> Authenticator {
        let config = self.config.with_override(override_);
        let anonymous = match config.allow_anonymous {
            Some(true) => Anonymous::Everywhere,
            Some(false) => Anonymous::Never,
            None if config.has_authenticator() => Anonymous::Never,
            None => Anonymous::LoopbackOnly,
        };
        let users = config
            .users_file
            .as_ref()
            .and_then(|path| self.users.get(path).cloned());
        Authenticator::new(protocol, anonymous, users, self.shared.clone())
    }

    /// The one authorizer.
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// The password-hashing pool (its bound is reported at start).
    pub fn hashing_pool(&self) -> &HashingPool {
        &self.shared.pool
    }

    /// Stops the watchers.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests;
