//! What every protocol's authenticator shares.

use std::sync::Arc;

use super::{
    hashing::HashingPool, jwt::JwtVerifier, throttle::Throttle, turns::Turns,
    verified::VerifiedPasswords,
};

/// The parts every protocol's authenticator shares: one pool, one throttle and its turns, one token
/// verifier, one memory of verified passwords.
#[derive(Debug, Clone)]
pub(super) struct Shared {
    pub(super) jwt: Option<JwtVerifier>,
    pub(super) throttle: Arc<Throttle>,
    pub(super) turns: Arc<Turns>,
    pub(super) pool: HashingPool,
    pub(super) verified: Arc<VerifiedPasswords>,
    pub(super) certificates: bool,
}
