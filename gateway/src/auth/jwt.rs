//! JWT bearer tokens: a compact JWS checked against the keys of a JWKS (a file, or an identity
//! provider's URL), its claims checked, and a [`Principal`] named from its claims.
//!
//! The JWKS is read at start and again every `refresh` by a task; a token naming a key id the set
//! does not hold asks that task to read it early, so a rotated key is picked up within seconds, not
//! at the next refresh. A read that fails keeps the last good set.
//!
//! - `config`: the `[auth.jwt]` table; `errors`: why a token or a JWKS was refused.
//! - `token`: splitting a compact JWS and reading its header, before any key is involved.
//! - `keys`: a JWKS parsed into keys, and which of them may check a token (the algorithm
//!   confusion guard lives there).
//! - `claims`: expiry, issuer and audience, and the principal the claims name.
//! - `refresh`: where the JWKS comes from, and the task that re-reads it.
//! - `fetch`: one bounded HTTP(S) GET of a JWKS URL.
//! - `ring_backend`: jsonwebtoken's signature checks on ring, the workspace's one crypto library.

mod claims;
mod config;
mod errors;
mod fetch;
mod keys;
mod refresh;
mod ring_backend;
mod token;

#[cfg(test)]
mod tests;

use std::{fmt, sync::Arc, time::SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::principal::Principal;

use self::{
    claims::Rules,
    keys::{KeySet, Selection},
    refresh::{Origin, Refresher, Schedule, Shared, Timing},
};

pub use self::config::JwtConfig;
pub use self::errors::{JwksError, JwtError, JwtRefusal};
pub use self::token::looks_like_jwt;

/// Verifies JWT bearer tokens against the current JWKS. Cheap to clone: clones share the keys
/// and the task that refreshes them.
#[derive(Clone)]
pub struct JwtVerifier {
    shared: Arc<Shared>,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("keys", &self.shared.keys.load().len())
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Loads the keys and starts the task that refreshes them until `stop`. A JWKS file that
    /// cannot be read or parsed is an error. A JWKS URL that fails is not: it is logged, the
    /// verifier starts with no keys (refusing tokens with [`JwtRefusal::NoKeys`]) and retries
    /// with backoff up to `refresh`, because an identity provider briefly unreachable must not
    /// keep the gateway down.
    pub async fn start(config: &JwtConfig, stop: CancellationToken) -> Result<Self, JwtError> {
        Self::start_with(config, stop, Timing::default()).await
    }

    async fn start_with(
        config: &JwtConfig,
        stop: CancellationToken,
        timing: Timing,
    ) -> Result<Self, JwtError> {
        config.validate().map_err(JwtError::Config)?;
        if config.audience.is_none() {
            tracing::warn!(
                "auth.jwt.audience is not set: a token the identity provider issued for any other application is accepted here, with its roles"
            );
        }
        if config.issuer.is_none() {
            tracing::warn!(
                "auth.jwt.issuer is not set: a token signed by any key of the set is accepted, whoever issued it"
            );
        }
        ring_backend::install();
        let origin = Origin::from_config(config, timing.fetch_timeout)?;
        let mut schedule = Schedule::new(config.refresh, timing);
        let (keys, last_document) = match origin.load().await {
            Ok((keys, document)) => {
                tracing::info!(source = %origin, keys = keys.len(), skipped = ?keys.skipped(), "JWKS loaded");
                schedule.loaded(tokio::time::Instant::now());
                (keys, Some(document))
            }
            Err(source) => match &origin {
                Origin::File(path) => {
                    return Err(JwtError::File {
                        path: path.clone(),
                        source,
                    });
                }
                Origin::Url(_) => {
                    tracing::warn!(source = %origin, error = %source, "JWKS not loaded at start; tokens are refused until it is, retrying");
                    schedule.failed(tokio::time::Instant::now());
                    (KeySet::default(), None)
                }
            },
        };
        let shared = Arc::new(Shared {
            keys: ArcSwap::from_pointee(keys),
            rules: Rules::from_config(config),
            refresh_early: Notify::new(),
        });
        let refresher = Refresher::new(origin, shared.clone(), schedule, last_document);
        tokio::spawn(refresher.run(stop));
        Ok(Self { shared })
    }

    /// Verifies a compact JWS: its signature by a key of the JWKS, `exp` (required) and `nbf`
    /// with the leeway, `iss` and `aud` when configured. The principal is named by `name_claim`,
    /// has the roles of `roles_claim`, and the attributes `issuer`, `subject`, `expires` (unix
    /// seconds) and `key_id` where the token has them.
    pub fn verify(&self, token: &str) -> Result<Principal, JwtRefusal> {
        self.verify_at(token, SystemTime::now())
    }

    fn verify_at(&self, token: &str, now: SystemTime) -> Result<Principal, JwtRefusal> {
        let compact = token::Compact::split(token)?;
        let algorithm =
            token::allowed_algorithm(&compact.header.alg).ok_or(JwtRefusal::AlgorithmNotAllowed)?;
        let keys = self.shared.keys.load();
        if keys.is_empty() {
            self.shared.refresh_early.notify_one();
            return Err(JwtRefusal::NoKeys);
        }
        let candidates = match keys.select(algorithm, compact.header.kid.as_deref()) {
            Selection::Keys(candidates) => candidates,
            Selection::Unknown => {
                // Perhaps the identity provider rotated its keys since the last read.
                self.shared.refresh_early.notify_one();
                return Err(JwtRefusal::UnknownKey);
            }
            Selection::WrongAlgorithm => return Err(JwtRefusal::AlgorithmNotAllowed),
        };
        let key = candidates
            .into_iter()
            .find(|key| key.verifies(&compact, algorithm))
            .ok_or(JwtRefusal::BadSignature)?;
        let claims = compact.claims()?;
        self.shared.rules.check(&claims, now)?;
        self.shared.rules.principal(&claims, key.id())
    }
}
